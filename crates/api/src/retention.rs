//! `[api] file_retention`: uploaded files and batches' output and error files are deleted
//! (row marked, object removed) once they are older than the retention, unless a batch that
//! has not ended still reads them. Files of other Switchyard data (jobs, results, the ledger)
//! follow `switchyard purge`; the ledger never loses a row.

use std::time::Duration;

use switchyard_store::api as store;

use crate::Api;

/// How often the process looks for files past their retention.
pub const EVERY: Duration = Duration::from_secs(60);

/// Deletes files past their retention every [`EVERY`] until `shutdown` (nothing when no
/// retention is set).
pub async fn sweep(api: Api, shutdown: tokio_util::sync::CancellationToken) {
    let Some(retention) = api.options.file_retention else {
        return;
    };
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match once(&api, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "deleted files past their retention"),
            Err(e) => tracing::warn!(error = %e, "cannot delete files past their retention"),
        }
    }
}

/// One pass: deletes every file past `retention`, a page at a time. Returns how many.
///
/// # Errors
/// Database errors (objects that cannot be removed are logged: their rows say deleted).
pub async fn once(api: &Api, retention: Duration) -> sqlx::Result<usize> {
    let mut total = 0;
    // Bounded: at most 100 pages of 500 per pass.
    for _ in 0..100 {
        let files = store::expire_files(&api.pool, retention, 500).await?;
        for f in &files {
            if let Err(e) = api.files.delete(&f.object_name).await {
                tracing::warn!(file = %f.file_id, error = %e, "cannot delete a file's bytes");
            }
        }
        total += files.len();
        if files.len() < 500 {
            break;
        }
    }
    Ok(total)
}

//! The worker's lease, and the sweep that settles what dead workers left behind.
//!
//! **Lease.** A worker process is alive to the rest of the fleet while its lease is: its call
//! intents are not taken over and its budget holds are not reclaimed. The lease and every
//! hold the process tracks (a hold whose release failed is left to expire) are renewed
//! together, every third of the lease ([`run_lease`]), on a task that does nothing else, so
//! neither a stalled finance loop (resuming parked items can take minutes) nor a long commit
//! retry can let a live worker's holds be reclaimed. A Postgres outage
//! longer than the lease does not either: nothing is taken until the server has been up for a
//! whole lease again (see `owner_is_gone` in the migrations).
//!
//! **Sweep** ([`run_sweeper`], in every process; rows are taken with `SKIP LOCKED`): intents
//! whose owner is gone are booked `in_doubt` at their worst case, then expired holds of any
//! month are released.

use std::time::Duration;

use switchyard_store::{budgets, intents};
use tokio_util::sync::CancellationToken;

use crate::context::Worker;

/// The lease period: how long a worker stays alive to the fleet without renewing.
pub fn lease(w: &Worker) -> Duration {
    w.settings.finance.reservation_lease
}

/// Renews the lease and the holds of `w` every third of the lease until `stop`, on a
/// connection of its own (`Worker::lease_pool`): a renewal waits at most a third of the lease
/// for it, so after a Postgres outage the next tick renews within moments of the server's
/// return, well inside the lease of grace `owner_is_gone` gives live owners; then ends
/// the lease (a clean exit: what the process still holds is taken over at once).
pub async fn run_lease(w: Worker, stop: CancellationToken) {
    let lease = lease(&w);
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = renew(&w, lease).await {
            tracing::warn!(error = %e, "cannot renew the worker's lease and budget holds");
        }
    }
    if let Err(e) = intents::drop_lease(&w.pool, &w.worker_id).await {
        tracing::warn!(error = %e, "cannot end the worker's lease; it runs out by itself");
    }
}

/// One renewal: the lease, then every hold this process knows it holds (a hold it lost
/// track of expires, see `Finance::live_holds`).
///
/// # Errors
/// Database errors.
pub async fn renew(w: &Worker, lease: Duration) -> sqlx::Result<()> {
    intents::renew_lease(&w.lease_pool, &w.worker_id, lease).await?;
    budgets::renew_holds(&w.lease_pool, &w.worker_id, &w.finance.live_holds(), lease).await?;
    Ok(())
}

/// How many intents one sweep books at most.
const SWEEP_LIMIT: i64 = 1_000;

/// Books dead workers' calls in doubt and releases expired holds, every half lease, until
/// `stop`.
pub async fn run_sweeper(w: Worker, stop: CancellationToken) {
    let lease = lease(&w);
    let mut tick = tokio::time::interval(lease / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = sweep(&w, lease).await {
            tracing::warn!(error = %e, "cannot sweep what dead workers left");
        }
    }
}

/// One sweep; returns the calls booked in doubt.
///
/// # Errors
/// Database errors.
pub async fn sweep(w: &Worker, lease: Duration) -> sqlx::Result<usize> {
    let booked = intents::book_in_doubt(&w.pool, lease, SWEEP_LIMIT).await?;
    for b in &booked {
        tracing::warn!(call_id = %b.call_id, job_id = %b.job_id, item_id = %b.item_id, attempt = b.attempt, team = %b.team, owner = %b.owner, "call booked in doubt: its worker is gone");
    }
    crate::metrics::booked_in_doubt(w, booked.len());
    budgets::release_expired(&w.pool, lease).await?;
    let (calls, usd) = intents::unsettled_in_doubt(&w.pool).await?;
    crate::metrics::in_doubt_now(w, calls, usd);
    Ok(booked.len())
}

//! Pass 1 of a job: read every item, check it, score it, store it in chunks.

use std::collections::HashSet;

use switchyard_core::policy::{self, Cut};
use switchyard_core::validate::{self, Limits, Rejection};
use switchyard_proto::JobSpec;
use switchyard_store::items::{self, NewItem};

use crate::Dispatcher;
use crate::source::{ItemSource, SourceError};

/// The result of a successful ingest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ingested {
    pub item_count: i64,
    pub cut: Cut,
}

/// Why an ingest stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The job is bad: reject it with this reason.
    #[error("{0}")]
    Rejected(Rejection),
    /// Something outside the job failed: try again later.
    #[error(transparent)]
    Transient(#[from] anyhow::Error),
}

impl From<sqlx::Error> for IngestError {
    fn from(e: sqlx::Error) -> Self {
        IngestError::Transient(e.into())
    }
}

fn rejected(msg: impl Into<String>) -> IngestError {
    IngestError::Rejected(Rejection(msg.into()))
}

/// Reads, checks, scores and stores every item of `spec`, then computes the policy's cut on
/// this job's own scores. `progress` is called after each stored chunk (the consumer uses it
/// to keep the job message alive).
///
/// # Errors
/// [`IngestError::Rejected`] for bad items (nothing of the job remains stored then is up to
/// the caller), [`IngestError::Transient`] for database or NATS failures.
pub async fn ingest(
    d: &Dispatcher,
    spec: &JobSpec,
    mut source: ItemSource,
    mut progress: impl FnMut(u64),
) -> Result<Ingested, IngestError> {
    let limits: Limits = d.settings.dispatcher.limits();
    let chunk_size = d.settings.dispatcher.chunk_size;
    let kind = spec.task.kind();
    let has_local = d.settings.local_tier().is_some();
    // Only (score, seq) of unpinned items is kept: 16 bytes an item.
    let mut scored: Vec<(f32, i64)> = Vec::new();
    let mut chunk: Vec<NewItem> = Vec::with_capacity(chunk_size);
    let mut seq: i64 = 0;
    loop {
        let next = source.next().await;
        let end = next.is_none();
        if let Some(next) = next {
            let (line, item) = match next {
                Ok(x) => x,
                Err(SourceError::Bad(m)) => return Err(rejected(m)),
                Err(SourceError::Io(e)) => return Err(IngestError::Transient(e.into())),
            };
            validate::check_item(&item, line, &limits).map_err(IngestError::Rejected)?;
            if seq as u64 >= limits.max_items {
                return Err(rejected(format!(
                    "job has more than {} items",
                    limits.max_items
                )));
            }
            let local_only = validate::is_local_only(&item);
            if local_only && !has_local {
                return Err(rejected(format!(
                    "item {:?} is local_only but this deployment has no local tier",
                    item.item_id
                )));
            }
            let score = d.router.score(&item.text, kind);
            let score = if score.is_finite() { score } else { 0.0 };
            if !local_only {
                scored.push((score, seq));
            }
            let metadata = if item.metadata.is_empty() {
                None
            } else {
                serde_json::to_string(&item.metadata).ok()
            };
            chunk.push(NewItem {
                input_hash: switchyard_store::sha256_hex(item.text.as_bytes()),
                item_id: item.item_id,
                seq,
                text: item.text,
                sensitivity: item.sensitivity,
                metadata,
                router_score: score,
            });
            seq += 1;
        }
        if chunk.len() >= chunk_size || (end && !chunk.is_empty()) {
            store_chunk(d, &spec.job_id, &chunk).await?;
            progress(seq as u64);
            chunk.clear();
        }
        if end {
            break;
        }
    }
    if seq == 0 {
        return Err(rejected("job has no items"));
    }
    let cut = policy::compute_cut(&spec.policy.routing, &mut scored);
    Ok(Ingested {
        item_count: seq,
        cut,
    })
}

async fn store_chunk(d: &Dispatcher, job_id: &str, chunk: &[NewItem]) -> Result<(), IngestError> {
    let inserted = items::insert_chunk(&d.pool, job_id, chunk).await?;
    if inserted as usize == chunk.len() {
        return Ok(());
    }
    // Some ids were already there: name one.
    let mut seen = HashSet::with_capacity(chunk.len());
    for it in chunk {
        if !seen.insert(it.item_id.as_str()) {
            return Err(rejected(format!("duplicate item_id {:?}", it.item_id)));
        }
    }
    let ids: Vec<&str> = chunk.iter().map(|i| i.item_id.as_str()).collect();
    let first_seq = chunk.first().map(|i| i.seq).unwrap_or(0);
    let dup: Option<String> = sqlx::query_scalar(
        "SELECT item_id FROM items WHERE job_id = $1 AND item_id = ANY($2) AND seq < $3 LIMIT 1",
    )
    .bind(job_id)
    .bind(&ids)
    .bind(first_seq)
    .fetch_optional(&d.pool)
    .await?;
    Err(rejected(format!(
        "duplicate item_id {:?}",
        dup.unwrap_or_default()
    )))
}

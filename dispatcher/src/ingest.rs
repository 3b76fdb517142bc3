//! Pass 1 of a job: read every item, check it, route it (pin, rule, score, estimates),
//! store it in chunks, then plan the job's policy over its own items.

use std::collections::{BTreeMap, HashSet};

use switchyard_core::calibrate::Plan;
use switchyard_core::policy::Cut;
use switchyard_core::validate::{self, Limits, Rejection};
use switchyard_proto::JobSpec;
use switchyard_store::items::{self, NewItem};

use crate::Dispatcher;
use crate::route::{JobRouter, TierPrices};
use crate::source::{ItemSource, SourceError};

/// The result of a successful ingest.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingested {
    pub item_count: i64,
    pub cut: Cut,
    /// The policy's plan: expected cost and predicted quality.
    pub plan: Plan,
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

/// The prices of the job's model per tier: the database's version in force, else the
/// configuration's seed price.
///
/// # Errors
/// Database errors.
pub async fn job_prices(d: &Dispatcher, spec: &JobSpec) -> sqlx::Result<TierPrices> {
    let mut in_db = BTreeMap::new();
    for tier in d.settings.tiers.keys() {
        if let Some(model) = d.settings.model_for(tier, &spec.policy.models) {
            let price = switchyard_store::routing::current_price(&d.pool, model).await?;
            in_db.insert(model.to_owned(), price);
        }
    }
    Ok(TierPrices::resolve(&d.settings, &spec.policy.models, |m| {
        in_db
            .get(m)
            .copied()
            .flatten()
            .or_else(|| d.settings.price_of(m))
    }))
}

/// Reads, checks, routes and stores every item of `spec`, then plans the policy over this
/// job's own items. `progress` is called after each stored chunk (the consumer uses it to
/// keep the job message alive).
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
    let has_local = d.settings.local_tier().is_some();
    let ds = &d.settings.dispatcher;
    let prices = job_prices(d, spec).await?;
    let generate_max_tokens = d
        .settings
        .model_for(&ds.weak_tier, &spec.policy.models)
        .and_then(|m| d.settings.models.get(m))
        .map_or(512, |m| m.generate_max_tokens);
    let router = JobRouter {
        routing: &spec.policy.routing,
        task: &spec.task,
        team: spec.team.as_deref().unwrap_or("default"),
        project: spec.project.as_deref().unwrap_or("default"),
        rules: &d.rules,
        router: d.router.as_ref(),
        weak_tier: &ds.weak_tier,
        strong_tier: &ds.strong_tier,
        local_tier: d.settings.local_tier(),
        prices: &prices,
        estimator: switchyard_core::estimate::Estimator::new(&spec.task, generate_max_tokens),
    };
    // Only the policy's candidates are kept (seq, scores, extra cost): 32 bytes an item.
    let mut inputs = router.inputs();
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
            let (route, score) = router.route(&item, seq, &mut inputs);
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
                route,
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
    let plan = router
        .plan(&mut inputs)
        .map_err(|e| rejected(e.to_string()))?;
    Ok(Ingested {
        item_count: seq,
        cut: plan.cut,
        plan,
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

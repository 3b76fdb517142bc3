//! Pass 1 of a job: read every item, check it, score and route it (pin, rule, score,
//! estimates), then plan the job's policy over its own items. Nothing is stored or published
//! yet: a bad item anywhere rejects the job with nothing of it in Postgres or JetStream, and
//! pass 2 ([`crate::emit`]) writes each item once, with its final tier.

use std::hash::BuildHasher;

use switchyard_core::calibrate::Plan;
use switchyard_core::policy::Cut;
use switchyard_core::validate::{self, Limits, Rejection};
use switchyard_proto::{ChatItem, JobSpec, Task};

use crate::Dispatcher;
use crate::source::{ItemSource, SourceError};
use switchyard_core::route::{JobFacets, JobRouter, TierPrices};
use switchyard_router::Router;

/// The result of a successful ingest.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingested {
    pub item_count: i64,
    pub cut: Cut,
    /// The policy's plan: expected cost and predicted quality.
    pub plan: Plan,
    /// Every item's raw router score, by position (4 bytes an item): pass 2 routes with
    /// them instead of scoring each item again.
    pub scores: Vec<f32>,
    /// The prices the items were routed with (pass 2 uses the same ones).
    pub prices: TierPrices,
    /// A `quality=Q` job's pilot draw of every item (8 bytes an item; empty for other
    /// policies): the pilot's fraction is made exact from them
    /// (`switchyard_core::quality::exact_pilot_fraction`).
    pub pilot_draws: Vec<f64>,
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
    let models: Vec<String> = d
        .settings
        .tier_models(&spec.policy.models)
        .map(|(_, m)| m.to_owned())
        .collect();
    let in_db = switchyard_store::routing::current_prices(&d.pool, &models).await?;
    Ok(d.settings.tier_prices(&spec.policy.models, |m| {
        in_db.get(m).copied().or_else(|| d.settings.price_of(m))
    }))
}

/// The job's router, as both passes use it.
pub fn job_router<'a>(
    d: &'a Dispatcher,
    spec: &'a JobSpec,
    prices: &'a TierPrices,
) -> JobRouter<'a> {
    JobRouter::new(
        &d.settings.route_config(&d.rules, &spec.policy.models),
        JobFacets {
            routing: &spec.policy.routing,
            task: &spec.task,
            team: spec.team.as_deref().unwrap_or("default"),
            project: spec.project.as_deref().unwrap_or("default"),
        },
        prices,
        d.router.planned_weak_quality(spec.task.kind()),
    )
    .with_model_tiers(d.settings.model_tiers())
}

/// The router's raw score of `item` in `spec`'s task.
pub fn score(d: &Dispatcher, spec: &JobSpec, item: &switchyard_proto::Item) -> f32 {
    score_with(d.router.as_ref(), spec, item)
}

fn score_with(router: &dyn Router, spec: &JobSpec, item: &switchyard_proto::Item) -> f32 {
    if let Task::Chat {} = spec.task
        && let Ok(chat) = ChatItem::from_text(&item.text)
    {
        // The conversation, not its JSON.
        return router.score(&chat.prompt_text(), spec.task.kind());
    }
    router.score(&item.text, spec.task.kind())
}

/// Items pass 1 scores together.
const SCORE_CHUNK: usize = 2048;

/// Scores `items` split over the machine's cores (at most four threads). Scoring is the CPU
/// of pass 1 (a learned router with the embedding table takes several microseconds an item)
/// and pass 1 does no I/O to overlap it with, so a second core halves it.
fn score_all(router: &dyn Router, spec: &JobSpec, items: &[switchyard_proto::Item]) -> Vec<f32> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(4);
    if threads < 2 || items.len() < 256 {
        return items.iter().map(|i| score_with(router, spec, i)).collect();
    }
    let per = items.len().div_ceil(threads);
    let mut out = vec![0.0f32; items.len()];
    std::thread::scope(|scope| {
        for (chunk, slots) in items.chunks(per).zip(out.chunks_mut(per)) {
            scope.spawn(move || {
                for (item, slot) in chunk.iter().zip(slots) {
                    *slot = score_with(router, spec, item);
                }
            });
        }
    });
    out
}

/// Reads, checks and scores every item of `spec` and plans the policy over this job's own
/// items. Stores nothing. `progress` is called every `chunk_size` items (the consumer uses it
/// to keep the job message alive).
///
/// Memory stays small in the job's size: the policy's candidates (32 bytes an item), the raw
/// scores (4 bytes), a 128-bit hash of each item id to find duplicates (16 bytes) and, for a
/// quality job, each item's pilot draw (8 bytes).
///
/// # Errors
/// [`IngestError::Rejected`] for bad items, [`IngestError::Transient`] for database or NATS
/// failures.
pub async fn ingest(
    d: &Dispatcher,
    spec: &JobSpec,
    source: &mut ItemSource,
    mut progress: impl FnMut(u64),
) -> Result<Ingested, IngestError> {
    let limits: Limits = d.settings.dispatcher.limits().for_task(&spec.task);
    let chunk_size = d.settings.dispatcher.chunk_size.get() as u64;
    let has_local = d.settings.local_tier().is_some();
    let prices = job_prices(d, spec).await?;
    let router = job_router(d, spec, &prices);
    let mut inputs = router.inputs();
    let mut scores: Vec<f32> = Vec::new();
    let mut id_hashes: Vec<u128> = Vec::new();
    let quality = matches!(
        spec.policy.routing,
        switchyard_proto::Routing::Quality { .. }
    );
    let mut pilot_draws: Vec<f64> = Vec::new();
    let mut seq: i64 = 0;
    // Items read and checked, waiting to be scored together.
    let mut pending: Vec<switchyard_proto::Item> = Vec::with_capacity(SCORE_CHUNK);
    let mut read: u64 = 0;
    loop {
        let next = source.next().await;
        if let Some(next) = next {
            let (line, item) = match next {
                Ok(x) => x,
                Err(SourceError::Bad(m)) => return Err(rejected(m)),
                Err(SourceError::Io(e)) => return Err(IngestError::Transient(e.into())),
            };
            validate::check_item(&item, line, &limits).map_err(IngestError::Rejected)?;
            if read >= limits.max_items {
                return Err(rejected(format!(
                    "job has more than {} items",
                    limits.max_items
                )));
            }
            read += 1;
            let local_only = validate::is_local_only(&item);
            if local_only && !has_local {
                return Err(rejected(format!(
                    "item {:?} is local_only but this deployment has no local tier",
                    item.item_id
                )));
            }
            pending.push(item);
            if pending.len() < SCORE_CHUNK {
                continue;
            }
        }
        let done = pending.len() < SCORE_CHUNK;
        let raw = score_all(d.router.as_ref(), spec, &pending);
        for (item, raw) in pending.drain(..).zip(raw) {
            let (_, score) = router.route(&item, seq, raw, &mut inputs);
            scores.push(score);
            id_hashes.push(id_hash(&item.item_id));
            if quality {
                pilot_draws.push(switchyard_core::audit::pilot_draw(
                    spec.sample_key(),
                    &item.item_id,
                ));
            }
            seq += 1;
            if (seq as u64).is_multiple_of(chunk_size) {
                progress(seq as u64);
            }
        }
        if done {
            break;
        }
    }
    if seq == 0 {
        return Err(rejected("job has no items"));
    }
    if let Some(dup) = duplicate_hash(&mut id_hashes) {
        drop(id_hashes);
        return Err(rejected(format!(
            "duplicate item_id {:?}",
            name_duplicate(source, dup).await?
        )));
    }
    drop(id_hashes);
    let plan = router
        .plan(&mut inputs)
        .map_err(|e| rejected(e.to_string()))?;
    Ok(Ingested {
        item_count: seq,
        cut: plan.cut,
        plan,
        scores,
        prices,
        pilot_draws,
    })
}

/// A 128-bit hash of an item id (two independent SipHash keys): equal ids hash equal, and
/// two different ids in a million collide with odds of about 10^-26.
fn id_hash(id: &str) -> u128 {
    // Fixed keys: the hash never leaves the process, it only has to be the same within it.
    static KEYS: std::sync::OnceLock<(std::hash::RandomState, std::hash::RandomState)> =
        std::sync::OnceLock::new();
    let (a, b) = KEYS.get_or_init(|| (Default::default(), Default::default()));
    (u128::from(a.hash_one(id)) << 64) | u128::from(b.hash_one(id))
}

/// A hash that occurs twice, if any (sorts `hashes`).
fn duplicate_hash(hashes: &mut [u128]) -> Option<u128> {
    hashes.sort_unstable();
    hashes.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// The id whose hash is `dup`: read the items again to name it in the rejection.
async fn name_duplicate(source: &mut ItemSource, dup: u128) -> Result<String, IngestError> {
    source
        .rewind()
        .await
        .map_err(|e| IngestError::Transient(e.into()))?;
    while let Some(next) = source.next().await {
        if let Ok((_, item)) = next
            && id_hash(&item.item_id) == dup
        {
            return Ok(item.item_id);
        }
    }
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_split_over_cores_are_the_scores_one_by_one() {
        let router = switchyard_router::default_router();
        let spec = JobSpec::new(
            "j",
            Task::Summarize {
                max_words: None,
                instructions: None,
            },
        );
        let items: Vec<switchyard_proto::Item> = (0..1000)
            .map(|i| {
                let text = format!("item {i}: {}", "word ".repeat(i % 97));
                switchyard_proto::Item::new(format!("i{i}"), text)
            })
            .collect();
        let together = score_all(router.as_ref(), &spec, &items);
        let one_by_one: Vec<f32> = items
            .iter()
            .map(|i| score_with(router.as_ref(), &spec, i))
            .collect();
        assert_eq!(together, one_by_one);
    }

    #[test]
    fn duplicates_are_found_by_hash() {
        let mut h: Vec<u128> = ["a", "b", "c"].iter().map(|s| id_hash(s)).collect();
        assert_eq!(duplicate_hash(&mut h), None);
        let mut h: Vec<u128> = ["a", "b", "c", "b"].iter().map(|s| id_hash(s)).collect();
        assert_eq!(duplicate_hash(&mut h), Some(id_hash("b")));
        assert_ne!(id_hash("a"), id_hash("b"));
    }
}

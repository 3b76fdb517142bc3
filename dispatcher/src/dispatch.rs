//! One job, start to finish: admission, ingest, routing, publishing.

use std::sync::atomic::Ordering;

use switchyard_proto::{JobSpec, Routing, WorkItem, work};
use switchyard_store::jobs::{self, Admission, NewJob, status};
use switchyard_store::{items, sha256_hex};

use crate::Dispatcher;
use crate::emit;
use crate::ingest::{self, IngestError};
use crate::pilot::{self, Stage, StoredStage};
use crate::source::{ItemSource, SourceError};
use switchyard_runtime::metrics::TierLabel;

/// How handling a job ended.
#[derive(Debug)]
pub enum JobOutcome {
    /// All items are on their tiers (now or before: a duplicate submission).
    Dispatched { items: u64, duplicate: bool },
    /// The job was rejected with a reason stored on it. `own_ingest`: the job row is this
    /// message's own (admitted with the same content) and its ingest stopped halfway, so the
    /// row, still `ingesting`, becomes `rejected`; any other rejection (a different content
    /// under the id, a config check) leaves an existing row alone.
    Rejected { reason: String, own_ingest: bool },
}

/// Handles one well-formed job spec, brought by the job message at stream sequence
/// `message_seq` (stored with a new job, so a sweep can find its message). `progress` is
/// called now and then during long work.
///
/// # Errors
/// Transient failures (database, NATS); the job message should be redelivered and the
/// work resumes where the stored state says.
pub async fn dispatch_job(
    d: &Dispatcher,
    spec: &JobSpec,
    message_seq: Option<i64>,
    mut progress: impl FnMut(),
) -> anyhow::Result<JobOutcome> {
    let mut new_job = new_job_row(spec);
    new_job.message_seq = message_seq;
    let admission = jobs::admit(&d.pool, &new_job).await?;
    let new = matches!(admission, Admission::New);
    let state = match admission {
        Admission::New => status::INGESTING.to_owned(),
        Admission::Existing {
            job_id,
            status,
            same_content,
        } => {
            if !same_content {
                let reason = if job_id == spec.job_id {
                    format!("job id `{job_id}` was already submitted with different content")
                } else {
                    format!(
                        "idempotency key `{}` was already used by job `{job_id}` with different \
                         content",
                        spec.effective_idempotency_key()
                    )
                };
                return Ok(JobOutcome::Rejected {
                    reason,
                    own_ingest: false,
                });
            }
            if job_id != spec.job_id {
                // Same content under another job id: the earlier job stands.
                d.counters.jobs_duplicate.fetch_add(1, Ordering::Relaxed);
                d.job_outcome("duplicate");
                return Ok(JobOutcome::Dispatched {
                    items: 0,
                    duplicate: true,
                });
            }
            status
        }
    };
    // Checked once the job is known to be this message's own (admitted now, or this same
    // content before), so that a job still ingesting ends `rejected` with the reason (a
    // deployment whose config changed under it), while a message that only names the id
    // was answered above without touching the job.
    if let Err(reason) = check_against_config(d, spec) {
        if state == status::INGESTING {
            jobs::clear_rejected_ingest(&d.pool, &spec.job_id).await?;
        }
        return Ok(JobOutcome::Rejected {
            reason,
            own_ingest: true,
        });
    }
    if new {
        d.counters.jobs_accepted.fetch_add(1, Ordering::Relaxed);
        d.job_outcome("accepted");
    }

    match state.as_str() {
        status::INGESTING => {
            // A new job, or one whose ingest was interrupted: (re)start it from scratch. (Only
            // an older dispatcher stored items before `dispatching`; a new job has none.)
            if !new {
                items::delete_for_job(&d.pool, &spec.job_id).await?;
            }
            let mut source = match open_source(d, spec).await {
                Ok(s) => s,
                Err(SourceError::Bad(reason)) => {
                    jobs::clear_rejected_ingest(&d.pool, &spec.job_id).await?;
                    return Ok(JobOutcome::Rejected {
                        reason,
                        own_ingest: true,
                    });
                }
                Err(SourceError::Io(e)) => return Err(e.into()),
            };
            let mut ingested = match ingest::ingest(d, spec, &mut source, |_| progress()).await {
                Ok(i) => i,
                Err(IngestError::Rejected(r)) => {
                    jobs::clear_rejected_ingest(&d.pool, &spec.job_id).await?;
                    return Ok(JobOutcome::Rejected {
                        reason: r.0,
                        own_ingest: true,
                    });
                }
                Err(IngestError::Transient(e)) => return Err(e),
            };
            if matches!(spec.policy.routing, Routing::Quality { .. }) {
                // Pilot, then route: the router-only plan of pass 1 is not used.
                let stage =
                    pilot::pilot_stage(d, spec, &mut ingested.pilot_draws, &ingested.plan).await?;
                let json = serde_json::to_value(&stage).unwrap_or_default();
                jobs::mark_ingested(&d.pool, &spec.job_id, ingested.item_count, None, &json)
                    .await?;
                let (prices, scores) = (ingested.prices, ingested.scores);
                return dispatch_quality(
                    d,
                    spec,
                    &mut source,
                    &prices,
                    Some(&scores),
                    stage,
                    &mut progress,
                )
                .await;
            }
            tracing::info!(
                job_id = %spec.job_id,
                policy = %ingested.plan.policy,
                strong = ingested.plan.strong,
                decided = ingested.plan.decided,
                expected_usd = %ingested.plan.expected_usd,
                predicted_quality = ingested.plan.predicted_quality,
                "job planned"
            );
            let cut = ingested.cut.as_pair();
            let plan = serde_json::to_value(&ingested.plan).unwrap_or_default();
            jobs::mark_ingested(&d.pool, &spec.job_id, ingested.item_count, cut, &plan).await?;
            let cut = emit::cut_from_pair(cut);
            let (prices, scores) = (ingested.prices, ingested.scores);
            publish_items(
                d,
                spec,
                &mut source,
                &prices,
                Some(&scores),
                &Stage::All { cut },
                &mut progress,
            )
            .await
        }
        status::DISPATCHING => {
            // Interrupted while storing and publishing: read the items again and go on.
            let row = jobs::get(&d.pool, &spec.job_id).await?;
            let cut_pair = row.and_then(|j| Some((j.routing_cut?, j.routing_cut_seq?)));
            let mut source = open_source(d, spec).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the items of dispatching job {}: {e}",
                    spec.job_id
                )
            })?;
            let prices = ingest::job_prices(d, spec).await?;
            let stored = switchyard_store::quality::stored_plan(&d.pool, &spec.job_id).await?;
            if let Some(stage) = pilot::stored_stage(stored.as_ref()) {
                return dispatch_quality(d, spec, &mut source, &prices, None, stage, &mut progress)
                    .await;
            }
            let cut = emit::cut_from_pair(cut_pair);
            publish_items(
                d,
                spec,
                &mut source,
                &prices,
                None,
                &Stage::All { cut },
                &mut progress,
            )
            .await
        }
        _ => {
            // Already running or finished: nothing new to publish. A `running` job's message
            // comes back when its dispatcher died after `mark_running` and before the
            // completion check (the message is acked only after it): with every item
            // answered, no worker's commit will ever check again, so this one does, instead
            // of leaving the job to the stuck-job sweep (`stuck_after`, ten minutes).
            if state == status::RUNNING {
                crate::consumer::finish_if_done(d, &d.pool, &spec.job_id).await?;
            }
            d.counters.jobs_duplicate.fetch_add(1, Ordering::Relaxed);
            d.job_outcome("duplicate");
            Ok(JobOutcome::Dispatched {
                items: 0,
                duplicate: true,
            })
        }
    }
}

/// Checks the parts of a spec that depend on this deployment's configuration.
fn check_against_config(d: &Dispatcher, spec: &JobSpec) -> Result<(), String> {
    for (tier, model) in &spec.policy.models {
        if !d.settings.tiers.contains_key(tier) {
            return Err(format!("policy.models names unknown tier `{tier}`"));
        }
        match d.settings.models.get(model) {
            None => return Err(format!("policy.models: unknown model `{model}`")),
            Some(m) if m.tier != *tier => {
                return Err(format!(
                    "policy.models: model `{model}` serves tier `{}`, not `{tier}`",
                    m.tier
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(input) = &spec.input {
        let bucket = d.settings.topology().inputs_bucket();
        if input.bucket != bucket {
            return Err(format!(
                "input bucket `{}` is not this deployment's inputs bucket `{bucket}`",
                input.bucket
            ));
        }
    }
    Ok(())
}

fn new_job_row(spec: &JobSpec) -> NewJob {
    // The spec hash covers content, not encoding (field and map order are fixed by the
    // types, so equal specs hash equal whatever client encoded them), and not the job id: a
    // client retrying under a new id with the same idempotency key and content gets the
    // existing job.
    let mut content = spec.clone();
    content.job_id.clear();
    let canonical = serde_json::to_vec(&content).unwrap_or_default();
    NewJob {
        job_id: spec.job_id.clone(),
        idempotency_key: spec.effective_idempotency_key().to_owned(),
        spec_hash: sha256_hex(&canonical),
        team: spec.team.clone().unwrap_or_else(|| "default".to_owned()),
        project: spec.project.clone().unwrap_or_else(|| "default".to_owned()),
        task_kind: spec.task.kind().as_str().to_owned(),
        task: serde_json::to_value(&spec.task).unwrap_or_default(),
        policy: serde_json::to_value(&spec.policy).unwrap_or_default(),
        labels: serde_json::to_value(&spec.labels).unwrap_or_default(),
        message_seq: None,
        deadline_secs: spec.deadline.and_then(|s| i64::try_from(s).ok()),
    }
}

async fn open_source(d: &Dispatcher, spec: &JobSpec) -> Result<ItemSource, SourceError> {
    match (&spec.items, &spec.input) {
        (Some(items), _) => Ok(ItemSource::inline(items.clone())),
        (None, Some(input)) => {
            // A line holds an item plus JSON quoting: allow some room over the text limit,
            // the task's (a chat item, an OpenAI batch line's conversation, has its own).
            let limits = &d.settings.dispatcher;
            let text_limit = match spec.task {
                switchyard_proto::Task::Chat {} => limits.max_chat_item_bytes,
                _ => limits.max_item_bytes,
            };
            let max_line = text_limit * 2 + 4096;
            ItemSource::object(&d.js, &input.bucket, &input.name, max_line).await
        }
        (None, None) => Err(SourceError::Bad("job has no items".to_owned())),
    }
}

/// A quality job from its stored stage on: the pilot (stored, published, answered, planned
/// from), then the rest by the plan ([`pilot`]).
async fn dispatch_quality(
    d: &Dispatcher,
    spec: &JobSpec,
    source: &mut ItemSource,
    prices: &switchyard_core::route::TierPrices,
    scores: Option<&[f32]>,
    stage: StoredStage,
    progress: &mut impl FnMut(),
) -> anyhow::Result<JobOutcome> {
    let stopped = |items| {
        tracing::info!(job_id = %spec.job_id, "job stopped while dispatching (cancelled)");
        Ok(JobOutcome::Dispatched {
            items,
            duplicate: false,
        })
    };
    let (routed, cut) = match stage {
        StoredStage::Pilot {
            pilot_fraction,
            samples,
            ..
        } => {
            let pilot_stage = Stage::Pilot {
                fraction: pilot_fraction,
                samples,
            };
            let emitted =
                emit::emit(d, spec, source, prices, scores, &pilot_stage, progress).await?;
            d.counters
                .items_published
                .fetch_add(emitted.published, Ordering::Relaxed);
            if emitted.stopped {
                return stopped(emitted.published);
            }
            tracing::info!(job_id = %spec.job_id, pilot = emitted.published, "pilot published, waiting for its answers");
            let Some(rows) =
                pilot::wait_for_pilot(d, spec, &pilot_stage, pilot::PILOT_TIMEOUT).await?
            else {
                return stopped(emitted.published);
            };
            let (stage, cut) =
                pilot::plan(d, spec, source, prices, pilot_fraction, samples, &rows).await?;
            let json = serde_json::to_value(&stage).unwrap_or_default();
            if switchyard_store::quality::store_plan(&d.pool, &spec.job_id, cut.as_pair(), &json)
                .await?
            {
                (stage, cut.as_pair())
            } else {
                // Cancelled, or another owner planned first (see `store_plan`): its plan is
                // the one every item follows.
                match first_plan(d, &spec.job_id).await? {
                    Some(first) => first,
                    None => return stopped(emitted.published),
                }
            }
        }
        routed => {
            let row = jobs::get(&d.pool, &spec.job_id).await?;
            let cut = row.and_then(|j| Some((j.routing_cut?, j.routing_cut_seq?)));
            (routed, cut)
        }
    };
    let Some(stage) = pilot::routed(&routed, cut) else {
        anyhow::bail!("job {} has no plan after its pilot", spec.job_id);
    };
    publish_items(d, spec, source, prices, None, &stage, progress).await
}

/// The routed plan another owner of a still-dispatching job stored first, with its cut;
/// `None` when the job is no longer dispatching.
async fn first_plan(
    d: &Dispatcher,
    job_id: &str,
) -> anyhow::Result<Option<(StoredStage, Option<(f32, i64)>)>> {
    let Some(job) = jobs::get(&d.pool, job_id)
        .await?
        .filter(|j| j.status == jobs::status::DISPATCHING)
    else {
        return Ok(None);
    };
    let stored = switchyard_store::quality::stored_plan(&d.pool, job_id).await?;
    match pilot::stored_stage(stored.as_ref()) {
        Some(routed @ StoredStage::Routed { .. }) => {
            tracing::warn!(
                job_id,
                "another dispatcher planned this job first; following its plan"
            );
            Ok(Some((routed, job.routing_cut.zip(job.routing_cut_seq))))
        }
        _ => anyhow::bail!("job {job_id}: its plan could not be stored and none is there"),
    }
}

/// Pass 2 ([`emit`]): stores and publishes every item `stage` includes, then marks the job
/// running.
async fn publish_items(
    d: &Dispatcher,
    spec: &JobSpec,
    source: &mut ItemSource,
    prices: &switchyard_core::route::TierPrices,
    scores: Option<&[f32]>,
    stage: &Stage,
    progress: &mut impl FnMut(),
) -> anyhow::Result<JobOutcome> {
    let emitted = emit::emit(d, spec, source, prices, scores, stage, progress).await?;
    d.counters
        .items_published
        .fetch_add(emitted.published, Ordering::Relaxed);
    // Items per tier, added to the metrics once per job rather than per item.
    for (tier, n) in emitted.per_tier {
        d.metrics
            .items_routed
            .get_or_create(&TierLabel { tier })
            .inc_by(n);
    }
    if emitted.stopped {
        tracing::info!(job_id = %spec.job_id, "job stopped while dispatching (cancelled)");
        return Ok(JobOutcome::Dispatched {
            items: emitted.published,
            duplicate: false,
        });
    }
    jobs::mark_running(&d.pool, &spec.job_id).await?;
    // Every item may already be done (a resumed dispatch): finish the job if so.
    // (Workers answer the first items while the last are published: a single-item job is
    // often finished before it is marked running, and only this check sees it end, so it
    // must announce it, or `<prefix>.jobs.done.<job>` waiters never hear of it.)
    crate::consumer::finish_if_done(d, &d.pool, &spec.job_id).await?;
    Ok(JobOutcome::Dispatched {
        items: emitted.published,
        duplicate: false,
    })
}

/// The shadow call of a weak-routed item, when the job's `shadow` fraction samples it: the
/// same item on the strong tier, attempt [`work::SHADOW_ATTEMPT`], never escalating. Its
/// answer is recorded and booked as shadow cost, never final. `local_only` items are never
/// shadowed (the strong tier may not be local).
pub(crate) fn shadow_of(d: &Dispatcher, spec: &JobSpec, item: &WorkItem) -> Option<WorkItem> {
    let ds = &d.settings.dispatcher;
    let fraction = spec.policy.shadow?;
    if item.tier != ds.weak_tier
        || item.local_only
        || !switchyard_core::shadow::sampled(&item.job_id, &item.item_id, fraction)
    {
        return None;
    }
    let mut shadow = item.clone();
    shadow.tier = ds.strong_tier.clone();
    shadow.attempt = work::SHADOW_ATTEMPT;
    shadow.escalations_left = 0;
    Some(shadow)
}

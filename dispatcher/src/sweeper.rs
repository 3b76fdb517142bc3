//! The stuck-job sweep: every dispatcher, every `[dispatcher] sweep_every`, finishes the jobs
//! nobody else will finish (docs/reliability.md, "Stuck jobs").
//!
//! **What is stuck.** A job not final (`ingesting`, `dispatching`, `running`) whose progress
//! was last seen more than `[dispatcher] stuck_after` ago, with no live owner:
//!
//! - nobody holds its job lock ([`JobLock`]): no dispatcher is working on its message (one that
//!   died lost its session and the lock with it). The sweep takes the lock itself, so
//!   dispatchers and the sweeps of other dispatchers keep off the job while it looks;
//! - `running`: no live worker holds an intent on any of its items, and its open items did not
//!   change between two looks of the sweep (see `switchyard_store::sweep`).
//!
//! **What is done.**
//!
//! - `running`: completed if every item is final (a completion check that failed after
//!   `mark_running` is never made again otherwise); else the current attempts that nothing
//!   works on (no result, no recorded failure, no live intent, not parked for budget) are
//!   published again on their tier, with their attempt key as `Nats-Msg-Id`. Only on a tier
//!   whose workers have nothing left to be handed (its consumer has no undelivered message):
//!   while a backlog is waiting, the item's message may be in it. A re-publish outside
//!   JetStream's duplicate window is a second message, which the workers' claim makes
//!   harmless: an attempt that was answered meanwhile is settled, one being called is busy;
//!   nothing is called twice.
//! - `ingesting` / `dispatching` whose job message is still in the stream (it ran out of
//!   deliveries without its failure being recorded, e.g. Postgres was down, or its last
//!   dispatcher died): the sweep takes the message over and handles it as its last delivery
//!   (the dispatch resumes from the stored state, or the job ends `failed` with the reason),
//!   then deletes it from the stream.
//! - `dispatching` whose message is gone: if every item is stored, the items nothing works on
//!   are published and the job runs; if not, the missing items cannot be stored any more and
//!   the job ends `failed` with that reason. `ingesting` whose message is gone: `failed`.
//!
//! Each job a sweep finishes this way counts in `switchyard_stuck_job_sweeps`.

use std::collections::HashMap;

use anyhow::Context as _;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::RawMessageErrorKind;
use bytes::Bytes;
use sqlx::PgConnection;
use switchyard_proto::topology::{HEADER_DLQ_REASON, HEADER_JOB_ID};
use switchyard_proto::{JobSpec, Policy, Task, WorkItem, codec, work};
use switchyard_store::dead_letters::{self, DeadLetter};
use switchyard_store::jobs::{self, status};
use switchyard_store::sweep::{self, Candidate, LostAttempt, SweptJob};
use tokio_util::sync::CancellationToken;

use crate::Dispatcher;
use crate::consumer::{self, JobDisposition, JobMessage};
use crate::job_lock::JobLock;
use crate::pilot::StoredStage;
use crate::publisher::WindowedPublisher;

/// Jobs looked at per sweep (oldest progress first; the rest wait for the next sweep).
const JOBS_PER_SWEEP: i64 = 100;

/// Lost attempts read per query while re-publishing a job's.
const PAGE: i64 = 2_000;

/// What a sweep did to one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swept {
    /// Its job message, dead in the stream, was taken over and handled as its last delivery:
    /// the dispatch resumed and finished.
    TookOver,
    /// Attempts nothing worked on were published again (how many; a `dispatching` job whose
    /// items were all stored also moved to `running`).
    Republished(u64),
    /// Every item was final: the job is now in this state.
    Completed(String),
    /// The job could not be finished: it is `failed` with this reason.
    Failed(String),
}

/// Sweeps every `[dispatcher] sweep_every` until `shutdown` (a sweep in progress is dropped:
/// everything it does is idempotent, and its job lock ends with its connection).
pub async fn run(d: Dispatcher, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(d.settings.dispatcher.sweep_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            swept = sweep(&d) => {
                if let Err(e) = swept {
                    tracing::warn!(error = %format!("{e:#}"), "cannot sweep for stuck jobs");
                }
            }
        }
    }
}

/// One sweep over the jobs that look stuck; returns what was done to each job it finished.
///
/// # Errors
/// When the candidates cannot be read; a job that cannot be swept is logged and left for the
/// next sweep.
pub async fn sweep(d: &Dispatcher) -> anyhow::Result<Vec<(String, Swept)>> {
    let stuck_after = d.settings.dispatcher.stuck_after;
    let candidates = sweep::candidates(&d.pool, stuck_after, JOBS_PER_SWEEP).await?;
    let mut backlogs = Backlogs::new(d);
    let mut out = Vec::new();
    for c in candidates {
        match sweep_job(d, &c, &mut backlogs).await {
            Ok(Some(swept)) => {
                d.metrics.stuck_job_sweeps.inc();
                tracing::warn!(job_id = %c.job_id, was = %c.status, swept = ?swept, "stuck job swept");
                out.push((c.job_id, swept));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job_id = %c.job_id, error = %format!("{e:#}"), "cannot sweep a stuck job; trying again next sweep");
            }
        }
    }
    Ok(out)
}

/// What to do once the job's lock is released.
enum Next {
    Done(Option<Swept>),
    TakeOver(Box<StreamMessage>),
}

async fn sweep_job(
    d: &Dispatcher,
    c: &Candidate,
    backlogs: &mut Backlogs<'_>,
) -> anyhow::Result<Option<Swept>> {
    // Held: a dispatcher (or another sweep) is on it.
    let Some(mut lock) = JobLock::try_acquire(&d.pool, &c.job_id).await? else {
        return Ok(None);
    };
    let next = under_lock(d, lock.conn(), &c.job_id, backlogs).await;
    lock.release().await;
    match next? {
        Next::Done(swept) => Ok(swept),
        Next::TakeOver(msg) => take_over(d, &c.job_id, *msg).await,
    }
}

async fn under_lock(
    d: &Dispatcher,
    conn: &mut PgConnection,
    job_id: &str,
    backlogs: &mut Backlogs<'_>,
) -> anyhow::Result<Next> {
    let stuck_after = d.settings.dispatcher.stuck_after;
    let Some(job) = sweep::job(conn, job_id, stuck_after).await? else {
        return Ok(Next::Done(None));
    };
    if !job.quiet {
        return Ok(Next::Done(None));
    }
    match job.status.as_str() {
        status::RUNNING => Ok(Next::Done(sweep_running(d, conn, &job, backlogs).await?)),
        status::INGESTING | status::DISPATCHING => match job_message(d, &job).await? {
            Some(msg) => Ok(Next::TakeOver(Box::new(msg))),
            None => Ok(Next::Done(Some(
                without_message(d, conn, &job, backlogs).await?,
            ))),
        },
        _ => Ok(Next::Done(None)),
    }
}

/// A `running` job: stuck when nobody calls its items and its open items did not change since
/// the last look; then completed, or its lost attempts published again.
async fn sweep_running(
    d: &Dispatcher,
    conn: &mut PgConnection,
    job: &SweptJob,
    backlogs: &mut Backlogs<'_>,
) -> anyhow::Result<Option<Swept>> {
    let lease = d.settings.finance.reservation_lease;
    if sweep::has_live_intent(conn, &job.job_id, lease).await? {
        sweep::record_mark(conn, &job.job_id, None).await?;
        return Ok(None);
    }
    let mark = sweep::open_mark(conn, &job.job_id).await?;
    let nothing_open = mark.starts_with("0:");
    if !nothing_open && job.progress_mark.as_deref() != Some(mark.as_str()) {
        // Moved since the last look (or this is the first): look again after `stuck_after`.
        sweep::record_mark(conn, &job.job_id, Some(&mark)).await?;
        return Ok(None);
    }
    let swept = match complete(d, conn, &job.job_id).await? {
        Some(done) => Some(done),
        None => {
            let n = republish_lost(d, conn, job, backlogs).await?;
            (n > 0).then_some(Swept::Republished(n))
        }
    };
    // Whatever was done, the next look is `stuck_after` from now.
    sweep::record_mark(conn, &job.job_id, Some(&mark)).await?;
    Ok(swept)
}

/// Completes the job if every item is final, and announces it.
async fn complete(
    d: &Dispatcher,
    conn: &mut PgConnection,
    job_id: &str,
) -> anyhow::Result<Option<Swept>> {
    Ok(consumer::finish_if_done(d, &mut *conn, job_id)
        .await?
        .map(Swept::Completed))
}

/// An `ingesting` or `dispatching` job whose message is gone from the stream.
async fn without_message(
    d: &Dispatcher,
    conn: &mut PgConnection,
    job: &SweptJob,
    backlogs: &mut Backlogs<'_>,
) -> anyhow::Result<Swept> {
    let stored = sweep::stored_items(conn, &job.job_id).await?;
    let reason = match (job.status.as_str(), job.item_count) {
        (status::DISPATCHING, Some(count)) if stored >= count => {
            // Every item is stored: publish what nothing works on, and the job runs.
            let n = republish_lost(d, conn, job, backlogs).await?;
            jobs::mark_running(&mut *conn, &job.job_id).await?;
            if let Some(done) = complete(d, conn, &job.job_id).await? {
                return Ok(done);
            }
            return Ok(Swept::Republished(n));
        }
        (status::DISPATCHING, count) => format!(
            "no dispatcher finished storing this job and its job message is gone (out of \
             deliveries, or lost): {stored} of {} items were stored, the others cannot be \
             stored any more",
            count.map_or_else(|| "its".to_owned(), |c| c.to_string())
        ),
        _ => "no dispatcher finished ingesting this job and its job message is gone (out of \
              deliveries, or lost); nothing of it was published"
            .to_owned(),
    };
    fail_without_message(d, conn, job, &reason).await?;
    Ok(Swept::Failed(reason))
}

/// Records a job failed by the sweep (dead letter, job and open items), announces it, and
/// puts a notice on the jobs' dead-letter subject (the message itself is gone).
async fn fail_without_message(
    d: &Dispatcher,
    conn: &mut PgConnection,
    job: &SweptJob,
    reason: &str,
) -> anyhow::Result<()> {
    let key = format!("sweep:{}:{}", job.job_id.len(), job.job_id);
    dead_letters::record(
        &mut *conn,
        &DeadLetter {
            message_key: &key,
            kind: "job",
            job_id: Some(&job.job_id),
            item_id: None,
            attempt: None,
            subject: &d.settings.topology().jobs_submit_subject(),
            deliveries: None,
            error: reason,
        },
    )
    .await?;
    jobs::fail_in(conn, &job.job_id, &job.team, &job.project, reason).await?;
    d.job_outcome("failed");
    consumer::publish_job_event(d, &job.job_id, status::FAILED).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        HEADER_DLQ_REASON,
        reason.replace(['\r', '\n'], " ").as_str(),
    );
    headers.insert(HEADER_JOB_ID, job.job_id.as_str());
    let subject = d.settings.topology().dlq_jobs_subject();
    if let Ok(ack) =
        d.js.publish_with_headers(subject, headers, Bytes::new())
            .await
    {
        let _ = ack.await;
    }
    Ok(())
}

/// The job's message, when it is still in the jobs stream (`jobs.message_seq`) and is this
/// job's.
async fn job_message(d: &Dispatcher, job: &SweptJob) -> anyhow::Result<Option<StreamMessage>> {
    let Some(seq) = job
        .message_seq
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
    else {
        return Ok(None);
    };
    let stream = d.js.get_stream(d.settings.topology().jobs_stream()).await?;
    let msg = match stream.get_raw_message(seq).await {
        Ok(msg) => msg,
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(e).context("cannot read the job's message"),
    };
    let id = consumer::header_job_id(Some(&msg.headers)).or_else(|| {
        codec::decode::<JobSpec>(&msg.payload)
            .ok()
            .map(|s| s.job_id)
    });
    Ok((id.as_deref() == Some(job.job_id.as_str())).then_some(msg))
}

/// Handles a job message the consumer will not deliver again as its last delivery, then
/// removes it from the stream (a dispatcher holding a copy meanwhile finds the job's stored
/// state and acks it).
async fn take_over(
    d: &Dispatcher,
    job_id: &str,
    msg: StreamMessage,
) -> anyhow::Result<Option<Swept>> {
    tracing::warn!(job_id = %job_id, seq = msg.sequence, "taking over a stuck job's message");
    let job = JobMessage {
        subject: msg.subject.to_string(),
        header_id: consumer::header_job_id(Some(&msg.headers)),
        payload: msg.payload,
        deliveries: d.settings.dispatcher.max_deliver.max(1),
        stream_seq: msg.sequence,
    };
    let swept = match consumer::handle_job(d, &job).await {
        JobDisposition::Done => Swept::TookOver,
        JobDisposition::GiveUp { reason } => {
            consumer::publish_dead_letter(d, &job, &reason).await;
            Swept::Failed(reason)
        }
        // Not recorded (Postgres still down), or a dispatcher took the job meanwhile.
        JobDisposition::Retry { .. } => return Ok(None),
    };
    let stream = d.js.get_stream(d.settings.topology().jobs_stream()).await?;
    if let Err(e) = stream.delete_message(job.stream_seq).await {
        tracing::warn!(job_id = %job_id, error = %e, "cannot delete a taken-over job message; its job is settled, a redelivery finds it so");
    }
    Ok(Some(swept))
}

/// Publishes again the current attempts of `job` that nothing works on (see
/// [`sweep::lost_attempts`]), on tiers with no backlog; returns how many.
async fn republish_lost(
    d: &Dispatcher,
    conn: &mut PgConnection,
    job: &SweptJob,
    backlogs: &mut Backlogs<'_>,
) -> anyhow::Result<u64> {
    let ds = &d.settings.dispatcher;
    let task: Task = serde_json::from_value(job.task.clone().unwrap_or_default())
        .context("the job has no task")?;
    let policy: Policy = job
        .policy
        .clone()
        .and_then(|p| serde_json::from_value(p).ok())
        .unwrap_or_default();
    let stage = crate::pilot::stored_stage(job.routing_plan.as_ref());
    let message = Message {
        job,
        task,
        samples: crate::pilot::extra_samples_for(&d.settings, &policy.models),
        stage,
        weak_tier: &ds.weak_tier,
        strong_tier: &ds.strong_tier,
        threshold: policy
            .cascade
            .confidence_threshold
            .unwrap_or(ds.confidence_threshold.get()),
        escalations: policy.cascade.max_escalations.unwrap_or(ds.max_escalations),
        policy,
    };
    let lease = d.settings.finance.reservation_lease;
    let t = d.settings.topology();
    let mut publisher = WindowedPublisher::new(d.js.clone(), ds.publish_window.get());
    let (mut after, mut sent) = (-1, 0);
    loop {
        let page = sweep::lost_attempts(conn, &job.job_id, lease, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() as i64 == PAGE;
        for lost in page {
            let tier = lost.tier.clone().unwrap_or_else(|| ds.weak_tier.clone());
            if backlogs.waiting(&tier).await {
                continue;
            }
            let Some(item) = message.for_attempt(lost, tier) else {
                continue;
            };
            let id = work::attempt_key(&item.job_id, &item.item_id, item.attempt);
            publisher
                .publish(
                    t.work_subject(&item.tier),
                    &id,
                    Bytes::from(codec::encode(&item)?),
                )
                .await?;
            sent += 1;
        }
        if !full {
            break;
        }
    }
    publisher.flush().await?;
    Ok(sent)
}

/// What every work message of a job shares.
struct Message<'a> {
    job: &'a SweptJob,
    task: Task,
    policy: Policy,
    threshold: f64,
    escalations: u8,
    /// A quality job's stored stage: first messages carry its rule (or pilot sampling).
    stage: Option<StoredStage>,
    /// Extra samples per weak answer, for the pilot's items.
    samples: u8,
    weak_tier: &'a str,
    strong_tier: &'a str,
}

impl Message<'_> {
    /// The work message of a lost attempt, on `tier`. Its escalations are the job's, less the
    /// item's earlier answers that escalated. A quality job's first message gets what the
    /// dispatcher gave it: the stage's escalation rule and the router's score (its audit call,
    /// if it had one, is not sent again: the audit is a sample, and a lost one is only left
    /// out of it).
    fn for_attempt(&self, lost: LostAttempt, tier: String) -> Option<WorkItem> {
        let attempt = u16::try_from(lost.attempt).ok()?;
        let used = u8::try_from(lost.escalations).unwrap_or(u8::MAX);
        let score = lost.router_score;
        let deadline = crate::emit::unix_deadline(self.job.deadline_unix);
        let mut msg = WorkItem {
            v: switchyard_proto::version_for(&self.task, deadline.is_some()),
            job_id: self.job.job_id.clone(),
            item_id: lost.item_id,
            attempt,
            tier,
            text: lost.text,
            task: self.task.clone(),
            team: self.job.team.clone(),
            project: self.job.project.clone(),
            local_only: lost.sensitivity.as_deref() == Some("local_only"),
            models: self.policy.models.clone(),
            confidence_threshold: self.threshold,
            escalation: None,
            router_score: None,
            cost_weight: None,
            deadline,
            escalations_left: self.escalations.saturating_sub(used),
        };
        if let (0, Some(stored)) = (attempt, &self.stage) {
            let key = self
                .policy
                .sample_key
                .as_deref()
                .unwrap_or(&self.job.job_id);
            let stage = crate::pilot::stage_of_item(stored, key, &msg.item_id, self.samples);
            let _audit = stage.decorate(&mut msg, key, score, self.weak_tier, self.strong_tier);
        }
        Some(msg)
    }
}

/// Whether each tier's workers still have messages waiting to be handed out (asked once per
/// sweep). A tier without a consumer (no worker ever ran for it) counts as waiting: whatever
/// is published there waits too.
pub(crate) struct Backlogs<'a> {
    d: &'a Dispatcher,
    known: HashMap<String, bool>,
}

impl<'a> Backlogs<'a> {
    pub(crate) fn new(d: &'a Dispatcher) -> Self {
        Self {
            d,
            known: HashMap::new(),
        }
    }

    pub(crate) async fn waiting(&mut self, tier: &str) -> bool {
        if let Some(&waiting) = self.known.get(tier) {
            return waiting;
        }
        let t = self.d.settings.topology();
        let pending = async {
            let stream = self.d.js.get_stream(t.work_stream()).await.ok()?;
            let mut consumer: PullConsumer =
                stream.get_consumer(&t.worker_consumer(tier)).await.ok()?;
            consumer.info().await.ok().map(|i| i.num_pending)
        }
        .await;
        let waiting = pending.is_none_or(|n| n > 0);
        if waiting {
            tracing::info!(tier = %tier, "tier has a backlog; lost attempts on it wait for the next sweep");
        }
        self.known.insert(tier.to_owned(), waiting);
        waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> SweptJob {
        SweptJob {
            job_id: "j".into(),
            status: "running".into(),
            quiet: true,
            team: "t".into(),
            project: "p".into(),
            task: None,
            policy: None,
            item_count: None,
            message_seq: None,
            progress_mark: None,
            routing_plan: None,
            deadline_unix: None,
        }
    }

    fn message<'a>(job: &'a SweptJob, stage: Option<StoredStage>) -> Message<'a> {
        Message {
            job,
            task: Task::Generate { instructions: None },
            policy: Policy::default(),
            threshold: 0.7,
            escalations: 2,
            stage,
            samples: 3,
            weak_tier: "weak",
            strong_tier: "strong",
        }
    }

    #[test]
    fn a_lost_attempt_keeps_its_attempt_tier_and_the_escalations_left() {
        let job = job();
        let m = message(&job, None);
        let lost = |attempt: i32, escalations: i64| LostAttempt {
            item_id: "i".into(),
            seq: 3,
            text: "x".into(),
            sensitivity: Some("local_only".into()),
            attempt,
            tier: None,
            escalations,
            router_score: 0.25,
        };
        let w = m.for_attempt(lost(1, 1), "strong".into()).unwrap();
        assert_eq!(
            (w.attempt, w.tier.as_str(), w.escalations_left),
            (1, "strong", 1)
        );
        assert!(w.local_only);
        assert_eq!(w.attempt_key(), work::attempt_key("j", "i", 1));
        assert_eq!(
            m.for_attempt(lost(3, 9), "weak".into())
                .unwrap()
                .escalations_left,
            0
        );
        assert!(m.for_attempt(lost(70_000, 0), "weak".into()).is_none());
    }

    /// A quality job's first message published again carries the rule (or the pilot's
    /// record-only sampling) and the router's score its first publication had; later
    /// attempts and other jobs' messages carry none.
    #[test]
    fn a_lost_first_message_of_a_quality_job_keeps_its_rule() {
        let rule =
            switchyard_core::escalation::EscalationModel::constant(0.3).cost_rule(0.4, 0.2, 0);
        let weigher = switchyard_core::quality::CostWeigher {
            usd_per_prompt_token: 1e-5,
            fixed_usd: 1e-4,
            mean_usd: 2e-4,
        };
        let routed = StoredStage::Routed {
            pilot_fraction: 0.0,
            audit_fraction: 0.0,
            rule: rule.clone(),
            fallback_threshold: 0.55,
            plan: serde_json::Value::Null,
            cost: Some(weigher),
        };
        let job = job();
        let lost = |item: &str, attempt: i32| LostAttempt {
            item_id: item.into(),
            seq: 1,
            text: "x".into(),
            sensitivity: None,
            attempt,
            tier: None,
            escalations: 0,
            router_score: 0.25,
        };
        let m = message(&job, Some(routed));
        let w = m.for_attempt(lost("i", 0), "weak".into()).unwrap();
        assert_eq!(w.escalation.as_ref(), Some(&rule));
        assert_eq!(w.router_score, Some(0.25));
        // The same cost weight as its first publication (from its text).
        assert_eq!(w.cost_weight, Some(weigher.weight(&w.task, "x")));
        assert_eq!(w.confidence_threshold, 0.55);
        // An escalation (on the strong tier) is not a first message.
        let e = m.for_attempt(lost("i", 1), "strong".into()).unwrap();
        assert_eq!((e.escalation, e.router_score), (None, None));
        // While the pilot runs, its items are only recorded, with the job's sampling.
        let pilot = StoredStage::Pilot {
            pilot_fraction: 1.0,
            samples: 2,
            audit_share: 0.1,
        };
        let m = message(&job, Some(pilot));
        let p = m.for_attempt(lost("i", 0), "weak".into()).unwrap();
        assert_eq!(
            p.escalation,
            Some(switchyard_core::escalation::record_only(2))
        );
        assert_eq!(p.escalations_left, 0);
        // Not a quality job: the job's threshold, no rule.
        let plain = message(&job, None)
            .for_attempt(lost("i", 0), "weak".into())
            .unwrap();
        assert_eq!((plain.escalation, plain.confidence_threshold), (None, 0.7));
    }
}

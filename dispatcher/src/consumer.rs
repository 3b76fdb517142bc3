//! The dispatcher's pull loop over the jobs stream, and how each job message is settled.
//!
//! One process works on up to `[dispatcher] concurrent_jobs` job messages at once, each in a
//! task of its own. Why: a small job spends most of its few milliseconds waiting for Postgres
//! and JetStream, so one job at a time capped a dispatcher at 100–150 small jobs/s with the
//! CPU idle; and a big job (minutes of ingest and publishing) no longer holds up the small
//! jobs queued behind it, which take the other slots meanwhile.
//!
//! A job message is acked only after its items are stored and published. While a large job
//! is being worked on, in-progress acks keep JetStream from redelivering it. A job that
//! another dispatcher (or another slot of this one) holds (advisory lock) is nak'ed for later.
//! Bad jobs are recorded, dead-lettered and terminated; transient failures are nak'ed with a
//! delay until the consumer's `max_deliver`: on the last delivery the job ends `failed` with
//! the last error as its reason, whatever state it was in, and is dead-lettered too. Except
//! Postgres being unreachable: the last delivery waits for it in place (kept alive), since a
//! job must not fail because its database restarted, and a job with no row yet could not even
//! be found by the sweep afterwards.
//!
//! [`handle_job`] decides what becomes of a message ([`JobDisposition`]) and
//! [`handle_message`] is the one place that turns that into ack, nak or term. A message whose
//! last delivery could not even record its failure (Postgres down) dies in the stream
//! unrecorded; the sweep ([`crate::sweeper`]) finds its job and takes the message over.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::Batch;
use async_nats::jetstream::message::Acker;
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt};
use switchyard_proto::event::JobEvent;
use switchyard_proto::topology::{HEADER_DLQ_REASON, HEADER_JOB_ID};
use switchyard_proto::{PROTOCOL_VERSION, codec};
use switchyard_runtime::Settings;
use switchyard_runtime::backoff::Backoff;
use switchyard_store::dead_letters::{self, DeadLetter};
use switchyard_store::jobs;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::Dispatcher;
use crate::dispatch::{JobOutcome, dispatch_job};
use crate::intake::{Intake, read_submission};
use crate::job_lock::JobLock;

/// How often a job being dispatched tells JetStream it is still alive.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// How long one pull request for more jobs waits when the stream is empty.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// How long the loop waits after a pull error (NATS restarting, a cluster node gone).
const PULL_BACKOFF: Duration = Duration::from_millis(500);

/// Pulls job messages until `shutdown`, working on up to [`job_slots`] of them at once.
///
/// Each job is settled in a task of its own (so big jobs' CPU work runs on every core and
/// never stalls the pulls). At most one pull request is outstanding, for as many messages as
/// there are free slots when it is made; as slots only free up while it waits, the process
/// never holds more jobs than it has slots, and the next request (made when this one ends:
/// filled or expired) asks for the slots freed meanwhile.
///
/// On `shutdown` no more jobs are pulled; every job in progress gets the dispatcher's
/// `shutdown_grace` (all at once, see [`settle_within_grace`]) and `run` returns when all
/// of them are settled or handed back.
///
/// # Errors
/// When the consumer cannot be created (pull errors later are logged and retried).
pub async fn run(d: Dispatcher, shutdown: CancellationToken) -> anyhow::Result<()> {
    let spec = switchyard_runtime::nats::dispatcher_consumer_spec(&d.settings);
    let consumer = switchyard_runtime::nats::ensure_consumer(&d.js, &spec).await?;
    let slots = job_slots(&d.settings);
    if slots < d.settings.dispatcher.concurrent_jobs.get() {
        tracing::warn!(
            concurrent_jobs = d.settings.dispatcher.concurrent_jobs.get(),
            max_connections = d.settings.database.max_connections,
            slots,
            "dispatcher.concurrent_jobs capped: each job in flight holds a database connection"
        );
    }
    tracing::info!(stream = %spec.stream, consumer = %spec.durable, concurrent_jobs = slots, "dispatcher ready");
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let mut pull: Option<Batch> = None;
    let mut backoff_until: Option<Instant> = None;
    loop {
        if pull.is_none() && backoff_until.is_none() && in_flight.len() < slots {
            let request = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = request_jobs(&consumer, slots - in_flight.len()) => r,
            };
            match request {
                Ok(batch) => pull = Some(batch),
                Err(e) => backoff_until = Some(pull_failed(&e)),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(settled) = in_flight.join_next() => report_panic(settled),
            next = next_message(&mut pull), if pull.is_some() => match next {
                Some(Ok(msg)) => {
                    let (d, shutdown) = (d.clone(), shutdown.clone());
                    in_flight.spawn(
                        async move { settle_within_grace(&d, msg, &shutdown).await }
                            .in_current_span(),
                    );
                }
                Some(Err(e)) => {
                    pull = None;
                    backoff_until = Some(pull_failed(&anyhow::anyhow!(e)));
                }
                // Filled or expired: the next request asks for the slots free by then.
                None => pull = None,
            },
            () = tokio::time::sleep_until(backoff_until.unwrap_or_else(Instant::now)),
                if backoff_until.is_some() => backoff_until = None,
        }
    }
    // Messages of the last pull that arrived but were not started go back at once (those
    // still on the wire come back after `ack_wait`).
    if let Some(mut batch) = pull.take() {
        while let Some(Some(Ok(msg))) = batch.next().now_or_never() {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        }
    }
    // Every job in progress has seen `shutdown` too and is finishing within its grace.
    while let Some(settled) = in_flight.join_next().await {
        report_panic(settled);
    }
    // Acks and naks are buffered publishes: send them before the process exits.
    let _ = d.client.flush().await;
    tracing::info!("dispatcher stopped");
    Ok(())
}

/// How many jobs this process works on at once: `[dispatcher] concurrent_jobs`, but fewer
/// than the database pool's connections. Each job in flight holds a connection for its job
/// lock (see `JobLock`) for as long as it runs and needs another for its queries; with as
/// many jobs as connections, every job would wait for a connection the others hold.
pub fn job_slots(settings: &Settings) -> usize {
    let connections = usize::try_from(settings.database.max_connections).unwrap_or(usize::MAX);
    settings
        .dispatcher
        .concurrent_jobs
        .get()
        .min(connections.saturating_sub(1))
        .max(1)
}

/// Sends one pull request for up to `free` job messages, waiting at most [`PULL_EXPIRES`].
///
/// Why a request of its own each time rather than a continuous `messages()` stream: with all
/// slots busy (possibly for minutes) the dispatcher must not ask for more, and a stream with
/// idle heartbeats that is not polled meanwhile reports "missed idle heartbeat" on the next
/// poll and stalls for seconds before it pulls again; under a stream of small jobs that added
/// up to 10 s gaps.
async fn request_jobs(consumer: &PullConsumer, free: usize) -> anyhow::Result<Batch> {
    Ok(consumer
        .batch()
        .max_messages(free)
        .expires(PULL_EXPIRES)
        .messages()
        .await?)
}

/// The next message of the outstanding pull (never resolves without one).
async fn next_message(
    pull: &mut Option<Batch>,
) -> Option<Result<async_nats::jetstream::Message, async_nats::Error>> {
    match pull {
        Some(batch) => batch.next().await,
        None => std::future::pending().await,
    }
}

fn pull_failed(e: &anyhow::Error) -> Instant {
    tracing::warn!(error = %format!("{e:#}"), "job consumer error, retrying");
    // Back off (NATS restarting, a cluster node gone) without spinning.
    Instant::now() + PULL_BACKOFF
}

/// A job task that panicked dropped its work and its job lock without settling its message:
/// JetStream redelivers it after `ack_wait` (the keep-alive died with it).
fn report_panic(settled: Result<(), tokio::task::JoinError>) {
    if let Err(e) = settled {
        tracing::error!(error = %e, "a job's task failed; its message is redelivered after ack_wait");
    }
}

/// Settles one job message; when `shutdown` fires meanwhile, the job gets the dispatcher's
/// `shutdown_grace` to finish, then its message is handed back (nak) so that another
/// dispatcher resumes it from its stored state at once (rather than after `ack_wait`).
async fn settle_within_grace(
    d: &Dispatcher,
    msg: async_nats::jetstream::Message,
    shutdown: &CancellationToken,
) {
    let acker = Acker::new(d.js.clone(), msg.reply.clone());
    let work = handle_message(d, msg);
    tokio::pin!(work);
    tokio::select! {
        () = &mut work => return,
        () = shutdown.cancelled() => {}
    }
    let grace = d.settings.dispatcher.shutdown_grace;
    tracing::info!(?grace, "shutting down: letting a job in progress finish");
    if tokio::time::timeout(grace, &mut work).await.is_ok() {
        return;
    }
    // Dropping the work releases its job lock (see `JobLock`); the stored state says where
    // the next dispatcher resumes.
    tracing::warn!("grace period over, handing the job back");
    let _ = acker.ack_with(AckKind::Nak(None)).await;
    // The nak is a buffered publish and the process is about to exit: flush it, or the
    // job waits for `ack_wait` instead of going to another dispatcher at once.
    let _ = d.client.flush().await;
}

/// A job message in hand: a delivery from the consumer, or a message a sweep took over from
/// the stream ([`crate::sweeper`]).
#[derive(Debug, Clone)]
pub struct JobMessage {
    pub subject: String,
    pub payload: Bytes,
    /// The job id header (`Sy-Job-Id`), if any.
    pub header_id: Option<String>,
    /// This delivery's number; at `[dispatcher] max_deliver` it is the last one.
    pub deliveries: i64,
    pub stream_seq: u64,
}

impl JobMessage {
    /// The message as delivered by the consumer.
    pub fn delivered(msg: &async_nats::jetstream::Message) -> Self {
        let (deliveries, stream_seq) = match msg.info() {
            Ok(info) => (info.delivered, info.stream_sequence),
            Err(_) => (1, 0),
        };
        Self {
            subject: msg.subject.to_string(),
            payload: msg.payload.clone(),
            header_id: header_job_id(msg.headers.as_ref()),
            deliveries,
            stream_seq,
        }
    }

    /// The stream sequence, when the message came from the stream (0: unknown).
    fn seq(&self) -> Option<i64> {
        (self.stream_seq > 0).then(|| i64::try_from(self.stream_seq).unwrap_or(i64::MAX))
    }
}

/// The job id header of a job message.
pub fn header_job_id(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    headers
        .and_then(|h| h.get(HEADER_JOB_ID))
        .map(|v| v.as_str().to_owned())
}

/// What becomes of a job message.
#[derive(Debug, Clone, PartialEq)]
pub enum JobDisposition {
    /// Handled for good (the job is dispatched, or was before): ack.
    Done,
    /// Not now: nak, redelivered after `after`.
    Retry { after: Duration },
    /// Never: the job is recorded rejected or failed with `reason` (job row and dead letter,
    /// written before this); the message goes to the jobs' dead-letter subject and is
    /// terminated.
    GiveUp { reason: String },
}

/// Settles one delivered job message. Never fails: every path ends in ack, nak or term.
pub async fn handle_message(d: &Dispatcher, msg: async_nats::jetstream::Message) {
    let job = JobMessage::delivered(&msg);
    let acker = Acker::new(d.js.clone(), msg.reply.clone());
    // Keep the message alive while the job is being worked on.
    let ticker_acker = Acker::new(d.js.clone(), msg.reply.clone());
    let keepalive = CancellationToken::new();
    let keepalive_guard = keepalive.clone();
    let ticker = async move {
        let mut every =
            tokio::time::interval(PROGRESS_EVERY.min(d.settings.dispatcher.ack_wait / 3));
        every.tick().await;
        loop {
            tokio::select! {
                _ = keepalive.cancelled() => break,
                _ = every.tick() => { let _ = ticker_acker.ack_with(AckKind::Progress).await; }
            }
        }
    };
    let (disposition, ()) = tokio::join!(
        async {
            let disposition = handle_job(d, &job).await;
            keepalive_guard.cancel();
            disposition
        },
        ticker
    );
    let result = match disposition {
        JobDisposition::Done => acker.ack().await,
        JobDisposition::Retry { after } => acker.ack_with(AckKind::Nak(Some(after))).await,
        JobDisposition::GiveUp { reason } => {
            publish_dead_letter(d, &job, &reason).await;
            acker.ack_with(AckKind::Term).await
        }
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot settle a job message; its redelivery finds the job's stored state");
    }
}

/// Handles one job message and says what becomes of it. Records come first: a job given up
/// on is stored rejected or failed, with its dead letter, before [`JobDisposition::GiveUp`].
pub async fn handle_job(d: &Dispatcher, job: &JobMessage) -> JobDisposition {
    let stream = d.settings.topology().jobs_stream();
    let message_key = format!("{stream}:{}", job.stream_seq);
    let fallback = format!("unknown-{}", job.stream_seq);
    let limits = d.settings.dispatcher.limits();
    let last = job.deliveries >= d.settings.dispatcher.max_deliver;
    let dead = |job_id: &'_ str, error: &'_ str| DeadLetterOf {
        message_key: message_key.clone(),
        subject: job.subject.clone(),
        job_id: job_id.to_owned(),
        deliveries: job.deliveries,
        error: error.to_owned(),
    };

    let mut spec = match read_submission(&job.payload, job.header_id.as_deref(), &fallback, &limits)
    {
        Intake::Job(spec) => spec,
        Intake::Reject {
            job_id,
            team,
            project,
            reason,
        } => return reject(d, &dead(&job_id, &reason), &team, &project, last, false).await,
    };

    if let Err(reason) = crate::identity::settle_team(&d.settings, &job.subject, &mut spec) {
        let team =
            switchyard_proto::teams::team_of_submit_subject(&d.settings.topology(), &job.subject)
                .unwrap_or("default")
                .to_owned();
        return reject(
            d,
            &dead(&spec.job_id, &reason),
            &team,
            "default",
            last,
            false,
        )
        .await;
    }
    let team = spec.team.clone().unwrap_or_else(|| "default".to_owned());
    let project = spec.project.clone().unwrap_or_else(|| "default".to_owned());

    // On the last delivery a Postgres outage is waited out here (the message kept alive)
    // rather than ending the job `failed`: JetStream would not deliver it again, and a job
    // must not fail because its database restarted. Earlier deliveries are handed back.
    let mut outage_wait = outage_wait();
    let result = loop {
        // One dispatcher per job at a time, across processes.
        let lock = match JobLock::try_acquire_for_message(&d.pool, &spec.job_id, job.seq()).await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                tracing::info!(job_id = %spec.job_id, "job is held by another dispatcher, retrying later");
                return JobDisposition::Retry {
                    after: Duration::from_secs(5),
                };
            }
            Err(e) => {
                let e = e.context("cannot take the job's lock");
                if last && switchyard_store::is_transient(&e) {
                    outage(&spec.job_id, &e, &mut outage_wait).await;
                    continue;
                }
                return transient_failure(d, &dead(&spec.job_id, ""), &team, &project, last, &e)
                    .await;
            }
        };
        let result = dispatch_job(d, &spec, job.seq(), || {}).await;
        lock.release().await;
        match result {
            Err(e) if last && switchyard_store::is_transient(&e) => {
                outage(&spec.job_id, &e, &mut outage_wait).await;
            }
            other => break other,
        }
    };

    match result {
        Ok(JobOutcome::Dispatched { items, duplicate }) => {
            if duplicate {
                tracing::info!(job_id = %spec.job_id, "duplicate submission, nothing new created");
            } else {
                tracing::info!(job_id = %spec.job_id, items, "job dispatched");
            }
            JobDisposition::Done
        }
        Ok(JobOutcome::Rejected { reason, own_ingest }) => {
            reject(
                d,
                &dead(&spec.job_id, &reason),
                &team,
                &project,
                last,
                own_ingest,
            )
            .await
        }
        Err(e) => transient_failure(d, &dead(&spec.job_id, ""), &team, &project, last, &e).await,
    }
}

/// What a dead letter of a job message records.
#[derive(Clone)]
struct DeadLetterOf {
    message_key: String,
    subject: String,
    job_id: String,
    deliveries: i64,
    error: String,
}

impl DeadLetterOf {
    async fn record(&self, d: &Dispatcher) -> sqlx::Result<()> {
        dead_letters::record(
            &d.pool,
            &DeadLetter {
                message_key: &self.message_key,
                kind: "job",
                job_id: Some(&self.job_id),
                item_id: None,
                attempt: None,
                subject: &self.subject,
                deliveries: Some(i32::try_from(self.deliveries).unwrap_or(i32::MAX)),
                error: &self.error,
            },
        )
        .await
    }
}

/// A bad job: recorded rejected with its reason. When the record cannot be written the
/// message is retried (the reason must not be lost); on the last delivery it then dies in
/// the stream, unrecorded, and a sweep takes it over later ([`crate::sweeper`]).
///
/// `own_ingest`: the job's row is this message's, its ingest stopped halfway (it becomes
/// `rejected`). Otherwise the message may be anyone's that names the id (a malformed one, a
/// different content, another team's): it records a rejected row only where no job has
/// the id, and never touches one that has.
async fn reject(
    d: &Dispatcher,
    dead: &DeadLetterOf,
    team: &str,
    project: &str,
    last: bool,
    own_ingest: bool,
) -> JobDisposition {
    let (job_id, reason) = (dead.job_id.as_str(), dead.error.as_str());
    tracing::warn!(job_id = %job_id, reason = %reason, "job rejected");
    // The dead letter goes in before the job row: whoever sees the job as
    // `rejected` (a waiting client, a test) must also find the reason.
    let recorded = through_outage(job_id, last, || async {
        dead.record(d).await?;
        jobs::record_rejection(&d.pool, job_id, team, project, reason, own_ingest).await?;
        anyhow::Ok(())
    })
    .await;
    if let Err(e) = recorded {
        tracing::error!(job_id = %job_id, last, error = %e, "cannot record rejection, will retry");
        return JobDisposition::Retry {
            after: Duration::from_secs(2),
        };
    }
    d.counters.jobs_rejected.fetch_add(1, Ordering::Relaxed);
    d.job_outcome("rejected");
    publish_job_event(d, job_id, "rejected").await;
    JobDisposition::GiveUp {
        reason: reason.to_owned(),
    }
}

/// Waits before a job's last delivery tries again after Postgres could not be reached
/// (doubling, up to 5 s): JetStream will not deliver it again, so giving up would leave the
/// job unrecorded.
async fn outage(job_id: &str, e: &anyhow::Error, wait: &mut Backoff) {
    let retry_in = wait.next_delay();
    tracing::warn!(job_id = %job_id, error = %format!("{e:#}"), ?retry_in, "Postgres unreachable on the job's last delivery, waiting");
    tokio::time::sleep(retry_in).await;
}

/// Runs `step` until Postgres answers it when `patient` (the job's last delivery), else
/// once: a transient error is waited out ([`outage`]), any other is returned.
async fn through_outage<T, F, Fut>(job_id: &str, patient: bool, mut step: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut wait = outage_wait();
    loop {
        match step().await {
            Err(e) if patient && switchyard_store::is_transient(&e) => {
                outage(job_id, &e, &mut wait).await;
            }
            other => return other,
        }
    }
}

/// The pace of [`outage`]: 200 ms doubling up to 5 s.
fn outage_wait() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(5))
}

/// A failure that may pass (Postgres or NATS down, the input unreadable for now): retried
/// with a delay; on the last delivery the job ends `failed` with the error as its reason,
/// whatever state it was in (see [`jobs::fail`]), recorded even if Postgres must be waited
/// for.
async fn transient_failure(
    d: &Dispatcher,
    dead: &DeadLetterOf,
    team: &str,
    project: &str,
    last: bool,
    e: &anyhow::Error,
) -> JobDisposition {
    let job_id = dead.job_id.as_str();
    if !last {
        tracing::warn!(job_id = %job_id, deliveries = dead.deliveries, error = %format!("{e:#}"), "dispatch failed, will retry");
        return JobDisposition::Retry {
            after: Duration::from_secs(2),
        };
    }
    let reason = format!(
        "dispatch failed {} times, last error: {e:#}",
        dead.deliveries
    );
    tracing::error!(job_id = %job_id, error = %reason, "giving up on job");
    let dead = DeadLetterOf {
        error: reason.clone(),
        ..dead.clone()
    };
    match through_outage(job_id, true, || fail_job(d, &dead, team, project)).await {
        Ok(()) => JobDisposition::GiveUp { reason },
        Err(e) => {
            // The message dies in the stream unrecorded; a sweep takes it over later.
            tracing::error!(job_id = %job_id, error = %e, "cannot record the job's failure");
            JobDisposition::Retry {
                after: Duration::from_secs(2),
            }
        }
    }
}

/// Records a job the fleet gave up on: its dead letter, then the job `failed` with its open
/// items (a job already running or finished under the same id is left alone, the dead letter
/// keeps the reason); announces it.
async fn fail_job(
    d: &Dispatcher,
    dead: &DeadLetterOf,
    team: &str,
    project: &str,
) -> anyhow::Result<()> {
    dead.record(d).await?;
    match jobs::fail(&d.pool, &dead.job_id, team, project, &dead.error).await? {
        jobs::Failing::Failed => {
            d.job_outcome("failed");
            publish_job_event(d, &dead.job_id, jobs::status::FAILED).await;
        }
        jobs::Failing::LeftAlone(status) => {
            tracing::info!(job_id = %dead.job_id, status = %status, "a message of this job gave up; the job itself is left as it is");
        }
    }
    Ok(())
}

/// Copies a job message to the jobs' dead-letter subject with the reason in a header.
pub(crate) async fn publish_dead_letter(d: &Dispatcher, job: &JobMessage, reason: &str) {
    let mut headers = async_nats::HeaderMap::new();
    // Header values cannot hold newlines.
    headers.insert(
        HEADER_DLQ_REASON,
        reason.replace(['\r', '\n'], " ").as_str(),
    );
    if let Some(id) = &job.header_id {
        headers.insert(HEADER_JOB_ID, id.as_str());
    }
    let subject = d.settings.topology().dlq_jobs_subject();
    if let Ok(ack) =
        d.js.publish_with_headers(subject, headers, job.payload.clone())
            .await
    {
        let _ = ack.await;
    }
}

/// Completes the job if every item is final, and announces it: the one way a dispatcher
/// finishes a job (after dispatch, on a `running` job's redelivered message, in the
/// stuck-job sweep). Returns the final status if it finished it.
///
/// # Errors
/// Database errors.
pub async fn finish_if_done<'e>(
    d: &Dispatcher,
    db: impl sqlx::PgExecutor<'e>,
    job_id: &str,
) -> sqlx::Result<Option<String>> {
    let finished = jobs::complete_if_done(db, job_id).await?;
    if let Some(final_status) = &finished {
        tracing::info!(job_id = %job_id, status = %final_status, "job finished");
        publish_job_event(d, job_id, final_status).await;
    }
    Ok(finished)
}

/// Publishes a job event on core NATS (best effort: `wait` also polls the database).
pub async fn publish_job_event(d: &Dispatcher, job_id: &str, kind: &str) {
    let event = JobEvent {
        v: PROTOCOL_VERSION,
        job_id: job_id.to_owned(),
        kind: kind.to_owned(),
        finished: 0,
    };
    if let Ok(bytes) = codec::encode(&event) {
        let subject = d.settings.topology().job_done_subject(job_id);
        let _ = d.client.publish(subject, bytes.into()).await;
    }
}

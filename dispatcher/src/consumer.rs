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
//! delay until the consumer's `max_deliver`, then dead-lettered too.

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
use switchyard_store::dead_letters::{self, DeadLetter};
use switchyard_store::jobs;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::Dispatcher;
use crate::dispatch::{JobOutcome, dispatch_job};
use crate::intake::{Intake, read_submission};

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
    if slots < d.settings.dispatcher.concurrent_jobs {
        tracing::warn!(
            concurrent_jobs = d.settings.dispatcher.concurrent_jobs,
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

/// Settles one job message. Never fails: every path ends in ack, nak or term.
pub async fn handle_message(d: &Dispatcher, msg: async_nats::jetstream::Message) {
    let (deliveries, stream_seq) = match msg.info() {
        Ok(info) => (info.delivered, info.stream_sequence),
        Err(_) => (1, 0),
    };
    let stream = d.settings.topology().jobs_stream();
    let message_key = format!("{stream}:{stream_seq}");
    let header_id = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(HEADER_JOB_ID))
        .map(|v| v.as_str().to_owned());
    let fallback = format!("unknown-{stream_seq}");
    let limits = d.settings.dispatcher.limits();
    let subject = msg.subject.to_string();
    let payload = msg.payload.clone();
    let reply = msg.reply.clone();
    let acker = Acker::new(d.js.clone(), reply.clone());

    let mut spec = match read_submission(&payload, header_id.as_deref(), &fallback, &limits) {
        Intake::Job(spec) => spec,
        Intake::Reject {
            job_id,
            team,
            project,
            reason,
        } => {
            reject(
                d,
                &acker,
                &message_key,
                &subject,
                &payload,
                &job_id,
                &team,
                &project,
                &reason,
                deliveries,
            )
            .await;
            return;
        }
    };

    if let Err(reason) = crate::identity::settle_team(&d.settings, &subject, &mut spec) {
        let team =
            switchyard_proto::teams::team_of_submit_subject(&d.settings.topology(), &subject)
                .unwrap_or("default")
                .to_owned();
        reject(
            d,
            &acker,
            &message_key,
            &subject,
            &payload,
            &spec.job_id,
            &team,
            "default",
            &reason,
            deliveries,
        )
        .await;
        return;
    }

    // One dispatcher per job at a time, across processes.
    let lock = match JobLock::try_acquire(&d.pool, &spec.job_id).await {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            tracing::info!(job_id = %spec.job_id, "job is held by another dispatcher, retrying later");
            let _ = acker
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
            return;
        }
        Err(e) => {
            transient_failure(
                d,
                &acker,
                &message_key,
                &subject,
                &payload,
                &spec.job_id,
                deliveries,
                &e,
            )
            .await;
            return;
        }
    };

    // Keep the message alive while the job is being worked on.
    let ticker_acker = Acker::new(d.js.clone(), reply);
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
    let work = dispatch_job(d, &spec, || {});
    let (result, ()) = tokio::join!(
        async {
            let r = work.await;
            keepalive_guard.cancel();
            r
        },
        ticker
    );
    lock.release().await;

    match result {
        Ok(JobOutcome::Dispatched { items, duplicate }) => {
            if duplicate {
                tracing::info!(job_id = %spec.job_id, "duplicate submission, nothing new created");
            } else {
                tracing::info!(job_id = %spec.job_id, items, "job dispatched");
            }
            if let Err(e) = acker.ack().await {
                tracing::warn!(job_id = %spec.job_id, error = %e, "ack failed; redelivery will find the job dispatched");
            }
        }
        Ok(JobOutcome::Rejected(reason)) => {
            let team = spec.team.clone().unwrap_or_else(|| "default".to_owned());
            let project = spec.project.clone().unwrap_or_else(|| "default".to_owned());
            reject(
                d,
                &acker,
                &message_key,
                &subject,
                &payload,
                &spec.job_id,
                &team,
                &project,
                &reason,
                deliveries,
            )
            .await;
        }
        Err(e) => {
            transient_failure(
                d,
                &acker,
                &message_key,
                &subject,
                &payload,
                &spec.job_id,
                deliveries,
                &e,
            )
            .await;
        }
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "all of it goes into the dead letter"
)]
async fn reject(
    d: &Dispatcher,
    acker: &Acker,
    message_key: &str,
    subject: &str,
    payload: &Bytes,
    job_id: &str,
    team: &str,
    project: &str,
    reason: &str,
    deliveries: i64,
) {
    tracing::warn!(job_id = %job_id, reason = %reason, "job rejected");
    d.counters.jobs_rejected.fetch_add(1, Ordering::Relaxed);
    d.job_outcome("rejected");
    // The dead letter goes in before the job row: whoever sees the job as
    // `rejected` (a waiting client, a test) must also find the reason.
    let recorded = async {
        dead_letters::record(
            &d.pool,
            &DeadLetter {
                message_key,
                kind: "job",
                job_id: Some(job_id),
                item_id: None,
                attempt: None,
                subject,
                deliveries: Some(deliveries as i32),
                error: reason,
            },
        )
        .await?;
        jobs::record_rejection(&d.pool, job_id, team, project, reason).await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = recorded {
        // Not recorded: let JetStream redeliver rather than lose the reason.
        tracing::error!(job_id = %job_id, error = %e, "cannot record rejection, will retry");
        let _ = acker
            .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
            .await;
        return;
    }
    publish_dead_letter(d, payload, reason).await;
    publish_job_event(d, job_id, "rejected").await;
    let _ = acker.ack_with(AckKind::Term).await;
}

#[expect(
    clippy::too_many_arguments,
    reason = "all of it goes into the dead letter"
)]
async fn transient_failure(
    d: &Dispatcher,
    acker: &Acker,
    message_key: &str,
    subject: &str,
    payload: &Bytes,
    job_id: &str,
    deliveries: i64,
    e: &anyhow::Error,
) {
    if deliveries >= d.settings.dispatcher.max_deliver {
        let reason = format!("dispatch failed {deliveries} times, last error: {e:#}");
        tracing::error!(job_id = %job_id, error = %reason, "giving up on job");
        let recorded = async {
            let _ = jobs::reject_during_ingest(&d.pool, job_id, &reason).await;
            jobs::record_rejection(&d.pool, job_id, "default", "default", &reason).await?;
            dead_letters::record(
                &d.pool,
                &DeadLetter {
                    message_key,
                    kind: "job",
                    job_id: Some(job_id),
                    item_id: None,
                    attempt: None,
                    subject,
                    deliveries: Some(deliveries as i32),
                    error: &reason,
                },
            )
            .await?;
            anyhow::Ok(())
        }
        .await;
        if recorded.is_ok() {
            publish_dead_letter(d, payload, &reason).await;
            let _ = acker.ack_with(AckKind::Term).await;
            return;
        }
    }
    tracing::warn!(job_id = %job_id, deliveries, error = %format!("{e:#}"), "dispatch failed, will retry");
    let _ = acker
        .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
        .await;
}

async fn publish_dead_letter(d: &Dispatcher, payload: &Bytes, reason: &str) {
    let mut headers = async_nats::HeaderMap::new();
    // Header values cannot hold newlines.
    headers.insert(
        HEADER_DLQ_REASON,
        reason.replace(['\r', '\n'], " ").as_str(),
    );
    let subject = d.settings.topology().dlq_jobs_subject();
    if let Ok(ack) =
        d.js.publish_with_headers(subject, headers, payload.clone())
            .await
    {
        let _ = ack.await;
    }
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

/// A Postgres advisory lock on a job, held on its own connection for as long as a
/// dispatcher works on the job. Dropped without [`JobLock::release`] (a dispatch abandoned
/// at shutdown), its connection is closed rather than returned to the pool, which ends the
/// session and so the lock.
struct JobLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    key: String,
}

impl Drop for JobLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

impl JobLock {
    async fn try_acquire(pool: &sqlx::PgPool, job_id: &str) -> anyhow::Result<Option<Self>> {
        let mut conn = pool.acquire().await?;
        let key = format!("dispatch:{job_id}");
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(&key)
            .fetch_one(&mut *conn)
            .await?;
        Ok(got.then_some(Self {
            conn: Some(conn),
            key,
        }))
    }

    async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                .bind(&self.key)
                .execute(&mut *conn)
                .await;
        }
    }
}

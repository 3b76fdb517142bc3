//! The dispatcher's pull loop over the jobs stream, and how each job message is settled.
//!
//! A job message is acked only after its items are stored and published. While a large job
//! is being worked on, in-progress acks keep JetStream from redelivering it. A job that
//! another dispatcher holds (advisory lock) is nak'ed for later. Bad jobs are recorded,
//! dead-lettered and terminated; transient failures are nak'ed with a delay until the
//! consumer's `max_deliver`, then dead-lettered too.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use bytes::Bytes;
use futures::StreamExt;
use switchyard_proto::event::JobEvent;
use switchyard_proto::topology::{HEADER_DLQ_REASON, HEADER_JOB_ID};
use switchyard_proto::{PROTOCOL_VERSION, codec};
use switchyard_store::dead_letters::{self, DeadLetter};
use switchyard_store::jobs;
use tokio_util::sync::CancellationToken;

use crate::Dispatcher;
use crate::dispatch::{JobOutcome, dispatch_job};
use crate::intake::{Intake, read_submission};

/// How often a job being dispatched tells JetStream it is still alive.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// How long one pull request for the next job waits when the stream is empty.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Pulls job messages until `shutdown`, one job at a time per process (run more dispatcher
/// processes to dispatch more jobs at once).
///
/// # Errors
/// When the consumer cannot be created (pull errors later are logged and retried).
pub async fn run(d: Dispatcher, shutdown: CancellationToken) -> anyhow::Result<()> {
    let spec = switchyard_runtime::nats::dispatcher_consumer_spec(&d.settings);
    let consumer = switchyard_runtime::nats::ensure_consumer(&d.js, &spec).await?;
    tracing::info!(stream = %spec.stream, consumer = %spec.durable, "dispatcher ready");
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = next_job(&consumer) => next,
        };
        let msg = match next {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "job consumer error, retrying");
                // Back off (NATS restarting, a cluster node gone) without spinning.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        settle_within_grace(&d, msg, &shutdown).await;
    }
    // Acks and naks are buffered publishes: send them before the process exits.
    let _ = d.client.flush().await;
    tracing::info!("dispatcher stopped");
    Ok(())
}

/// Waits up to [`PULL_EXPIRES`] for the next job message with a pull request of its own.
///
/// Why one request per job rather than a continuous `messages()` stream: the dispatcher stops
/// polling while it works on a job (one at a time, possibly for minutes), and a stream with
/// idle heartbeats then reports "missed idle heartbeat" on the next poll and stalls for
/// seconds before it pulls again; under a stream of small jobs that added up to 10 s gaps.
async fn next_job(
    consumer: &async_nats::jetstream::consumer::PullConsumer,
) -> anyhow::Result<Option<async_nats::jetstream::Message>> {
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(PULL_EXPIRES)
        .messages()
        .await?;
    match batch.next().await {
        Some(Ok(m)) => Ok(Some(m)),
        Some(Err(e)) => Err(anyhow::anyhow!(e)),
        None => Ok(None),
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
    tracing::info!(?grace, "shutting down: letting the job in progress finish");
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

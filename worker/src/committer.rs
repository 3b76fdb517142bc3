//! Batches outcomes into one transaction, then publishes escalations, then acks.
//!
//! The order is what makes a crash harmless: an outcome is committed before anything is
//! published or acked; an escalation's publish-ack is awaited before the original is acked.
//! A crash between steps leads to a redelivery that finds the committed result and only
//! re-publishes the escalation (deduplicated by `Nats-Msg-Id`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use switchyard_proto::event::JobEvent;
use switchyard_proto::topology::{HEADER_DLQ_REASON, HEADER_MSG_ID};
use switchyard_proto::{PROTOCOL_VERSION, WorkItem, codec};
use switchyard_store::outcomes::{self, Outcome};
use tokio::sync::{Notify, mpsc};

use crate::context::{Worker, WorkerCounters};

/// An outcome waiting for its commit, with the means to settle its message.
pub struct Pending {
    pub outcome: Outcome,
    pub acker: Acker,
    /// Published after the commit when the answer escalated.
    pub escalation: Option<WorkItem>,
    /// For failed items: the original message, copied to the dead-letter subject.
    pub dead_payload: Option<Bytes>,
    /// The item's place in its lane's [`InFlight`] count. It travels with the outcome and the
    /// committer drops it on receipt, so an outcome sitting in the channel still counts: the
    /// committer never sees "nothing in flight" while an outcome is on its way to it.
    pub in_flight: Option<InFlightGuard>,
}

/// The items a lane is handling whose outcome the committer has not received yet (from the
/// moment the lane pulls a message until its outcome is taken off the channel, or the lane
/// settles the message itself: ack, nak, term).
///
/// It is what lets [`run`] wait only when waiting pays: while it is zero no outcome can
/// arrive, so a lone call is committed at once instead of sitting out `commit_interval`;
/// while it is not, outcomes are coming and are worth gathering into the same transaction.
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<InFlightState>);

#[derive(Debug, Default)]
struct InFlightState {
    count: AtomicUsize,
    /// Woken when `count` drops to zero (a waiting batch then stops waiting).
    idle: Notify,
}

impl InFlight {
    /// Counts one more item until the returned guard is dropped.
    #[must_use]
    pub fn start(&self) -> InFlightGuard {
        self.0.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.0.clone())
    }

    /// How many items are in flight now.
    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::SeqCst)
    }
}

/// One item of an [`InFlight`] count; dropping it (on every path, panics included) ends it.
#[derive(Debug)]
pub struct InFlightGuard(Arc<InFlightState>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// How long a batch keeps trying to commit (Postgres restarting, failing over) before it is
/// given back to JetStream. Its messages are kept alive meanwhile, so an outage shorter than
/// this books every answer already received instead of paying for the calls again.
const COMMIT_RETRY_FOR: Duration = Duration::from_secs(30);

/// Runs until every sender is gone and the last batch is settled.
///
/// Group commit that never waits for nothing: after the first outcome it takes whatever is
/// already queued, then waits for more (up to `commit_interval`, at most `commit_batch`) only
/// while `in_flight` says other items of the lane are still being handled, and stops waiting
/// as soon as none is. A bulk job still commits in large batches (its calls overlap), but a
/// lone call on an idle worker is committed immediately instead of paying the full interval
/// in latency. Waiting less only makes batches smaller; what a batch guarantees (commit, then
/// escalations, then acks: [`settle_batch`]) does not depend on its size.
pub async fn run(w: Worker, mut rx: mpsc::Receiver<Pending>, in_flight: InFlight) {
    let max = w.settings.worker.commit_batch;
    let interval = w.settings.worker.commit_interval;
    loop {
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![received(first)];
        gather(&mut rx, &in_flight, &mut batch, max, interval).await;
        settle_batch(&w, batch).await;
    }
}

/// Ends the outcome's in-flight count: it has reached the committer.
fn received(mut p: Pending) -> Pending {
    drop(p.in_flight.take());
    p
}

/// Adds to `batch` what is queued, then what arrives while items are in flight, until the
/// batch is full, `interval` has passed, nothing is in flight, or the channel is closed.
async fn gather(
    rx: &mut mpsc::Receiver<Pending>,
    in_flight: &InFlight,
    batch: &mut Vec<Pending>,
    max: usize,
    interval: Duration,
) {
    let deadline = tokio::time::Instant::now() + interval;
    loop {
        while batch.len() < max {
            match rx.try_recv() {
                Ok(p) => batch.push(received(p)),
                Err(_) => break,
            }
        }
        if batch.len() >= max || tokio::time::Instant::now() >= deadline {
            return;
        }
        // Registered before the count is read, so a drop to zero in between still wakes us.
        let idle = in_flight.0.idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        // Zero: nothing is being handled and (guards travel with outcomes) nothing is queued
        // unseen, so no outcome is coming that would be worth waiting for.
        if in_flight.count() == 0 {
            return;
        }
        tokio::select! {
            p = rx.recv() => match p {
                Some(p) => batch.push(received(p)),
                None => return,
            },
            () = &mut idle => {}
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}

async fn settle_batch(w: &Worker, batch: Vec<Pending>) {
    let outcomes: Vec<Outcome> = batch.iter().map(|p| p.outcome.clone()).collect();
    let mut touched = None;
    let mut retry = Retry::new(w, COMMIT_RETRY_FOR);
    loop {
        match outcomes::commit(&w.pool, &outcomes).await {
            Ok(jobs) => {
                touched = Some(jobs);
                break;
            }
            Err(e) if !retry.expired() => {
                tracing::warn!(error = %e, attempt = retry.attempt, "commit failed, retrying");
                retry.wait(batch.iter().map(|p| &p.acker)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, attempt = retry.attempt, "commit failed for too long");
                break;
            }
        }
    }
    let Some(touched) = touched else {
        tracing::error!(
            items = batch.len(),
            "cannot commit outcomes, giving the items back"
        );
        crate::budget::commit_failed(w, &outcomes).await;
        for p in &batch {
            let _ = p
                .acker
                .ack_with(AckKind::Nak(Some(w.settings.worker.retry_delay)))
                .await;
        }
        return;
    };
    WorkerCounters::add(&w.counters.committed_batches, 1);
    crate::metrics::committed(w, &outcomes);
    crate::budget::committed(w, &outcomes);

    // Escalations first; an item whose escalation did not publish is not acked (its
    // redelivery re-publishes it).
    let escalations: Vec<(usize, &WorkItem)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.escalation.as_ref().map(|e| (i, e)))
        .collect();
    let mut unpublished = vec![false; batch.len()];
    if !escalations.is_empty() {
        for idx in publish_escalations_patiently(w, &batch, &escalations).await {
            unpublished[escalations[idx].0] = true;
        }
    }
    let mut finished_per_job: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, p) in batch.iter().enumerate() {
        if unpublished[i] {
            let _ = p
                .acker
                .ack_with(AckKind::Nak(Some(w.settings.worker.retry_delay)))
                .await;
            continue;
        }
        match &p.outcome {
            Outcome::Answered {
                escalated: true, ..
            } => {
                WorkerCounters::add(&w.counters.escalated, 1);
            }
            Outcome::Answered { key, .. } => {
                WorkerCounters::add(&w.counters.answered, 1);
                *finished_per_job.entry(key.job_id.as_str()).or_default() += 1;
            }
            Outcome::Failed {
                key,
                error,
                subject,
                ..
            } => {
                WorkerCounters::add(&w.counters.failed, 1);
                *finished_per_job.entry(key.job_id.as_str()).or_default() += 1;
                if let Some(payload) = &p.dead_payload {
                    publish_dead_letter(w, subject, payload, error).await;
                }
            }
        }
        if let Err(e) = p.acker.ack().await {
            tracing::warn!(error = %e, "ack failed; the redelivery will find the outcome committed");
        }
    }
    let t = w.settings.topology();
    for (job_id, finished) in finished_per_job {
        let event = JobEvent {
            v: PROTOCOL_VERSION,
            job_id: job_id.to_owned(),
            kind: "progress".into(),
            finished,
        };
        if let Ok(bytes) = codec::encode(&event) {
            let _ = w
                .client
                .publish(t.events_subject(job_id), bytes.into())
                .await;
        }
    }
    for job_id in touched {
        match switchyard_store::jobs::complete_if_done(&w.pool, &job_id).await {
            Ok(Some(status)) => {
                tracing::info!(job_id = %job_id, status = %status, "job finished");
                let event = JobEvent {
                    v: PROTOCOL_VERSION,
                    job_id: job_id.clone(),
                    kind: status,
                    finished: 0,
                };
                if let Ok(bytes) = codec::encode(&event) {
                    let _ = w
                        .client
                        .publish(t.job_done_subject(&job_id), bytes.into())
                        .await;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(job_id = %job_id, error = %e, "cannot check job completion"),
        }
    }
}

/// Publishes escalation messages and awaits their publish-acks.
///
/// # Errors
/// When any of them was not stored.
pub async fn publish_escalations(w: &Worker, items: &[&WorkItem]) -> anyhow::Result<()> {
    publish_escalations_detailed(w, items)
        .await
        .map_err(|failed| anyhow::anyhow!("{} escalations were not published", failed.len()))
}

/// As [`publish_escalations`], returning the indexes that failed.
/// How long escalations that JetStream would not take are retried before their items are
/// handed back. A cluster electing a new stream leader after losing a node refuses publishes
/// for a few seconds; handing the items back at once spent one of their `max_deliver`
/// deliveries per failed try, and a long enough election failed them for good.
const ESCALATION_RETRY_FOR: Duration = Duration::from_secs(30);

/// Publishes `escalations` (indices into `batch`), retrying the ones that failed with
/// backoff for up to [`ESCALATION_RETRY_FOR`] while keeping their messages alive; returns
/// the indices (into `escalations`) that never published.
async fn publish_escalations_patiently(
    w: &Worker,
    batch: &[Pending],
    escalations: &[(usize, &WorkItem)],
) -> Vec<usize> {
    let mut retry = Retry::new(w, ESCALATION_RETRY_FOR);
    let mut todo: Vec<usize> = (0..escalations.len()).collect();
    loop {
        let items: Vec<&WorkItem> = todo.iter().map(|&i| escalations[i].1).collect();
        match publish_escalations_detailed(w, &items).await {
            Ok(()) => return Vec::new(),
            Err(failed) => todo = failed.into_iter().map(|f| todo[f]).collect(),
        }
        if retry.expired() {
            tracing::warn!(
                unpublished = todo.len(),
                "escalations not published, handing their items back"
            );
            return todo;
        }
        retry
            .wait(todo.iter().map(|&i| &batch[escalations[i].0].acker))
            .await;
    }
}

/// Retrying a step of a batch's settlement (the commit, the escalations) for a while: backoff
/// between attempts, and in-progress acks every `ack_wait / 3` so that JetStream does not
/// redeliver the messages that wait meanwhile (a redelivery would use up a delivery and pay
/// for the model call again).
struct Retry {
    started: tokio::time::Instant,
    give_up_after: Duration,
    keepalive_every: Duration,
    last_keepalive: tokio::time::Instant,
    attempt: u32,
}

impl Retry {
    fn new(w: &Worker, give_up_after: Duration) -> Self {
        let now = tokio::time::Instant::now();
        Retry {
            started: now,
            give_up_after,
            keepalive_every: w.settings.worker.ack_wait / 3,
            last_keepalive: now,
            attempt: 0,
        }
    }

    fn expired(&self) -> bool {
        self.started.elapsed() >= self.give_up_after
    }

    /// Waits before the next attempt (100 ms doubling up to 1.6 s), keeping `waiting` alive.
    async fn wait(&mut self, waiting: impl Iterator<Item = &Acker>) {
        tokio::time::sleep(Duration::from_millis(100 << self.attempt.min(4))).await;
        self.attempt += 1;
        if self.last_keepalive.elapsed() >= self.keepalive_every {
            self.last_keepalive = tokio::time::Instant::now();
            for acker in waiting {
                let _ = acker.ack_with(AckKind::Progress).await;
            }
        }
    }
}

async fn publish_escalations_detailed(w: &Worker, items: &[&WorkItem]) -> Result<(), Vec<usize>> {
    let t = w.settings.topology();
    let mut acks = FuturesUnordered::new();
    let mut failed = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Ok(payload) = codec::encode(item) else {
            failed.push(i);
            continue;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HEADER_MSG_ID, item.attempt_key().as_str());
        match w
            .js
            .publish_with_headers(t.work_subject(&item.tier), headers, payload.into())
            .await
        {
            Ok(ack) => acks.push(async move { (i, ack.await) }),
            Err(_) => failed.push(i),
        }
    }
    while let Some((i, r)) = acks.next().await {
        if let Err(e) = r {
            tracing::warn!(error = %e, "escalation publish failed");
            failed.push(i);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed)
    }
}

async fn publish_dead_letter(w: &Worker, subject: &str, payload: &Bytes, error: &str) {
    let tier = subject.rsplit('.').next().unwrap_or("unknown");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER_DLQ_REASON, error.replace(['\r', '\n'], " ").as_str());
    let dlq = w.settings.topology().dlq_work_subject(tier);
    if let Ok(ack) =
        w.js.publish_with_headers(dlq, headers, payload.clone())
            .await
    {
        let _ = ack.await;
    }
}

#[cfg(test)]
mod tests {
    //! Against the real Postgres and NATS (each test its own database and NATS prefix). The
    //! commit interval is a minute, so a test only passes if the committer decides not to
    //! wait; nothing here sleeps to synchronize or measures time.

    use super::*;
    use async_nats::jetstream::consumer::PullConsumer;
    use switchyard_store::outcomes::AttemptKey;
    use switchyard_testkit::{TestDb, TestNats, eventually, settings_for};

    const TIER: &str = "weak";
    const FOREVER: Duration = Duration::from_secs(60);
    const PATIENCE: Duration = Duration::from_secs(5);

    struct Setup {
        w: Worker,
        consumer: PullConsumer,
        _nats: TestNats,
        _db: TestDb,
    }

    async fn setup() -> Setup {
        let nats = TestNats::new().await;
        let db = TestDb::new().await;
        let mut settings = settings_for(&nats, &db);
        settings.worker.commit_interval = FOREVER;
        let w = Worker::connect(settings, &[TIER.to_owned()]).await.unwrap();
        let spec = switchyard_runtime::nats::worker_consumer_spec(&w.settings, TIER);
        let consumer = switchyard_runtime::nats::ensure_consumer(&w.js, &spec)
            .await
            .unwrap();
        Setup {
            w,
            consumer,
            _nats: nats,
            _db: db,
        }
    }

    /// A failed outcome for item `n`, with the acker of a real work message.
    async fn pending(s: &Setup, n: u32, in_flight: Option<InFlightGuard>) -> Pending {
        let subject = s.w.settings.topology().work_subject(TIER);
        s.w.js
            .publish(subject.clone(), Bytes::from(format!("item {n}")))
            .await
            .unwrap()
            .await
            .unwrap();
        let msg = s
            .consumer
            .batch()
            .max_messages(1)
            .expires(PATIENCE)
            .messages()
            .await
            .unwrap()
            .next()
            .await
            .expect("the message just published")
            .unwrap();
        Pending {
            outcome: Outcome::Failed {
                key: AttemptKey {
                    job_id: "job-committer-test".into(),
                    item_id: format!("item-{n}"),
                    attempt: 1,
                },
                subject,
                deliveries: 1,
                error: "test".into(),
            },
            acker: Acker::new(s.w.js.clone(), msg.reply.clone()),
            escalation: None,
            dead_payload: None,
            in_flight,
        }
    }

    /// Waits (bounded) until the committer has taken the first outcome off the channel (its
    /// guard is dropped then), so what the test does next happens while the committer holds
    /// a batch, not before it looks at the channel.
    async fn received_first(in_flight: &InFlight) {
        eventually(
            "the committer to take the first outcome",
            PATIENCE,
            || async { (in_flight.count() == 1).then_some(()) },
        )
        .await;
    }

    /// Waits (bounded) until every message is acked, which `settle_batch` does only after
    /// the commit, then stops the committer; returns (committed batches, dead-letter rows).
    async fn settled(
        s: &Setup,
        tx: mpsc::Sender<Pending>,
        task: tokio::task::JoinHandle<()>,
    ) -> (u64, i64) {
        eventually("every message committed and acked", PATIENCE, || {
            let mut consumer = s.consumer.clone();
            async move {
                let info = consumer.info().await.ok()?;
                (info.num_ack_pending == 0).then_some(())
            }
        })
        .await;
        drop(tx);
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the committer stops when its senders are gone")
            .unwrap();
        let rows = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(&s.w.pool)
            .await
            .unwrap();
        s.w.pool.close().await;
        (WorkerCounters::get(&s.w.counters.committed_batches), rows)
    }

    #[tokio::test]
    async fn a_lone_outcome_is_committed_at_once_when_nothing_is_in_flight() {
        let s = setup().await;
        let in_flight = InFlight::default();
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(run(s.w.clone(), rx, in_flight.clone()));

        let p = pending(&s, 1, Some(in_flight.start())).await;
        tx.send(p).await.unwrap();
        // With a one-minute interval this only passes if the committer did not wait.
        assert_eq!(settled(&s, tx, task).await, (1, 1));
        assert_eq!(in_flight.count(), 0);
    }

    #[tokio::test]
    async fn outcomes_on_their_way_are_waited_for_and_share_one_commit() {
        let s = setup().await;
        let in_flight = InFlight::default();
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(run(s.w.clone(), rx, in_flight.clone()));

        // Another call is in flight while the first outcome arrives: the committer waits for
        // it, and commits both together once it has arrived (nothing is in flight then).
        let other = in_flight.start();
        let first = pending(&s, 1, Some(in_flight.start())).await;
        let second = pending(&s, 2, None).await;
        tx.send(first).await.unwrap();
        received_first(&in_flight).await;
        tx.send(Pending {
            in_flight: Some(other),
            ..second
        })
        .await
        .unwrap();
        // One batch: the first outcome was not committed alone.
        assert_eq!(settled(&s, tx, task).await, (1, 2));
    }

    #[tokio::test]
    async fn waiting_stops_when_the_calls_in_flight_end_without_an_outcome() {
        let s = setup().await;
        let in_flight = InFlight::default();
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(run(s.w.clone(), rx, in_flight.clone()));

        // A call in flight that then settles its message itself (a nak, say).
        let other = in_flight.start();
        let p = pending(&s, 1, Some(in_flight.start())).await;
        tx.send(p).await.unwrap();
        received_first(&in_flight).await;
        drop(other);
        assert_eq!(settled(&s, tx, task).await, (1, 1));
    }
}

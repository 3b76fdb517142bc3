//! Batches outcomes into one transaction, then publishes escalations, then settles messages.
//!
//! The order is what makes a crash harmless: an outcome is committed before anything is
//! published or acked; an escalation's publish-ack is awaited before the original is acked.
//! A crash between steps leads to a redelivery whose claim finds the committed result and
//! only re-publishes the escalation (deduplicated by `Nats-Msg-Id`).
//!
//! A commit that fails is never given up while the worker runs: its calls are paid for and
//! their messages are kept alive by the lane's keeper meanwhile. A failure that is about the
//! data (Postgres refused a value) is bisected ([`commit_resilient`]): the batch is split
//! until the outcome Postgres refuses is alone, and that one is booked in a plainer form
//! (the answer dropped and the item failed, the call still booked), so one bad answer never
//! holds the others back. Any other failure (Postgres restarting, the network) is retried
//! with backoff until it succeeds or the lane is aborted at shutdown.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use switchyard_proto::event::JobEvent;
use switchyard_proto::topology::HEADER_MSG_ID;
use switchyard_proto::{PROTOCOL_VERSION, WorkItem, codec};
use switchyard_store::outcomes::{self, CommitReport, Outcome};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::context::{Worker, WorkerCounters};
use crate::settle::{Delivery, Disposition, settle};

/// An outcome waiting for its commit, with its message.
pub struct Pending {
    pub outcome: Outcome,
    pub delivery: Delivery,
    /// Published after the commit when the answer decided its item and escalated.
    pub escalation: Option<WorkItem>,
    /// What becomes of the message after the commit, when the outcome itself does not say
    /// (an unusable answer or a released intent: retried).
    pub then: Disposition,
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

/// Runs until every sender is gone and the last batch is settled. `abort` (the end of the
/// shutdown grace) stops retrying a commit that keeps failing: its messages go back.
///
/// Group commit that never waits for nothing: after the first outcome it takes whatever is
/// already queued, then waits for more (up to `commit_interval`, at most `commit_batch`) only
/// while `in_flight` says other items of the lane are still being handled, and stops waiting
/// as soon as none is. A bulk job still commits in large batches (its calls overlap), but a
/// lone call on an idle worker is committed immediately instead of paying the full interval
/// in latency. Waiting less only makes batches smaller; what a batch guarantees (commit, then
/// escalations, then settling: [`settle_batch`]) does not depend on its size.
pub async fn run(
    w: Worker,
    mut rx: mpsc::Receiver<Pending>,
    in_flight: InFlight,
    abort: CancellationToken,
) {
    let max = w.settings.worker.commit_batch.get();
    let interval = w.settings.worker.commit_interval;
    loop {
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![received(first)];
        gather(&mut rx, &in_flight, &mut batch, max, interval).await;
        settle_batch(&w, batch, &abort).await;
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

/// True when Postgres refused the data itself (a value it cannot hold, a constraint): the
/// same statement fails again however often it is retried, so the batch is bisected instead.
pub fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54")),
        sqlx::Error::Encode(_) | sqlx::Error::TypeNotFound { .. } => true,
        _ => false,
    }
}

/// `s` as printable ASCII of at most 500 characters: text no column refuses.
fn plain_text(s: String) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(500)
        .collect()
}

/// The plainer form of an outcome Postgres refused on its own: the answer goes (the item
/// fails, saying why), the call stays booked with the fields Postgres cannot misread. `None`
/// when there is nothing plainer left.
fn plainer(o: &Outcome, subject: &str, delivered: i64, e: &sqlx::Error) -> Option<Outcome> {
    let ascii = plain_text;
    match o {
        Outcome::Answered { key, call, .. } | Outcome::Unusable { key, call } => {
            Some(Outcome::Failed {
                key: key.clone(),
                subject: subject.to_owned(),
                deliveries: i32::try_from(delivered).unwrap_or(i32::MAX),
                error: ascii(format!("the provider's answer could not be stored: {e}")),
                call: Some(outcomes::CallEntry {
                    provider_response_id: None,
                    ..call.clone()
                }),
                intent: None,
            })
        }
        Outcome::Failed {
            key,
            subject,
            deliveries,
            error,
            call,
            intent,
        } => {
            let plain_error = ascii(error.clone());
            let plain_call = call.as_ref().map(|c| outcomes::CallEntry {
                provider_response_id: None,
                ..c.clone()
            });
            let changed = plain_error != *error
                || call
                    .as_ref()
                    .is_some_and(|c| c.provider_response_id.is_some());
            changed.then(|| Outcome::Failed {
                key: key.clone(),
                subject: ascii(subject.clone()),
                deliveries: *deliveries,
                error: plain_error,
                call: plain_call,
                intent: intent.clone(),
            })
        }
        Outcome::Released { .. } => None,
    }
}

/// Commits `batch`'s outcomes (replacing refused ones by their plainer form, in place);
/// returns the merged report and the indexes that could not be committed at all (given back
/// when the lane aborts, or an outcome with nothing plainer left).
pub async fn commit_resilient(
    w: &Worker,
    batch: &mut [Pending],
    abort: &CancellationToken,
) -> (CommitReport, HashSet<usize>) {
    let mut outs: Vec<Refusable> = batch
        .iter()
        .map(|p| {
            Refusable::new(
                p.outcome.clone(),
                p.delivery.subject.clone(),
                p.delivery.delivered,
            )
        })
        .collect();
    let (report, lost) = commit_isolating(w, &mut outs, abort).await;
    for (p, o) in batch.iter_mut().zip(outs) {
        if o.changed {
            // An outcome that is not the answer any more escalates nothing.
            p.outcome = o.outcome;
            p.escalation = None;
        }
    }
    (report, lost)
}

/// An outcome to commit, with the subject and delivery count of its message (what its
/// plainer form's failure records).
#[derive(Debug, Clone)]
pub struct Refusable {
    pub outcome: Outcome,
    pub subject: String,
    pub delivered: i64,
    /// Replaced by a plainer form (its answer, and any escalation of it, gone).
    pub changed: bool,
    /// Not committed because Postgres refuses every form of it, not for a failure that
    /// passes (its intent is left to the in-doubt sweep once its owner is gone).
    pub refused: bool,
}

impl Refusable {
    /// `outcome`, from a message on `subject` delivered `delivered` times.
    pub fn new(outcome: Outcome, subject: String, delivered: i64) -> Self {
        Self {
            outcome,
            subject,
            delivered,
            changed: false,
            refused: false,
        }
    }
}

/// Commits `outs` so that one outcome Postgres refuses holds no other back: a batch it
/// refuses is split until the refused outcome is alone, which is then booked in a plainer
/// form ([`plainer`]); with nothing plainer left, its call is booked in doubt at its worst
/// case with the attempt's failure ([`book_refused`]). Other failures are retried until
/// `abort`. Returns the merged report and the indexes not committed at all (their messages
/// go back).
pub async fn commit_isolating(
    w: &Worker,
    outs: &mut [Refusable],
    abort: &CancellationToken,
) -> (CommitReport, HashSet<usize>) {
    let mut report = CommitReport::default();
    let mut lost = HashSet::new();
    let mut ranges = vec![(0, outs.len())];
    let mut retry = crate::retry::service_wait();
    while let Some((a, b)) = ranges.pop() {
        loop {
            let batch: Vec<Outcome> = outs[a..b].iter().map(|o| o.outcome.clone()).collect();
            match outcomes::commit(&w.pool, &batch).await {
                Ok(r) => {
                    report.jobs.extend(r.jobs);
                    report.decided.extend(r.decided.into_iter().map(|i| i + a));
                    report.duplicates += r.duplicates;
                    report.settled_in_doubt += r.settled_in_doubt;
                    break;
                }
                Err(e) if is_data_error(&e) && b - a > 1 => {
                    tracing::warn!(error = %e, outcomes = b - a, "Postgres refused a batch, splitting it");
                    let mid = a + (b - a) / 2;
                    ranges.push((mid, b));
                    ranges.push((a, mid));
                    break;
                }
                Err(e) if is_data_error(&e) => {
                    let o = &outs[a];
                    let key = o.outcome.key();
                    if let Some(plain) = plainer(&o.outcome, &o.subject, o.delivered, &e) {
                        tracing::error!(error = %e, job_id = %key.job_id, item_id = %key.item_id, "Postgres refused an outcome; booking it in a plainer form");
                        crate::metrics::refused_outcome(w);
                        outs[a].outcome = plain;
                        outs[a].changed = true;
                        continue;
                    }
                    match book_refused(w, &outs[a], &e).await {
                        Ok(Some((failure, r))) => {
                            tracing::error!(error = %e, job_id = %key.job_id, item_id = %key.item_id, "Postgres refused a call's own entry; booked it in doubt at its worst case");
                            crate::metrics::refused_outcome(w);
                            outs[a].outcome = failure;
                            outs[a].changed = true;
                            report.jobs.extend(r.jobs);
                            report.decided.extend(r.decided.into_iter().map(|i| i + a));
                            break;
                        }
                        // Refused again (the failure itself): nothing more to try.
                        Err(e2) if is_data_error(&e2) => {
                            tracing::error!(error = %e2, "Postgres refused an outcome and its in-doubt booking; its message goes back");
                            outs[a].refused = true;
                            lost.insert(a);
                            break;
                        }
                        Ok(None) => {
                            tracing::error!(error = %e, "Postgres refused an outcome with nothing plainer left; its message goes back");
                            outs[a].refused = true;
                            lost.insert(a);
                            break;
                        }
                        Err(e) if abort.is_cancelled() => {
                            tracing::error!(error = %e, "shutting down with an outcome not committed; its message goes back");
                            lost.insert(a);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "booking a refused call in doubt failed, retrying");
                            tokio::select! {
                                () = retry.wait() => {}
                                () = abort.cancelled() => {}
                            }
                        }
                    }
                }
                Err(e) => {
                    if abort.is_cancelled() {
                        tracing::error!(error = %e, "shutting down with outcomes not committed; their messages go back");
                        lost.extend(a..b);
                        for (x, y) in ranges.drain(..) {
                            lost.extend(x..y);
                        }
                        return (report, lost);
                    }
                    tracing::warn!(error = %e, attempt = retry.attempts(), "commit failed, retrying");
                    tokio::select! {
                        () = retry.wait() => {}
                        () = abort.cancelled() => {}
                    }
                }
            }
        }
    }
    (report, lost)
}

/// The last resort for an outcome whose billed call Postgres refuses to book even in the
/// plainer form: the call booked in doubt at the worst case its intent bounds, and the
/// attempt failed saying why, in one transaction. The outcome committed and its report
/// (`Some`), or `None` when there is no call, or its intent cannot be booked (nothing
/// committed: the message goes back, and the intent is booked in doubt when this worker is
/// gone).
async fn book_refused(
    w: &Worker,
    o: &Refusable,
    e: &sqlx::Error,
) -> sqlx::Result<Option<(Outcome, CommitReport)>> {
    let Some(call) = o.outcome.call() else {
        return Ok(None);
    };
    let why = plain_text(format!(
        "the provider's answer and its usage could not be stored ({e}); the call is booked in doubt at its worst case"
    ));
    let failure = Outcome::Failed {
        key: o.outcome.key().clone(),
        subject: plain_text(o.subject.clone()),
        deliveries: i32::try_from(o.delivered).unwrap_or(i32::MAX),
        error: why.clone(),
        call: None,
        intent: None,
    };
    let booked =
        switchyard_store::intents::book_refused_call(&w.pool, &call.call_id, &why, &failure)
            .await?;
    if booked.is_some() {
        // The hold was settled by that booking: no longer this process's to renew.
        w.finance.booked(call.booking.reservation_id);
    }
    Ok(booked.map(|report| (failure, report)))
}

async fn settle_batch(w: &Worker, mut batch: Vec<Pending>, abort: &CancellationToken) {
    let (report, lost) = commit_resilient(w, &mut batch, abort).await;
    WorkerCounters::add(&w.counters.committed_batches, 1);
    let committed: Vec<&Outcome> = batch
        .iter()
        .enumerate()
        .filter(|(i, _)| !lost.contains(i))
        .map(|(_, p)| &p.outcome)
        .collect();
    crate::metrics::committed(w, &committed, &report);
    // Their holds were settled by the commit: no longer this process's to renew.
    w.finance.booked(
        committed
            .iter()
            .filter_map(|o| o.call().and_then(|c| c.booking.reservation_id)),
    );

    // Escalations of the answers that decided their item, first; an item whose escalation
    // did not publish is not acked (its redelivery re-publishes it).
    let escalations: Vec<(usize, &WorkItem)> = batch
        .iter()
        .enumerate()
        .filter(|(i, _)| report.decided.contains(i))
        .filter_map(|(i, p)| p.escalation.as_ref().map(|e| (i, e)))
        .collect();
    let mut unpublished = HashSet::new();
    if !escalations.is_empty() {
        for idx in publish_escalations_patiently(w, &escalations).await {
            unpublished.insert(escalations[idx].0);
        }
    }
    let mut finished_per_job: BTreeMap<String, u64> = BTreeMap::new();
    let retry_later = Disposition::Retry {
        after: w.settings.worker.retry_delay,
    };
    for (i, p) in batch.into_iter().enumerate() {
        let decided = report.decided.contains(&i);
        let disposition = if lost.contains(&i) || unpublished.contains(&i) {
            retry_later.clone()
        } else {
            match &p.outcome {
                Outcome::Answered { key, .. } => {
                    if decided && p.escalation.is_some() {
                        WorkerCounters::add(&w.counters.escalated, 1);
                    } else if decided {
                        WorkerCounters::add(&w.counters.answered, 1);
                        *finished_per_job.entry(key.job_id.clone()).or_default() += 1;
                    }
                    Disposition::Done
                }
                Outcome::Failed { key, error, .. } => {
                    if decided {
                        WorkerCounters::add(&w.counters.failed, 1);
                        *finished_per_job.entry(key.job_id.clone()).or_default() += 1;
                    }
                    Disposition::GiveUp {
                        reason: error.clone(),
                    }
                }
                Outcome::Unusable { .. } | Outcome::Released { .. } => p.then.clone(),
            }
        };
        // A message the lane could not see through because it is stopping goes back with
        // its last delivery kept (`Disposition::GiveBack`).
        let disposition = disposition.when_stopping(abort.is_cancelled());
        settle(w, p.delivery, disposition).await;
    }
    announce(w, finished_per_job, report.jobs).await;
}

/// After a commit: a progress event per job for the items it finished, and each touched
/// job checked for completion (announced once it is done).
pub(crate) async fn announce(
    w: &Worker,
    finished_per_job: BTreeMap<String, u64>,
    jobs: impl IntoIterator<Item = String>,
) {
    let t = w.settings.topology();
    for (job_id, finished) in finished_per_job {
        let event = JobEvent {
            v: PROTOCOL_VERSION,
            job_id: job_id.clone(),
            kind: "progress".into(),
            finished,
        };
        if let Ok(bytes) = codec::encode(&event) {
            let _ = w
                .client
                .publish(t.events_subject(&job_id), bytes.into())
                .await;
        }
    }
    for job_id in jobs {
        crate::budget::announce_if_finished(w, &job_id).await;
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

/// How long escalations that JetStream would not take are retried before their items are
/// handed back. A cluster electing a new stream leader after losing a node refuses publishes
/// for a few seconds; handing the items back at once spent one of their `max_deliver`
/// deliveries per failed try, and a long enough election failed them for good.
const ESCALATION_RETRY_FOR: Duration = Duration::from_secs(30);

/// Publishes `escalations` (indices into the batch), retrying the ones that failed with
/// backoff for up to [`ESCALATION_RETRY_FOR`] (the messages are kept alive meanwhile);
/// returns the indices (into `escalations`) that never published.
async fn publish_escalations_patiently(
    w: &Worker,
    escalations: &[(usize, &WorkItem)],
) -> Vec<usize> {
    let started = tokio::time::Instant::now();
    let mut retry = crate::retry::service_wait();
    let mut todo: Vec<usize> = (0..escalations.len()).collect();
    loop {
        let items: Vec<&WorkItem> = todo.iter().map(|&i| escalations[i].1).collect();
        match publish_escalations_detailed(w, &items).await {
            Ok(()) => return Vec::new(),
            Err(failed) => todo = failed.into_iter().map(|f| todo[f]).collect(),
        }
        if started.elapsed() >= ESCALATION_RETRY_FOR {
            tracing::warn!(
                unpublished = todo.len(),
                "escalations not published, handing their items back"
            );
            return todo;
        }
        retry.wait().await;
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

#[cfg(test)]
mod tests {
    //! Against the real Postgres and NATS (each test its own database and NATS prefix). The
    //! commit interval is a minute, so a test only passes if the committer decides not to
    //! wait; nothing here sleeps to synchronize or measures time.

    use super::*;
    use async_nats::jetstream::consumer::PullConsumer;
    use bytes::Bytes;
    use switchyard_store::outcomes::AttemptKey;
    use switchyard_testkit::{TestDb, TestNats, eventually, settings_for};

    const TIER: &str = "weak";
    const FOREVER: Duration = Duration::from_secs(60);
    const PATIENCE: Duration = Duration::from_secs(5);

    struct Setup {
        w: Worker,
        consumer: PullConsumer,
        keeper: crate::settle::Keeper,
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
            keeper: crate::settle::Keeper::new(w.js.clone()),
            w,
            consumer,
            _nats: nats,
            _db: db,
        }
    }

    /// A failed outcome for item `n`, with a real work message.
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
                call: None,
                intent: None,
            },
            delivery: Delivery::new(&s.w.js, msg, &s.keeper),
            escalation: None,
            then: Disposition::Done,
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
    /// A committer of `s`'s worker, running: the calls in flight it watches, the sender of
    /// its outcomes, and its task.
    fn start_committer(
        s: &Setup,
    ) -> (InFlight, mpsc::Sender<Pending>, tokio::task::JoinHandle<()>) {
        let in_flight = InFlight::default();
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(run(
            s.w.clone(),
            rx,
            in_flight.clone(),
            CancellationToken::new(),
        ));
        (in_flight, tx, task)
    }

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
        let (in_flight, tx, task) = start_committer(&s);

        let p = pending(&s, 1, Some(in_flight.start())).await;
        tx.send(p).await.unwrap();
        // With a one-minute interval this only passes if the committer did not wait.
        assert_eq!(settled(&s, tx, task).await, (1, 1));
        assert_eq!(in_flight.count(), 0);
    }

    #[tokio::test]
    async fn outcomes_on_their_way_are_waited_for_and_share_one_commit() {
        let s = setup().await;
        let (in_flight, tx, task) = start_committer(&s);

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
        let (in_flight, tx, task) = start_committer(&s);

        // A call in flight that then settles its message itself (a nak, say).
        let other = in_flight.start();
        let p = pending(&s, 1, Some(in_flight.start())).await;
        tx.send(p).await.unwrap();
        received_first(&in_flight).await;
        drop(other);
        assert_eq!(settled(&s, tx, task).await, (1, 1));
    }
}

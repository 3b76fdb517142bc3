//! A lane's batcher: groups the lane's batch lines per model (bounded by a count, an input
//! file's bytes and a wait) and sends each group as one provider batch (record, settle the
//! messages, upload, create, record the provider's ids). The team's budget bounds it too:
//! each line holds its call's worst case from its claim on, as a real-time call does.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use switchyard_store::outcomes::Outcome;
use switchyard_store::provider_batches::{self as pb, NewBatch, NewLine};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::{Line, Queued};
use crate::committer::Pending;
use crate::context::Worker;
use crate::llm::CompletionRequest;
use crate::settle::{Disposition, settle};

/// The largest input file a batch is given: OpenAI takes up to 200 MB; a line's size is
/// estimated from its work message (twice it plus 1 KiB, for the prompt's framing and the
/// line's JSON, once per request it is sent as), so this keeps a margin.
pub const MAX_FILE_BYTES: usize = 180 * 1024 * 1024;

fn estimated_bytes(l: &Line) -> usize {
    l.work
        .len()
        .saturating_mul(2)
        .saturating_add(1024)
        .saturating_mul(l.request.requests() as usize)
}

/// Starts a lane's batcher; `commits` is the lane's committer (a line that cannot be
/// recorded gives its intent back through it). The batcher ends when every sender is gone,
/// after recording what it holds.
pub fn start(w: Worker, commits: mpsc::Sender<Pending>) -> (mpsc::Sender<Queued>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(w.settings.worker.concurrency.get() * 4);
    (tx, tokio::spawn(run(w, rx, commits)))
}

/// A model's lines waiting to be recorded as one batch.
struct Group {
    /// When its first line came.
    first: Instant,
    lines: Vec<Queued>,
    /// Their estimated input file bytes and input tokens.
    bytes: usize,
    tokens: u64,
}

impl Group {
    fn new() -> Self {
        Self {
            first: Instant::now(),
            lines: Vec::new(),
            bytes: 0,
            tokens: 0,
        }
    }

    /// Whether `line` would take the group past the input file's bytes or the model's batch
    /// queue (`queue`): it starts the next batch instead.
    fn overflows(&self, line: &Line, queue: Option<u64>) -> bool {
        !self.lines.is_empty()
            && (self.bytes.saturating_add(estimated_bytes(line)) > MAX_FILE_BYTES
                || queue.is_some_and(|q| self.tokens.saturating_add(line.input_tokens()) > q))
    }

    fn push(&mut self, q: Queued) {
        self.bytes = self.bytes.saturating_add(estimated_bytes(&q.line));
        self.tokens = self.tokens.saturating_add(q.line.input_tokens());
        self.lines.push(q);
    }
}

async fn run(w: Worker, mut rx: mpsc::Receiver<Queued>, commits: mpsc::Sender<Pending>) {
    let bs = w.settings.worker.batching.clone();
    let mut groups: HashMap<String, Group> = HashMap::new();
    let senders = TaskTracker::new();
    loop {
        let due = groups.values().map(|g| g.first + bs.max_wait).min();
        let next = match due {
            Some(at) => tokio::select! {
                q = rx.recv() => Some(q),
                () = tokio::time::sleep_until(at) => None,
            },
            None => Some(rx.recv().await),
        };
        match next {
            Some(Some(q)) => {
                let model = q.line.model.clone();
                let queue = w
                    .models
                    .get(&model)
                    .and_then(|m| m.settings.batch_queue_tokens)
                    .map(std::num::NonZeroU64::get);
                if groups
                    .get(&model)
                    .is_some_and(|g| g.overflows(&q.line, queue))
                    && let Some(g) = groups.remove(&model)
                {
                    flush(&w, g.lines, &commits, &senders).await;
                }
                let group = groups.entry(model.clone()).or_insert_with(Group::new);
                group.push(q);
                if group.lines.len() >= bs.max_lines.get()
                    && let Some(g) = groups.remove(&model)
                {
                    flush(&w, g.lines, &commits, &senders).await;
                }
            }
            // Every sender is gone: the lane is stopping.
            Some(None) => break,
            None => {
                let now = Instant::now();
                let ripe: Vec<String> = groups
                    .iter()
                    .filter(|(_, g)| now >= g.first + bs.max_wait)
                    .map(|(m, _)| m.clone())
                    .collect();
                for model in ripe {
                    if let Some(g) = groups.remove(&model) {
                        flush(&w, g.lines, &commits, &senders).await;
                    }
                }
            }
        }
    }
    for (_, g) in groups.drain() {
        flush(&w, g.lines, &commits, &senders).await;
    }
    senders.close();
    // A batch whose upload is cut short stays recorded and is taken up by another worker.
    let _ = tokio::time::timeout(w.settings.worker.shutdown_grace, senders.wait()).await;
}

/// Records `queued` as one batch, settles their messages, and sends the batch.
async fn flush(
    w: &Worker,
    queued: Vec<Queued>,
    commits: &mpsc::Sender<Pending>,
    senders: &TaskTracker,
) {
    let Some(first) = queued.first() else {
        return;
    };
    let model = first.line.model.clone();
    let provider = w
        .models
        .get(&model)
        .map_or_else(String::new, |m| m.settings.provider.clone());
    let deadline = queued.iter().map(|q| q.line.deadline).min().unwrap_or(0);
    let batch = NewBatch {
        batch_id: format!("pb_{}", uuid::Uuid::now_v7().simple()),
        model: model.clone(),
        provider,
        deadline: chrono::DateTime::from_timestamp(i64::try_from(deadline).unwrap_or(0), 0)
            .unwrap_or_else(chrono::Utc::now),
        lines: queued.iter().map(|q| new_line(&q.line)).collect(),
    };
    // Leased to this worker for the upload and create it is about to do.
    let lease = super::lease(&w.settings);
    let recorded = match pb::record(&w.pool, &batch, &w.worker_id, lease).await {
        Ok(recorded) => Ok(recorded),
        Err(e) => recorded_anyway(w, &batch.batch_id).await.ok_or(e),
    };
    match recorded {
        Ok(recorded) => {
            let recorded: HashSet<String> = recorded.into_iter().collect();
            let mut to_send = Vec::new();
            for q in queued {
                if recorded.contains(&q.line.call_id) {
                    // The batch renews nothing: its hold is no longer this worker's.
                    w.finance.booked(q.line.reservation_id);
                    settle(w, q.delivery, Disposition::Done).await;
                    to_send.push((q.line.call_id, q.line.request));
                } else {
                    // The attempt is in another open line already.
                    give_back(w, q, commits, Disposition::Done).await;
                }
            }
            if !to_send.is_empty() {
                tracing::info!(batch = %batch.batch_id, model = %model, lines = to_send.len(), "provider batch recorded");
                let (w, id) = (w.clone(), batch.batch_id);
                senders.spawn(async move { send(&w, &id, &model, &to_send).await });
            }
        }
        Err(e) => {
            tracing::warn!(model = %model, error = %e, "cannot record a provider batch; its items will be delivered again");
            let then = Disposition::Retry {
                after: w.settings.worker.retry_delay,
            };
            for q in queued {
                give_back(w, q, commits, then.clone()).await;
            }
        }
    }
}

/// After `record` failed: the lines recorded all the same, when its transaction committed
/// and only the reply was lost (Postgres restarting as it committed). Those lines belong to
/// the batch now (their intents and holds with them): giving them back would release the
/// batch's holds and delete its intents, and the batch would still be sent. `None` when the
/// batch is not there, or Postgres cannot tell within a few tries (the lines are then given
/// back, as when nothing was recorded).
async fn recorded_anyway(w: &Worker, batch_id: &str) -> Option<Vec<String>> {
    let mut outage = crate::retry::service_wait();
    for _ in 0..8 {
        match pb::open_lines(&w.pool, batch_id).await {
            Ok(lines) if lines.is_empty() => return None,
            Ok(lines) => {
                tracing::warn!(batch = %batch_id, "the batch was recorded though its reply was lost");
                return Some(lines.into_iter().map(|l| l.call_id).collect());
            }
            Err(_) => outage.wait().await,
        }
    }
    None
}

fn new_line(l: &Line) -> NewLine {
    NewLine {
        call_id: l.call_id.clone(),
        job_id: l.key.job_id.clone(),
        item_id: l.key.item_id.clone(),
        attempt: l.key.attempt,
        work: l.work.clone(),
        tier: l.tier.clone(),
        reservation_id: l.reservation_id,
        priced_at: l.priced_at,
        tokens: i32::try_from(l.input_tokens()).unwrap_or(i32::MAX),
    }
}

/// A line that will not be sent: its hold and intent are given up and its message settled
/// as `then` says (through the committer, which deletes the intent first).
async fn give_back(w: &Worker, q: Queued, commits: &mpsc::Sender<Pending>, then: Disposition) {
    if let Some(id) = q.line.reservation_id {
        crate::budget::give_back(w, id).await;
    }
    let pending = Pending {
        outcome: Outcome::Released {
            key: q.line.key,
            call_id: q.line.call_id,
        },
        delivery: q.delivery,
        escalation: None,
        then,
        in_flight: None,
    };
    if let Err(e) = commits.send(pending).await {
        // The committer is gone (stopping).
        let after = Duration::ZERO;
        settle(w, e.0.delivery, Disposition::GiveBack { after }).await;
    }
}

/// Uploads a recorded batch's lines and creates it at the provider, then records the
/// provider's ids. A failure leaves the batch recorded: whichever worker takes it next looks
/// for it at the provider and sends it if it is not there.
pub(super) async fn send(
    w: &Worker,
    batch_id: &str,
    model: &str,
    lines: &[(String, CompletionRequest)],
) {
    let Some(runtime) = w.models.get(model) else {
        return;
    };
    let Some(client) = runtime.batch.as_ref() else {
        return;
    };
    if let Some(queue) = runtime.settings.batch_queue_tokens {
        match fits_in_queue(w, model, batch_id, queue.get()).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(batch = %batch_id, error = %e, "cannot read the batch queue; the batch is sent later");
                return;
            }
        }
    }
    match leased_while(w, batch_id, client.create(batch_id, lines)).await {
        Ok(created) => {
            let poll = w.settings.worker.batching.poll_every;
            let (id, file) = (&created.provider_batch_id, created.input_file_id.as_deref());
            match pb::submitted(&w.pool, batch_id, id, file, poll).await {
                Ok(true) => {
                    tracing::info!(batch = %batch_id, provider_batch = %id, "provider batch created");
                }
                Ok(false) => second_creation(w, client, batch_id, id).await,
                Err(e) => {
                    tracing::warn!(batch = %batch_id, error = %e, "provider batch created but not recorded; it will be found at the provider");
                }
            }
        }
        Err(e) => {
            tracing::warn!(batch = %batch_id, error = %e, "cannot create the provider batch; another look will send it");
        }
    }
}

/// Runs `work` (the batch's upload and creation) with the batch's lease kept: a lease that
/// ran out meanwhile would let another look find nothing at the provider yet and send the
/// batch a second time, whose lines would be billed and never booked.
async fn leased_while<T>(w: &Worker, batch_id: &str, work: impl Future<Output = T>) -> T {
    let lease = super::lease(&w.settings);
    let mut renew = tokio::time::interval(lease / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = renew.tick() => {
                if let Err(e) = pb::keep_lease(&w.pool, batch_id, &w.worker_id, lease).await {
                    tracing::warn!(batch = %batch_id, error = %e, "cannot keep the batch's lease while sending it");
                }
            }
        }
    }
}

/// The batch was created at the provider, but another creation of it was recorded first
/// (this worker's lease ran out anyway, a stall longer than the lease): the lines would run
/// twice and be booked once, so this creation is cancelled. When the recorded one is this
/// very batch (found by its metadata meanwhile), nothing is to be done.
async fn second_creation(
    w: &Worker,
    client: &crate::llm::batch_api::BatchApi,
    batch_id: &str,
    ours: &str,
) {
    match pb::provider_id(&w.pool, batch_id).await {
        Ok(Some(recorded)) if recorded == ours => {}
        Ok(recorded) => {
            tracing::warn!(batch = %batch_id, provider_batch = %ours, recorded = ?recorded, "the batch was sent twice; cancelling this creation");
            if let Err(e) = client.cancel(ours).await {
                tracing::warn!(batch = %batch_id, provider_batch = %ours, error = %e, "cannot cancel a second creation of a batch; its lines may be billed twice");
            }
        }
        Err(e) => {
            tracing::warn!(batch = %batch_id, provider_batch = %ours, error = %e, "cannot tell whether the batch was sent twice");
        }
    }
}

/// Whether recorded batch `batch_id` fits in `model`'s batch queue (`queue` tokens) beside
/// the model's batches at the provider. One that does not stays recorded: the poller looks
/// at it again after its lease and sends it once earlier batches have ended. (Two workers
/// checking at the same moment may both send; the provider then fails the later batch and
/// its lines come back to be sent again.)
async fn fits_in_queue(
    w: &Worker,
    model: &str,
    batch_id: &str,
    queue: u64,
) -> anyhow::Result<bool> {
    let enqueued = u64::try_from(pb::enqueued_tokens(&w.pool, model).await?).unwrap_or(0);
    let ours = u64::try_from(pb::batch_tokens(&w.pool, batch_id).await?).unwrap_or(0);
    if enqueued > 0 && enqueued.saturating_add(ours) > queue {
        tracing::info!(batch = %batch_id, model, enqueued, ours, queue, "the model's batch queue is full; the batch waits");
        return Ok(false);
    }
    Ok(true)
}

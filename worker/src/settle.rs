//! What happens to a work message, in one place.
//!
//! Every handler of a work message (the lane, the committer, the budget diversions) decides
//! one [`Disposition`]; [`settle`] is the only code that turns it into JetStream's words: ack,
//! nak with a delay, or a dead letter and term. Whoever wants to know what happens to a
//! message reads the handler's disposition, then this file.
//!
//! A [`Delivery`] is a message in hand: it is kept alive by the lane's [`Keeper`] (in-progress
//! acks every `ack_wait / 3`) from the moment it is pulled until it is settled, through quota
//! waits, 429 loops, the committer's queue and commit retries, so JetStream never hands it to
//! another worker while this one still works on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use bytes::Bytes;
use switchyard_proto::topology::{HEADER_DLQ_REASON, HEADER_MSG_ID};
use tokio_util::sync::CancellationToken;

use crate::context::{Worker, WorkerCounters};

/// What becomes of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Handled for good (its effects are durable, or it needed none): ack.
    Done,
    /// Not now: nak, redelivered after `after`. Uses one of the message's deliveries.
    Retry { after: Duration },
    /// Not tried here, through no fault of the message (this worker is stopping, or had no
    /// room for it): a nak like [`Disposition::Retry`], except on the message's last
    /// delivery, where a nak would spend it and the item would fail untried (the reaper
    /// records "no worker finished this item"): a copy goes back on its subject under an id
    /// of its own, then the message is acked. A rolling restart during a provider or
    /// Postgres outage used to fail the items that were waiting on their last delivery.
    GiveBack { after: Duration },
    /// Never: the message goes to the dead-letter subject with `reason` and is terminated.
    /// Its record in Postgres (item failed, dead-letter row) is written before this.
    GiveUp { reason: String },
}

impl Disposition {
    /// This disposition of a message handled while its lane is stopping (`stopping`): a
    /// retry is then a give-back, since the message was not tried to its end here.
    pub fn when_stopping(self, stopping: bool) -> Self {
        match self {
            Disposition::Retry { after } if stopping => Disposition::GiveBack { after },
            other => other,
        }
    }
}

/// A work message in hand, kept alive until it is settled.
pub struct Delivery {
    pub subject: String,
    pub payload: Bytes,
    /// This delivery's number (1 for the first).
    pub delivered: i64,
    pub stream_seq: u64,
    acker: Acker,
    kept: Kept,
}

impl Delivery {
    /// Takes `msg` in hand and registers it with `keeper`.
    pub fn new(
        js: &async_nats::jetstream::Context,
        msg: async_nats::jetstream::Message,
        keeper: &Keeper,
    ) -> Self {
        let (delivered, stream_seq) = msg
            .info()
            .map(|i| (i.delivered, i.stream_sequence))
            .unwrap_or((1, 0));
        let kept = keeper.keep(msg.reply.clone());
        Self {
            subject: msg.subject.to_string(),
            payload: msg.payload.clone(),
            delivered,
            stream_seq,
            acker: Acker::new(js.clone(), msg.reply.clone()),
            kept,
        }
    }

    /// The tier of the subject (`<prefix>.work.<tier>`).
    pub fn tier(&self) -> &str {
        self.subject.rsplit('.').next().unwrap_or("unknown")
    }
}

/// Turns `disposition` into JetStream's words for `d`, and stops keeping it alive.
pub async fn settle(w: &Worker, d: Delivery, disposition: Disposition) {
    let Delivery {
        acker,
        kept,
        payload,
        subject,
        delivered,
        stream_seq,
    } = d;
    // No more in-progress acks: the ack, nak or term below is the last word.
    drop(kept);
    let nak = |after: Duration| {
        WorkerCounters::add(&w.counters.naked, 1);
        AckKind::Nak((!after.is_zero()).then_some(after))
    };
    let result = match disposition {
        Disposition::Done => acker.ack().await,
        Disposition::Retry { after } => acker.ack_with(nak(after)).await,
        Disposition::GiveBack { after } => {
            if delivered >= w.settings.worker.max_deliver
                && hand_over(w, &subject, &payload, stream_seq).await
            {
                WorkerCounters::add(&w.counters.handed_over, 1);
                acker.ack().await
            } else {
                acker.ack_with(nak(after)).await
            }
        }
        Disposition::GiveUp { reason } => {
            publish_dead_letter(w, &subject, &payload, &reason).await;
            acker.ack_with(AckKind::Term).await
        }
    };
    if let Err(e) = result {
        // JetStream redelivers after `ack_wait`; the next delivery finds the outcome.
        tracing::warn!(error = %e, subject = %subject, "cannot settle a message; it will be redelivered");
    }
}

/// Publishes a copy of a message on its last delivery back on its `subject`, under an id
/// made from its stream sequence (unique, so the duplicate window keeps it; a copy handed
/// over again has a sequence of its own). True once JetStream has stored it; on failure the
/// caller naks the message instead, as before. The copy is the same attempt: whoever takes
/// it claims the attempt as any redelivery does (an intent this worker left is taken over
/// once its lease ends).
async fn hand_over(w: &Worker, subject: &str, payload: &Bytes, stream_seq: u64) -> bool {
    let mut headers = async_nats::HeaderMap::new();
    let id = format!("give-back:{stream_seq}");
    headers.insert(HEADER_MSG_ID, id.as_str());
    let stored = match w
        .js
        .publish_with_headers(subject.to_owned(), headers, payload.clone())
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(anyhow::Error::from),
        Err(e) => Err(e.into()),
    };
    match stored {
        Ok(()) => {
            tracing::info!(
                subject,
                stream_seq,
                "handed a message on its last delivery back to the stream"
            );
            true
        }
        Err(e) => {
            tracing::warn!(subject, error = %format!("{e:#}"), "cannot hand a message on its last delivery back; giving it back as is");
            false
        }
    }
}

/// Copies a message to its tier's dead-letter subject with the reason in a header.
async fn publish_dead_letter(w: &Worker, subject: &str, payload: &Bytes, reason: &str) {
    let tier = subject.rsplit('.').next().unwrap_or("unknown");
    let mut headers = async_nats::HeaderMap::new();
    // Header values cannot hold newlines.
    headers.insert(
        HEADER_DLQ_REASON,
        reason.replace(['\r', '\n'], " ").as_str(),
    );
    let dlq = w.settings.topology().dlq_work_subject(tier);
    match w
        .js
        .publish_with_headers(dlq, headers, payload.clone())
        .await
    {
        Ok(ack) => {
            if let Err(e) = ack.await {
                tracing::warn!(error = %e, "dead letter not stored on its subject (its row is in Postgres)");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "dead letter not published (its row is in Postgres)");
        }
    }
}

/// The messages a lane holds, kept alive together: every `period` (a third of `ack_wait`)
/// each gets an in-progress ack. One task per lane, whatever the number of messages.
#[derive(Clone)]
pub struct Keeper {
    js: async_nats::jetstream::Context,
    held: Arc<Mutex<HashMap<u64, Subject>>>,
    next: Arc<AtomicU64>,
}

/// A message's place in its [`Keeper`]; dropping it stops the in-progress acks.
struct Kept {
    id: u64,
    held: Arc<Mutex<HashMap<u64, Subject>>>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Keeper {
    /// A keeper acking through `js`.
    pub fn new(js: async_nats::jetstream::Context) -> Self {
        Self {
            js,
            held: Arc::default(),
            next: Arc::default(),
        }
    }

    fn keep(&self, reply: Option<Subject>) -> Kept {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(reply) = reply {
            self.held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, reply);
        }
        Kept {
            id,
            held: self.held.clone(),
        }
    }

    /// How many messages are held now.
    pub fn len(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no message is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends in-progress acks for every held message each `period`, until `stop`.
    pub async fn run(self, period: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let replies: Vec<Subject> = self
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .cloned()
                .collect();
            for reply in replies {
                let acker = Acker::new(self.js.clone(), Some(reply));
                let _ = acker.ack_with(AckKind::Progress).await;
            }
        }
    }
}

//! Records items whose worker died on their last delivery.
//!
//! JetStream stops delivering a message after `max_deliver` attempts and publishes a
//! max-deliveries advisory; in a work-queue stream the message itself stays. The
//! `<P>_ADVISORIES` stream captures those advisories durably, and this loop (one durable
//! consumer shared by every worker process) marks the item failed with a dead letter, then
//! deletes the message. Workers normally record a final failure themselves on the last
//! delivery; this covers the case where the process died instead.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use futures::StreamExt;
use serde::Deserialize;
use switchyard_proto::{WorkItem, codec};
use switchyard_store::dead_letters::{self, DeadLetter};
use switchyard_store::intents;
use switchyard_store::outcomes::{self, AttemptKey, Outcome};
use tokio_util::sync::CancellationToken;

use crate::context::Worker;

#[derive(Deserialize)]
struct MaxDeliveries {
    stream: String,
    stream_seq: u64,
    #[serde(default)]
    deliveries: i64,
}

/// What becomes of an advisory message.
enum AdvisoryDisposition {
    Done,
    Retry,
    /// Recorded as the reaper's own dead letter; stop redelivering it.
    GiveUp,
}

/// Consumes advisories until `shutdown`.
///
/// # Errors
/// When the consumer cannot be created.
pub async fn run_reaper(w: Worker, shutdown: CancellationToken) -> anyhow::Result<()> {
    let spec = switchyard_runtime::nats::advisories_consumer_spec(&w.settings);
    let consumer = switchyard_runtime::nats::ensure_consumer(&w.js, &spec).await?;
    let mut messages = consumer
        .stream()
        .expires(Duration::from_secs(5))
        .messages()
        .await?;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = messages.next() => match next {
                Some(Ok(m)) => m,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        let (delivered, seq) = msg
            .info()
            .map(|i| (i.delivered, i.stream_sequence))
            .unwrap_or((1, 0));
        let disposition = match reap(&w, &msg.payload).await {
            Ok(()) => AdvisoryDisposition::Done,
            Err(e) if delivered >= spec.max_deliver => {
                // The reaper's own dead letter: keep the advisory and the error.
                let error = format!("cannot record max-deliveries advisory: {e:#}");
                tracing::error!(error = %error, "giving up on advisory");
                let key = format!("{}:{seq}", spec.stream);
                let advisory = String::from_utf8_lossy(&msg.payload).into_owned();
                let letter =
                    DeadLetter::unattributed_item(&key, &advisory, delivered as i32, &error);
                let recorded = dead_letters::record(&w.pool, &letter).await;
                if recorded.is_ok() {
                    AdvisoryDisposition::GiveUp
                } else {
                    AdvisoryDisposition::Retry
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot record max-deliveries advisory");
                AdvisoryDisposition::Retry
            }
        };
        let _ = match disposition {
            AdvisoryDisposition::Done => msg.ack().await,
            AdvisoryDisposition::Retry => {
                // Half a lease: a worker still calling the attempt has booked it or is gone.
                let after = (crate::lease::lease(&w) / 2).max(Duration::from_secs(1));
                msg.ack_with(AckKind::Nak(Some(after))).await
            }
            AdvisoryDisposition::GiveUp => msg.ack_with(AckKind::Term).await,
        };
    }
    Ok(())
}

async fn reap(w: &Worker, payload: &[u8]) -> anyhow::Result<()> {
    let adv: MaxDeliveries = serde_json::from_slice(payload)?;
    if adv.stream != w.settings.topology().work_stream() {
        return Ok(());
    }
    let stream = w.js.get_stream(&adv.stream).await?;
    let Ok(raw) = stream.get_raw_message(adv.stream_seq).await else {
        // Acked in the meantime: nothing to do.
        return Ok(());
    };
    let subject = raw.subject.to_string();
    let Ok(item) = codec::decode::<WorkItem>(&raw.payload) else {
        let _ = stream.delete_message(adv.stream_seq).await;
        return Ok(());
    };
    let key = AttemptKey {
        job_id: item.job_id.clone(),
        item_id: item.item_id.clone(),
        attempt: i32::from(item.attempt),
    };
    // A live worker is calling this attempt (another copy of it): it settles the attempt, or
    // dies and leaves it to this reaper; look again later, the message left in place.
    if let Some(owner) = intents::live_owner(&w.pool, &key, crate::lease::lease(w)).await? {
        anyhow::bail!("worker {owner} is still calling this attempt; looking again later");
    }
    {
        // Decides only when the attempt is the item's current one and has no answer (see
        // `outcomes`): a stale copy or a shadow call never fails the item.
        let outcome = Outcome::Failed {
            key,
            subject,
            deliveries: adv.deliveries as i32,
            error: format!(
                "no worker finished this item in {} deliveries (workers crashed or timed out)",
                adv.deliveries
            ),
            call: None,
            intent: None,
        };
        let report = outcomes::commit(&w.pool, &[outcome]).await?;
        for job in report.jobs {
            crate::budget::announce_if_finished(w, &job).await;
        }
    }
    let _ = stream.delete_message(adv.stream_seq).await;
    Ok(())
}

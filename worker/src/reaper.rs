//! Records items whose worker died on their last delivery.
//!
//! JetStream stops delivering a message after `max_deliver` attempts and publishes a
//! max-deliveries advisory; in a work-queue stream the message itself stays. The
//! `<P>_ADVISORIES` stream captures those advisories durably, and this loop (one durable
//! consumer shared by every worker process) marks the item failed with a dead letter, then
//! deletes the message. Workers normally record a final failure themselves on the last
//! delivery; this covers the case where the process died instead.

use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use switchyard_proto::{WorkItem, codec};
use switchyard_store::dead_letters::{self, DeadLetter};
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
        match reap(&w, &msg.payload).await {
            Ok(()) => {
                let _ = msg.ack().await;
            }
            Err(e) if delivered >= spec.max_deliver => {
                // The reaper's own dead letter: keep the advisory and the error, stop retrying.
                let error = format!("cannot record max-deliveries advisory: {e:#}");
                tracing::error!(error = %error, "giving up on advisory");
                let key = format!("{}:{seq}", spec.stream);
                let advisory = String::from_utf8_lossy(&msg.payload).into_owned();
                let _ = dead_letters::record(
                    &w.pool,
                    &DeadLetter {
                        message_key: &key,
                        kind: "item",
                        job_id: None,
                        item_id: None,
                        attempt: None,
                        subject: &advisory,
                        deliveries: Some(delivered as i32),
                        error: &error,
                    },
                )
                .await;
                let _ = msg.ack_with(async_nats::jetstream::AckKind::Term).await;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot record max-deliveries advisory");
                let _ = msg
                    .ack_with(async_nats::jetstream::AckKind::Nak(Some(
                        Duration::from_secs(2),
                    )))
                    .await;
            }
        }
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
    let outcome = Outcome::Failed {
        key: AttemptKey {
            job_id: item.job_id.clone(),
            item_id: item.item_id.clone(),
            attempt: i32::from(item.attempt),
        },
        subject,
        deliveries: adv.deliveries as i32,
        error: format!(
            "no worker finished this item in {} deliveries (workers crashed or timed out)",
            adv.deliveries
        ),
    };
    let touched = outcomes::commit(&w.pool, &[outcome]).await?;
    let _ = stream.delete_message(adv.stream_seq).await;
    for job in touched {
        crate::budget::announce_if_finished(w, &job).await;
    }
    Ok(())
}

//! Publishing with many publish-acks in flight (engine notes: a window of 1 runs at 0.07× of
//! a window of 256). Every message carries `Nats-Msg-Id`, so a publish retried after a crash
//! within the stream's duplicate window is dropped by JetStream.

use async_nats::HeaderMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use switchyard_proto::topology::HEADER_MSG_ID;

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// A bounded window of outstanding publishes.
pub struct WindowedPublisher {
    js: async_nats::jetstream::Context,
    window: usize,
    inflight: FuturesUnordered<AckFuture>,
    /// Messages JetStream reported as duplicates (already stored).
    pub duplicates: u64,
    /// Messages stored.
    pub published: u64,
}

impl WindowedPublisher {
    /// A publisher with at most `window` unacknowledged messages.
    pub fn new(js: async_nats::jetstream::Context, window: usize) -> Self {
        Self {
            js,
            window: window.max(1),
            inflight: FuturesUnordered::new(),
            duplicates: 0,
            published: 0,
        }
    }

    /// Publishes one message, waiting first if the window is full.
    ///
    /// # Errors
    /// A publish that failed or was not acknowledged.
    pub async fn publish(
        &mut self,
        subject: String,
        msg_id: &str,
        payload: Bytes,
    ) -> anyhow::Result<()> {
        while self.inflight.len() >= self.window {
            self.settle_one().await?;
        }
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_MSG_ID, msg_id);
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await?;
        self.inflight.push(Box::pin(ack.into_future()));
        Ok(())
    }

    async fn settle_one(&mut self) -> anyhow::Result<()> {
        if let Some(ack) = self.inflight.next().await {
            let ack = ack?;
            if ack.duplicate {
                self.duplicates += 1;
            } else {
                self.published += 1;
            }
        }
        Ok(())
    }

    /// Waits for every outstanding publish-ack.
    ///
    /// # Errors
    /// The first publish that failed.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        while !self.inflight.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }
}

//! Claims, group-committed: the intent of every call is durable before its request leaves,
//! at the cost of one statement per group of messages rather than one per message.
//!
//! Each message's task asks [`Claims::claim`]; one task per lane takes every request waiting
//! at that moment and runs them as one statement ([`switchyard_store::intents::claim`]). While
//! it runs, the next requests gather, so under load each statement carries many claims and an
//! idle worker pays a single round trip.

use anyhow::Context as _;
use switchyard_store::intents::{self, Claim, Intent};
use tokio::sync::{mpsc, oneshot};

use crate::context::Worker;

/// At most this many claims go in one statement.
const MAX_GROUP: usize = 512;

type Request = (Intent, oneshot::Sender<Result<Claim, String>>);

/// A lane's claim writer.
#[derive(Clone)]
pub struct Claims {
    tx: mpsc::Sender<Request>,
}

impl Claims {
    /// Starts the writer for `w`; it stops when every [`Claims`] clone is dropped.
    pub fn start(w: Worker) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(MAX_GROUP * 2);
        (Self { tx }, tokio::spawn(run(w, rx)))
    }

    /// Claims `intent`'s attempt (see [`switchyard_store::intents`]).
    ///
    /// # Errors
    /// When Postgres could not be asked (the message is retried later).
    pub async fn claim(&self, intent: Intent) -> anyhow::Result<Claim> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((intent, reply))
            .await
            .map_err(|_| anyhow::anyhow!("the claim writer has stopped"))?;
        answer
            .await
            .context("the claim writer has stopped")?
            .map_err(|e| anyhow::anyhow!("cannot claim the attempt: {e}"))
    }
}

async fn run(w: Worker, mut rx: mpsc::Receiver<Request>) {
    let grace = w.settings.finance.reservation_lease;
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let (batch, replies): (Vec<Intent>, Vec<_>) = group.into_iter().unzip();
        match intents::claim(&w.pool, &w.worker_id, grace, &batch).await {
            Ok(claims) => {
                for (reply, claim) in replies.into_iter().zip(claims) {
                    let _ = reply.send(Ok(claim));
                }
            }
            Err(e) => {
                let e = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

//! Claims, group-committed: the intent of every call is durable before its request leaves,
//! at the cost of one statement per group of messages rather than one per message.
//!
//! Each message's task asks [`Claims::claim`]; one task per lane takes every request waiting
//! at that moment and runs them as one statement ([`switchyard_store::intents::claim`]). While
//! it runs, the next requests gather, so under load each statement carries many claims and an
//! idle worker pays a single round trip.

use switchyard_store::intents::{self, Claim, Intent};
use tokio::sync::{mpsc, oneshot};

use crate::context::Worker;

/// At most this many claims go in one statement.
const MAX_GROUP: usize = 512;

type Request = (Intent, oneshot::Sender<Result<Claim, ClaimError>>);

/// A claim that could not be made.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot claim the attempt: {message}")]
pub struct ClaimError {
    /// Postgres is unreachable, restarting or out of connections
    /// ([`switchyard_store::is_transient`]): worth waiting for, not a reason to hand the
    /// item back (which spends one of its deliveries).
    pub transient: bool,
    message: String,
}

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
    /// When Postgres could not be asked, or the writer has stopped (not transient).
    pub async fn claim(&self, intent: Intent) -> Result<Claim, ClaimError> {
        let stopped = || ClaimError {
            transient: false,
            message: "the claim writer has stopped".into(),
        };
        let (reply, answer) = oneshot::channel();
        self.tx.send((intent, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
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
                let e = ClaimError {
                    transient: switchyard_store::is_transient_sqlx(&e),
                    message: e.to_string(),
                };
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

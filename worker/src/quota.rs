//! Sharing a provider's quota across the fleet.
//!
//! A model's `rpm`/`tpm` are the provider's limits for the whole fleet. Every worker process
//! records itself in `worker_presence` every half second with the models it calls, counts the
//! live processes per model (seen in the last three seconds), and takes `quota × headroom /
//! live` in its local governor limiters ([`crate::limiter::ModelLimiter::set_peers`]). A
//! process that stops deletes its row, so the others take over its share at once; one that
//! dies is forgotten after three seconds.
//!
//! A 429 with `Retry-After` pauses the model in the process that saw it and is published on
//! `<prefix>.control.pause`; every other process pauses the model as well, so the fleet
//! honours `Retry-After` as one client.
//!
//! Why Postgres and core NATS rather than a NATS KV bucket: Debian's nats-server 2.9.10 cannot
//! serve async-nats's KV API (docs/architecture.md), and both are already dependencies.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::context::Worker;
use crate::limiter::PauseNotice;

/// How often a process refreshes its presence and recounts its peers.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// A pause as published on `<prefix>.control.pause`.
#[derive(Debug, Serialize, Deserialize)]
struct PauseMessage {
    model: String,
    retry_after_ms: u64,
    worker_id: String,
}

/// Records this process and applies the current share once (called at start-up, before any
/// call, so a new process does not start with the whole quota).
///
/// # Errors
/// Database errors.
pub async fn refresh(w: &Worker) -> sqlx::Result<()> {
    let models: Vec<String> = w.models.keys().cloned().collect();
    sqlx::query(
        "INSERT INTO worker_presence (worker_id, models, seen_at) VALUES ($1, $2, now()) \
         ON CONFLICT (worker_id) DO UPDATE SET models = EXCLUDED.models, seen_at = now()",
    )
    .bind(&w.worker_id)
    .bind(&models)
    .execute(&w.pool)
    .await?;
    let live: Vec<(String, i64)> = sqlx::query_as(
        "SELECT m, count(*) FROM worker_presence, unnest(models) AS m \
         WHERE seen_at > now() - interval '3 seconds' AND m = ANY($1) GROUP BY m",
    )
    .bind(&models)
    .fetch_all(&w.pool)
    .await?;
    let counts: HashMap<String, i64> = live.into_iter().collect();
    for (name, model) in w.models.iter() {
        let n = counts
            .get(name)
            .copied()
            .unwrap_or(1)
            .clamp(1, i64::from(u32::MAX)) as u32;
        model.limiter.set_peers(n);
    }
    Ok(())
}

/// Joins the fleet's quota sharing at start-up: records this process and takes its share. If
/// other processes already call the same models, waits one heartbeat (plus a margin) so they
/// have recounted and given up part of their share before this one starts calling; otherwise
/// the fleet would briefly send more than the quota.
///
/// # Errors
/// Database errors.
pub async fn join(w: &Worker) -> sqlx::Result<()> {
    refresh(w).await?;
    if w.models.values().any(|m| m.limiter.peers() > 1) {
        tokio::time::sleep(HEARTBEAT + Duration::from_millis(300)).await;
        refresh(w).await?;
    }
    Ok(())
}

/// Keeps this process's share current and relays pauses until `shutdown`, then removes the
/// process from the presence table.
///
/// # Errors
/// When the pause subject cannot be subscribed to.
pub async fn run_coordinator(w: Worker, shutdown: CancellationToken) -> anyhow::Result<()> {
    let subject = w.settings.topology().pause_subject();
    let mut pauses = w.client.subscribe(subject.clone()).await?;
    let (tx, mut notices) = tokio::sync::mpsc::unbounded_channel::<PauseNotice>();
    for model in w.models.values() {
        model.limiter.broadcast_pauses_to(tx.clone());
    }
    drop(tx);
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                if let Err(e) = refresh(&w).await {
                    tracing::warn!(error = %e, "cannot refresh quota share, keeping the last one");
                }
            }
            Some(notice) = notices.recv() => {
                let msg = PauseMessage {
                    model: notice.model,
                    retry_after_ms: notice.retry_after.as_millis().min(u128::from(u64::MAX)) as u64,
                    worker_id: w.worker_id.clone(),
                };
                if let Ok(bytes) = serde_json::to_vec(&msg) {
                    let _ = w.client.publish(subject.clone(), bytes.into()).await;
                }
            }
            Some(message) = pauses.next() => {
                if let Ok(p) = serde_json::from_slice::<PauseMessage>(&message.payload)
                    && p.worker_id != w.worker_id
                    && let Some(model) = w.models.get(&p.model)
                {
                    model.limiter.pause_locally(Duration::from_millis(p.retry_after_ms.min(3_600_000)));
                }
            }
        }
    }
    let _ = sqlx::query("DELETE FROM worker_presence WHERE worker_id = $1")
        .bind(&w.worker_id)
        .execute(&w.pool)
        .await;
    Ok(())
}

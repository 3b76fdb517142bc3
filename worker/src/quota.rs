//! Sharing a provider's quota across the fleet, through every change of the fleet's size.
//!
//! A model's `rpm`/`tpm` are the provider's limits for the whole fleet. Each worker process
//! holds a share of them in `quota_shares` (parts per million, per model) with a lease, and
//! the shares of the live rows never add up to more than the whole:
//!
//! - **Joining**: a new process starts with no share ([`join`]). It records itself with a
//!   share of 0 and tells the others, who lower theirs to `1 / members`; it then takes what is
//!   free, up to the same fair share. A process alone (or joining a fleet with free quota,
//!   after a leaver) takes the free part at once.
//! - **Rebalancing** ([`rebalance`], every [`TICK`] and whenever another process announces a
//!   change): under a per-model advisory lock, expired rows are removed, and this process's
//!   share moves to `1 / members`. A process *lowers* its limiter before the lower share is
//!   committed, and *raises* it only after the higher share is committed and checked against
//!   what the others hold: at no instant do the shares in use exceed the whole.
//! - **Leaving** ([`release`]): a process that stops keeps its share while its calls drain,
//!   then deletes its rows and announces it; the others take the freed share at once. Its
//!   share is never used by two processes at the same time.
//! - **Dying**: a row not renewed within [`LEASE`] is expired by the next process to
//!   rebalance (the database's clock decides, the same for everyone). The process itself
//!   stops calling the model when its lease runs out by its own clock, which runs out no
//!   later than the row: a process cut off from Postgres, or stalled, stops before the others
//!   take over its share. So a dead process is noticed within [`LEASE`] plus a [`TICK`], and a
//!   live one that cannot renew goes quiet rather than overshoot.
//!
//! A 429 pauses the model in the process that saw it ([`crate::limiter`]) and is published on
//! `<prefix>.control.pause` and recorded in `quota_pauses` (for processes that join during
//! the pause); every other process pauses the model as well, as one episode.
//!
//! Why Postgres and core NATS rather than a NATS KV bucket: Debian's nats-server 2.9.10 cannot
//! serve async-nats's KV API (docs/architecture.md), and both are already dependencies.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::context::{ModelRuntime, Worker};
use crate::limiter::PauseNotice;

/// How often a process renews its shares and rebalances.
pub const TICK: Duration = Duration::from_millis(250);
/// How long a share is valid without renewal: how long a dead process's share stays unused.
pub const LEASE: Duration = Duration::from_millis(2_500);
/// A share of the whole quota is counted in parts per million (integers add up exactly).
const WHOLE: i64 = 1_000_000;
/// After another process announces a change, rebalance this much later (several
/// announcements arriving together are answered by one round).
const SETTLE: Duration = Duration::from_millis(10);

/// What travels on `<prefix>.control.pause`.
#[derive(Debug, Serialize, Deserialize)]
struct ControlMessage {
    #[serde(default)]
    kind: ControlKind,
    #[serde(default)]
    model: String,
    #[serde(default)]
    retry_after_ms: u64,
    worker_id: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ControlKind {
    /// A 429 paused `model` for `retry_after_ms`.
    #[default]
    Pause,
    /// A process joined, left or moved its shares: the others should rebalance now.
    Shares,
}

fn limited(w: &Worker) -> Vec<&ModelRuntime> {
    let mut models: Vec<&ModelRuntime> = w
        .models
        .values()
        .filter(|m| m.limiter.is_limited())
        .collect();
    // One lock order for every process.
    models.sort_by(|a, b| a.name.cmp(&b.name));
    models
}

/// One round of the share protocol for every limited model this process calls: renews its
/// rows, expires the dead, and moves its shares towards `1 / members` without the shares in
/// use ever exceeding the whole. Returns true when something changed that the other
/// processes should react to (a share or the member count).
///
/// # Errors
/// Database errors; then the shares keep their last lease and run out with it.
pub async fn rebalance(w: &Worker) -> sqlx::Result<bool> {
    let models = limited(w);
    if models.is_empty() {
        return Ok(false);
    }
    let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    // The lease is counted from before the transaction, whose `now()` is later: this
    // process's lease ends no later than its row's.
    let started = Instant::now();
    let mut tx = w.pool.begin().await?;
    for name in &names {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('switchyard.quota'), hashtext($1))")
            .bind(name)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("DELETE FROM quota_shares WHERE model = ANY($1) AND expires_at <= now()")
        .bind(&names)
        .execute(&mut *tx)
        .await?;
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT model, worker_id, share FROM quota_shares WHERE model = ANY($1)")
            .bind(&names)
            .fetch_all(&mut *tx)
            .await?;
    let pauses: Vec<(String, f64)> = sqlx::query_as(
        "SELECT model, extract(epoch FROM until - now())::float8 FROM quota_pauses \
         WHERE model = ANY($1) AND until > now()",
    )
    .bind(&names)
    .fetch_all(&mut *tx)
    .await?;
    let mut plan = Vec::with_capacity(models.len());
    let mut changed = false;
    for m in &models {
        let mine = rows
            .iter()
            .find(|r| r.0 == m.name && r.1 == w.worker_id)
            .map(|r| r.2);
        let (others, count) = rows
            .iter()
            .filter(|r| r.0 == m.name && r.1 != w.worker_id)
            .fold((0i64, 0i64), |(sum, n), r| (sum + r.2, n + 1));
        let members = count + 1;
        let fair = WHOLE / members;
        let held = mine.unwrap_or(0);
        let share = fair.min(WHOLE - others).max(0);
        if share < held {
            // Lowered here before the others can see it.
            m.limiter.cut_to(share as f64 / WHOLE as f64);
        }
        changed |= mine != Some(share) || m.limiter.peers() != members as u32;
        plan.push((*m, share, members));
    }
    let shares: Vec<i64> = plan.iter().map(|p| p.1).collect();
    sqlx::query(
        "INSERT INTO quota_shares (model, worker_id, share, expires_at) \
         SELECT m, $2, s, now() + make_interval(secs => $4) \
         FROM unnest($1::text[], $3::int8[]) AS u(m, s) \
         ON CONFLICT (model, worker_id) DO UPDATE \
         SET share = EXCLUDED.share, expires_at = EXCLUDED.expires_at",
    )
    .bind(&names)
    .bind(&w.worker_id)
    .bind(&shares)
    .bind(LEASE.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let lease_until = started + LEASE;
    for (m, share, members) in plan {
        // Raised only now that the others see it.
        m.limiter.grant(
            share as f64 / WHOLE as f64,
            members as u32,
            Some(lease_until),
        );
    }
    let by_name: HashMap<&str, &ModelRuntime> =
        models.iter().map(|m| (m.name.as_str(), *m)).collect();
    for (model, secs) in pauses {
        // A pause this process missed (it joined during it, or the message was lost). The
        // last fraction of a second is left alone: this process has just ended the same
        // pause, timed from when it heard of it.
        if secs > 0.2
            && let Some(m) = by_name.get(model.as_str())
        {
            m.limiter
                .pause_locally(Duration::from_secs_f64(secs.min(3_600.0)));
        }
    }
    Ok(changed)
}

/// Joins the fleet's quota sharing at start-up, before any call: with no share of its own,
/// this process records itself and tells the others, who make room; it takes what is free
/// now (all of it when it is alone) and the rest as the others give it up.
///
/// # Errors
/// Database errors.
pub async fn join(w: &Worker) -> sqlx::Result<()> {
    let now = Instant::now();
    for m in limited(w) {
        m.limiter.grant(0.0, 1, Some(now));
    }
    rebalance(w).await?;
    announce(w, ControlKind::Shares, "", Duration::ZERO).await;
    Ok(())
}

/// Gives this process's shares back once it makes no more calls: the limiters stop, the rows
/// go, and the others are told to take the freed shares.
///
/// # Errors
/// Database errors (the rows then expire with their lease).
pub async fn release(w: &Worker) -> sqlx::Result<()> {
    let models = limited(w);
    if models.is_empty() {
        return Ok(());
    }
    let now = Instant::now();
    for m in &models {
        m.limiter.grant(0.0, m.limiter.peers(), Some(now));
    }
    sqlx::query("DELETE FROM quota_shares WHERE worker_id = $1")
        .bind(&w.worker_id)
        .execute(&w.pool)
        .await?;
    announce(w, ControlKind::Shares, "", Duration::ZERO).await;
    Ok(())
}

async fn announce(w: &Worker, kind: ControlKind, model: &str, retry_after: Duration) {
    let msg = ControlMessage {
        kind,
        model: model.to_owned(),
        retry_after_ms: retry_after.as_millis().min(u128::from(u64::MAX)) as u64,
        worker_id: w.worker_id.clone(),
    };
    if let Ok(bytes) = serde_json::to_vec(&msg) {
        let subject = w.settings.topology().pause_subject();
        let _ = w.client.publish(subject, bytes.into()).await;
        let _ = w.client.flush().await;
    }
}

/// Records a pause for processes that were not listening (they read it when they
/// rebalance).
async fn record_pause(w: &Worker, notice: &PauseNotice) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO quota_pauses (model, until) VALUES ($1, now() + make_interval(secs => $2)) \
         ON CONFLICT (model) DO UPDATE SET until = greatest(quota_pauses.until, EXCLUDED.until)",
    )
    .bind(&notice.model)
    .bind(notice.remaining().as_secs_f64())
    .execute(&w.pool)
    .await?;
    Ok(())
}

/// Keeps this process's shares current and relays pauses until `shutdown` (cancel it once
/// the lanes have stopped calling), then gives the shares back.
///
/// # Errors
/// When the control subject cannot be subscribed to.
pub async fn run_coordinator(w: Worker, shutdown: CancellationToken) -> anyhow::Result<()> {
    let subject = w.settings.topology().pause_subject();
    let mut control = w.client.subscribe(subject.clone()).await?;
    let (tx, mut notices) = tokio::sync::mpsc::unbounded_channel::<PauseNotice>();
    for model in w.models.values() {
        model.limiter.broadcast_pauses_to(tx.clone());
    }
    drop(tx);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut soon: Option<Instant> = None;
    let mut failing = false;
    loop {
        let due = soon.unwrap_or_else(|| Instant::now() + Duration::from_secs(3_600));
        let round = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => true,
            () = tokio::time::sleep_until(due.into()), if soon.is_some() => true,
            Some(notice) = notices.recv() => {
                // Both the notice and the record end when this process's pause ends: a
                // pause recorded as starting later (after a slow publish) would outlast it,
                // and this process would read the tail back as a pause it missed, a second
                // episode of the same 429.
                announce(&w, ControlKind::Pause, &notice.model, notice.remaining()).await;
                if let Err(e) = record_pause(&w, &notice).await {
                    tracing::warn!(error = %e, "cannot record the pause for joining processes");
                }
                false
            }
            Some(message) = control.next() => {
                match serde_json::from_slice::<ControlMessage>(&message.payload) {
                    Ok(c) if c.worker_id != w.worker_id => match c.kind {
                        ControlKind::Pause => {
                            if let Some(model) = w.models.get(&c.model) {
                                model.limiter.pause_locally(Duration::from_millis(
                                    c.retry_after_ms.min(3_600_000),
                                ));
                            }
                        }
                        ControlKind::Shares => {
                            soon.get_or_insert_with(|| Instant::now() + SETTLE);
                        }
                    },
                    _ => {}
                }
                false
            }
        };
        if !round {
            continue;
        }
        soon = None;
        match rebalance(&w).await {
            Ok(changed) => {
                if failing {
                    tracing::info!("quota shares renewed again");
                    failing = false;
                }
                if changed {
                    announce(&w, ControlKind::Shares, "", Duration::ZERO).await;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot renew the quota shares: calls to limited models stop when the lease runs out");
                    failing = true;
                }
            }
        }
    }
    if let Err(e) = release(&w).await {
        tracing::warn!(error = %e, "cannot give the quota shares back: they expire with their lease");
    }
    Ok(())
}

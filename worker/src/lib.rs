//! Workers: the part of the fleet that spends money.
//!
//! A worker process serves one or more tiers. For each tier it runs a [`lane`]: a pull loop
//! on the tier's durable consumer (`worker_<tier>`, shared by every worker process of the
//! tier). Each item goes through:
//!
//! 0. [`claims`]: the attempt is claimed and the call's intent written (group-committed)
//!    before anything is sent: a delivery of an attempt that already has an outcome calls
//!    nothing, one whose attempt a live worker is calling waits;
//! 1. [`limiter`]: the model's requests/min and tokens/min quota (this process's share of
//!    the fleet's, kept by [`quota`]), paced one call at a time, and any pause a 429 imposed
//!    on the model;
//! 2. [`call`]: the HTTP call ([`llm::openai`]) with retries, backoff and jitter, the message
//!    kept alive with in-progress acks meanwhile;
//! 3. judging: confidence from logprobs ([`switchyard_core::confidence`]); a low-confidence
//!    answer escalates to the tier's `escalate_to` with the next attempt number;
//! 4. [`committer`]: results, one ledger row per model call and the items' new states are
//!    written in one transaction per batch; escalations are published and their publish-acks
//!    awaited; only then are the messages acked.
//!
//! Every message ends in one [`settle::Disposition`] (done, retry after a delay, give up),
//! applied in one place ([`settle::settle`]); the lane's [`settle::Keeper`] keeps every
//! message it holds alive from pull to settlement.
//!
//! [`reaper`] records items whose worker died on their last delivery (JetStream's
//! max-deliveries advisory), so nothing is lost silently. [`lease`] keeps the process alive
//! to the fleet and books in doubt the calls of workers that died mid-call.
//!
//! [`batching`] sends attempts of jobs with a deadline through providers' batch APIs at
//! the batch price: grouped per model, recorded before anything leaves, polled and booked by
//! whichever worker looks next.
//!
//! [`budget`] holds each call's worst-case cost against its team's budget before the call
//! and settles it in the commit that books the call; [`price_book`] keeps the price versions
//! (the ledger books the version in force at each call's time). [`metrics`] counts calls,
//! latency, tokens, cost, escalations and quota waits for `/metrics`.

pub mod batching;
pub mod breaker;
pub mod budget;
pub mod call;
pub mod claims;
pub mod committer;
pub mod context;
pub mod lane;
pub mod lease;
pub mod limiter;
pub mod llm;
pub mod metrics;
pub mod price_book;
pub mod quota;
pub mod reaper;
mod retry;
pub mod settle;

use anyhow::Context as _;
use switchyard_runtime::Settings;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use context::{Worker, WorkerCounters};

/// Runs a worker serving `tiers` until `shutdown` is cancelled, then drains.
///
/// # Errors
/// Start-up failures (unreachable services, unknown tier, a model without a price); a lane
/// that fails later cancels the others and its error is returned.
pub async fn run(
    settings: Settings,
    tiers: Vec<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let worker = Worker::connect(settings, &tiers).await?;
    run_with(worker, tiers, shutdown).await
}

/// Runs lanes for `tiers` on an already connected worker.
///
/// # Errors
/// The first lane error.
pub async fn run_with(
    worker: Worker,
    tiers: Vec<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Some(addr) = worker.settings.metrics.listen {
        switchyard_runtime::metrics::serve(addr, worker.metrics.clone(), shutdown.clone()).await?;
    }
    let t = worker.settings.topology();
    for tier in &tiers {
        switchyard_runtime::metrics::watch_consumer(
            worker.js.clone(),
            t.work_stream(),
            t.worker_consumer(tier),
            worker.metrics.clone(),
            switchyard_runtime::metrics::LAG_PERIOD,
            shutdown.clone(),
        );
    }
    let tracker = TaskTracker::new();
    let mut handles = Vec::new();
    for tier in tiers {
        let w = worker.clone();
        let token = shutdown.clone();
        handles.push(tracker.spawn(async move {
            let r = lane::run_lane(w, tier.clone(), token.clone()).await;
            if r.is_err() {
                token.cancel();
            }
            r.with_context(|| format!("lane `{tier}` failed"))
        }));
    }
    {
        let w = worker.clone();
        let token = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = reaper::run_reaper(w, token).await {
                tracing::warn!(error = %format!("{e:#}"), "dead-letter reaper stopped");
            }
        });
    }
    // Quota shares and fleet-wide pauses: also kept up while the lanes drain (a draining
    // process still calls), then given back once the lanes have stopped.
    let quota_token = CancellationToken::new();
    if worker.settings.worker.fleet_quota {
        let (w, token) = (worker.clone(), quota_token.clone());
        tracker.spawn(async move {
            if let Err(e) = quota::run_coordinator(w, token).await {
                tracing::warn!(error = %format!("{e:#}"), "quota coordinator stopped");
            }
        });
    }
    let finance_token = CancellationToken::new();
    tracker.spawn(budget::run_refresh_loop(
        worker.clone(),
        finance_token.clone(),
    ));
    tracker.spawn(budget::run_finance_loop(
        worker.clone(),
        finance_token.clone(),
    ));
    // The lease keeps this process's intents and holds alive; it ends last, after the lanes
    // have drained and committed (see `lease`).
    tracker.spawn(batching::run_poller(worker.clone(), finance_token.clone()));
    let lease_token = CancellationToken::new();
    tracker.spawn(lease::run_lease(worker.clone(), lease_token.clone()));
    tracker.spawn(lease::run_sweeper(worker.clone(), finance_token.clone()));
    tracker.close();
    let mut first_error = None;
    for h in handles {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(join) => {
                first_error.get_or_insert(anyhow::anyhow!("lane panicked: {join}"));
            }
        }
    }
    shutdown.cancel();
    finance_token.cancel();
    quota_token.cancel();
    lease_token.cancel();
    tracker.wait().await;
    let _ = worker.client.flush().await;
    first_error.map_or(Ok(()), Err)
}

//! A nightly job through provider batches, across the run's kills and restarts.
//!
//! A third job has a day's deadline, so its weak calls go through the simulator's Batch API
//! (the weak models have `batch = true`, priced at half through it). Every provider batch
//! expires half-done: the simulator answers [`EXPIRE_AFTER`] of its lines and returns the
//! rest expired, unbilled, so they go back and into the next batch, round after round, while
//! workers are killed (between recording a batch and creating it, while it runs, while it
//! is booked), NATS and PostgreSQL restart. When the run is over every item must be
//! answered, every batch line billed by the simulator must be one ledger row of the job
//! (call id for custom id, none twice), no line left open, and the ledger still equal to the
//! bill (checked with the run's other jobs, the batch discount included).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde::Serialize;
use switchyard_proto::{Cascade, Item, Policy, Routing, Task};
use switchyard_runtime::Settings;
use switchyard_sim::CallRecord;

use switchyard_client::Client;

/// Items of the job.
pub const ITEMS: usize = 300;
/// Lines a provider batch answers before it expires.
pub const EXPIRE_AFTER: usize = 20;
/// The batch price as a share off the real-time price.
pub const BATCH_DISCOUNT: Decimal = Decimal::from_parts(5, 0, 0, false, 1);

/// What the job left in the books.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ProviderBatchRun {
    pub job_id: String,
    pub job_status: String,
    pub items: i64,
    pub done: i64,
    /// Provider batches recorded for it, and how many of their lines were booked or sent
    /// back (expired) to go into another batch.
    pub batches: i64,
    pub lines_booked: i64,
    pub lines_returned: i64,
    /// Lines still open when the run ended (must be 0).
    pub lines_open: i64,
    /// Batch lines the simulator billed, and the job's ledger rows booked at the batch price
    /// (must be the same calls).
    pub lines_billed: usize,
    pub batch_ledger_rows: i64,
    pub problems: Vec<String>,
}

impl ProviderBatchRun {
    /// A job that did not run, and why (the run fails on it).
    pub fn not_started(reason: String) -> Self {
        Self {
            problems: vec![reason],
            ..Self::default()
        }
    }

    /// Whether the job's books hold.
    pub fn holds(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The fleet's settings for it: the weak models have a batch API, batches are grouped for
/// a second and looked at every second.
pub fn tune(s: &mut Settings) {
    for m in s.models.values_mut().filter(|m| m.tier == "weak") {
        m.batch = true;
    }
    let b = &mut s.worker.batching;
    b.max_wait = Duration::from_secs(1);
    b.poll_every = Duration::from_secs(1);
    b.min_time_left = Duration::from_secs(60);
}

/// Prices the weak models at [`BATCH_DISCOUNT`] through a batch API, before the fleet
/// starts (workers read their prices when they start).
///
/// # Errors
/// Database errors, or a weak model without a price.
pub async fn set_prices(client: &Client, settings: &Settings) -> anyhow::Result<()> {
    for (name, m) in settings.models.iter().filter(|(_, m)| m.tier == "weak") {
        let (Some(input), Some(output)) = (m.input_usd_per_mtok, m.output_usd_per_mtok) else {
            anyhow::bail!("weak model `{name}` has no price");
        };
        let tariff = switchyard_core::tariff::Tariff::new(input, None, output, BATCH_DISCOUNT)?;
        switchyard_store::prices::set(
            &client.pool,
            &switchyard_store::prices::NewPrice {
                model: name.clone(),
                provider: m.provider.clone(),
                tariff,
                effective_from: chrono::Utc::now(),
            },
        )
        .await?;
    }
    Ok(())
}

/// Submits the job: every item weak, escalating below 0.8, a day's deadline.
///
/// # Errors
/// What the submit answered.
pub async fn start(client: &Client, task: Task, items: Vec<Item>) -> anyhow::Result<String> {
    let mut spec = switchyard_client::new_job(task, items).with_deadline(86_400);
    spec.team = Some("chaos-nightly".to_owned());
    spec.policy = Policy {
        routing: Routing::StrongShare { value: 0.0 },
        cascade: Cascade {
            confidence_threshold: Some(0.8),
            max_escalations: Some(1),
        },
        ..Policy::default()
    };
    client.submit(spec).await
}

/// Waits, at most `timeout`, until the job is final and no line of it is open.
pub async fn wait_final(client: &Client, job_id: &str, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        let state: Option<(String, i64)> = sqlx::query_as(
            "SELECT j.status, (SELECT count(*) FROM provider_batch_lines l \
                               WHERE l.job_id = j.job_id AND l.status = 'open') \
             FROM jobs j WHERE j.job_id = $1",
        )
        .bind(job_id)
        .fetch_optional(&client.pool)
        .await
        .ok()
        .flatten();
        if let Some((status, 0)) = state
            && switchyard_store::jobs::status::is_final(&status)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Reads the job's books and joins its batch rows with the simulator's batch lines.
///
/// # Errors
/// Database errors.
pub async fn books(
    client: &Client,
    job_id: &str,
    calls: &[CallRecord],
) -> anyhow::Result<ProviderBatchRun> {
    let pool = &client.pool;
    let job_status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(pool)
        .await?;
    let (items, done): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'done') FROM items WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await?;
    let (batches, lines_booked, lines_returned, lines_open): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT batch_id),
                    count(*) FILTER (WHERE status = 'booked'),
                    count(*) FILTER (WHERE status = 'returned'),
                    count(*) FILTER (WHERE status = 'open')
             FROM provider_batch_lines WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await?;
    let booked: Vec<String> =
        sqlx::query_scalar("SELECT call_id FROM ledger WHERE job_id = $1 AND batch")
            .bind(job_id)
            .fetch_all(pool)
            .await?;
    let billed: Vec<&str> = calls
        .iter()
        .filter(|c| c.is_batch_line() && c.billed())
        .filter_map(|c| c.client_request_id.as_deref())
        .collect();
    let mut run = ProviderBatchRun {
        job_id: job_id.to_owned(),
        job_status,
        items,
        done,
        batches,
        lines_booked,
        lines_returned,
        lines_open,
        lines_billed: billed.len(),
        batch_ledger_rows: i64::try_from(booked.len()).unwrap_or(i64::MAX),
        problems: Vec::new(),
    };
    let problems = &mut run.problems;
    if run.job_status != "completed" || done != items {
        problems.push(format!(
            "the job is {} with {done} of {items} items done",
            run.job_status
        ));
    }
    if lines_open > 0 {
        problems.push(format!("{lines_open} batch lines left open"));
    }
    if lines_returned == 0 {
        problems.push("no batch expired half-done (nothing was sent back)".to_owned());
    }
    let billed_set: BTreeSet<&str> = billed.iter().copied().collect();
    if billed_set.len() != billed.len() {
        problems.push(format!(
            "{} batch lines answered twice",
            billed.len() - billed_set.len()
        ));
    }
    let booked_set: BTreeSet<&str> = booked.iter().map(String::as_str).collect();
    if booked_set.len() != booked.len() {
        problems.push("a batch line booked twice".to_owned());
    }
    let unbooked = billed_set.difference(&booked_set).count();
    let unbilled = booked_set.difference(&billed_set).count();
    if unbooked > 0 || unbilled > 0 {
        problems.push(format!(
            "{unbooked} billed batch lines not in the ledger, {unbilled} ledger batch rows \
             the simulator never billed"
        ));
    }
    Ok(run)
}

//! Provider quota across processes: four worker processes share one model quota of 600
//! requests/min and 200k tokens/min, enforced by the simulator over a sliding minute (429 +
//! Retry-After beyond it). Over a two-minute window the figure is the throughput achieved as a
//! share of the quota, and the share of calls that saw a 429.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_dispatcher::Dispatcher;
use switchyard_runtime::Settings;
use switchyard_runtime::settings::StorageKind;
use switchyard_sim::SimConfig;
use tokio_util::sync::CancellationToken;

use super::dispatch::bench_job;
use super::env::BenchEnv;
use super::procs::{spawn_role, write_config};
use super::{BenchOptions, Figure};
use crate::client::{Client, INLINE_LIMIT};

const RPM: u32 = 600;
const TPM: u32 = 200_000;
const WORKERS: usize = 4;
const MODEL: &str = "mistralai/Mixtral-8x7B-Instruct-v0.1";

/// The two quota figures: throughput as a share of the quota, and the 429 share.
pub struct QuotaFigures {
    pub throughput: Figure,
    pub rate_limited: Figure,
}

/// Runs the quota bench once (it takes `window` plus start-up).
///
/// # Errors
/// When the run fails.
pub async fn run(settings: &Settings, opts: &BenchOptions) -> anyhow::Result<QuotaFigures> {
    let env = BenchEnv::new(settings, StorageKind::File)?;
    let r = measure(&env.settings, opts.quota_window).await;
    env.cleanup().await;
    let (per_min, limited_share, served, limited) = r?;
    eprintln!(
        "quota: {per_min:.1} calls/min of {RPM} ({served} served, {limited} answered 429) over {:?}",
        opts.quota_window
    );
    Ok(QuotaFigures {
        throughput: Figure::from_runs(
            vec![(per_min, Some(f64::from(RPM)))],
            "calls/min",
            "≥ 0.97× the quota, 4 processes sharing it",
        ),
        rate_limited: Figure::from_runs(
            vec![(100.0 * limited_share, None)],
            "% calls",
            "≤ 1% of calls answered 429",
        ),
    })
}

async fn measure(
    settings: &Settings,
    window: Duration,
) -> anyhow::Result<(f64, f64, usize, usize)> {
    let data = Arc::new(crate::demo::bundled_dataset()?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_config = SimConfig {
        rpm_limit: Some(RPM),
        tpm_limit: Some(TPM),
        ..SimConfig::default()
    };
    let sim = switchyard_sim::start(listener, data, sim_config).await?;
    let mut settings = settings.clone();
    for (name, m) in settings.models.iter_mut() {
        m.base_url = sim.base_url();
        if name == MODEL {
            m.rpm = NonZeroU32::new(RPM);
            m.tpm = NonZeroU32::new(TPM);
        }
    }
    settings.worker.fleet_quota = true;
    let dir = tempfile::tempdir()?;
    let config = write_config(&settings, dir.path())?;
    let dispatcher = Dispatcher::connect(settings.clone()).await?;
    let token = CancellationToken::new();
    let dispatch_task = tokio::spawn(switchyard_dispatcher::consumer::run(
        dispatcher.clone(),
        token.clone(),
    ));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| spawn_role(&settings, &config, &["worker", "--tier", "weak"]))
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    loop {
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM worker_presence WHERE seen_at > now() - interval '6 seconds'",
        )
        .fetch_one(&dispatcher.pool)
        .await?;
        if live as usize >= WORKERS {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "workers did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = Client {
        settings: Arc::clone(&dispatcher.settings),
        nats: dispatcher.client.clone(),
        js: dispatcher.js.clone(),
        pool: dispatcher.pool.clone(),
        inline_limit: INLINE_LIMIT,
    };
    // More items than the window can serve, so the workers never run dry.
    let n = (f64::from(RPM) / 60.0 * (window.as_secs_f64() + 30.0)) as usize;
    let spec = bench_job(n, 0.0)?;
    let job_id = client.submit(spec).await?;
    // The window starts at the first call served.
    let t0 = loop {
        if let Some(first) = sim
            .calls()
            .iter()
            .filter(|c| c.status == 200)
            .map(|c| c.unix_ms)
            .min()
        {
            break first;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "no call was served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let end = t0 + window.as_millis() as u64;
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        if now > end + 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let calls = sim.calls();
    if let Some(dir) = std::env::var_os("SWITCHYARD_BENCH_LOGS") {
        let lines: Vec<String> = calls
            .iter()
            .filter_map(|c| serde_json::to_string(c).ok())
            .collect();
        let _ = std::fs::write(
            std::path::Path::new(&dir).join("quota-sim-calls.jsonl"),
            lines.join("\n"),
        );
    }
    let in_window: Vec<_> = calls
        .iter()
        .filter(|c| c.unix_ms >= t0 && c.unix_ms < end)
        .collect();
    let served = in_window.iter().filter(|c| c.status == 200).count();
    let limited = in_window.iter().filter(|c| c.status == 429).count();
    let _ = client.cancel(&job_id).await;
    drop(workers);
    token.cancel();
    let _ = dispatch_task.await;
    sim.shutdown().await;
    let per_min = served as f64 / (window.as_secs_f64() / 60.0);
    let share = limited as f64 / (served + limited).max(1) as f64;
    Ok((per_min, share, served, limited))
}

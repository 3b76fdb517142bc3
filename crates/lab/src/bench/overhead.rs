//! CPU cost of the fleet per item, the model call excluded: a dispatcher and a worker run as
//! their own processes on a job against the simulator (which runs in the bench process), and
//! their CPU time is read from `/proc` and divided by the items.

use std::time::Duration;

use switchyard_runtime::Settings;
use switchyard_runtime::settings::StorageKind;
use switchyard_sim::SimConfig;

use super::dispatch::bench_job;
use super::env::BenchEnv;
use super::procs::{cpu_micros, spawn_role, write_config};
use super::{BenchOptions, Figure};
use switchyard_client::Client;

/// Runs the overhead bench.
///
/// # Errors
/// When a run fails.
pub async fn run(settings: &Settings, opts: &BenchOptions) -> anyhow::Result<Figure> {
    let data = std::sync::Arc::new(switchyard_demo::bundled_dataset()?);
    let mut runs = Vec::new();
    for rep in 0..opts.repetitions {
        let env = BenchEnv::new(settings, StorageKind::File)?;
        let r = measure(&env.settings, &data, opts.end_to_end_items).await;
        env.cleanup().await;
        let (dispatcher, worker) = r?;
        eprintln!(
            "overhead run {}: dispatcher {dispatcher:.1} µs/item, worker {worker:.1} µs/item",
            rep + 1
        );
        runs.push((dispatcher + worker, None));
    }
    Ok(Figure::from_runs(
        runs,
        "µs/item",
        "CPU per item in dispatcher + worker, model call excluded",
    ))
}

async fn measure(
    settings: &Settings,
    data: &std::sync::Arc<switchyard_sim::Dataset>,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim =
        switchyard_sim::start(listener, std::sync::Arc::clone(data), SimConfig::default()).await?;
    let mut settings = settings.clone();
    settings.point_models_at(&sim.base_url())?;
    let dir = tempfile::tempdir()?;
    let config = write_config(&settings, dir.path())?;
    let client = Client::connect(settings.clone()).await?;
    let dispatcher = spawn_role(&settings, &config, &["dispatcher"])?;
    let tiers = settings.tiers.keys().cloned().collect::<Vec<_>>().join(",");
    let worker = spawn_role(&settings, &config, &["worker", "--tier", &tiers])?;
    let (Some(dpid), Some(wpid)) = (dispatcher.pid(), worker.pid()) else {
        anyhow::bail!("the dispatcher or worker process did not start");
    };
    // Let both start (connect, migrate, create consumers) before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d0 = cpu_micros(dpid).unwrap_or(0);
    let w0 = cpu_micros(wpid).unwrap_or(0);
    let spec = bench_job(n, 0.2)?;
    super::dispatch::run_to_completion(&client, spec, n).await?;
    let d1 = cpu_micros(dpid).unwrap_or(0);
    let w1 = cpu_micros(wpid).unwrap_or(0);
    drop(dispatcher);
    drop(worker);
    sim.shutdown().await;
    Ok(((d1 - d0) as f64 / n as f64, (w1 - w0) as f64 / n as f64))
}

//! `switchyard chaos`, `bench` and `bench-gateway`: flags and printing; the lab does the rest.

use std::time::Duration;

use switchyard_client::exit;
use switchyard_lab::{bench, chaos};
use switchyard_runtime::Settings;

use crate::args::humantime_duration;

/// `switchyard chaos`.
#[derive(clap::Args)]
pub struct ChaosArgs {
    /// Items of the job.
    #[arg(long, default_value_t = 5000)]
    pub items: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Worker processes killed (SIGKILL) during the job.
    #[arg(long, default_value_t = 6)]
    pub kills: usize,
    /// Seed of the schedule and the simulator's faults (default: the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fail when the job has not finished by then.
    #[arg(long, value_parser = humantime_duration, default_value = "240s")]
    pub timeout: Duration,
    /// Keep the run's folder (logs, data) even when it passes.
    #[arg(long)]
    pub keep: bool,
}

/// `switchyard bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Repetitions per figure (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    /// Only these benches (dispatch, end_to_end, overhead, quota, memory); repeat or
    /// comma-separate. `quota` runs its two scenarios, `quota_steady` or `quota_scaling`
    /// one of them.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Items of the dispatch bench's job.
    #[arg(long, default_value_t = 100_000)]
    pub dispatch_items: usize,
    /// Items of the end-to-end bench's job.
    #[arg(long, default_value_t = 20_000)]
    pub end_to_end_items: usize,
    /// Items of the memory bench's job.
    #[arg(long, default_value_t = 1_000_000)]
    pub memory_items: usize,
    /// Measurement window of the quota bench's steady scenario (the scaling scenario
    /// runs 1.5 times as long: three phases of half of it).
    #[arg(long, value_parser = humantime_duration, default_value = "120s")]
    pub quota_window: Duration,
}

/// Runs chaos; exit 1 when it found something lost or paid twice.
pub async fn chaos(a: ChaosArgs) -> anyhow::Result<u8> {
    let opts = chaos::ChaosOptions {
        items: a.items,
        worker_kills: a.kills,
        seed: a.seed,
        timeout: a.timeout,
        keep: a.keep,
    };
    let report = chaos::run(&opts).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", chaos::render(&report));
    }
    Ok(if report.passed { exit::OK } else { exit::ERROR })
}

/// Runs the benches against the raw engines.
pub async fn bench(settings: &Settings, a: BenchArgs) -> anyhow::Result<u8> {
    let opts = bench::BenchOptions {
        repetitions: a.repetitions,
        only: a.only,
        dispatch_items: a.dispatch_items,
        end_to_end_items: a.end_to_end_items,
        memory_items: a.memory_items,
        quota_window: a.quota_window,
    };
    let report = bench::run(settings, &opts).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", bench::render(&report));
    }
    Ok(exit::OK)
}

/// Runs the gateway comparison.
pub async fn bench_gateway(
    settings: &Settings,
    a: bench::gateway::GatewayArgs,
) -> anyhow::Result<u8> {
    let report = bench::gateway::run(settings, &a).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", bench::gateway::render(&report));
    }
    Ok(exit::OK)
}

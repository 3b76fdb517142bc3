//! Provider quota across processes: worker processes share one model quota of 600
//! requests/min and 200k tokens/min, enforced by the simulator over a sliding minute (429 +
//! Retry-After beyond it). Two scenarios, each run `--repetitions` times:
//!
//! - **steady**: four processes for the whole window;
//! - **scaling**: the fleet changes size during the run: two processes, then six, then three
//!   (two of the leavers stop with SIGTERM, one is killed with SIGKILL), each for half the
//!   window.
//!
//! Each run's figures are the calls served per minute as a share of the quota, and the share
//! of calls answered 429, over the window that starts at the first call served. Every run is
//! printed, then the medians.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_dispatcher::Dispatcher;
use switchyard_runtime::Settings;
use switchyard_runtime::settings::StorageKind;
use switchyard_sim::{SimConfig, SimHandle};
use tokio_util::sync::CancellationToken;

use super::dispatch::bench_job;
use super::env::BenchEnv;
use super::procs::{Role, spawn_role, write_config};
use super::{BenchOptions, Figure};
use switchyard_client::{Client, INLINE_LIMIT};

const RPM: u32 = 600;
const TPM: u32 = 200_000;
const MODEL: &str = "mistralai/Mixtral-8x7B-Instruct-v0.1";

/// How the fleet's size moves during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Four processes throughout.
    Steady,
    /// Two, then six, then three processes (one of the leavers killed with SIGKILL).
    Scaling,
}

impl Scenario {
    /// `steady` or `scaling` (`--only quota_<name>` runs this scenario alone).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Scaling => "scaling",
        }
    }

    /// The measured window: the whole run for `steady`, three phases of half of it for
    /// `scaling`.
    fn window(self, window: Duration) -> Duration {
        match self {
            Scenario::Steady => window,
            Scenario::Scaling => window / 2 * 3,
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub struct QuotaRun {
    pub served: usize,
    pub limited: usize,
    pub window: Duration,
}

impl QuotaRun {
    /// Calls served per minute.
    pub fn per_minute(&self) -> f64 {
        self.served as f64 / (self.window.as_secs_f64() / 60.0)
    }

    /// Share of calls answered 429.
    pub fn limited_share(&self) -> f64 {
        self.limited as f64 / (self.served + self.limited).max(1) as f64
    }
}

/// The quota figures: per scenario, throughput against the quota and the 429 share.
pub struct QuotaFigures {
    pub figures: Vec<(String, Figure)>,
}

/// Runs `scenarios`, `opts.repetitions` times each (a run takes its window plus start-up).
///
/// # Errors
/// When a run fails.
pub async fn run(
    settings: &Settings,
    opts: &BenchOptions,
    scenarios: &[Scenario],
) -> anyhow::Result<QuotaFigures> {
    let mut figures = Vec::new();
    for &scenario in scenarios {
        let mut runs = Vec::new();
        for rep in 0..opts.repetitions.max(1) {
            let env = BenchEnv::new(settings, StorageKind::File)?;
            let r = measure(&env.settings, scenario, opts.quota_window).await;
            env.cleanup().await;
            let r = r?;
            eprintln!(
                "quota {} run {}: {:.1} calls/min of {RPM} ({:.1}% of the quota), {} of {} calls \
                 answered 429 ({:.2}%) over {:?}; load average {}",
                scenario.name(),
                rep + 1,
                r.per_minute(),
                100.0 * r.per_minute() / f64::from(RPM),
                r.limited,
                r.served + r.limited,
                100.0 * r.limited_share(),
                r.window,
                load_average().unwrap_or_else(|| "unknown".to_owned()),
            );
            runs.push(r);
        }
        let (use_name, limited_name, use_goal) = match scenario {
            Scenario::Steady => (
                "quota",
                "quota_429",
                "≥ 0.97× the quota, 4 processes sharing it",
            ),
            Scenario::Scaling => (
                "quota_scaling",
                "quota_scaling_429",
                "≥ 0.97× the quota, 2 → 6 → 3 processes",
            ),
        };
        figures.push((
            use_name.to_owned(),
            Figure::from_runs(
                runs.iter()
                    .map(|r| (r.per_minute(), Some(f64::from(RPM))))
                    .collect(),
                "calls/min",
                use_goal,
            ),
        ));
        figures.push((
            limited_name.to_owned(),
            Figure::from_runs(
                runs.iter()
                    .map(|r| (100.0 * r.limited_share(), None))
                    .collect(),
                "% calls",
                "≤ 1% of calls answered 429, every run",
            ),
        ));
    }
    Ok(QuotaFigures { figures })
}

/// The one-minute load average, for the record next to the figures (`/proc/loadavg`).
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next().map(str::to_owned)
}

/// The worker processes of a run, each calling the simulator under its own client tag (the
/// simulator's call log then says which process made each call).
struct Fleet<'a> {
    settings: &'a Settings,
    sim: &'a SimHandle,
    dir: &'a Path,
    started: usize,
    live: Vec<Role>,
}

impl Fleet<'_> {
    fn start(&mut self, n: usize) -> anyhow::Result<()> {
        for _ in 0..n {
            self.started += 1;
            let tag = format!("w{}", self.started);
            let mut settings = self.settings.clone();
            settings.point_models_at(&self.sim.base_url_for(&tag))?;
            let dir = self.dir.join(&tag);
            std::fs::create_dir_all(&dir)?;
            let config = write_config(&settings, &dir)?;
            self.live.push(spawn_role(
                &settings,
                &config,
                &["worker", "--tier", "weak"],
            )?);
        }
        Ok(())
    }

    /// Processes holding a share of the quota.
    async fn registered(&self, pool: &sqlx::PgPool) -> anyhow::Result<usize> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT worker_id) FROM quota_shares WHERE expires_at > now()",
        )
        .fetch_one(pool)
        .await?;
        Ok(n as usize)
    }
}

async fn measure(
    settings: &Settings,
    scenario: Scenario,
    window: Duration,
) -> anyhow::Result<QuotaRun> {
    let data = Arc::new(switchyard_demo::bundled_dataset()?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_config = SimConfig {
        rpm_limit: Some(RPM),
        tpm_limit: Some(TPM),
        ..SimConfig::default()
    };
    let sim = switchyard_sim::start(listener, data, sim_config).await?;
    let mut settings = settings.clone();
    settings.point_models_at(&sim.base_url())?;
    for (name, m) in settings.models.iter_mut() {
        if name == MODEL {
            m.rpm = NonZeroU32::new(RPM);
            m.tpm = NonZeroU32::new(TPM);
        }
    }
    settings.worker.fleet_quota = true;
    let dir = tempfile::tempdir()?;
    let dispatcher = Dispatcher::connect(settings.clone()).await?;
    let token = CancellationToken::new();
    let dispatch_task = tokio::spawn(switchyard_dispatcher::consumer::run(
        dispatcher.clone(),
        token.clone(),
    ));
    let mut fleet = Fleet {
        settings: &settings,
        sim: &sim,
        dir: dir.path(),
        started: 0,
        live: Vec::new(),
    };
    let first = match scenario {
        Scenario::Steady => 4,
        Scenario::Scaling => 2,
    };
    fleet.start(first)?;
    let started = Instant::now();
    while fleet.registered(&dispatcher.pool).await? < first {
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
    let measured = scenario.window(window);
    // More items than the window can serve, so the workers never run dry.
    let n = (f64::from(RPM) / 60.0 * (measured.as_secs_f64() + 60.0)) as usize;
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
    let end = t0 + measured.as_millis() as u64;
    if scenario == Scenario::Scaling {
        let phase = window.as_millis() as u64 / 2;
        sleep_until_unix_ms(t0 + phase).await?;
        fleet.start(4)?;
        sleep_until_unix_ms(t0 + 2 * phase).await?;
        // Three leave: one of the first two dies, two of the newcomers stop cleanly.
        let mut killed = fleet.live.remove(0);
        killed.kill9();
        let mut stopping: Vec<Role> = fleet.live.drain(3..).collect();
        for p in &mut stopping {
            p.sigterm();
        }
        sleep_until_unix_ms(end + 500).await?;
        drop(stopping);
    } else {
        sleep_until_unix_ms(end + 500).await?;
    }
    let calls = sim.calls();
    if let Some(dir) = std::env::var_os("SWITCHYARD_BENCH_LOGS") {
        let lines: Vec<String> = calls
            .iter()
            .filter_map(|c| serde_json::to_string(c).ok())
            .collect();
        let _ = std::fs::write(
            Path::new(&dir).join(format!("quota-{}-sim-calls-{t0}.jsonl", scenario.name())),
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
    drop(fleet);
    token.cancel();
    let _ = dispatch_task.await;
    sim.shutdown().await;
    Ok(QuotaRun {
        served,
        limited,
        window: measured,
    })
}

async fn sleep_until_unix_ms(at: u64) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    if at > now {
        tokio::time::sleep(Duration::from_millis(at - now)).await;
    }
    Ok(())
}

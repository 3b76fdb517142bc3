//! `switchyard demo`: the whole fleet in one process on bundled real routing data.
//!
//! Two jobs run side by side: a classification job of MMLU multiple-choice questions
//! (Mixtral-8x7B weak, GPT-4-1106 strong) and a summarization job of news articles with
//! human-rated summaries (RoSE and Goyal sets: T0pp weak, text-davinci-002 strong). The
//! simulator replays each model's recorded answer and score, with confidence calibrated to an
//! AUROC of 0.75. The report compares what the fleet spent and the quality it got with the
//! same items all on the strong model and all on the weak one. Prices are those of the
//! routing data's README (T0pp's is an assumed hosting price).
//!
//! By default each job asks for `quality=0.95` and must keep it on its own: the report shows
//! per job the target, the quality achieved (replayed scores, which the fleet never sees),
//! the audit's estimate with its 95% interval (what the fleet measured), the savings, and
//! the offline twin's replay of the same job (`switchyard policy eval`); the pooled line
//! averages the per-job ratios. Each job's cost-quality frontier is drawn as SVG with the
//! point the fleet reached marked. `--strong-share`/`--confidence-threshold` run the
//! hand-set policy instead.

pub mod fleet;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::TryStreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rust_decimal::Decimal;
use serde::Serialize;
use switchyard_core::audit::AuditEstimate;
use switchyard_proto::{Cascade, Item, JobSpec, Policy, Routing, Task};
use switchyard_runtime::Settings;
use switchyard_runtime::settings::StorageKind;
use switchyard_sim::{Dataset, SimConfig};
use switchyard_twin::job::{JobInput, JobRow, Models, PolicyChoice, SimSetup, Twin};

use switchyard_client::{Client, WaitOutcome, new_job};

use crate::fleet::Fleet;

/// The bundled demo data (see `data/demo/README.md` for sources and licences).
pub const CLASSIFY_DATA: &str = include_str!("../../../data/demo/classify_mmlu.jsonl");
/// The bundled summarization data.
pub const SUMMARIZE_DATA: &str = include_str!("../../../data/demo/summarize_news.jsonl");

/// Options of `switchyard demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Classification items (at most the bundled 2,457).
    pub items: usize,
    /// Share of each job routed strong by the router.
    pub strong_share: f64,
    /// Weak answers below this confidence escalate.
    pub confidence_threshold: f64,
    /// The simulator's confidence AUROC.
    pub auroc: f64,
    /// Show progress bars.
    pub progress: bool,
    /// The share of all-strong quality each job asks for (`quality=Q`); `None` runs the
    /// hand-set policy (`strong_share`, `confidence_threshold`).
    pub quality: Option<f64>,
    /// Where each job's frontier picture is written; `None`: no pictures.
    pub plot_dir: Option<PathBuf>,
    /// Run every job a second time with this deadline: the simulator's models get a Batch
    /// API at half price, and the report shows both runs side by side.
    pub deadline: Option<std::time::Duration>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            items: 2457,
            strong_share: 0.1,
            confidence_threshold: 0.8,
            auroc: 0.75,
            progress: true,
            quality: Some(0.95),
            plot_dir: Some(PathBuf::from(".")),
            deadline: None,
        }
    }
}

/// One job's figures (and, summed, the whole demo's).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub items: u64,
    pub completed: u64,
    pub failed: u64,
    /// Final answers per tier.
    pub by_tier: BTreeMap<String, u64>,
    /// Items whose first answer escalated.
    pub escalated: u64,
    /// Model calls booked in the ledger.
    pub calls: u64,
    #[serde(serialize_with = "ser_dec")]
    pub cost_usd: Decimal,
    #[serde(serialize_with = "ser_dec")]
    pub cost_all_strong_usd: Decimal,
    #[serde(serialize_with = "ser_dec")]
    pub cost_all_weak_usd: Decimal,
    /// What batch prices saved (a job with a deadline): not routing's, so left out of
    /// `savings_vs_all_strong`.
    #[serde(serialize_with = "ser_dec")]
    pub batch_savings_usd: Decimal,
    /// What routing saved: 1 − (cost + batch savings) / all-strong cost.
    pub savings_vs_all_strong: f64,
    /// Mean replayed score of the final answers.
    pub quality: f64,
    pub quality_all_strong: f64,
    pub quality_all_weak: f64,
    /// quality / quality_all_strong.
    pub quality_vs_all_strong: f64,
    #[serde(skip)]
    quality_sum: f64,
    #[serde(skip)]
    strong_sum: f64,
    #[serde(skip)]
    weak_sum: f64,
}

fn ser_dec<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.normalize().to_string())
}

/// A job of the demo and its figures.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub job_id: String,
    pub task: String,
    pub weak_model: String,
    pub strong_model: String,
    pub status: String,
    #[serde(flatten)]
    pub figures: Figures,
    /// The quality the job asked for (share of all-strong), and whether it kept it.
    pub target: Option<f64>,
    pub met: Option<bool>,
    /// The audit's estimate of the job's quality (agreement with the strong model, a
    /// conservative proxy) with its 95% interval, and the plan's prediction.
    pub audit: Option<AuditEstimate>,
    pub planned_quality: Option<f64>,
    /// The offline twin's replay of the same job: quality (share of all-strong) and
    /// savings.
    pub twin_quality_vs_all_strong: Option<f64>,
    pub twin_savings_vs_all_strong: Option<f64>,
    /// The frontier picture written for this job.
    pub frontier_svg: Option<String>,
}

/// The demo's report (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Sums over the jobs (ratios of sums; see `jobs_mean` for the per-job average).
    #[serde(flatten)]
    pub total: Figures,
    /// The policy every job ran with.
    pub policy: String,
    /// Per-job ratios averaged: one big easy job must not hide a hard one.
    pub jobs_mean_quality_vs_all_strong: f64,
    pub jobs_mean_savings_vs_all_strong: f64,
    /// Every job kept its target (quality policies only).
    pub every_job_met: Option<bool>,
    /// AUROC of the simulator's confidence against replayed correctness, from its call log.
    pub auroc: Option<f64>,
    pub items_per_s: f64,
    pub elapsed_s: f64,
    pub strong_share: f64,
    pub confidence_threshold: f64,
    pub prices: &'static str,
    pub jobs: Vec<JobReport>,
    /// The same jobs again with a deadline (`--deadline`), through provider batches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with_deadline: Option<Box<DemoReport>>,
}

struct DemoJob {
    spec: JobSpec,
    weak: &'static str,
    strong: &'static str,
}

/// The demo's jobs for `team`. `sample_key`: what each job's pilot and audit draws hash
/// (with the job's kind), the same for the real-time run and the run with a deadline, so the
/// two are compared item for item.
fn demo_jobs(data: &Dataset, opts: &DemoOptions, team: &str, sample_key: &str) -> Vec<DemoJob> {
    let policy = |weak: &str, strong: &str| Policy {
        routing: match opts.quality {
            Some(value) => Routing::Quality { value },
            None => Routing::StrongShare {
                value: opts.strong_share,
            },
        },
        cascade: Cascade {
            confidence_threshold: opts.quality.is_none().then_some(opts.confidence_threshold),
            max_escalations: Some(1),
        },
        models: BTreeMap::from([
            ("weak".to_owned(), weak.to_owned()),
            ("strong".to_owned(), strong.to_owned()),
        ]),
        shadow: None,
        audit: None,
        sample_key: None,
    };
    let (cw, cs) = ("mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview");
    let (sw, ss) = ("T0pp", "text-davinci-002");
    let mut mc: Vec<Item> = Vec::new();
    let mut news: Vec<Item> = Vec::new();
    for r in data.records() {
        if r.choices.is_some() && r.models.contains_key(cw) && r.models.contains_key(cs) {
            mc.push(Item::new(r.id.clone(), r.prompt.clone()));
        } else if r.task == "summarize" && r.models.contains_key(sw) && r.models.contains_key(ss) {
            news.push(Item::new(r.id.clone(), r.prompt.clone()));
        }
    }
    mc.truncate(opts.items);
    let mut classify = new_job(
        Task::Classify {
            labels: mmlu_labels(),
            instructions: Some(
                "Answer the multiple-choice question with the letter of the correct option.".into(),
            ),
        },
        mc,
    );
    classify.policy = policy(cw, cs);
    classify.policy.sample_key = Some(format!("{sample_key}-mmlu"));
    classify.team = Some(team.to_owned());
    if let Some(d) = opts.deadline {
        classify = classify.with_deadline(d.as_secs());
    }
    classify.project = Some("mmlu".into());
    let mut summarize = new_job(
        Task::Summarize {
            max_words: Some(120),
            instructions: None,
        },
        news,
    );
    summarize.policy = policy(sw, ss);
    summarize.policy.sample_key = Some(format!("{sample_key}-news"));
    summarize.team = Some(team.to_owned());
    if let Some(d) = opts.deadline {
        summarize = summarize.with_deadline(d.as_secs());
    }
    summarize.project = Some("news".into());
    vec![
        DemoJob {
            spec: classify,
            weak: cw,
            strong: cs,
        },
        DemoJob {
            spec: summarize,
            weak: sw,
            strong: ss,
        },
    ]
}

/// The bundled data as one dataset.
///
/// # Errors
/// Never for the bundled files (a test checks they parse).
pub fn bundled_dataset() -> anyhow::Result<Dataset> {
    let mut data = Dataset::from_jsonl_str("classify_mmlu.jsonl", CLASSIFY_DATA)?;
    data.merge(Dataset::from_jsonl_str(
        "summarize_news.jsonl",
        SUMMARIZE_DATA,
    )?);
    Ok(data)
}

/// Runs the demo against the NATS and Postgres in `settings` (streams under a fresh prefix,
/// deleted afterwards) and returns the report.
///
/// # Errors
/// When a service is unreachable or a job does not finish within ten minutes.
pub async fn run(mut settings: Settings, opts: &DemoOptions) -> anyhow::Result<DemoReport> {
    let data = Arc::new(bundled_dataset()?);
    settings.nats.prefix = format!(
        "demo_{}",
        ulid::Ulid::new().to_string()[18..].to_lowercase()
    );
    settings.nats.storage = StorageKind::Memory;
    let mut sim = SimConfig {
        auroc: opts.auroc,
        ..SimConfig::default()
    };
    if opts.deadline.is_some() {
        // Every model gets the simulator's Batch API; batches are small and quick here.
        for m in settings.models.values_mut() {
            m.batch = true;
        }
        let b = &mut settings.worker.batching;
        b.max_wait = std::time::Duration::from_millis(500);
        b.poll_every = std::time::Duration::from_millis(200);
        b.min_time_left = std::time::Duration::from_secs(60);
        sim.batch_delay = std::time::Duration::from_millis(200);
    }
    let fleet = Fleet::start(settings, Some((Arc::clone(&data), sim))).await?;
    let result = async {
        let real_time = DemoOptions {
            deadline: None,
            ..opts.clone()
        };
        let mut report = run_jobs(&fleet, &data, &real_time, "").await?;
        if opts.deadline.is_some() {
            batch_prices(&fleet).await?;
            report.with_deadline = Some(Box::new(run_jobs(&fleet, &data, opts, "-d").await?));
        }
        Ok(report)
    }
    .await;
    let js = fleet.dispatcher.js.clone();
    let settings = fleet.settings.clone();
    fleet.stop().await;
    let _ = switchyard_runtime::nats::delete_topology(&js, &settings).await;
    result
}

/// Gives every model in force without a batch price the simulator's: half price through
/// its Batch API (a new price version, the rates unchanged).
async fn batch_prices(fleet: &Fleet) -> anyhow::Result<()> {
    let pool = &fleet.dispatcher.pool;
    let half = Decimal::new(5, 1);
    for v in switchyard_store::prices::in_force_at(pool, chrono::Utc::now()).await? {
        if !fleet.settings.models.contains_key(&v.model) || !v.batch_discount.is_zero() {
            continue;
        }
        let tariff = switchyard_core::tariff::Tariff::new(
            v.input_usd_per_mtok,
            v.cached_input_usd_per_mtok,
            v.output_usd_per_mtok,
            half,
        )?;
        let price = switchyard_store::prices::NewPrice {
            model: v.model.clone(),
            provider: v.provider.clone(),
            tariff,
            effective_from: chrono::Utc::now(),
        };
        switchyard_store::prices::set(pool, &price).await?;
    }
    Ok(())
}

async fn run_jobs(
    fleet: &Fleet,
    data: &Dataset,
    opts: &DemoOptions,
    team_suffix: &str,
) -> anyhow::Result<DemoReport> {
    let client = fleet.client();
    // A team of this run's own: a quality job learns from its team's history, and an earlier
    // demo's answers to these very items would be a leak, not history.
    let run = format!("demo-{}", &fleet.settings.nats.prefix["demo_".len()..]);
    let team = format!("{run}{team_suffix}");
    let jobs = demo_jobs(data, opts, &team, &run);
    let bars = MultiProgress::new();
    if !opts.progress {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let started = Instant::now();
    let mut waits = Vec::new();
    for job in &jobs {
        let n = job.spec.items.as_ref().map_or(0, Vec::len) as u64;
        let bar = bars.add(ProgressBar::new(n));
        bar.set_style(style.clone());
        bar.set_prefix(job.spec.task.kind().to_string());
        client.submit(job.spec.clone()).await?;
        waits.push(wait_with_bar(&client, job.spec.job_id.clone(), bar));
    }
    let finals = futures::future::try_join_all(waits).await?;
    let elapsed = started.elapsed();

    let mut total = Figures::default();
    let mut reports = Vec::new();
    for (job, status) in jobs.iter().zip(finals) {
        let figures = job_figures(fleet, &client, data, job).await?;
        total.add(&figures);
        let quality = switchyard_store::quality::job_quality(
            &client.pool,
            &job.spec.job_id,
            &fleet.settings.dispatcher.weak_tier,
        )
        .await?;
        let twin = twin_of(fleet, data, job, opts)?;
        let target = opts.quality;
        let frontier_svg = match (&opts.plot_dir, &twin) {
            (Some(dir), Some(t)) => {
                let path = dir.join(format!(
                    "switchyard-demo-{}-frontier.svg",
                    job.spec.task.kind()
                ));
                let title = format!(
                    "{} ({} → {}): cost-quality frontier, the fleet's point",
                    job.spec.task.kind(),
                    job.weak,
                    job.strong
                );
                let svg = switchyard_twin::plot::frontier_svg(
                    &title,
                    &t.frontier_xy(),
                    (
                        1.0 - figures.savings_vs_all_strong,
                        figures.quality_vs_all_strong,
                    ),
                    target,
                );
                // A directory named on the command line that does not exist yet is made.
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create --plot-dir {}", dir.display()))?;
                std::fs::write(&path, svg)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Some(path.display().to_string())
            }
            _ => None,
        };
        reports.push(JobReport {
            job_id: job.spec.job_id.clone(),
            task: job.spec.task.kind().to_string(),
            weak_model: job.weak.to_owned(),
            strong_model: job.strong.to_owned(),
            status,
            met: target.map(|t| figures.quality_vs_all_strong >= t),
            target,
            audit: quality.as_ref().map(|q| q.audit),
            planned_quality: quality.as_ref().and_then(|q| q.planned_quality),
            twin_quality_vs_all_strong: twin.as_ref().map(|t| t.quality_vs_all_strong),
            twin_savings_vs_all_strong: twin.as_ref().map(|t| t.saved),
            frontier_svg,
            figures,
        });
    }
    total.finish();
    let k = reports.len().max(1) as f64;
    let jobs_mean_quality_vs_all_strong = reports
        .iter()
        .map(|j| j.figures.quality_vs_all_strong)
        .sum::<f64>()
        / k;
    let jobs_mean_savings_vs_all_strong = reports
        .iter()
        .map(|j| j.figures.savings_vs_all_strong)
        .sum::<f64>()
        / k;
    let every_job_met = opts
        .quality
        .map(|_| reports.iter().all(|j| j.met == Some(true)));
    let auroc = fleet.sim.as_ref().and_then(|sim| {
        let pairs: Vec<(f64, bool)> = sim
            .calls()
            .iter()
            .filter(|c| c.status == 200)
            .filter_map(|c| Some((c.confidence?, c.correct?)))
            .collect();
        switchyard_sim::auroc(&pairs)
    });
    Ok(DemoReport {
        policy: match opts.quality {
            Some(q) => format!("quality={q}"),
            None => format!(
                "strong-share={}, escalate below confidence {}",
                opts.strong_share, opts.confidence_threshold
            ),
        },
        jobs_mean_quality_vs_all_strong,
        jobs_mean_savings_vs_all_strong,
        every_job_met,
        items_per_s: total.items as f64 / elapsed.as_secs_f64().max(1e-9),
        elapsed_s: elapsed.as_secs_f64(),
        auroc,
        strong_share: opts.strong_share,
        confidence_threshold: opts.confidence_threshold,
        prices: "USD per million input/output tokens from the routing data README: \
                 gpt-4-1106-preview 10/30, Mixtral-8x7B 0.6/0.6, text-davinci-002 20/20, \
                 T0pp 0.3/0.3 (assumed hosting price)",
        total,
        jobs: reports,
        with_deadline: None,
    })
}

/// The offline twin's replay of a demo job (same items, router, prices, simulator
/// settings and job id, so the same pilot and plan): the frontier for the picture and the
/// twin's figures to compare with the fleet's. `None` for the hand-set policy's jobs too
/// (their frontier is the same, from a quality replay).
fn twin_of(
    fleet: &Fleet,
    data: &Dataset,
    job: &DemoJob,
    opts: &DemoOptions,
) -> anyhow::Result<Option<switchyard_twin::job::JobReport>> {
    let (Some(weak_price), Some(strong_price)) = (
        fleet.settings.price_of(job.weak),
        fleet.settings.price_of(job.strong),
    ) else {
        return Ok(None);
    };
    let models = Models {
        weak: job.weak.to_owned(),
        strong: job.strong.to_owned(),
        weak_price,
        strong_price,
    };
    let weak_settings = fleet.settings.models.get(job.weak);
    let twin = Twin {
        data,
        sim: SimSetup {
            calibration: switchyard_sim::confidence::Calibration::new(
                opts.auroc,
                switchyard_sim::confidence::DEFAULT_BIAS,
            ),
            seed: 0,
            logprobs: weak_settings.is_none_or(|m| m.logprobs),
            confidence_without_logprobs: weak_settings
                .map_or(0.5, |m| m.confidence_without_logprobs.get()),
            generate_max_tokens: weak_settings.map_or(512, |m| m.generate_max_tokens),
        },
        models: &models,
    };
    let router = fleet.dispatcher.router.as_ref();
    let kind = job.spec.task.kind();
    let items = job.spec.items.as_deref().unwrap_or_default();
    let rows: Vec<JobRow<'_>> = items
        .iter()
        .filter_map(|it| {
            let record = data.get(&it.item_id)?;
            Some(JobRow {
                id: &it.item_id,
                text: &it.text,
                score: router.score(&it.text, kind),
                weak_score: record.models.get(job.weak)?.score,
                strong_score: record.models.get(job.strong)?.score,
            })
        })
        .collect();
    let report = twin.run(&JobInput {
        // The twin draws its pilot and audit with what the fleet's job draws them with.
        job_id: job.spec.sample_key().to_owned(),
        task: job.spec.task.clone(),
        rows,
        policy: PolicyChoice::Quality {
            target: opts.quality.unwrap_or(0.95),
        },
        weak_quality: router
            .weak_quality(kind)
            .unwrap_or(switchyard_router::prior::ASSUMED_WEAK_QUALITY),
        history: &[],
        samples: switchyard_core::samples::DEFAULT_EXTRA_SAMPLES,
        audit_share: job
            .spec
            .policy
            .audit
            .unwrap_or(switchyard_core::audit::DEFAULT_AUDIT_SHARE),
    });
    Ok(Some(report))
}

async fn wait_with_bar(
    client: &Client,
    job_id: String,
    bar: ProgressBar,
) -> anyhow::Result<String> {
    let outcome = client
        .wait(
            &job_id,
            Some(Duration::from_secs(600)),
            Duration::from_secs(60),
            |s| {
                bar.set_position(s.finished() as u64);
                bar.set_message(format!("${} spent", s.cost_usd.round_dp(4)));
            },
        )
        .await?;
    bar.finish();
    match outcome {
        WaitOutcome::Finished(s) => Ok(s.job.status.clone()),
        WaitOutcome::TimedOut(_) => anyhow::bail!("job {job_id} did not finish in 10 minutes"),
        WaitOutcome::NotFound => {
            anyhow::bail!("job {job_id} never appeared (is the dispatcher running?)")
        }
    }
}

async fn job_figures(
    fleet: &Fleet,
    client: &Client,
    data: &Dataset,
    job: &DemoJob,
) -> anyhow::Result<Figures> {
    let status = client
        .status(&job.spec.job_id)
        .await?
        .context("job vanished")?;
    let strong_price = fleet
        .settings
        .price_of(job.strong)
        .context("strong model has no price")?;
    let weak_price = fleet
        .settings
        .price_of(job.weak)
        .context("weak model has no price")?;
    let mut f = Figures {
        items: status.job.item_count.unwrap_or(0) as u64,
        completed: status.done() as u64,
        failed: status.failed() as u64,
        by_tier: status
            .done_by_tier
            .iter()
            .map(|(k, v)| (k.clone(), *v as u64))
            .collect(),
        escalated: status.escalated as u64,
        calls: status.calls as u64,
        cost_usd: status.cost_usd,
        batch_savings_usd: switchyard_store::ledger_reports::job_lever_savings(
            &client.pool,
            &job.spec.job_id,
        )
        .await?
        .0,
        ..Figures::default()
    };
    let mut rows = switchyard_store::reports::results_stream(&client.pool, &job.spec.job_id);
    while let Some(row) = rows.try_next().await? {
        let Some(record) = data.get(&row.item_id) else {
            continue;
        };
        let (Some(s), Some(w)) = (record.models.get(job.strong), record.models.get(job.weak))
        else {
            continue;
        };
        f.cost_all_strong_usd += strong_price.cost(s.prompt_tokens, s.completion_tokens);
        f.cost_all_weak_usd += weak_price.cost(w.prompt_tokens, w.completion_tokens);
        f.strong_sum += s.score;
        f.weak_sum += w.score;
        if let Some(m) = row.model.as_deref().and_then(|m| record.models.get(m)) {
            f.quality_sum += m.score;
        }
    }
    f.finish();
    Ok(f)
}

impl Figures {
    fn add(&mut self, o: &Figures) {
        self.items += o.items;
        self.completed += o.completed;
        self.failed += o.failed;
        for (k, v) in &o.by_tier {
            *self.by_tier.entry(k.clone()).or_default() += v;
        }
        self.escalated += o.escalated;
        self.calls += o.calls;
        self.cost_usd += o.cost_usd;
        self.cost_all_strong_usd += o.cost_all_strong_usd;
        self.cost_all_weak_usd += o.cost_all_weak_usd;
        self.batch_savings_usd += o.batch_savings_usd;
        self.quality_sum += o.quality_sum;
        self.strong_sum += o.strong_sum;
        self.weak_sum += o.weak_sum;
    }

    fn finish(&mut self) {
        let n = self.items.max(1) as f64;
        self.quality = self.quality_sum / n;
        self.quality_all_strong = self.strong_sum / n;
        self.quality_all_weak = self.weak_sum / n;
        self.quality_vs_all_strong = if self.quality_all_strong > 0.0 {
            self.quality / self.quality_all_strong
        } else {
            0.0
        };
        self.savings_vs_all_strong = if self.cost_all_strong_usd.is_zero() {
            0.0
        } else {
            let ratio = (self.cost_usd + self.batch_savings_usd) / self.cost_all_strong_usd;
            1.0 - ratio.to_string().parse::<f64>().unwrap_or(1.0)
        };
    }
}

/// The report as text.
pub fn render_text(r: &DemoReport) -> String {
    let mut out = String::new();
    let line = |out: &mut String, name: &str, f: &Figures| {
        out.push_str(&format!(
            "{name:<12} {:>6} items  {:>6} done {:>4} failed  escalated {:>5}  cost ${:>10}  all-strong ${:>10}  all-weak ${:>9}  saved {:>5.1}%  quality {:.3} ({:.1}% of all-strong {:.3}; all-weak {:.3})\n",
            f.items,
            f.completed,
            f.failed,
            f.escalated,
            f.cost_usd.round_dp(6),
            f.cost_all_strong_usd.round_dp(6),
            f.cost_all_weak_usd.round_dp(6),
            100.0 * f.savings_vs_all_strong,
            f.quality,
            100.0 * f.quality_vs_all_strong,
            f.quality_all_strong,
            f.quality_all_weak,
        ));
    };
    for j in &r.jobs {
        line(&mut out, &j.task, &j.figures);
        if !j.figures.batch_savings_usd.is_zero() {
            out.push_str(&format!(
                "             batch prices saved ${} more (not counted in `saved`, which is routing's)\n",
                j.figures.batch_savings_usd.round_dp(6)
            ));
        }
        out.push_str(&format!(
            "             {} → {}, final answers by tier: {:?}\n",
            j.weak_model, j.strong_model, j.figures.by_tier
        ));
        if let Some(t) = j.target {
            out.push_str(&format!(
                "             target {:.1}%  achieved {:.1}% (replayed)  estimated {} (audit)  planned {}  saved {:.1}%  {}\n",
                100.0 * t,
                100.0 * j.figures.quality_vs_all_strong,
                j.audit.map_or("-".to_owned(), |a| a.display()),
                j.planned_quality.map_or("-".to_owned(), |p| format!("{:.1}%", 100.0 * p)),
                100.0 * j.figures.savings_vs_all_strong,
                if j.met == Some(true) { "MET" } else { "MISSED" },
            ));
        }
        if let (Some(q), Some(s)) = (j.twin_quality_vs_all_strong, j.twin_savings_vs_all_strong) {
            out.push_str(&format!(
                "             offline twin (switchyard policy eval): {:.1}% of all-strong, saved {:.1}%\n",
                100.0 * q,
                100.0 * s
            ));
        }
        if let Some(p) = &j.frontier_svg {
            out.push_str(&format!("             frontier picture: wrote {p}\n"));
        }
    }
    out.push_str(&format!(
        "mean of the jobs: quality {:.1}% of all-strong, saved {:.1}%{}\n",
        100.0 * r.jobs_mean_quality_vs_all_strong,
        100.0 * r.jobs_mean_savings_vs_all_strong,
        match r.every_job_met {
            Some(true) => "; every job kept its target",
            Some(false) => "; NOT every job kept its target",
            None => "",
        }
    ));
    out.push_str(&format!("policy: {}\n", r.policy));
    if r.every_job_met.is_some() {
        out.push_str(
            "estimated = agreement with the strong model's answers on the audit sample (a \
             conservative proxy, 95% interval); achieved = replayed scores, which only the \
             simulator knows\n",
        );
    }
    out.push_str(&format!(
        "simulator confidence AUROC {}  |  {:.0} items/s end to end ({:.1} s)\nprices: {}\n",
        r.auroc.map_or("n/a".to_owned(), |a| format!("{a:.3}")),
        r.items_per_s,
        r.elapsed_s,
        r.prices
    ));
    if let Some(d) = &r.with_deadline {
        out.push_str("\nthe same jobs with a deadline, through the providers' batch APIs:\n");
        out.push_str(&render_text(d));
        let ratio = |a: Decimal, b: Decimal| {
            if b.is_zero() {
                "-".to_owned()
            } else {
                format!("{:.2}", a / b)
            }
        };
        out.push_str(&format!(
            "with a deadline: cost {}× the real-time run's (${} vs ${}), quality {:.1}% vs {:.1}% of all-strong\n",
            ratio(d.total.cost_usd, r.total.cost_usd),
            d.total.cost_usd.round_dp(6),
            r.total.cost_usd.round_dp(6),
            100.0 * d.jobs_mean_quality_vs_all_strong,
            100.0 * r.jobs_mean_quality_vs_all_strong,
        ));
    }
    out
}

/// The labels of the bundled MMLU prompts (multiple choice, four options).
pub fn mmlu_labels() -> Vec<String> {
    ["A", "B", "C", "D"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// Classification of the bundled MMLU prompts into their labels, without instructions (the
/// task the benches and `switchyard chaos` submit).
pub fn mmlu_task() -> Task {
    Task::Classify {
        labels: mmlu_labels(),
        instructions: None,
    }
}

//! The harness every scenario starts from.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rust_decimal::Decimal;
use switchyard_client::{Client, WaitOutcome};
use switchyard_demo::fleet::Fleet;
use switchyard_proto::{Item, JobSpec, Policy, Routing, Task};
use switchyard_runtime::Settings;
use switchyard_sim::{Dataset, SimConfig};
use switchyard_store::reports::JobStatus;
use switchyard_testkit::{TestDb, TestNats, settings_for};

/// Weak and strong models of the MMLU data.
pub const WEAK: &str = "mistralai/Mixtral-8x7B-Instruct-v0.1";
pub const STRONG: &str = "gpt-4-1106-preview";

/// The bundled demo data, parsed once per test binary.
pub fn data() -> Arc<Dataset> {
    static DATA: OnceLock<Arc<Dataset>> = OnceLock::new();
    Arc::clone(
        DATA.get_or_init(|| {
            Arc::new(switchyard_demo::bundled_dataset().expect("bundled data parses"))
        }),
    )
}

/// `n` MMLU items (id = the data's id, text = its prompt).
pub fn mmlu_items(n: usize) -> Vec<Item> {
    let data = data();
    let mut items: Vec<Item> = data
        .records()
        .filter(|r| r.choices.is_some())
        .map(|r| Item::new(r.id.clone(), r.prompt.clone()))
        .collect();
    items.sort_by(|a, b| a.item_id.cmp(&b.item_id));
    items.truncate(n);
    assert_eq!(items.len(), n, "not enough bundled items");
    items
}

/// A classification job over `items` with a strong share and a cascade threshold.
pub fn classify_job(items: Vec<Item>, strong_share: f64, threshold: f64) -> JobSpec {
    let labels = ["A", "B", "C", "D"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut spec = switchyard_client::new_job(
        Task::Classify {
            labels,
            instructions: None,
        },
        items,
    );
    spec.policy = Policy {
        routing: Routing::StrongShare {
            value: strong_share,
        },
        cascade: switchyard_proto::Cascade {
            confidence_threshold: Some(threshold),
            max_escalations: Some(1),
        },
        models: Default::default(),
        shadow: None,
        audit: None,
    };
    spec.team = Some("team-e2e".into());
    spec.project = Some("proj".into());
    spec
}

/// A fleet of this test's own.
pub struct Harness {
    pub fleet: Fleet,
    pub client: Client,
    // Dropped after the fleet is stopped (field order).
    pub db: TestDb,
    pub nats: TestNats,
}

impl Harness {
    /// A fleet with default test settings and a zero-latency simulator.
    pub async fn start() -> Self {
        Self::start_with(|_| {}, SimConfig::default()).await
    }

    /// A fleet whose settings `tune` may change, with the given simulator configuration.
    pub async fn start_with(tune: impl FnOnce(&mut Settings), sim: SimConfig) -> Self {
        Self::start_on(data(), tune, sim).await
    }

    /// As [`Harness::start_with`], the simulator replaying `replayed` instead of the bundled
    /// demo data.
    pub async fn start_on(
        replayed: Arc<Dataset>,
        tune: impl FnOnce(&mut Settings),
        sim: SimConfig,
    ) -> Self {
        let nats = TestNats::new().await;
        let db = TestDb::new().await;
        let mut settings = settings_for(&nats, &db);
        tune(&mut settings);
        let fleet = Fleet::start(settings, Some((replayed, sim)))
            .await
            .expect("fleet starts");
        let client = fleet.client();
        Self {
            fleet,
            client,
            db,
            nats,
        }
    }

    /// Waits (at most `secs`) for the job to reach a final state.
    pub async fn wait_final(&self, job_id: &str, secs: u64) -> JobStatus {
        match self
            .client
            .wait(
                job_id,
                Some(Duration::from_secs(secs)),
                Duration::from_secs(secs),
                |_| {},
            )
            .await
            .unwrap()
        {
            WaitOutcome::Finished(s) => *s,
            WaitOutcome::TimedOut(s) => panic!("job {job_id} did not finish in {secs}s: {s:?}"),
            WaitOutcome::NotFound => panic!("job {job_id} never appeared"),
        }
    }

    /// Ledger rows of a job: (call_id, model, tier, attempt, prompt, completion, cost, retry).
    pub async fn ledger(&self, job_id: &str) -> Vec<LedgerRow> {
        sqlx::query_as(
            "SELECT call_id, item_id, model, tier, attempt, prompt_tokens, completion_tokens, cost_usd, retry, \
             outcome FROM ledger WHERE job_id = $1 ORDER BY entry_id",
        )
        .bind(job_id)
        .fetch_all(&self.db.pool)
        .await
        .unwrap()
    }

    /// Stops the fleet (before the database and streams are dropped).
    pub async fn finish(self) {
        let Harness {
            fleet, db, nats, ..
        } = self;
        fleet.stop().await;
        drop(db);
        drop(nats);
    }
}

/// One ledger row as the tests read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LedgerRow {
    pub call_id: String,
    pub item_id: String,
    pub model: String,
    pub tier: String,
    pub attempt: i32,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub cost_usd: Decimal,
    pub retry: bool,
    /// `ok`, `shadow`, `audit`, `duplicate`, `in_doubt`, `unusable`.
    pub outcome: String,
}

/// What the offline twin (`switchyard policy eval`) makes of the quality job `spec` (target
/// 0.95) the fleet of `h` ran: the same items, job id, router, prices, and the simulator
/// settings `sim`, with `audit_share` the job's audit share.
pub fn quality_twin_of(
    h: &Harness,
    sim: &switchyard_sim::SimConfig,
    spec: &switchyard_proto::JobSpec,
    audit_share: f64,
) -> switchyard_twin::job::JobReport {
    use switchyard_twin::job::{JobInput, JobRow, Models, PolicyChoice, SimSetup, Twin};
    let settings = &h.fleet.settings;
    let models = Models {
        weak: WEAK.to_owned(),
        strong: STRONG.to_owned(),
        weak_price: settings.price_of(WEAK).unwrap(),
        strong_price: settings.price_of(STRONG).unwrap(),
    };
    let data = data();
    let twin = Twin {
        data: &data,
        sim: SimSetup {
            calibration: switchyard_sim::confidence::Calibration::new(
                sim.auroc,
                sim.confidence_bias,
            ),
            seed: sim.seed,
            logprobs: true,
            confidence_without_logprobs: 0.5,
            generate_max_tokens: 512,
        },
        models: &models,
    };
    let router = h.fleet.dispatcher.router.as_ref();
    let kind = switchyard_proto::TaskKind::Classify;
    let rows: Vec<JobRow<'_>> = spec
        .items
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|it| {
            let r = data.get(&it.item_id).unwrap();
            JobRow {
                id: &it.item_id,
                text: &it.text,
                score: router.score(&it.text, kind),
                weak_score: r.models[WEAK].score,
                strong_score: r.models[STRONG].score,
            }
        })
        .collect();
    twin.run(&JobInput {
        job_id: spec.job_id.clone(),
        task: spec.task.clone(),
        rows,
        policy: PolicyChoice::Quality { target: 0.95 },
        weak_quality: router.weak_quality(kind).unwrap(),
        history: &[],
        samples: 4,
        audit_share,
    })
}

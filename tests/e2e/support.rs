//! The harness every scenario starts from.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rust_decimal::Decimal;
use sqlx::PgPool;
use switchyard_client::{Client, WaitOutcome};
use switchyard_demo::fleet::Fleet;
use switchyard_proto::{Item, JobSpec, Policy, Routing, Task};
use switchyard_runtime::Settings;
use switchyard_sim::{Dataset, SimConfig};
use switchyard_store::reports::JobStatus;
use switchyard_testkit::postgres::Postgres;
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
/// A work message as another client might publish it: attempt 0 of `item_id` of `job_id`
/// on `tier`, of team `team-e2e` (the fields a test changes are public).
pub fn foreign_work_item(job_id: &str, item_id: &str, tier: &str) -> switchyard_proto::WorkItem {
    switchyard_proto::WorkItem {
        v: 1,
        job_id: job_id.into(),
        item_id: item_id.into(),
        attempt: 0,
        tier: tier.into(),
        text: "hello".into(),
        task: switchyard_proto::Task::Generate { instructions: None },
        team: "team-e2e".into(),
        project: "proj".into(),
        local_only: false,
        models: Default::default(),
        confidence_threshold: 0.5,
        escalations_left: 0,
        escalation: None,
        router_score: None,
        cost_weight: None,
        deadline: None,
    }
}

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
        sample_key: None,
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
        wait_final(&self.client, job_id, secs).await
    }

    /// Waits for the job and asserts it was rejected for a reason that says `expected`, with
    /// one dead letter and nothing of it kept or sent.
    pub async fn assert_rejected(&self, job_id: &str, expected: &str) {
        let s = self.wait_final(job_id, 30).await;
        assert_eq!(s.job.status, "rejected", "{job_id}");
        let reason = s.job.rejection_reason.clone().unwrap_or_default();
        assert!(
            reason.contains(expected),
            "{job_id}: {reason:?} does not say {expected:?}"
        );
        assert_eq!(s.dead_letters.len(), 1, "{job_id}: one dead letter");
        assert_eq!(s.items_by_state.values().sum::<i64>(), 0, "{job_id}");
    }

    /// Submits `spec` and asserts it completes within a minute; returns its job id.
    pub async fn completed(&self, spec: JobSpec) -> String {
        let job_id = self.client.submit(spec).await.unwrap();
        let s = self.wait_final(&job_id, 60).await;
        assert_eq!(s.job.status, "completed", "{s:?}");
        job_id
    }

    /// Submits a small classification job and asserts it completes: the fleet still works.
    pub async fn a_small_job_completes(&self) {
        let id = self
            .client
            .submit(classify_job(mmlu_items(5), 0.0, 0.0))
            .await
            .unwrap();
        assert_eq!(self.wait_final(&id, 60).await.job.status, "completed");
    }

    /// Waits (at most `secs`) until `count_sql`, a count with the job id as `$1`, counts `n`.
    pub async fn count_reaches(
        &self,
        what: &str,
        count_sql: &'static str,
        job_id: &str,
        n: i64,
        secs: u64,
    ) {
        switchyard_testkit::eventually(what, Duration::from_secs(secs), || async {
            let c: i64 = sqlx::query_scalar(count_sql)
                .bind(job_id)
                .fetch_one(&self.db.pool)
                .await
                .ok()?;
            (c == n).then_some(())
        })
        .await;
    }

    /// Waits (at most `secs`) until stream `name` holds no message, every one settled.
    pub async fn stream_emptied(&self, name: &str, what: &str, secs: u64) {
        let js = self.nats.js();
        switchyard_testkit::eventually(what, Duration::from_secs(secs), || {
            let js = js.clone();
            async move { (stream_messages(&js, name).await? == 0).then_some(()) }
        })
        .await;
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

    /// The rows the fleet's simulator replays (the bundled demo data unless the test chose
    /// others with [`Harness::start_on`]).
    pub fn replayed(&self) -> Arc<Dataset> {
        self.fleet
            .sim
            .as_ref()
            .expect("the harness starts a simulator")
            .dataset()
    }

    /// The job's ledger rows as `(call_id, outcome, usage_source)`: how each call was booked.
    pub async fn bookings(&self, job_id: &str) -> Vec<(String, String, String)> {
        sqlx::query_as("SELECT call_id, outcome, usage_source FROM ledger WHERE job_id = $1")
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

/// A PostgreSQL of the test's own, in `dir` (to stop and restart without disturbing other
/// tests), and test settings on it with the test's NATS namespace. Keep all of it for the
/// test's length.
pub async fn on_own_postgres(dir: &std::path::Path) -> (Postgres, TestNats, TestDb, Settings) {
    let pg = Postgres::start(dir)
        .await
        .expect("a PostgreSQL of this test's own");
    let nats = TestNats::new().await;
    let db = TestDb::new().await;
    let mut settings = settings_for(&nats, &db);
    settings.database.url = pg.url("switchyard").into();
    (pg, nats, db, settings)
}

/// A fleet (dispatcher, a worker of every tier, the simulator over HTTP) on a Postgres of the
/// test's own, which the test may stop and resume (outages), with `tune` applied to its
/// settings. The servers stop when the returned handles drop.
pub async fn fleet_on_own_postgres(
    dir: &std::path::Path,
    tune: impl FnOnce(&mut Settings),
    sim: SimConfig,
) -> (Postgres, TestNats, TestDb, Fleet) {
    let (pg, nats, db, mut settings) = on_own_postgres(dir).await;
    tune(&mut settings);
    let mut fleet = Fleet::start(settings, Some((data(), sim))).await.unwrap();
    let tiers: Vec<String> = fleet.settings.tiers.keys().cloned().collect();
    fleet.start_worker(tiers).await.unwrap();
    (pg, nats, db, fleet)
}

/// Asserts that the job's weak answers' stored confidences are the agreement of four extra
/// samples (quarters) and not one constant: the signal of a model without logprobs.
pub async fn assert_confidences_are_sample_agreement(pool: &PgPool, job_id: &str) {
    let confidences: Vec<f64> = sqlx::query_scalar(
        "SELECT confidence FROM results \
         WHERE job_id = $1 AND tier = 'weak' AND confidence IS NOT NULL",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(!confidences.is_empty());
    assert!(
        confidences
            .iter()
            .all(|c| ((c * 4.0).round() - c * 4.0).abs() < 1e-9),
        "{confidences:?}"
    );
    assert!(
        confidences.iter().any(|c| *c < 1.0) && confidences.iter().any(|c| *c >= 0.75),
        "{confidences:?}"
    );
}

/// Waits until every running worker of `fleet` knows `team` has a budget.
pub async fn workers_know_budget(fleet: &Fleet, team: &str) {
    switchyard_testkit::eventually(
        "workers see the budget",
        Duration::from_secs(10),
        || async {
            fleet
                .workers
                .iter()
                .flatten()
                .all(|w| w.worker.finance.is_budgeted(team))
                .then_some(())
        },
    )
    .await;
}

/// Waits (at most 240 s) until a job of `n` items bound by its team's budget is quiet: every
/// item answered or waiting for budget, some waiting, no hold left and, when `nothing_fits`,
/// no waiting item that would fit the room left. Prints progress now and then, so that a slow
/// run shows where it stands. Returns (answered, waiting).
pub async fn budget_runs_dry(
    pool: &PgPool,
    job_id: &str,
    n: i64,
    nothing_fits: bool,
) -> (i64, i64) {
    let started = std::time::Instant::now();
    let polls = AtomicU32::new(0);
    switchyard_testkit::eventually("the budget runs dry", Duration::from_secs(240), || {
        let poll = polls.fetch_add(1, Ordering::Relaxed);
        async move {
            let (done, waiting, holds, fits): (i64, i64, i64, bool) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM items WHERE job_id = $1 AND status = 'done'), \
                 (SELECT count(*) FROM budget_parked WHERE job_id = $1), \
                 (SELECT count(*) FROM budget_reservations), \
                 EXISTS (SELECT 1 FROM budget_parked k, budget_periods p, budgets b \
                   WHERE p.team = k.team AND b.team = k.team \
                   AND p.month = date_trunc('month', now() AT TIME ZONE 'UTC')::date \
                   AND k.worst_case_usd <= b.monthly_usd - p.spent_usd - p.reserved_usd)",
            )
            .bind(job_id)
            .fetch_one(pool)
            .await
            .ok()?;
            if poll.is_multiple_of(250) {
                println!(
                    "{:?}: {done} done, {waiting} waiting, {holds} holds, fits {fits} of {n}",
                    started.elapsed()
                );
            }
            let quiet = done + waiting == n && holds == 0 && waiting > 0;
            (quiet && !(nothing_fits && fits)).then_some((done, waiting))
        }
    })
    .await
}

/// Waits (at most `secs`) for `client`'s job to reach a final state.
///
/// # Panics
/// When it does not, or never appears.
pub async fn wait_final(client: &Client, job_id: &str, secs: u64) -> JobStatus {
    let within = Duration::from_secs(secs);
    match client
        .wait(job_id, Some(within), within, |_| {})
        .await
        .unwrap()
    {
        WaitOutcome::Finished(s) => *s,
        WaitOutcome::TimedOut(s) => panic!("job {job_id} did not finish in {secs}s: {s:?}"),
        WaitOutcome::NotFound => panic!("job {job_id} never appeared"),
    }
}

/// The number of messages on stream `name`, `None` when it cannot be read.
pub async fn stream_messages(js: &async_nats::jetstream::Context, name: &str) -> Option<u64> {
    Some(
        js.get_stream(name)
            .await
            .ok()?
            .info()
            .await
            .ok()?
            .state
            .messages,
    )
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

/// The weak and strong models of `spec` (its policy's, else the fleet's defaults).
pub fn job_models(spec: &switchyard_proto::JobSpec) -> (String, String) {
    let of = |tier: &str, default: &str| {
        spec.policy
            .models
            .get(tier)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    };
    (of("weak", WEAK), of("strong", STRONG))
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
    let (weak, strong) = job_models(spec);
    let models = Models {
        weak: weak.clone(),
        strong: strong.clone(),
        weak_price: settings.price_of(&weak).unwrap(),
        strong_price: settings.price_of(&strong).unwrap(),
    };
    let weak_settings = settings.models.get(&weak);
    let data = h.replayed();
    let twin = Twin {
        data: &data,
        sim: SimSetup {
            calibration: switchyard_sim::confidence::Calibration::new(
                sim.auroc,
                sim.confidence_bias,
            ),
            seed: sim.seed,
            logprobs: sim.logprobs,
            confidence_without_logprobs: weak_settings
                .map_or(0.5, |m| m.confidence_without_logprobs.get()),
            generate_max_tokens: weak_settings.map_or(512, |m| m.generate_max_tokens),
        },
        models: &models,
    };
    let router = h.fleet.dispatcher.router.as_ref();
    let kind = spec.task.kind();
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
                weak_score: r.models[weak.as_str()].score,
                strong_score: r.models[strong.as_str()].score,
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

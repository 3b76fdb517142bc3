//! The real `switchyard` binary: SIGTERM stops a dispatcher or a worker within its
//! grace period with exit 0, in-flight work finished or handed back (and then done elsewhere,
//! once); secrets never appear in output, errors or logs.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use switchyard_proto::Item;
use switchyard_runtime::Settings;
use switchyard_runtime::settings::StorageKind;
use switchyard_sim::SimConfig;
use switchyard_testkit::procs::Role;
use switchyard_testkit::{TestDb, TestNats};

mod common;
use common::switchyard;

fn settings(nats: &TestNats, db: &TestDb, sim_url: &str) -> Settings {
    let mut s = Settings::demo();
    s.nats.url = switchyard_testkit::nats_url();
    s.nats.prefix = nats.prefix.clone();
    s.nats.storage = StorageKind::Memory;
    s.database.url = SecretString::from(db.url.clone());
    s.database.max_connections = 4;
    s.worker.ack_wait = Duration::from_secs(20);
    s.worker.retry_delay = Duration::from_millis(100);
    s.point_models_at(sim_url).unwrap();
    for m in s.models.values_mut() {
        m.max_retries = 0;
    }
    s
}

fn write(dir: &Path, name: &str, s: &Settings) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, s.to_redacted_toml()).unwrap();
    path
}

/// Starts `switchyard --config CFG ARGS…` with the test's database in `DATABASE_URL`.
fn spawn(cfg: &Path, db: &TestDb, args: &[&str]) -> Role {
    common::start(cfg, args, &[("DATABASE_URL", &db.url)])
}

/// SIGTERM, then the exit code (`None`: no exit within `within`, killed) and how long the
/// process took to exit.
async fn terminate(p: &mut Role, within: Duration) -> (Option<i32>, Duration) {
    let started = Instant::now();
    let code = p.terminate(within).await;
    (code, started.elapsed())
}

async fn job_state(db: &TestDb, job_id: &str) -> Option<(String, i64)> {
    sqlx::query_as(
        "SELECT j.status, (SELECT count(*) FROM items i WHERE i.job_id = j.job_id) \
         FROM jobs j WHERE j.job_id = $1",
    )
    .bind(job_id)
    .fetch_optional(&db.pool)
    .await
    .ok()?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_a_dispatch_in_progress_back_and_another_dispatcher_resumes_it() {
    let (nats, db) = (TestNats::new().await, TestDb::new().await);
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&nats, &db, "http://127.0.0.1:9/v1");
    s.dispatcher.shutdown_grace = Duration::from_millis(100);
    let cfg = write(dir.path(), "d", &s);
    let client = switchyard_client::Client::connect(s.clone()).await.unwrap();

    let mut first = spawn(&cfg, &db, &["dispatcher"]);
    let n = 60_000;
    let items = (0..n)
        .map(|i| Item::new(format!("i{i}"), format!("Item {i}: is it A or B?")))
        .collect();
    let spec = switchyard_client::new_job(
        switchyard_proto::Task::Classify {
            labels: vec!["A".into(), "B".into()],
            instructions: None,
        },
        items,
    );
    let job_id = client.submit(spec).await.unwrap();
    let seen = switchyard_testkit::eventually(
        "the dispatch is under way",
        Duration::from_secs(60),
        || async {
            job_state(&db, &job_id)
                .await
                .filter(|(_, stored)| *stored > 0)
        },
    )
    .await;
    let (code, took) = terminate(&mut first, Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "a SIGTERM'd dispatcher exits 0");
    let (status, _) = job_state(&db, &job_id).await.unwrap();
    assert!(
        status == "ingesting" || status == "dispatching",
        "the job was handed back unfinished ({status}; seen {seen:?}, exit after {took:?})"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");

    // Handed back (nak), not left for `ack_wait`: a second dispatcher finishes the job, and
    // every item is on the work stream exactly once.
    let mut second = spawn(&cfg, &db, &["dispatcher"]);
    switchyard_testkit::eventually(
        "the job is dispatched",
        Duration::from_secs(120),
        || async {
            job_state(&db, &job_id)
                .await
                .filter(|(status, stored)| status == "running" && *stored == n as i64)
        },
    )
    .await;
    let mut work = nats
        .js()
        .get_stream(s.topology().work_stream())
        .await
        .unwrap();
    assert_eq!(work.info().await.unwrap().state.messages, n as u64);
    let (code, took) = terminate(&mut second, Duration::from_secs(15)).await;
    assert_eq!(code, Some(0));
    assert!(
        took < Duration::from_secs(5),
        "an idle dispatcher stops at once: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_or_hands_back_in_flight_items_and_nothing_is_booked_twice() {
    let (nats, db) = (TestNats::new().await, TestDb::new().await);
    let data = Arc::new(switchyard_demo::bundled_dataset().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = switchyard_sim::start(
        listener,
        data.clone(),
        SimConfig {
            latency: Duration::from_millis(1500),
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&nats, &db, &sim.base_url());
    s.worker.concurrency = switchyard_runtime::settings::count(4);
    s.worker.fetch_batch = switchyard_runtime::settings::count(4);
    s.worker.shutdown_grace = Duration::from_secs(10);
    let patient = write(dir.path(), "patient", &s);
    s.worker.shutdown_grace = Duration::from_millis(200);
    let hasty = write(dir.path(), "hasty", &s);
    let _dispatcher = spawn(&patient, &db, &["dispatcher"]);
    let client = switchyard_client::Client::connect(s.clone()).await.unwrap();
    let items: Vec<Item> = data
        .records()
        .filter(|r| r.choices.is_some())
        .take(12)
        .map(|r| Item::new(r.id.clone(), r.prompt.clone()))
        .collect();
    let mut spec = switchyard_client::new_job(
        switchyard_proto::Task::Classify {
            labels: ["A", "B", "C", "D"]
                .iter()
                .map(|l| (*l).to_owned())
                .collect(),
            instructions: None,
        },
        items,
    );
    spec.policy.routing = switchyard_proto::Routing::StrongShare { value: 0.0 };
    spec.policy.cascade.max_escalations = Some(0);
    let job_id = client.submit(spec).await.unwrap();
    let tiers = "weak,strong,local";

    // A patient worker: the calls in flight at SIGTERM finish and are booked before it exits.
    let mut a = spawn(&patient, &db, &["worker", "--tier", tiers]);
    switchyard_testkit::eventually("calls in flight", Duration::from_secs(60), || async {
        (sim.in_flight_total() >= 2).then_some(())
    })
    .await;
    let (code, _) = terminate(&mut a, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0));
    let answered: Vec<String> = sim
        .calls()
        .into_iter()
        .filter(|c| c.response_id.is_some())
        .filter_map(|c| c.client_request_id)
        .collect();
    assert!(!answered.is_empty());
    let booked: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger WHERE call_id = ANY($1)")
        .bind(&answered)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        booked,
        answered.len() as i64,
        "every answered call was booked before exit"
    );

    // A hasty worker: its calls in flight are abandoned at the end of the grace period and
    // the items handed back (nak) at once.
    let mut b = spawn(&hasty, &db, &["worker", "--tier", tiers]);
    switchyard_testkit::eventually("calls in flight", Duration::from_secs(60), || async {
        (sim.in_flight_total() >= 2).then_some(())
    })
    .await;
    let (code, took) = terminate(&mut b, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0));
    assert!(
        took < Duration::from_millis(1400),
        "gave up before the calls answered: {took:?}"
    );

    // Another worker finishes the job; every item once, every answered call booked once.
    let _c = spawn(&patient, &db, &["worker", "--tier", tiers]);
    let status =
        switchyard_testkit::eventually("the job completes", Duration::from_secs(90), || async {
            job_state(&db, &job_id)
                .await
                .filter(|(status, _)| status == "completed")
        })
        .await;
    assert_eq!(status.1, 12);
    let (rows, distinct) =
        switchyard_testkit::ledger::rows_and_distinct_calls(&db.pool, &job_id).await;
    assert_eq!(rows, distinct);
    let finals: i64 =
        sqlx::query_scalar("SELECT count(*) FROM results WHERE job_id = $1 AND NOT escalated")
            .bind(&job_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(finals, 12);
    sim.shutdown().await;
}

fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn secrets_never_appear_in_output_errors_or_logs() {
    let secrets = [
        "sk-live-Secret-A1",
        "nats-Secret-B2",
        "pg-Secret-C3",
        "sk-env-Secret-E5",
    ];
    let dir = tempfile::tempdir().unwrap();
    let port = switchyard_testkit::ports::free_port().unwrap();
    let config = dir.path().join("secret.toml");
    std::fs::write(
        &config,
        format!(
            "[nats]\nurl = \"nats://svc:nats-Secret-B2@127.0.0.1:{port}\"\n\
             [nats.auth]\nuser = \"svc\"\npassword = \"nats-Secret-B2\"\n\
             [database]\nurl = \"postgres://sy_nobody:pg-Secret-C3@127.0.0.1:5432/sy_nothing\"\n\
             [models.m]\ntier = \"weak\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             api_key = \"sk-live-Secret-A1\"\ninput_usd_per_mtok = \"1\"\noutput_usd_per_mtok = \"1\"\n\
             [models.s]\ntier = \"strong\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             api_key_env = \"SY_TEST_KEY\"\ninput_usd_per_mtok = \"1\"\noutput_usd_per_mtok = \"1\"\n\
             [tiers.weak]\ndefault_model = \"m\"\nescalate_to = \"strong\"\n\
             [tiers.strong]\ndefault_model = \"s\"\n"
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let env = [("SY_TEST_KEY", "sk-env-Secret-E5"), ("RUST_LOG", "trace")];
        switchyard(&config, args, &env).output().unwrap()
    };
    let check = run(&["--check-config"]);
    assert!(check.status.success(), "{}", output_text(&check));
    let shown = output_text(&check);
    assert!(shown.contains("[redacted]"), "{shown}");
    // Unreachable NATS (with credentials in its URL and the config), a database that refuses
    // the password, a worker and a dispatcher that cannot start: errors and trace logs.
    for args in [
        &["migrate"][..],
        &["worker", "--tier", "weak,strong"],
        &["dispatcher"],
        &["audit", "local-only"],
    ] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let text = format!("{shown}{}", output_text(&out));
        for secret in secrets {
            assert!(!text.contains(secret), "{args:?} printed {secret}:\n{text}");
        }
    }
}

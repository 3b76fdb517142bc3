//! The official `openai` Python SDK (the version `scripts/test.sh` pins) against a real
//! `switchyard api` process with keys made by `switchyard api-key create`: uploads, batches,
//! the background check of a batch's file, auto-pagination, cancel, team isolation and the
//! SDK's typed errors (see tests/python/openai_batch.py); and batches run through a fleet of
//! real processes (dispatcher, worker, API) with the simulator as the provider: routed, pinned
//! and refused requests, and a cancel midway (see tests/python/openai_batch_run.py).

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use switchyard_testkit::ports::{free_port, wait_for_port};
use switchyard_testkit::procs::Role;
use switchyard_testkit::{TestDb, TestNats};

mod common;

fn python() -> String {
    std::env::var("SWITCHYARD_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn key(cfg: &Path, team: &str) -> String {
    let out = common::run(
        cfg,
        &["api-key", "create", "--team", team, "--name", "sdk-test"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(secret.starts_with("sy-"), "{secret}");
    secret
}

#[tokio::test]
async fn the_official_sdk_runs_files_and_batches_against_switchyard_api() {
    let db = TestDb::new().await;
    let nats = TestNats::new().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("api.toml");
    std::fs::write(
        &cfg,
        format!(
            "[nats]\nurl = \"{}\"\nprefix = \"{}\"\nstorage = \"memory\"\n\n\
             [database]\nurl = \"{}\"\nmax_connections = 4\n",
            switchyard_testkit::nats_url(),
            nats.prefix,
            db.url
        ),
    )
    .unwrap();
    let key_a = key(&cfg, "team-a");
    let key_b = key(&cfg, "team-b");
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut api = Role::new(
        "api",
        "switchyard api",
        &["api", "--listen", &listen],
        cfg.clone(),
        Some(dir.path()),
        vec![],
    )
    .with_program(common::BIN.into())
    .without_env(&["NATS_URL", "DATABASE_URL", "SWITCHYARD_CONFIG"]);
    api.start().unwrap();
    wait_for_port("switchyard api", port, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {}",
                std::fs::read_to_string(dir.path().join("api.log")).unwrap_or_default()
            )
        });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/openai_batch.py"
    );
    let out = tokio::process::Command::new(python())
        .arg(script)
        .arg(format!("http://{listen}/v1"))
        .arg(&key_a)
        .arg(&key_b)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("the SDK script finishes within 2 minutes")
        .expect("python runs (scripts/test.sh installs the pinned openai package into target/py)");
    assert!(
        out.status.success(),
        "the SDK script failed (run scripts/test.sh, which installs openai into target/py):\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.path().join("api.log")).unwrap_or_default()
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("the SDK script saw: {seen}");
    assert_eq!(seen["checked_total"], 3, "{seen}");
    assert_eq!(seen["listed"], 5, "{seen}");
    assert_eq!(
        seen["errors"],
        serde_json::json!([
            "BadRequestError",
            "BadRequestError",
            "NotFoundError",
            "NotFoundError",
            "AuthenticationError"
        ])
    );
    assert_eq!(api.terminate(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_run_through_the_fleet_and_come_back_as_openai_output_files() {
    let db = TestDb::new().await;
    let nats = TestNats::new().await;
    let data = Arc::new(switchyard_demo::bundled_dataset().unwrap());
    let prompts: Vec<String> = data
        .records()
        .filter(|r| r.choices.is_some())
        .map(|r| r.prompt.clone())
        .take(32)
        .collect();
    assert_eq!(prompts.len(), 32);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = switchyard_sim::start(listener, data, switchyard_sim::SimConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::fleet_config(dir.path(), &nats, &db, &sim.base_url());
    let key_a = key(&cfg, "team-a");
    let _dispatcher = common::start(&cfg, &["dispatcher"], &[]);
    // No worker serves the local tier: requests pinned to its model wait until cancelled.
    let _worker = common::start(&cfg, &["worker", "--tier", "weak,strong"], &[]);
    // Two API processes: the script creates on one and follows on the other (an API keeps
    // nothing of its own).
    let mut apis = Vec::new();
    let mut bases = Vec::new();
    for _ in 0..2 {
        let port = free_port().unwrap();
        let listen = format!("127.0.0.1:{port}");
        apis.push(common::start(&cfg, &["api", "--listen", &listen], &[]));
        wait_for_port("switchyard api", port, Duration::from_secs(30))
            .await
            .unwrap();
        bases.push(format!("http://{listen}/v1"));
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/openai_batch_run.py"
    );
    let out = tokio::process::Command::new(python())
        .arg(script)
        .arg(&bases[0])
        .arg(&bases[1])
        .arg(&key_a)
        .arg(serde_json::to_string(&prompts).unwrap())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), out)
        .await
        .expect("the SDK script finishes within 5 minutes")
        .expect("python runs (scripts/test.sh installs the pinned openai package into target/py)");
    assert!(
        out.status.success(),
        "the SDK script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("the SDK script saw: {seen}");
    assert_eq!(seen["completed"], 12, "{seen}");
    assert_eq!(seen["failed"], 3, "{seen}");
    assert_eq!(seen["cancelled_lines"], 2, "{seen}");

    // The job behind a batch, the Switchyard way: its team, its items, its spend.
    let batch = seen["batch"].as_str().unwrap();
    let status = common::run(&cfg, &["status", batch, "--json"]);
    assert!(status.status.success(), "{}", common::stderr(&status));
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["team"], "team-a", "{s}");
    assert_eq!(s["task_kind"], "chat", "{s}");
    assert_eq!(s["items_by_state"]["done"], 12, "{s}");
    assert_eq!(s["items_by_state"]["failed"], 1, "{s}");
    let cost: f64 = s["cost_usd"].as_str().unwrap().parse().unwrap();
    assert!(cost > 0.0, "{s}");
    // Finance sees the batch's spend under its team, as any job's.
    let report = common::run(
        &cfg,
        &[
            "ledger",
            "report",
            "--group-by",
            "team,job",
            "--team",
            "team-a",
            "--format",
            "csv",
            "--from-ledger",
        ],
    );
    assert!(report.status.success(), "{}", common::stderr(&report));
    let csv = common::stdout(&report);
    let row = csv
        .lines()
        .find(|l| l.contains(batch))
        .unwrap_or_else(|| panic!("no row of {batch} in\n{csv}"));
    assert!(row.contains(&format!("team team-a, job {batch}")), "{row}");
    for mut api in apis {
        assert_eq!(api.terminate(Duration::from_secs(10)).await, Some(0));
    }
    sim.shutdown().await;
}

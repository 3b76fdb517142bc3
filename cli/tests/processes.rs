//! The `switchyard` binary as users and pipelines run it: a dispatcher and a worker as real
//! processes, jobs submitted with `submit --wait`, exit codes, exports, SIGTERM. The model
//! provider is the simulator (in this test process, over real HTTP).

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use switchyard_sim::{Faults, SimConfig};
use switchyard_testkit::{TestDb, TestNats};

mod common;
use common::{fleet_config as config, run, start, stderr, stdout};

/// `submit ITEMS --task classify --labels A,B,C,D EXTRA… --wait --timeout 90s`, off the
/// test's runtime (it blocks until the job ends).
async fn submit_and_wait(cfg: &Path, items: &Path, extra: &[&str]) -> Output {
    let items = items.to_str().unwrap();
    let mut args = vec!["submit", items, "--task", "classify", "--labels", "A,B,C,D"];
    args.extend(extra);
    args.extend(["--wait", "--timeout", "90s"]);
    let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    let cfg = cfg.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&cfg, &args)
    })
    .await
    .unwrap()
}

fn write_items(dir: &Path, n: usize) -> PathBuf {
    let data = switchyard_demo::bundled_dataset().unwrap();
    let mut lines = String::new();
    for r in data.records().filter(|r| r.choices.is_some()).take(n) {
        lines.push_str(
            &serde_json::json!({"id": r.id, "text": r.prompt, "queue": "q1"}).to_string(),
        );
        lines.push('\n');
    }
    let path = dir.join(format!("items-{n}.jsonl"));
    std::fs::write(&path, lines).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_submits_waits_exports_and_gets_exit_codes() {
    let nats = TestNats::new().await;
    let db = TestDb::new().await;
    let data = Arc::new(switchyard_demo::bundled_dataset().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = switchyard_sim::start(listener, data, SimConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &nats, &db, &sim.base_url());
    // No circuit breaker here: after the all-errors phase below, a breaker left open (its last
    // probe failed) would spend the retried items' two deliveries before its next probe, and
    // this test is about exit codes (the breaker has tests of its own in `worker`).
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[worker.breaker]\nfailures = 0\n");
    std::fs::write(&cfg, text).unwrap();

    let check = run(&cfg, &["--check-config"]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(stdout(&check).contains("[tiers.local]"));

    let _dispatcher = start(&cfg, &["dispatcher"], &[]);
    let mut worker = start(&cfg, &["worker", "--tier", "weak,strong,local"], &[]);

    // A job that completes: exit 0, the job id on stdout.
    let items = write_items(dir.path(), 30);
    let submit = submit_and_wait(
        &cfg,
        &items,
        &["--policy", "strong-share=0.2", "--team", "ops"],
    )
    .await;
    assert_eq!(submit.status.code(), Some(0), "{}", stderr(&submit));
    let job = stdout(&submit).trim().to_owned();

    let status = run(&cfg, &["status", &job, "--json"]);
    assert!(status.status.success());
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["status"], "completed");
    assert_eq!(s["team"], "ops");
    assert_eq!(s["items_by_state"]["done"], 30);
    assert_eq!(s["routed_by_tier"]["strong"], 6);
    assert!(s["cost_usd"].as_str().unwrap().parse::<f64>().unwrap() > 0.0);

    let csv = run(&cfg, &["results", &job, "--format", "csv"]);
    assert!(csv.status.success());
    let text = stdout(&csv);
    assert_eq!(text.lines().count(), 31);
    assert!(text.starts_with(
        "item_id,status,routed_tier,final_tier,model,answer,confidence,attempts,cost_usd,error"
    ));
    let jsonl = run(&cfg, &["results", &job, "--format", "jsonl"]);
    let first: serde_json::Value =
        serde_json::from_str(stdout(&jsonl).lines().next().unwrap()).unwrap();
    assert_eq!(
        first["metadata"]["queue"], "q1",
        "extra input fields come back as metadata"
    );

    // A job whose items all fail: exit 3 with a summary; then retry --failed and wait: exit 0.
    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let items5 = write_items(dir.path(), 5);
    let failing = submit_and_wait(&cfg, &items5, &[]).await;
    assert_eq!(failing.status.code(), Some(3), "{}", stderr(&failing));
    assert!(
        stderr(&failing).contains("dead letter"),
        "{}",
        stderr(&failing)
    );
    let failed_job = stdout(&failing).trim().to_owned();
    sim.set_faults(Faults::default());
    let retry = run(&cfg, &["retry", &failed_job, "--failed"]);
    assert!(retry.status.success(), "{}", stderr(&retry));
    let waited = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || run(&cfg, &["wait", &failed_job, "--timeout", "60s"])
    })
    .await
    .unwrap();
    assert_eq!(waited.status.code(), Some(0), "{}", stderr(&waited));

    // Bad input: the file and line are named, exit 1; an unknown job is exit 7.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\": \"1\", \"text\": \"ok\"}\n{\"id\": \"2\"}\n").unwrap();
    let out = run(
        &cfg,
        &["submit", bad.to_str().unwrap(), "--task", "summarize"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bad.jsonl:2: missing `text`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(run(&cfg, &["status", "no-such-job"]).status.code(), Some(7));

    // SIGTERM: the worker drains and exits 0.
    let code = worker.terminate(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0));
    sim.shutdown().await;
}

#[test]
fn a_bad_config_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[worker]\nconcurency = 4\n").unwrap();
    let out = run(&path, &["--check-config"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("concurency"), "{}", stderr(&out));
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/switchyard.example.toml"
    );
    let out = run(Path::new(example), &["--check-config"]);
    assert!(
        out.status.success(),
        "the example config must stay valid: {}",
        stderr(&out)
    );
}

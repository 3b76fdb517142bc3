//! A job submitted by a client that is not ours (Python nats-py + msgpack) is processed.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::{Harness, mmlu_items};

fn python() -> String {
    std::env::var("SWITCHYARD_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

#[tokio::test]
async fn a_job_from_python_is_processed() {
    let h = Harness::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/submit_job.py");
    let mut child = Command::new(python())
        .arg(script)
        .arg(switchyard_testkit::nats_url())
        .arg(&h.nats.prefix)
        .arg("py-job-1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test.sh installs nats-py and msgpack into target/py)");
    {
        let mut stdin = child.stdin.take().unwrap();
        for it in mmlu_items(16) {
            writeln!(
                stdin,
                "{}",
                serde_json::json!({"id": it.item_id, "text": it.text})
            )
            .unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python client failed (run scripts/test.sh, which installs nats-py and msgpack): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = h.wait_final("py-job-1", 60).await;
    assert_eq!(status.job.status, "completed");
    assert_eq!(status.job.team, "python-team");
    assert_eq!(status.done(), 16);
    assert_eq!(status.routed_by_tier.get("strong"), Some(&4));
    assert_eq!(h.ledger("py-job-1").await.len(), 16);
    h.finish().await;
}

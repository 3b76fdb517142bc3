//! Configuration as a user meets it: without `--config` there is no fleet, and the roles that
//! call models refuse to start and say what to do; `switchyard config demo` prints a fleet
//! that `--check-config` accepts.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Runs the binary with no configuration from the environment, killing it if it is still
/// running after `limit` (a role that started would run until stopped).
fn run_bounded(args: &[&str], limit: Duration) -> (Option<Output>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("SWITCHYARD_CONFIG")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stderr).into_owned();
            return (Some(out), text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    (None, String::new())
}

#[test]
fn roles_without_a_fleet_refuse_to_start() {
    for args in [&["dispatcher"][..], &["worker", "--tier", "weak"]] {
        let (out, stderr) = run_bounded(args, Duration::from_secs(30));
        let out = out.unwrap_or_else(|| panic!("`switchyard {}` started", args.join(" ")));
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no models configured") && stderr.contains("switchyard config demo"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn config_demo_prints_a_fleet_check_config_accepts() {
    let (out, stderr) = run_bounded(&["config", "demo"], Duration::from_secs(30));
    let out = out.unwrap();
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, switchyard_runtime::settings::DEMO_TOML);
    let settings = switchyard_runtime::Settings::from_toml(&text).unwrap();
    settings.validate().unwrap();
    settings.require_fleet().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, &text).unwrap();
    let (out, stderr) = run_bounded(
        &["--config", path.to_str().unwrap(), "--check-config"],
        Duration::from_secs(30),
    );
    let out = out.unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("[tiers.local]"));
}

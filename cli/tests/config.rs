//! Configuration as a user meets it: without `--config` there is no fleet, and the roles that
//! call models refuse to start and say what to do; `switchyard config demo` prints a fleet
//! that `--check-config` accepts.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::process::Output;
use std::time::Duration;

use switchyard_testkit::procs::Role;

mod common;

/// Runs the binary with no configuration from the environment, killing it if it is still
/// running after `limit` (a role that started would run until stopped).
fn run_bounded(args: &[&str], limit: Duration) -> (Option<Output>, String) {
    let out = Role::new(
        "switchyard",
        &args.join(" "),
        args,
        "unused".into(),
        None,
        vec![],
    )
    .with_program(common::BIN.into())
    .without_config()
    .without_env(&["SWITCHYARD_CONFIG", "NATS_URL", "DATABASE_URL"])
    .output_within(limit)
    .unwrap();
    let text = out
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    (out, text)
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

//! `switchyard quote` and the `router` commands that need a configuration or a database, as a
//! user runs them: flags, JSON output, exit codes and error messages.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::path::{Path, PathBuf};
use std::process::Output;

use rust_decimal::Decimal;
use switchyard_testkit::TestDb;

mod common;

/// A configuration with one routing rule (`urgent` forces strong) and the test's database.
fn config(dir: &Path, db: &TestDb) -> PathBuf {
    let model = |name: &str, tier: &str, input: &str, output: &str| {
        format!(
            "[models.\"{name}\"]\ntier = \"{tier}\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             input_usd_per_mtok = \"{input}\"\noutput_usd_per_mtok = \"{output}\"\n\n"
        )
    };
    let text = format!(
        "[database]\nurl = \"{}\"\nmax_connections = 2\n\n\
         [[routing.rules]]\nname = \"urgent\"\nkeywords = [\"urgent\"]\ntier = \"strong\"\n\n\
         {}{}\
         [tiers.weak]\ndefault_model = \"small\"\nescalate_to = \"strong\"\n\n\
         [tiers.strong]\ndefault_model = \"big\"\n",
        db.url,
        model("small", "weak", "0.5", "1.5"),
        model("big", "strong", "10", "30"),
    );
    let path = dir.join("fleet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn items(dir: &Path) -> PathBuf {
    let path = dir.join("items.jsonl");
    let mut text = String::new();
    for i in 0..40 {
        let body = if i == 7 {
            "URGENT: the refund for order 7 never arrived, please escalate.".to_owned()
        } else {
            format!(
                "Ticket {i}: {} about the invoice and the delivery date.",
                "a question ".repeat(i % 9 + 1)
            )
        };
        text.push_str(&serde_json::json!({"id": format!("t{i}"), "text": body}).to_string());
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn run(cfg: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--log-format", "json"];
    all.extend(args);
    common::run(cfg, &all)
}

fn stdout_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn usd(v: &serde_json::Value) -> Decimal {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn quote_and_explain_a_file_row_route_the_same_way() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, file) = (config(dir.path(), &db), items(dir.path()));
    let file = file.to_str().unwrap();
    let task = ["--task", "classify", "--labels", "refund,delivery,other"];

    let base = stdout_json(&run(
        &cfg,
        &[
            &["quote", file][..],
            &task,
            &["--policy", "strong-share=0", "--json"],
        ]
        .concat(),
    ));
    assert_eq!(base["prices"], "configuration");
    assert_eq!(base["items"], 40);
    assert_eq!(base["by_rule"]["urgent"], 1);
    assert_eq!(base["by_tier"]["strong"], 1, "only the forced item");
    let (lo, hi) = (
        usd(&base["cost_all_weak_usd"]),
        usd(&base["cost_all_strong_usd"]),
    );
    assert!(lo < hi);

    let budget = ((lo + hi) / Decimal::TWO).round_dp(6);
    let policy = format!("budget-usd={budget},shadow=0.1");
    let q = stdout_json(&run(
        &cfg,
        &[
            &["quote", file][..],
            &task,
            &["--policy", &policy, "--json"],
        ]
        .concat(),
    ));
    assert!(usd(&q["expected_cost_usd"]) <= budget);
    assert!(usd(&q["shadow_cost_usd"]) > Decimal::ZERO);
    let strong = q["by_tier"]["strong"].as_u64().unwrap();
    assert!(strong > 1 && strong < 40, "{q}");
    assert!(q["predicted_quality"].as_f64().unwrap() > q["quality_all_weak"].as_f64().unwrap());

    // Every row's explanation says the same tier as the quote's counts.
    let mut strong_rows = 0;
    for i in 0..40 {
        let id = format!("t{i}");
        let e = stdout_json(&run(
            &cfg,
            &[
                &["router", "explain", "--file", file, "--item", &id][..],
                &task,
                &["--policy", &policy, "--json"],
            ]
            .concat(),
        ));
        if e["tier"] == "strong" {
            strong_rows += 1;
        }
        if i == 7 {
            assert_eq!(e["rule"], "urgent");
            assert_eq!(e["forced_tier"], "strong");
        }
    }
    assert_eq!(strong_rows, strong);

    // The text form names the rule and the cut.
    let out = run(
        &cfg,
        &[
            &["router", "explain", "--file", file, "--item", "t7"][..],
            &task,
            &["--policy", &policy],
        ]
        .concat(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("`urgent` forces tier `strong`"), "{text}");
    let out = run(
        &cfg,
        &[
            &["router", "explain", "--file", file, "--item", "t3"][..],
            &task,
            &["--policy", &policy],
        ]
        .concat(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("gain per extra dollar"), "{text}");
}

#[tokio::test]
async fn bad_policies_unknown_jobs_and_an_empty_fleet_are_clear_errors() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, file) = (config(dir.path(), &db), items(dir.path()));
    let file = file.to_str().unwrap();
    let task = ["--task", "classify", "--labels", "a,b"];

    let out = run(
        &cfg,
        &[&["quote", file][..], &task, &["--policy", "quality=2"]].concat(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside (0, 1]"));

    let out = run(
        &cfg,
        &[
            &["quote", file][..],
            &task,
            &["--policy", "budget-usd=0.0000001"],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("below the job's expected cost"), "{err}");

    let out = run(
        &cfg,
        &[
            &["quote", file][..],
            &task,
            &["--policy", "quality=0.9,strong-share=0.1"],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("two routing rules"));

    let out = run(&cfg, &["quote", file, "--policy", "quality=0.9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--task is required"));

    let out = run(&cfg, &["router", "explain", "no-such-job", "x"]);
    assert_eq!(out.status.code(), Some(7));
    let out = run(&cfg, &["router", "audit", "no-such-job", "--by", "lang"]);
    assert_eq!(out.status.code(), Some(7));

    let out = run(
        &cfg,
        &[
            "router",
            "train",
            "--from-db",
            "--team",
            "support",
            "--out",
            "x.json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no items with both a weak and a strong answer"),
        "{err}"
    );
}

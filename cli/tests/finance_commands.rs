//! The finance commands as finance runs them: `prices`, `budget`, `ledger` and `purge` on the
//! real binary against a database of the test's own. Bad input gets a clear message and a
//! non-zero exit, and writes nothing.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use switchyard_testkit::TestDb;

mod common;
use common::stderr;

const MODEL: &str = "gpt-4-1106-preview";

/// The demo fleet's configuration, written once per test process: the commands price its
/// models without `--provider`, as a deployment prices the models it configured.
fn demo_config() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("finance-fleet-{}.toml", std::process::id()));
        std::fs::write(&path, switchyard_runtime::settings::DEMO_TOML).unwrap();
        path
    })
}

/// `switchyard --config DEMO ARGS…` on the test's database (`DATABASE_URL`).
fn run(db: &TestDb, args: &[&str]) -> Output {
    common::switchyard(demo_config(), args, &[("DATABASE_URL", &db.url)])
        .output()
        .unwrap()
}

/// `prices set MODEL ARGS…`, which must succeed.
fn set_price(db: &TestDb, args: &[&str]) {
    let mut all = vec!["prices", "set", MODEL];
    all.extend(args);
    let out = run(db, &all);
    assert!(out.status.success(), "{}", stderr(&out));
}

async fn counts(db: &TestDb) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM prices), (SELECT count(*) FROM budgets), \
         (SELECT count(*) FROM ledger)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_finance_input_is_refused_clearly_and_writes_nothing() {
    let db = TestDb::new().await;
    set_price(
        &db,
        &[
            "--input-per-mtok",
            "10",
            "--output-per-mtok",
            "30",
            "--cached-input-per-mtok",
            "5",
            "--batch-discount",
            "50%",
            "--effective-from",
            "2030-01-01T00:00:00Z",
        ],
    );
    let before = counts(&db).await;
    assert_eq!(before, (1, 0, 0));

    let price = |input: &str, from: &str| {
        vec![
            "prices".to_owned(),
            "set".to_owned(),
            MODEL.to_owned(),
            "--input-per-mtok".to_owned(),
            input.to_owned(),
            "--output-per-mtok".to_owned(),
            "1".to_owned(),
            "--effective-from".to_owned(),
            from.to_owned(),
        ]
    };
    let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    let ghosts_budget = |more: &[&str]| s(&[&["budget", "set", "--team", "ghosts"], more].concat());
    let cases: Vec<(Vec<String>, u8, &str)> = vec![
        (price("-1", "now"), 1, "must not be negative"),
        (price("50000", "now"), 1, "absurd"),
        (price("ten", "now"), 2, "not a decimal number"),
        (price("1", "2026-13-01"), 2, "is not a time"),
        (price("1", "next tuesday"), 2, "is not a time"),
        (price("1", "2030-01-01T00:00:00Z"), 1, "would overlap"),
        (
            s(&[
                "prices",
                "set",
                "no-such-model",
                "--input-per-mtok",
                "1",
                "--output-per-mtok",
                "1",
                "--effective-from",
                "now",
            ]),
            1,
            "unknown model `no-such-model`",
        ),
        (
            s(&[
                "prices",
                "set",
                MODEL,
                "--input-per-mtok",
                "1",
                "--output-per-mtok",
                "1",
                "--batch-discount",
                "1.5",
                "--effective-from",
                "now",
            ]),
            1,
            "batch discount",
        ),
        (
            ghosts_budget(&["--monthly", "100"]),
            1,
            "unknown team `ghosts`",
        ),
        (
            ghosts_budget(&["--monthly", "-5", "--new-team"]),
            1,
            "must be positive",
        ),
        (
            ghosts_budget(&["--monthly", "10", "--soft", "20", "--new-team"]),
            1,
            "below the hard limit",
        ),
        (
            s(&["budget", "show", "--team", "ghosts"]),
            1,
            "unknown team",
        ),
        (
            s(&["ledger", "correct", "424242", "--reason", "typo"]),
            1,
            "no ledger entry 424242",
        ),
        (
            s(&["ledger", "correct", "1", "--reason", " "]),
            1,
            "needs a reason",
        ),
        (
            s(&["ledger", "report", "--from", "yesterday"]),
            2,
            "is not a time",
        ),
        (
            s(&["ledger", "report", "--group-by", "colour"]),
            1,
            "cannot group by `colour`",
        ),
        (
            s(&["ledger", "report", "--group-by", "day,month"]),
            1,
            "not both",
        ),
        (
            s(&[
                "ledger",
                "report",
                "--from",
                "2026-12-01",
                "--to",
                "2026-11-01",
            ]),
            1,
            "is not before",
        ),
        (
            s(&["ledger", "report", "--team", "ghosts"]),
            1,
            "unknown team",
        ),
        (s(&["purge"]), 1, "--older-than"),
        (s(&["purge", "--older-than", "a while"]), 2, "not an age"),
        (
            s(&["ledger", "grant-finance", "Finance Team"]),
            1,
            "not a usable role name",
        ),
    ];
    for (args, code, message) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&db, &args);
        assert_eq!(
            out.status.code(),
            Some(i32::from(code)),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(
        counts(&db).await,
        before,
        "a refused command wrote something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finance_sets_and_reads_prices_budgets_and_reports() {
    let db = TestDb::new().await;
    set_price(
        &db,
        &[
            "--input-per-mtok",
            "12.5",
            "--output-per-mtok",
            "37.5",
            "--effective-from",
            "2026-01-01",
        ],
    );
    let out = run(
        &db,
        &["prices", "list", "--at", "2026-06-01", "--format", "json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["model"], MODEL);
    assert_eq!(listed[0]["input_usd_per_mtok"], "12.5");
    assert_eq!(listed[0]["effective_from"], "2026-01-01T00:00:00Z");
    let out = run(&db, &["prices", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("in force"));

    let out = run(
        &db,
        &[
            "budget",
            "set",
            "--team",
            "support",
            "--monthly",
            "250",
            "--soft",
            "200",
            "--when-exhausted",
            "wait",
            "--new-team",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&db, &["budget", "show", "--format", "json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown[0]["team"], "support");
    assert_eq!(shown[0]["monthly_usd"], "250");
    assert_eq!(shown[0]["available_usd"], "250");
    assert_eq!(shown[0]["when_exhausted"], "wait");

    let out = run(
        &db,
        &[
            "ledger",
            "report",
            "--group-by",
            "team,model",
            "--format",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = run(
        &db,
        &["ledger", "report", "--group-by", "team", "--format", "csv"],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("BilledCost,EffectiveCost"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(&db, &["purge", "--older-than", "30d", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("the ledger is untouched"));
}

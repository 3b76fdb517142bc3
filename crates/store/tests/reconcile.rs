//! Reconciliation against a provider's usage evidence, on a real Postgres (a database per
//! test): in-doubt and estimated entries are settled by a reversal plus an evidence entry,
//! never by an edit; calls never billed go to zero; billed calls the ledger lacks are booked;
//! a dry run writes nothing; a second run changes nothing.
#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::time::Duration;

use chrono::Utc;
use rust_decimal::Decimal;
use sqlx::PgPool;
use switchyard_store::booking::Counterfactual;
use switchyard_store::intents::{self, Intent};
use switchyard_store::outcomes::{self, Outcome, UsageSource};
use switchyard_store::reconcile::{self, CallUsage, Evidence, Summary};
use switchyard_testkit::TestDb;
use switchyard_testkit::ledger::ledger_total;

mod common;
use common::d;

const JOB: &str = "job-r";
const MODEL: &str = "m";

/// A running job with items `item-1..=n`, queued, and [`MODEL`] at $1 / $2 per million
/// tokens since 2020.
async fn setup(n: i64) -> TestDb {
    common::priced_job(JOB, MODEL, n).await
}

/// An intent of item `item` at 1,000 prompt tokens and 500 completion tokens at most
/// (worst case $0.002).
fn intent(item: i64, id: &str) -> Intent {
    Intent {
        call_id: id.to_owned(),
        key: common::key(JOB, item, 0),
        team: "team".to_owned(),
        project: "proj".to_owned(),
        tier: "weak".to_owned(),
        model: MODEL.to_owned(),
        provider: "test".to_owned(),
        prompt_bound: 1_000,
        max_tokens: 500,
        escalation: false,
        all_strong: Counterfactual::Own,
        all_weak: Counterfactual::Own,
        held: false,
    }
}

fn answered(item: i64, id: &str, tokens: i32, source: UsageSource) -> Outcome {
    Outcome::Answered {
        key: common::key(JOB, item, 0),
        tier: "weak".to_owned(),
        answer: "A".to_owned(),
        raw_answer: None,
        finish_reason: None,
        confidence: 0.9,
        escalated_to: None,
        call: common::weak_call(id, MODEL, tokens, source, Utc::now()),
    }
}

fn usage(id: &str, model: &str, billed: bool, pt: i64, ct: i64) -> CallUsage {
    CallUsage {
        call_id: id.to_owned(),
        model: Some(model.to_owned()),
        billed,
        prompt_tokens: pt,
        cached_prompt_tokens: 0,
        completion_tokens: ct,
        cost_usd: None,
        at: None,
    }
}

/// Every ledger row as text, by entry id: what "never edited" is checked against.
async fn rows(pool: &PgPool) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT entry_id, row_to_json(l)::text FROM ledger l ORDER BY entry_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn reconcile_settles_by_reversal_and_evidence_entry_once_and_never_edits() {
    let db = setup(7).await;
    let pool = &db.pool;
    let lease = Duration::from_secs(60);
    // A dead worker's four calls (items 1-4), booked in doubt at $0.002 each.
    intents::renew_lease(pool, "dead", lease).await.unwrap();
    let claimed = intents::claim(
        pool,
        "dead",
        Duration::ZERO,
        &[
            intent(1, "x1"),
            intent(2, "x2"),
            intent(3, "x3"),
            intent(4, "x4"),
        ],
    )
    .await
    .unwrap();
    assert!(claimed.iter().all(|c| *c == intents::Claim::Claimed));
    intents::drop_lease(pool, "dead").await.unwrap();
    let swept = intents::book_in_doubt(pool, Duration::ZERO, 100)
        .await
        .unwrap();
    assert_eq!(swept.len(), 4);
    // Item 5: the provider sent no usage; item 7: it did. Item 6: a live worker is calling.
    outcomes::commit(
        pool,
        &[
            answered(5, "e5", 100, UsageSource::Estimated),
            answered(7, "p7", 50, UsageSource::Provider),
        ],
    )
    .await
    .unwrap();
    intents::renew_lease(pool, "alive", lease).await.unwrap();
    intents::claim(pool, "alive", Duration::ZERO, &[intent(6, "f6")])
        .await
        .unwrap();
    let (open, open_usd) = intents::unsettled_in_doubt(pool).await.unwrap();
    assert_eq!((open, open_usd), (4, d("0.008")));

    let mut evidence = Evidence::default();
    for u in [
        usage("x1", MODEL, true, 200, 30),
        usage("x2", MODEL, false, 0, 0),
        usage("x3", "another-model", true, 10, 10),
        usage("e5", MODEL, true, 120, 40),
        usage("f6", MODEL, true, 1, 1),
        usage("ghost", MODEL, true, 10, 10),
        usage("p7", MODEL, true, 50, 50),
    ] {
        evidence.add(u);
    }
    let before_rows = rows(pool).await;
    let before_total = ledger_total(pool).await;

    // A dry run says what would happen and writes nothing.
    let dry = reconcile::reconcile(pool, &evidence, true).await.unwrap();
    assert_eq!(rows(pool).await, before_rows, "a dry run writes nothing");

    let first = reconcile::reconcile(pool, &evidence, false).await.unwrap();
    let expected = Summary {
        dry_run: false,
        evidence_calls: 7,
        settled: 2,          // x1, e5
        reversed_to_zero: 1, // x2
        booked_missing: 1,   // ghost
        unchanged: 1,        // p7
        not_in_evidence: 1,  // x4
        in_flight: 1,        // f6
        model_mismatch: 1,   // x3
        cost_disagreements: 0,
        // x1: 200 × $1/M + 30 × $2/M − 0.002; x2: −0.002; e5: 120 + 80 µ$ − 0.0003;
        // ghost: +0.00003.
        usd_delta: d("-0.00381"),
    };
    assert_eq!(first, expected);
    assert_eq!(
        Summary {
            dry_run: false,
            ..dry
        },
        expected,
        "the dry run said exactly what the run did"
    );
    assert_eq!(ledger_total(pool).await - before_total, d("-0.00381"));

    // Never an edit: every earlier row is as it was; the new ones are reversals and evidence.
    let after_rows = rows(pool).await;
    assert_eq!(&after_rows[..before_rows.len()], &before_rows[..]);
    let added: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT l.call_id, l.kind, l.usage_source, s.call_id FROM ledger l \
         LEFT JOIN ledger s ON s.entry_id = COALESCE(l.settles_entry_id, l.reverses_entry_id) \
         WHERE l.entry_id > $1 ORDER BY l.call_id",
    )
    .bind(before_rows.last().unwrap().0)
    .fetch_all(pool)
    .await
    .unwrap();
    let added: Vec<(&str, &str, &str, Option<&str>)> = added
        .iter()
        .map(|(a, b, c, s)| (a.as_str(), b.as_str(), c.as_str(), s.as_deref()))
        .collect();
    let e5_entry: i64 = sqlx::query_scalar("SELECT entry_id FROM ledger WHERE call_id = 'e5'")
        .fetch_one(pool)
        .await
        .unwrap();
    let x1_entry: i64 = sqlx::query_scalar("SELECT entry_id FROM ledger WHERE call_id = 'x1'")
        .fetch_one(pool)
        .await
        .unwrap();
    let x2_entry: i64 = sqlx::query_scalar("SELECT entry_id FROM ledger WHERE call_id = 'x2'")
        .fetch_one(pool)
        .await
        .unwrap();
    let rev = |e: i64| format!("reversal:{e}");
    let (r5, r1, r2) = (rev(e5_entry), rev(x1_entry), rev(x2_entry));
    let mut want = vec![
        ("e5:evidence", "call", "evidence", Some("e5")),
        ("ghost:evidence", "call", "evidence", None),
        (r5.as_str(), "reversal", "estimated", Some("e5")),
        (r1.as_str(), "reversal", "worst_case", Some("x1")),
        (r2.as_str(), "reversal", "worst_case", Some("x2")),
        ("x1:evidence", "call", "evidence", Some("x1")),
    ];
    want.sort();
    assert_eq!(added, want);
    // The evidence entry of x1 keeps the call's identity and price time, at the real usage.
    let (outcome, pt, ct, cost, same_time): (String, i32, i32, Decimal, bool) = sqlx::query_as(
        "SELECT e.outcome, e.prompt_tokens, e.completion_tokens, e.cost_usd, \
         e.priced_at = o.priced_at FROM ledger e JOIN ledger o ON o.entry_id = e.settles_entry_id \
         WHERE e.call_id = 'x1:evidence'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (outcome.as_str(), pt, ct, cost, same_time),
        ("in_doubt", 200, 30, d("0.00026"), true)
    );
    let team: String =
        sqlx::query_scalar("SELECT team FROM ledger WHERE call_id = 'ghost:evidence'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(team, reconcile::UNATTRIBUTED);

    // Still open: x3 (wrong model in the evidence) and x4 (no evidence), and the rollup says
    // the same as the ledger.
    let (open, open_usd) = intents::unsettled_in_doubt(pool).await.unwrap();
    assert_eq!((open, open_usd), (2, d("0.004")));
    let rollup: Decimal = sqlx::query_scalar("SELECT sum(in_doubt_cost_usd) FROM ledger_daily")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(rollup, d("0.004"));

    // Again: nothing changes.
    let again = reconcile::reconcile(pool, &evidence, false).await.unwrap();
    assert_eq!(rows(pool).await, after_rows, "a second run writes nothing");
    assert_eq!(
        again,
        Summary {
            settled: 0,
            reversed_to_zero: 0,
            booked_missing: 0,
            unchanged: 5, // x1, x2, e5 and ghost now, with p7
            usd_delta: Decimal::ZERO,
            ..expected
        }
    );

    // Declared complete (the provider's whole log), the evidence proves x4 was never billed.
    evidence.set_complete(true);
    let complete = reconcile::reconcile(pool, &evidence, false).await.unwrap();
    assert_eq!(
        (
            complete.reversed_to_zero,
            complete.not_in_evidence,
            complete.model_mismatch
        ),
        (1, 0, 1)
    );
    assert_eq!(complete.usd_delta, d("-0.002"));
    let (open, _) = intents::unsettled_in_doubt(pool).await.unwrap();
    assert_eq!(open, 1, "only x3 (evidence of another model) is still open");
}

#[tokio::test]
async fn reconcile_refuses_bad_evidence_and_unpriced_models_writing_nothing() {
    let db = setup(1).await;
    let pool = &db.pool;
    let mut evidence = Evidence::default();
    evidence.add(usage("ghost", "unpriced-model", true, 10, 10));
    let e = reconcile::reconcile(pool, &evidence, false)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("unpriced-model") && e.to_string().contains("ghost"),
        "{e}"
    );
    let mut evidence = Evidence::default();
    let mut bad = usage("c", MODEL, true, 5, 5);
    bad.cached_prompt_tokens = 6;
    evidence.add(bad);
    let e = reconcile::reconcile(pool, &evidence, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cached_prompt_tokens 6"), "{e}");
    assert!(rows(pool).await.is_empty());
}

//! Exactly-once rules of the store, against a real Postgres (a database per test): who
//! decides an item when two copies of an attempt are committed, what shadow, audit and stale
//! outcomes may change, claims and in-doubt bookings, and budget months.
#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;
use switchyard_store::budgets::{self, BudgetSpec, HoldRequest, Reservation, WhenExhausted};
use switchyard_store::intents::{self, Claim, Intent};
use switchyard_store::outcomes::{self, AttemptKey, CallEntry, Outcome, UsageSource};
use switchyard_testkit::TestDb;

mod common;
use common::{d, price_since_2020};

const JOB: &str = "job-x";
const MODEL: &str = "m";

/// A running job with items `item-1..=n`, queued, and [`MODEL`] at $1 / $2 per million
/// tokens since 2020.
async fn setup(n: i64) -> TestDb {
    common::priced_job(JOB, MODEL, n).await
}

fn key(item: i64, attempt: i32) -> AttemptKey {
    common::key(JOB, item, attempt)
}

fn call(id: &str, tokens: i32, at: DateTime<Utc>) -> CallEntry {
    common::weak_call(id, MODEL, tokens, UsageSource::Provider, at)
}

fn answered(item: i64, attempt: i32, id: &str, escalated_to: Option<&str>) -> Outcome {
    let answer = format!("answer of {id}");
    answer_with(
        item,
        attempt,
        escalated_to,
        &answer,
        None,
        call(id, 100, Utc::now()),
    )
}

fn answer_with(
    item: i64,
    attempt: i32,
    escalated_to: Option<&str>,
    answer: &str,
    raw_answer: Option<&str>,
    call: CallEntry,
) -> Outcome {
    Outcome::Answered {
        key: key(item, attempt),
        tier: "weak".to_owned(),
        answer: answer.to_owned(),
        raw_answer: raw_answer.map(str::to_owned),
        finish_reason: None,
        confidence: 0.5,
        escalated_to: escalated_to.map(str::to_owned),
        call,
    }
}

fn failed(item: i64, attempt: i32) -> Outcome {
    Outcome::Failed {
        key: key(item, attempt),
        subject: "sy.work.weak".to_owned(),
        deliveries: 5,
        error: "gave up".to_owned(),
        call: None,
        intent: None,
    }
}

async fn item(pool: &PgPool, item: i64) -> (String, i32, Option<i32>) {
    sqlx::query_as(
        "SELECT status, attempt, final_attempt FROM items WHERE job_id = $1 AND item_id = $2",
    )
    .bind(JOB)
    .bind(format!("item-{item}"))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// `owner`, alive, claims attempt 0 of item 1 for its call `call_id`.
async fn claimed_by(pool: &PgPool, owner: &str, call_id: &str) {
    intents::renew_lease(pool, owner, Duration::from_secs(60))
        .await
        .unwrap();
    let claimed = intents::claim(pool, owner, Duration::ZERO, &[intent(1, 0, call_id)])
        .await
        .unwrap();
    assert_eq!(claimed, vec![Claim::Claimed]);
}

/// Intents still open, of any owner.
async fn open_intents(pool: &PgPool) -> i64 {
    intents::open_intents(pool, Duration::ZERO).await.unwrap().0
}

/// Rows in the ledger, of every job.
async fn ledger_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn outcome_of(pool: &PgPool, call_id: &str) -> String {
    sqlx::query_scalar("SELECT outcome FROM ledger WHERE call_id = $1")
        .bind(call_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn of_two_copies_of_an_attempt_the_first_decides_and_the_second_is_a_booked_duplicate() {
    let db = setup(2).await;
    // Item 1: both copies answer; item 2: the first copy escalates, the second would not.
    let first = outcomes::commit(
        &db.pool,
        &[
            answered(1, 0, "c1a", None),
            answered(2, 0, "c2a", Some("strong")),
        ],
    )
    .await
    .unwrap();
    assert_eq!(first.decided.len(), 2);
    assert_eq!(first.duplicates, 0);
    let second = outcomes::commit(
        &db.pool,
        &[answered(1, 0, "c1b", None), answered(2, 0, "c2b", None)],
    )
    .await
    .unwrap();
    assert!(
        second.decided.is_empty(),
        "the second copies decide nothing"
    );
    assert_eq!(second.duplicates, 2);
    assert_eq!(outcome_of(&db.pool, "c1a").await, "ok");
    assert_eq!(outcome_of(&db.pool, "c1b").await, "duplicate");
    assert_eq!(outcome_of(&db.pool, "c2b").await, "duplicate");
    assert_eq!(item(&db.pool, 1).await, ("done".to_owned(), 0, Some(0)));
    // The escalation stands: the item waits for attempt 1 (the duplicate did not finish it).
    assert_eq!(item(&db.pool, 2).await, ("queued".to_owned(), 1, None));
    let rows = ledger_rows(&db.pool).await;
    assert_eq!(rows, 4, "every call is booked, once");
}

/// A commit tried again after Postgres committed it but its reply was lost: the same
/// outcomes, the same calls. They are reported decided again (so the escalation is
/// published and the item counted, which the first try's caller never learnt), and nothing
/// is booked or moved twice.
#[tokio::test]
async fn a_commit_tried_again_after_its_reply_was_lost_still_reports_what_it_decided() {
    let db = setup(2).await;
    let batch = [
        answered(1, 0, "c1", None),
        answered(2, 0, "c2", Some("strong")),
    ];
    let first = outcomes::commit(&db.pool, &batch).await.unwrap();
    assert_eq!(first.decided.len(), 2);
    let again = outcomes::commit(&db.pool, &batch).await.unwrap();
    assert_eq!(again.decided, first.decided);
    assert_eq!(again.duplicates, 0);
    assert_eq!(outcome_of(&db.pool, "c2").await, "ok");
    assert_eq!(item(&db.pool, 1).await, ("done".to_owned(), 0, Some(0)));
    assert_eq!(item(&db.pool, 2).await, ("queued".to_owned(), 1, None));
    let rows = ledger_rows(&db.pool).await;
    assert_eq!(rows, 2);
    // A second copy of the attempt (a call of its own) still decides nothing.
    let copy = outcomes::commit(&db.pool, &[answered(2, 0, "c2-copy", None)])
        .await
        .unwrap();
    assert!(copy.decided.is_empty());
    assert_eq!(copy.duplicates, 1);
}

#[tokio::test]
async fn shadow_stale_and_answered_failures_never_fail_an_item_and_audits_become_final() {
    let db = setup(4).await;
    // A shadow call fails for good: dead letter only.
    outcomes::commit(&db.pool, &[failed(1, 1000)])
        .await
        .unwrap();
    assert_eq!(item(&db.pool, 1).await.0, "queued");
    // Item 2 escalated at attempt 0: a late failure of attempt 0 (the reaper's) is stale.
    outcomes::commit(&db.pool, &[answered(2, 0, "e2", Some("strong"))])
        .await
        .unwrap();
    let r = outcomes::commit(&db.pool, &[failed(2, 0)]).await.unwrap();
    assert!(r.decided.is_empty());
    assert_eq!(item(&db.pool, 2).await, ("queued".to_owned(), 1, None));
    // Its current attempt may fail.
    let r = outcomes::commit(&db.pool, &[failed(2, 1)]).await.unwrap();
    assert_eq!(r.decided.len(), 1);
    assert_eq!(item(&db.pool, 2).await.0, "failed");
    // Item 3: an audit answer lands after the item's own: it becomes the final answer.
    outcomes::commit(&db.pool, &[answered(3, 0, "a3", None)])
        .await
        .unwrap();
    outcomes::commit(&db.pool, &[answered(3, 1001, "audit3", None)])
        .await
        .unwrap();
    assert_eq!(item(&db.pool, 3).await, ("done".to_owned(), 0, Some(1001)));
    assert_eq!(outcome_of(&db.pool, "audit3").await, "audit");
    // Item 4: the audit lands first; the item's own answer finishes it, pointing at it.
    outcomes::commit(&db.pool, &[answered(4, 1001, "audit4", None)])
        .await
        .unwrap();
    assert_eq!(
        item(&db.pool, 4).await.0,
        "queued",
        "an audit never finishes an item"
    );
    outcomes::commit(&db.pool, &[answered(4, 0, "a4", None)])
        .await
        .unwrap();
    assert_eq!(item(&db.pool, 4).await, ("done".to_owned(), 0, Some(1001)));
}

/// A pilot item whose audit failed for good has no audit answer to wait for: the pilot's
/// wait sees it as settled (`audit_failed`), while an audit still running is not.
#[tokio::test]
async fn a_pilot_item_whose_audit_failed_for_good_is_not_waited_for() {
    let db = setup(2).await;
    let audit = i32::from(switchyard_proto::work::AUDIT_ATTEMPT);
    outcomes::commit(
        &db.pool,
        &[
            answered(1, 0, "w1", None),
            answered(2, 0, "w2", None),
            failed(1, audit),
        ],
    )
    .await
    .unwrap();
    let rows = switchyard_store::quality::answered_items(&db.pool, JOB)
        .await
        .unwrap();
    let got: Vec<(bool, bool, bool)> = rows
        .iter()
        .map(|r| {
            (
                r.first_answer.is_some(),
                r.audit_answer.is_some(),
                r.audit_failed,
            )
        })
        .collect();
    assert_eq!(got, [(true, false, true), (true, false, false)]);
    assert_ne!(rows[0].status, "failed", "an audit's failure fails no item");
}

/// A call in doubt committed by its live worker (sent, no answer in time) is `in_doubt`
/// whatever its attempt, and committing it again (the first commit's reply lost) settles
/// nothing: a worst case is no evidence of what the call cost.
#[tokio::test]
async fn a_live_worker_s_call_in_doubt_is_booked_in_doubt_once() {
    let db = setup(2).await;
    let audit = i32::from(switchyard_proto::work::AUDIT_ATTEMPT);
    let in_doubt = |item: i64, attempt: i32, id: &str| Outcome::Unusable {
        key: key(item, attempt),
        call: common::weak_call(id, MODEL, 100, UsageSource::WorstCase, Utc::now()),
    };
    let calls = [in_doubt(1, 0, "d1"), in_doubt(2, audit, "d2")];
    for _ in 0..2 {
        let report = outcomes::commit(&db.pool, &calls).await.unwrap();
        assert_eq!(report.settled_in_doubt, 0);
    }
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT call_id, outcome, usage_source FROM ledger ORDER BY call_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let want = |id: &str| {
        (
            id.to_owned(),
            "in_doubt".to_owned(),
            "worst_case".to_owned(),
        )
    };
    assert_eq!(rows, [want("d1"), want("d2")]);
    assert_eq!(
        item(&db.pool, 1).await.0,
        "queued",
        "a call in doubt decides nothing"
    );
}

/// A pilot's calls that nothing works on are the ones its dispatcher publishes again: not
/// one answered, failed for good, or claimed by a live worker.
#[tokio::test]
async fn a_pilot_s_lost_calls_are_those_nothing_answers_or_works_on() {
    let db = setup(5).await;
    let audit = i32::from(switchyard_proto::work::AUDIT_ATTEMPT);
    let lease = Duration::from_secs(60);
    outcomes::commit(
        &db.pool,
        &[
            answered(1, 0, "w1", None),
            answered(1, audit, "a1", None),
            answered(2, 0, "w2", None),
            answered(4, 0, "w4", None),
            failed(4, audit),
            answered(5, 0, "w5", None),
        ],
    )
    .await
    .unwrap();
    intents::renew_lease(&db.pool, "alive", lease)
        .await
        .unwrap();
    let claims = intents::claim(&db.pool, "alive", lease, &[intent(5, audit, "a5")])
        .await
        .unwrap();
    assert_eq!(claims, vec![Claim::Claimed]);
    let lost = switchyard_store::quality::lost_pilot_calls(&db.pool, JOB, lease)
        .await
        .unwrap();
    let got: Vec<(&str, bool, bool)> = lost
        .iter()
        .map(|c| (c.item.item_id.as_str(), c.first_lost, c.audit_lost))
        .collect();
    // Item 2's audit call is lost, item 3's two calls; 1 is answered, 4's audit failed for
    // good, 5's is being made.
    assert_eq!(got, [("item-2", false, true), ("item-3", true, true)]);
}

/// A quality job's first stored plan is the one its items follow: a second owner (the
/// first lost its job lock in a Postgres restart and went on) cannot replace it.
#[tokio::test]
async fn a_quality_job_keeps_its_first_plan() {
    let db = setup(1).await;
    sqlx::query(
        "UPDATE jobs SET status = 'dispatching', routing_plan = '{\"stage\": \"pilot\"}' \
         WHERE job_id = $1",
    )
    .bind(JOB)
    .execute(&db.pool)
    .await
    .unwrap();
    let plan = |n: i64| serde_json::json!({"stage": "routed", "n": n});
    let store = |n: i64| {
        let pool = db.pool.clone();
        async move {
            switchyard_store::quality::store_plan(&pool, JOB, Some((0.5, n)), &plan(n))
                .await
                .unwrap()
        }
    };
    assert!(
        store(1).await,
        "the first plan is stored over the pilot stage"
    );
    assert!(!store(2).await, "a second one is refused");
    let stored = switchyard_store::quality::stored_plan(&db.pool, JOB)
        .await
        .unwrap();
    assert_eq!(stored, Some(plan(1)));
}

fn intent(item: i64, attempt: i32, id: &str) -> Intent {
    Intent {
        call_id: id.to_owned(),
        key: key(item, attempt),
        team: "team".to_owned(),
        project: "proj".to_owned(),
        tier: "weak".to_owned(),
        model: MODEL.to_owned(),
        provider: "test".to_owned(),
        prompt_bound: 1_000,
        max_tokens: 500,
        escalation: false,
        all_strong: switchyard_store::booking::Counterfactual::Own,
        all_weak: switchyard_store::booking::Counterfactual::Own,
        held: false,
    }
}

/// The intent of a budgeted team's call: it goes out only under a budget hold.
fn held_intent(item: i64, attempt: i32, id: &str) -> Intent {
    Intent {
        held: true,
        ..intent(item, attempt, id)
    }
}

#[tokio::test]
async fn claims_settle_busy_and_take_over_a_dead_owners_attempt_in_doubt() {
    let db = setup(3).await;
    let grace = Duration::ZERO;
    let lease = Duration::from_secs(60);
    intents::renew_lease(&db.pool, "alive", lease)
        .await
        .unwrap();
    intents::renew_lease(&db.pool, "other", lease)
        .await
        .unwrap();
    // Item 1 answered: any later delivery calls nothing.
    outcomes::commit(&db.pool, &[answered(1, 0, "done1", None)])
        .await
        .unwrap();
    let claims = intents::claim(
        &db.pool,
        "alive",
        grace,
        &[intent(1, 0, "x1"), intent(2, 0, "x2"), intent(3, 0, "x3")],
    )
    .await
    .unwrap();
    assert_eq!(
        claims,
        vec![
            Claim::Settled { escalate: false },
            Claim::Claimed,
            Claim::Claimed
        ]
    );
    // A second copy of item 2's attempt, from another live worker: busy.
    let again = intents::claim(&db.pool, "other", grace, &[intent(2, 0, "y2")])
        .await
        .unwrap();
    assert_eq!(again, vec![Claim::Busy]);
    // "alive" dies (its lease ends without a booking): the copy takes the attempt over, and
    // the dead owner's call is booked in doubt at its worst case.
    intents::drop_lease(&db.pool, "alive").await.unwrap();
    let again = intents::claim(&db.pool, "other", grace, &[intent(2, 0, "y2")])
        .await
        .unwrap();
    assert_eq!(again, vec![Claim::Claimed]);
    let (outcome, source, cost): (String, String, Decimal) =
        sqlx::query_as("SELECT outcome, usage_source, cost_usd FROM ledger WHERE call_id = 'x2'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (outcome.as_str(), source.as_str()),
        ("in_doubt", "worst_case")
    );
    // 1,000 prompt tokens at $1/M + 500 completion at $2/M.
    assert_eq!(cost, d("0.002"));
    // The sweep books the dead owner's other intent (item 3) the same way.
    let swept = intents::book_in_doubt(&db.pool, grace, 100).await.unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].call_id, "x3");
    // The "dead" worker was only stalled: its answer for x3 arrives. The in-doubt entry is
    // reversed and the call booked as it was; the ledger's total is the real cost.
    let late = outcomes::commit(
        &db.pool,
        &[answer_with(
            3,
            0,
            None,
            "A",
            None,
            call("x3", 100, Utc::now()),
        )],
    )
    .await
    .unwrap();
    assert_eq!(late.settled_in_doubt, 1);
    let item3: Decimal =
        sqlx::query_scalar("SELECT sum(cost_usd) FROM ledger WHERE item_id = 'item-3'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    // 100 × $1/M + 100 × $2/M.
    assert_eq!(item3, d("0.0003"));
    let (open, _) = intents::open_intents(&db.pool, grace).await.unwrap();
    assert_eq!(open, 1, "only y2 is still being called");
}

async fn budget(pool: &PgPool, limit: &str) {
    budgets::set(
        pool,
        &BudgetSpec {
            team: "team".to_owned(),
            monthly_usd: d(limit),
            soft_usd: None,
            when_exhausted: WhenExhausted::Wait,
        },
        true,
    )
    .await
    .unwrap();
}

/// A hold of `amount` USD on item-1 of the test job for `holder`, lease 0 and the database's
/// clock; tests change what they need with struct update syntax.
fn hold_for(holder: &'static str, amount: &str) -> HoldRequest<'static> {
    HoldRequest {
        team: "team",
        amount_usd: d(amount),
        holder,
        job_id: JOB,
        item_id: "item-1",
        attempt: 0,
        model: MODEL,
        lease: Duration::ZERO,
        at: None,
        call_id: None,
        worst_tokens: None,
    }
}

async fn period(pool: &PgPool, month: &str) -> (Decimal, Decimal) {
    sqlx::query_as::<_, (Decimal, Decimal)>(
        "SELECT spent_usd, reserved_usd FROM budget_periods WHERE team = 'team' \
         AND month = $1::date",
    )
    .bind(month)
    .fetch_optional(pool)
    .await
    .unwrap()
    .unwrap_or_default()
}

#[tokio::test]
async fn a_call_held_at_the_months_last_instant_is_spent_in_that_month() {
    let db = setup(2).await;
    budget(&db.pool, "1").await;
    // November has $0.999 spent already; December is untouched.
    let last_instant = Utc.with_ymd_and_hms(2026, 11, 30, 23, 59, 59).unwrap()
        + chrono::Duration::milliseconds(900);
    sqlx::query(
        "INSERT INTO budget_periods (team, month, spent_usd) VALUES ('team', '2026-11-01', 0.999)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let hold = HoldRequest {
        lease: Duration::from_secs(60),
        at: Some(last_instant),
        ..hold_for("w", "0.001")
    };
    let Reservation::Held {
        reservation_id,
        held_at,
    } = budgets::reserve(&db.pool, &hold).await.unwrap()
    else {
        panic!("the hold fits November exactly");
    };
    assert_eq!(held_at, last_instant);
    // A second hold in November does not fit.
    let more = HoldRequest {
        item_id: "item-2",
        amount_usd: d("0.000001"),
        ..hold.clone()
    };
    assert!(matches!(
        budgets::reserve(&db.pool, &more).await.unwrap(),
        Reservation::DoesNotFit { .. }
    ));
    // The call is booked after midnight, priced at its hold's time (as workers do).
    let mut c = call("late", 333, held_at);
    c.booking.reservation_id = Some(reservation_id);
    let booked = answer_with(1, 0, None, "A", None, c);
    outcomes::commit(&db.pool, &[booked]).await.unwrap();
    let (nov_spent, nov_reserved) = period(&db.pool, "2026-11-01").await;
    let (dec_spent, _) = period(&db.pool, "2026-12-01").await;
    // 333 × $1/M + 333 × $2/M = 0.000999: November ends at 0.999999, under its $1.
    assert_eq!((nov_spent, nov_reserved), (d("0.999999"), Decimal::ZERO));
    assert_eq!(dec_spent, Decimal::ZERO);
    assert!(nov_spent <= d("1"));
}

#[tokio::test]
async fn expired_holds_of_past_months_are_released() {
    let db = setup(1).await;
    budget(&db.pool, "10").await;
    let hold = HoldRequest {
        lease: Duration::from_millis(1),
        at: Some(Utc.with_ymd_and_hms(2026, 10, 15, 12, 0, 0).unwrap()),
        ..hold_for("dead", "2")
    };
    assert!(matches!(
        budgets::reserve(&db.pool, &hold).await.unwrap(),
        Reservation::Held { .. }
    ));
    assert_eq!(period(&db.pool, "2026-10-01").await.1, d("2"));
    switchyard_testkit::eventually("the hold to expire and go", Duration::from_secs(10), || {
        let pool = db.pool.clone();
        async move {
            budgets::release_expired(&pool, Duration::ZERO)
                .await
                .unwrap();
            (period(&pool, "2026-10-01").await.1 == Decimal::ZERO).then_some(())
        }
    })
    .await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM budget_reservations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// A dead worker's expired hold whose call intent is still open is not reclaimed by another
/// worker's reservation: the in-doubt booking settles it with the call's worst case, and the
/// team never ends over its limit.
#[tokio::test]
async fn a_dead_workers_hold_with_an_open_intent_is_settled_in_doubt_not_reclaimed() {
    let db = setup(2).await;
    // Room for one call's worst case ($0.002, see `intent`), not two.
    budget(&db.pool, "0.003").await;
    intents::renew_lease(&db.pool, "dead", Duration::from_secs(60))
        .await
        .unwrap();
    let claimed = intents::claim(&db.pool, "dead", Duration::ZERO, &[held_intent(1, 0, "d1")])
        .await
        .unwrap();
    assert_eq!(claimed, vec![Claim::Claimed]);
    let hold = hold_for("dead", "0.002");
    assert!(matches!(
        budgets::reserve(&db.pool, &hold).await.unwrap(),
        Reservation::Held { .. }
    ));
    // The worker dies with its request possibly sent; its hold has expired.
    intents::drop_lease(&db.pool, "dead").await.unwrap();
    let other = HoldRequest {
        holder: "live",
        item_id: "item-2",
        ..hold.clone()
    };
    assert!(
        matches!(
            budgets::reserve(&db.pool, &other).await.unwrap(),
            Reservation::DoesNotFit { .. }
        ),
        "the dead worker's call may have been made: its room is not given away"
    );
    let swept = intents::book_in_doubt(&db.pool, Duration::ZERO, 100)
        .await
        .unwrap();
    assert_eq!(swept.len(), 1);
    let month = Utc::now().format("%Y-%m-01").to_string();
    assert_eq!(period(&db.pool, &month).await, (d("0.002"), Decimal::ZERO));
    assert!(matches!(
        budgets::reserve(&db.pool, &other).await.unwrap(),
        Reservation::DoesNotFit { .. }
    ));
    assert!(matches!(
        budgets::reserve(
            &db.pool,
            &HoldRequest {
                amount_usd: d("0.001"),
                ..other.clone()
            }
        )
        .await
        .unwrap(),
        Reservation::Held { .. }
    ));
}

/// A budgeted team's call goes out only under a hold, so a lost worker's intent with no hold
/// (the item was parked over budget, or the call failed and its hold went back, and the
/// worker died before the commit that ends the intent) was never called: it ends without a
/// booking. Booking its worst case would push the team past its limit, which the team's
/// other calls had used to the last cent. An unbudgeted call's intent is still booked in
/// doubt, and a held one with its hold is booked and settles it.
#[tokio::test]
async fn a_lost_workers_intent_without_its_budget_hold_was_never_called_and_books_nothing() {
    let db = setup(3).await;
    budget(&db.pool, "0.002").await;
    intents::renew_lease(&db.pool, "dead", Duration::from_secs(60))
        .await
        .unwrap();
    let claimed = intents::claim(
        &db.pool,
        "dead",
        Duration::ZERO,
        &[
            held_intent(1, 0, "parked"),
            held_intent(2, 0, "called"),
            Intent {
                team: "no-budget".to_owned(),
                ..intent(3, 0, "unbudgeted")
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(claimed, vec![Claim::Claimed; 3]);
    // Item 2's call holds the whole budget; item 1 did not fit and was parked.
    let hold = HoldRequest {
        item_id: "item-2",
        lease: Duration::from_secs(60),
        ..hold_for("dead", "0.002")
    };
    assert!(matches!(
        budgets::reserve(&db.pool, &hold).await.unwrap(),
        Reservation::Held { .. }
    ));
    assert!(matches!(
        budgets::reserve(
            &db.pool,
            &HoldRequest {
                item_id: "item-1",
                ..hold.clone()
            }
        )
        .await
        .unwrap(),
        Reservation::DoesNotFit { .. }
    ));
    intents::drop_lease(&db.pool, "dead").await.unwrap();
    let swept = intents::book_in_doubt(&db.pool, Duration::ZERO, 100)
        .await
        .unwrap();
    let mut swept: Vec<&str> = swept.iter().map(|s| s.call_id.as_str()).collect();
    swept.sort_unstable();
    assert_eq!(swept, ["called", "unbudgeted"]);
    let booked: Vec<String> = sqlx::query_scalar("SELECT call_id FROM ledger ORDER BY call_id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(booked, ["called", "unbudgeted"]);
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM call_intents")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(open, 0, "the parked item's intent ended too");
    let month = Utc::now().format("%Y-%m-01").to_string();
    // The called item's worst case settles its hold: the team ends at its limit, not past it.
    assert_eq!(period(&db.pool, &month).await, (d("0.002"), Decimal::ZERO));
    // The parked item's next delivery claims its attempt afresh.
    intents::renew_lease(&db.pool, "live", Duration::from_secs(60))
        .await
        .unwrap();
    let again = intents::claim(&db.pool, "live", Duration::ZERO, &[held_intent(1, 0, "p2")])
        .await
        .unwrap();
    assert_eq!(again, vec![Claim::Claimed]);
}

/// A claim tried again after its reply was lost (it had committed) finds its own intent:
/// claimed, not busy; another call id of the same attempt is still busy.
#[tokio::test]
async fn a_claim_tried_again_after_a_lost_reply_is_still_claimed() {
    let db = setup(1).await;
    intents::renew_lease(&db.pool, "w", Duration::from_secs(60))
        .await
        .unwrap();
    for _ in 0..2 {
        let claimed = intents::claim(&db.pool, "w", Duration::ZERO, &[intent(1, 0, "c1")])
            .await
            .unwrap();
        assert_eq!(claimed, vec![Claim::Claimed]);
    }
    let other = intents::claim(&db.pool, "w", Duration::ZERO, &[intent(1, 0, "c2")])
        .await
        .unwrap();
    assert_eq!(other, vec![Claim::Busy]);
}

/// A copy of an attempt claimed while the attempt's outcome is being committed: the claim
/// statement's snapshot predates the commit, its insert waits for it and then finds the
/// intent gone. It must not come back claimed (that copy would call a second time and book
/// a duplicate); the claim looks again after the commit and calls nothing.
#[tokio::test]
async fn a_claim_racing_the_commit_of_its_attempt_calls_nothing() {
    let db = setup(1).await;
    intents::renew_lease(&db.pool, "b", Duration::from_secs(60))
        .await
        .unwrap();
    claimed_by(&db.pool, "a", "a1").await;
    // Worker a commits its answer, not yet visible: the intent's row is deleted in an open
    // transaction.
    let mut tx = db.pool.begin().await.unwrap();
    outcomes::commit_in(&mut tx, &[answered(1, 0, "a1", None)])
        .await
        .unwrap();
    // The copy's claim starts now and waits on that transaction at its insert.
    let pool = db.pool.clone();
    let copy = tokio::spawn(async move {
        intents::claim(&pool, "b", Duration::ZERO, &[intent(1, 0, "b1")]).await
    });
    let mut waiting = false;
    for _ in 0..400 {
        waiting = sqlx::query_scalar(
            // (Its text is cut at `track_activity_query_size`: matched by its start.)
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE 'WITH k AS%')",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if waiting || copy.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(waiting, "the copy's claim never waited on the commit");
    tx.commit().await.unwrap();
    let verdict = tokio::time::timeout(Duration::from_secs(30), copy)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(verdict, vec![Claim::Settled { escalate: false }]);
    let open = open_intents(&db.pool).await;
    assert_eq!(open, 0, "the copy's intent is withdrawn");
    assert_eq!(outcome_of(&db.pool, "a1").await, "ok");
}

/// A claim tried again with the same call (its first try's reply was lost) on an attempt
/// another copy settled meanwhile: the intent the first try wrote is withdrawn, not left to
/// be booked in doubt as a call that was never made.
#[tokio::test]
async fn a_claim_tried_again_on_an_attempt_settled_since_withdraws_its_intent() {
    let db = setup(1).await;
    claimed_by(&db.pool, "w", "c1").await;
    // Another copy of the attempt answers first (possible when a worker was presumed gone).
    outcomes::commit(&db.pool, &[answered(1, 0, "c0", None)])
        .await
        .unwrap();
    let again = intents::claim(&db.pool, "w", Duration::ZERO, &[intent(1, 0, "c1")])
        .await
        .unwrap();
    assert_eq!(again, vec![Claim::Settled { escalate: false }]);
    let open = open_intents(&db.pool).await;
    assert_eq!(open, 0, "the first try's intent is withdrawn");
}

/// A billed call whose own entry Postgres refuses in every form (here: priced at a time
/// with no price in force, as a worker's clock behind the price's start would) is booked
/// in doubt at its intent's worst case, with the reason and the attempt's failure, in one
/// transaction; not left to its worker's exit.
#[tokio::test]
async fn a_call_whose_entry_postgres_refuses_is_booked_in_doubt_with_its_failure() {
    let db = setup(1).await;
    claimed_by(&db.pool, "w", "c1").await;
    let before_prices = Utc.with_ymd_and_hms(2019, 6, 1, 0, 0, 0).unwrap();
    let refused = answer_with(1, 0, None, "A", None, call("c1", 100, before_prices));
    assert!(outcomes::commit(&db.pool, &[refused]).await.is_err());
    let why = "the provider's answer and its usage could not be stored";
    let failure = Outcome::Failed {
        key: key(1, 0),
        subject: "sy.work.weak".to_owned(),
        deliveries: 1,
        error: why.to_owned(),
        call: None,
        intent: None,
    };
    let report = intents::book_refused_call(&db.pool, "c1", why, &failure)
        .await
        .unwrap()
        .expect("booked");
    assert!(report.decided.contains(&0), "the failure decided its item");
    let (outcome, source, cost, reason): (String, String, Decimal, String) = sqlx::query_as(
        "SELECT outcome, usage_source, cost_usd, reason FROM ledger WHERE call_id = 'c1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (outcome.as_str(), source.as_str(), reason.as_str()),
        ("in_doubt", "worst_case", why)
    );
    // 1,000 prompt tokens at $1/M + 500 completion at $2/M.
    assert_eq!(cost, d("0.002"));
    assert_eq!(item(&db.pool, 1).await.0, "failed");
    let open = open_intents(&db.pool).await;
    assert_eq!(open, 0);
    // Asked again (a redelivery of the same outcome): nothing left to book, nothing booked.
    assert!(
        intents::book_refused_call(&db.pool, "c1", why, &failure)
            .await
            .unwrap()
            .is_none()
    );
    let rows = ledger_rows(&db.pool).await;
    assert_eq!(rows, 1);
}

/// A hold is taken only under its call's live intent: a worker that stalled between its
/// claim and its hold past its lease, and whose attempt the sweep ended meanwhile, gets no
/// hold and must not call (the call would go out with no intent to book it in doubt). Both
/// the first hold of a month (no month row yet) and a later one (the one-statement path)
/// are checked.
#[tokio::test]
async fn a_hold_is_taken_only_while_its_call_s_intent_is_the_holder_s() {
    let db = setup(3).await;
    budget(&db.pool, "1").await;
    let lease = Duration::from_secs(60);
    intents::renew_lease(&db.pool, "stalled", lease)
        .await
        .unwrap();
    let claimed = intents::claim(
        &db.pool,
        "stalled",
        Duration::ZERO,
        &[held_intent(1, 0, "lost"), held_intent(2, 0, "kept")],
    )
    .await
    .unwrap();
    assert_eq!(claimed, vec![Claim::Claimed; 2]);
    // The worker stalls past its lease: the sweep ends its held intents that have no hold.
    intents::drop_lease(&db.pool, "stalled").await.unwrap();
    let swept = intents::book_in_doubt(&db.pool, Duration::ZERO, 100)
        .await
        .unwrap();
    assert!(swept.is_empty(), "nothing was called, nothing booked");
    let lost = HoldRequest {
        lease,
        call_id: Some("lost"),
        ..hold_for("stalled", "0.1")
    };
    assert_eq!(
        budgets::reserve(&db.pool, &lost).await.unwrap(),
        Reservation::ClaimLost,
        "the first hold of the month"
    );
    // Another worker claims item 2 and holds for it; the stalled one's hold for item 1 is
    // then refused on the one-statement path too, as is a hold under another's intent.
    intents::renew_lease(&db.pool, "live", lease).await.unwrap();
    let again = intents::claim(&db.pool, "live", Duration::ZERO, &[held_intent(2, 0, "k2")])
        .await
        .unwrap();
    assert_eq!(again, vec![Claim::Claimed]);
    let live = HoldRequest {
        holder: "live",
        item_id: "item-2",
        call_id: Some("k2"),
        ..lost.clone()
    };
    assert!(matches!(
        budgets::reserve(&db.pool, &live).await.unwrap(),
        Reservation::Held { .. }
    ));
    assert_eq!(
        budgets::reserve(&db.pool, &lost).await.unwrap(),
        Reservation::ClaimLost
    );
    let not_mine = HoldRequest {
        holder: "stalled",
        ..live.clone()
    };
    assert_eq!(
        budgets::reserve(&db.pool, &not_mine).await.unwrap(),
        Reservation::ClaimLost
    );
    let month = Utc::now().format("%Y-%m-01").to_string();
    assert_eq!(period(&db.pool, &month).await, (Decimal::ZERO, d("0.1")));
}

/// A hold covers the call at the price Postgres has in force, the price it is booked at,
/// not only at the worker's cached one: a price raised with immediate effect reaches
/// Postgres before every worker's cache. Both reserve paths (the first hold of a month and a
/// later one) hold the larger amount.
#[tokio::test]
async fn a_hold_covers_the_call_at_the_price_postgres_has_in_force() {
    let db = setup(2).await;
    budget(&db.pool, "0.0015").await;
    // Priced from a stale cache at $0.001; at the price in force, 1,000 prompt and 500
    // completion tokens cost $0.002.
    let stale = HoldRequest {
        lease: Duration::from_secs(60),
        worst_tokens: Some((1_000, 500)),
        ..hold_for("w", "0.001")
    };
    assert!(
        matches!(
            budgets::reserve(&db.pool, &stale).await.unwrap(),
            Reservation::DoesNotFit { .. }
        ),
        "it does not fit at the price in force"
    );
    budget(&db.pool, "1").await;
    assert!(matches!(
        budgets::reserve(&db.pool, &stale).await.unwrap(),
        Reservation::Held { .. }
    ));
    let month = Utc::now().format("%Y-%m-01").to_string();
    assert_eq!(period(&db.pool, &month).await, (Decimal::ZERO, d("0.002")));
    // A worker whose price is the higher one keeps its own amount.
    let dearer = HoldRequest {
        item_id: "item-2",
        amount_usd: d("0.003"),
        ..stale.clone()
    };
    assert!(matches!(
        budgets::reserve(&db.pool, &dearer).await.unwrap(),
        Reservation::Held { .. }
    ));
    assert_eq!(period(&db.pool, &month).await, (Decimal::ZERO, d("0.005")));
}

/// A live worker renews only the holds it still tracks: one it lost track of (its release
/// failed during an outage) expires and is given back, while the other stays.
#[tokio::test]
async fn a_hold_its_worker_lost_track_of_expires_while_the_tracked_one_lives() {
    let db = setup(2).await;
    budget(&db.pool, "10").await;
    let hold = hold_for("live", "2");
    let held = |r: Reservation| match r {
        Reservation::Held { reservation_id, .. } => reservation_id,
        other => panic!("expected a hold, got {other:?}"),
    };
    let tracked = held(budgets::reserve(&db.pool, &hold).await.unwrap());
    let lost = held(
        budgets::reserve(
            &db.pool,
            &HoldRequest {
                item_id: "item-2",
                amount_usd: d("3"),
                ..hold.clone()
            },
        )
        .await
        .unwrap(),
    );
    let renewed = budgets::renew_holds(&db.pool, "live", &[tracked], Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(renewed, 1);
    let released = budgets::release_expired(&db.pool, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(released, d("3"), "the untracked hold is given back");
    let left: Vec<i64> =
        sqlx::query_scalar("SELECT reservation_id FROM budget_reservations ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(left, vec![tracked]);
    assert_ne!(tracked, lost);
    let month = Utc::now().format("%Y-%m-01").to_string();
    assert_eq!(period(&db.pool, &month).await.1, d("2"));
}

#[tokio::test]
async fn an_answer_postgres_text_cannot_hold_is_stored_losslessly() {
    let db = setup(2).await;
    let now = Utc::now();
    let nul = answer_with(1, 0, None, "A\0B", None, call("nul", 1, now));
    let lone = answer_with(
        2,
        0,
        None,
        "x\u{fffd}",
        Some(r#""x\ud800""#),
        call("lone", 1, now),
    );
    outcomes::commit(&db.pool, &[nul, lone]).await.unwrap();
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT item_id, answer, answer_encoding FROM results ORDER BY item_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows[0].2.as_deref(), Some("json"));
    assert_eq!(
        outcomes::decode_answer(&rows[0].1, rows[0].2.as_deref()),
        "A\0B"
    );
    assert_eq!(rows[1].1, r#""x\ud800""#, "the provider's text, as sent");
    assert_eq!(
        outcomes::decode_answer(&rows[1].1, rows[1].2.as_deref()),
        "x\u{fffd}"
    );
}

/// An intent is never deleted without its ledger row: one whose model has no price in force
/// stays open (with a warning) until a price exists, then the sweep books it in doubt.
#[tokio::test]
async fn an_in_doubt_call_without_a_price_stays_open_until_it_can_be_booked() {
    let db = setup(1).await;
    let grace = Duration::ZERO;
    let mut unpriced = intent(1, 0, "u1");
    unpriced.model = "unpriced".to_owned();
    // Claimed by a worker that never held a lease: gone at once.
    let claims = intents::claim(&db.pool, "dead", grace, &[unpriced])
        .await
        .unwrap();
    assert_eq!(claims, vec![Claim::Claimed]);
    let swept = intents::book_in_doubt(&db.pool, grace, 100).await.unwrap();
    assert!(swept.is_empty(), "{swept:?}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM call_intents WHERE call_id = 'u1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 1, "the intent is kept");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger WHERE call_id = 'u1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    // A price (in force since before the call) arrives: the next sweep books it.
    price_since_2020(&db.pool, "unpriced", "1", "2").await;
    let swept = intents::book_in_doubt(&db.pool, grace, 100).await.unwrap();
    assert_eq!(swept.len(), 1);
    let (outcome, reason): (String, Option<String>) =
        sqlx::query_as("SELECT outcome, reason FROM ledger WHERE call_id = 'u1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(outcome, "in_doubt");
    assert_eq!(
        reason.as_deref(),
        Some("worker dead gone: its lease ran out")
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM call_intents")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// The intents and holds of lines recorded in a provider batch belong to the batch: the
/// recording worker's death books none of them in doubt; a line sent back to real time gives
/// its intent and hold up (the attempt can be claimed again); a batch ended with a line
/// still open leaves that line to the sweeper, booked in doubt at its worst case.
#[tokio::test]
async fn a_provider_batch_owns_its_lines_intents_and_holds_beyond_its_workers_lease() {
    use switchyard_store::provider_batches::{self as pb, NewBatch};
    let db = setup(3).await;
    let pool = &db.pool;
    budget(pool, "1").await;
    let lease = Duration::from_secs(60);
    intents::renew_lease(pool, "w1", lease).await.unwrap();
    let mine = [
        held_intent(1, 0, "c1"),
        held_intent(2, 0, "c2"),
        held_intent(3, 0, "c3"),
    ];
    let claimed = intents::claim(pool, "w1", Duration::ZERO, &mine)
        .await
        .unwrap();
    assert_eq!(claimed, vec![Claim::Claimed; 3]);
    for item in ["item-1", "item-2", "item-3"] {
        let hold = HoldRequest {
            item_id: item,
            lease,
            ..hold_for("w1", "0.002")
        };
        assert!(matches!(
            budgets::reserve(pool, &hold).await.unwrap(),
            Reservation::Held { .. }
        ));
    }
    let line = |call: &str, item: &str| common::batch_line(call, JOB, item);
    let batch = NewBatch {
        batch_id: "pb_h".to_owned(),
        model: MODEL.to_owned(),
        provider: "test".to_owned(),
        deadline: Utc::now() + chrono::Duration::hours(2),
        lines: vec![line("c1", "item-1"), line("c2", "item-2")],
    };
    assert_eq!(
        pb::record(pool, &batch, "w1", lease).await.unwrap(),
        ["c1", "c2"]
    );
    let owners: Vec<(String, String)> =
        sqlx::query_as("SELECT call_id, owner FROM call_intents ORDER BY call_id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        owners,
        [("c1", "pb_h"), ("c2", "pb_h"), ("c3", "w1")].map(|(c, o)| (c.to_owned(), o.to_owned()))
    );
    let holds: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT item_id, holder, expires_at > now() + interval '24 hours' \
         FROM budget_reservations ORDER BY item_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        holds,
        [
            ("item-1", "pb_h", true),
            ("item-2", "pb_h", true),
            ("item-3", "w1", false)
        ]
        .map(|(i, h, long)| (i.to_owned(), h.to_owned(), long))
    );

    // The worker dies: only the attempt it kept is its to book in doubt.
    intents::drop_lease(pool, "w1").await.unwrap();
    let swept = intents::book_in_doubt(pool, Duration::ZERO, 100)
        .await
        .unwrap();
    let swept: Vec<&str> = swept.iter().map(|s| s.call_id.as_str()).collect();
    assert_eq!(swept, ["c3"]);

    // A line sent back to real time: intent and hold given up, the attempt free again.
    let month = Utc::now().format("%Y-%m-01").to_string();
    let (_, reserved_before) = period(pool, &month).await;
    assert_eq!(
        pb::close_lines(pool, "pb_h", &["c2".to_owned()], false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        period(pool, &month).await.1,
        reserved_before - d("0.002"),
        "its hold released"
    );
    intents::renew_lease(pool, "w2", lease).await.unwrap();
    let again = intents::claim(pool, "w2", Duration::ZERO, &[intent(2, 0, "c2-real-time")])
        .await
        .unwrap();
    assert_eq!(again, vec![Claim::Claimed]);

    // Ended with c1 still open (a bug, or a provider that lost it): the sweeper books it.
    pb::end(pool, "pb_h", None, None, false).await.unwrap();
    let swept = intents::book_in_doubt(pool, Duration::ZERO, 100)
        .await
        .unwrap();
    let swept: Vec<&str> = swept.iter().map(|s| s.call_id.as_str()).collect();
    assert_eq!(swept, ["c1"]);
    let (outcome, reason): (String, String) =
        sqlx::query_as("SELECT outcome, reason FROM ledger WHERE call_id = 'c1'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(outcome, "in_doubt");
    assert!(reason.contains("pb_h"), "{reason}");
}

//! Budgets against the real fleet: eight workers race for a team's last dollars and never
//! book past the limit; calls that do not fit go weak or wait, and reports say so; a slow
//! worker keeps its hold, a dead one's call is booked in doubt at its worst case (its room is
//! never handed to another call), a stopped one leaves its hold to that booking, and a
//! killed one's parked item books nothing; the soft limit warns once.

use std::time::Duration;

use futures::StreamExt;
use rust_decimal::Decimal;
use switchyard_proto::Item;
use switchyard_sim::SimConfig;
use switchyard_store::budgets::{self, BudgetSpec, HoldRequest, Reservation, WhenExhausted};
use switchyard_store::ledger_reports::{self, Dimension, ReportRequest, Source};
use switchyard_testkit::eventually;

use crate::finance_support::{all_mmlu_items, count, d};
use crate::support::{Harness, classify_job};

async fn set_budget(
    h: &Harness,
    team: &str,
    monthly: &str,
    soft: Option<&str>,
    when: WhenExhausted,
) {
    budgets::set(
        &h.db.pool,
        &BudgetSpec {
            team: team.into(),
            monthly_usd: d(monthly),
            soft_usd: soft.map(d),
            when_exhausted: when,
        },
        true,
    )
    .await
    .unwrap();
}

async fn spent(h: &Harness, team: &str) -> Decimal {
    sqlx::query_scalar("SELECT COALESCE(sum(cost_usd), 0) FROM ledger WHERE team = $1")
        .bind(team)
        .fetch_one(&h.db.pool)
        .await
        .unwrap()
}

fn month_report(group_by: Vec<Dimension>, team: &str) -> ReportRequest {
    let today = chrono::Utc::now().date_naive();
    ReportRequest {
        group_by,
        from: ledger_reports::midnight(today.pred_opt().unwrap()),
        to: ledger_reports::midnight(today.succ_opt().unwrap()),
        team: Some(team.into()),
    }
}

/// This month's report of `team`, by job.
async fn job_report(h: &Harness, team: &str) -> ledger_reports::Report {
    ledger_reports::run(
        &h.db.pool,
        &month_report(vec![Dimension::Job], team),
        Source::Auto,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn eight_workers_racing_for_the_last_dollars_never_overspend() {
    let h = Harness::start_with(
        |s| {
            s.database.max_connections = 4;
            s.worker.concurrency = switchyard_runtime::settings::count(32);
            s.finance.refresh = Duration::from_millis(200);
            s.finance.budget_poll = Duration::from_millis(200);
        },
        SimConfig::default(),
    )
    .await;
    let mut h = h;
    let (team, limit, soft) = ("race", d("1.00"), d("0.50"));
    set_budget(&h, team, "1.00", Some("0.50"), WhenExhausted::Wait).await;
    let all_tiers: Vec<String> = h.fleet.settings.tiers.keys().cloned().collect();
    for _ in 0..7 {
        h.fleet.start_worker(all_tiers.clone()).await.unwrap();
    }
    assert_eq!(h.fleet.workers.iter().flatten().count(), 8);
    crate::support::workers_know_budget(&h.fleet, team).await;
    let warnings_subject = h.fleet.settings.topology().budget_warning_subject(team);
    let mut warnings = h.nats.client.subscribe(warnings_subject).await.unwrap();
    h.nats.client.flush().await.unwrap();

    // Every item strong, no escalation: about $2.90 of calls for a $1.00 budget.
    let items = all_mmlu_items();
    let n = items.len();
    let mut spec = classify_job(items, 1.0, 0.0);
    spec.team = Some(team.into());
    let job_id = h.client.submit(spec).await.unwrap();

    // Quiet: every item answered or waiting, no hold left, and no waiting item fits.
    let started = std::time::Instant::now();
    let (done, waiting) =
        crate::support::budget_runs_dry(&h.db.pool, &job_id, n as i64, true).await;
    let spent = spent(&h, team).await;
    let overspend = (spent - limit).max(Decimal::ZERO);
    let share = spent / limit;
    println!(
        "budget race, 8 workers: limit {limit} USD, spent {} USD ({:.2}%), overspend {overspend}, \
         {done} items answered, {waiting} waiting",
        spent.normalize(),
        share * Decimal::ONE_HUNDRED
    );
    assert_eq!(overspend, Decimal::ZERO, "overspent");
    assert!(share >= d("0.95"), "only {share} of the budget spent");
    assert_eq!(period_of(&h, team).await, (spent, Decimal::ZERO));
    // The calls were spread over the workers.
    let busy = h
        .fleet
        .workers
        .iter()
        .flatten()
        .filter(|w| switchyard_worker::WorkerCounters::get(&w.worker.counters.calls) > 0)
        .count();
    assert!(busy >= 4, "only {busy} workers called");

    // The soft limit warned once, on NATS and in the events.
    let msg = tokio::time::timeout(Duration::from_secs(10), warnings.next())
        .await
        .expect("a soft-limit warning")
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(event["kind"], "soft_limit");
    assert_eq!(event["team"], team);
    assert!(d(event["spent_usd"].as_str().unwrap()) >= soft);
    let soft_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM budget_events WHERE team = $1 AND kind = 'soft_limit'",
    )
    .bind(team)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(soft_events, 1);
    h.nats.client.flush().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), warnings.next())
            .await
            .is_err(),
        "a second warning"
    );

    // The report and `budget show` say items are waiting for budget.
    let report = ledger_reports::run(
        &h.db.pool,
        &month_report(vec![Dimension::Job], team),
        Source::Auto,
    )
    .await
    .unwrap();
    assert_eq!(report.rows[0].budget_waiting_items, Some(waiting));
    let shown = budgets::show(&h.db.pool, Some(team)).await.unwrap();
    assert_eq!(shown[0].waiting_items, waiting);
    assert_eq!(shown[0].spent_usd, spent);

    // Raising the limit lets the waiting items run: nothing was lost.
    println!("{:?}: budget raised", started.elapsed());
    set_budget(&h, team, "10", Some("0.50"), WhenExhausted::Wait).await;
    let status = h.wait_final(&job_id, 240).await;
    println!("{:?}: every item answered", started.elapsed());
    assert_eq!(status.done(), n as i64);
    assert_eq!(count(&h.db.pool, "budget_parked").await, 0);
    h.finish().await;
}

/// Short MMLU items (150-400 bytes): a strong call's worst case is above $0.0029, a weak
/// one's below $0.0004.
fn short_items(n: usize) -> Vec<Item> {
    items_sized(150..400, n)
}

fn items_sized(bytes: std::ops::Range<usize>, n: usize) -> Vec<Item> {
    let mut items: Vec<Item> = all_mmlu_items()
        .into_iter()
        .filter(|i| bytes.contains(&i.text.len()))
        .collect();
    items.truncate(n);
    assert_eq!(items.len(), n);
    items
}

#[tokio::test]
async fn strong_calls_that_do_not_fit_go_weak_and_the_report_says_so() {
    let h = Harness::start_with(
        |s| {
            s.finance.refresh = Duration::from_millis(200);
        },
        SimConfig::default(),
    )
    .await;
    let team = "thrifty";
    set_budget(&h, team, "0.002", None, WhenExhausted::Downgrade).await;
    crate::support::workers_know_budget(&h.fleet, team).await;
    let n = 15;
    let mut spec = classify_job(short_items(n), 1.0, 0.0);
    spec.team = Some(team.into());
    let job_id = h.client.submit(spec).await.unwrap();
    let status = h.wait_final(&job_id, 120).await;
    assert_eq!(status.job.status, "completed");
    assert_eq!(status.done(), n as i64);
    assert_eq!(status.done_by_tier.get("weak"), Some(&(n as i64)));
    let ledger = h.ledger(&job_id).await;
    assert!(
        ledger.iter().all(|r| r.tier == "weak"),
        "a strong call was booked"
    );
    assert!(spent(&h, team).await <= d("0.002"));
    let report = job_report(&h, team).await;
    assert_eq!(report.rows[0].budget_downgraded_items, Some(n as i64));
    let json = serde_json::to_value(&report.rows).unwrap();
    assert_eq!(json[0]["budget_downgraded_items"], n as i64);

    // Escalations that do not fit keep the weak answer the item already has.
    let team = "thrifty-cascade";
    set_budget(&h, team, "0.002", None, WhenExhausted::Downgrade).await;
    crate::support::workers_know_budget(&h.fleet, team).await;
    let mut spec = classify_job(short_items(n), 0.0, 1.0);
    spec.team = Some(team.into());
    spec.job_id = "cascade".into();
    let job_id = h.client.submit(spec).await.unwrap();
    let status = h.wait_final(&job_id, 120).await;
    assert_eq!(status.job.status, "completed");
    assert_eq!(status.done_by_tier.get("weak"), Some(&(n as i64)));
    let ledger = h.ledger(&job_id).await;
    assert_eq!(ledger.len(), n, "one weak call per item, no strong call");
    assert!(ledger.iter().all(|r| r.tier == "weak"));
    let report = job_report(&h, team).await;
    assert_eq!(report.rows[0].budget_downgraded_items, Some(n as i64));
    h.finish().await;
}

/// A quality job of a team whose budget cannot fit its pilot's strong audit calls: each
/// skipped audit is recorded as the audit's failure (its reason says why), so the pilot
/// plans from what it has and the job completes, instead of waiting for answers that will
/// never come until the pilot's timeout (30 minutes).
#[tokio::test]
async fn a_pilot_whose_audits_the_budget_cannot_fit_does_not_wait_for_them() {
    let h = Harness::start_with(
        |s| {
            s.finance.refresh = Duration::from_millis(200);
        },
        SimConfig::default(),
    )
    .await;
    let team = "thrifty-quality";
    set_budget(&h, team, "0.002", None, WhenExhausted::Downgrade).await;
    crate::support::workers_know_budget(&h.fleet, team).await;
    let n = 30;
    let mut spec = classify_job(short_items(n), 0.0, 0.0);
    spec.team = Some(team.into());
    spec.policy.routing = switchyard_proto::Routing::Quality { value: 0.95 };
    spec.policy.cascade.confidence_threshold = None;
    let job_id = h.client.submit(spec).await.unwrap();
    let status = h.wait_final(&job_id, 120).await;
    assert_eq!(status.job.status, "completed", "{:?}", status.dead_letters);
    assert_eq!(status.done(), n as i64);
    let skipped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dead_letters WHERE job_id = $1 AND attempt = $2 \
         AND error LIKE 'skipped: the team''s budget cannot fit the audit call%'",
    )
    .bind(&job_id)
    .bind(i32::from(switchyard_proto::work::AUDIT_ATTEMPT))
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert!(skipped > 0, "no audit was skipped");
    assert!(spent(&h, team).await <= d("0.002"));
    h.finish().await;
}

/// A fleet whose provider takes 8 s to answer (finance refreshed every 0.1 s, holds leased
/// for 0.9 s, then `tune`d), running a job of `items` strong items of `team`, with one
/// strong call in flight: its hold's id and amount (above half the team's $0.009 budget, so
/// two do not fit), and a request for another hold of that amount.
async fn one_slow_call_holding(
    team: &'static str,
    items: usize,
    tune: impl FnOnce(&mut switchyard_runtime::Settings),
) -> (Harness, i64, Decimal, HoldRequest<'static>) {
    let h = Harness::start_with(
        |s| {
            s.finance.refresh = Duration::from_millis(100);
            s.finance.reservation_lease = Duration::from_millis(900);
            tune(s);
        },
        SimConfig {
            latency: Duration::from_secs(8),
            ..SimConfig::default()
        },
    )
    .await;
    set_budget(&h, team, "0.009", None, WhenExhausted::Wait).await;
    crate::support::workers_know_budget(&h.fleet, team).await;
    // 350-400 bytes: a strong hold of $0.0049-0.0055.
    let mut spec = classify_job(items_sized(350..400, items), 1.0, 0.0);
    spec.team = Some(team.into());
    h.client.submit(spec).await.unwrap();
    let pool = h.db.pool.clone();
    let (id, amount) = eventually(
        "the call holds its worst case",
        Duration::from_secs(30),
        || {
            let pool = pool.clone();
            async move {
                sqlx::query_as::<_, (i64, Decimal)>(
                    "SELECT reservation_id, amount_usd FROM budget_reservations",
                )
                .fetch_optional(&pool)
                .await
                .unwrap()
            }
        },
    )
    .await;
    assert!(
        amount > d("0.0045"),
        "the test needs a hold above half the budget: {amount}"
    );
    let other = HoldRequest {
        team,
        amount_usd: amount,
        holder: "test",
        job_id: "other",
        item_id: "other",
        attempt: 0,
        model: "m",
        lease: Duration::from_secs(60),
        at: None,
        call_id: None,
        worst_tokens: None,
    };
    (h, id, amount, other)
}

/// The cost of the one in-doubt ledger entry, once a live worker's sweep has booked it.
async fn in_doubt_cost(h: &Harness) -> Decimal {
    let pool = h.db.pool.clone();
    eventually(
        "the call is booked in doubt",
        Duration::from_secs(30),
        || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar("SELECT cost_usd FROM ledger WHERE outcome = 'in_doubt'")
                    .fetch_optional(&pool)
                    .await
                    .unwrap()
            }
        },
    )
    .await
}

/// The team's month: spent and reserved.
async fn period_of(h: &Harness, team: &str) -> (Decimal, Decimal) {
    sqlx::query_as("SELECT spent_usd, reserved_usd FROM budget_periods WHERE team = $1")
        .bind(team)
        .fetch_one(&h.db.pool)
        .await
        .unwrap()
}

/// Whether hold `id` is still there.
async fn hold_exists(h: &Harness, id: i64) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM budget_reservations WHERE reservation_id = $1)",
    )
    .bind(id)
    .fetch_one(&h.db.pool)
    .await
    .unwrap()
}

/// Starts a new worker on every tier (its sweep takes over what a stopped one left).
async fn start_another_worker(h: &mut Harness) {
    let tiers: Vec<String> = h.fleet.settings.tiers.keys().cloned().collect();
    h.fleet.start_worker(tiers).await.unwrap();
}

#[tokio::test]
async fn a_slow_worker_keeps_its_hold_and_a_dead_ones_call_is_held_at_its_worst_case() {
    let (mut h, id, amount, other) = one_slow_call_holding("slow", 1, |_| {}).await;
    let pool = h.db.pool.clone();
    // Well past its lease, the call is still in flight: the hold was renewed, not reclaimed.
    eventually(
        "the hold outlives its lease",
        Duration::from_secs(20),
        || {
            let pool = pool.clone();
            async move {
                let renewed: bool = sqlx::query_scalar(
                    "SELECT expires_at > created_at + interval '3 seconds' \
                 FROM budget_reservations WHERE reservation_id = $1",
                )
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
                renewed.then_some(())
            }
        },
    )
    .await;
    assert!(matches!(
        budgets::reserve(&h.db.pool, &other).await.unwrap(),
        Reservation::DoesNotFit { .. }
    ));
    // The worker dies with its call in flight: nobody renews the hold, but the call may have
    // been made, so its room is not given to another call. A live worker's sweep books the
    // dead call in doubt at its worst case (the hold's amount), which settles the hold.
    h.fleet.kill_worker(0).await;
    start_another_worker(&mut h).await;
    assert_eq!(
        in_doubt_cost(&h).await,
        amount,
        "booked at the hold's worst case"
    );
    assert!(
        !hold_exists(&h, id).await,
        "the in-doubt booking settled the dead worker's hold"
    );
    // What is left is the budget less the in-doubt worst case: another call of that size
    // does not fit (it would overspend if the dead call was made), the rest does.
    assert!(matches!(
        budgets::reserve(&h.db.pool, &other).await.unwrap(),
        Reservation::DoesNotFit { .. }
    ));
    let rest = HoldRequest {
        amount_usd: d("0.009") - amount,
        ..other.clone()
    };
    assert!(matches!(
        budgets::reserve(&h.db.pool, &rest).await.unwrap(),
        Reservation::Held { .. }
    ));
    h.finish().await;
}

/// A worker stopped (SIGTERM, a short grace) while its call is in flight cannot book that
/// call, which may have been made: the call is booked in doubt once its lease has ended, and
/// the hold stays until then. Released at the stop, the hold's room could be taken by another
/// call and the in-doubt worst case booked on top of it: past the limit.
#[tokio::test]
async fn a_worker_stopped_mid_call_leaves_its_hold_to_the_call_s_in_doubt_booking() {
    let team = "stopping";
    let (mut h, id, amount, other) = one_slow_call_holding(team, 1, |s| {
        s.worker.shutdown_grace = Duration::from_millis(300);
    })
    .await;
    // Stopped with the request sent and no answer (8 s latency, 0.3 s grace).
    h.fleet.stop_worker(0).await.unwrap();
    assert_eq!(
        count(&h.db.pool, "budget_reservations").await,
        1,
        "the hold outlives the stop"
    );
    assert!(
        matches!(
            budgets::reserve(&h.db.pool, &other).await.unwrap(),
            Reservation::DoesNotFit { .. }
        ),
        "the stopped call's room is not given away"
    );
    // A new worker's sweep books the call in doubt at the hold's amount, settling the hold.
    start_another_worker(&mut h).await;
    assert_eq!(in_doubt_cost(&h).await, amount);
    assert!(
        !hold_exists(&h, id).await,
        "the in-doubt booking settled the hold"
    );
    let (spent, reserved) = period_of(&h, team).await;
    assert!(spent + reserved <= d("0.009"), "{spent} + {reserved}");
    h.finish().await;
}

/// The chaos run's overspend: a worker parks an item that does not fit (its call intent
/// ends only with the commit of that decision), and dies before that commit. The item's
/// call was never made and had no hold; booked in doubt at its worst case it would push the
/// team past its limit, which the worker's one call in flight had used to the last cent.
#[tokio::test]
async fn a_worker_killed_after_parking_an_item_books_nothing_for_it() {
    let team = "parking";
    // Two items: one holds the budget and calls (8 s), the other does not fit and is
    // parked; the commit ending its intent waits for the call in flight.
    let (mut h, _, amount, _) = one_slow_call_holding(team, 2, |s| {
        s.worker.commit_interval = Duration::from_secs(60);
    })
    .await;
    let pool = h.db.pool.clone();
    eventually("the second item parked", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move { (count(&pool, "budget_parked").await == 1).then_some(()) }
    })
    .await;
    assert_eq!(
        count(&h.db.pool, "call_intents").await,
        2,
        "both intents open"
    );
    h.fleet.kill_worker(0).await;
    start_another_worker(&mut h).await;
    // The call in flight is booked in doubt at its hold; the parked item's intent ends.
    assert_eq!(in_doubt_cost(&h).await, amount);
    eventually(
        "the parked item's intent ends",
        Duration::from_secs(30),
        || {
            let pool = pool.clone();
            async move { (count(&pool, "call_intents").await == 0).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        count(&h.db.pool, "ledger").await,
        1,
        "one call, one booking"
    );
    assert_eq!(period_of(&h, team).await, (amount, Decimal::ZERO));
    h.finish().await;
}

#[tokio::test]
async fn bad_budgets_are_refused_and_nothing_is_written() {
    let h = Harness::start().await;
    let pool = &h.db.pool;
    let spec = |team: &str, monthly: &str, soft: Option<&str>| BudgetSpec {
        team: team.into(),
        monthly_usd: d(monthly),
        soft_usd: soft.map(d),
        when_exhausted: WhenExhausted::Downgrade,
    };
    let cases = [
        (spec("nobody", "10", None), false, "unknown team `nobody`"),
        (spec("nobody", "-5", None), true, "must be positive"),
        (spec("nobody", "0", None), true, "must be positive"),
        (spec("nobody", "1000000000000", None), true, "absurd"),
        (
            spec("nobody", "10", Some("20")),
            true,
            "below the hard limit",
        ),
        (spec("", "10", None), true, "must not be empty"),
    ];
    for (s, new_team, expected) in cases {
        let err = budgets::set(pool, &s, new_team).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
    assert_eq!(count(pool, "budgets").await, 0);
    let err = budgets::show(pool, Some("nobody")).await.unwrap_err();
    assert!(err.to_string().contains("unknown team"), "{err}");
    h.finish().await;
}

//! Eight workers race for a team's last dollars while their Postgres restarts (an outage
//! longer than the hold lease) and while the finance loop is stalled: no live worker's hold
//! is reclaimed, so nothing is booked past the hard limit. The test runs its own PostgreSQL
//! (restarting the shared one would disturb every other test).

use std::time::Duration;

use rust_decimal::Decimal;
use switchyard_sim::SimConfig;
use switchyard_store::budgets::{self, BudgetSpec, WhenExhausted};
use switchyard_testkit::eventually;

use crate::finance_support::{all_mmlu_items, d};
use crate::support::classify_job;

#[tokio::test]
async fn eight_workers_race_across_a_postgres_restart_with_the_finance_loop_stalled() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, _nats, _db, mut settings) = crate::support::on_own_postgres(dir.path()).await;
    settings.database.max_connections = 4;
    settings.worker.concurrency = switchyard_runtime::settings::count(32);
    settings.worker.ack_wait = Duration::from_secs(3);
    settings.worker.retry_delay = Duration::from_millis(300);
    settings.worker.max_deliver = 30;
    let lease = Duration::from_secs(2);
    settings.finance.reservation_lease = lease;
    // The finance loop (soft limits, resuming parked items) runs its first turn at start-up
    // and then stalls for the whole test: holds must live without it.
    settings.finance.refresh = Duration::from_millis(200);
    settings.finance.budget_poll = Duration::from_secs(3600);
    let mut fleet = switchyard_demo::fleet::Fleet::start(
        settings,
        Some((
            crate::support::data(),
            SimConfig {
                latency: Duration::from_millis(20),
                ..SimConfig::default()
            },
        )),
    )
    .await
    .unwrap();
    let pool = fleet.client().pool.clone();
    let (team, limit) = ("race-restart", d("1.00"));
    budgets::set(
        &pool,
        &BudgetSpec {
            team: team.into(),
            monthly_usd: limit,
            soft_usd: None,
            when_exhausted: WhenExhausted::Wait,
        },
        true,
    )
    .await
    .unwrap();
    let tiers: Vec<String> = fleet.settings.tiers.keys().cloned().collect();
    // The fleet starts with one worker.
    for _ in 0..7 {
        fleet.start_worker(tiers.clone()).await.unwrap();
    }
    assert_eq!(fleet.workers.iter().flatten().count(), 8);
    crate::support::workers_know_budget(&fleet, team).await;

    // Every item strong, no escalation: about $2.90 of calls for a $1.00 budget.
    let items = all_mmlu_items();
    let n = items.len() as i64;
    let mut spec = classify_job(items, 1.0, 0.0);
    spec.team = Some(team.into());
    let client = fleet.client();
    let job_id = client.submit(spec).await.unwrap();

    let spent = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, Decimal>(
            "SELECT COALESCE(sum(cost_usd), 0) FROM ledger WHERE team = $1",
        )
        .bind(team)
        .fetch_one(&pool)
        .await
    };
    // Postgres restarts (every session cut, crash recovery) once a third of the budget is
    // spent, with holds of every worker live, and stays away for twice the hold lease.
    eventually(
        "a third of the budget spent",
        Duration::from_secs(120),
        || {
            let pool = pool.clone();
            async move {
                let s = spent(pool).await.ok()?;
                (s >= limit / Decimal::from(3)).then_some(())
            }
        },
    )
    .await;
    let holds_before: i64 = sqlx::query_scalar("SELECT count(*) FROM budget_reservations")
        .fetch_one(&pool)
        .await
        .unwrap();
    pg.stop().unwrap();
    // The outage's length, not a synchronization.
    tokio::time::sleep(lease * 2).await;
    pg.resume().await.unwrap();

    // Quiet: every item answered or waiting, and no hold left. (With the finance loop
    // stalled, parked items are not resumed even when room comes back: that is its job.)
    let (done, waiting) = crate::support::budget_runs_dry(&pool, &job_id, n, false).await;
    let total = spent(pool.clone()).await.unwrap();
    let overspend = (total - limit).max(Decimal::ZERO);
    println!(
        "budget race across a Postgres restart, finance loop stalled, 8 workers: limit {limit} \
         USD, spent {} USD, overspend {overspend}, {holds_before} holds live at the restart, \
         {done} items answered, {waiting} waiting",
        total.normalize()
    );
    assert!(holds_before > 0, "the restart came with holds in flight");
    assert_eq!(overspend, Decimal::ZERO, "overspent");
    assert!(
        total >= limit / Decimal::TWO,
        "only {total} of {limit} spent: the race never reached the limit"
    );
    // The budget's books agree with the ledger, nothing left reserved, and no call was
    // booked in doubt or twice (no worker died).
    let (period_spent, reserved): (Decimal, Decimal) =
        sqlx::query_as("SELECT spent_usd, reserved_usd FROM budget_periods WHERE team = $1")
            .bind(team)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((period_spent, reserved), (total, Decimal::ZERO));
    let odd: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT outcome, usage_source, count(*) FROM ledger \
         WHERE team = $1 AND outcome IN ('in_doubt', 'duplicate') GROUP BY 1, 2",
    )
    .bind(team)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        odd.is_empty(),
        "no worker died, nothing in doubt or paid twice: {odd:?}"
    );
    fleet.stop().await;
    drop(pg);
}

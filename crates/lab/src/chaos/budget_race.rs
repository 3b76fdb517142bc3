//! A team's last dollars raced for across a PostgreSQL restart.
//!
//! A second team has a hard monthly budget (`wait` when exhausted) far below what its job
//! would cost. Its job (every item on the strong tier, no cascade) is submitted just before
//! PostgreSQL restarts, and the restart waits until a third of the budget is spent with holds
//! live, so the race for the last dollars runs across the outage, through the run's worker
//! kills. When the run is
//! over the team's books must show no spend past the limit, before and after the in-doubt
//! entries are settled against the provider's call log, and the budget's own counters must
//! agree with the ledger with nothing left reserved.
//!
//! **Except what a provider bills past `max_tokens`.** A hold covers a call's worst case with
//! an honest provider: no more completion tokens than the request allowed. The simulator's
//! huge odd answer bills tens of thousands of tokens past that (a provider ignoring
//! `max_tokens`); the ledger books what was billed, as it must, and no hold could have
//! covered it. The race reports that excess (`billed_past_max_tokens_usd`) and allows the
//! overspend up to it, never more. The run pauses huge answers while the race runs (one
//! would spend the whole budget at once and end the race before its last dollars were
//! raced for; they hit the race in four runs of five before), so the excess is 0 unless
//! the simulator is configured otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde::Serialize;
use switchyard_proto::{Cascade, Item, Policy, Routing, Task};
use switchyard_sim::{CallRecord, ModelPrice};
use switchyard_store::budgets::{self, BudgetSpec, WhenExhausted};
use switchyard_store::money::exact;

use switchyard_client::Client;

/// The racing team.
pub const TEAM: &str = "chaos-budget";
/// Its hard monthly limit: about two thirds of what its job costs on the strong tier.
pub const LIMIT_USD: Decimal = Decimal::from_parts(25, 0, 0, false, 2);
/// Items of its job.
pub const ITEMS: usize = 600;

/// What the race left in the books.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct BudgetRace {
    pub job_id: String,
    pub limit_usd: String,
    /// Holds of the team live when PostgreSQL was restarted (the race crossed the outage
    /// only when this is above 0).
    pub holds_at_restart: i64,
    /// The team's ledger total once the fleet was quiet, before reconciliation.
    pub spent_usd: String,
    /// The same after the in-doubt entries were settled against the call log.
    pub spent_after_reconcile_usd: String,
    /// Spend past the limit, before and after reconciliation (the larger).
    pub overspend_usd: String,
    /// What the team's calls were billed past the `max_tokens` they asked for (no hold
    /// covers that): the overspend may reach this, never more.
    pub billed_past_max_tokens_usd: String,
    /// The budget's own counter of spend, and what it still holds (must equal the ledger,
    /// and `0`).
    pub period_spent_usd: String,
    pub period_reserved_usd: String,
    /// The team's calls booked in doubt (a killed worker's hold, booked at its worst case).
    pub in_doubt_calls: i64,
    pub answered: i64,
    /// Items parked until the budget has room again.
    pub waiting: i64,
    pub failed: i64,
    /// Why the race does not hold, if it does not.
    pub problems: Vec<String>,
    /// The limit and the pre-reconciliation total as numbers, for [`check_spend`].
    #[serde(skip)]
    limit: Decimal,
    #[serde(skip)]
    spent: Decimal,
}

impl BudgetRace {
    /// A race that did not run, and why (the run fails on it).
    pub fn not_started(reason: String) -> Self {
        Self {
            problems: vec![reason],
            ..Self::default()
        }
    }

    /// No overspend, books that agree, and a race that really crossed the restart.
    pub fn holds(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Gives the team its hard budget (before the workers start, so that each reads it at
/// start-up).
///
/// # Errors
/// Database errors.
pub async fn set_budget(client: &Client) -> anyhow::Result<()> {
    budgets::set(
        &client.pool,
        &BudgetSpec {
            team: TEAM.into(),
            monthly_usd: LIMIT_USD,
            soft_usd: None,
            when_exhausted: WhenExhausted::Wait,
        },
        true,
    )
    .await?;
    Ok(())
}

/// Submits the team's job (`items`, all strong) and waits, for at most `within`, until a
/// third of the budget is spent and the team holds budget for calls in flight: the restart
/// then cuts the race in its middle. Returns the job id and the holds seen (0 when none was
/// seen in time: the restart then goes ahead and the report says so).
///
/// # Errors
/// When the job cannot be submitted.
pub async fn start(
    client: &Client,
    task: Task,
    items: Vec<Item>,
    within: Duration,
) -> anyhow::Result<(String, i64)> {
    let mut spec = switchyard_client::new_job(task, items);
    spec.team = Some(TEAM.to_owned());
    spec.project = Some("budget-race".to_owned());
    spec.policy = Policy {
        routing: Routing::StrongShare { value: 1.0 },
        cascade: Cascade {
            confidence_threshold: None,
            max_escalations: Some(0),
        },
        ..Policy::default()
    };
    let job_id = client.submit(spec).await?;
    let deadline = Instant::now() + within;
    let mut holds = 0;
    while Instant::now() < deadline {
        holds = live_holds(client).await.unwrap_or(0);
        let third = spent(client).await.unwrap_or(Decimal::ZERO) >= LIMIT_USD / Decimal::from(3);
        if holds > 0 && third {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((job_id, holds))
}

/// The team's holds right now.
///
/// # Errors
/// Database errors.
pub async fn live_holds(client: &Client) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM budget_reservations WHERE team = $1")
        .bind(TEAM)
        .fetch_one(&client.pool)
        .await
}

/// Waits, for at most `within`, until the race is quiet: every item of the job answered,
/// failed or parked, and no hold left (a killed worker's holds expire after the lease).
/// Returns whether it got there.
pub async fn wait_quiet(client: &Client, job_id: &str, items: i64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(c) = counts(client, job_id).await
            && c.answered + c.waiting + c.failed == items
            && c.holds == 0
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

struct Counts {
    answered: i64,
    waiting: i64,
    failed: i64,
    holds: i64,
}

async fn counts(client: &Client, job_id: &str) -> sqlx::Result<Counts> {
    let (answered, waiting, failed, holds): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM items WHERE job_id = $1 AND status = 'done'), \
         (SELECT count(*) FROM budget_parked WHERE job_id = $1), \
         (SELECT count(*) FROM items WHERE job_id = $1 AND status = 'failed'), \
         (SELECT count(*) FROM budget_reservations WHERE team = $2)",
    )
    .bind(job_id)
    .bind(TEAM)
    .fetch_one(&client.pool)
    .await?;
    Ok(Counts {
        answered,
        waiting,
        failed,
        holds,
    })
}

/// The team's ledger total.
///
/// # Errors
/// Database errors.
pub async fn spent(client: &Client) -> sqlx::Result<Decimal> {
    sqlx::query_scalar("SELECT COALESCE(sum(cost_usd), 0) FROM ledger WHERE team = $1")
        .bind(TEAM)
        .fetch_one(&client.pool)
        .await
}

/// The books of the race once the fleet is quiet, before reconciliation (`quiet` says
/// whether [`wait_quiet`] got there).
///
/// # Errors
/// Database errors.
pub async fn books(
    client: &Client,
    job_id: &str,
    holds_at_restart: i64,
    quiet: bool,
) -> sqlx::Result<BudgetRace> {
    let c = counts(client, job_id).await?;
    let total = spent(client).await?;
    let (period_spent, period_reserved, months): (Decimal, Decimal, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(spent_usd), 0), COALESCE(sum(reserved_usd), 0), count(*) \
         FROM budget_periods WHERE team = $1",
    )
    .bind(TEAM)
    .fetch_one(&client.pool)
    .await?;
    let in_doubt_calls: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ledger WHERE team = $1 AND kind = 'call' AND outcome = 'in_doubt'",
    )
    .bind(TEAM)
    .fetch_one(&client.pool)
    .await?;
    // A run that crosses the end of a month has two budget periods, each with the limit.
    let limit = LIMIT_USD * Decimal::from(months.max(1));
    let mut problems = Vec::new();
    if !quiet {
        problems.push(format!(
            "not quiet in time: {} answered, {} waiting, {} failed of {ITEMS}, {} holds left",
            c.answered, c.waiting, c.failed, c.holds
        ));
    }
    if holds_at_restart == 0 {
        problems.push("no hold was live when PostgreSQL restarted".to_owned());
    }
    if c.waiting == 0 {
        problems.push("the budget never ran dry (nothing waits)".to_owned());
    }
    if period_spent != total || period_reserved != Decimal::ZERO {
        problems.push(format!(
            "the budget's counters ({} spent, {} reserved) disagree with the ledger ({})",
            exact(period_spent),
            exact(period_reserved),
            exact(total)
        ));
    }
    Ok(BudgetRace {
        job_id: job_id.to_owned(),
        limit_usd: exact(limit),
        holds_at_restart,
        spent_usd: exact(total),
        spent_after_reconcile_usd: String::new(),
        overspend_usd: String::new(),
        billed_past_max_tokens_usd: String::new(),
        period_spent_usd: exact(period_spent),
        period_reserved_usd: exact(period_reserved),
        in_doubt_calls,
        answered: c.answered,
        waiting: c.waiting,
        failed: c.failed,
        problems,
        limit,
        spent: total,
    })
}

/// What the team's billed calls cost past their `max_tokens`: the simulator's huge odd
/// answers (`fault = "odd_huge"`) bill `extra_tokens` completion tokens more than the request
/// allowed, at the model's output price.
///
/// # Errors
/// Database errors.
pub async fn billed_past_max_tokens(
    client: &Client,
    calls: &[CallRecord],
    prices: &BTreeMap<String, ModelPrice>,
    extra_tokens: u32,
) -> sqlx::Result<Decimal> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT call_id FROM ledger WHERE team = $1 AND kind = 'call'")
            .bind(TEAM)
            .fetch_all(&client.pool)
            .await?;
    let ids: BTreeSet<&str> = ids
        .iter()
        .map(|id| id.strip_suffix(":settled").unwrap_or(id))
        .collect();
    Ok(calls
        .iter()
        .filter(|c| c.fault.as_deref() == Some("odd_huge") && c.billed())
        .filter(|c| {
            c.client_request_id
                .as_deref()
                .is_some_and(|id| ids.contains(id))
        })
        .filter_map(|c| prices.get(&c.model))
        .map(|p| Decimal::from(extra_tokens) * p.output_usd_per_mtok / Decimal::from(1_000_000))
        .sum())
}

/// Checks the spend against the limit once reconciliation is done: the ledger's total
/// before (`race.spent_usd`) and after it may pass the limit by no more than `beyond`, what
/// providers billed past `max_tokens` ([`billed_past_max_tokens`]).
///
/// # Errors
/// Database errors.
pub async fn check_spend(
    client: &Client,
    race: &mut BudgetRace,
    beyond: Decimal,
) -> sqlx::Result<()> {
    let after = spent(client).await?;
    race.spent_after_reconcile_usd = exact(after);
    race.billed_past_max_tokens_usd = exact(beyond);
    let before = race.spent;
    let overspend = (before.max(after) - race.limit).max(Decimal::ZERO);
    race.overspend_usd = exact(overspend);
    if overspend > beyond {
        race.problems.push(format!(
            "overspent by {} USD ({} before reconciliation, {} after), of which only {} was \
             billed past max_tokens",
            exact(overspend),
            exact(before),
            exact(after),
            exact(beyond)
        ));
    }
    Ok(())
}

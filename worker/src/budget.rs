//! The worker's side of budgets and bookings: hold a call's worst case before calling, hand
//! it to the commit that books the call, give it back when the call does not happen; divert
//! items that do not fit; resume parked items; announce soft limits; and tell each ledger row
//! what the counterfactual worlds would have paid. Holds are kept alive by the worker's lease
//! ([`crate::lease`]), not here. The accounting rules themselves live in
//! `switchyard_store::budgets`.
//!
//! **Worst case.** A prompt cannot have more tokens than bytes (every BPE token covers at
//! least one byte) plus a few per message for the chat template; a completion cannot exceed
//! `max_tokens` per choice asked for. So a hold of `(bytes + 8 per message + 16) × input price + max_tokens ×
//! output price` (times the choices) is never below the call's real cost with an honest provider, and a team
//! cannot overspend. It over-reserves the prompt (tokens are ~4 bytes), which only matters
//! for the last few calls of a budget.
//!
//! **Soft-limit warnings** go to `<prefix>.budget.warnings.<team>` (core NATS, JSON, see
//! docs/finance.md), once per team and month (the flag is set in Postgres, under the row lock)
//! and are also recorded as `soft_limit` budget events.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use switchyard_core::tariff::Tariff;
use switchyard_proto::WorkItem;
use switchyard_proto::topology::HEADER_MSG_ID;
use switchyard_store::booking::{Booking, Counterfactual};
use switchyard_store::budgets::{self, HoldRequest, Reservation, WhenExhausted};
use tokio_util::sync::CancellationToken;

use crate::context::{ModelRuntime, Worker};
use crate::llm::CompletionRequest;
use crate::price_book::PriceBook;
use crate::settle::Disposition;

/// A worker process's finance state.
#[derive(Debug)]
pub struct Finance {
    /// Price versions (for worst cases; bookings are priced by Postgres).
    pub prices: PriceBook,
    /// Teams with a budget, reloaded with the prices.
    budgeted: RwLock<HashSet<String>>,
    /// Who holds this process's holds: its worker id, whose lease keeps them alive (shown
    /// to operators in `budget_reservations.holder`).
    pub holder: String,
    /// The holds this process knows it holds: taken and not yet released or booked. Only
    /// these are renewed, so a hold the process lost track of (a release that failed during
    /// a Postgres outage, a reservation whose reply was lost) expires and is reclaimed
    /// instead of being renewed for as long as the worker lives.
    live: Arc<Mutex<HashSet<i64>>>,
}

impl Finance {
    /// Checks and loads the prices (see [`PriceBook::load_checked`]) and the budgeted teams.
    ///
    /// # Errors
    /// A model without a price; database errors.
    pub async fn load(
        pool: &PgPool,
        settings: &switchyard_runtime::Settings,
        holder: &str,
    ) -> anyhow::Result<Self> {
        let prices = PriceBook::load_checked(pool, settings).await?;
        let finance = Self {
            prices,
            budgeted: RwLock::default(),
            holder: holder.to_owned(),
            live: Arc::default(),
        };
        finance.refresh_budgets(pool).await?;
        Ok(finance)
    }

    async fn refresh_budgets(&self, pool: &PgPool) -> sqlx::Result<()> {
        let teams: HashSet<String> = budgets::budgeted_teams(pool).await?.into_iter().collect();
        *self
            .budgeted
            .write()
            .unwrap_or_else(PoisonError::into_inner) = teams;
        Ok(())
    }

    /// True when `team` has a budget (as of the last refresh).
    pub fn is_budgeted(&self, team: &str) -> bool {
        self.budgeted
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(team)
    }

    /// The holds to renew (see `live`).
    pub fn live_holds(&self) -> Vec<i64> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// Forgets holds whose calls were booked (the booking settled them).
    pub fn booked(&self, reservation_ids: impl IntoIterator<Item = i64>) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        for id in reservation_ids {
            live.remove(&id);
        }
    }

    fn track(&self, id: i64) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
    }
}

/// A budget hold of a call in flight. Dropped without [`Hold::hand_over`] (the call failed,
/// was given back, or the process is going down), it is released.
#[derive(Debug)]
pub struct Hold {
    id: i64,
    held_at: DateTime<Utc>,
    armed: bool,
    pool: PgPool,
    live: Arc<Mutex<HashSet<i64>>>,
}

impl Hold {
    /// The hold's id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// When the hold was taken (the database's clock): the call is priced at this time, so
    /// its spend lands in the month the hold was taken in.
    pub fn held_at(&self) -> DateTime<Utc> {
        self.held_at
    }

    /// Hands the hold to the commit that books the call (which settles it). It stays alive
    /// with the worker's lease until then ([`Finance::booked`] ends that).
    pub fn hand_over(mut self) -> i64 {
        self.armed = false;
        self.id
    }

    /// Leaves the hold to the in-doubt booking of a call that may have been sent and will not
    /// be booked by this process (it is stopping): released, its room could be taken by
    /// another call while this one's worst case is booked on top. Not renewed any more; the
    /// hold is not reclaimed while the call's intent is open, and the booking settles it.
    pub fn leave_to_in_doubt(mut self) {
        self.armed = false;
        self.untrack();
    }

    /// No longer renewed by this process.
    fn untrack(&self) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (pool, id) = (self.pool.clone(), self.id);
        // No longer renewed: if the release below fails, the hold expires and is reclaimed.
        self.untrack();
        // No runtime (the process is being torn down): the hold expires after its lease.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { release(&pool, id).await });
        }
    }
}

/// Gives back a hold handed over for a call that will not be made after all (see
/// [`Hold::hand_over`]); if Postgres cannot be asked, the hold expires.
pub async fn give_back(w: &Worker, reservation_id: i64) {
    w.finance.booked([reservation_id]);
    release(&w.pool, reservation_id).await;
}

/// Releases hold `id`; a failure is logged (the hold, no longer renewed, then expires).
async fn release(pool: &PgPool, id: i64) {
    if let Err(e) = budgets::release(pool, id).await {
        tracing::warn!(reservation_id = id, error = %e, "cannot release a budget hold; it will expire");
    }
}

/// Whether a call may go ahead.
#[derive(Debug)]
pub enum Admission {
    /// Call; the hold (teams with a budget) must live until the call is booked.
    Go(Option<Hold>),
    /// No call: the item was diverted (to the weak tier, or parked until the budget has
    /// room), or the budget could not be asked; what becomes of the message.
    Diverted(Disposition),
    /// No call, for good: an audit call the budget cannot fit (why). Recorded as the
    /// audit's failure, so that a quality job's pilot waiting for its answer knows none will
    /// come (a skip that left no trace kept the pilot waiting until its timeout).
    Skipped(String),
}

/// The most prompt tokens a request can have: a token covers at least one byte, plus a few
/// per message for the chat template (see the module docs); `n` times over for a provider
/// that takes a request per choice.
pub fn prompt_bound(request: &CompletionRequest) -> usize {
    request
        .messages
        .iter()
        .map(|m| m.content.len() + 8)
        .sum::<usize>()
        .saturating_add(16)
        .saturating_mul(request.requests() as usize)
}

/// The most a call can cost (see the module docs).
pub fn worst_case(t: &Tariff, request: &CompletionRequest) -> Decimal {
    let prompt_bound = i64::try_from(prompt_bound(request)).unwrap_or(i64::MAX / 2);
    t.cost(
        prompt_bound,
        0,
        i64::from(request.completion_bound()),
        false,
    )
}

/// The hold the call needs: its worst case when its team has a budget (and the call costs
/// something), else `None`. Decided once, before the attempt is claimed: the call's intent
/// records it (`held`), and [`admit`] takes exactly this hold. For such a call, no hold
/// means no request, which is how a lost worker's intent is known never to have been called
/// (see `switchyard_store::intents`).
pub fn hold_needed(
    w: &Worker,
    item: &WorkItem,
    model: &ModelRuntime,
    request: &CompletionRequest,
) -> Option<Decimal> {
    if !w.finance.is_budgeted(&item.team) {
        return None;
    }
    // No version cannot happen after the start-up check (versions are never removed); the
    // booking would fail loudly anyway.
    let version = w.finance.prices.at(&model.name, Utc::now())?;
    let amount = worst_case(&version.tariff(), request);
    (amount > Decimal::ZERO).then_some(amount)
}

/// The hold a claimed call asks for: its worst case ([`hold_needed`]), taken only while the
/// call's intent is still this worker's.
#[derive(Debug, Clone, Copy)]
pub struct HoldFor<'a> {
    pub call_id: &'a str,
    pub amount: Decimal,
    /// The call's prompt and completion token bounds (as its intent records them): Postgres
    /// prices them at the version in force too, and holds the larger amount.
    pub worst_tokens: (i32, i32),
}

/// Reserves `hold`. A call that does not fit is diverted by the team's policy: to the weak
/// tier (`downgrade`, from a higher tier) or parked until the budget has room; the message is
/// then settled here. A call whose claim was taken over meanwhile is not made.
pub async fn admit(
    w: &Worker,
    tier: &str,
    item: &WorkItem,
    model: &ModelRuntime,
    hold: Option<HoldFor<'_>>,
    payload: &Bytes,
    abort: &CancellationToken,
) -> Admission {
    let Some(HoldFor {
        call_id,
        amount,
        worst_tokens,
    }) = hold
    else {
        return Admission::Go(None);
    };
    let req = HoldRequest {
        team: &item.team,
        amount_usd: amount,
        holder: &w.finance.holder,
        job_id: &item.job_id,
        item_id: &item.item_id,
        attempt: i32::from(item.attempt),
        model: &model.name,
        lease: w.settings.finance.reservation_lease,
        at: None,
        call_id: Some(call_id),
        worst_tokens: Some(worst_tokens),
    };
    // Postgres unreachable or restarting: wait here (the message is kept alive by the lane's
    // keeper) rather than hand the item back, which spends one of its deliveries.
    let mut outage = crate::retry::service_wait();
    let reserved = loop {
        match budgets::reserve(&w.pool, &req).await {
            Err(e) if !abort.is_cancelled() && switchyard_store::is_transient_sqlx(&e) => {
                if outage.first() {
                    tracing::warn!(team = %item.team, error = %e, "Postgres unreachable, waiting to reserve budget");
                }
                tokio::select! {
                    () = outage.wait() => {}
                    () = abort.cancelled() => {}
                }
            }
            other => break other,
        }
    };
    match reserved {
        Ok(Reservation::Unbudgeted) => Admission::Go(None),
        Ok(Reservation::Held {
            reservation_id,
            held_at,
        }) => {
            w.finance.track(reservation_id);
            Admission::Go(Some(Hold {
                id: reservation_id,
                held_at,
                armed: true,
                pool: w.pool.clone(),
                live: w.finance.live.clone(),
            }))
        }
        Ok(Reservation::DoesNotFit { available_usd, .. }) if item.is_audit() => {
            tracing::info!(team = %item.team, job_id = %item.job_id, item_id = %item.item_id, "budget cannot fit an audit call, skipping it");
            Admission::Skipped(format!(
                "skipped: the team's budget cannot fit the audit call (worst case {} USD, {} USD available)",
                switchyard_store::money::exact(amount),
                switchyard_store::money::exact(available_usd)
            ))
        }
        Ok(Reservation::DoesNotFit {
            available_usd,
            when_exhausted,
        }) => Admission::Diverted(
            divert(
                w,
                tier,
                item,
                amount,
                available_usd,
                when_exhausted,
                payload,
            )
            .await,
        ),
        Ok(Reservation::ClaimLost) => {
            // This worker stalled past its lease after claiming: the attempt was taken over.
            tracing::warn!(job_id = %item.job_id, item_id = %item.item_id, "the attempt's claim was taken over while this worker stalled; not calling");
            Admission::Diverted(Disposition::Retry {
                after: w.settings.worker.retry_delay,
            })
        }
        Err(e) => {
            tracing::warn!(team = %item.team, error = %e, "cannot reserve budget, retrying later");
            Admission::Diverted(Disposition::Retry {
                after: w.settings.worker.retry_delay,
            })
        }
    }
}

/// Diverts a call that does not fit; the message's disposition.
async fn divert(
    w: &Worker,
    tier: &str,
    item: &WorkItem,
    amount: Decimal,
    available: Decimal,
    when: WhenExhausted,
    payload: &Bytes,
) -> Disposition {
    let retry_later = Disposition::Retry {
        after: w.settings.worker.retry_delay,
    };
    if !item.is_own() {
        // A shadow call measures, it is not work an item needs: skipped, not delayed. (An
        // audit's skip is recorded: see `Admission::Skipped`.)
        tracing::info!(team = %item.team, job_id = %item.job_id, item_id = %item.item_id, "budget cannot fit a shadow call, skipping it");
        return Disposition::Done;
    }
    let weak = &w.settings.dispatcher.weak_tier;
    let attempt = i32::from(item.attempt);
    let can_downgrade = when == WhenExhausted::Downgrade
        && tier != weak.as_str()
        && !item.local_only
        && w.settings.tiers.contains_key(weak);
    let detail = |what: String| {
        format!(
            "{what}: worst case {} USD, {} USD available",
            switchyard_store::money::exact(amount),
            switchyard_store::money::exact(available)
        )
    };
    if can_downgrade && item.attempt > 0 {
        // An escalation that does not fit: keep the answer the item already has.
        match budgets::keep_earlier_answer(&w.pool, &item.job_id, &item.item_id, attempt).await {
            Ok(Some(kept)) => {
                tracing::info!(team = %item.team, job_id = %item.job_id, item_id = %item.item_id, tier = %tier, kept = %kept, "budget cannot fit the escalation, keeping the earlier answer");
                let recorded = budgets::record_downgrade(
                    &w.pool,
                    &item.team,
                    &item.job_id,
                    &item.item_id,
                    attempt,
                    &detail(format!(
                        "escalation to {tier} skipped, the {kept} answer kept"
                    )),
                )
                .await;
                if let Err(e) = recorded {
                    tracing::warn!(error = %e, "cannot record a budget downgrade");
                }
                announce_if_finished(w, &item.job_id).await;
                return Disposition::Done;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep an earlier answer, retrying later");
                return retry_later;
            }
        }
    }
    let settled = if can_downgrade {
        let mut down = item.clone();
        down.tier = weak.clone();
        down.attempt = item.attempt.saturating_add(1);
        down.escalations_left = 0;
        tracing::info!(team = %item.team, job_id = %item.job_id, item_id = %item.item_id, from = %tier, to = %weak, "budget cannot fit the call, downgrading");
        // Published first, then the item moved on: a crash in between leaves the item at this
        // attempt, whose redelivery downgrades again (the same message id).
        let moved = async {
            crate::committer::publish_escalations(w, &[&down]).await?;
            switchyard_store::items::advance(&w.pool, &item.job_id, &item.item_id, attempt, weak)
                .await?;
            anyhow::Ok(())
        };
        match moved.await {
            Ok(()) => budgets::record_downgrade(
                &w.pool,
                &item.team,
                &item.job_id,
                &item.item_id,
                attempt,
                &detail(format!("tier {tier} → {weak}")),
            )
            .await
            .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        }
    } else {
        tracing::info!(team = %item.team, job_id = %item.job_id, item_id = %item.item_id, tier = %tier, "budget cannot fit the call, parking the item until it can");
        budgets::park(
            &w.pool,
            &item.team,
            &item.job_id,
            &item.item_id,
            attempt,
            tier,
            amount,
            payload,
        )
        .await
        .map_err(anyhow::Error::from)
    };
    match settled {
        Ok(()) => Disposition::Done,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot divert an item over budget, retrying later");
            retry_later
        }
    }
}

/// Finishes the job if this was its last open item, and says so on its done subject (as the
/// committer does after a commit).
pub(crate) async fn announce_if_finished(w: &Worker, job_id: &str) {
    match switchyard_store::jobs::complete_if_done(&w.pool, job_id).await {
        Ok(Some(status)) => {
            let event = switchyard_proto::event::JobEvent {
                v: switchyard_proto::PROTOCOL_VERSION,
                job_id: job_id.to_owned(),
                kind: status,
                finished: 0,
            };
            if let Ok(bytes) = switchyard_proto::codec::encode(&event) {
                let subject = w.settings.topology().job_done_subject(job_id);
                let _ = w.client.publish(subject, bytes.into()).await;
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(job_id = %job_id, error = %e, "cannot check job completion"),
    }
}

/// The finance side of a call's ledger row: priced at `priced_at`, its counterfactual shares
/// (see docs/finance.md), and the hold it settles.
pub fn booking_for(
    w: &Worker,
    tier: &str,
    item: &WorkItem,
    answer_escalated: bool,
    priced_at: DateTime<Utc>,
    reservation_id: Option<i64>,
) -> Booking {
    let s = &w.settings;
    let d = &s.dispatcher;
    // Reached this tier because a lower tier's answer escalated (a budget downgrade or a
    // retry lands on a tier nothing escalates to).
    let escalation = item.attempt > 0
        && !item.is_shadow()
        && s.tiers
            .values()
            .any(|t| t.escalate_to.as_deref() == Some(tier));
    let reprice = |t: &str| {
        s.model_for(t, &item.models)
            .map_or(Counterfactual::Own, |m| {
                Counterfactual::Reprice(m.to_owned())
            })
    };
    let (all_strong, all_weak) = if item.is_shadow() {
        // Shadow calls exist in neither counterfactual (they are reported as shadow cost).
        (Counterfactual::Zero, Counterfactual::Zero)
    } else if tier == d.strong_tier {
        let weak = if escalation {
            Counterfactual::Zero
        } else {
            reprice(&d.weak_tier)
        };
        (Counterfactual::Own, weak)
    } else if tier == d.weak_tier {
        let strong = if answer_escalated {
            Counterfactual::Zero
        } else {
            reprice(&d.strong_tier)
        };
        (strong, Counterfactual::Own)
    } else {
        // Pinned tiers (local-only items) run there in every world.
        (Counterfactual::Own, Counterfactual::Own)
    };
    Booking {
        escalation,
        all_strong,
        all_weak,
        reservation_id,
        ..Booking::at(priced_at)
    }
}

/// The soft-limit warning's payload (JSON) on `<prefix>.budget.warnings.<team>`.
#[derive(Debug, Clone, Serialize)]
pub struct SoftLimitWarning {
    pub v: u16,
    pub kind: &'static str,
    #[serde(flatten)]
    pub crossing: budgets::SoftCrossing,
}

/// Keeps prices and budgets current until `token` is cancelled. A task of its own: the
/// budget loop below may stall for minutes on a large resume, and a worker that did not learn
/// of a new budget meanwhile would call without holds.
pub async fn run_refresh_loop(w: Worker, token: CancellationToken) {
    let mut refresh = tokio::time::interval(w.settings.finance.refresh);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = refresh.tick() => {
                if let Err(e) = w.finance.prices.refresh(&w.pool).await {
                    tracing::warn!(error = %e, "cannot refresh prices");
                }
                if let Err(e) = w.finance.refresh_budgets(&w.pool).await {
                    tracing::warn!(error = %e, "cannot refresh budgets");
                }
            }
        }
    }
}

/// Announces soft limits and resumes parked items, until `token` is cancelled. (Holds are
/// renewed by the lease task and budgets refreshed by [`run_refresh_loop`]: this loop may
/// stall for minutes on a large resume without any live hold being reclaimed or any budget
/// going unseen.)
pub async fn run_finance_loop(w: Worker, token: CancellationToken) {
    let mut poll = tokio::time::interval(w.settings.finance.budget_poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = poll.tick() => {
                if let Err(e) = announce_soft_limits(&w).await {
                    tracing::warn!(error = %format!("{e:#}"), "cannot check soft limits");
                }
                if let Err(e) = resume_parked(&w).await {
                    tracing::warn!(error = %format!("{e:#}"), "cannot resume parked items");
                }
            }
        }
    }
}

async fn announce_soft_limits(w: &Worker) -> anyhow::Result<()> {
    for crossing in budgets::soft_limit_crossings(&w.pool).await? {
        let subject = w.settings.topology().budget_warning_subject(&crossing.team);
        tracing::warn!(team = %crossing.team, spent_usd = %crossing.spent_usd, soft_usd = %crossing.soft_usd, "soft budget limit reached");
        let event = SoftLimitWarning {
            v: 1,
            kind: "soft_limit",
            crossing,
        };
        w.client
            .publish(subject, serde_json::to_vec(&event)?.into())
            .await?;
    }
    Ok(())
}

/// Message id of a resumed item: unique per parking (`b:<park_id>`), so a crash between
/// publishing and forgetting the parked row re-publishes into JetStream's de-duplication.
fn resume_msg_id(park_id: i64) -> String {
    format!("b:{park_id}")
}

/// Re-publishes parked items whose team has room for them again.
async fn resume_parked(w: &Worker) -> anyhow::Result<usize> {
    let mut tx = w.pool.begin().await?;
    let parked = budgets::resumable(&mut tx, 256).await?;
    if parked.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let t = w.settings.topology();
    let mut resumed = Vec::new();
    let mut acks = Vec::new();
    for p in &parked {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HEADER_MSG_ID, resume_msg_id(p.park_id).as_str());
        match w
            .js
            .publish_with_headers(
                t.work_subject(&p.tier),
                headers,
                Bytes::from(p.payload.clone()),
            )
            .await
        {
            Ok(ack) => acks.push((p.park_id, ack)),
            Err(e) => tracing::warn!(error = %e, "cannot resume a parked item"),
        }
    }
    for (id, ack) in acks {
        if tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .is_ok_and(|r| r.is_ok())
        {
            resumed.push(id);
        }
    }
    budgets::finish_resume(&mut tx, &resumed).await?;
    tx.commit().await?;
    if !resumed.is_empty() {
        tracing::info!(
            items = resumed.len(),
            "resumed items their budget has room for"
        );
    }
    Ok(resumed.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use switchyard_core::prompt::Message;

    #[test]
    fn worst_case_bounds_prompt_by_bytes_and_completion_by_max_tokens() {
        let t = Tariff::simple(
            Decimal::from_str("10").unwrap(),
            Decimal::from_str("30").unwrap(),
        )
        .unwrap();
        let request = CompletionRequest {
            model: "m".into(),
            messages: vec![
                Message {
                    role: "system".into(),
                    content: "x".repeat(100),
                },
                Message {
                    role: "user".into(),
                    content: "y".repeat(300),
                },
            ],
            max_tokens: 4,
            logprobs: false,
            top_logprobs: 0,
            client_request_id: None,
            n: 1,
            temperature: 0.0,
            separate_choices: false,
            params: serde_json::Map::new(),
        };
        // (100 + 8 + 300 + 8 + 16) × 10 + 4 × 30, per million.
        assert_eq!(
            worst_case(&t, &request),
            Decimal::from_str("0.0044400").unwrap()
        );
        // Never below the real cost of a call whose tokens fit the bounds.
        assert!(worst_case(&t, &request) >= t.cost(400, 0, 4, false));
        // Five choices: one prompt for a provider with `n`, five for one that takes a
        // request per choice; five completions either way.
        let five = CompletionRequest { n: 5, ..request };
        assert_eq!(
            worst_case(&t, &five),
            Decimal::from_str("0.0049200").unwrap()
        );
        let separate = CompletionRequest {
            separate_choices: true,
            ..five
        };
        assert_eq!(
            worst_case(&t, &separate),
            Decimal::from_str("0.0222000").unwrap()
        );
    }
}

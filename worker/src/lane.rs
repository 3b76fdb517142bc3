//! One tier's pull loop and what happens to each item.
//!
//! Per message: decode; **claim** the attempt (its call intent, group-committed, see
//! [`crate::claims`]): a delivery of an attempt that already has an outcome calls nothing,
//! one whose attempt a live worker is calling waits; hold the budget; call; judge and decide
//! escalation (the job's calibrated rule, or the confidence threshold); hand the outcome to the [`committer`], which books it and settles the message. Every path ends in
//! one [`Disposition`], applied by [`settle`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use switchyard_core::confidence::{self, Judgement};
use switchyard_core::escalation::{self, AnswerFeatures};
use switchyard_core::{prompt, samples};
use switchyard_proto::{Task, WorkItem, codec};
use switchyard_store::dead_letters::{self, DeadLetter};
use switchyard_store::intents::{Claim, Intent};
use switchyard_store::outcomes::{self, AttemptKey, CallEntry, Outcome, UsageSource};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget;
use crate::call::{CallFailure, Patience, call_model};
use crate::claims::{ClaimError, Claims};
use crate::committer::{self, InFlight, InFlightGuard, Pending};
use crate::context::{ModelRuntime, Worker, WorkerCounters};
use crate::llm::{Completion, CompletionRequest};
use crate::settle::{Delivery, Disposition, Keeper, settle};

/// How long one pull request waits when the tier is idle.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Pulls the tier's items until `shutdown`, then stops pulling, lets in-flight items finish
/// within `shutdown_grace`, gives back (naks) the rest, and flushes the last commits.
///
/// A lane pulls only what it can start: each pull request asks for as many messages as it
/// has free call slots, so no message waits in a client buffer, unseen by the keep-alive,
/// while its `ack_wait` runs out.
///
/// # Errors
/// When the consumer cannot be created.
pub async fn run_lane(w: Worker, tier: String, shutdown: CancellationToken) -> anyhow::Result<()> {
    let spec = switchyard_runtime::nats::worker_consumer_spec(&w.settings, &tier);
    let consumer = switchyard_runtime::nats::ensure_consumer(&w.js, &spec).await?;
    let ws = &w.settings.worker;
    // Cancelled at the end of the grace period: in-flight calls give their items back and
    // the committer stops retrying.
    let abort = CancellationToken::new();
    let keeper = Keeper::new(w.js.clone());
    let keeper_stop = CancellationToken::new();
    let keeper_task = tokio::spawn(keeper.clone().run(ws.ack_wait / 3, keeper_stop.clone()));
    let (tx, rx) = mpsc::channel::<Pending>(ws.commit_batch.get() * 4);
    // Per lane, like the committer it informs: another lane's calls never reach this one.
    let in_flight = InFlight::default();
    let committer = tokio::spawn(committer::run(
        w.clone(),
        rx,
        in_flight.clone(),
        abort.clone(),
    ));
    let (claims, claims_task) = Claims::start(w.clone());
    let (batches, batcher) = crate::batching::start(w.clone(), tx.clone());
    let permits = Arc::new(Semaphore::new(ws.concurrency.get()));
    let tracker = TaskTracker::new();
    tracing::info!(tier = %tier, consumer = %spec.durable, "worker lane ready");
    'pull: loop {
        // Wait for a free slot, then ask for as many messages as there are free slots.
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let free = (1 + permits.available_permits()).min(ws.fetch_batch.get());
        let request = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = consumer.batch().max_messages(free).expires(PULL_EXPIRES).messages() => r,
        };
        let mut batch = match request {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(tier = %tier, error = %e, "pull error, retrying");
                drop(first);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        let mut slot = Some(first);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => {
                    give_back_rest(&w, &mut batch, &keeper).await;
                    break 'pull;
                }
                n = batch.next() => n,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(tier = %tier, error = %e, "pull error, continuing");
                    break;
                }
                None => break,
            };
            let delivery = Delivery::new(&w.js, msg, &keeper);
            // Slots were free when the request was made and only this loop takes them.
            let permit = match slot.take() {
                Some(p) => p,
                None => match permits.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        let after = Duration::from_millis(100);
                        settle(&w, delivery, Disposition::GiveBack { after }).await;
                        continue;
                    }
                },
            };
            let (w2, tier2, tx2, abort2, claims2, batches2) = (
                w.clone(),
                tier.clone(),
                tx.clone(),
                abort.clone(),
                claims.clone(),
                batches.clone(),
            );
            // Counted from here until the committer receives the outcome or the message is
            // settled here (the guard is dropped on every path).
            let guard = in_flight.start();
            tracker.spawn(async move {
                process(
                    &w2, &tier2, delivery, &tx2, &batches2, &claims2, &abort2, guard,
                )
                .await;
                drop(permit);
            });
        }
    }
    tracker.close();
    tracing::info!(tier = %tier, in_flight = tracker.len(), "draining");
    if tokio::time::timeout(ws.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(tier = %tier, remaining = tracker.len(), "grace period over, giving items back");
        abort.cancel();
        tracker.wait().await;
    }
    // The batcher records what it holds and gives back through the committer what it cannot.
    drop(batches);
    let _ = batcher.await;
    drop(tx);
    drop(claims);
    let _ = committer.await;
    let _ = claims_task.await;
    keeper_stop.cancel();
    let _ = keeper_task.await;
    tracing::info!(tier = %tier, "lane stopped");
    Ok(())
}

/// Messages of the last pull that arrived but were not started go back at once (with a
/// delay: an immediate redelivery would come back to this very lane, still draining). A
/// bounded drain: at most one pull's worth, 50 ms of silence ends it.
async fn give_back_rest(
    w: &Worker,
    batch: &mut async_nats::jetstream::consumer::pull::Batch,
    keeper: &Keeper,
) {
    for _ in 0..w.settings.worker.fetch_batch.get() {
        match tokio::time::timeout(Duration::from_millis(50), batch.next()).await {
            Ok(Some(Ok(m))) => {
                let d = Delivery::new(&w.js, m, keeper);
                let after = Duration::from_millis(500);
                settle(w, d, Disposition::GiveBack { after }).await;
            }
            _ => break,
        }
    }
}

/// Where a message goes once handled here.
#[expect(
    clippy::large_enum_variant,
    reason = "lives for one message's hand-off; boxing the outcome would allocate per call for nothing"
)]
enum Handled {
    /// Settled without a commit.
    Settle(Disposition),
    /// Booked and decided by the committer, which settles the message after the commit.
    Commit {
        outcome: Outcome,
        escalation: Option<WorkItem>,
        then: Disposition,
    },
    /// A line for a provider batch: the lane's batcher records it and settles the message.
    Batch(crate::batching::Line),
}

/// Handles one message and hands it to the committer or settles it.
#[expect(clippy::too_many_arguments, reason = "a lane's hand-offs")]
async fn process(
    w: &Worker,
    tier: &str,
    d: Delivery,
    tx: &mpsc::Sender<Pending>,
    batches: &mpsc::Sender<crate::batching::Queued>,
    claims: &Claims,
    abort: &CancellationToken,
    in_flight: InFlightGuard,
) {
    match handle(w, tier, &d, claims, abort).await {
        Handled::Batch(line) => {
            drop(in_flight);
            let queued = crate::batching::Queued { line, delivery: d };
            if let Err(e) = batches.send(queued).await {
                // The batcher is gone (shutdown): the line was never sent. Its hold goes
                // back, so the intent left with this worker ends unbooked once its lease has
                // ended (a budgeted team's call with no hold was never made); an unbudgeted
                // one is booked in doubt and reconciled.
                if let Some(id) = e.0.line.reservation_id {
                    crate::budget::give_back(w, id).await;
                }
                let after = Duration::ZERO;
                settle(w, e.0.delivery, Disposition::GiveBack { after }).await;
            }
        }
        Handled::Settle(disposition) => {
            drop(in_flight);
            // Stopping: whatever could not be seen through goes back with its deliveries.
            settle(w, d, disposition.when_stopping(abort.is_cancelled())).await;
        }
        Handled::Commit {
            outcome,
            escalation,
            then,
        } => {
            let p = Pending {
                outcome,
                delivery: d,
                escalation,
                then,
                in_flight: Some(in_flight),
            };
            if let Err(e) = tx.send(p).await {
                // The committer is gone (shutdown): give the item back.
                let p = e.0;
                let after = Duration::ZERO;
                settle(w, p.delivery, Disposition::GiveBack { after }).await;
            }
        }
    }
}

/// The whole life of one delivery up to its outcome.
async fn handle(
    w: &Worker,
    tier: &str,
    d: &Delivery,
    claims: &Claims,
    abort: &CancellationToken,
) -> Handled {
    let ws = &w.settings.worker;
    let retry_later = Disposition::Retry {
        after: ws.retry_delay,
    };
    let item: WorkItem = match codec::decode(&d.payload) {
        Ok(item) => item,
        // Written by a newer version (a chat item during a rolling upgrade): not malformed,
        // only not yet readable here. Leave it for an upgraded worker, offered again after
        // an `ack_wait` each time: `max_deliver × ack_wait` of grace (5 minutes by default)
        // before it becomes a dead letter, with the reason.
        Err(e @ codec::DecodeError::UnsupportedVersion { .. }) if d.delivered < ws.max_deliver => {
            tracing::warn!(subject = %d.subject, error = %e, "a newer worker must take this message; leaving it");
            return Handled::Settle(Disposition::Retry { after: ws.ack_wait });
        }
        Err(e) => return Handled::Settle(dead_letter_undecodable(w, d, &e.to_string()).await),
    };
    // A field Postgres cannot store would fail the claim statement, and with it the claims
    // of every message grouped with this one, on each delivery: refused alone, at sight.
    if let Some(field) = unstorable_field(&item) {
        let why = format!("its `{field}` holds a NUL byte, which Postgres cannot store");
        return Handled::Settle(dead_letter_undecodable(w, d, &why).await);
    }
    let key = AttemptKey {
        job_id: item.job_id.clone(),
        item_id: item.item_id.clone(),
        attempt: i32::from(item.attempt),
    };
    let fail = |error: String, call: Option<CallEntry>, intent: Option<String>| Handled::Commit {
        outcome: Outcome::Failed {
            key: key.clone(),
            subject: d.subject.clone(),
            deliveries: i32::try_from(d.delivered).unwrap_or(i32::MAX),
            error,
            call,
            intent,
        },
        escalation: None,
        then: Disposition::Done,
    };
    // Defence in depth: the dispatcher, escalation, shadow sampling, budget downgrades and
    // retries all keep `local_only` items on local tiers; a message that says otherwise (a
    // bug, a hand-made message) is refused before anything is sent to a model.
    if item.local_only && !w.settings.tiers.get(tier).is_some_and(|t| t.local) {
        return fail(
            format!(
                "local_only item refused on tier `{tier}`, which is not local (nothing was \
                 sent to its model)"
            ),
            None,
            None,
        );
    }
    let pinned = pinned_model(&item);
    let model = match &pinned {
        Some(name) => w.models.get(name.as_str()),
        None => w
            .settings
            .model_for(tier, &item.models)
            .and_then(|m| w.models.get(m)),
    };
    let Some(model) = model else {
        return fail(
            match pinned {
                Some(name) => format!(
                    "{MODEL_NOT_FOUND}: the request names model `{name}`, which this \
                     deployment does not configure (nothing was sent)"
                ),
                None => format!(
                    "no model configured for tier `{tier}` (job override: {:?})",
                    item.models.get(tier)
                ),
            },
            None,
            None,
        );
    };

    let call_id = uuid::Uuid::now_v7().to_string();
    let request = request_for(&item, model, &call_id);

    // The claim: the intent is durable before the request can leave. It records whether the
    // call goes out only under a budget hold, the hold `admit` takes below.
    let (intent, hold_needed) = intent_for(w, tier, &item, model, &request, &key, &call_id);
    let worst_tokens = (intent.prompt_bound, intent.max_tokens);
    match claim_patiently(w, claims, intent, abort).await {
        Ok(Claim::Claimed) => {}
        Ok(Claim::Settled { escalate }) => {
            WorkerCounters::add(&w.counters.redelivered_skipped, 1);
            crate::metrics::settled_before(w);
            if escalate && let Some(up) = escalation_for(w, tier, &item) {
                // The escalation of the committed answer may not have been published.
                if let Err(e) = committer::publish_escalations(w, &[&up]).await {
                    tracing::warn!(error = %e, "cannot re-publish an escalation, retrying later");
                    return Handled::Settle(retry_later);
                }
            }
            return Handled::Settle(Disposition::Done);
        }
        Ok(Claim::Stale | Claim::NoItem) => {
            WorkerCounters::add(&w.counters.redelivered_skipped, 1);
            crate::metrics::settled_before(w);
            return Handled::Settle(Disposition::Done);
        }
        Ok(Claim::Busy) => {
            // Another live worker is still calling this attempt after we waited as long as
            // its lease: look again later.
            let after = crate::lease::lease(w) / 2;
            return Handled::Settle(Disposition::Retry { after });
        }
        Err(e) => {
            tracing::warn!(job_id = %item.job_id, item_id = %item.item_id, error = %format!("{e:#}"), "cannot claim the attempt, retrying later");
            return Handled::Settle(retry_later);
        }
    }
    let released = |then: Disposition| Handled::Commit {
        outcome: Outcome::Released {
            key: key.clone(),
            call_id: call_id.clone(),
        },
        escalation: None,
        then,
    };

    // Teams with a budget: hold the call's worst case first (released if the call does not
    // happen, settled by the commit that books it); a call that does not fit is diverted.
    let hold_for = hold_needed.map(|amount| budget::HoldFor {
        call_id: &call_id,
        amount,
        worst_tokens,
    });
    let hold = match budget::admit(w, tier, &item, model, hold_for, &d.payload, abort).await {
        budget::Admission::Go(hold) => hold,
        budget::Admission::Diverted(disposition) => return released(disposition),
        budget::Admission::Skipped(reason) => return fail(reason, None, Some(call_id.clone())),
    };
    let priced_at = hold
        .as_ref()
        .map_or_else(chrono::Utc::now, budget::Hold::held_at);
    // A job that can wait: the attempt goes into a provider batch (its intent and hold with
    // it) instead of being called now.
    if crate::batching::eligible(w, &item, model) {
        return Handled::Batch(crate::batching::Line {
            key,
            call_id,
            tier: tier.to_owned(),
            model: model.name.clone(),
            request,
            reservation_id: hold.map(budget::Hold::hand_over),
            priced_at,
            deadline: item.deadline.unwrap_or(0),
            work: d.payload.to_vec(),
        });
    }
    let estimated_tokens = (item.text.len() / 4) as u32 + request.completion_bound();
    WorkerCounters::add(&w.counters.calls, 1);
    let call_started = std::time::Instant::now();
    let exhausted = d.delivered >= ws.max_deliver;
    // On its last delivery an item is not handed back to an open breaker (that would fail
    // it untried): it waits here for the breaker's probe, up to `max_hold`.
    let patience = Patience {
        max_retries: model.settings.max_retries,
        breaker_hold: if exhausted {
            ws.breaker.max_hold
        } else {
            Duration::ZERO
        },
    };
    // The lane's keeper keeps the message alive meanwhile (`()`: no keep-alive of its own).
    let (result, stats) = call_model(
        &model.client,
        &model.limiter,
        &model.breaker,
        &request,
        estimated_tokens,
        patience,
        &(),
        ws.ack_wait / 3,
        abort,
    )
    .await;
    WorkerCounters::add(&w.counters.throttled, u64::from(stats.throttled));
    WorkerCounters::add(&w.counters.retries, u64::from(stats.retries));
    WorkerCounters::add(&w.counters.breaker_waits, u64::from(stats.breaker_waits));
    crate::metrics::called(w, &model.name, &result, &stats, call_started.elapsed());
    let booking = CallBooking {
        w,
        tier,
        item: &item,
        model,
        call_id: &call_id,
        priced_at,
        retry: d.delivered > 1,
        batch: false,
        subject: &d.subject,
        deliveries: i32::try_from(d.delivered).unwrap_or(i32::MAX),
    };
    let entry = |usage: Usage, escalated: bool, hold: Option<budget::Hold>| {
        booking.entry(usage, escalated, hold.map(budget::Hold::hand_over))
    };
    // A call that may be billed and has no answer: booked, and the item handed back for
    // another delivery (failed instead on its last one, or with `fails_it`'s error).
    let booked_then_back = |call: CallEntry,
                            e: &crate::llm::ProviderError,
                            fails_it: Option<String>,
                            what: &str| {
        let last = exhausted.then(|| format!("gave up after {} deliveries: {e}", d.delivered));
        if let Some(error) = fails_it.or(last) {
            return fail(error, Some(call), None);
        }
        tracing::warn!(job_id = %item.job_id, item_id = %item.item_id, error = %e, "{what}, item will be redelivered");
        Handled::Commit {
            outcome: Outcome::Unusable {
                key: key.clone(),
                call,
            },
            escalation: None,
            then: retry_later.clone(),
        }
    };
    let completion = match result {
        Ok(c) => c,
        Err(CallFailure::ShuttingDown { sent: false }) => {
            return released(Disposition::Retry {
                after: Duration::ZERO,
            });
        }
        Err(CallFailure::ShuttingDown { sent: true }) => {
            // The request may have reached the provider: its intent stays, and is booked in
            // doubt once this process's lease has ended, settling the hold kept for it. The
            // item goes back at once.
            if let Some(hold) = hold {
                hold.leave_to_in_doubt();
            }
            return Handled::Settle(Disposition::Retry {
                after: Duration::ZERO,
            });
        }
        Err(CallFailure::CircuitOpen {
            retry_in,
            last_error,
            no_room,
        }) => {
            // Back when the breaker lets a probe through, spread out so the items do not all
            // return at once.
            let spread = retry_in.mul_f64(rand::random_range(1.0..1.5));
            if exhausted && no_room {
                // Its last delivery, and as many items as may wait for the breaker already
                // do: back as a copy with its deliveries kept, its lane slot freed.
                return released(Disposition::GiveBack {
                    after: spread.max(ws.retry_delay),
                });
            }
            if exhausted {
                let error = format!(
                    "gave up after {} deliveries: circuit breaker open for `{}` longer than \
                     `worker.breaker.max_hold` ({:?}; provider failing; last error: {last_error})",
                    d.delivered, model.name, ws.breaker.max_hold
                );
                return fail(error, None, Some(call_id.clone()));
            }
            return released(Disposition::Retry {
                after: spread.max(ws.retry_delay),
            });
        }
        Err(CallFailure::Refused(e)) => return fail(e.to_string(), None, Some(call_id.clone())),
        Err(CallFailure::Exhausted(e)) => {
            if exhausted {
                let error = format!("gave up after {} deliveries: {e}", d.delivered);
                return fail(error, None, Some(call_id.clone()));
            }
            tracing::warn!(job_id = %item.job_id, item_id = %item.item_id, error = %e, delivered = d.delivered, "call failed, item will be redelivered");
            return released(retry_later);
        }
        Err(CallFailure::InDoubt(e)) => {
            // Sent, and no answer in time: the provider may have made and billed it. Booked
            // in doubt at its worst case (its hold settled by it), as a lost worker's call is,
            // until reconciliation with the provider's usage says; the item is tried again
            // under a new call id.
            let call = entry(Usage::worst_case(worst_tokens), false, hold);
            return booked_then_back(call, &e, None, "call in doubt booked at its worst case");
        }
        Err(CallFailure::Unusable(e)) => {
            // Answered and possibly billed: booked at an estimate of its usage.
            let call = entry(Usage::estimated(&request, &e), false, hold);
            let too_large = matches!(e, crate::llm::ProviderError::TooLarge { .. })
                .then(|| format!("{e} (worker.max_answer_bytes is {})", ws.max_answer_bytes));
            return booked_then_back(call, &e, too_large, "unusable answer booked");
        }
    };

    let (outcome, escalation) =
        booking.answered(key, completion, hold.map(budget::Hold::hand_over));
    Handled::Commit {
        outcome,
        escalation,
        then: Disposition::Done,
    }
}

/// What booking an attempt's call needs, whichever path its answer takes: called here in
/// real time, or answered in a provider batch and booked by whichever worker reads the
/// batch's results ([`crate::batching`]).
pub(crate) struct CallBooking<'a> {
    pub w: &'a Worker,
    pub tier: &'a str,
    pub item: &'a WorkItem,
    pub model: &'a ModelRuntime,
    pub call_id: &'a str,
    /// The call is priced at the version in force then (its budget hold's time).
    pub priced_at: chrono::DateTime<chrono::Utc>,
    /// The delivery was not the first (its cost is reported as retry cost).
    pub retry: bool,
    /// A provider batch line: priced at the batch discount.
    pub batch: bool,
    /// Where the work message came from and how often, for a failure's dead letter.
    pub subject: &'a str,
    pub deliveries: i32,
}

impl CallBooking<'_> {
    /// The ledger entry of the call, settling the budget hold `reservation_id`.
    fn entry(&self, usage: Usage, escalated: bool, reservation_id: Option<i64>) -> CallEntry {
        let base = budget::booking_for(
            self.w,
            self.tier,
            self.item,
            escalated,
            self.priced_at,
            None,
        );
        CallEntry {
            call_id: self.call_id.to_owned(),
            provider_response_id: usage
                .response_id
                .as_deref()
                .and_then(outcomes::sanitize_response_id),
            team: self.item.team.clone(),
            project: self.item.project.clone(),
            tier: self.tier.to_owned(),
            model: self.model.name.clone(),
            provider: self.model.settings.provider.clone(),
            price_id: self.model.price_id,
            prompt_tokens: usage.prompt,
            completion_tokens: usage.completion,
            cost_usd: self.model.price.cost(
                u32::try_from(usage.prompt).unwrap_or(0),
                u32::try_from(usage.completion).unwrap_or(0),
            ),
            usage_source: usage.source,
            latency_ms: usage.latency_ms,
            retry: self.retry,
            booking: switchyard_store::booking::Booking {
                cached_prompt_tokens: usage.cached,
                cache_write_tokens: usage.written,
                cache_write_1h_tokens: usage.written_1h.min(usage.written),
                raw_usage: usage.raw,
                reservation_id,
                batch: self.batch,
                ..base
            },
        }
    }

    /// The outcome of an answer: judged, escalated (the message that carries the escalation)
    /// or final, and booked; an answer over `worker.max_answer_bytes` fails its item (the
    /// call is still booked).
    pub(crate) fn answered(
        &self,
        key: AttemptKey,
        completion: Completion,
        reservation_id: Option<i64>,
    ) -> (Outcome, Option<WorkItem>) {
        let ws = &self.w.settings.worker;
        let usage = Usage::of(&completion);
        if completion.content.len() > ws.max_answer_bytes.get() {
            let error = format!(
                "`{}` answered {} bytes, over worker.max_answer_bytes ({})",
                self.model.name,
                completion.content.len(),
                ws.max_answer_bytes
            );
            return (self.failed(key, error, usage, reservation_id), None);
        }
        let item = self.item;
        let judgement = judge(
            &item.task,
            self.model,
            &completion.content,
            completion.logprobs.as_deref(),
            &completion.samples,
        );
        let escalation = (item.is_own() && escalates(item, &judgement, &completion))
            .then(|| escalation_for(self.w, self.tier, item))
            .flatten();
        let call = self.entry(usage, escalation.is_some(), reservation_id);
        let outcome = Outcome::Answered {
            key,
            tier: self.tier.to_owned(),
            answer: judgement.answer,
            raw_answer: completion.raw_content,
            finish_reason: completion.finish_reason,
            confidence: judgement.confidence,
            escalated_to: escalation.as_ref().map(|e| e.tier.clone()),
            call,
        };
        (outcome, escalation)
    }

    /// The item fails with `error`; the call that was made is booked.
    fn failed(
        &self,
        key: AttemptKey,
        error: String,
        usage: Usage,
        reservation_id: Option<i64>,
    ) -> Outcome {
        Outcome::Failed {
            key,
            subject: self.subject.to_owned(),
            deliveries: self.deliveries,
            error,
            call: Some(self.entry(usage, false, reservation_id)),
            intent: None,
        }
    }

    /// An answer the provider sent (and bills) but that cannot be used: booked at an
    /// estimate of its usage (`request`'s prompt, the body's size), the item not decided: its
    /// attempt is called again. A provider batch line's unusable output line takes this path
    /// as a real-time call's unusable body does.
    pub(crate) fn unusable(
        &self,
        key: AttemptKey,
        request: &CompletionRequest,
        e: &crate::llm::ProviderError,
        reservation_id: Option<i64>,
    ) -> Outcome {
        Outcome::Unusable {
            key,
            call: self.entry(Usage::estimated(request, e), false, reservation_id),
        }
    }

    /// The item fails with `error` and no answer: a provider batch line the provider
    /// refused (nothing billed). Its intent is released by the commit.
    pub(crate) fn refused(&self, key: AttemptKey, error: String) -> Outcome {
        Outcome::Failed {
            key,
            subject: self.subject.to_owned(),
            deliveries: self.deliveries,
            error,
            call: None,
            intent: Some(self.call_id.to_owned()),
        }
    }
}

/// Claims the attempt, waiting for it while another live worker holds it (at most twice the
/// lease) and while Postgres cannot be reached (until the lane aborts): the message is kept
/// alive by the lane's keeper meanwhile, and handing it back would spend one of its
/// deliveries, so an outage longer than `max_deliver` hand-backs would fail items untried.
async fn claim_patiently(
    w: &Worker,
    claims: &Claims,
    intent: Intent,
    abort: &CancellationToken,
) -> Result<Claim, ClaimError> {
    let lease = crate::lease::lease(w);
    let poll = (lease / 4).max(Duration::from_millis(100));
    let mut busy_since: Option<tokio::time::Instant> = None;
    let mut outage = crate::retry::service_wait();
    loop {
        let wait = match claims.claim(intent.clone()).await {
            Ok(Claim::Busy) => {
                let since = *busy_since.get_or_insert_with(|| {
                    crate::metrics::busy(w);
                    tokio::time::Instant::now()
                });
                if since.elapsed() >= lease * 2 {
                    return Ok(Claim::Busy);
                }
                poll
            }
            Ok(claim) => return Ok(claim),
            Err(e) if e.transient => {
                if outage.first() {
                    tracing::warn!(job_id = %intent.key.job_id, item_id = %intent.key.item_id, error = %e, "Postgres unreachable, waiting to claim");
                }
                outage.next_delay()
            }
            Err(e) => return Err(e),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = abort.cancelled() => return Ok(Claim::Busy),
        }
    }
}

/// A call's usage, validated for the ledger.
struct Usage {
    response_id: Option<String>,
    prompt: i32,
    completion: i32,
    cached: i32,
    /// Written to the provider's cache, and of those kept an hour.
    written: i32,
    written_1h: i32,
    raw: Option<String>,
    source: UsageSource,
    latency_ms: i32,
}

impl Usage {
    /// Counts the ledger's columns (`int4`) cannot hold are clamped first and the parts of
    /// the prompt bounded by the clamped prompt, so cached + written never exceeds it, as
    /// the ledger checks (summed over a line's sample requests, counts each within range
    /// can exceed it).
    fn of(c: &Completion) -> Self {
        let clamp = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        let prompt = clamp(c.prompt_tokens);
        let cached = clamp(c.cached_prompt_tokens).min(prompt);
        let written = clamp(c.cache_write_tokens).min(prompt - cached);
        Self {
            response_id: c.response_id.clone(),
            prompt,
            completion: clamp(c.completion_tokens),
            cached,
            written,
            written_1h: clamp(c.cache_write_1h_tokens).min(written),
            raw: c.raw_usage.as_deref().and_then(outcomes::storable_usage),
            source: if c.usage_estimated {
                UsageSource::Estimated
            } else {
                UsageSource::Provider
            },
            latency_ms: i32::try_from(c.latency.as_millis()).unwrap_or(i32::MAX),
        }
    }

    /// A call in doubt: the most it can have used, its prompt's bound and its completion's
    /// (what its budget hold reserved), booked `in_doubt`.
    /// `(prompt, completion)`: the bounds its intent recorded, which the lost-worker sweep
    /// books from too.
    fn worst_case((prompt, completion): (i32, i32)) -> Self {
        Self {
            response_id: None,
            prompt,
            completion,
            cached: 0,
            written: 0,
            written_1h: 0,
            raw: None,
            source: UsageSource::WorstCase,
            latency_ms: 0,
        }
    }

    /// An unusable answer's usage: the prompt at four characters a token, the completion
    /// from the body's size (at most `max_tokens`), once for each billed `200` it stands for.
    fn estimated(request: &CompletionRequest, e: &crate::llm::ProviderError) -> Self {
        let (body, billed) = match e {
            crate::llm::ProviderError::BadBody { bytes, billed, .. } => (*bytes, (*billed).max(1)),
            // A body that broke off, or one too large to read: its completion is taken at
            // its bound (the part read says nothing of where it would have ended).
            _ => (usize::MAX, 1),
        };
        // Several billed `200`s are identical requests of one batch line, each up to
        // `max_tokens`.
        let cap = if billed > 1 {
            request.max_tokens.saturating_mul(billed)
        } else {
            request.completion_bound()
        };
        let (prompt, completion) = request.estimate_unusable(body, cap);
        let prompt = prompt.saturating_mul(billed);
        Self {
            response_id: None,
            prompt: i32::try_from(prompt).unwrap_or(i32::MAX),
            completion: i32::try_from(completion).unwrap_or(i32::MAX),
            cached: 0,
            written: 0,
            written_1h: 0,
            raw: None,
            source: UsageSource::Estimated,
            latency_ms: 0,
        }
    }
}

/// The request of `item`'s call `call_id` to `model` (in real time, or as a provider batch
/// line).
pub(crate) fn request_for(
    item: &WorkItem,
    model: &ModelRuntime,
    call_id: &str,
) -> CompletionRequest {
    let extra = extra_samples(item, model);
    CompletionRequest {
        model: model.name.clone(),
        messages: prompt::messages_for(&item.task, &item.text),
        max_tokens: prompt::max_tokens_for_item(
            &item.task,
            &item.text,
            model.settings.generate_max_tokens,
        ),
        logprobs: model.settings.logprobs,
        top_logprobs: if matches!(item.task, Task::Classify { .. }) {
            5
        } else {
            0
        },
        client_request_id: Some(call_id.to_owned()),
        n: 1 + extra,
        // Anthropic has no `n`: its client asks once per choice.
        separate_choices: extra > 0
            && model.settings.protocol == switchyard_runtime::settings::Protocol::Anthropic,
        temperature: if extra > 0 { SAMPLE_TEMPERATURE } else { 0.0 },
        params: chat_params(item),
    }
}

/// The intent of this delivery's call (see [`switchyard_store::intents`]), and the budget hold
/// the call needs ([`budget::hold_needed`]), which the intent records.
fn intent_for(
    w: &Worker,
    tier: &str,
    item: &WorkItem,
    model: &ModelRuntime,
    request: &CompletionRequest,
    key: &AttemptKey,
    call_id: &str,
) -> (Intent, Option<rust_decimal::Decimal>) {
    let b = budget::booking_for(w, tier, item, false, chrono::Utc::now(), None);
    let hold = budget::hold_needed(w, item, model, request);
    let intent = Intent {
        call_id: call_id.to_owned(),
        key: key.clone(),
        team: item.team.clone(),
        project: item.project.clone(),
        tier: tier.to_owned(),
        model: model.name.clone(),
        provider: model.settings.provider.clone(),
        prompt_bound: i32::try_from(budget::prompt_bound(request)).unwrap_or(i32::MAX),
        // The in-doubt booking's worst case: every choice asked for.
        max_tokens: i32::try_from(request.completion_bound()).unwrap_or(i32::MAX),
        escalation: b.escalation,
        all_strong: b.all_strong,
        all_weak: b.all_weak,
        held: hold.is_some(),
    };
    (intent, hold)
}

/// Sampling temperature of a request that draws extra samples: high enough that an unsure
/// model answers differently, low enough that a sure one repeats itself.
const SAMPLE_TEMPERATURE: f32 = 0.7;

/// Extra samples to draw in this item's request (`n = 1 + k`): the job's rule asks for `k`
/// and the model gives no logprobs, so the samples' agreement is the answer's confidence
/// (docs/quality.md, the worker contract). Only the item's own attempts decide anything
/// with it; shadow and audit calls never escalate, so they draw none.
fn extra_samples(item: &WorkItem, model: &ModelRuntime) -> u8 {
    match &item.escalation {
        Some(rule) if item.is_own() && !model.settings.logprobs => rule.samples.min(MAX_SAMPLES),
        _ => 0,
    }
}

/// At most this many extra samples, whatever a rule asks for (`n` stays small).
const MAX_SAMPLES: u8 = 16;

/// Whether the answer escalates: the job's calibrated rule when the item carries one,
/// else its confidence below the item's threshold (`switchyard_core::escalation::decide`).
/// The features are those of the answer as it is stored, the ones the dispatcher reads back
/// from a pilot, so the rule sees here what it was fitted on.
fn escalates(item: &WorkItem, judgement: &Judgement, completion: &Completion) -> bool {
    let features = AnswerFeatures::of_stored(
        &item.task,
        item.router_score.unwrap_or(0.0),
        &judgement.answer,
        judgement.confidence,
        completion.logprobs.is_some(),
        !completion.samples.is_empty(),
    );
    escalation::decide(
        item.escalation.as_ref(),
        item.confidence_threshold,
        &features,
        item.cost_weight.map(f64::from),
    )
}

/// Judges an answer with the task's rule. With extra samples, their agreement with the
/// answer is its confidence (unless the answer is off the label set: no agreement makes
/// that an answer).
fn judge(
    task: &Task,
    model: &ModelRuntime,
    content: &str,
    logprobs: Option<&[confidence::TokenLogprob]>,
    drawn: &[String],
) -> Judgement {
    let mut j = judge_alone(task, model, content, logprobs);
    if !j.off_label
        && let Some(a) = samples::sample_agreement(task, &j.answer, drawn)
    {
        j.confidence = a;
    }
    j
}

/// Judges an answer on its own (logprobs, or the model's configured fallback confidence).
fn judge_alone(
    task: &Task,
    model: &ModelRuntime,
    content: &str,
    logprobs: Option<&[confidence::TokenLogprob]>,
) -> Judgement {
    let fallback = model.settings.confidence_without_logprobs.get();
    match task {
        Task::Classify { labels, .. } => {
            confidence::judge_label(content, logprobs, labels, fallback)
        }
        Task::Summarize { max_words, .. } => confidence::judge_text(
            content,
            logprobs,
            Some(max_words.unwrap_or(prompt::DEFAULT_MAX_WORDS)),
            fallback,
        ),
        Task::Generate { .. } | Task::Chat {} => {
            confidence::judge_text(content, logprobs, None, fallback)
        }
    }
}

/// `model_not_found`: the error of a chat item pinned to a model this deployment does not
/// configure (the batch API puts it in the error file with status 404).
pub const MODEL_NOT_FOUND: &str = "model_not_found";

/// The model a chat item pinned (`None` for other tasks and for routed chat items).
fn pinned_model(item: &WorkItem) -> Option<String> {
    match item.task {
        Task::Chat {} => switchyard_proto::chat::pinned_model(&item.text),
        _ => None,
    }
}

/// A chat item's own parameters, sent as they are (none for other tasks).
fn chat_params(item: &WorkItem) -> serde_json::Map<String, serde_json::Value> {
    match item.task {
        Task::Chat {} => switchyard_proto::ChatItem::from_text(&item.text)
            .map(|c| c.params)
            .unwrap_or_default(),
        _ => serde_json::Map::new(),
    }
}

/// The message that escalates `item` from `tier`, if escalation is possible at all: the item
/// is one of its own attempts (shadow and audit calls never escalate), the tier escalates
/// somewhere, the item has escalations left, and a `local_only` item only moves to a local
/// tier. Deterministic, so a redelivered message re-publishes the same escalation.
pub fn escalation_for(w: &Worker, tier: &str, item: &WorkItem) -> Option<WorkItem> {
    if item.escalations_left == 0 || !item.is_own() {
        return None;
    }
    // A chat request that named its model runs on that model only.
    if pinned_model(item).is_some() {
        return None;
    }
    let next = w.settings.tiers.get(tier)?.escalate_to.as_ref()?;
    let next_settings = w.settings.tiers.get(next)?;
    if item.local_only && !next_settings.local {
        return None;
    }
    let mut up = item.clone();
    up.attempt = item.attempt.saturating_add(1);
    up.tier = next.clone();
    up.escalations_left = item.escalations_left - 1;
    Some(up)
}

/// The first of the fields a claim writes to Postgres (`text` columns, which cannot hold
/// NUL) that holds a NUL byte: only a message from another client can (the dispatcher
/// refuses such names at the door).
fn unstorable_field(item: &WorkItem) -> Option<&'static str> {
    let fields = [
        ("job_id", item.job_id.as_str()),
        ("item_id", &item.item_id),
        ("tier", &item.tier),
        ("team", &item.team),
        ("project", &item.project),
    ];
    fields
        .into_iter()
        .chain(
            item.models
                .iter()
                .flat_map(|(tier, model)| [("models", tier.as_str()), ("models", model.as_str())]),
        )
        .find(|(_, v)| v.contains('\0'))
        .map(|(name, _)| name)
}

/// Records a message that is not a work item; gives it up (or retries when the record
/// cannot be written: the reason must not be lost).
async fn dead_letter_undecodable(w: &Worker, d: &Delivery, error: &str) -> Disposition {
    let error = format!("work message is not a valid work item: {error}");
    let key = format!("{}:{}", w.settings.topology().work_stream(), d.stream_seq);
    let deliveries = i32::try_from(d.delivered).unwrap_or(i32::MAX);
    let letter = DeadLetter::unattributed_item(&key, &d.subject, deliveries, &error);
    let recorded = dead_letters::record(&w.pool, &letter).await;
    match recorded {
        Ok(()) => Disposition::GiveUp { reason: error },
        Err(e) => {
            tracing::warn!(error = %e, "cannot record an undecodable message, retrying later");
            Disposition::Retry {
                after: w.settings.worker.retry_delay,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ProviderError;

    #[test]
    fn an_unusable_answer_is_estimated_once_for_each_billed_200() {
        let r = CompletionRequest::sampling_for_tests();
        // One unreadable 200 of 40 bytes: one prompt (400 chars / 4) and 10 tokens of body.
        let one = Usage::estimated(&r, &ProviderError::bad_body("claude", "no content", 40));
        assert_eq!((one.prompt, one.completion), (100, 10));
        assert_eq!(one.source, UsageSource::Estimated);
        // Three identical requests of a batch line, all unreadable (120 bytes in all): three
        // prompts, and their bodies up to 8 tokens each.
        let three = ProviderError::BadBody {
            model: "claude".into(),
            message: "no content".into(),
            bytes: 120,
            billed: 3,
        };
        let three = Usage::estimated(&r, &three);
        assert_eq!((three.prompt, three.completion), (300, 24));
    }

    #[test]
    fn usage_past_the_ledger_s_range_stays_within_its_checks() {
        // Two sample requests' usage summed: each part fits an `int4`, the sums do not.
        let c = Completion {
            response_id: None,
            content: "A".into(),
            raw_content: None,
            logprobs: None,
            prompt_tokens: 2_200_000_002,
            completion_tokens: u32::MAX,
            cached_prompt_tokens: 2_200_000_000,
            cache_write_tokens: 2,
            cache_write_1h_tokens: 5,
            raw_usage: None,
            finish_reason: None,
            usage_estimated: false,
            latency: Duration::ZERO,
            samples: Vec::new(),
        };
        let u = Usage::of(&c);
        assert_eq!((u.prompt, u.completion), (i32::MAX, i32::MAX));
        // The ledger checks `cached + written <= prompt` and `written_1h <= written` in
        // `int4`: both hold, without overflow.
        assert!(i64::from(u.cached) + i64::from(u.written) <= i64::from(u.prompt));
        assert!(u.written_1h <= u.written);
        assert!(u.cached.checked_add(u.written).is_some());
    }
}

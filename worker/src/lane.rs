//! One tier's pull loop and what happens to each item.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use bytes::Bytes;
use futures::StreamExt;
use switchyard_core::confidence::{self, Judgement};
use switchyard_core::prompt;
use switchyard_proto::topology::HEADER_DLQ_REASON;
use switchyard_proto::{Task, WorkItem, codec};
use switchyard_store::dead_letters::{self, DeadLetter};
use switchyard_store::outcomes::{self, AttemptKey, CallEntry, Outcome};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget;
use crate::call::{CallFailure, call_model};
use crate::committer::{self, InFlight, InFlightGuard, Pending};
use crate::context::{ModelRuntime, Worker, WorkerCounters};
use crate::llm::CompletionRequest;

/// Pulls the tier's items until `shutdown`, then stops pulling, lets in-flight items finish
/// within `shutdown_grace`, gives back (naks) the rest, and flushes the last commits.
///
/// # Errors
/// When the consumer cannot be created.
pub async fn run_lane(w: Worker, tier: String, shutdown: CancellationToken) -> anyhow::Result<()> {
    let spec = switchyard_runtime::nats::worker_consumer_spec(&w.settings, &tier);
    let consumer = switchyard_runtime::nats::ensure_consumer(&w.js, &spec).await?;
    let ws = &w.settings.worker;
    let (tx, rx) = mpsc::channel::<Pending>(ws.commit_batch * 4);
    // Per lane, like the committer it informs: another lane's calls never reach this one.
    let in_flight = InFlight::default();
    let committer = tokio::spawn(committer::run(w.clone(), rx, in_flight.clone()));
    let permits = Arc::new(Semaphore::new(ws.concurrency));
    let tracker = TaskTracker::new();
    // Cancelled at the end of the grace period: in-flight calls give their items back.
    let abort = CancellationToken::new();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(ws.fetch_batch.min(ws.concurrency))
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(2))
        .messages()
        .await?;
    tracing::info!(tier = %tier, consumer = %spec.durable, "worker lane ready");
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = messages.next() => match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(tier = %tier, error = %e, "pull error, continuing");
                    continue;
                }
                None => break,
            },
        };
        let (w2, tier2, tx2, abort2) = (w.clone(), tier.clone(), tx.clone(), abort.clone());
        // Counted from here until the committer receives the outcome or `process` settles
        // the message itself (the guard is dropped on every path).
        let guard = in_flight.start();
        tracker.spawn(async move {
            process(&w2, &tier2, msg, &tx2, &abort2, guard).await;
            drop(permit);
        });
    }
    // Messages already pulled but not started are handed back now rather than after
    // `ack_wait` (a bounded drain: at most one pull batch, 50 ms of silence ends it).
    for _ in 0..ws.fetch_batch {
        match tokio::time::timeout(Duration::from_millis(50), messages.next()).await {
            Ok(Some(Ok(m))) => {
                // With a delay: an immediate redelivery would come back to this very
                // stream, still draining, and burn the message's deliveries.
                let _ = m
                    .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                    .await;
            }
            _ => break,
        }
    }
    drop(messages);
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
    drop(tx);
    let _ = committer.await;
    tracing::info!(tier = %tier, "lane stopped");
    Ok(())
}

/// Handles one message: every path either hands an outcome to the committer (which acks
/// after commit) or settles the message itself. `in_flight` goes with the outcome to the
/// committer, or is dropped when this returns without one.
async fn process(
    w: &Worker,
    tier: &str,
    msg: async_nats::jetstream::Message,
    tx: &mpsc::Sender<Pending>,
    abort: &CancellationToken,
    in_flight: InFlightGuard,
) {
    let (delivered, stream_seq) = msg
        .info()
        .map(|i| (i.delivered, i.stream_sequence))
        .unwrap_or((1, 0));
    let acker = Acker::new(w.js.clone(), msg.reply.clone());
    let subject = msg.subject.to_string();
    let item: WorkItem = match codec::decode(&msg.payload) {
        Ok(item) => item,
        Err(e) => {
            dead_letter_undecodable(
                w,
                &acker,
                &subject,
                stream_seq,
                delivered,
                &msg.payload,
                &e.to_string(),
            )
            .await;
            return;
        }
    };
    let key = AttemptKey {
        job_id: item.job_id.clone(),
        item_id: item.item_id.clone(),
        attempt: i32::from(item.attempt),
    };
    if w.is_cancelled(&item.job_id).await {
        let _ = acker.ack().await;
        return;
    }
    if delivered > 1 {
        // Delivered before: the earlier delivery may have committed before dying.
        match settled_before(w, &item, &key).await {
            Ok(true) => {
                WorkerCounters::add(&w.counters.redelivered_skipped, 1);
                let _ = acker.ack().await;
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot check earlier outcome, retrying later");
                let _ = acker
                    .ack_with(AckKind::Nak(Some(w.settings.worker.retry_delay)))
                    .await;
                return;
            }
        }
    }
    let fail = |error: String| Outcome::Failed {
        key: key.clone(),
        subject: subject.clone(),
        deliveries: delivered as i32,
        error,
    };
    // Defence in depth: the dispatcher, escalation, shadow sampling, budget downgrades and
    // retries all keep `local_only` items on local tiers; a message that says otherwise (a
    // bug, a hand-made message) is refused before anything is sent to a model.
    if item.local_only && !w.settings.tiers.get(tier).is_some_and(|t| t.local) {
        let outcome = fail(format!(
            "local_only item refused on tier `{tier}`, which is not local (nothing was sent to \
             its model)"
        ));
        send_failed(tx, outcome, acker, &msg.payload, in_flight).await;
        return;
    }
    let Some(model) = w
        .settings
        .model_for(tier, &item.models)
        .and_then(|m| w.models.get(m))
    else {
        let outcome = fail(format!(
            "no model configured for tier `{tier}` (job override: {:?})",
            item.models.get(tier)
        ));
        send_failed(tx, outcome, acker, &msg.payload, in_flight).await;
        return;
    };

    let request = CompletionRequest {
        model: model.name.clone(),
        messages: prompt::messages_for(&item.task, &item.text),
        max_tokens: prompt::max_tokens_for(&item.task, model.settings.generate_max_tokens),
        logprobs: model.settings.logprobs,
        top_logprobs: if matches!(item.task, Task::Classify { .. }) {
            5
        } else {
            0
        },
    };
    let estimated_tokens = (item.text.len() / 4) as u32 + request.max_tokens;
    // Teams with a budget: hold the call's worst case first (released if the call does not
    // happen, settled by the commit that books it); a call that does not fit is diverted.
    let hold = match budget::admit(w, tier, &item, model, &request, &acker, &msg.payload).await {
        budget::Admission::Go(hold) => hold,
        budget::Admission::Settled => return,
    };
    let keepalive_period = w.settings.worker.ack_wait / 3;
    WorkerCounters::add(&w.counters.calls, 1);
    let call_started = std::time::Instant::now();
    let (result, stats) = call_model(
        &model.client,
        &model.limiter,
        &model.breaker,
        &request,
        estimated_tokens,
        model.settings.max_retries,
        &acker,
        keepalive_period,
        abort,
    )
    .await;
    WorkerCounters::add(&w.counters.throttled, u64::from(stats.throttled));
    WorkerCounters::add(&w.counters.retries, u64::from(stats.retries));
    crate::metrics::called(w, &model.name, &result, &stats, call_started.elapsed());
    let completion = match result {
        Ok(c) => c,
        Err(CallFailure::ShuttingDown) => {
            WorkerCounters::add(&w.counters.naked, 1);
            let _ = acker.ack_with(AckKind::Nak(None)).await;
            return;
        }
        Err(CallFailure::CircuitOpen {
            retry_in,
            last_error,
        }) => {
            if delivered >= w.settings.worker.max_deliver {
                let error = format!(
                    "gave up after {delivered} deliveries: circuit breaker open for `{}` \
                     (provider failing; last error: {last_error})",
                    model.name
                );
                send_failed(tx, fail(error), acker, &msg.payload, in_flight).await;
            } else {
                // Back when the breaker lets a probe through, spread out so the items do
                // not all return at once.
                let spread = retry_in.mul_f64(rand::random_range(1.0..1.5));
                WorkerCounters::add(&w.counters.naked, 1);
                let _ = acker
                    .ack_with(AckKind::Nak(Some(
                        spread.max(w.settings.worker.retry_delay),
                    )))
                    .await;
            }
            return;
        }
        Err(CallFailure::Refused(e)) => {
            send_failed(tx, fail(e.to_string()), acker, &msg.payload, in_flight).await;
            return;
        }
        Err(CallFailure::Exhausted(e)) => {
            if delivered >= w.settings.worker.max_deliver {
                let error = format!("gave up after {delivered} deliveries: {e}");
                send_failed(tx, fail(error), acker, &msg.payload, in_flight).await;
            } else {
                tracing::warn!(job_id = %item.job_id, item_id = %item.item_id, error = %e, delivered, "call failed, item will be redelivered");
                WorkerCounters::add(&w.counters.naked, 1);
                let _ = acker
                    .ack_with(AckKind::Nak(Some(w.settings.worker.retry_delay)))
                    .await;
            }
            return;
        }
    };

    let judgement = judge(
        &item.task,
        model,
        &completion.content,
        completion.logprobs.as_deref(),
    );
    let escalation =
        escalation_for(w, tier, &item).filter(|_| judgement.confidence < item.confidence_threshold);
    let call_id = completion
        .response_id
        .clone()
        .unwrap_or_else(|| format!("sy-{}", uuid::Uuid::now_v7()));
    let call = CallEntry {
        call_id,
        team: item.team.clone(),
        project: item.project.clone(),
        tier: tier.to_owned(),
        model: model.name.clone(),
        provider: model.settings.provider.clone(),
        price_id: model.price_id,
        prompt_tokens: completion.prompt_tokens as i32,
        completion_tokens: completion.completion_tokens as i32,
        cost_usd: model
            .price
            .cost(completion.prompt_tokens, completion.completion_tokens),
        latency_ms: completion.latency.as_millis().min(i32::MAX as u128) as i32,
        retry: delivered > 1,
        booking: budget::booking_for(
            w,
            tier,
            &item,
            escalation.is_some(),
            chrono::Utc::now(),
            hold.map(budget::Hold::hand_over),
        ),
    };
    let outcome = Outcome::Answered {
        key,
        tier: tier.to_owned(),
        answer: judgement.answer,
        confidence: judgement.confidence,
        escalated: escalation.is_some(),
        call,
    };
    send(
        tx,
        Pending {
            outcome,
            acker,
            escalation,
            dead_payload: None,
            in_flight: Some(in_flight),
        },
    )
    .await;
}

/// Hands a failed item to the committer, which records the failure and dead-letters
/// `payload` (the message as delivered).
async fn send_failed(
    tx: &mpsc::Sender<Pending>,
    outcome: Outcome,
    acker: Acker,
    payload: &Bytes,
    in_flight: InFlightGuard,
) {
    send(
        tx,
        Pending {
            outcome,
            acker,
            escalation: None,
            dead_payload: Some(payload.clone()),
            in_flight: Some(in_flight),
        },
    )
    .await;
}

async fn send(tx: &mpsc::Sender<Pending>, p: Pending) {
    if let Err(e) = tx.send(p).await {
        // The committer is gone (shutdown): give the item back.
        let _ = e.0.acker.ack_with(AckKind::Nak(None)).await;
    }
}

/// Judges an answer with the task's rule.
fn judge(
    task: &Task,
    model: &ModelRuntime,
    content: &str,
    logprobs: Option<&[confidence::TokenLogprob]>,
) -> Judgement {
    let fallback = model.settings.confidence_without_logprobs;
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
        Task::Generate { .. } => confidence::judge_text(content, logprobs, None, fallback),
    }
}

/// The message that escalates `item` from `tier`, if escalation is possible at all: the tier
/// escalates somewhere, the item has escalations left, and a `local_only` item only moves to
/// a local tier. Deterministic, so a redelivered message re-publishes the same escalation.
pub fn escalation_for(w: &Worker, tier: &str, item: &WorkItem) -> Option<WorkItem> {
    if item.escalations_left == 0 {
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

/// True when this attempt was already settled by an earlier delivery (its escalation is
/// re-published if it had one), or its item is closed.
async fn settled_before(w: &Worker, item: &WorkItem, key: &AttemptKey) -> anyhow::Result<bool> {
    let keys = [key.clone()];
    let existing = outcomes::existing_results(&w.pool, &keys).await?;
    if let Some((_, escalated)) = existing.first() {
        if *escalated && let Some(up) = escalation_for(w, &item.tier, item) {
            committer::publish_escalations(w, &[&up]).await?;
        }
        return Ok(true);
    }
    Ok(!outcomes::closed_items(&w.pool, &keys).await?.is_empty())
}

async fn dead_letter_undecodable(
    w: &Worker,
    acker: &Acker,
    subject: &str,
    stream_seq: u64,
    delivered: i64,
    payload: &Bytes,
    error: &str,
) {
    let error = format!("work message is not a valid work item: {error}");
    let key = format!("{}:{stream_seq}", w.settings.topology().work_stream());
    let recorded = dead_letters::record(
        &w.pool,
        &DeadLetter {
            message_key: &key,
            kind: "item",
            job_id: None,
            item_id: None,
            attempt: None,
            subject,
            deliveries: Some(delivered as i32),
            error: &error,
        },
    )
    .await;
    if recorded.is_err() {
        let _ = acker
            .ack_with(AckKind::Nak(Some(w.settings.worker.retry_delay)))
            .await;
        return;
    }
    let tier = subject.rsplit('.').next().unwrap_or("unknown");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER_DLQ_REASON, error.replace(['\r', '\n'], " ").as_str());
    if let Ok(ack) =
        w.js.publish_with_headers(
            w.settings.topology().dlq_work_subject(tier),
            headers,
            payload.clone(),
        )
        .await
    {
        let _ = ack.await;
    }
    let _ = acker.ack_with(AckKind::Term).await;
}

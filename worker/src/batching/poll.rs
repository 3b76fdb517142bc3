//! Looks after open provider batches, whoever created them: sends a recorded batch its
//! creator did not get to the provider, polls a submitted one, books an ended one.

use std::collections::{BTreeMap, HashMap, HashSet};

use switchyard_proto::topology::HEADER_MSG_ID;
use switchyard_proto::{WorkItem, codec};
use switchyard_store::outcomes::{AttemptKey, Outcome};
use switchyard_store::provider_batches::{self as pb, BatchRow, NewLine};
use tokio_util::sync::CancellationToken;

use crate::committer::{Refusable, commit_isolating};
use crate::context::{ModelRuntime, Worker};
use crate::lane::{CallBooking, request_for};
use crate::llm::ProviderError;
use crate::llm::batch_api::{BatchApi, LineRequests, Lookup, Progress, ProviderBatch, by_line};

/// Batches looked at per round, at most (the rest wait for the next round).
const PER_ROUND: usize = 64;

/// Runs until `shutdown`: every `poll_every / 2`, takes the open batches of this worker's
/// batch models whose lease ran out and moves each one step on.
pub async fn run_poller(w: Worker, shutdown: CancellationToken) {
    let models: Vec<String> = w
        .models
        .iter()
        .filter(|(_, m)| m.batch.is_some())
        .map(|(name, _)| name.clone())
        .collect();
    if models.is_empty() {
        return;
    }
    let every = w.settings.worker.batching.poll_every;
    let lease = super::lease(&w.settings);
    loop {
        for _ in 0..PER_ROUND {
            let batch = match pb::claim_due(&w.pool, &w.worker_id, lease, &models).await {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for open provider batches");
                    break;
                }
            };
            if let Err(e) = look_at(&w, &batch).await {
                // Its lease runs out and the next look tries again.
                tracing::warn!(batch = %batch.batch_id, error = %format!("{e:#}"), "provider batch not moved on");
            }
        }
        observe(&w).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every / 2) => {}
        }
    }
}

/// Sets the open batches' gauges (fleet-wide, from Postgres).
async fn observe(w: &Worker) {
    use switchyard_runtime::metrics::BatchLabels;
    match pb::open_summary(&w.pool).await {
        Ok(s) => {
            let m = &w.metrics;
            for (status, n) in [("recorded", s.recorded), ("submitted", s.submitted)] {
                m.provider_batches_open
                    .get_or_create(&BatchLabels { status })
                    .set(n);
            }
            m.provider_batch_oldest_seconds.set(s.oldest_seconds);
            m.provider_batch_lines_open.set(s.open_lines);
        }
        Err(e) => tracing::debug!(error = %e, "cannot count open provider batches"),
    }
}

/// Moves one batch a step on.
async fn look_at(w: &Worker, b: &BatchRow) -> anyhow::Result<()> {
    let model = w
        .models
        .get(&b.model)
        .ok_or_else(|| anyhow::anyhow!("model `{}` not served here", b.model))?;
    let client = model
        .batch
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("model `{}` has no batch API here", b.model))?;
    let every = w.settings.worker.batching.poll_every;
    let provider_batch_id = match &b.provider_batch_id {
        Some(id) => id.clone(),
        None => match find_or_send(w, b, model, client).await? {
            Some(id) => id,
            None => return Ok(()),
        },
    };
    let at_provider = client.get(&provider_batch_id).await?;
    match at_provider.progress {
        Progress::Ended => finish(w, b, model, client, &at_provider).await,
        Progress::Stopping => Ok(pb::look_later(&w.pool, &b.batch_id, every).await?),
        Progress::Running => {
            if chrono::Utc::now() > b.deadline {
                // Past the deadline: what has not been answered goes to real time once the
                // provider has stopped.
                tracing::info!(batch = %b.batch_id, "deadline passed; cancelling the provider batch");
                client.cancel(&provider_batch_id).await?;
            }
            Ok(pb::look_later(&w.pool, &b.batch_id, every).await?)
        }
    }
}

/// A batch recorded but not known to be created (its creator may have died in between, or
/// the creation's answer was lost): looks for it at the provider and returns its id if it is
/// there; else sends it (or, past its deadline, sends its lines back to real time) and
/// returns `None`. While the provider cannot tell (an Anthropic batch that may be ours is
/// still running), nothing is sent.
async fn find_or_send(
    w: &Worker,
    b: &BatchRow,
    model: &ModelRuntime,
    client: &BatchApi,
) -> anyhow::Result<Option<String>> {
    let every = w.settings.worker.batching.poll_every;
    let lines = pb::open_lines(&w.pool, &b.batch_id).await?;
    let calls: Vec<String> = lines.iter().map(|l| l.call_id.clone()).collect();
    // The lines' requests as they were (or would be) sent: their count identifies the batch
    // at a provider that carries no metadata.
    let requests = lines
        .iter()
        .filter_map(|l| {
            let item: WorkItem = codec::decode(&l.work).ok()?;
            Some((l.call_id.clone(), request_for(&item, model, &l.call_id)))
        })
        .collect::<Vec<_>>();
    let sent_requests: usize = requests.iter().map(|(_, r)| r.requests() as usize).sum();
    // Only a search by results (Anthropic's) needs the ids other batches of ours hold.
    let known = match client {
        BatchApi::Anthropic(_) => {
            let since = b.created_at - crate::llm::anthropic_batch::CLOCK_SKEW;
            pb::provider_ids_since(&w.pool, &b.provider, since).await?
        }
        BatchApi::OpenAi(_) => std::collections::HashSet::new(),
    };
    // A provider that refuses the listing itself (no batch API there: a misconfigured
    // `batch = true`) cannot have created it either.
    let lookup = match client
        .find(&b.batch_id, b.created_at, &calls, sent_requests, &known)
        .await
    {
        Ok(lookup) => lookup,
        Err(ProviderError::Refused { status, body, .. }) => {
            tracing::warn!(batch = %b.batch_id, status, body = %body, "the provider refuses to list batches; is `batch = true` right for this model?");
            Lookup::Absent
        }
        Err(e) => return Err(e.into()),
    };
    match lookup {
        Lookup::Found(found) => {
            pb::submitted(
                &w.pool,
                &b.batch_id,
                &found.id,
                found.input_file_id.as_deref(),
                every,
            )
            .await?;
            Ok(Some(found.id))
        }
        Lookup::Undecided(why) => {
            tracing::info!(batch = %b.batch_id, why = %why, "not sending a batch that may exist already");
            pb::look_later(&w.pool, &b.batch_id, every).await?;
            Ok(None)
        }
        Lookup::Absent if chrono::Utc::now() > b.deadline => {
            // Never sent and out of time: the lines go back to real time (nothing was billed
            // for them), instead of waiting to be booked in doubt.
            tracing::warn!(batch = %b.batch_id, lines = lines.len(), "provider batch never created before its deadline; its lines go to real time");
            send_back(w, &b.batch_id, &lines).await?;
            pb::end(&w.pool, &b.batch_id, None, None, true).await?;
            Ok(None)
        }
        Lookup::Absent => {
            super::collect::send(w, &b.batch_id, &b.model, &requests).await;
            Ok(None)
        }
    }
}

/// Books an ended batch: each open line's answer (or failure) from the provider's files,
/// lines without one sent back to their tier; then the files are deleted and the batch
/// ended.
async fn finish(
    w: &Worker,
    b: &BatchRow,
    model: &ModelRuntime,
    client: &BatchApi,
    at_provider: &ProviderBatch,
) -> anyhow::Result<()> {
    // Each line's requests' results (a line of samples on a provider without `n` is several).
    let mut results: HashMap<String, LineRequests> = by_line(client.results(at_provider).await?);
    let lines = pb::open_lines(&w.pool, &b.batch_id).await?;
    let mut outcomes = Vec::new();
    let mut escalations = Vec::new();
    let mut booked = Vec::new();
    let mut returned: Vec<NewLine> = Vec::new();
    // Booked as unusable, their attempts to be called again.
    let mut again: Vec<NewLine> = Vec::new();
    let mut refused_holds = Vec::new();
    let subject = w.settings.topology().work_subject("batch");
    for line in lines {
        let Ok(item) = codec::decode::<WorkItem>(&line.work) else {
            tracing::warn!(batch = %b.batch_id, call_id = %line.call_id, "a line's work message does not decode; sent back");
            returned.push(line);
            continue;
        };
        let key = AttemptKey {
            job_id: line.job_id.clone(),
            item_id: line.item_id.clone(),
            attempt: line.attempt,
        };
        let booking = CallBooking {
            w,
            tier: &line.tier,
            item: &item,
            model,
            call_id: &line.call_id,
            priced_at: line.priced_at,
            retry: false,
            batch: true,
            subject: &subject,
            deliveries: 1,
        };
        let request = request_for(&item, model, &line.call_id);
        let parts = results.remove(&line.call_id).unwrap_or_default();
        let result = if parts.len() > 1 || request.requests() > 1 {
            crate::llm::anthropic::fold_line(parts.into_iter().map(|(_, r)| r).collect(), &request)
        } else {
            parts.into_iter().next().map(|(_, r)| r)
        };
        match result {
            Some(Ok(completion)) => {
                let (outcome, escalation) = booking.answered(key, completion, line.reservation_id);
                outcomes.push(outcome);
                escalations.push(escalation);
                booked.push(line.call_id.clone());
            }
            Some(Err(ProviderError::Refused { status, body, .. })) => {
                // The provider refused the request itself: calling again would not help.
                let error = format!("the provider refused the batch line ({status}): {body}");
                outcomes.push(booking.refused(key, error));
                escalations.push(None);
                refused_holds.extend(line.reservation_id);
                booked.push(line.call_id.clone());
            }
            Some(Err(e @ ProviderError::BadBody { .. })) => {
                // Answered and billed, but unusable: booked at an estimate as in real time,
                // and the attempt sent again (under a new call).
                outcomes.push(booking.unusable(key, &request, &e, line.reservation_id));
                escalations.push(None);
                booked.push(line.call_id.clone());
                again.push(line);
            }
            // A transient failure, or no line at all (expired, cancelled): called again,
            // nothing billed.
            Some(Err(_)) | None => returned.push(line),
        }
    }
    // One line Postgres cannot store holds no other back (see `commit_isolating`). A
    // failure that passes ends this look: the batch's lease runs out and the next look
    // commits again (the lines booked now are found booked).
    let ends_the_look = CancellationToken::new();
    ends_the_look.cancel();
    let mut refusable: Vec<Refusable> = outcomes
        .into_iter()
        .map(|o| Refusable::new(o, subject.clone(), 1))
        .collect();
    let (report, lost) = commit_isolating(w, &mut refusable, &ends_the_look).await;
    if lost.iter().any(|&i| !refusable[i].refused) {
        anyhow::bail!("the batch's outcomes were not all committed; the next look commits them");
    }
    // Lines refused in every form stay open: their intents, the batch's, are booked in
    // doubt by the sweep once the batch ends and its lease goes.
    let refused: HashSet<&str> = lost
        .iter()
        .filter_map(|&i| refusable[i].outcome.intent())
        .collect();
    booked.retain(|id| !refused.contains(id.as_str()));
    let outcomes: Vec<Outcome> = refusable.into_iter().map(|r| r.outcome).collect();
    for (o, escalation) in outcomes.iter().zip(escalations.iter_mut()) {
        if matches!(o, Outcome::Failed { .. }) {
            // Replaced by its failure: its answer escalates nothing.
            *escalation = None;
        }
    }
    for id in refused_holds {
        switchyard_store::budgets::release(&w.pool, id).await?;
    }
    // Only the answers that decided their item escalate or finish it (a line booked before
    // a crash is booked again as nothing new).
    let mut finished: BTreeMap<String, u64> = BTreeMap::new();
    let mut escalate: Vec<&WorkItem> = Vec::new();
    for (i, (outcome, escalation)) in outcomes.iter().zip(&escalations).enumerate() {
        if !report.decided.contains(&i) {
            continue;
        }
        match escalation {
            Some(up) => escalate.push(up),
            None => *finished.entry(outcome.key().job_id.clone()).or_default() += 1,
        }
    }
    crate::committer::publish_escalations(w, &escalate).await?;
    pb::close_lines(&w.pool, &b.batch_id, &booked, true).await?;
    crate::committer::announce(w, finished, report.jobs).await;
    republish(w, &b.batch_id, &again).await?;
    send_back(w, &b.batch_id, &returned).await?;
    client.clean_up(at_provider).await;
    pb::end(
        &w.pool,
        &b.batch_id,
        at_provider.output_file_id.as_deref(),
        at_provider.error_file_id.as_deref(),
        false,
    )
    .await?;
    let closed = &w.metrics.provider_batch_lines_closed;
    use switchyard_runtime::metrics::LineState;
    closed
        .get_or_create(&LineState { state: "booked" })
        .inc_by(booked.len() as u64);
    closed
        .get_or_create(&LineState { state: "returned" })
        .inc_by(returned.len() as u64);
    tracing::info!(batch = %b.batch_id, booked = booked.len(), returned = returned.len(), status = %at_provider.status, "provider batch booked");
    Ok(())
}

/// Lines the provider did not answer go back to their tier: their intents and holds are
/// given up, then their work messages published again (under ids of their own, so a
/// duplicate window does not drop them). A crash in between leaves the item to the
/// dispatcher's sweeper, which re-publishes lost attempts.
async fn send_back(w: &Worker, batch_id: &str, lines: &[NewLine]) -> anyhow::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = lines.iter().map(|l| l.call_id.clone()).collect();
    pb::close_lines(&w.pool, batch_id, &ids, false).await?;
    republish(w, batch_id, lines).await
}

/// Publishes closed lines' work messages again, each under an id of its own (its call's),
/// so a duplicate window does not drop them. A crash before leaves the item to the
/// dispatcher's sweeper, which re-publishes lost attempts.
async fn republish(w: &Worker, batch_id: &str, lines: &[NewLine]) -> anyhow::Result<()> {
    let t = w.settings.topology();
    for l in lines {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            HEADER_MSG_ID,
            format!("pb-return:{batch_id}:{}", l.call_id).as_str(),
        );
        w.js.publish_with_headers(t.work_subject(&l.tier), headers, l.work.clone().into())
            .await?
            .await?;
    }
    Ok(())
}

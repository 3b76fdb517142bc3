//! Batches outcomes into one transaction, then publishes escalations, then acks.
//!
//! The order is what makes a crash harmless: an outcome is committed before anything is
//! published or acked; an escalation's publish-ack is awaited before the original is acked.
//! A crash between steps leads to a redelivery that finds the committed result and only
//! re-publishes the escalation (deduplicated by `Nats-Msg-Id`).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use switchyard_proto::event::JobEvent;
use switchyard_proto::topology::{HEADER_DLQ_REASON, HEADER_MSG_ID};
use switchyard_proto::{PROTOCOL_VERSION, WorkItem, codec};
use switchyard_store::outcomes::{self, Outcome};
use tokio::sync::mpsc;

use crate::context::{Worker, WorkerCounters};

/// An outcome waiting for its commit, with the means to settle its message.
pub struct Pending {
    pub outcome: Outcome,
    pub acker: Acker,
    /// Published after the commit when the answer escalated.
    pub escalation: Option<WorkItem>,
    /// For failed items: the original message, copied to the dead-letter subject.
    pub dead_payload: Option<Bytes>,
}

/// How long a batch keeps trying to commit (Postgres restarting, failing over) before it is
/// given back to JetStream. Its messages are kept alive meanwhile, so an outage shorter than
/// this books every answer already received instead of paying for the calls again.
const COMMIT_RETRY_FOR: Duration = Duration::from_secs(30);

/// Runs until every sender is gone and the last batch is settled.
pub async fn run(w: Worker, mut rx: mpsc::Receiver<Pending>) {
    let max = w.settings.worker.commit_batch;
    let interval = w.settings.worker.commit_interval;
    loop {
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + interval;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                Ok(None) | Err(_) => break,
            }
        }
        settle_batch(&w, batch).await;
    }
}

async fn settle_batch(w: &Worker, batch: Vec<Pending>) {
    let outcomes: Vec<Outcome> = batch.iter().map(|p| p.outcome.clone()).collect();
    let mut touched = None;
    let started = tokio::time::Instant::now();
    let keepalive_every = w.settings.worker.ack_wait / 3;
    let mut last_keepalive = started;
    for attempt in 0u32.. {
        match outcomes::commit(&w.pool, &outcomes).await {
            Ok(jobs) => {
                touched = Some(jobs);
                break;
            }
            Err(e) if started.elapsed() < COMMIT_RETRY_FOR => {
                tracing::warn!(error = %e, attempt, "commit failed, retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
                if last_keepalive.elapsed() >= keepalive_every {
                    last_keepalive = tokio::time::Instant::now();
                    for p in &batch {
                        let _ = p.acker.ack_with(AckKind::Progress).await;
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, attempt, "commit failed for too long");
                break;
            }
        }
    }
    let Some(touched) = touched else {
        tracing::error!(
            items = batch.len(),
            "cannot commit outcomes, giving the items back"
        );
        crate::budget::commit_failed(w, &outcomes).await;
        for p in &batch {
            let _ = p
                .acker
                .ack_with(AckKind::Nak(Some(w.settings.worker.retry_delay)))
                .await;
        }
        return;
    };
    WorkerCounters::add(&w.counters.committed_batches, 1);
    crate::metrics::committed(w, &outcomes);
    crate::budget::committed(w, &outcomes);

    // Escalations first; an item whose escalation did not publish is not acked (its
    // redelivery re-publishes it).
    let escalations: Vec<(usize, &WorkItem)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.escalation.as_ref().map(|e| (i, e)))
        .collect();
    let mut unpublished = vec![false; batch.len()];
    if !escalations.is_empty() {
        let items: Vec<&WorkItem> = escalations.iter().map(|(_, e)| *e).collect();
        if let Err(failed) = publish_escalations_detailed(w, &items).await {
            for idx in failed {
                unpublished[escalations[idx].0] = true;
            }
        }
    }
    let mut finished_per_job: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, p) in batch.iter().enumerate() {
        if unpublished[i] {
            let _ = p
                .acker
                .ack_with(AckKind::Nak(Some(w.settings.worker.retry_delay)))
                .await;
            continue;
        }
        match &p.outcome {
            Outcome::Answered {
                escalated: true, ..
            } => {
                WorkerCounters::add(&w.counters.escalated, 1);
            }
            Outcome::Answered { key, .. } => {
                WorkerCounters::add(&w.counters.answered, 1);
                *finished_per_job.entry(key.job_id.as_str()).or_default() += 1;
            }
            Outcome::Failed {
                key,
                error,
                subject,
                ..
            } => {
                WorkerCounters::add(&w.counters.failed, 1);
                *finished_per_job.entry(key.job_id.as_str()).or_default() += 1;
                if let Some(payload) = &p.dead_payload {
                    publish_dead_letter(w, subject, payload, error).await;
                }
            }
        }
        if let Err(e) = p.acker.ack().await {
            tracing::warn!(error = %e, "ack failed; the redelivery will find the outcome committed");
        }
    }
    let t = w.settings.topology();
    for (job_id, finished) in finished_per_job {
        let event = JobEvent {
            v: PROTOCOL_VERSION,
            job_id: job_id.to_owned(),
            kind: "progress".into(),
            finished,
        };
        if let Ok(bytes) = codec::encode(&event) {
            let _ = w
                .client
                .publish(t.events_subject(job_id), bytes.into())
                .await;
        }
    }
    for job_id in touched {
        match switchyard_store::jobs::complete_if_done(&w.pool, &job_id).await {
            Ok(Some(status)) => {
                tracing::info!(job_id = %job_id, status = %status, "job finished");
                let event = JobEvent {
                    v: PROTOCOL_VERSION,
                    job_id: job_id.clone(),
                    kind: status,
                    finished: 0,
                };
                if let Ok(bytes) = codec::encode(&event) {
                    let _ = w
                        .client
                        .publish(t.job_done_subject(&job_id), bytes.into())
                        .await;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(job_id = %job_id, error = %e, "cannot check job completion"),
        }
    }
}

/// Publishes escalation messages and awaits their publish-acks.
///
/// # Errors
/// When any of them was not stored.
pub async fn publish_escalations(w: &Worker, items: &[&WorkItem]) -> anyhow::Result<()> {
    publish_escalations_detailed(w, items)
        .await
        .map_err(|failed| anyhow::anyhow!("{} escalations were not published", failed.len()))
}

/// As [`publish_escalations`], returning the indexes that failed.
async fn publish_escalations_detailed(w: &Worker, items: &[&WorkItem]) -> Result<(), Vec<usize>> {
    let t = w.settings.topology();
    let mut acks = FuturesUnordered::new();
    let mut failed = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Ok(payload) = codec::encode(item) else {
            failed.push(i);
            continue;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HEADER_MSG_ID, item.attempt_key().as_str());
        match w
            .js
            .publish_with_headers(t.work_subject(&item.tier), headers, payload.into())
            .await
        {
            Ok(ack) => acks.push(async move { (i, ack.await) }),
            Err(_) => failed.push(i),
        }
    }
    while let Some((i, r)) = acks.next().await {
        if let Err(e) = r {
            tracing::warn!(error = %e, "escalation publish failed");
            failed.push(i);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed)
    }
}

async fn publish_dead_letter(w: &Worker, subject: &str, payload: &Bytes, error: &str) {
    let tier = subject.rsplit('.').next().unwrap_or("unknown");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER_DLQ_REASON, error.replace(['\r', '\n'], " ").as_str());
    let dlq = w.settings.topology().dlq_work_subject(tier);
    if let Ok(ack) =
        w.js.publish_with_headers(dlq, headers, payload.clone())
            .await
    {
        let _ = ack.await;
    }
}

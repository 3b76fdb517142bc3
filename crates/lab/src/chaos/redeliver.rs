//! Done work delivered again, past JetStream's duplicate window.
//!
//! JetStream drops a re-publish only inside its duplicate window. A dispatcher resuming a long
//! job, an escalation re-published late, a foreign client: any of them can put an attempt
//! that already has its answer back on a tier subject, as a new message with `delivered = 1`.
//! The run publishes such copies of answered attempts (each under a message id no dedupe
//! window has seen) and then checks, from the ledger, that none of them was called or booked
//! again: a delivery of an attempt with a committed outcome calls nothing, however late.

use chrono::{DateTime, Utc};
use switchyard_proto::{Task, WorkItem};

use switchyard_client::Client;

/// The answered attempts published again, and when.
#[derive(Debug, Clone, Default)]
pub struct Redelivered {
    /// (item id, attempt) of each copy.
    pub attempts: Vec<(String, i32)>,
    /// Database time just before the copies were published.
    pub at: Option<DateTime<Utc>>,
    /// Why publishing stopped early (NATS restarting, say): the copies published before it
    /// are still checked; the run notes it instead of failing.
    pub stopped: Option<String>,
}

/// An answered attempt, with what its work message needs.
#[derive(sqlx::FromRow)]
struct Answered {
    item_id: String,
    attempt: i32,
    tier: String,
    text: String,
    sensitivity: Option<String>,
    team: String,
    project: String,
}

/// Publishes a fresh copy of up to `limit` answered attempts of `job_id` (its items' task
/// is `task`) on the tier that answered them. A publish that fails stops the loop (the
/// rest would wait out the same fault) and is reported in [`Redelivered::stopped`].
///
/// # Errors
/// Database errors (nothing was published).
pub async fn publish_done_again(
    client: &Client,
    job_id: &str,
    task: &Task,
    limit: i64,
) -> anyhow::Result<Redelivered> {
    let at: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&client.pool)
        .await?;
    let rows: Vec<Answered> = sqlx::query_as(
        "SELECT r.item_id, r.attempt, r.tier, i.text, i.sensitivity, j.team, j.project \
             FROM results r JOIN items i ON i.job_id = r.job_id AND i.item_id = r.item_id \
             JOIN jobs j ON j.job_id = r.job_id \
             WHERE r.job_id = $1 AND r.attempt < 1000 ORDER BY r.created_at DESC LIMIT $2",
    )
    .bind(job_id)
    .bind(limit)
    .fetch_all(&client.pool)
    .await?;
    let mut out = Redelivered {
        attempts: Vec::with_capacity(rows.len()),
        at: Some(at),
        stopped: None,
    };
    for Answered {
        item_id,
        attempt,
        tier,
        text,
        sensitivity,
        team,
        project,
    } in rows
    {
        let Ok(n) = u16::try_from(attempt) else {
            continue;
        };
        let mut msg = WorkItem::new(job_id, item_id.clone(), tier, text, task.clone());
        msg.attempt = n;
        msg.team = team;
        msg.project = project;
        msg.local_only = sensitivity.as_deref() == Some("local_only");
        // A message id no duplicate window has seen: this copy is delivered.
        let msg_id = format!(
            "chaos-again:{}:{}",
            at.timestamp_micros(),
            msg.attempt_key()
        );
        if let Err(e) = client.publish_work(&msg, &msg_id).await {
            out.stopped = Some(format!("{e:#}"));
            break;
        }
        out.attempts.push((item_id, attempt));
    }
    Ok(out)
}

/// Ledger rows of the copies' attempts whose call was made after they were published (a
/// call id is a UUIDv7: its first 48 bits are the Unix milliseconds the call was made at):
/// each one is a call made again for an attempt that already had its answer. Must be 0.
///
/// # Errors
/// Database errors.
pub async fn booked_again(client: &Client, job_id: &str, again: &Redelivered) -> sqlx::Result<i64> {
    let Some(at) = again.at else { return Ok(0) };
    let items: Vec<&str> = again.attempts.iter().map(|a| a.0.as_str()).collect();
    let attempts: Vec<i32> = again.attempts.iter().map(|a| a.1).collect();
    sqlx::query_scalar(
        "SELECT count(*) FROM ledger l \
         JOIN UNNEST($2::text[], $3::int4[]) AS a(item_id, attempt) \
         ON l.item_id = a.item_id AND l.attempt = a.attempt \
         WHERE l.job_id = $1 AND l.kind = 'call' AND l.call_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-' \
         AND ('x' || replace(left(l.call_id, 13), '-', ''))::bit(48)::int8 \
           >= (extract(epoch FROM $4::timestamptz) * 1000)::int8",
    )
    .bind(job_id)
    .bind(&items)
    .bind(&attempts)
    .bind(at)
    .fetch_one(&client.pool)
    .await
}

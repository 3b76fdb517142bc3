//! The team API: a job's status and results over NATS request/reply, answered only to the
//! team the job belongs to.
//!
//! Requests arrive on `<prefix>.api.<team>.status` and `<prefix>.api.<team>.results` (JSON
//! `{"job_id", "after"?, "limit"?}`); NATS permissions let a team's users publish only on
//! their own team's subjects, and a job of another team is answered as if it did not exist.
//! Every dispatcher process answers (a queue group shares the requests), so team clients need
//! no database credentials at all.

use futures::StreamExt;
use serde_json::{Value, json};
use switchyard_proto::teams::{self, API_RESULTS, API_STATUS};
use tokio_util::sync::CancellationToken;

use crate::Dispatcher;

/// Results per page, by default and at most (a page must fit a NATS message).
const DEFAULT_LIMIT: i64 = 200;
const MAX_LIMIT: i64 = 500;

struct ApiRequest {
    job_id: String,
    /// Results after this input position (`next_after` of the previous page).
    after: i64,
    limit: Option<i64>,
}

impl ApiRequest {
    fn parse(payload: &[u8]) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        let job_id = v["job_id"]
            .as_str()
            .ok_or("`job_id` (a string) is missing")?
            .to_owned();
        Ok(Self {
            job_id,
            after: v["after"].as_i64().unwrap_or(-1),
            limit: v["limit"].as_i64(),
        })
    }
}

/// Answers team API requests until `shutdown`.
///
/// # Errors
/// When the subscription cannot be made.
pub async fn run(d: Dispatcher, shutdown: CancellationToken) -> anyhow::Result<()> {
    let t = d.settings.topology();
    let mut requests = d
        .client
        .queue_subscribe(teams::api_wildcard(&t), "team_api".to_owned())
        .await?;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = requests.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let answer = answer(&d, &msg.subject, &msg.payload).await;
        let bytes = serde_json::to_vec(&answer).unwrap_or_default();
        if let Err(e) = d.client.publish(reply, bytes.into()).await {
            tracing::warn!(error = %e, "cannot answer a team API request");
        }
    }
    Ok(())
}

fn error(message: impl Into<String>) -> Value {
    json!({ "error": message.into() })
}

async fn answer(d: &Dispatcher, subject: &str, payload: &[u8]) -> Value {
    let t = d.settings.topology();
    let Some((team, verb)) = teams::parse_api_subject(&t, subject) else {
        return error("unknown request subject");
    };
    let req = match ApiRequest::parse(payload) {
        Ok(r) => r,
        Err(e) => return error(format!("the request is not {{\"job_id\": …}}: {e}")),
    };
    let not_found = || error(format!("no job `{}`", req.job_id));
    // Another team's job does not exist, as far as this team can tell.
    let job = match switchyard_store::jobs::get(&d.pool, &req.job_id).await {
        Ok(Some(job)) if job.team == team => job,
        Ok(_) => return not_found(),
        Err(e) => {
            tracing::warn!(error = %e, "team API cannot read the job");
            return error("the database is not answering; try again");
        }
    };
    match verb {
        API_STATUS => match switchyard_store::reports::job_status(&d.pool, &job.job_id).await {
            Ok(Some(status)) => serde_json::to_value(&status).unwrap_or_else(|_| not_found()),
            Ok(None) => not_found(),
            Err(_) => error("the database is not answering; try again"),
        },
        API_RESULTS => {
            let limit = req.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
            match results_page(d, &job.job_id, req.after, limit).await {
                Ok(rows) => {
                    let next_after = (rows.len() as i64 == limit)
                        .then(|| rows.last().and_then(|r| r["seq"].as_i64()))
                        .flatten();
                    json!({"job_id": job.job_id, "status": job.status, "results": rows,
                           "next_after": next_after})
                }
                Err(_) => error("the database is not answering; try again"),
            }
        }
        other => error(format!("unknown request `{other}` (status, results)")),
    }
}

async fn results_page(
    d: &Dispatcher,
    job_id: &str,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<Value>> {
    type Row = (
        i64,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<f64>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT i.seq, i.item_id, i.status, r.tier, r.model, r.answer, r.confidence, i.error, \
         r.answer_encoding \
         FROM items i LEFT JOIN results r ON r.job_id = i.job_id AND r.item_id = i.item_id \
         AND r.attempt = i.final_attempt WHERE i.job_id = $1 AND i.seq > $2 \
         ORDER BY i.seq LIMIT $3",
    )
    .bind(job_id)
    .bind(after)
    .bind(limit)
    .fetch_all(&d.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(seq, item_id, status, tier, model, stored, confidence, err, encoding)| {
                let answer = stored
                    .as_deref()
                    .map(|a| switchyard_store::outcomes::decode_answer(a, encoding.as_deref()));
                json!({"seq": seq, "item_id": item_id, "status": status, "tier": tier,
                   "model": model, "answer": answer, "confidence": confidence, "error": err})
            },
        )
        .collect())
}

//! `/metrics`: what the dispatcher and a worker export over HTTP agrees with what Postgres
//! booked for the same job.

use std::collections::HashMap;
use std::time::Duration;

use rust_decimal::Decimal;
use switchyard_runtime::metrics;
use switchyard_testkit::eventually;
use tokio_util::sync::CancellationToken;

use crate::support::{Harness, classify_job, mmlu_items};

/// Fetches `/metrics` and parses its samples (`name{labels}` → value).
async fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert!(response.status().is_success());
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The sum of every sample of `family` whose labels contain `with`.
fn sum(samples: &HashMap<String, f64>, family: &str, with: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{family}{{")) && k.contains(with))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn metrics_agree_with_the_ledger() {
    let h = Harness::start().await;
    let n = 60;
    // A third routed strong; weak answers below 0.9 confidence escalate.
    let job_id = h
        .client
        .submit(classify_job(mmlu_items(n), 0.33, 0.9))
        .await
        .unwrap();
    let status = h.wait_final(&job_id, 60).await;
    assert_eq!(status.job.status, "completed");

    let token = CancellationToken::new();
    let loopback = "127.0.0.1:0".parse().unwrap();
    let dispatcher_addr =
        metrics::serve(loopback, h.fleet.dispatcher.metrics.clone(), token.clone())
            .await
            .unwrap();
    let worker = &h.fleet.workers[0].as_ref().unwrap().worker;
    let worker_addr = metrics::serve(loopback, worker.metrics.clone(), token.clone())
        .await
        .unwrap();

    // Items routed per tier, as the dispatcher recorded them.
    let d = scrape(dispatcher_addr).await;
    let routed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT routed_tier, count(*) FROM items WHERE job_id = $1 GROUP BY routed_tier",
    )
    .bind(&job_id)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert!(routed.len() == 2, "both tiers used: {routed:?}");
    for (tier, count) in &routed {
        let key = format!("switchyard_items_routed_total{{tier=\"{tier}\"}}");
        assert_eq!(d.get(&key).copied(), Some(*count as f64), "{key}: {d:?}");
    }
    assert_eq!(
        d.get(r#"switchyard_jobs_total{outcome="accepted"}"#)
            .copied(),
        Some(1.0)
    );

    // Calls, tokens, cost and escalations, as the worker booked them. Committed batches are
    // recorded before their messages are acked, so the job being final means they are in.
    let w = scrape(worker_addr).await;
    let ledger = h.ledger(&job_id).await;
    assert_eq!(
        sum(&w, "switchyard_model_calls_total", r#"outcome="ok""#),
        ledger.len() as f64
    );
    let latency_count: f64 = sum(&w, "switchyard_model_call_seconds_count", "");
    assert_eq!(latency_count, ledger.len() as f64);
    let input: i64 = ledger.iter().map(|r| i64::from(r.prompt_tokens)).sum();
    let output: i64 = ledger.iter().map(|r| i64::from(r.completion_tokens)).sum();
    assert_eq!(
        sum(&w, "switchyard_tokens_total", r#"kind="input""#),
        input as f64
    );
    assert_eq!(
        sum(&w, "switchyard_tokens_total", r#"kind="output""#),
        output as f64
    );
    let cost: Decimal = ledger.iter().map(|r| r.cost_usd).sum();
    let nano = cost * Decimal::from(1_000_000_000u64);
    assert_eq!(
        sum(&w, "switchyard_cost_nanousd_total", "").to_string(),
        nano.normalize().to_string()
    );
    assert!(status.escalated > 0, "the job escalated nothing");
    assert_eq!(
        sum(&w, "switchyard_escalations_total", r#"tier="weak""#),
        status.escalated as f64
    );

    // Consumer lag, read from JetStream: nothing left for the weak tier.
    let t = h.fleet.settings.topology();
    let lag_key = format!(
        "switchyard_consumer_pending{{stream=\"{}\",consumer=\"{}\"}}",
        t.work_stream(),
        t.worker_consumer("weak")
    );
    let lag = eventually("the lag gauge", Duration::from_secs(15), || {
        let key = lag_key.clone();
        async move { scrape(worker_addr).await.get(&key).copied() }
    })
    .await;
    assert_eq!(lag, 0.0);
    token.cancel();
    h.finish().await;
}

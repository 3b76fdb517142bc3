//! End-to-end throughput with the simulator at zero latency: submit → final results and
//! ledger rows committed, against a raw pipeline built from the same libraries with no
//! logic: windowed publish, pull consume in batches, one HTTP call per item to the same
//! simulator, batched insert (`UNNEST`) of the same rows, ack after commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use rust_decimal::Decimal;
use switchyard_proto::{WorkItem, codec, work};
use switchyard_runtime::Settings;
use switchyard_runtime::settings::StorageKind;
use switchyard_sim::SimConfig;
use tokio::sync::{Semaphore, mpsc};

use super::dispatch::{bench_items, bench_job};
use super::env::BenchEnv;
use super::{BenchOptions, Figure};
use switchyard_demo::fleet::Fleet;
use switchyard_demo::mmlu_task;

/// Runs the end-to-end bench.
///
/// # Errors
/// When a run fails.
pub async fn run(settings: &Settings, opts: &BenchOptions) -> anyhow::Result<Figure> {
    let data = Arc::new(switchyard_demo::bundled_dataset()?);
    let mut runs = Vec::new();
    for rep in 0..opts.repetitions {
        let fleet = fleet_run(settings, &data, opts.end_to_end_items).await?;
        let base = baseline_run(settings, &data, opts.end_to_end_items).await?;
        eprintln!(
            "end_to_end run {}: fleet {fleet:.0} items/s, baseline {base:.0} items/s",
            rep + 1
        );
        runs.push((fleet, Some(base)));
    }
    Ok(Figure::from_runs(
        runs,
        "items/s",
        "≥ 0.8× raw pipeline (publish, pull, HTTP call, batched insert, ack)",
    ))
}

async fn fleet_run(
    settings: &Settings,
    data: &Arc<switchyard_sim::Dataset>,
    n: usize,
) -> anyhow::Result<f64> {
    let env = BenchEnv::new(settings, StorageKind::File)?;
    let result = async {
        let fleet = Fleet::start(
            env.settings.clone(),
            Some((Arc::clone(data), SimConfig::default())),
        )
        .await?;
        let client = fleet.client();
        let spec = bench_job(n, 0.2)?;
        let started = Instant::now();
        let completed = super::dispatch::run_to_completion(&client, spec, n).await;
        let elapsed = started.elapsed();
        fleet.stop().await;
        completed?;
        Ok(n as f64 / elapsed.as_secs_f64())
    }
    .await;
    env.cleanup().await;
    result
}

struct Row {
    job_id: String,
    item_id: String,
    tier: String,
    model: String,
    answer: String,
    call_id: String,
    prompt_tokens: i32,
    completion_tokens: i32,
    cost: Decimal,
}

async fn baseline_run(
    settings: &Settings,
    data: &Arc<switchyard_sim::Dataset>,
    n: usize,
) -> anyhow::Result<f64> {
    let env = BenchEnv::new(settings, StorageKind::File)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim = switchyard_sim::start(listener, Arc::clone(data), SimConfig::default()).await?;
    let result = baseline_inner(&env.settings, &sim.base_url(), n).await;
    sim.shutdown().await;
    env.cleanup().await;
    result
}

async fn baseline_inner(s: &Settings, sim_url: &str, n: usize) -> anyhow::Result<f64> {
    use async_nats::jetstream::{consumer, stream};
    let client = switchyard_runtime::nats::connect(s, "switchyard-bench").await?;
    let js = switchyard_runtime::nats::jetstream(client);
    let name = format!("{}_RAW", s.nats.prefix.to_uppercase());
    let subject = format!("{}.raw", s.nats.prefix);
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let pool = switchyard_store::connect(s.database_url(), 8).await?;
    for ddl in [
        "CREATE TABLE raw_results (job_id text, item_id text, attempt int, tier text, model text, \
         answer text, confidence float8, escalated bool, call_id text, \
         PRIMARY KEY (job_id, item_id, attempt))",
        "CREATE TABLE raw_ledger (call_id text PRIMARY KEY, job_id text, item_id text, attempt int, \
         tier text, model text, prompt_tokens int, completion_tokens int, cost_usd numeric)",
    ] {
        sqlx::query(ddl).execute(&pool).await?;
    }
    let task = mmlu_task();
    let items = bench_items(n)?;
    let payloads: Vec<(String, Bytes)> = items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let tier = if i % 5 == 0 { "strong" } else { "weak" };
            let msg = super::dispatch::work_item("raw", it, tier, &task);
            (
                work::attempt_key("raw", &it.item_id, 0),
                codec::encode(&msg).map(Bytes::from).unwrap_or_default(),
            )
        })
        .collect();
    let http = switchyard_worker::llm::openai::http_client()?;
    let url = format!("{sim_url}/chat/completions");
    let (weak, strong) = ("mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview");
    let price = |m: &str| {
        s.price_of(m).unwrap_or(switchyard_core::pricing::Price {
            input_usd_per_mtok: Decimal::ZERO,
            output_usd_per_mtok: Decimal::ZERO,
        })
    };
    let (weak_price, strong_price) = (price(weak), price(strong));

    let started = Instant::now();
    let publisher = {
        let js = js.clone();
        let subject = subject.clone();
        let window = s.dispatcher.publish_window.get();
        tokio::spawn(async move {
            let mut p = switchyard_dispatcher::publisher::WindowedPublisher::new(js, window);
            for (id, payload) in payloads {
                p.publish(subject.clone(), &id, payload).await?;
            }
            p.flush().await
        })
    };
    let (tx, mut rx) = mpsc::channel::<(async_nats::jetstream::Message, Row)>(4096);
    let permits = Arc::new(Semaphore::new(s.worker.concurrency.get()));
    let consume = {
        let http = http.clone();
        let url = url.clone();
        let permits = Arc::clone(&permits);
        tokio::spawn(async move {
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(500)
                .messages()
                .await?;
            let mut seen = 0;
            while seen < n {
                let permit = permits.clone().acquire_owned().await?;
                let Some(msg) = messages.next().await else {
                    break;
                };
                let msg = msg?;
                seen += 1;
                let (http, url, tx) = (http.clone(), url.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(item) = codec::decode::<WorkItem>(&msg.payload) else {
                        return;
                    };
                    let (model, p) = if item.tier == "strong" {
                        (strong, strong_price)
                    } else {
                        (weak, weak_price)
                    };
                    let body = serde_json::json!({
                        "model": model,
                        "messages": [{"role": "system", "content": "Labels: A, B, C, D"}, {"role": "user", "content": item.text}],
                        "max_tokens": 4, "logprobs": true, "top_logprobs": 5,
                    });
                    let Ok(resp) = http.post(&url).json(&body).send().await else {
                        return;
                    };
                    let Ok(v) = resp.json::<serde_json::Value>().await else {
                        return;
                    };
                    let pt = v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as u32;
                    let ct = v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as u32;
                    let row = Row {
                        job_id: item.job_id,
                        item_id: item.item_id,
                        tier: item.tier,
                        model: model.to_owned(),
                        answer: v["choices"][0]["message"]["content"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned(),
                        call_id: v["id"].as_str().unwrap_or("").to_owned(),
                        prompt_tokens: pt as i32,
                        completion_tokens: ct as i32,
                        cost: p.cost(pt, ct),
                    };
                    let _ = tx.send((msg, row)).await;
                    drop(permit);
                });
            }
            anyhow::Ok(())
        })
    };
    let mut committed = 0usize;
    let deadline = started + Duration::from_secs(600);
    while committed < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "raw pipeline did not finish in 10 minutes"
        );
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + Duration::from_millis(20);
        while batch.len() < 256 {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(x)) => batch.push(x),
                _ => break,
            }
        }
        let rows: Vec<&Row> = batch.iter().map(|(_, r)| r).collect();
        let col = |f: fn(&Row) -> &str| rows.iter().map(|r| f(r)).collect::<Vec<&str>>();
        let mut txn = pool.begin().await?;
        sqlx::query(
            "INSERT INTO raw_results SELECT j, i, 0, t, m, a, 0.5, false, c FROM \
             UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
             AS u(j, i, t, m, a, c) ON CONFLICT DO NOTHING",
        )
        .bind(col(|r| &r.job_id))
        .bind(col(|r| &r.item_id))
        .bind(col(|r| &r.tier))
        .bind(col(|r| &r.model))
        .bind(col(|r| &r.answer))
        .bind(col(|r| &r.call_id))
        .execute(&mut *txn)
        .await?;
        sqlx::query(
            "INSERT INTO raw_ledger SELECT c, j, i, 0, t, m, pt, ct, cost FROM \
             UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], \
             $7::int4[], $8::numeric[]) AS u(c, j, i, t, m, pt, ct, cost) ON CONFLICT DO NOTHING",
        )
        .bind(col(|r| &r.call_id))
        .bind(col(|r| &r.job_id))
        .bind(col(|r| &r.item_id))
        .bind(col(|r| &r.tier))
        .bind(col(|r| &r.model))
        .bind(rows.iter().map(|r| r.prompt_tokens).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.completion_tokens).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.cost).collect::<Vec<_>>())
        .execute(&mut *txn)
        .await?;
        txn.commit().await?;
        for (msg, _) in &batch {
            let _ = msg.ack().await;
        }
        committed += batch.len();
    }
    let elapsed = started.elapsed();
    publisher.await??;
    consume.abort();
    pool.close().await;
    anyhow::ensure!(committed >= n, "raw pipeline committed {committed} of {n}");
    Ok(n as f64 / elapsed.as_secs_f64())
}

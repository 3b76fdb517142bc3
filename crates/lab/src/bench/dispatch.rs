//! Dispatch throughput: job message in JetStream → every item recorded in Postgres and
//! published on its tier subject, against the same I/O with no logic.

use std::time::{Duration, Instant};

use bytes::Bytes;
use switchyard_dispatcher::Dispatcher;
use switchyard_dispatcher::publisher::WindowedPublisher;
use switchyard_proto::{Item, PROTOCOL_VERSION, Routing, Task, WorkItem, codec, work};
use switchyard_runtime::Settings;
use switchyard_runtime::settings::StorageKind;
use switchyard_store::items::NewItem;
use switchyard_store::jobs::{self, NewJob};
use tokio_util::sync::CancellationToken;

use super::env::BenchEnv;
use super::{BenchOptions, Figure};
use switchyard_client::{Client, INLINE_LIMIT, WaitOutcome, new_job};
use switchyard_demo::mmlu_task;

/// The bundled MMLU prompts, the text every bench sends.
pub fn bundled_prompts() -> anyhow::Result<Vec<String>> {
    let data = switchyard_demo::bundled_dataset()?;
    let prompts: Vec<String> = data
        .records()
        .filter(|r| r.choices.is_some())
        .map(|r| r.prompt.clone())
        .collect();
    anyhow::ensure!(!prompts.is_empty(), "no bundled prompts");
    Ok(prompts)
}

/// The first attempt of `item` of the bench's job `job_id` on `tier` (team and project
/// `bench`): never escalated unless the caller says so.
pub fn work_item(job_id: &str, item: &Item, tier: &str, task: &Task) -> WorkItem {
    WorkItem {
        v: PROTOCOL_VERSION,
        job_id: job_id.to_owned(),
        item_id: item.item_id.clone(),
        attempt: 0,
        tier: tier.to_owned(),
        text: item.text.clone(),
        task: task.clone(),
        team: "bench".into(),
        project: "bench".into(),
        local_only: false,
        models: Default::default(),
        confidence_threshold: 0.0,
        escalations_left: 0,
        escalation: None,
        router_score: None,
        cost_weight: None,
        deadline: None,
    }
}

/// `n` items cycling through the bundled MMLU prompts, with unique ids.
pub fn bench_items(n: usize) -> anyhow::Result<Vec<Item>> {
    let prompts = bundled_prompts()?;
    Ok((0..n)
        .map(|i| Item::new(format!("i{i:07}"), prompts[i % prompts.len()].clone()))
        .collect())
}

/// A job of `n` [`bench_items`], `strong_share` of them routed strong, never escalating.
pub fn bench_job(n: usize, strong_share: f64) -> anyhow::Result<switchyard_proto::JobSpec> {
    let mut spec = new_job(mmlu_task(), bench_items(n)?);
    spec.policy.routing = Routing::StrongShare {
        value: strong_share,
    };
    spec.policy.cascade.max_escalations = Some(0);
    Ok(spec)
}

/// Submits `spec` and waits (at most 10 minutes) until it finishes with its `n` items done.
///
/// # Errors
/// When it does not, or NATS or the database fail.
pub async fn run_to_completion(
    client: &Client,
    spec: switchyard_proto::JobSpec,
    n: usize,
) -> anyhow::Result<()> {
    let job_id = client.submit(spec).await?;
    let outcome = client
        .wait(
            &job_id,
            Some(Duration::from_secs(600)),
            Duration::from_secs(60),
            |_| {},
        )
        .await?;
    anyhow::ensure!(
        matches!(outcome, WaitOutcome::Finished(ref s) if s.done() as usize == n),
        "bench job {job_id} did not complete: {outcome:?}"
    );
    Ok(())
}

/// Runs the dispatch bench.
///
/// # Errors
/// When a run fails.
pub async fn run(settings: &Settings, opts: &BenchOptions) -> anyhow::Result<Figure> {
    let items = bench_items(opts.dispatch_items)?;
    let mut runs = Vec::new();
    for rep in 0..opts.repetitions {
        let fleet = fleet_run(settings, &items).await?;
        let base = baseline_run(settings, &items).await?;
        eprintln!(
            "dispatch run {}: fleet {fleet:.0} items/s, baseline {base:.0} items/s",
            rep + 1
        );
        runs.push((fleet, Some(base)));
    }
    Ok(Figure::from_runs(
        runs,
        "items/s",
        "≥ 0.7× raw publish (with Nats-Msg-Id) + batched insert",
    ))
}

async fn fleet_run(settings: &Settings, items: &[Item]) -> anyhow::Result<f64> {
    let env = BenchEnv::new(settings, StorageKind::File)?;
    let result = async {
        let d = Dispatcher::connect(env.settings.clone()).await?;
        let client = Client {
            settings: std::sync::Arc::clone(&d.settings),
            nats: d.client.clone(),
            js: d.js.clone(),
            pool: d.pool.clone(),
            inline_limit: INLINE_LIMIT,
        };
        let mut spec = new_job(mmlu_task(), items.to_vec());
        spec.policy.routing = Routing::StrongShare { value: 0.2 };
        // Upload and publish the job first; the clock starts when the dispatcher starts.
        let job_id = client.submit(spec).await?;
        let token = CancellationToken::new();
        let started = Instant::now();
        let task = tokio::spawn(switchyard_dispatcher::consumer::run(
            d.clone(),
            token.clone(),
        ));
        let deadline = started + Duration::from_secs(300);
        loop {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM jobs WHERE job_id = $1")
                    .bind(&job_id)
                    .fetch_optional(&d.pool)
                    .await?;
            if status.as_deref() == Some("running") {
                break;
            }
            anyhow::ensure!(
                status.as_deref() != Some("rejected"),
                "bench job was rejected"
            );
            anyhow::ensure!(
                Instant::now() < deadline,
                "dispatch did not finish in 5 minutes"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = started.elapsed();
        token.cancel();
        let _ = task.await;
        Ok(items.len() as f64 / elapsed.as_secs_f64())
    }
    .await;
    env.cleanup().await;
    result
}

/// The same I/O without the dispatcher: insert the same item rows in the same chunks, then
/// publish the same messages with `Nats-Msg-Id` and the same window.
async fn baseline_run(settings: &Settings, items: &[Item]) -> anyhow::Result<f64> {
    let env = BenchEnv::new(settings, StorageKind::File)?;
    let result = async {
        let s = &env.settings;
        let client = switchyard_runtime::nats::connect(s, "switchyard-bench").await?;
        let js = switchyard_runtime::nats::jetstream(client);
        switchyard_runtime::nats::ensure_streams(&js, s).await?;
        let pool = switchyard_store::connect_and_migrate(s.database_url(), 4).await?;
        let job_id = "baseline".to_owned();
        jobs::admit(
            &pool,
            &NewJob {
                job_id: job_id.clone(),
                idempotency_key: job_id.clone(),
                spec_hash: String::new(),
                team: "bench".into(),
                project: "bench".into(),
                task_kind: "classify".into(),
                task: serde_json::json!({}),
                policy: serde_json::json!({}),
                labels: serde_json::json!({}),
                message_seq: None,
                deadline_secs: None,
            },
        )
        .await?;
        // Items are stored only while a job is `dispatching`.
        jobs::mark_ingested(
            &pool,
            &job_id,
            items.len() as i64,
            None,
            &serde_json::json!({}),
        )
        .await?;
        // Everything precomputed: the baseline does I/O only.
        let rows: Vec<NewItem> = items
            .iter()
            .enumerate()
            .map(|(i, it)| NewItem {
                item_id: it.item_id.clone(),
                seq: i as i64,
                text: it.text.clone(),
                input_hash: String::new(),
                sensitivity: None,
                metadata: None,
                router_score: 0.0,
                route: Default::default(),
                routed_tier: if i % 5 == 0 { "strong" } else { "weak" }.to_owned(),
            })
            .collect();
        let t = s.topology();
        let task = mmlu_task();
        let messages: Vec<(String, String, Bytes)> = items
            .iter()
            .enumerate()
            .map(|(i, it)| {
                let tier = if i % 5 == 0 { "strong" } else { "weak" };
                let mut msg = work_item(&job_id, it, tier, &task);
                msg.confidence_threshold = 0.5;
                msg.escalations_left = 1;
                let payload = codec::encode(&msg).map(Bytes::from).unwrap_or_default();
                (
                    t.work_subject(tier),
                    work::attempt_key(&job_id, &it.item_id, 0),
                    payload,
                )
            })
            .collect();
        let started = Instant::now();
        for chunk in rows.chunks(s.dispatcher.chunk_size.get()) {
            switchyard_store::items::insert_chunk(&pool, &job_id, chunk).await?;
        }
        let mut publisher = WindowedPublisher::new(js.clone(), s.dispatcher.publish_window.get());
        for (subject, id, payload) in messages {
            publisher.publish(subject, &id, payload).await?;
        }
        publisher.flush().await?;
        let elapsed = started.elapsed();
        pool.close().await;
        Ok(items.len() as f64 / elapsed.as_secs_f64())
    }
    .await;
    env.cleanup().await;
    result
}

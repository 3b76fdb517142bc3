//! Dispatcher memory for a very large job: a 1,000,000-item job streamed from the object
//! store by a dispatcher running as its own process; the figure is its peak resident memory.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchyard_proto::{InputRef, JobSpec, PROTOCOL_VERSION, Routing, Task, codec};
use switchyard_runtime::Settings;
use switchyard_runtime::settings::StorageKind;

use super::env::BenchEnv;
use super::procs::{peak_rss_bytes, spawn_role, write_config};
use super::{BenchOptions, Figure};
use switchyard_client::Client;

/// Runs the memory bench (one repetition: a million items take a minute or two).
///
/// # Errors
/// When the run fails or takes over ten minutes.
pub async fn run(settings: &Settings, opts: &BenchOptions) -> anyhow::Result<Figure> {
    let env = BenchEnv::new(settings, StorageKind::File)?;
    let result = measure(&env.settings, opts.memory_items).await;
    env.cleanup().await;
    let (peak_mb, secs) = result?;
    eprintln!(
        "memory: dispatcher peak RSS {peak_mb:.1} MB for {} items ({secs:.1} s)",
        opts.memory_items
    );
    Ok(Figure::from_runs(
        vec![(peak_mb, None)],
        "MB",
        "≤ 150 MB peak RSS for a 1,000,000-item job",
    ))
}

async fn measure(settings: &Settings, n: usize) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("items.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input)?);
        for i in 0..n {
            writeln!(
                f,
                "{{\"id\":\"i{i:07}\",\"text\":\"Ticket {i}: the customer reports that the invoice total does not match the order, please classify.\"}}"
            )?;
        }
    }
    let client = Client::connect(settings.clone()).await?;
    let bucket = settings.topology().inputs_bucket();
    let store = client.js.get_object_store(&bucket).await?;
    let job_id = format!("memory-{n}");
    let mut file = tokio::fs::File::open(&input).await?;
    store.put(job_id.as_str(), &mut file).await?;
    let mut spec = JobSpec::new(
        job_id.clone(),
        Task::Classify {
            labels: vec!["billing".into(), "other".into()],
            instructions: None,
        },
    );
    spec.v = PROTOCOL_VERSION;
    spec.input = Some(InputRef {
        bucket,
        name: job_id.clone(),
    });
    spec.policy.routing = Routing::StrongShare { value: 0.2 };
    client
        .publish_spec(&job_id, &format!("job:{job_id}"), codec::encode(&spec)?)
        .await?;
    let _ = Bytes::new();

    let config = write_config(settings, dir.path())?;
    let dispatcher = spawn_role(settings, &config, &["dispatcher"])?;
    let pid = dispatcher
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the dispatcher process did not start"))?;
    let started = Instant::now();
    loop {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM jobs WHERE job_id = $1")
                .bind(&job_id)
                .fetch_optional(&client.pool)
                .await?;
        match status.as_deref() {
            Some("running") => break,
            Some("rejected") => anyhow::bail!("the memory bench job was rejected"),
            _ => {}
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "dispatch took over 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peak =
        peak_rss_bytes(pid).ok_or_else(|| anyhow::anyhow!("cannot read /proc/{pid}/status"))?;
    Ok((
        peak as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64(),
    ))
}

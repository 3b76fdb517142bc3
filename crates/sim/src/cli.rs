//! `switchyard sim`: run the model simulator from the command line.
//!
//! The binary crate owns the process (logging setup, signals); this module only turns
//! arguments into a running server and stops it when told to.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::confidence::DEFAULT_AUROC;
use crate::config::SimConfig;
use crate::dataset::Dataset;
use crate::faults::Faults;

/// Where the bundled demo data lives, relative to the repository root.
pub const DEMO_DATA_DIR: &str = "data/demo";

/// Arguments of `switchyard sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: String,
    /// Routing data to replay (JSONL; repeatable). Default: data/demo/*.jsonl under the
    /// current directory.
    #[arg(long = "data", value_name = "FILE")]
    pub data: Vec<PathBuf>,
    /// Base latency of each answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Uniform latency jitter either way, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// AUROC of the reported confidence against correctness.
    #[arg(long, default_value_t = DEFAULT_AUROC, value_parser = parse_fraction)]
    pub auroc: f64,
    /// Seed of the confidence noise and the fault rolls.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Requests per minute per model (429 beyond).
    #[arg(long)]
    pub rpm: Option<u32>,
    /// Tokens per minute per model (429 beyond).
    #[arg(long)]
    pub tpm: Option<u32>,
    /// Fraction of calls that fail with 500, 502 or 503.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub error_rate: f64,
    /// Fraction of calls that hang (see --hang-ms) before answering.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub timeout_rate: f64,
    /// How long a timed-out call hangs, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub hang_ms: u64,
    /// Append one JSON line per call to this file.
    #[arg(long, value_name = "FILE")]
    pub call_log: Option<PathBuf>,
    /// Never send logprobs (a provider without them): repeated samples (`n`, `seed`) are
    /// the only confidence signal, and disagree more often on wrong answers at --auroc.
    #[arg(long)]
    pub no_logprobs: bool,
}

/// Loads the data, serves until `shutdown` is cancelled, then stops the server.
pub async fn run(args: SimArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_fallback(args, None, shutdown).await
}

/// As [`run`], but when no `--data` is given and `./data/demo` is not there, serves
/// `fallback` (the `switchyard` binary passes the demo data it carries, so the simulator
/// works from any directory and in containers).
///
/// # Errors
/// As [`run`].
pub async fn run_with_fallback(
    args: SimArgs,
    fallback: Option<Dataset>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dataset = match (args.data.is_empty(), fallback) {
        (true, Some(data)) if demo_data_files(Path::new(".")).is_err() => data,
        _ => {
            let paths = if args.data.is_empty() {
                demo_data_files(Path::new("."))?
            } else {
                args.data.clone()
            };
            tokio::task::spawn_blocking(move || Dataset::load(&paths))
                .await
                .context("loading the routing data panicked")??
        }
    };
    let models = dataset.models();
    let config = config_from(&args);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let handle = crate::start(listener, Arc::new(dataset), config).await?;
    tracing::info!(
        addr = %handle.addr(),
        base_url = %handle.base_url(),
        ?models,
        "model simulator listening"
    );
    shutdown.cancelled().await;
    handle.shutdown().await;
    tracing::info!("model simulator stopped");
    Ok(())
}

fn config_from(args: &SimArgs) -> SimConfig {
    SimConfig {
        latency: Duration::from_millis(args.latency_ms),
        latency_jitter: Duration::from_millis(args.jitter_ms),
        auroc: args.auroc,
        seed: args.seed,
        rpm_limit: args.rpm,
        tpm_limit: args.tpm,
        faults: Faults {
            error_rate: args.error_rate,
            timeout_rate: args.timeout_rate,
            hang: Duration::from_millis(args.hang_ms),
            ..Faults::default()
        },
        call_log_path: args.call_log.clone(),
        logprobs: !args.no_logprobs,
        ..SimConfig::default()
    }
}

/// The `*.jsonl` files of [`DEMO_DATA_DIR`] under `root`, sorted.
fn demo_data_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = root.join(DEMO_DATA_DIR);
    let hint = || {
        format!(
            "no --data given and no {DEMO_DATA_DIR}/*.jsonl under {}; run from the repository \
             root or pass --data FILE",
            std::path::absolute(root)
                .unwrap_or_else(|_| root.to_owned())
                .display()
        )
    };
    let entries = std::fs::read_dir(&dir).with_context(hint)?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.with_context(hint)?.path();
        if path.extension().is_some_and(|ext| ext == "jsonl") {
            files.push(path);
        }
    }
    if files.is_empty() {
        anyhow::bail!(hint());
    }
    files.sort();
    Ok(files)
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "sim",
            "--data",
            "a.jsonl",
            "--data",
            "b.jsonl",
            "--auroc",
            "0.9",
            "--rpm",
            "60",
            "--error-rate",
            "0.1",
            "--call-log",
            "calls.jsonl",
        ])
        .unwrap();
        let args = cli.sim;
        assert_eq!(args.listen, "127.0.0.1:8089");
        assert_eq!(args.data.len(), 2);
        let config = config_from(&args);
        assert_eq!(config.auroc, 0.9);
        assert_eq!(config.rpm_limit, Some(60));
        assert_eq!(config.faults.error_rate, 0.1);
        assert_eq!(config.faults.hang, Duration::from_secs(60));
        assert!(Cli::try_parse_from(["sim", "--error-rate", "1.5"]).is_err());
    }

    #[test]
    fn finds_the_bundled_demo_data() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let files = demo_data_files(&root).unwrap();
        assert!(
            files.iter().any(|f| f.ends_with("classify_mmlu.jsonl")),
            "{files:?}"
        );
    }

    #[test]
    fn missing_demo_data_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = demo_data_files(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("pass --data FILE"), "{err:#}");
    }

    #[tokio::test]
    async fn runs_until_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d.jsonl");
        std::fs::write(
            &data,
            r#"{"id":"1","prompt":"p","models":{"m":{"score":1,"prompt_tokens":1,"completion_tokens":1}}}"#,
        )
        .unwrap();
        let args = Cli::try_parse_from([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ])
        .unwrap()
        .sim;
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        run(args, shutdown).await.unwrap();
    }
}

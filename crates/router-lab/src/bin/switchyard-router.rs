//! The router tools standalone: `switchyard-router train|score|eval|crossval …`, the same
//! commands as `switchyard router …` (handy for rebuilding the default artifact without
//! building the whole fleet binary).

use clap::Parser;
use switchyard_router_lab::cli::{RouterCommand, run};

/// Train, score, evaluate and cross-validate Switchyard routers.
#[derive(Debug, Parser)]
#[command(name = "switchyard-router", version)]
struct Cli {
    #[command(subcommand)]
    command: RouterCommand,
}

fn main() -> anyhow::Result<()> {
    run(Cli::parse().command)
}

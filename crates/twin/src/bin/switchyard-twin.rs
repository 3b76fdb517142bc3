//! `switchyard-twin eval …`: the offline twin without the rest of the fleet (the same as
//! `switchyard policy eval …`).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "switchyard-twin",
    about = "The offline twin of the fleet's decision"
)]
enum Command {
    /// Replay a quality policy on routing data: achieved quality, savings, audit estimate.
    Eval(switchyard_twin::cli::EvalArgs),
}

fn main() -> anyhow::Result<()> {
    match Command::parse() {
        Command::Eval(a) => switchyard_twin::cli::run_and_print(&a),
    }
}

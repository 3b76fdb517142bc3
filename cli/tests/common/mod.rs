//! What the tests of the `switchyard` binary share: the binary as a
//! [`switchyard_testkit::procs::Role`], run once to its end or started as a service, and its
//! output as text.

#![allow(dead_code, reason = "each test file uses a part of it")]

use std::path::{Path, PathBuf};
use std::process::Output;

use switchyard_testkit::procs::Role;
use switchyard_testkit::{TestDb, TestNats};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// `switchyard --config CONFIG ARGS…` with `env` set and the caller's `NATS_URL`,
/// `DATABASE_URL` and `SWITCHYARD_CONFIG` removed (the config says where the services are,
/// unless `env` names them).
pub fn switchyard(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Role {
    Role::new(
        args.first().copied().unwrap_or("switchyard"),
        &args.join(" "),
        args,
        config.to_path_buf(),
        None,
        env.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
    .with_program(BIN.into())
    .without_env(&["NATS_URL", "DATABASE_URL", "SWITCHYARD_CONFIG"])
}

/// Runs `switchyard --config CONFIG ARGS…` to its end.
pub fn run(config: &Path, args: &[&str]) -> Output {
    switchyard(config, args, &[])
        .output()
        .expect("the switchyard binary runs")
}

/// Starts `switchyard --config CONFIG ARGS…` (a dispatcher, a worker); killed when dropped.
pub fn start(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Role {
    let mut role = switchyard(config, args, env);
    role.start().expect("the switchyard binary starts");
    role
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fleet's configuration in `dir/fleet.toml`: NATS and Postgres of the test, tiers weak
/// (Mixtral, escalating to strong), strong (GPT-4) and local (Mistral-7B, `local = true`),
/// every model the simulator at `sim_url`.
pub fn fleet_config(dir: &Path, nats: &TestNats, db: &TestDb, sim_url: &str) -> PathBuf {
    let model = |name: &str, tier: &str, price: &str| {
        format!(
            "[models.\"{name}\"]\ntier = \"{tier}\"\nprovider = \"sim\"\nbase_url = \"{sim_url}\"\n\
             input_usd_per_mtok = \"{price}\"\noutput_usd_per_mtok = \"{price}\"\nmax_retries = 0\n\n"
        )
    };
    let text = format!(
        "[nats]\nurl = \"{}\"\nprefix = \"{}\"\nstorage = \"memory\"\n\n\
         [database]\nurl = \"{}\"\nmax_connections = 4\n\n\
         [worker]\nack_wait = \"5s\"\nmax_deliver = 2\nretry_delay = \"100ms\"\nshutdown_grace = \"5s\"\n\n\
         {}{}{}\
         [tiers.weak]\ndefault_model = \"mistralai/Mixtral-8x7B-Instruct-v0.1\"\nescalate_to = \"strong\"\n\n\
         [tiers.strong]\ndefault_model = \"gpt-4-1106-preview\"\n\n\
         [tiers.local]\ndefault_model = \"mistralai/Mistral-7B-Instruct-v0.1\"\nlocal = true\n",
        switchyard_testkit::nats_url(),
        nats.prefix,
        db.url,
        model("mistralai/Mixtral-8x7B-Instruct-v0.1", "weak", "0.6"),
        model("gpt-4-1106-preview", "strong", "10"),
        model("mistralai/Mistral-7B-Instruct-v0.1", "local", "0.2"),
    );
    let path = dir.join("fleet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

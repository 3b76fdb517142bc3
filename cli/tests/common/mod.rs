//! What the tests of the `switchyard` binary share: the binary as a
//! [`switchyard_testkit::procs::Role`], run once to its end or started as a service, and its
//! output as text.

#![allow(dead_code, reason = "each test file uses a part of it")]

use std::path::Path;
use std::process::Output;

use switchyard_testkit::procs::Role;

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

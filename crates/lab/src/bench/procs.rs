//! Fleet roles as child processes of the bench (`switchyard dispatcher`, `switchyard worker`),
//! so their memory and CPU can be read from `/proc` apart from the bench's own.

use std::path::{Path, PathBuf};

use switchyard_runtime::Settings;
pub use switchyard_testkit::procs::Role;

/// Writes `settings` as a config file for child processes (the database URL, redacted in the
/// file, is passed through the environment).
///
/// # Errors
/// When the file cannot be written.
pub fn write_config(settings: &Settings, dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("bench.toml");
    std::fs::write(&path, settings.to_redacted_toml())?;
    Ok(path)
}

/// Starts `switchyard --config CONFIG ARGS…` (this very executable), with the deployment's
/// NATS and database URLs in its environment. `SWITCHYARD_BENCH_LOGS=DIR` keeps each role's
/// log (at `RUST_LOG`, default warn) there.
///
/// # Errors
/// When the process cannot start.
pub fn spawn_role(settings: &Settings, config: &Path, args: &[&str]) -> anyhow::Result<Role> {
    let name = format!(
        "{}-{}",
        args.join("-").replace(['/', ','], "_"),
        ulid::Ulid::new()
    );
    let logs = std::env::var_os("SWITCHYARD_BENCH_LOGS").map(PathBuf::from);
    let env = vec![
        ("NATS_URL".to_owned(), settings.nats.url.clone()),
        (
            "DATABASE_URL".to_owned(),
            settings.database_url().to_owned(),
        ),
        (
            "RUST_LOG".to_owned(),
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        ),
    ];
    let mut role = Role::new(
        &name,
        &args.join(" "),
        args,
        config.to_path_buf(),
        logs.as_deref(),
        env,
    );
    role.start()?;
    Ok(role)
}

/// Peak resident memory (`VmHWM`) of a process, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM:").map(|kb| kb * 1024)
}

/// Current resident memory (`VmRSS`) of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS:").map(|kb| kb * 1024)
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) a process has used, in microseconds.
pub fn cpu_micros(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = 100; // USER_HZ on Linux
    Some((utime + stime) * 1_000_000 / ticks)
}

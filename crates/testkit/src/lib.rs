//! Test support: the one place tests and the lab (chaos, benches) get their servers from.
//!
//! Every test gets its own Postgres database ([`TestDb`]) and its own NATS names (a random
//! deployment prefix, [`TestNats`]), so tests run in parallel against the same servers. The
//! servers are the ones `scripts/services.sh` starts (`NATS_URL`, `DATABASE_URL`, or the
//! loopback defaults); a missing server fails the test with instructions, never skips it.
//!
//! Servers of a test's own: [`server::NatsServer`] (one nats-server, restartable),
//! [`cluster::NatsCluster`] (three nodes), [`postgres::Postgres`] (a PostgreSQL of its own,
//! stoppable and restartable), with [`ports::free_port`] and [`ports::wait_for_port`];
//! [`http::get`] for the HTTP servers tests start; [`procs::Role`] for a role of the fleet
//! as a child process.
//! The dispatcher and worker never link this crate.

pub mod cluster;
pub mod http;
pub mod ledger;
pub mod ports;
pub mod postgres;
pub mod procs;
pub mod server;

use std::time::{Duration, Instant};

use secrecy::SecretString;
use sqlx::PgPool;
use switchyard_runtime::Settings;
use switchyard_runtime::settings::StorageKind;

/// The Postgres server tests use (a database name in it is ignored).
pub fn admin_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The NATS server tests use.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn with_database(url: &str, db: &str) -> String {
    // postgres://user@host:port/name?params → replace `name`.
    let (base, params) = match url.split_once('?') {
        Some((b, p)) => (b, Some(p)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[after_scheme..].find('/') {
        Some(slash) => &base[..after_scheme + slash],
        None => base,
    };
    match params {
        Some(p) => format!("{base}/{db}?{p}"),
        None => format!("{base}/{db}"),
    }
}

/// Runs `work` to the end on a thread with a runtime of its own, for a `Drop` that needs async
/// clean-up: the test's runtime may be blocked in that drop, so it cannot do the work.
fn on_a_thread_of_its_own(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(work);
        }
    })
    .join();
}

/// A fresh, migrated database, dropped when the value is dropped (even if the test panics).
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// Creates and migrates `sy_test_<ulid>`.
    ///
    /// # Panics
    /// When Postgres is unreachable, with instructions.
    pub async fn new() -> Self {
        let name = format!("sy_test_{}", ulid::Ulid::new().to_string().to_lowercase());
        let url = with_database(&admin_database_url(), &name);
        let pool = switchyard_store::connect_and_migrate(&url, 8)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create test database on {}: {e:#}\n\
                 start the services with `scripts/services.sh` (or set DATABASE_URL)",
                    admin_database_url()
                )
            });
        Self { name, url, pool }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = with_database(&admin_database_url(), "postgres");
        let name = self.name.clone();
        // Drop may run while tasks of the test still hold connections of the pool (a test
        // that panicked): do not wait for them (that would deadlock the test's runtime);
        // `WITH (FORCE)` ends their sessions. A thread with its own runtime does the async
        // work, since the test's runtime is blocked in this drop.
        on_a_thread_of_its_own(async move {
            if let Ok(admin) = PgPool::connect(&admin).await {
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await;
                admin.close().await;
            }
        });
    }
}

/// A NATS namespace of a test's own: a random prefix, memory streams, deleted on drop.
pub struct TestNats {
    pub prefix: String,
    pub client: async_nats::Client,
    settings: Settings,
}

impl TestNats {
    /// Connects and picks a fresh prefix (streams are created by the services under test).
    ///
    /// # Panics
    /// When NATS is unreachable, with instructions.
    pub async fn new() -> Self {
        let prefix = format!("t{}", ulid::Ulid::new().to_string().to_lowercase());
        let client = async_nats::connect(nats_url()).await.unwrap_or_else(|e| {
            panic!(
                "cannot connect to NATS at {}: {e}\n\
                 start the services with `scripts/services.sh` (or set NATS_URL)",
                nats_url()
            )
        });
        let mut settings = Settings::demo();
        settings.nats.url = nats_url();
        settings.nats.prefix = prefix.clone();
        settings.nats.storage = StorageKind::Memory;
        Self {
            prefix,
            client,
            settings,
        }
    }

    /// A JetStream context.
    pub fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client.clone())
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let settings = self.settings.clone();
        let url = nats_url();
        on_a_thread_of_its_own(async move {
            if let Ok(client) = async_nats::connect(url).await {
                let js = async_nats::jetstream::new(client);
                let _ = switchyard_runtime::nats::delete_topology(&js, &settings).await;
            }
        });
    }
}

/// Settings for a test: its own prefix and database, memory streams, quick timings.
pub fn settings_for(nats: &TestNats, db: &TestDb) -> Settings {
    let mut s = nats.settings.clone();
    s.database.url = SecretString::from(db.url.clone());
    s.database.max_connections = 8;
    s.worker.ack_wait = Duration::from_secs(10);
    s.worker.retry_delay = Duration::from_millis(200);
    s.worker.shutdown_grace = Duration::from_secs(5);
    s
}

/// Polls `check` every `every` until it returns `Ok`, at most `timeout` (so at most
/// `timeout / every + 1` times). This is the one wait loop of tests and the lab against
/// servers and processes: bounded in time and count.
///
/// # Errors
/// When `timeout` passes, naming `what` and the last error.
pub async fn poll<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let max_polls = (timeout.as_millis() / every.as_millis().max(1)).max(1) + 1;
    let mut last_error = String::new();
    for _ in 0..max_polls {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) => last_error = e.to_string(),
        }
        if start.elapsed() > timeout {
            break;
        }
        tokio::time::sleep(every).await;
    }
    anyhow::bail!("timed out after {timeout:?} waiting for {what}: {last_error}")
}

/// [`poll`] for code without a runtime (a child process of a synchronous test): calls
/// `check` every `every` until it returns `Some`, at most `timeout` and `timeout / every + 1`
/// times; `None` when the time is up.
pub fn poll_blocking<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    let max_polls = (timeout.as_millis() / every.as_millis().max(1)).max(1) + 1;
    for _ in 0..max_polls {
        if let Some(v) = check() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            break;
        }
        std::thread::sleep(every);
    }
    None
}

/// Polls `check` until it returns `Some`, at most `timeout` (every 20 ms): [`poll`] for a
/// test, which fails when the time is up.
///
/// # Panics
/// When `timeout` passes, naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(what, timeout, Duration::from_millis(20), || {
        let polled = check();
        async move { polled.await.ok_or("not yet") }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:1/x?ssl=1", "y"),
            "postgres://u@h:1/y?ssl=1"
        );
        assert_eq!(with_database("postgres://u@h:1", "y"), "postgres://u@h:1/y");
    }
}

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
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(admin) = PgPool::connect(&admin).await {
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await;
                    admin.close().await;
                }
            });
        })
        .join();
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
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(client) = async_nats::connect(url).await {
                    let js = async_nats::jetstream::new(client);
                    let _ = switchyard_runtime::nats::delete_topology(&js, &settings).await;
                }
            });
        })
        .join();
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

/// Polls `check` until it returns `Some`, at most `timeout` (every 20 ms). This is the one
/// wait loop tests use against servers: bounded in time and count.
///
/// # Panics
/// When `timeout` passes, naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let max_polls = (timeout.as_millis() / 20).max(1) + 1;
    for _ in 0..max_polls {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
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

//! Connecting to Postgres.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

/// Connects a pool to `url`, creating the database if it does not exist (the server must
/// allow the user to create databases).
///
/// # Errors
/// An unparsable URL, an unreachable server, or a database that cannot be created.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    connect_waiting(url, max_connections, ACQUIRE_TIMEOUT).await
}

/// How long a query waits for a connection (through an outage, for a new one) by default.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// [`connect`] whose queries wait at most `acquire_timeout` for a connection.
///
/// # Errors
/// As [`connect`].
pub async fn connect_waiting(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid URL")?;
    let options = options.log_statements(tracing::log::LevelFilter::Trace);
    // A process that starts while Postgres restarts or fails over waits for it (bounded);
    // refused credentials or a missing role fail at once.
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match try_connect(&options, max_connections, acquire_timeout).await {
            Ok(pool) => return Ok(pool),
            Err(e) if is_transient(&e) && started.elapsed() < INITIAL_CONNECT_PATIENCE => {
                tracing::warn!(error = %format!("{e:#}"), "Postgres not reachable yet, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long a starting process keeps trying to reach a Postgres that is down or restarting.
const INITIAL_CONNECT_PATIENCE: Duration = Duration::from_secs(20);

async fn try_connect(
    options: &PgConnectOptions,
    max_connections: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<PgPool> {
    create_database_if_missing(options).await?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_with(options.clone())
        .await
        .with_context(|| {
            format!(
                "cannot connect to Postgres database `{}` on {}:{}",
                options.get_database().unwrap_or("?"),
                options.get_host(),
                options.get_port()
            )
        })
}

/// A pool of one connection whose acquisitions give up after `patience`, for a task that must
/// act on a schedule (a lease renewal): it must not queue behind the busy pool, and after an
/// outage each tick must try afresh rather than sit in the backoff of a connect begun while
/// the server was down.
///
/// # Errors
/// An unparsable URL (it connects lazily).
pub fn connect_punctual(url: &str, patience: Duration) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid URL")?;
    let options = options.log_statements(tracing::log::LevelFilter::Trace);
    Ok(PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(patience)
        .connect_lazy_with(options))
}

/// Connection refused or reset, a pool timeout, or a server starting up or shutting down
/// (SQLSTATE class 57P and 08): worth another try.
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .is_some_and(is_transient_sqlx)
    })
}

/// [`is_transient`] for a driver error.
pub fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
        _ => false,
    }
}

/// Connects and applies every pending migration.
///
/// # Errors
/// As [`connect`], or a migration that fails.
pub async fn connect_and_migrate(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    connect_and_migrate_waiting(url, max_connections, ACQUIRE_TIMEOUT).await
}

/// [`connect_and_migrate`] whose queries wait at most `acquire_timeout` for a connection.
///
/// # Errors
/// As [`connect_and_migrate`].
pub async fn connect_and_migrate_waiting(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<PgPool> {
    let pool = connect_waiting(url, max_connections, acquire_timeout).await?;
    crate::MIGRATOR
        .run(&pool)
        .await
        .context("cannot apply database migrations")?;
    Ok(pool)
}

async fn database_exists(conn: &mut sqlx::PgConnection, name: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
}

async fn create_database_if_missing(options: &PgConnectOptions) -> anyhow::Result<()> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    if options.clone().connect().await.is_ok() {
        return Ok(());
    }
    let admin = options.clone().database("postgres");
    let mut conn = admin.connect().await.with_context(|| {
        format!(
            "cannot connect to Postgres on {}:{}",
            options.get_host(),
            options.get_port()
        )
    })?;
    if !database_exists(&mut conn, &name).await? {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            // Two processes starting together: the other one won.
            if !database_exists(&mut conn, &name).await? {
                return Err(e).with_context(|| format!("cannot create database `{name}`"));
            }
        }
        tracing::info!(database = %name, "created database");
    }
    conn.close().await.ok();
    Ok(())
}

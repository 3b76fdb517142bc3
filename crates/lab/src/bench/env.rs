//! A throwaway environment for one bench run: its own database and stream prefix.

use std::collections::BTreeMap;

use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use switchyard_runtime::Settings;
use switchyard_runtime::settings::StorageKind;

/// Settings for one run, pointing at a new database and prefix.
pub struct BenchEnv {
    pub settings: Settings,
    database: String,
    admin: PgConnectOptions,
}

impl BenchEnv {
    /// A new database `switchyard_bench_<id>` on the configured server and prefix `b<id>`.
    ///
    /// # Errors
    /// An unparsable database URL.
    pub fn new(base: &Settings, storage: StorageKind) -> anyhow::Result<Self> {
        let id = ulid::Ulid::new().to_string()[16..].to_lowercase();
        let options: PgConnectOptions = base.database_url().parse()?;
        let database = format!("switchyard_bench_{id}");
        let url = options
            .clone()
            .database(&database)
            .to_url_lossy()
            .to_string();
        let mut settings = base.clone();
        settings.database.url = SecretString::from(url);
        settings.nats.prefix = format!("b{id}");
        settings.nats.storage = storage;
        Ok(Self {
            settings,
            database,
            admin: options.database("postgres"),
        })
    }

    /// Removes the database and the streams.
    pub async fn cleanup(self) {
        if let Ok(client) =
            switchyard_runtime::nats::connect(&self.settings, "switchyard-bench").await
        {
            let js = switchyard_runtime::nats::jetstream(client);
            let _ = switchyard_runtime::nats::delete_topology(&js, &self.settings).await;
        }
        if let Ok(mut conn) = self.admin.connect().await {
            let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database);
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    }
}

/// Cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Versions of the servers and the main crates, for the report.
pub async fn versions(settings: &Settings) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert(
        "switchyard".to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    );
    v.insert("async-nats".to_owned(), "0.51".to_owned());
    v.insert("sqlx".to_owned(), "0.9".to_owned());
    if let Ok(client) = switchyard_runtime::nats::connect(settings, "switchyard-bench").await {
        v.insert("nats-server".to_owned(), client.server_info().version);
    }
    if let Ok(options) = settings.database_url().parse::<PgConnectOptions>()
        && let Ok(mut conn) = options.database("postgres").connect().await
    {
        if let Ok(ver) = sqlx::query_scalar::<_, String>("SHOW server_version")
            .fetch_one(&mut conn)
            .await
        {
            v.insert("postgres".to_owned(), ver);
        }
        let _ = conn.close().await;
    }
    v
}

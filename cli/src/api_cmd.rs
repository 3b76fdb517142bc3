//! `switchyard api` (the OpenAI-compatible Batch API server) and `switchyard api-key`
//! (keys that act as a team).

use std::net::SocketAddr;

use clap::{Args, Subcommand};
use switchyard_api::{Api, ApiOptions};
use switchyard_client::exit;
use switchyard_runtime::Settings;
use tokio_util::sync::CancellationToken;

/// `switchyard api`: the `[api]` section of the configuration, these flags overriding it.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Address to serve `/v1` and `/healthz` on (default: `[api] listen`, 127.0.0.1:8091).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Uploads above this many bytes answer 413 (default: `[api] max_upload_bytes`,
    /// OpenAI's 200 MB).
    #[arg(long)]
    pub max_upload_bytes: Option<u64>,
    /// Serve Prometheus `/metrics` on this address (default: `[metrics] listen`).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
}

/// `switchyard api-key …`.
#[derive(Debug, Clone, Subcommand)]
pub enum KeyCommand {
    /// Create a key for a team; its secret is printed once and never stored.
    Create {
        #[arg(long)]
        team: String,
        /// A name to tell keys apart in `list`.
        #[arg(long)]
        name: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        team: Option<String>,
    },
    /// Revoke a key: it stops authenticating at once.
    Revoke { key_id: String },
}

/// Runs `switchyard api` until shutdown.
///
/// # Errors
/// NATS or Postgres unreachable, the address taken.
pub async fn serve(
    settings: Settings,
    a: ApiArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<u8> {
    let s = &settings.api;
    let listen = a.listen.unwrap_or(s.listen);
    let mut options = ApiOptions::from_settings(s);
    if let Some(max) = a.max_upload_bytes {
        options.max_upload_bytes = max;
    }
    options.file_retention = s.file_retention.or(settings.finance.retention);
    // Read the certificate before anything listens: a bad one is a clear error at start.
    let tls = match (&s.tls_cert, &s.tls_key) {
        (Some(cert), Some(key)) => Some(switchyard_api::tls::acceptor(cert, key)?),
        _ => None,
    };
    let api = Api::connect(&settings, options).await?;
    if let Some(addr) = a.metrics_listen.or(settings.metrics.listen) {
        switchyard_runtime::metrics::serve(addr, api.metrics.clone(), shutdown.clone()).await?;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    match tls {
        Some(tls) => {
            tracing::info!(%listen, "OpenAI-compatible Batch API serving /v1 over HTTPS");
            switchyard_api::serve_tls(api, listener, tls, shutdown).await?;
        }
        None => {
            tracing::info!(%listen, "OpenAI-compatible Batch API serving /v1");
            switchyard_api::serve(api, listener, shutdown).await?;
        }
    }
    Ok(exit::OK)
}

/// Runs `switchyard api-key …`.
///
/// # Errors
/// Postgres unreachable; an unknown key to revoke.
pub async fn keys(settings: Settings, cmd: KeyCommand) -> anyhow::Result<u8> {
    let pool = switchyard_store::connect_and_migrate(settings.database_url(), 2).await?;
    match cmd {
        KeyCommand::Create { team, name } => {
            let (row, secret) = switchyard_api::keys::create(&pool, &team, name.as_deref()).await?;
            eprintln!(
                "created {} for team `{}`; the key below is shown only now:",
                row.key_id, row.team
            );
            println!("{secret}");
        }
        KeyCommand::List { team } => {
            for k in switchyard_store::api::list_keys(&pool, team.as_deref()).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    k.key_id,
                    k.team,
                    k.name.as_deref().unwrap_or("-"),
                    k.created_at.to_rfc3339(),
                    k.revoked_at.map_or_else(
                        || "active".to_owned(),
                        |t| format!("revoked {}", t.to_rfc3339())
                    )
                );
            }
        }
        KeyCommand::Revoke { key_id } => {
            if !switchyard_store::api::revoke_key(&pool, &key_id).await? {
                anyhow::bail!("no key `{key_id}` (see `switchyard api-key list`)");
            }
            eprintln!("revoked {key_id}");
        }
    }
    Ok(exit::OK)
}

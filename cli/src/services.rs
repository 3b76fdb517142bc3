//! The long-running roles: `dispatcher`, `worker`, `sim`, and `migrate` before them.

use std::net::SocketAddr;

use switchyard_client::exit;
use switchyard_runtime::Settings;
use tokio_util::sync::CancellationToken;

/// `switchyard dispatcher`.
pub async fn dispatcher(
    mut settings: Settings,
    metrics_listen: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> anyhow::Result<u8> {
    if metrics_listen.is_some() {
        settings.metrics.listen = metrics_listen;
    }
    switchyard_dispatcher::run(settings, shutdown).await?;
    Ok(exit::OK)
}

/// `switchyard worker --tier T`.
pub async fn worker(
    mut settings: Settings,
    tiers: Vec<String>,
    metrics_listen: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> anyhow::Result<u8> {
    if metrics_listen.is_some() {
        settings.metrics.listen = metrics_listen;
    }
    switchyard_worker::run(settings, tiers, shutdown).await?;
    Ok(exit::OK)
}

/// `switchyard sim`: the simulator, on the demo's bundled data unless given files.
pub async fn sim(
    args: switchyard_sim::cli::SimArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<u8> {
    let bundled = switchyard_demo::bundled_dataset().ok();
    switchyard_sim::cli::run_with_fallback(args, bundled, shutdown).await?;
    Ok(exit::OK)
}

/// `switchyard migrate`.
pub async fn migrate(settings: &Settings) -> anyhow::Result<u8> {
    switchyard_store::connect_and_migrate(settings.database_url(), 2).await?;
    eprintln!("database is up to date");
    Ok(exit::OK)
}

//! The whole fleet in one process: the model simulator, a dispatcher and workers, each a
//! task with its own cancellation token. `switchyard demo` runs it; the end-to-end tests use
//! it to stop and start workers mid-job. A real deployment runs the same pieces as separate
//! processes (`switchyard dispatcher`, `switchyard worker`, `switchyard sim`).

use std::sync::Arc;

use anyhow::Context as _;
use switchyard_dispatcher::Dispatcher;
use switchyard_runtime::Settings;
use switchyard_sim::{Dataset, SimConfig, SimHandle};
use switchyard_worker::Worker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::Client;

/// A worker running in this process.
pub struct RunningWorker {
    pub worker: Worker,
    pub tiers: Vec<String>,
    token: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

/// A fleet running in this process.
pub struct Fleet {
    /// The settings every part runs with (model URLs point at the simulator, if started).
    pub settings: Settings,
    pub sim: Option<SimHandle>,
    pub dispatcher: Dispatcher,
    pub workers: Vec<Option<RunningWorker>>,
    dispatcher_token: CancellationToken,
    dispatcher_handle: JoinHandle<anyhow::Result<()>>,
}

impl Fleet {
    /// Starts the simulator (when `sim` is given, on a free loopback port, every model's
    /// base URL pointed at it), a dispatcher, and one worker serving every tier.
    ///
    /// # Errors
    /// When a part cannot start.
    pub async fn start(
        mut settings: Settings,
        sim: Option<(Arc<Dataset>, SimConfig)>,
    ) -> anyhow::Result<Self> {
        let sim = match sim {
            None => None,
            Some((data, config)) => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let handle = switchyard_sim::start(listener, data, config).await?;
                for m in settings.models.values_mut() {
                    m.base_url = handle.base_url();
                }
                Some(handle)
            }
        };
        let dispatcher = Dispatcher::connect(settings.clone())
            .await
            .context("cannot start the dispatcher")?;
        let dispatcher_token = CancellationToken::new();
        let dispatcher_handle = tokio::spawn(switchyard_dispatcher::consumer::run(
            dispatcher.clone(),
            dispatcher_token.clone(),
        ));
        let mut fleet = Self {
            settings,
            sim,
            dispatcher,
            workers: Vec::new(),
            dispatcher_token,
            dispatcher_handle,
        };
        let all_tiers: Vec<String> = fleet.settings.tiers.keys().cloned().collect();
        fleet.start_worker(all_tiers).await?;
        Ok(fleet)
    }

    /// Starts another worker serving `tiers`; returns its index.
    ///
    /// # Errors
    /// When it cannot connect.
    pub async fn start_worker(&mut self, tiers: Vec<String>) -> anyhow::Result<usize> {
        let worker = Worker::connect(self.settings.clone(), &tiers)
            .await
            .context("cannot start a worker")?;
        let token = CancellationToken::new();
        let handle = tokio::spawn(switchyard_worker::run_with(
            worker.clone(),
            tiers.clone(),
            token.clone(),
        ));
        self.workers.push(Some(RunningWorker {
            worker,
            tiers,
            token,
            handle,
        }));
        Ok(self.workers.len() - 1)
    }

    /// Stops worker `index` the way SIGTERM does (stop pulling, drain, give back the rest)
    /// and waits for it.
    ///
    /// # Errors
    /// The worker's own error, if it failed.
    pub async fn stop_worker(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(w) = self.workers.get_mut(index).and_then(Option::take) {
            w.token.cancel();
            w.handle.await??;
        }
        Ok(())
    }

    /// Stops worker `index` abruptly: its in-flight calls are dropped without a nak (as if
    /// the process died), so JetStream redelivers them after `ack_wait`.
    pub fn kill_worker(&mut self, index: usize) {
        if let Some(w) = self.workers.get_mut(index).and_then(Option::take) {
            w.handle.abort();
        }
    }

    /// A client sharing this fleet's settings and connections.
    pub fn client(&self) -> Client {
        Client {
            settings: Arc::clone(&self.dispatcher.settings),
            nats: self.dispatcher.client.clone(),
            js: self.dispatcher.js.clone(),
            pool: self.dispatcher.pool.clone(),
            inline_limit: crate::client::INLINE_LIMIT,
        }
    }

    /// Stops everything and waits for it.
    pub async fn stop(mut self) {
        for i in 0..self.workers.len() {
            if let Err(e) = self.stop_worker(i).await {
                tracing::warn!(error = %format!("{e:#}"), "worker stopped with an error");
            }
        }
        self.dispatcher_token.cancel();
        let _ = self.dispatcher_handle.await;
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
    }
}

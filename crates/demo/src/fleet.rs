//! The whole fleet in one process: the model simulator, a dispatcher (with its stuck-job
//! sweep) and workers, each a task with its own cancellation token. `switchyard demo` runs
//! it; the end-to-end tests use it to stop and start workers mid-job. A real deployment runs the same pieces as separate
//! processes (`switchyard dispatcher`, `switchyard worker`, `switchyard sim`).

use std::sync::Arc;

use anyhow::Context as _;
use switchyard_dispatcher::Dispatcher;
use switchyard_runtime::Settings;
use switchyard_sim::{Dataset, SimConfig, SimHandle};
use switchyard_worker::Worker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use switchyard_client::Client;

/// A worker running in this process, on a runtime (and thread) of its own, so that killing it
/// drops everything it was doing, its NATS connection included, as a crashed process would.
pub struct RunningWorker {
    pub worker: Worker,
    pub tiers: Vec<String>,
    token: CancellationToken,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
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
    sweeper_handle: JoinHandle<()>,
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
                settings.point_models_at(&handle.base_url())?;
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
        let sweeper_handle = tokio::spawn(switchyard_dispatcher::sweeper::run(
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
            sweeper_handle,
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
        let token = CancellationToken::new();
        let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<anyhow::Result<Worker>>();
        let (settings, run_tiers, run_token) =
            (self.settings.clone(), tiers.clone(), token.clone());
        let thread = std::thread::Builder::new()
            .name("fleet-worker".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                let result = rt.block_on(async move {
                    let worker = match Worker::connect(settings, &run_tiers).await {
                        Ok(w) => w,
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                            return Ok(());
                        }
                    };
                    let _ = ready_tx.send(Ok(worker.clone()));
                    tokio::select! {
                        r = switchyard_worker::run_with(worker, run_tiers, run_token) => r,
                        _ = kill_rx => Ok(()),
                    }
                });
                // Killed or done: whatever is still running is dropped without running any more
                // of its code (no ack, no nak), like a process that died.
                rt.shutdown_background();
                result
            })?;
        let worker = ready_rx
            .await
            .context("worker thread died")?
            .context("cannot start a worker")?;
        self.workers.push(Some(RunningWorker {
            worker,
            tiers,
            token,
            kill: Some(kill_tx),
            thread: Some(thread),
        }));
        Ok(self.workers.len() - 1)
    }

    /// Starts another worker serving `tiers`, connected to NATS at `nats_url` (a cluster
    /// test attaches workers to different nodes); returns its index.
    ///
    /// # Errors
    /// When it cannot connect.
    pub async fn start_worker_on(
        &mut self,
        nats_url: &str,
        tiers: Vec<String>,
    ) -> anyhow::Result<usize> {
        let saved = self.settings.nats.url.clone();
        self.settings.nats.url = nats_url.to_owned();
        let result = self.start_worker(tiers).await;
        self.settings.nats.url = saved;
        result
    }

    /// Stops worker `index` the way SIGTERM does (stop pulling, drain, give back the rest)
    /// and waits for it.
    ///
    /// # Errors
    /// The worker's own error, if it failed.
    pub async fn stop_worker(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut w) = self.workers.get_mut(index).and_then(Option::take) {
            w.token.cancel();
            if let Some(thread) = w.thread.take() {
                tokio::task::spawn_blocking(move || thread.join())
                    .await?
                    .map_err(|_| anyhow::anyhow!("worker thread panicked"))??;
            }
        }
        Ok(())
    }

    /// Stops worker `index` abruptly: its runtime is dropped with everything in flight, no
    /// ack and no nak (as if the process died), so JetStream redelivers its items after
    /// `ack_wait`.
    pub async fn kill_worker(&mut self, index: usize) {
        if let Some(mut w) = self.workers.get_mut(index).and_then(Option::take) {
            if let Some(kill) = w.kill.take() {
                let _ = kill.send(());
            }
            if let Some(thread) = w.thread.take() {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
        }
    }

    /// A client sharing this fleet's settings and connections.
    pub fn client(&self) -> Client {
        Client {
            settings: Arc::clone(&self.dispatcher.settings),
            nats: self.dispatcher.client.clone(),
            js: self.dispatcher.js.clone(),
            pool: self.dispatcher.pool.clone(),
            inline_limit: switchyard_client::INLINE_LIMIT,
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
        let _ = self.sweeper_handle.await;
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
    }
}

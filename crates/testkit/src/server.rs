//! One nats-server handle for tests and the lab: a server of the caller's own on a free
//! loopback port, with JetStream storage in a folder of its own, killed when dropped and
//! restartable (same port, same store) to play a crash. Three ways to start it: plain
//! ([`NatsServer::start`], store and log in a given folder: chaos keeps them), with a config
//! file's extra blocks ([`NatsServer::with_config`]: authentication, permissions) or with
//! extra command-line flags ([`NatsServer::with_args`]).

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::ports::{free_port, wait_for_port};

/// A running nats-server.
pub struct NatsServer {
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    pub port: u16,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// Starts `nats-server -js` with its store in `<dir>/nats` and its log in
    /// `<dir>/logs/nats-server.log`, and waits until it listens.
    ///
    /// # Errors
    /// When `nats-server` is missing or does not start.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut args = flags(port, &dir.join("nats"));
        args.extend(["-l".into(), dir.join("logs").join("nats-server.log").into()]);
        Self::launch(port, args, Vec::new(), None).await
    }

    /// Starts `nats-server -c <config>` where the config is `listen` and `jetstream` plus
    /// `extra` (e.g. an `authorization` block), with `env` in its environment (nats-server
    /// resolves `$VAR` in its config from it).
    ///
    /// # Panics
    /// When nats-server is missing or does not listen within 20 s.
    pub async fn with_config(extra: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let port = free_port().expect("a free port");
        let conf = format!(
            "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n{extra}\n",
            dir.path().join("js").display()
        );
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, conf).expect("write nats config");
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::launch(port, vec!["-c".into(), path.into()], env, Some(dir))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts `nats-server -js` with extra command-line `args` (e.g. `--auth TOKEN`).
    ///
    /// # Panics
    /// As [`NatsServer::with_config`].
    pub async fn with_args(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let port = free_port().expect("a free port");
        let mut all = flags(port, &dir.path().join("js"));
        all.extend(args.iter().map(OsString::from));
        Self::launch(port, all, Vec::new(), Some(dir))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    async fn launch(
        port: u16,
        args: Vec<OsString>,
        env: Vec<(String, String)>,
        dir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Self> {
        let mut server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            args,
            env,
            child: None,
            _dir: dir,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new("nats-server");
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .context("cannot run nats-server (install it: scripts/services.sh does)")?;
        self.child = Some(child);
        wait_for_port("nats-server", self.port, Duration::from_secs(20)).await
    }

    /// Kills the server (SIGKILL, as a crash would) and starts it again on the same port and
    /// store.
    ///
    /// # Errors
    /// When it does not come back.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.spawn().await
    }

    /// Kills the server (SIGKILL) and leaves it down: an outage of a chosen length, for
    /// tests; [`NatsServer::resume`] starts it again.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts a stopped server again on the same port and store, and waits for its port.
    ///
    /// # Errors
    /// When it does not come back.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        self.spawn().await
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `-a 127.0.0.1 -p PORT -js -sd STORE`.
fn flags(port: u16, store: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = ["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]
        .iter()
        .map(OsString::from)
        .collect();
    v.push(store.into());
    v
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

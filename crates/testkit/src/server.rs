//! A nats-server of a test's own, on a free port with its own config (authentication,
//! permissions) and store in a temporary folder; killed when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nats-server.
pub struct NatsServer {
    pub url: String,
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server -c <config>` where the config is `listen` and `jetstream` plus
    /// `extra` (e.g. an `authorization` block), with `env` in its environment (nats-server
    /// resolves `$VAR` in its config from it).
    ///
    /// # Panics
    /// When nats-server is missing or does not listen within 20 s.
    pub async fn with_config(extra: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let port = free_port();
        let conf = format!(
            "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n{extra}\n",
            dir.path().join("js").display()
        );
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, conf).expect("write nats config");
        let mut cmd = Command::new("nats-server");
        cmd.arg("-c").arg(&path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, port, dir).await
    }

    /// Starts `nats-server -js` with extra command-line `args` (e.g. `--auth TOKEN`).
    ///
    /// # Panics
    /// As [`NatsServer::with_config`].
    pub async fn with_args(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let port = free_port();
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path().join("js"))
            .args(args);
        Self::spawn(cmd, port, dir).await
    }

    async fn spawn(mut cmd: Command, port: u16, dir: tempfile::TempDir) -> Self {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run nats-server ({e}); install it with scripts/services.sh")
            });
        let server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            child,
            _dir: dir,
        };
        let started = Instant::now();
        for _ in 0..400 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return server;
            }
            if started.elapsed() > Duration::from_secs(20) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server did not listen on port {port} within 20 s");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

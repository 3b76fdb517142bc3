//! A 3-node NATS JetStream cluster on loopback, for the scale-out test. The nodes are
//! rendered from `deploy/nats-cluster/node.conf.tmpl`, the same template users start a local
//! cluster with, on free ports with data in a temporary folder; dropping the value kills them.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ports::free_port;

const TEMPLATE: &str = include_str!("../../../deploy/nats-cluster/node.conf.tmpl");

/// A running cluster.
pub struct NatsCluster {
    /// Client URL of each node.
    pub urls: Vec<String>,
    nodes: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` nodes and waits (at most 60 s) until JetStream accepts a replicated stream.
    ///
    /// # Panics
    /// When `nats-server` is missing or the cluster does not form, with instructions.
    pub async fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| {
                (
                    free_port().expect("free port"),
                    free_port().expect("free port"),
                )
            })
            .collect();
        let routes = ports
            .iter()
            .map(|(_, c)| format!("nats-route://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("n{i}"));
            let conf = TEMPLATE
                .replace("{{NAME}}", &format!("n{i}"))
                .replace("{{PORT}}", &port.to_string())
                .replace("{{CLUSTER_PORT}}", &cport.to_string())
                .replace("{{ROUTES}}", &routes)
                .replace("{{STORE}}", &store.display().to_string());
            let path = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&path, conf).expect("write node config");
            let child = Command::new("nats-server")
                .arg("-c")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run nats-server ({e}); install it with scripts/services.sh")
                });
            nodes.push(Some(child));
        }
        let urls: Vec<String> = ports
            .iter()
            .map(|(p, _)| format!("nats://127.0.0.1:{p}"))
            .collect();
        let cluster = Self {
            urls,
            nodes,
            _dir: dir,
        };
        cluster.wait_ready().await;
        cluster
    }

    async fn wait_ready(&self) {
        crate::poll(
            "the NATS cluster to form",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || self.try_replicated_stream(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    }

    async fn try_replicated_stream(&self) -> Result<(), String> {
        let servers: Vec<async_nats::ServerAddr> =
            self.urls.iter().filter_map(|u| u.parse().ok()).collect();
        let client = async_nats::connect(servers)
            .await
            .map_err(|e| e.to_string())?;
        let js = async_nats::jetstream::new(client);
        let config = async_nats::jetstream::stream::Config {
            name: "READY_PROBE".into(),
            subjects: vec!["ready.probe".into()],
            num_replicas: self.urls.len(),
            ..Default::default()
        };
        js.create_stream(config).await.map_err(|e| e.to_string())?;
        js.delete_stream("READY_PROBE")
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// All nodes, comma-separated, as `NATS_URL` takes them.
    pub fn url_list(&self) -> String {
        self.urls.join(",")
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes.get_mut(i).and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

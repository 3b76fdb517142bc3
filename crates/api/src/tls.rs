//! HTTPS by configuration (`[api] tls_cert`, `tls_key`): rustls with the ring provider, the
//! same stack as the rest of the fleet. Handshakes run in tasks of their own, so a slow or
//! silent client never holds up the others; a failed handshake is logged and dropped.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// Handshakes in progress at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// The acceptor of a PEM certificate chain and private key.
///
/// # Errors
/// A file that cannot be read or holds no certificate or key, or a key that does not match.
pub fn acceptor(cert_path: &str, key_path: &str) -> anyhow::Result<TlsAcceptor> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("api.tls_cert `{cert_path}`"))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("api.tls_cert `{cert_path}`"))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "api.tls_cert `{cert_path}` holds no certificate"
    );
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("api.tls_key `{key_path}`"))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("api.tls_cert and api.tls_key do not make a certificate")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A listener whose connections are TLS streams that finished their handshake.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` and shakes hands with `tls` until `shutdown`.
    pub fn new(listener: TcpListener, tls: TlsAcceptor, shutdown: CancellationToken) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        tokio::spawn(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
            loop {
                let accepted = tokio::select! {
                    () = shutdown.cancelled() => return,
                    a = listener.accept() => a,
                };
                let (tcp, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let handshake =
                        tokio::time::timeout(std::time::Duration::from_secs(10), tls.accept(tcp));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Self { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The acceptor stopped (shutdown): wait for the server's graceful end.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

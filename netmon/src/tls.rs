//! HTTPS for the API and `/metrics` (`--tls-cert`/`--tls-key`), and the CLI's side of it
//! (`--api-ca`): rustls with the ring provider, certificates and keys in PEM files.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use rustls::{ClientConfig, RootCertStore, ServerConfig, pki_types::ServerName};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates (the server's first, then its chain) in the PEM file `path`.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading the certificate file {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the certificate file {}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "the certificate file {} holds no certificate (PEM, BEGIN CERTIFICATE)",
            path.display()
        );
    }
    Ok(certs)
}

/// The server side: `cert` (PEM, the chain after the certificate) and its private `key`
/// (PEM: PKCS#8, PKCS#1 or SEC1). Errors name the file, or say the two do not match.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let certs = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "reading the private key file {} (PEM: PKCS#8, PKCS#1 or SEC1)",
            key.display()
        )
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the key does not go with the certificate {}, or is of a kind TLS cannot use",
                cert.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// A TCP listener whose connections come out TLS-handshaken, for `axum::serve`. Each
/// handshake runs in a task of its own (10 s at most), so a slow or silent client delays no
/// other; failed handshakes are logged and dropped.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(listener: tokio::net::TcpListener, config: Arc<ServerConfig>) -> Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            while !tx.is_closed() {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: wait rather than spin.
                        tracing::warn!("accepting an API connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer}: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer}: timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task has gone: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The client side: trusts the certificates in the PEM file `ca` (the daemon's own
/// certificate, or the authority that signed it).
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for c in certificates(ca)? {
        roots
            .add(c)
            .with_context(|| format!("a certificate of {} cannot be trusted", ca.display()))?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Sends `request` over TLS on `tcp` to `host` (a name or an IP address, as the certificate
/// names it) and returns everything the server sent back before closing.
pub fn exchange(
    config: Arc<ClientConfig>,
    host: &str,
    tcp: TcpStream,
    request: &[u8],
) -> Result<Vec<u8>> {
    let name = ServerName::try_from(host.to_string())
        .with_context(|| format!("`{host}` is not a name a certificate can carry"))?;
    let conn = rustls::ClientConnection::new(config, name).context("starting TLS")?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request).with_context(|| {
        format!(
            "TLS with {host} (does its certificate name it, and, if self-signed, say \
                 CA:FALSE?)"
        )
    })?;
    let mut resp = Vec::new();
    match tls.read_to_end(&mut resp) {
        Ok(_) => {}
        // A server that closes without close_notify after a whole response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !resp.is_empty() => {}
        Err(e) => return Err(e).with_context(|| format!("reading the TLS response from {host}")),
    }
    Ok(resp)
}

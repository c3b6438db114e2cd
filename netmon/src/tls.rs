//! HTTPS for the API and `/metrics` (`--tls-cert`/`--tls-key`), and the CLI's side of it
//! (`--api-ca`): rustls with the ring provider, certificates and keys in PEM files.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::ServerName,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
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

/// The certificate chain in `cert` (PEM, the chain after the certificate) with its private
/// `key` (PEM: PKCS#8, PKCS#1 or SEC1). Errors name the file, or say the two do not match.
fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let certs = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "reading the private key file {} (PEM: PKCS#8, PKCS#1 or SEC1)",
            key.display()
        )
    })?;
    CertifiedKey::from_der(certs, key, &provider()).with_context(|| {
        format!(
            "the key does not go with the certificate {}, or is of a kind TLS cannot use",
            cert.display()
        )
    })
}

/// What tells a file's new version from the one read: its inode (a renewal that renames a
/// new file into place, or swaps a symlink, as Kubernetes secrets do), size and time.
type Stamp = Option<(u64, u64, SystemTime)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}

/// The server's certificate and key (`--tls-cert`/`--tls-key`), read again when either file
/// changes, so a renewal (certbot, cert-manager) needs no restart: the listener checks every
/// `CertFiles::CHECK`, and new handshakes get the new pair. A pair that does not load (a key
/// not yet written beside its new certificate, a corrupt file) leaves the last good one in
/// service, and is tried again once either file changes again.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Both files' stamps when last read, whether the pair loaded or not.
    read: Mutex<[Stamp; 2]>,
}

impl CertFiles {
    /// How often the listener looks for new files.
    pub const CHECK: Duration = Duration::from_secs(5);

    /// Reads the pair; an error names the file or says the two do not match.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>> {
        let stamps = [stamp(cert), stamp(key)];
        let pair = certified_key(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(pair)),
            read: Mutex::new(stamps),
        }))
    }

    /// Reads the pair again if either file changed since it was last read: Ok(true) when
    /// the new pair is now served; an error when it does not load (the old one stays).
    pub fn reload_if_changed(&self) -> Result<bool> {
        let stamps = [stamp(&self.cert), stamp(&self.key)];
        {
            let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
            if *read == stamps {
                return Ok(false);
            }
            *read = stamps;
        }
        let pair = certified_key(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        Ok(true)
    }

    /// The certificate's and the key's paths.
    pub fn paths(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }

    /// The pair now served.
    pub fn served(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A server configuration that serves this pair, as it is at each handshake.
    fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(Arc::new(config))
    }

    fn reload_logged(&self) {
        match self.reload_if_changed() {
            Ok(true) => tracing::info!(
                "TLS certificate {} reloaded: new connections get it",
                self.cert.display()
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                "TLS certificate files changed but do not load, still serving the previous \
                 certificate: {e:#}"
            ),
        }
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.served())
    }
}

/// A TCP listener whose connections come out TLS-handshaken, for `axum::serve`. Each
/// handshake runs in a task of its own (10 s at most), so a slow or silent client delays no
/// other; failed handshakes are logged and dropped.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Serves `certs`, and checks every `CertFiles::CHECK` whether their files changed.
    pub fn new(listener: tokio::net::TcpListener, certs: Arc<CertFiles>) -> Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(certs.server_config()?);
        let mut check = tokio::time::interval(CertFiles::CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::spawn(async move {
            while !tx.is_closed() {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = check.tick() => {
                        // Reading two small files; rare, and only when they changed.
                        certs.reload_logged();
                        continue;
                    }
                };
                let (tcp, peer) = match accepted {
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
/// certificate, or the authority that signed it; for the email sink, the system's bundle by
/// default). Certificates in it that cannot be anchors are passed over; a file with none
/// that can is an error that names it.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certificates(ca)?);
    if added == 0 {
        bail!("no certificate in {} can be trusted", ca.display());
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The host part of `host:port` as a certificate names it: `[::1]:9743` -> `::1`.
pub fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// A TLS client session to `host` (a name or an IP address, as the certificate names it)
/// on `tcp`; the handshake happens on first use.
pub fn client_stream(
    config: Arc<ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let name = ServerName::try_from(host.to_string())
        .with_context(|| format!("`{host}` is not a name a certificate can carry"))?;
    let conn = rustls::ClientConnection::new(config, name).context("starting TLS")?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Sends `request` over TLS on `tcp` to `host` (a name or an IP address, as the certificate
/// names it) and returns everything the server sent back before closing.
pub fn exchange(
    config: Arc<ClientConfig>,
    host: &str,
    tcp: TcpStream,
    request: &[u8],
) -> Result<Vec<u8>> {
    let mut tls = client_stream(config, host, tcp)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Api;
    use crate::test_support::{TempDir, self_signed as make_pair};

    /// Puts `from` at `to` as a renewal does: a new file renamed into place.
    fn replace(from: &Path, to: &Path) {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }

    /// A blocking GET of `/` over HTTPS, trusting only the certificate at `ca`.
    fn status_trusting(addr: SocketAddr, ca: &Path) -> Result<u16> {
        let api = Api {
            addr: addr.to_string(),
            token: None,
            tls: Some(client_config(ca)?),
        };
        Ok(api.get("/")?.0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_renewed_certificate_is_served_without_a_restart_and_a_bad_one_is_not() {
        let dir = TempDir::new("tls");
        let (old_cert, old_key) = make_pair(&dir.0, "old");
        let (new_cert, new_key) = make_pair(&dir.0, "new");
        // The files the daemon is given, which the renewal replaces.
        let (cert, key) = (dir.0.join("served.crt"), dir.0.join("served.key"));
        replace(&old_cert, &cert);
        replace(&old_key, &key);
        let certs = CertFiles::load(&cert, &key).unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let tls = TlsListener::new(listener, certs.clone()).unwrap();
        tokio::spawn(async move { axum::serve(tls, app).await });

        let get = |ca: PathBuf| tokio::task::spawn_blocking(move || status_trusting(addr, &ca));
        assert_eq!(get(old_cert.clone()).await.unwrap().unwrap(), 200);
        assert!(
            get(new_cert.clone()).await.unwrap().is_err(),
            "a client that trusts only the new certificate must not get through yet"
        );

        // The renewal: the key first, then its certificate. The listener sees the change
        // within CertFiles::CHECK; in between (a key without its certificate) the old pair
        // stays.
        replace(&new_key, &key);
        replace(&new_cert, &cert);
        let deadline = std::time::Instant::now() + CertFiles::CHECK * 3;
        while get(new_cert.clone()).await.unwrap().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the renewed certificate was not served within {:?}",
                CertFiles::CHECK * 3
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            get(old_cert.clone()).await.unwrap().is_err(),
            "the old certificate must no longer be served"
        );

        // A certificate replaced by something that is not one: an error that names the file,
        // and the last good pair stays. (`watcher` is checked by hand; the served `certs` is
        // also checked by its listener, which may try the bad file first.)
        let watcher = CertFiles::load(&cert, &key).unwrap();
        std::fs::write(dir.0.join("bad.crt"), "not a certificate\n").unwrap();
        replace(&dir.0.join("bad.crt"), &cert);
        let err = format!("{:#}", watcher.reload_if_changed().unwrap_err());
        assert!(err.contains("served.crt"), "{err}");
        // Unchanged since that attempt: nothing to read again.
        assert!(!watcher.reload_if_changed().unwrap());
        assert_eq!(watcher.served().cert, certificates(&new_cert).unwrap());
        let _ = certs.reload_if_changed();
        assert_eq!(get(new_cert.clone()).await.unwrap().unwrap(), 200);
    }
}

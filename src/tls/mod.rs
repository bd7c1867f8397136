//! TLS for the client and peer ports: rustls on ring, etcd's flags. Certificates are
//! read from PEM files and re-read when the files change (checked at most once a
//! second, at a handshake), so rotated certificates take effect without a restart.
pub mod dev;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {what}")]
    File { path: PathBuf, what: String },
    #[error("TLS: {0}")]
    Config(String),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_path_buf(), what: e.to_string() }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The certificates of a CA file, as a root store.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| file_error(path, e))?;
    }
    Ok(Arc::new(roots))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A certificate chain and its key on disk, served to peers and clients as it is now.
#[derive(Debug)]
pub struct KeyPairFiles {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl KeyPairFiles {
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let stamps = (modified(cert), modified(key));
        let loaded = Loaded { key: Self::read(cert, key)?, stamps, checked: Instant::now() };
        Ok(Arc::new(KeyPairFiles { cert: cert.into(), key: key.into(), state: Mutex::new(loaded) }))
    }

    fn read(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
        let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
        let signer = provider::sign::any_supported_type(&der).map_err(|e| file_error(key, e))?;
        let ck = CertifiedKey::new(load_certs(cert)?, signer);
        ck.keys_match().map_err(|e| file_error(cert, format!("does not match the key {}: {e}", key.display())))?;
        Ok(Arc::new(ck))
    }

    /// The pair as it is on disk now; a pair that fails to load keeps the last good one.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.checked.elapsed() >= Duration::from_secs(1) {
            st.checked = Instant::now();
            let stamps = (modified(&self.cert), modified(&self.key));
            if stamps != st.stamps {
                match Self::read(&self.cert, &self.key) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert.display(), "reloaded the certificate");
                        (st.key, st.stamps) = (key, stamps);
                    }
                    Err(e) => tracing::warn!("keeping the previous certificate: {e}"),
                }
            }
        }
        st.key.clone()
    }
}

impl ResolvesServerCert for KeyPairFiles {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for KeyPairFiles {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A TLS configuration rebuilt from its files when any of them changes (checked at
/// most once a second, when a connection is made): a rotated CA takes effect without a
/// restart, as rotated certificates do. A rebuild that fails keeps the last good one.
pub struct Reloading<T> {
    files: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<Arc<T>, TlsError> + Send + Sync>,
    state: Mutex<(Vec<Option<SystemTime>>, Arc<T>, Instant)>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// A configuration that watches no file.
    pub fn fixed(cfg: Arc<T>) -> Arc<Self> {
        let keep = cfg.clone();
        let build = Box::new(move || Ok(keep.clone()));
        Arc::new(Reloading { files: Vec::new(), build, state: Mutex::new((Vec::new(), cfg, Instant::now())) })
    }

    fn new(
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<Arc<T>, TlsError> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, TlsError> {
        let stamps = files.iter().map(|f| modified(f)).collect();
        let current = build()?;
        Ok(Arc::new(Reloading { files, build: Box::new(build), state: Mutex::new((stamps, current, Instant::now())) }))
    }

    /// The configuration as the files are now.
    pub fn current(&self) -> Arc<T> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.2.elapsed() >= Duration::from_secs(1) {
            st.2 = Instant::now();
            let stamps: Vec<_> = self.files.iter().map(|f| modified(f)).collect();
            if stamps != st.0 {
                match (self.build)() {
                    Ok(cfg) => {
                        tracing::info!(files = ?self.files, "reloaded the TLS configuration");
                        (st.0, st.1) = (stamps, cfg);
                    }
                    Err(e) => tracing::warn!("keeping the previous TLS configuration: {e}"),
                }
            }
        }
        st.1.clone()
    }
}

/// `server_config`, rebuilt when the CA file changes (the pair reloads by itself).
pub fn reloading_server_config(files: &TlsFiles) -> Result<Arc<Reloading<ServerConfig>>, TlsError> {
    let f = files.clone();
    Reloading::new(files.trusted_ca.iter().cloned().collect(), move || server_config(&f))
}

/// `client_config`, rebuilt when the CA file changes.
pub fn reloading_client_config(
    ca: &Path,
    pair: Option<(&Path, &Path)>,
) -> Result<Arc<Reloading<ClientConfig>>, TlsError> {
    let (ca_path, pair) = (ca.to_path_buf(), pair.map(|(c, k)| (c.to_path_buf(), k.to_path_buf())));
    Reloading::new(vec![ca_path.clone()], move || {
        client_config(&ca_path, pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path())))
    })
}

/// One side's TLS files, as etcd's flags name them (`--cert-file --key-file
/// --trusted-ca-file --client-cert-auth`, and the `--peer-` ones).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Verifies the other side's certificates (clients connecting, servers connected to).
    pub trusted_ca: Option<PathBuf>,
    /// Connecting clients must present a certificate signed by `trusted_ca`.
    pub client_cert_auth: bool,
}

fn alpn_h2() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec()]
}

/// A server's TLS set-up: its own pair (reloaded), and the clients it accepts.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let pair = KeyPairFiles::load(&files.cert, &files.key)?;
    let provider = Arc::new(provider::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (&files.trusted_ca, files.client_cert_auth) {
        // With a trusted CA, client certificates are verified: required with client
        // certificate auth, else asked for (admin calls need one).
        (Some(ca), required) => {
            let mut verifier = WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider);
            if !required {
                verifier = verifier.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(verifier.build().map_err(|e| file_error(ca, e))?)
        }
        (None, true) => return Err(TlsError::Config("client certificate auth needs a trusted CA file".into())),
        (None, false) => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(pair);
    cfg.alpn_protocols = alpn_h2();
    Ok(Arc::new(cfg))
}

/// A client's TLS set-up: the CA that signs the servers, and its own pair if any.
pub fn client_config(ca: &Path, pair: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(ca)?;
    let builder = ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut cfg = match pair {
        Some((cert, key)) => builder.with_client_cert_resolver(KeyPairFiles::load(cert, key)?),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn_h2();
    Ok(Arc::new(cfg))
}

/// Accepted TLS connections: handshakes run in tasks of their own (bounded in time), so
/// a slow or failing client never holds up the others; failures are logged, not fatal.
pub fn incoming(
    listener: TcpListener,
    cfg: Arc<Reloading<ServerConfig>>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, from) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (TlsAcceptor::from(cfg.current()), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(%from, "TLS handshake refused: {e}"),
                    Err(_) => tracing::warn!(%from, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A lazily connected channel to `addr` (HOST:PORT) over TLS; the server's certificate
/// must name HOST.
pub fn channel(endpoint: Endpoint, addr: &str, cfg: Arc<ClientConfig>) -> Result<Channel, TlsError> {
    reloading_channel(endpoint, addr, Reloading::fixed(cfg))
}

/// `channel`, with the configuration as it is at each (re)connection.
pub fn reloading_channel(
    endpoint: Endpoint,
    addr: &str,
    cfg: Arc<Reloading<ClientConfig>>,
) -> Result<Channel, TlsError> {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let name = ServerName::try_from(host.clone()).map_err(|e| TlsError::Config(format!("{addr}: {e}")))?;
    let addr = addr.to_string();
    Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
        let (connector, name, addr) = (TlsConnector::from(cfg.current()), name.clone(), addr.clone());
        async move {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    })))
}

/// The DNS names a peer's certificate (DER) is issued for.
pub fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(der) {
        Ok(cert) => cert.valid_dns_names().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
        let d = tempfile::tempdir().unwrap();
        let pki = dev::DevPki::create(d.path(), "test CA").unwrap();
        let (cert, key) = pki.issue("n1", &["127.0.0.1"]).unwrap();
        let pair = KeyPairFiles::load(&cert, &key).unwrap();
        let first = pair.current().cert.clone();
        assert_eq!(dns_names(&first[0]), vec!["n1".to_string()]);
        // Rotated on disk (a new key and certificate for the same name).
        std::thread::sleep(Duration::from_millis(1100));
        pki.issue("n1", &["127.0.0.1"]).unwrap();
        let mut rotated = pair.current().cert.clone();
        for _ in 0..30 {
            if rotated != first {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            rotated = pair.current().cert.clone();
        }
        assert_ne!(rotated, first, "the new certificate is served");
        // A damaged file keeps the last good pair.
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(&cert, "not a certificate").unwrap();
        assert_eq!(pair.current().cert, rotated);
        // A rotated CA file rebuilds the configuration that uses it.
        let files =
            TlsFiles { cert: cert.clone(), key: key.clone(), trusted_ca: Some(pki.ca()), client_cert_auth: true };
        pki.issue("n1", &["127.0.0.1"]).unwrap();
        let server = reloading_server_config(&files).unwrap();
        let first = server.current();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(Arc::ptr_eq(&first, &server.current()), "unchanged files: the same configuration");
        let other = tempfile::tempdir().unwrap();
        let ca2 = dev::DevPki::create(other.path(), "another CA").unwrap().ca();
        std::fs::copy(&ca2, pki.ca()).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(!Arc::ptr_eq(&first, &server.current()), "a new CA: a new configuration");
        std::fs::write(pki.ca(), "not a CA").unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let kept = server.current();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(Arc::ptr_eq(&kept, &server.current()), "a broken CA keeps the last good configuration");
        pki.issue("n1", &["127.0.0.1"]).unwrap();
        std::fs::write(&cert, "not a certificate").unwrap();
        // And a damaged pair is refused at start.
        assert!(KeyPairFiles::load(&cert, &key).is_err());
        assert!(client_config(&cert, None).is_err());
    }
}

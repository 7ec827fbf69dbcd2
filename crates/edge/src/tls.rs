//! TLS with rustls (ring only): the server side with a certificate that is reloaded when its
//! files change, and the client side towards backends.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::watch::WatchError;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::stream::Stream;

/// The one crypto provider (two compiled in would make rustls panic at run time).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.2 and 1.3: nothing older is offered or accepted.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Why a certificate, a key or a CA file cannot be used; the text names the file and the
/// problem.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{what} {}: cannot read: {source}", .path.display())]
    Read {
        /// Which file: "TLS certificate", "TLS key", "backend TLS CA file".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A file was read, but its content cannot be used.
    #[error("{what} {}: {problem}", .path.display())]
    Unusable {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The key is not the certificate's.
    #[error("TLS key {} does not belong to certificate {}: {source}", .key.display(), .cert.display())]
    Mismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// Cause.
        source: rustls::Error,
    },
    /// rustls refused the settings.
    #[error("TLS: {0}")]
    Config(#[source] rustls::Error),
    /// `server_name` is neither a DNS name nor an address.
    #[error("backend TLS server_name {name:?}: {problem}")]
    ServerName {
        /// The name given.
        name: String,
        /// Why it is not one.
        problem: String,
    },
    /// The files' directories cannot be watched.
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// The watch thread did not start.
    #[error("cannot start the TLS watch thread: {0}")]
    Thread(#[source] io::Error),
}

const CERT: &str = "TLS certificate";
const KEY: &str = "TLS key";
const CA: &str = "backend TLS CA file";

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn unusable(what: &'static str, path: &Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError::Unusable {
        what,
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// A certificate chain and its key, as loaded from PEM files.
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' bytes, to tell a real change from an unrelated event in the directory.
    raw: (Vec<u8>, Vec<u8>),
    /// The leaf certificate's notAfter (Unix seconds).
    not_after: i64,
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Loaded, TlsError> {
    let cert_pem = read(CERT, cert)?;
    let key_pem = read(KEY, key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(CERT, cert, format!("not PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(unusable(
            CERT,
            cert,
            "no CERTIFICATE block; give the PEM certificate chain, leaf first",
        ));
    };
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| unusable(CERT, cert, format!("not X.509: {e}")))?
        .1
        .validity()
        .not_after
        .timestamp();
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        unusable(
            KEY,
            key,
            format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| unusable(KEY, key, format!("unusable: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|source| TlsError::Mismatch {
            key: key.to_path_buf(),
            cert: cert.to_path_buf(),
            source,
        })?;
    Ok(Loaded {
        key: Arc::new(certified),
        raw: (cert_pem, key_pem),
        not_after,
    })
}

/// The certificate every handshake gets: the last pair that loaded.
#[derive(Debug)]
struct Current(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The server side: an acceptor whose certificate can be replaced while it serves.
pub struct ServerTls {
    config: Arc<ServerConfig>,
    current: Arc<Current>,
    raw: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    handshake_timeout: Duration,
    metrics: TlsMetrics,
}

struct TlsMetrics {
    reload_ok: Counter,
    reload_error: Counter,
    last_reload_ok: Gauge,
    expiry: Gauge,
    handshake_failed: Counter,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads `cert` (PEM chain, leaf first) and `key` (PEM); the error names the file and the
    /// problem.
    pub fn load(cert: &Path, key: &Path, handshake_timeout: Duration) -> Result<Self, TlsError> {
        let provider = provider();
        let loaded = load_pair(cert, key, &provider)?;
        let current = Arc::new(Current(ArcSwap::new(loaded.key)));
        let config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        let metrics = TlsMetrics {
            reload_ok: metrics::counter!("attitude_tls_certificate_reload_total", "result" => "ok"),
            reload_error: metrics::counter!("attitude_tls_certificate_reload_total", "result" => "error"),
            last_reload_ok: metrics::gauge!("attitude_tls_certificate_last_reload_successful"),
            expiry: metrics::gauge!("attitude_tls_certificate_expiry_timestamp_seconds"),
            handshake_failed: metrics::counter!("attitude_tls_handshake_failures_total"),
        };
        metrics.expiry.set(loaded.not_after as f64);
        metrics.last_reload_ok.set(1.0);
        Ok(Self {
            config: Arc::new(config),
            current,
            raw: std::sync::Mutex::new(loaded.raw),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            handshake_timeout,
            metrics,
        })
    }

    /// Loads the files again. `Ok(true)`: a new pair is in use for new handshakes; `Ok(false)`:
    /// the files did not change; `Err`: they do not load, and the old pair stays. Logged and
    /// counted either way (`attitude_tls_certificate_reload_total{result}`).
    pub fn reload(&self) -> Result<bool, TlsError> {
        match load_pair(&self.cert, &self.key, &self.provider) {
            Ok(loaded) => {
                let mut raw = self.raw.lock().expect("tls raw lock");
                self.metrics.last_reload_ok.set(1.0);
                if *raw == loaded.raw {
                    return Ok(false);
                }
                *raw = loaded.raw;
                self.current.0.store(loaded.key);
                self.metrics.expiry.set(loaded.not_after as f64);
                self.metrics.reload_ok.increment(1);
                tracing::info!(cert = %self.cert.display(), not_after = loaded.not_after, "TLS certificate reloaded");
                Ok(true)
            }
            Err(error) => {
                self.metrics.reload_error.increment(1);
                self.metrics.last_reload_ok.set(0.0);
                tracing::warn!(%error, "TLS certificate reload failed; keeping the previous certificate");
                Err(error)
            }
        }
    }

    /// Reloads whenever something changes in the directories of the certificate and the key
    /// (Kubernetes replaces a mounted Secret by swapping a symlink, so the files themselves
    /// are not what changes). Events are gathered for `settle` before one reload. The watch
    /// runs on a thread of its own for the life of the process.
    pub fn watch(self: &Arc<Self>, settle: Duration) -> Result<(), TlsError> {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let watcher =
            crate::watch::directories_of(&[&self.cert, &self.key], "TLS certificate", move || {
                let _ = tx.send(());
            })?;
        let this = self.clone();
        std::thread::Builder::new()
            .name("attitude-tls-watch".into())
            .spawn(move || {
                let _watcher = watcher;
                while rx.recv().is_ok() {
                    // Let a burst of events (a Secret update is several) settle first.
                    while rx.recv_timeout(settle).is_ok() {}
                    let _ = this.reload();
                }
            })
            .map_err(TlsError::Thread)?;
        Ok(())
    }

    /// The TLS handshake as the server, within the handshake timeout.
    pub async fn accept<IO>(&self, io: IO) -> io::Result<Stream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        let result = tokio::time::timeout(self.handshake_timeout, acceptor.accept(io)).await;
        match result {
            Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)))),
            Ok(Err(e)) => {
                self.metrics.handshake_failed.increment(1);
                Err(e)
            }
            Err(_) => {
                self.metrics.handshake_failed.increment(1);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                ))
            }
        }
    }
}

/// How to verify a backend's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// Against the CA certificates in this PEM file.
    CaFile(PathBuf),
    /// Not at all (lab use only: anyone on the path can read the mail).
    InsecureSkipVerify,
}

/// The client side, towards backends.
#[derive(Clone)]
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// A client that verifies as told; `server_name` is the name the backends' certificates
    /// carry (`None`: each backend's IP address).
    pub fn new(verify: &Verify, server_name: Option<&str>) -> Result<Self, TlsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(TlsError::Config)?;
        let config = match verify {
            Verify::CaFile(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let pem = read(CA, path)?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| unusable(CA, path, format!("not PEM: {e}")))?;
                    roots.add(cert).map_err(|e| unusable(CA, path, e))?;
                }
                if roots.is_empty() {
                    return Err(unusable(CA, path, "no CA certificate in it"));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Verify::InsecureSkipVerify => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth(),
        };
        let server_name = server_name
            .map(|name| {
                ServerName::try_from(name.to_owned()).map_err(|e| TlsError::ServerName {
                    name: name.to_owned(),
                    problem: e.to_string(),
                })
            })
            .transpose()?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The TLS handshake as the client, to the backend at `addr`.
    pub async fn connect<IO>(&self, io: IO, addr: std::net::IpAddr) -> io::Result<Stream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.into()));
        let tls = self.connector.connect(name, io).await?;
        Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
    }
}

/// `insecure_skip_verify`: any certificate is taken (the handshake's signatures are still
/// checked, so the session is encrypted, but with whom is unknown).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["attitude.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("attitude-edge-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn load_errors_name_the_file_and_the_problem() {
        let dir = scratch("load");
        let (cert, key) = pair(&dir, "a");
        let (_, other_key) = pair(&dir, "b");
        let limit = Duration::from_secs(1);
        assert!(ServerTls::load(&cert, &key, limit).is_ok());
        let err = ServerTls::load(&cert, &other_key, limit)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not belong to certificate"), "{err}");
        let err = ServerTls::load(&key, &key, limit).unwrap_err().to_string();
        assert!(err.contains("no CERTIFICATE block"), "{err}");
        let err = ServerTls::load(&cert, &cert, limit)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no PEM private key"), "{err}");
        let err = ServerTls::load(&dir.join("missing.crt"), &key, limit)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.crt: cannot read"), "{err}");
    }

    #[test]
    fn a_reload_keeps_the_old_pair_when_the_new_one_is_broken() {
        let dir = scratch("reload");
        let (cert, key) = pair(&dir, "a");
        let tls = ServerTls::load(&cert, &key, Duration::from_secs(1)).unwrap();
        let first = tls.current.0.load_full();
        assert!(
            matches!(tls.reload(), Ok(false)),
            "unchanged files are not a reload"
        );
        std::fs::write(&key, "garbage").unwrap();
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&first, &tls.current.0.load_full()));
        let (cert2, key2) = pair(&dir, "b");
        std::fs::rename(cert2, &cert).unwrap();
        std::fs::rename(key2, &key).unwrap();
        assert!(matches!(tls.reload(), Ok(true)));
        assert!(!Arc::ptr_eq(&first, &tls.current.0.load_full()));
    }
}

//! The TLS server configuration of `mqtts` and `wss`: built from the certificate, key and
//! CA files, and rebuilt when they change (their modification time, size or inode, looked
//! at every `tls_reload_interval_ms`) or on SIGHUP. A reload that fails keeps the previous
//! configuration: a certificate renewal half written must not take the listeners down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::chain::CaCert;
use crate::config::{ClientCertMode, Config};
use crate::error::BrokerError;

/// The files a configuration is built from.
#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    /// None without client certificates.
    client_ca: Option<PathBuf>,
    mode: ClientCertMode,
}

impl Files {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    /// What identifies each file's current content without reading it.
    fn stamps(&self) -> Vec<Option<Stamp>> {
        self.paths().map(Stamp::of).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        })
    }
}

/// The current TLS configuration of the node's TLS listeners.
pub struct TlsContext {
    current: RwLock<Arc<ServerConfig>>,
    /// The certificates of `tls_client_ca_file` in force, for naming a client
    /// certificate's signer and chain (see `chain.rs`); empty without client certificates.
    client_cas: RwLock<Arc<[CaCert]>>,
    files: Files,
    /// The files as last loaded (or tried).
    stamps: Mutex<Vec<Option<Stamp>>>,
    /// SIGHUP's stream, installed when the files are first loaded: before the node says it
    /// listens, a SIGHUP must already reload rather than kill it (the default action).
    hangup: Mutex<Option<tokio::signal::unix::Signal>>,
}

impl TlsContext {
    /// Loads the files named by `config`; an error names the file and what is wrong.
    pub fn load(config: &Config) -> Result<Arc<TlsContext>, BrokerError> {
        let files = Files {
            cert: config.tls_cert_file.clone(),
            key: config.tls_key_file.clone(),
            client_ca: (config.tls_client_cert != ClientCertMode::None)
                .then(|| config.tls_client_ca_file.clone()),
            mode: config.tls_client_cert,
        };
        let stamps = files.stamps();
        let (built, client_cas) = build(&files).map_err(BrokerError::Tls)?;
        use tokio::signal::unix::{signal, SignalKind};
        let hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; TLS certificates reload on file changes only");
                None
            }
        };
        Ok(Arc::new(TlsContext {
            current: RwLock::new(built),
            client_cas: RwLock::new(client_cas),
            files,
            stamps: Mutex::new(stamps),
            hangup: Mutex::new(hangup),
        }))
    }

    /// An acceptor with the configuration in force now (a handshake keeps the one it
    /// started with).
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(current.clone())
    }

    /// The CA file's certificates in force (a handshake that began before a reload
    /// finds the new ones: a signer missing from them is named as unknown).
    pub fn client_cas(&self) -> Arc<[CaCert]> {
        self.client_cas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Rebuilds the configuration from the files; Err(why) keeps the one in force.
    pub fn reload(&self) -> Result<(), String> {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = self.files.stamps();
        let (built, client_cas) = build(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = built;
        *self.client_cas.write().unwrap_or_else(|e| e.into_inner()) = client_cas;
        Ok(())
    }

    /// Whether a file changed since it was last loaded.
    fn changed(&self) -> bool {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) != self.files.stamps()
    }

    fn reload_and_report(&self, why: &'static str) {
        match self.reload() {
            Ok(()) => {
                crate::metrics::tls_reload("ok");
                tracing::info!(trigger = why, "TLS certificates reloaded");
            }
            Err(e) => {
                crate::metrics::tls_reload("failed");
                tracing::error!(trigger = why, error = %e, "TLS certificates not reloaded; the previous ones stay in force");
            }
        }
    }

    /// Watches the files every `interval` and reloads on a change or on SIGHUP, until
    /// `shutdown`.
    pub fn spawn_watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut hangup = self.hangup.lock().unwrap_or_else(|e| e.into_inner()).take();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let hangup_recv = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = hangup_recv => self.reload_and_report("SIGHUP"),
                    _ = tick.tick() => {
                        if self.changed() {
                            self.reload_and_report("file changed");
                        }
                    }
                }
            }
        });
    }
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what} {shown}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// TLS 1.3 and 1.2 with the ring provider; client certificates as `files.mode` says. Also
/// returns the CA file's certificates (empty without client certificates).
fn build(files: &Files) -> Result<(Arc<ServerConfig>, Arc<[CaCert]>), String> {
    // ring rather than aws-lc-rs (a C build adding most of a minute to clean builds);
    // rustls deprecated ring's provider only for its lack of post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(ring::default_provider());
    let certs = read_certs(&files.cert, "tls_cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("tls_key_file {}: {e}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let mut client_cas = Vec::new();
    let builder = match (&files.client_ca, files.mode) {
        (Some(ca), ClientCertMode::Optional | ClientCertMode::Required) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca, "tls_client_ca_file")? {
                client_cas.extend(CaCert::of(&cert));
                roots
                    .add(cert)
                    .map_err(|e| format!("tls_client_ca_file {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.mode == ClientCertMode::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("tls_client_ca_file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "tls_cert_file {} with tls_key_file {}: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    Ok((Arc::new(config), client_cas.into()))
}

//! TLS for the gateway and the admin API (rustls), from PEM files the operator
//! names. The files are read again when they change, so a renewed certificate takes
//! effect without a restart; a new pair that does not load is reported and the one
//! in use stays.

use anyhow::{Context as _, Result, bail};
use parking_lot::RwLock;
use rustls::crypto::ring::{default_provider, sign::any_supported_type};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_rustls::TlsAcceptor;

/// How often the files are checked for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A certificate chain and key, and where they came from.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    loaded: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Read a PEM certificate chain and private key.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let cert_pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", cert.display());
    }
    let key_pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("{} holds no PEM private key", key.display()))?;
    let signing = any_supported_type(&key_der)
        .with_context(|| format!("{}: unsupported private key", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .with_context(|| format!("{} does not belong to {}", key.display(), cert.display()))?;
    Ok(certified)
}

impl CertFiles {
    /// Load `cert` and `key` now (an error is the operator's to fix before start).
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<Self>> {
        let current = load(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(current)),
            loaded: RwLock::new((modified(cert), modified(key))),
        }))
    }

    /// Load the files again if either changed since the last load.
    pub fn reload_if_changed(&self) {
        let stamps = (modified(&self.cert), modified(&self.key));
        if *self.loaded.read() == stamps {
            return;
        }
        match load(&self.cert, &self.key) {
            Ok(next) => {
                *self.current.write() = Arc::new(next);
                *self.loaded.write() = stamps;
                tracing::info!(cert = %self.cert.display(), "reloaded the TLS certificate");
            }
            Err(error) => {
                // Half-written files load on a later check; a broken pair is reported
                // once per change and the certificate in use stays.
                *self.loaded.write() = stamps;
                tracing::error!(error = %format!("{error:#}"), "the new TLS certificate does not load; keeping the old one");
            }
        }
    }

    /// A TLS acceptor serving whatever pair is current, and a task that reloads it.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor> {
        self.acceptor_verifying(None)
    }

    /// [`CertFiles::acceptor`] for a cluster's peer port: only clients with a
    /// certificate signed by the CA in `ca_file` (PEM) complete the handshake.
    pub fn acceptor_for_peers(self: &Arc<Self>, ca_file: &Path) -> Result<TlsAcceptor> {
        let roots = crate::trust::roots(ca_file)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(default_provider()),
        )
        .build()
        .context("the cluster CA")?;
        self.acceptor_verifying(Some(verifier))
    }

    fn acceptor_verifying(
        self: &Arc<Self>,
        clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Result<TlsAcceptor> {
        let builder = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let mut config = match clients {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        }
        .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let files = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_CHECK).await;
                let Some(files) = files.upgrade() else {
                    return;
                };
                tokio::task::spawn_blocking(move || files.reload_if_changed())
                    .await
                    .ok();
            }
        });
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

//! The HTTPS listeners' certificate, swappable while the proxy runs.
//!
//! Pingora 0.9.1 builds each TLS listener's rustls `ServerConfig` once, when the listener
//! starts, and `TlsSettings::intermediate(cert, key)` reads the PEM files only then (and
//! panics on a bad file). What it does offer is `TlsSettings::set_cert_resolver`: rustls
//! then asks a `ResolvesServerCert` for the certificate on every handshake. [`CertStore`] is
//! that resolver, with the certificate in an `ArcSwap`: a reload loads and checks the new
//! files off the request path and swaps them in; handshakes from then on get the new
//! certificate, connections already established keep theirs, and the listening sockets are
//! never touched.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{load_certs_and_key_files, ClientHello, CryptoProvider, ResolvesServerCert};

/// The certificate chain and key every TLS listener presents.
pub(crate) struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    /// Serves `key` (from [`load_certified_key`]) until it is replaced.
    pub(crate) fn new(key: CertifiedKey) -> Arc<CertStore> {
        Arc::new(CertStore {
            current: ArcSwap::from_pointee(key),
        })
    }

    /// Serves `key` on every handshake from now on.
    pub(crate) fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }

    /// Settings for one TLS listener: this store as the certificate source, and HTTP/2
    /// preferred over HTTP/1.1 by ALPN.
    pub(crate) fn listener_settings(self: &Arc<Self>) -> pingora::Result<TlsSettings> {
        // The paths are never read: with a resolver set, `build()` ignores them.
        let mut settings = TlsSettings::intermediate("", "")?;
        settings.set_cert_resolver(self.clone());
        settings.enable_h2();
        Ok(settings)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").finish_non_exhaustive()
    }
}

/// Reads the PEM chain and key and checks that the key belongs to the first certificate,
/// so that a wrong pair is refused by `check` and by a reload instead of failing every
/// handshake later.
pub(crate) fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let cert = utf8_path(cert)?;
    let key = utf8_path(key)?;
    let (chain, private_key) = load_certs_and_key_files(cert, key)
        .map_err(|e| format!("cannot load certificate {cert} / key {key}: {e}"))?
        .ok_or_else(|| format!("no certificate in {cert} or no private key in {key}"))?;
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| "no TLS crypto provider is installed".to_owned())?;
    CertifiedKey::from_der(chain, private_key, provider)
        .map_err(|e| format!("private key {key} does not fit certificate {cert}: {e}"))
}

fn utf8_path(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{}: not a UTF-8 path", path.display()))
}

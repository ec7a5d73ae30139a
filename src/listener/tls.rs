//! HTTPS for the tenant listener: rustls with the certificate of `server.tls`.
//!
//! Every handshake asks [`ServerTls`] for the certificate in force, so a
//! reload (SIGHUP, or either file changing) swaps it for new connections
//! while connections already open keep the one they were made with. A pair
//! that cannot be served (unreadable, unparsable, key not matching the leaf)
//! is refused and the old one kept; the error names the file and never
//! quotes the key file's contents.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// Which file of a pair a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairProblem {
    /// `server.tls.cert_file`.
    Certificate,
    /// `server.tls.key_file` (including a key that does not match the leaf).
    Key,
}

/// Why a certificate and key cannot be served.
#[derive(Debug, Clone)]
pub struct PairError {
    /// The file at fault.
    pub problem: PairProblem,
    /// What is wrong, naming the file (never its contents).
    pub reason: String,
}

impl PairError {
    fn certificate(reason: String) -> Self {
        Self {
            problem: PairProblem::Certificate,
            reason,
        }
    }

    fn key(reason: String) -> Self {
        Self {
            problem: PairProblem::Key,
            reason,
        }
    }
}

impl fmt::Display for PairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for PairError {}

/// The crypto provider, named explicitly (as for the upstream client) so
/// two providers in the dependency tree never make rustls pick at run time.
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Reads, parses and matches a certificate chain and its private key.
pub fn read_pair(files: &TlsFiles) -> Result<CertifiedKey, PairError> {
    let cert_path = files.cert_file.display();
    let key_path = files.key_file.display();
    let cert_pem = std::fs::read(&files.cert_file)
        .map_err(|e| PairError::certificate(format!("cannot read {cert_path}: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            PairError::certificate(format!("{cert_path}: not a PEM certificate chain ({e})"))
        })?;
    if chain.is_empty() {
        return Err(PairError::certificate(format!(
            "{cert_path}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks, leaf first)"
        )));
    }
    let key_pem = std::fs::read(&files.key_file)
        .map_err(|e| PairError::key(format!("cannot read {key_path}: {e}")))?;
    // The parser's own error could quote a line of the file: say what was
    // expected instead, so no part of a key ever reaches a log.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        PairError::key(format!(
            "{key_path}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)"
        ))
    })?;
    drop(key_pem);
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| PairError::key(format!("{key_path}: unusable private key ({e})")))?;
    let pair = CertifiedKey::new(chain, signing_key);
    match pair.keys_match() {
        // Unknown: the key cannot tell its public half; the handshake will.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(pair)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(PairError::key(format!(
                "{key_path}: the private key does not match the certificate in {cert_path}"
            )))
        }
        Err(e) => Err(PairError::certificate(format!(
            "{cert_path}: the first certificate cannot be read ({e})"
        ))),
    }
}

/// The certificate in force, handed to every new handshake.
struct Current(ArcSwap<CertifiedKey>);

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key, whatever its own Debug prints.
        f.write_str("Current(..)")
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A fingerprint of both files' paths and contents: what a reload read, so
/// the watcher knows whether the files changed since (no key bytes kept).
type Fingerprint = [u8; 32];

fn fingerprint(files: &TlsFiles) -> Option<Fingerprint> {
    let mut hash = Sha256::new();
    for path in [&files.cert_file, &files.key_file] {
        let bytes = std::fs::read(path).ok()?;
        hash.update(path.as_os_str().as_encoded_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    Some(hash.finalize().into())
}

/// The listener's TLS: an acceptor whose certificate can be swapped.
pub struct ServerTls {
    current: Arc<Current>,
    acceptor: TlsAcceptor,
    /// What the last load or reload read, served or refused.
    handled: Mutex<Option<Fingerprint>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTls(..)")
    }
}

impl ServerTls {
    /// Reads `files` and builds the acceptor: ALPN offers `h2`, then
    /// `http/1.1`, so clients that speak HTTP/2 get it.
    pub fn load(files: &TlsFiles) -> Result<Arc<Self>, PairError> {
        let handled = fingerprint(files);
        let pair = read_pair(files)?;
        let current = Arc::new(Current(ArcSwap::from_pointee(pair)));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| PairError::certificate(format!("cannot set up TLS: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(Self {
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handled: Mutex::new(handled),
        }))
    }

    /// Makes TLS connections with the certificate in force.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The certificate chain in force (leaf first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.0.load().cert.clone()
    }

    /// Re-reads `files`: a good pair is served to new connections from now
    /// on; a bad one is logged (naming the file) and the old pair kept.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), PairError> {
        *self.handled.lock().unwrap_or_else(|e| e.into_inner()) = fingerprint(files);
        match read_pair(files) {
            Ok(pair) => {
                self.current.0.store(Arc::new(pair));
                tracing::info!(
                    cert_file = %files.cert_file.display(),
                    key_file = %files.key_file.display(),
                    "TLS certificate reloaded: new connections get it"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    file = %file_of(files, &e).display(),
                    reason = e.reason.as_str(),
                    "TLS certificate reload failed, keeping the one in force"
                );
                Err(e)
            }
        }
    }

    /// Polls the files `files()` names every `every` and reloads once a
    /// change has settled (two polls that agree), as the config watcher
    /// does: a certificate written before its key is read once both are
    /// there. A content already handled (served or refused) is not reloaded
    /// again, so a bad pair is reported once, not every second.
    pub async fn reload_on_change(
        self: Arc<Self>,
        files: impl Fn() -> Option<TlsFiles>,
        every: Duration,
    ) {
        let mut seen = None;
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(files) = files() else {
                continue;
            };
            let now = fingerprint(&files);
            let handled = *self.handled.lock().unwrap_or_else(|e| e.into_inner());
            if now.is_some() && now == seen && now != handled {
                tracing::info!(
                    cert_file = %files.cert_file.display(),
                    key_file = %files.key_file.display(),
                    "TLS certificate files changed: reloading"
                );
                let _ = self.reload(&files);
            }
            seen = now;
        }
    }
}

fn file_of<'a>(files: &'a TlsFiles, e: &PairError) -> &'a Path {
    match e.problem {
        PairProblem::Certificate => &files.cert_file,
        PairProblem::Key => &files.key_file,
    }
}

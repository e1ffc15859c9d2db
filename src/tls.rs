//! TLS on the gRPC port: rustls with the ring provider, ALPN `h2` and `http/1.1`
//! (gRPC and the HTTP/JSON routes share the port; grpc-go refuses a server without
//! `h2`), optional client certificates (mTLS), and the files re-read when they
//! change.
//!
//! tonic's own `ServerTlsConfig` builds one configuration for the life of the
//! server; here the configuration sits behind an [`ArcSwap`] and is rebuilt whole
//! (certificate, key and client verifier) when the files change. Each handshake
//! takes the configuration current at that moment, so established connections keep
//! theirs and new ones get the new certificate.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::{config::TlsSettings, reload};

/// Accepts TLS connections with the current certificate.
#[derive(Debug)]
pub struct TlsAcceptor {
    config: Arc<ArcSwap<ServerConfig>>,
}

/// Which of the TLS files is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The certificate chain (`cert_file`).
    Cert,
    /// The private key (`key_file`).
    Key,
    /// The CA of client certificates (`client_ca_file`).
    ClientCa,
}

/// A TLS file that cannot be used. The message never quotes the file: the key's
/// bytes must not reach a log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {problem}", .path.display())]
pub struct TlsError {
    /// Which file.
    pub file: TlsFile,
    /// Its path.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

impl TlsAcceptor {
    /// Reads the files, and re-reads them every `reload_interval` for as long as
    /// the acceptor lives.
    pub fn start(settings: &TlsSettings) -> Result<Self, TlsError> {
        let paths = paths(settings);
        let snapshot = read(settings)?;
        let config = server_config(settings, &snapshot.contents)?;
        let config = Arc::new(ArcSwap::from_pointee(config));
        let files = settings.clone();
        reload::watch(
            "TLS certificate",
            paths,
            settings.reload_interval,
            snapshot.digest,
            Arc::downgrade(&config),
            move |config: &ArcSwap<ServerConfig>, contents| {
                let new = server_config(&files, &contents).map_err(|e| e.to_string())?;
                config.store(Arc::new(new));
                Ok(())
            },
        );
        Ok(Self { config })
    }

    /// The TLS handshake on an accepted connection, with the certificate current
    /// now. The caller bounds it (`server.handshake_timeout_ms`).
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.load_full());
        acceptor.accept(tcp).await
    }
}

/// Checks that the files make a working TLS configuration (`check-config`, and
/// before the gateway starts).
pub fn check(settings: &TlsSettings) -> Result<(), TlsError> {
    let snapshot = read(settings)?;
    server_config(settings, &snapshot.contents).map(drop)
}

/// The files, in the order [`server_config`] takes their contents.
fn paths(settings: &TlsSettings) -> Vec<PathBuf> {
    let mut paths = vec![settings.cert_file.clone(), settings.key_file.clone()];
    paths.extend(settings.client_ca_file.clone());
    paths
}

fn read(settings: &TlsSettings) -> Result<reload::Snapshot, TlsError> {
    reload::Snapshot::read(&paths(settings)).map_err(|(i, error)| {
        let file = [TlsFile::Cert, TlsFile::Key, TlsFile::ClientCa][i];
        TlsError {
            file,
            path: paths(settings)[i].clone(),
            problem: format!("cannot read it: {error}"),
        }
    })
}

/// The rustls configuration from the files' contents (certificate, key, and the
/// client CA if any).
fn server_config(settings: &TlsSettings, contents: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
    let fault = |file: TlsFile, path: &Path, problem: String| TlsError {
        file,
        path: path.to_owned(),
        problem,
    };
    let file = |i: usize| contents.get(i).map_or(&[][..], Vec::as_slice);
    let (cert, key, client_ca) = (file(0), file(1), contents.get(2));
    let chain = certificates(cert).map_err(|p| fault(TlsFile::Cert, &settings.cert_file, p))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| {
        // The parser's own error may quote a line of the file: say what, not where.
        fault(
            TlsFile::Key,
            &settings.key_file,
            "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned(),
        )
    })?;

    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| fault(TlsFile::Cert, &settings.cert_file, e.to_string()))?;
    let builder = match (client_ca, &settings.client_ca_file) {
        (Some(pem), Some(path)) => {
            let verifier = client_verifier(pem, provider)
                .map_err(|problem| fault(TlsFile::ClientCa, path, problem))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        fault(
            TlsFile::Key,
            &settings.key_file,
            format!("does not go with the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Every certificate of a PEM file, at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
    }
    Ok(chain)
}

/// A verifier that requires a client certificate signed by one of the CAs in `pem`.
fn client_verifier(
    pem: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certificates(pem)?);
    if added == 0 {
        return Err("holds no usable CA certificate".to_owned());
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())
}

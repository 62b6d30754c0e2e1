//! TLS (rustls, ring provider) for backend connections, plus the PEM loading the client-side
//! acceptor shares.
//!
//! The connection code drives plain sockets by readiness (`Io`), which a TLS stream does not
//! offer; so a TLS session runs in its own small task that copies between the TLS stream and one
//! end of a local socket pair, and the connection drives the other end like any socket. One
//! extra copy per byte, in exchange for one code path for every transport.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

/// The crypto provider kvrouter uses everywhere (ring: no C toolchain beyond cc needed).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// How to open TLS sessions to one pool's servers.
#[derive(Clone)]
pub struct TlsClient {
    pub connector: TlsConnector,
    /// The name checked in the servers' certificates; None: each server's host.
    pub server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsClient {
    pub fn new(
        ca: &Path,
        cert_key: Option<(&Path, &Path)>,
        server_name: Option<&str>,
    ) -> Result<TlsClient, String> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(load_roots(ca)?);
        let config = match cert_key {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| format!("bad client certificate or key: {e}"))?,
        };
        let server_name = server_name
            .map(|n| {
                ServerName::try_from(n.to_string()).map_err(|e| format!("bad server_name {n}: {e}"))
            })
            .transpose()?;
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Open a TLS session over `tcp` to `host`, and return the local end of the bridge.
    pub async fn connect(&self, tcp: TcpStream, host: &str) -> std::io::Result<UnixStream> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.to_string()).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?,
        };
        let tls = self.connector.connect(name, tcp).await?;
        bridge(tls)
    }
}

/// Copy between `tls` and one end of a new socket pair, in a task of the current worker; the
/// other end is returned. The task ends when either side closes.
pub fn bridge<S>(mut tls: S) -> std::io::Result<UnixStream>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let (mut near, far) = UnixStream::pair()?;
    tokio::task::spawn_local(async move {
        let _ = tokio::io::copy_bidirectional(&mut tls, &mut near).await;
    });
    Ok(far)
}

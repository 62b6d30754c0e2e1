//! TLS (rustls, ring provider) for backend connections, plus the PEM loading the client-side
//! acceptor shares.
//!
//! The connection code drives plain sockets by readiness (`Io`), which a TLS stream does not
//! offer; so a TLS session runs in its own small task that copies between the TLS stream and one
//! end of a local socket pair, and the connection drives the other end like any socket. One
//! extra copy per byte, in exchange for one code path for every transport.

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

/// The certificates in a PEM text (read by the caller, which knows where it came from).
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

/// The private key in a PEM text.
pub fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no usable private key: {e}"))
}

/// The CA certificates in a PEM text, as a root store.
pub fn roots_from_pem(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_from_pem(pem)? {
        roots
            .add(c)
            .map_err(|e| format!("bad CA certificate: {e}"))?;
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
    /// A client trusting `roots`, presenting `cert_key` when given.
    pub fn new(
        roots: rustls::RootCertStore,
        cert_key: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        server_name: Option<&str>,
    ) -> Result<TlsClient, String> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match cert_key {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(cert, key)
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

//! TLS from config: the acceptor for a listener's `tls`, the backend client for a pool's `tls`.
//! Files are read when a config is checked and started, so a bad file is reported with the
//! location of its `tls` key before anything listens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::backend::tls::{load_certs, load_key, load_roots, provider, TlsClient};
use crate::config::{Config, Location, TlsConfig};

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn base_dir(config: &Config) -> PathBuf {
    config
        .file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn at(config: &Config, loc: Location, why: String) -> String {
    format!("{}:{}:{}: {why}", config.file.display(), loc.line, loc.col)
}

/// The acceptor for a listener's `tls`.
pub fn acceptor(config: &Config, tls: &TlsConfig) -> Result<TlsAcceptor, String> {
    let base = base_dir(config);
    let build = || -> Result<TlsAcceptor, String> {
        let cert = resolve(&base, tls.cert.as_deref().ok_or("tls needs cert")?);
        let key = resolve(&base, tls.key.as_deref().ok_or("tls needs key")?);
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &tls.ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = load_roots(&resolve(&base, ca))?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .map_err(|e| format!("bad client CA: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let server = builder
            .with_single_cert(load_certs(&cert)?, load_key(&key)?)
            .map_err(|e| format!("bad certificate or key: {e}"))?;
        Ok(TlsAcceptor::from(Arc::new(server)))
    };
    build().map_err(|why| at(config, tls.location, why))
}

/// The backend TLS client for a pool's `tls`.
pub fn client(config: &Config, tls: &TlsConfig) -> Result<TlsClient, String> {
    let base = base_dir(config);
    let build = || -> Result<TlsClient, String> {
        let ca = resolve(&base, tls.ca.as_deref().ok_or("tls needs ca")?);
        let pair = match (&tls.cert, &tls.key) {
            (Some(c), Some(k)) => Some((resolve(&base, c), resolve(&base, k))),
            _ => None,
        };
        TlsClient::new(
            &ca,
            pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            tls.server_name.as_deref(),
        )
    };
    build().map_err(|why| at(config, tls.location, why))
}

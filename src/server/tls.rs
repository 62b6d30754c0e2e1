//! TLS from config: the acceptor for a listener's `tls`, the backend client for a pool's `tls`.
//! Files are read when a config is checked and started, so a bad file is reported with the
//! location of its `tls` key before anything listens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::backend::tls::{certs_from_pem, key_from_pem, provider, roots_from_pem, TlsClient};
use crate::config::files::{read_limited, MAX_TLS_FILE};
use crate::config::{Config, Location, TlsConfig};

/// A problem and where in the config it is.
type Located<T> = Result<T, (Location, String)>;

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

fn at(config: &Config, (loc, why): (Location, String)) -> String {
    format!("{}:{}:{}: {why}", config.file.display(), loc.line, loc.col)
}

/// Read the file named by a `tls` key (`what`: cert, key, ca) and parse it with `parse`; every
/// error carries the location of that key.
fn load<T>(
    config: &Config,
    file: &Path,
    loc: Location,
    what: &str,
    parse: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Located<T> {
    let path = resolve(&base_dir(config), file);
    let pem = read_limited(&path, MAX_TLS_FILE);
    pem.and_then(|pem| parse(&pem))
        .map_err(|why| (loc, format!("tls {what} {}: {why}", path.display())))
}

/// The acceptor for a listener's `tls`.
pub fn acceptor(config: &Config, tls: &TlsConfig) -> Result<TlsAcceptor, String> {
    let build = || -> Located<TlsAcceptor> {
        let here = |why: &str| (tls.location, why.to_string());
        let cert = tls.cert.as_deref().ok_or_else(|| here("tls needs cert"))?;
        let key = tls.key.as_deref().ok_or_else(|| here("tls needs key"))?;
        let certs = load(config, cert, tls.cert_at, "cert", certs_from_pem)?;
        let key = load(config, key, tls.key_at, "key", key_from_pem)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| here(&e.to_string()))?;
        let builder = match &tls.ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = load(config, ca, tls.ca_at, "ca", roots_from_pem)?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .map_err(|e| here(&format!("bad client CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let server = builder
            .with_single_cert(certs, key)
            .map_err(|e| here(&format!("bad certificate or key: {e}")))?;
        Ok(TlsAcceptor::from(Arc::new(server)))
    };
    build().map_err(|e| at(config, e))
}

/// The backend TLS client for a pool's `tls`.
pub fn client(config: &Config, tls: &TlsConfig) -> Result<TlsClient, String> {
    let build = || -> Located<TlsClient> {
        let ca = tls
            .ca
            .as_deref()
            .ok_or_else(|| (tls.location, "tls needs ca".to_string()))?;
        let roots = load(config, ca, tls.ca_at, "ca", roots_from_pem)?;
        let pair = match (&tls.cert, &tls.key) {
            (Some(c), Some(k)) => Some((
                load(config, c, tls.cert_at, "cert", certs_from_pem)?,
                load(config, k, tls.key_at, "key", key_from_pem)?,
            )),
            _ => None,
        };
        TlsClient::new(roots, pair, tls.server_name.as_deref()).map_err(|why| (tls.location, why))
    };
    build().map_err(|e| at(config, e))
}

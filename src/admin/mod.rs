//! The admin HTTP listener: `GET /metrics` (Prometheus text), `/healthz`, `/pools`, `/hotkeys`,
//! `/config`.
//!
//! It knows nothing of pools or listeners: the caller hands it closures (`AdminApi`) that
//! produce each answer, so this module imports nothing of the proxy.
//!
//! Bounds, so that slow or idle clients cannot pile up: a request's headers must arrive within
//! [`HEADER_READ_TIMEOUT`] (hyper's header timer, restarted for each request on a kept-alive
//! connection), a connection lives at most [`CONNECTION_LIFETIME`] (which also bounds one that
//! never sends a byte), and at most [`MAX_CONNECTIONS`] are open at once: one more is closed as
//! soon as it is accepted. Prometheus reconnects on its next scrape either way.

pub mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The time a client has to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest an admin connection stays open, requests or not.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Admin connections open at once; more are closed when accepted.
pub const MAX_CONNECTIONS: usize = 32;

/// Returns Ok when healthy, or the reason it is not.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
/// Produces a JSON document.
pub type JsonView = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;
/// Produces the Prometheus text exposition.
pub type MetricsView = Arc<dyn Fn() -> String + Send + Sync>;

/// What the admin endpoints serve.
#[derive(Clone)]
pub struct AdminApi {
    /// `GET /healthz`.
    pub health: HealthCheck,
    /// `GET /metrics`.
    pub metrics: MetricsView,
    /// `GET /pools`: servers, health, counters.
    pub pools: JsonView,
    /// `GET /config`: the active config, secrets redacted.
    pub config: JsonView,
    /// The bearer token required by every endpoint but `/healthz` (read per request, so a
    /// reload can change it); None: open (the listener is on loopback by default).
    pub token: TokenView,
    /// `GET /hotkeys`: per listener with hot_keys, the keys hot now and what is done with them.
    pub hotkeys: JsonView,
}

/// The admin token in force.
pub type TokenView = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `req` may see a protected endpoint.
fn authorized(req: &Request<Incoming>, api: &AdminApi) -> bool {
    let Some(token) = (api.token)() else {
        return true;
    };
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same(given.trim().as_bytes(), token.as_bytes()))
}

/// Bind the admin listener and serve it on the current runtime.
pub async fn spawn(addr: SocketAddr, api: AdminApi) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let started = tokio::time::Instant::now();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                // E.g. out of file descriptors: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "admin connection refused: {MAX_CONNECTIONS} already open");
                drop(stream);
                continue;
            };
            let api = api.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    async move {
                        if req.uri().path() == "/healthz" {
                            settle(&api, started).await;
                        }
                        Ok::<_, Infallible>(handle(req, &api))
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
                drop(slot);
            });
        }
    });
    Ok(local)
}

/// Right after startup the first checks of the servers may still be on their way: during
/// this long after the admin listener started, `/healthz` waits for a healthy answer (checked
/// every 10 ms) before it answers unhealthy, rather than report a state it does not know yet.
pub const STARTUP_GRACE: Duration = Duration::from_secs(1);

async fn settle(api: &AdminApi, started: tokio::time::Instant) {
    let until = started + STARTUP_GRACE;
    while (api.health)().is_err() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

fn json_body(v: serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(&v).expect("a Value always serializes");
    s.push('\n');
    s
}

/// Requests without a valid token (anyone can send them at will): one log line per interval.
static UNAUTHORIZED_LOG: crate::logging::LogLimit =
    crate::logging::LogLimit::new(std::time::Duration::from_secs(10));

fn handle(req: Request<Incoming>, api: &AdminApi) -> Response<Full<Bytes>> {
    if req.uri().path() != "/healthz" && !authorized(&req, api) {
        if let Some(suppressed) = UNAUTHORIZED_LOG.check() {
            tracing::warn!(
                path = %crate::logging::untrusted(req.uri().path().as_bytes()),
                suppressed,
                "admin request without a valid bearer token"
            );
        }
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("content-type", TEXT)
            .header("www-authenticate", "Bearer")
            .body(Full::new(Bytes::from_static(
                b"unauthorized: send Authorization: Bearer <admin.token>\n",
            )))
            .expect("static response");
    }
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => match (api.health)() {
            Ok(()) => (StatusCode::OK, TEXT, "ok\n".to_string()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("unhealthy: {why}\n"),
            ),
        },
        (&Method::GET, "/metrics") => (StatusCode::OK, metrics::CONTENT_TYPE, (api.metrics)()),
        (&Method::GET, "/pools") => (StatusCode::OK, JSON, json_body((api.pools)())),
        (&Method::GET, "/config") => (StatusCode::OK, JSON, json_body((api.config)())),
        (&Method::GET, "/hotkeys") => (StatusCode::OK, JSON, json_body((api.hotkeys)())),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics, /healthz, /pools, /hotkeys or /config\n".to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}

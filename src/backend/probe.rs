//! Probing a server that is marked down (TKO): one task per down server sends a cheap request
//! (memcached `version`, Redis `PING`) with backoff until it gets a complete reply, then puts
//! the server back in service. Requests never wait on a down server; only the probe does. A
//! server that refuses connections is probed every 100 ms (a refusal costs nothing), so it is
//! back in service within 100 ms of listening again.
//!
//! Every server of a TKO pool is also checked once when it is configured (`startup`), so
//! readiness (`/healthz`) knows before any client traffic whether it answers or refuses.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connection::{connect, ServerSpec, Stream};
use super::health::FailureKind;
use crate::protocol::{memcache, resp};

const FIRST_PROBE: Duration = Duration::from_millis(100);
/// A probe waits this long for its answer when the pool has no timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Probe until the server answers. The caller has claimed the probe (`claim_probe`).
pub async fn probe(spec: Arc<ServerSpec>) {
    let Some(p) = spec.tko.clone() else { return };
    let ceiling = spec.retry_timeout.max(FIRST_PROBE);
    let mut delay = FIRST_PROBE.min(ceiling);
    loop {
        tokio::time::sleep(delay).await;
        let wait = spec.timeout.unwrap_or(PROBE_TIMEOUT);
        match tokio::time::timeout(wait, once(&spec, &p)).await {
            Ok(Ok(())) => {
                spec.health.probe_succeeded();
                tracing::info!(server = %spec.address, "probe answered: server back in service");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(server = %spec.address, error = %e, "probe failed");
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    // Cheap to retry, and a restarted server is wanted back at once.
                    delay = FIRST_PROBE.min(ceiling);
                    continue;
                }
            }
            Err(_) => tracing::debug!(server = %spec.address, "probe timed out"),
        }
        delay = (delay * 2).min(ceiling);
    }
}

/// Start the first check of a server just configured (once per server, whichever worker of
/// the generation calls first). Must run inside the worker's `LocalSet`.
pub fn check_new(spec: &Arc<ServerSpec>) {
    if spec.tko.is_some() && spec.health.claim_startup_check() {
        tokio::task::spawn_local(startup(spec.clone()));
    }
}

/// Check a new server until it answers (then it counts for readiness) or refuses (then it is
/// marked down, hard TKO, and `probe` takes over); stop early when traffic found out first.
async fn startup(spec: Arc<ServerSpec>) {
    let Some(p) = spec.tko.clone() else { return };
    let ceiling = spec.retry_timeout.max(FIRST_PROBE);
    let mut delay = Duration::ZERO;
    loop {
        tokio::time::sleep(delay).await;
        if !spec.health.unknown() {
            return;
        }
        let wait = spec.timeout.unwrap_or(PROBE_TIMEOUT);
        match tokio::time::timeout(wait, once(&spec, &p)).await {
            Ok(Ok(())) => {
                spec.health.mark_answered();
                return;
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                if spec
                    .health
                    .tko_failure(FailureKind::Refused, spec.failure_limit)
                {
                    tracing::warn!(server = %spec.address, error = %e,
                        "server refuses connections: marked down (TKO) until a probe gets an answer");
                    if spec.health.claim_probe() {
                        probe(spec).await;
                    }
                }
                return;
            }
            Ok(Err(e)) => tracing::debug!(server = %spec.address, error = %e, "first check failed"),
            Err(_) => tracing::debug!(server = %spec.address, "first check timed out"),
        }
        delay = (delay * 2).clamp(FIRST_PROBE, ceiling);
    }
}

async fn once(spec: &ServerSpec, p: &super::connection::Probe) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(256);
    let done = |buf: &[u8]| match p.kind {
        super::ReplyKind::McLine
        | super::ReplyKind::McRetrieval
        | super::ReplyKind::McMeta
        | super::ReplyKind::McMetaQuiet => {
            matches!(memcache::scan_reply(buf, false), Ok(Some(_)) | Err(_))
        }
        // Any complete reply, `-NOAUTH` included, means the server is alive.
        super::ReplyKind::Resp => matches!(resp::scan_reply(buf), Ok(Some(_)) | Err(_)),
    };
    match connect(spec).await? {
        Stream::Tcp(mut s) => {
            s.write_all(&p.request).await?;
            while !done(&buf) {
                if s.read_buf(&mut buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        Stream::Unix(mut s) => {
            s.write_all(&p.request).await?;
            while !done(&buf) {
                if s.read_buf(&mut buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
    }
    Ok(())
}

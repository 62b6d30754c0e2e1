//! Listening sockets (TCP or unix), bound up front so bind errors are reported before serving,
//! and the accept loops that hand each new client to a worker, round-robin.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};
use socket2::{Domain, Socket, Type};
use tokio::sync::{mpsc, watch};

use crate::config::{ListenAddr, ListenerConfig};

/// An accepted client, on its way to a worker.
pub enum Accepted {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

pub enum Bound {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, std::path::PathBuf),
}

pub fn bind(cfg: &ListenerConfig) -> io::Result<Bound> {
    match &cfg.listen {
        ListenAddr::Tcp(addr) => {
            let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            if cfg.reuseport {
                socket.set_reuse_port(true)?;
            }
            socket.set_nonblocking(true)?;
            socket.bind(&(*addr).into())?;
            socket.listen(cfg.backlog.min(i32::MAX as u32) as i32)?;
            Ok(Bound::Tcp(socket.into()))
        }
        ListenAddr::Unix { path, mode } => {
            // A stale socket file from an earlier run would make bind fail.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if meta.file_type().is_socket() {
                    std::fs::remove_file(path)?;
                }
            }
            let l = std::os::unix::net::UnixListener::bind(path)?;
            if let Some(mode) = mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))?;
            }
            l.set_nonblocking(true)?;
            Ok(Bound::Unix(l, path.clone()))
        }
    }
}

/// Accept until `stop` (shutdown, or the listener was removed by a reload), handing clients to
/// workers in turn. `active` counts this listener's open clients (the worker decrements it when
/// a client ends); beyond `max_clients` (0 = unlimited; changed by reloads) a client is told so
/// and closed. Dropping the socket on return closes the listener.
#[allow(clippy::too_many_arguments)] // one per piece of listener state the loop needs
pub async fn accept_loop(
    bound: Bound,
    listener: u64,
    workers: Vec<mpsc::UnboundedSender<(u64, Accepted, prometheus::IntGauge)>>,
    max_clients: Arc<AtomicUsize>,
    active: IntGauge,
    accepted_total: IntCounter,
    mut shutdown: watch::Receiver<bool>,
    full_msg: &'static [u8],
) {
    let mut next = 0usize;
    enum L {
        Tcp(tokio::net::TcpListener),
        Unix(tokio::net::UnixListener, std::path::PathBuf),
    }
    let l = match bound {
        Bound::Tcp(l) => L::Tcp(tokio::net::TcpListener::from_std(l).expect("tokio listener")),
        Bound::Unix(l, p) => L::Unix(
            tokio::net::UnixListener::from_std(l).expect("tokio listener"),
            p,
        ),
    };
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            a = async {
                match &l {
                    L::Tcp(l) => l.accept().await.and_then(|(s, _)| {
                        s.set_nodelay(true)?;
                        Ok(Accepted::Tcp(s.into_std()?))
                    }),
                    L::Unix(l, _) => l.accept().await.and_then(|(s, _)| Ok(Accepted::Unix(s.into_std()?))),
                }
            } => a,
        };
        let accepted = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let max = max_clients.load(Ordering::Relaxed);
        if max > 0 && active.get() >= max as i64 {
            reject(accepted, full_msg);
            continue;
        }
        active.inc();
        accepted_total.inc();
        let w = next % workers.len();
        next = next.wrapping_add(1);
        // The gauge goes along: the worker decrements the one incremented here, even when a
        // reload removed the listener meanwhile.
        if workers[w]
            .send((listener, accepted, active.clone()))
            .is_err()
        {
            active.dec();
        }
    }
    if let L::Unix(_, path) = &l {
        let _ = std::fs::remove_file(path);
    }
}

/// What a client over `max_clients` is told before it is closed, per protocol.
pub const FULL_MEMCACHE: &[u8] = b"SERVER_ERROR Too many open connections\r\n";
pub const FULL_REDIS: &[u8] = b"-ERR max number of clients reached\r\n";

fn reject(a: Accepted, msg: &[u8]) {
    use std::io::Write;
    match a {
        Accepted::Tcp(mut s) => {
            let _ = s.write(msg);
        }
        Accepted::Unix(mut s) => {
            let _ = s.write(msg);
        }
    }
}

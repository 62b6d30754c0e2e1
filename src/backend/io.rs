//! Non-blocking socket access shared by client and backend connections.
//!
//! Both sides drive reads and writes from one task with `ready()` + `try_read`/`try_write`, so a
//! peer that stops reading never blocks the reading half (no split halves, no locks), and TCP
//! and unix sockets share one code path.

use std::io;

use tokio::io::{Interest, Ready};
use tokio::net::{TcpStream, UnixStream};

/// A socket driven by readiness.
#[allow(async_fn_in_trait)]
pub trait Io {
    async fn ready(&self, interest: Interest) -> io::Result<Ready>;
    fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> io::Result<usize>;
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
}

impl Io for TcpStream {
    async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        TcpStream::ready(self, interest).await
    }
    fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        TcpStream::try_read_buf(self, buf)
    }
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
}

impl Io for UnixStream {
    async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        UnixStream::ready(self, interest).await
    }
    fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        UnixStream::try_read_buf(self, buf)
    }
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        UnixStream::try_write(self, buf)
    }
}

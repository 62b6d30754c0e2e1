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

    /// `try_read_buf`, except that a short read (less than the free space offered) also clears
    /// the socket's read readiness: the socket was drained, so the next `ready()` waits for
    /// the next edge instead of returning at once for a read that would only say WouldBlock.
    /// Saves one `read` syscall per request on request/response traffic. Safe because the
    /// worker runtime is single-threaded: no event can be processed between the read and the
    /// clear, and data arriving afterwards raises a new edge (tokio tracks readiness ticks).
    fn try_read_drain(&self, buf: &mut bytes::BytesMut) -> io::Result<usize>;
}

/// The body of `try_read_drain` for a socket whose fd `fd` is read inside `try_io`.
fn read_drain(
    try_io: impl FnOnce(&mut dyn FnMut() -> io::Result<usize>) -> io::Result<usize>,
    fd: std::os::fd::RawFd,
    buf: &mut bytes::BytesMut,
) -> io::Result<usize> {
    if buf.capacity() == buf.len() {
        buf.reserve(4096); // a zero-length read would look like end of file
    }
    let mut got = 0usize;
    let r = try_io(&mut || {
        let spare = buf.spare_capacity_mut();
        let want = spare.len();
        // SAFETY: reading into the spare capacity of `buf`; `n` bytes are initialised after.
        let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), want) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        unsafe { buf.set_len(buf.len() + n) };
        got = n;
        if n > 0 && n < want {
            return Err(io::ErrorKind::WouldBlock.into()); // drained: clear readiness
        }
        Ok(n)
    });
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
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
    fn try_read_drain(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        read_drain(
            |f| TcpStream::try_io(self, Interest::READABLE, f),
            self.as_raw_fd(),
            buf,
        )
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
    fn try_read_drain(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        read_drain(
            |f| UnixStream::try_io(self, Interest::READABLE, f),
            self.as_raw_fd(),
            buf,
        )
    }
}

/// Write as much of `buf` as the socket takes now, without waiting; what was written is
/// removed from `buf`. Shared by client and backend connections.
pub fn write_some<S: Io>(stream: &S, buf: &mut bytes::BytesMut) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let _ = buf.split_to(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Write all of `buf`, waiting for the socket as needed.
pub async fn write_all<S: Io>(stream: &S, buf: &mut bytes::BytesMut) -> io::Result<()> {
    while !buf.is_empty() {
        stream.ready(Interest::WRITABLE).await?;
        write_some(stream, buf)?;
    }
    Ok(())
}

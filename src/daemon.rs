//! twemproxy's `-d` (daemonize) and `-p` (pid file).
//!
//! Daemonizing forks, so it must happen before any thread (tokio's included) starts.

use std::io;
use std::path::Path;

/// Fork into the background: the parent exits, the child starts a new session with stdio on
/// /dev/null.
pub fn daemonize() -> io::Result<()> {
    // SAFETY: called from main before any other thread exists, as fork requires.
    unsafe {
        match libc::fork() {
            -1 => return Err(io::Error::last_os_error()),
            0 => {}
            _ => libc::_exit(0),
        }
        if libc::setsid() == -1 {
            return Err(io::Error::last_os_error());
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            if null > 2 {
                libc::close(null);
            }
        }
    }
    Ok(())
}

pub fn write_pid_file(path: &Path) -> io::Result<()> {
    std::fs::write(path, format!("{}\n", std::process::id()))
}

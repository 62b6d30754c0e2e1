//! Reading the files a config names (TLS certificates, keys, CAs) and the config file itself.
//!
//! A path in a config is operator input: it may name `/dev/zero`, a FIFO, a directory or a
//! multi-gigabyte file. Reading such a thing whole would hang or exhaust memory before any
//! error is printed, so only regular files under a size cap are read, and the checks are made
//! on the opened file (a FIFO is opened without blocking, and a file swapped in between the
//! check and the open is caught as well).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest TLS file (certificate chain, key, CA bundle) read from a config.
pub const MAX_TLS_FILE: u64 = 1024 * 1024;

/// The largest config file read.
pub const MAX_CONFIG_FILE: u64 = 16 * 1024 * 1024;

/// The whole of `path`, if it is a regular file of at most `max` bytes; else why not.
pub fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    check(&meta, max)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    check(
        &file.metadata().map_err(|e| format!("cannot read: {e}"))?,
        max,
    )?;
    let mut out = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read: {e}"))?;
    if out.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(out)
}

fn check(meta: &std::fs::Metadata, max: u64) -> Result<(), String> {
    let t = meta.file_type();
    if !t.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(format!("{what}, not a regular file"));
    }
    if meta.len() > max {
        return Err(format!("{} bytes, larger than {max}", meta.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("kvrouter-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("ok.pem");
        std::fs::write(&ok, b"hello").unwrap();
        assert_eq!(read_limited(&ok, 5).unwrap(), b"hello");
        assert!(read_limited(&ok, 4).unwrap_err().contains("larger than 4"));
        assert!(read_limited(&dir, 10).unwrap_err().contains("a directory"));
        let zero = read_limited(Path::new("/dev/zero"), 10).unwrap_err();
        assert!(zero.contains("a device"), "{zero}");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read_limited(&fifo, 10).unwrap_err().contains("a FIFO"));
        assert!(read_limited(&dir.join("missing"), 10)
            .unwrap_err()
            .contains("cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

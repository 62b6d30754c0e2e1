//! twemproxy's `md5` key hash: the first four bytes of the MD5 digest, read little-endian.
//!
//! The same digest also builds the ketama continuum (see `ketama.rs`), which takes all four
//! little-endian words of each digest. Uses the `md-5` crate; only the byte order is ours.

use md5::{Digest, Md5};

/// The 16-byte MD5 digest of `data`.
pub fn digest(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

/// twemproxy `hash_md5`: digest bytes 0..4 as a little-endian u32.
pub fn hash(key: &[u8]) -> u32 {
    let d = digest(key);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(hash(b""), 0xd98c_1dd4);
        // md5("a") = 0cc175b9c0f1b6a831c399e269772661
        assert_eq!(hash(b"a"), 0xb975_c10c);
        // md5("abc") = 900150983cd24fb0d6963f7d28e17f72
        assert_eq!(hash(b"abc"), 0x9850_0190);
    }
}

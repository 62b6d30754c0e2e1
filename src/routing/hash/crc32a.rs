//! twemproxy's `crc32a` key hash: the full standard CRC-32 (ISO-HDLC, as zlib computes it).
//!
//! Unlike `crc32` it keeps all 32 bits; the `crc` crate's `CRC_32_ISO_HDLC` is exact.

use crc::{Crc, CRC_32_ISO_HDLC};

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// twemproxy `hash_crc32a`.
pub fn hash(key: &[u8]) -> u32 {
    CRC32.checksum(key)
}

#[cfg(test)]
mod tests {
    use super::hash;

    #[test]
    fn known_vectors() {
        assert_eq!(hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(hash(b"a"), 0xe8b7_be43);
        assert_eq!(
            hash(b"The quick brown fox jumps over the lazy dog"),
            0x414f_a339
        );
        assert_eq!(hash(b""), 0);
    }
}

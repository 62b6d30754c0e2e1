//! twemproxy's `crc32` key hash: libmemcached's variant, which is the standard CRC-32 shifted
//! down to 15 bits: `((~crc) >> 16) & 0x7fff`.
//!
//! hashkit reads signed chars here, but the sign extension is masked away by `& 0xff` before the
//! table lookup, so the plain CRC-32 over bytes is exact.

use crc::{Crc, CRC_32_ISO_HDLC};

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// twemproxy `hash_crc32` (libmemcached compatible, 15 bits).
pub fn hash(key: &[u8]) -> u32 {
    (CRC32.checksum(key) >> 16) & 0x7fff
}

#[cfg(test)]
mod tests {
    use super::hash;

    #[test]
    fn known_vectors() {
        // CRC-32("123456789") = 0xcbf43926 -> 0xcbf4 & 0x7fff
        assert_eq!(hash(b"123456789"), 0x4bf4);
        assert_eq!(hash(b""), 0);
        // CRC-32("a") = 0xe8b7be43
        assert_eq!(hash(b"a"), 0x68b7);
    }
}

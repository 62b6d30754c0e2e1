//! twemproxy's `crc16` key hash: CRC-16/ARC (reflected polynomial 0xA001, init 0, no final
//! xor), the "Linux kernel" table in hashkit, over unsigned bytes.
//!
//! Note this is *not* the XMODEM CRC16 that Redis Cluster uses for slots; that one lives with the
//! cluster code. The `crc` crate's `CRC_16_ARC` matches twemproxy bit for bit.

use crc::{Crc, CRC_16_ARC};

const ARC: Crc<u16> = Crc::<u16>::new(&CRC_16_ARC);

/// twemproxy `hash_crc16`.
pub fn hash(key: &[u8]) -> u32 {
    u32::from(ARC.checksum(key))
}

#[cfg(test)]
mod tests {
    use super::hash;

    #[test]
    fn known_vectors() {
        // The CRC catalogue's check value for CRC-16/ARC.
        assert_eq!(hash(b"123456789"), 0xbb3d);
        assert_eq!(hash(b""), 0);
        assert_eq!(hash(b"a"), 0xe8c1);
    }

    #[test]
    fn matches_table_driven_definition() {
        // Bitwise form of the reflected 0x8005 CRC, checked against the crate for high bytes too.
        fn bitwise(data: &[u8]) -> u32 {
            let mut crc: u16 = 0;
            for &b in data {
                crc ^= u16::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 != 0 {
                        (crc >> 1) ^ 0xa001
                    } else {
                        crc >> 1
                    };
                }
            }
            u32::from(crc)
        }
        for key in [&b"foo"[..], b"\x80\xff\x00bar", b"{tag}key"] {
            assert_eq!(hash(key), bitwise(key));
        }
    }
}

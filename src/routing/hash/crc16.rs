//! twemproxy's `crc16` key hash, as nutcracker 0.5.0 computes it: the CRC-16/XMODEM table
//! (polynomial 0x1021, MSB first, init 0) driven in a **32-bit** register that is never
//! masked back to 16 bits.
//!
//! Each step is `crc = (crc << 8) ^ TABLE[((crc >> 8) ^ byte) & 0xff]` on a `uint32_t`, so the
//! low 16 bits are the XMODEM CRC and the high 16 bits carry the previous register's bits 8..23.
//! Only for keys of one byte is the result a plain 16-bit CRC. Verified against nutcracker: the
//! CRC-16/ARC ("Linux kernel") table found in later twemproxy sources places keys differently.
//! (Redis Cluster's slot CRC16 is the masked XMODEM value; it lives with the cluster code.)

const fn table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        t[i] = crc as u32;
        i += 1;
    }
    t
}

const TABLE: [u32; 256] = table();

/// twemproxy 0.5.0 `hash_crc16`.
pub fn hash(key: &[u8]) -> u32 {
    let mut crc: u32 = 0;
    for &b in key {
        // hashkit xors a signed char here; `& 0xff` discards the sign extension.
        crc = (crc << 8) ^ TABLE[((crc >> 8) ^ u32::from(b)) as usize & 0xff];
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crc::{Crc, CRC_16_XMODEM};

    #[test]
    fn table_is_xmodem() {
        assert_eq!(TABLE[1], 0x1021);
        assert_eq!(TABLE[255], 0x1ef0);
    }

    #[test]
    fn low_half_is_xmodem_crc() {
        let xmodem = Crc::<u16>::new(&CRC_16_XMODEM);
        for key in [
            &b"123456789"[..],
            b"a",
            b"foo",
            b"\x80\xff\x00bar",
            b"{tag}key",
        ] {
            assert_eq!(
                hash(key) & 0xffff,
                u32::from(xmodem.checksum(key)),
                "key {key:?}"
            );
        }
        assert_eq!(xmodem.checksum(b"123456789"), 0x31c3);
    }

    #[test]
    fn register_is_not_masked() {
        assert_eq!(hash(b""), 0);
        assert_eq!(hash(b"a"), 0x7c87);
        // Two bytes: (0x7c87 << 8) ^ TABLE[(0x7c ^ 'b') & 0xff]
        assert_eq!(hash(b"ab"), (0x7c87 << 8) ^ TABLE[(0x7c ^ 0x62) as usize]);
        assert!(hash(b"123456789") > 0xffff);
    }
}

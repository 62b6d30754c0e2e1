//! twemproxy's `fnv1a_64` key hash, twemproxy's default. Despite the name it is a 32-bit
//! FNV-1a: the 64-bit basis and prime are truncated to `0x84222325` and `0x1b3`.
//!
//! hashkit reads signed chars, so bytes >= 0x80 are sign-extended (`0x80` xors in
//! `0xffffff80`). For ASCII keys it equals the low half of textbook FNV-1a/64.

const INIT: u32 = 0xcbf2_9ce4_8422_2325u64 as u32;
const PRIME: u32 = 0x0000_0100_0000_01b3u64 as u32;

/// twemproxy `hash_fnv1a_64`.
pub fn hash(key: &[u8]) -> u32 {
    let mut h = INIT;
    for &b in key {
        h ^= b as i8 as i32 as u32;
        h = h.wrapping_mul(PRIME);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_constants() {
        assert_eq!(INIT, 0x8422_2325);
        assert_eq!(PRIME, 0x1b3);
    }

    #[test]
    fn known_vectors() {
        // FNV-1a/64("a") = 0xaf63dc4c8601ec8c, FNV-1a/64("foobar") = 0x85944171f73967e8
        assert_eq!(hash(b"a"), 0x8601_ec8c);
        assert_eq!(hash(b"foobar"), 0xf739_67e8);
        assert_eq!(hash(b""), 0x8422_2325);
    }

    #[test]
    fn high_bytes_are_sign_extended() {
        assert_eq!(
            hash(&[0xff]),
            (0x8422_2325u32 ^ 0xffff_ffff).wrapping_mul(0x1b3)
        );
        assert_ne!(hash(&[0xff]), (0x8422_2325u32 ^ 0xff).wrapping_mul(0x1b3));
    }
}

//! twemproxy's `fnv1a_32` key hash: textbook 32-bit FNV-1a, except that bytes are read as
//! signed chars, so bytes >= 0x80 are sign-extended before the xor.

const FNV_32_INIT: u32 = 2_166_136_261;
const FNV_32_PRIME: u32 = 16_777_619;

/// twemproxy `hash_fnv1a_32`.
pub fn hash(key: &[u8]) -> u32 {
    let mut h = FNV_32_INIT;
    for &b in key {
        h ^= b as i8 as i32 as u32;
        h = h.wrapping_mul(FNV_32_PRIME);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::hash;

    #[test]
    fn known_vectors() {
        // FNV-1a/32("a") = 0xe40c292c, FNV-1a/32("foobar") = 0xbf9cf968
        assert_eq!(hash(b"a"), 0xe40c_292c);
        assert_eq!(hash(b"foobar"), 0xbf9c_f968);
        assert_eq!(hash(b""), 0x811c_9dc5);
    }

    #[test]
    fn high_bytes_are_sign_extended() {
        assert_eq!(
            hash(&[0x80]),
            (0x811c_9dc5u32 ^ 0xffff_ff80).wrapping_mul(16_777_619)
        );
    }
}

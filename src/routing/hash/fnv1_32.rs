//! twemproxy's `fnv1_32` key hash: textbook 32-bit FNV-1, except that bytes are read as signed
//! chars, so bytes >= 0x80 are sign-extended before the xor.

const FNV_32_INIT: u32 = 2_166_136_261;
const FNV_32_PRIME: u32 = 16_777_619;

/// twemproxy `hash_fnv1_32`.
pub fn hash(key: &[u8]) -> u32 {
    let mut h = FNV_32_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV_32_PRIME);
        h ^= b as i8 as i32 as u32;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::hash;

    #[test]
    fn known_vectors() {
        // FNV-1/32("a") = 0x050c5d7e, FNV-1/32("foobar") = 0x31f0b262
        assert_eq!(hash(b"a"), 0x050c_5d7e);
        assert_eq!(hash(b"foobar"), 0x31f0_b262);
        assert_eq!(hash(b""), 0x811c_9dc5);
    }

    #[test]
    fn high_bytes_are_sign_extended() {
        assert_eq!(
            hash(&[0x80]),
            0x811c_9dc5u32.wrapping_mul(16_777_619) ^ 0xffff_ff80
        );
    }
}

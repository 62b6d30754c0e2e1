//! twemproxy's `fnv1_64` key hash: FNV-1 with the 64-bit basis and prime, truncated to 32 bits.
//!
//! hashkit xors in `(uint64_t)key[x]` from a signed `char`, so bytes >= 0x80 are sign-extended.
//! Only the low 32 bits are returned, and those depend only on the low 32 bits of every step,
//! so for ASCII keys this equals the low half of textbook FNV-1/64.

const FNV_64_INIT: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// twemproxy `hash_fnv1_64`.
pub fn hash(key: &[u8]) -> u32 {
    let mut h = FNV_64_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV_64_PRIME);
        h ^= b as i8 as i64 as u64;
    }
    h as u32
}

#[cfg(test)]
mod tests {
    use super::hash;

    #[test]
    fn known_vectors() {
        // FNV-1/64("a") = 0xaf63bd4c8601b7be, FNV-1/64("foobar") = 0x340d8765a4dda9c2
        assert_eq!(hash(b"a"), 0x8601_b7be);
        assert_eq!(hash(b"foobar"), 0xa4dd_a9c2);
        assert_eq!(hash(b""), 0x8422_2325);
    }

    #[test]
    fn high_bytes_are_sign_extended() {
        let h = 0xcbf2_9ce4_8422_2325u64.wrapping_mul(0x100_0000_01b3) ^ 0xffff_ffff_ffff_ff80;
        assert_eq!(hash(&[0x80]), h as u32);
    }
}

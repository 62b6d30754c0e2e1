//! Bob Jenkins' one-at-a-time hash, as twemproxy's hashkit computes it.
//!
//! twemproxy reads the key through a signed `char`, so bytes >= 0x80 are sign-extended to
//! 32 bits before they are added: `0x80` contributes `0xffffff80`. A port that reads `u8` would
//! place every non-ASCII key differently.

/// twemproxy `hash_one_at_a_time`.
pub fn hash(key: &[u8]) -> u32 {
    let mut value: u32 = 0;
    for &b in key {
        value = value.wrapping_add(b as i8 as i32 as u32);
        value = value.wrapping_add(value << 10);
        value ^= value >> 6;
    }
    value = value.wrapping_add(value << 3);
    value ^= value >> 11;
    value = value.wrapping_add(value << 15);
    value
}

#[cfg(test)]
mod tests {
    use super::hash;

    #[test]
    fn known_vectors() {
        // Jenkins' published value for "a" and the usual test string.
        assert_eq!(hash(b"a"), 0xca2e_9442);
        assert_eq!(
            hash(b"The quick brown fox jumps over the lazy dog"),
            0x519e_91f5
        );
        assert_eq!(hash(b""), 0);
    }

    #[test]
    fn high_bytes_are_sign_extended() {
        // With sign extension the first step adds 0xffffff80, not 0x80.
        let mut v: u32 = 0xffff_ff80;
        v = v.wrapping_add(v << 10);
        v ^= v >> 6;
        v = v.wrapping_add(v << 3);
        v ^= v >> 11;
        v = v.wrapping_add(v << 15);
        assert_eq!(hash(&[0x80]), v);
    }
}

//! twemproxy's `murmur` key hash: MurmurHash2 (32-bit) with libmemcached's seed
//! `0xdeadbeef * len`, reading 4-byte blocks little-endian and bytes unsigned.

const M: u32 = 0x5bd1_e995;
const R: u32 = 24;

/// twemproxy `hash_murmur`.
pub fn hash(key: &[u8]) -> u32 {
    let len = key.len() as u32;
    let seed = 0xdead_beefu32.wrapping_mul(len);
    let mut h = seed ^ len;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::hash;

    #[test]
    fn known_vectors() {
        // Computed with hashkit's C code compiled by gcc on x86_64.
        for (key, want) in super::super::test_vectors::MURMUR {
            assert_eq!(hash(key), *want, "key {key:?}");
        }
    }

    #[test]
    fn empty_key() {
        // len 0: h = 0, and the final mix keeps 0.
        assert_eq!(hash(b""), 0);
    }
}

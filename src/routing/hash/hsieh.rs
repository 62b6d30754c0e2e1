//! twemproxy's `hsieh` key hash: Paul Hsieh's SuperFastHash as libmemcached ships it.
//!
//! Two differences from the published SuperFastHash: the state starts at 0 (not the key
//! length), and the 3-byte tail reads its last byte through a signed `char`, so a byte >= 0x80
//! there is sign-extended before `<< 18`. 16-bit reads are little-endian (x86_64 takes the
//! portable byte-wise path). An empty key hashes to 0.

fn get16(b: &[u8]) -> u32 {
    u32::from(b[0]) | (u32::from(b[1]) << 8)
}

/// twemproxy `hash_hsieh`.
pub fn hash(key: &[u8]) -> u32 {
    if key.is_empty() {
        return 0;
    }
    let mut h: u32 = 0;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        h = h.wrapping_add(get16(c));
        let tmp = (get16(&c[2..]) << 11) ^ h;
        h = (h << 16) ^ tmp;
        h = h.wrapping_add(h >> 11);
    }
    let rest = chunks.remainder();
    match rest.len() {
        3 => {
            h = h.wrapping_add(get16(rest));
            h ^= h << 16;
            h ^= (rest[2] as i8 as i32 as u32) << 18;
            h = h.wrapping_add(h >> 11);
        }
        2 => {
            h = h.wrapping_add(get16(rest));
            h ^= h << 11;
            h = h.wrapping_add(h >> 17);
        }
        1 => {
            h = h.wrapping_add(u32::from(rest[0]));
            h ^= h << 10;
            h = h.wrapping_add(h >> 1);
        }
        _ => {}
    }
    h ^= h << 3;
    h = h.wrapping_add(h >> 5);
    h ^= h << 4;
    h = h.wrapping_add(h >> 17);
    h ^= h << 25;
    h = h.wrapping_add(h >> 6);
    h
}

#[cfg(test)]
mod tests {
    use super::hash;

    #[test]
    fn known_vectors() {
        // Computed with hashkit's C code compiled by gcc on x86_64.
        for (key, want) in super::super::test_vectors::HSIEH {
            assert_eq!(hash(key), *want, "key {key:?}");
        }
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(hash(b""), 0);
    }
}

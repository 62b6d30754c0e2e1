//! Suffix split (mcrouter's KeySplitRoute): a hot key is kept as N copies `KEY::0.SSSS.copy` ..
//! `KEY::N-1.SSSS.copy`, placed by the pool's normal hash, so its reads spread over up to N
//! servers. `SSSS` is four hex digits fixed per index (a multiplicative hash of it).
//!
//! Why not just `KEY::i`: copy names must differ in more than one byte, and not only at the end.
//! - With twemproxy's FNV hashes (the default fnv1a_64 among them) and ketama, names that differ
//!   only in their *last* byte hash to points 1/256 of the ring apart at most, so `KEY::0` ..
//!   `KEY::7` all land on one server (measured with `kvrouter keymap`: 8 copies on 1 server of 3
//!   for every key tried). Constant bytes after the index mix it into the whole hash.
//! - CRC16 (Redis Cluster slots) and CRC32 are linear: the slots of names that differ in the
//!   low bits of one byte differ by XORs of a few fixed vectors, whatever the key. For
//!   `KEY::i.copy` those vectors leave the top bits of the slot alone, so every copy stayed in
//!   the original's quarter of the slot space: one node of three. Four salt digits per index
//!   vary sixteen bits at different positions, which covers the whole slot space.
//!
//! When the key has a hash tag, the suffix goes *inside* the tag (`{user}:x` →
//! `{user::3.xxxx.copy}:x`): only the tag is hashed, so a suffix outside it would put every copy
//! on the same server.

use bytes::{BufMut, Bytes, BytesMut};

/// The salt digits of copy `i`.
fn salt(i: usize) -> u16 {
    ((i as u32).wrapping_add(1).wrapping_mul(0x9E37_79B1) >> 16) as u16
}

/// The name of copy `i` of `key`.
pub fn copy_key(key: &[u8], i: usize, tag: Option<[u8; 2]>) -> Bytes {
    let suffix = format!("::{i}.{:04x}.copy", salt(i));
    if let Some([open, close]) = tag {
        if let Some(start) = key.iter().position(|&b| b == open) {
            if let Some(len) = key[start + 1..].iter().position(|&b| b == close) {
                if len > 0 {
                    let end = start + 1 + len; // index of the closing byte
                    let mut out = BytesMut::with_capacity(key.len() + suffix.len());
                    out.put_slice(&key[..end]);
                    out.put_slice(suffix.as_bytes());
                    out.put_slice(&key[end..]);
                    return out.freeze();
                }
            }
        }
    }
    let mut out = BytesMut::with_capacity(key.len() + suffix.len());
    out.put_slice(key);
    out.put_slice(suffix.as_bytes());
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_goes_inside_a_non_empty_hash_tag() {
        let s = |i| format!("{:04x}", salt(i));
        assert_eq!(
            copy_key(b"user:1", 3, None),
            Bytes::from(format!("user:1::3.{}.copy", s(3)))
        );
        assert_eq!(
            copy_key(b"{user}:1", 0, Some(*b"{}")),
            Bytes::from(format!("{{user::0.{}.copy}}:1", s(0)))
        );
        // No tag in the key, or an empty one: the whole key is hashed, suffix at the end.
        assert_eq!(
            copy_key(b"plain", 1, Some(*b"{}")),
            Bytes::from(format!("plain::1.{}.copy", s(1)))
        );
        assert_eq!(
            copy_key(b"{}x", 2, Some(*b"{}")),
            Bytes::from(format!("{{}}x::2.{}.copy", s(2)))
        );
    }

    #[test]
    fn salts_differ_for_every_index_a_split_can_have() {
        let salts: std::collections::HashSet<u16> = (0..64).map(salt).collect();
        assert_eq!(salts.len(), 64);
    }
}

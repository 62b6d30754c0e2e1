//! Suffix split (mcrouter's KeySplitRoute): a hot key is kept as N copies `KEY::0.copy` ..
//! `KEY::N-1.copy`, placed by the pool's normal hash, so its reads spread over up to N servers.
//!
//! Why `.copy` after the index: with twemproxy's FNV hashes (the default fnv1a_64 among them)
//! and ketama, names that differ only in their *last* byte hash to points 1/256 of the ring
//! apart at most, so `KEY::0` .. `KEY::7` all land on one server (measured with `kvrouter
//! keymap`: 8 copies on 1 server of 3 for every key tried). A few constant bytes after the index
//! mix it into the whole hash.
//!
//! When the key has a hash tag, the suffix goes *inside* the tag (`{user}:x` → `{user::3.copy}:x`):
//! only the tag is hashed, so a suffix outside it would put every copy on the same server.

use bytes::{BufMut, Bytes, BytesMut};

/// The name of copy `i` of `key`.
pub fn copy_key(key: &[u8], i: usize, tag: Option<[u8; 2]>) -> Bytes {
    let suffix = format!("::{i}.copy");
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
        assert_eq!(
            copy_key(b"user:1", 3, None),
            Bytes::from_static(b"user:1::3.copy")
        );
        assert_eq!(
            copy_key(b"{user}:1", 0, Some(*b"{}")),
            Bytes::from_static(b"{user::0.copy}:1")
        );
        // No tag in the key, or an empty one: the whole key is hashed, suffix at the end.
        assert_eq!(
            copy_key(b"plain", 1, Some(*b"{}")),
            Bytes::from_static(b"plain::1.copy")
        );
        assert_eq!(
            copy_key(b"{}x", 2, Some(*b"{}")),
            Bytes::from_static(b"{}x::2.copy")
        );
    }
}

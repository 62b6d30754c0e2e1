//! A multi-key request cut per server (memcached `get a b c`, Redis MGET/MSET/DEL ...): which
//! servers it touches, in first-seen order, and which of them carries each key, so the replies
//! can be merged back in the client's key order.

/// Parts in first-seen order; `part_of[i]` is the part of the request's `i`-th key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub servers: Vec<usize>,
    pub part_of: Vec<usize>,
}

impl Split {
    /// Place every key with `place`; None when a key has no server (none in service).
    pub fn by_server<'a>(
        keys: impl IntoIterator<Item = &'a [u8]>,
        place: impl Fn(&[u8]) -> Option<usize>,
    ) -> Option<Split> {
        let mut split = Split::default();
        for key in keys {
            split.add(place(key)?);
        }
        Some(split)
    }

    /// The next key goes to `server`: returns its part (a new one for a server not seen yet).
    pub fn add(&mut self, server: usize) -> usize {
        let p = match self.servers.iter().position(|&s| s == server) {
            Some(p) => p,
            None => {
                self.servers.push(server);
                self.servers.len() - 1
            }
        };
        self.part_of.push(p);
        p
    }

    /// For each part, the indices of its keys in request order.
    pub fn keys_of_parts(&self) -> Vec<Vec<usize>> {
        let mut parts = vec![Vec::new(); self.servers.len()];
        for (i, &p) in self.part_of.iter().enumerate() {
            parts[p].push(i);
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_in_first_seen_order() {
        let place = |k: &[u8]| (k[0] != b'x').then(|| (k[0] - b'a') as usize % 3);
        let keys: [&[u8]; 5] = [b"c", b"a", b"d", b"c", b"b"];
        let s = Split::by_server(keys, place).unwrap();
        assert_eq!(s.servers, [2, 0, 1]);
        assert_eq!(s.part_of, [0, 1, 1, 0, 2]);
        assert_eq!(s.keys_of_parts(), [vec![0, 3], vec![1, 2], vec![4]]);
        let with_unplaced: [&[u8]; 2] = [b"a", b"x"];
        assert_eq!(Split::by_server(with_unplaced, place), None);
    }
}

//! twemproxy's key hashes (hashkit), one file per function, each tested against known vectors.
//!
//! Every function is a port of the C in twemproxy 0.5.0's `src/hashkit/`, including its
//! accidents: most of them read the key through a signed `char`, so bytes >= 0x80 are
//! sign-extended; `fnv1a_64` is really 32-bit; `crc32` keeps only 15 bits. Changing any of these
//! would move keys relative to a nutcracker fleet, which is exactly what kvrouter must not do.

pub mod crc16;
pub mod crc32;
pub mod crc32a;
pub mod fnv1_32;
pub mod fnv1_64;
pub mod fnv1a_32;
pub mod fnv1a_64;
pub mod hsieh;
pub mod jenkins;
pub mod md5;
pub mod murmur;
pub mod one_at_a_time;

#[cfg(test)]
mod test_vectors;

/// A twemproxy hash function, by its configuration name.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashKind {
    OneAtATime,
    Md5,
    Crc16,
    Crc32,
    Crc32a,
    Fnv1_64,
    Fnv1a_64,
    Fnv1_32,
    Fnv1a_32,
    Hsieh,
    Murmur,
    Jenkins,
}

/// twemproxy's hash functions, in hashkit's HASH_CODEC order: the one table of their config
/// names and implementations.
/// A hash function's row: its kind, config name and implementation.
type Row = (HashKind, &'static str, fn(&[u8]) -> u32);

const TABLE: [Row; 12] = [
    (HashKind::OneAtATime, "one_at_a_time", one_at_a_time::hash),
    (HashKind::Md5, "md5", md5::hash),
    (HashKind::Crc16, "crc16", crc16::hash),
    (HashKind::Crc32, "crc32", crc32::hash),
    (HashKind::Crc32a, "crc32a", crc32a::hash),
    (HashKind::Fnv1_64, "fnv1_64", fnv1_64::hash),
    (HashKind::Fnv1a_64, "fnv1a_64", fnv1a_64::hash),
    (HashKind::Fnv1_32, "fnv1_32", fnv1_32::hash),
    (HashKind::Fnv1a_32, "fnv1a_32", fnv1a_32::hash),
    (HashKind::Hsieh, "hsieh", hsieh::hash),
    (HashKind::Murmur, "murmur", murmur::hash),
    (HashKind::Jenkins, "jenkins", jenkins::hash),
];

impl HashKind {
    pub const ALL: [HashKind; 12] = {
        let mut all = [HashKind::OneAtATime; 12];
        let mut i = 0;
        while i < 12 {
            all[i] = TABLE[i].0;
            i += 1;
        }
        all
    };

    fn entry(self) -> &'static Row {
        &TABLE[self as usize]
    }

    /// The name used in config files (`one_at_a_time`, `md5`, ..., `fnv1a_64`, ...).
    pub fn name(self) -> &'static str {
        self.entry().1
    }

    pub fn from_name(name: &str) -> Option<HashKind> {
        TABLE.iter().find(|e| e.1 == name).map(|e| e.0)
    }

    /// The 32-bit hash twemproxy computes for `key`.
    pub fn hash(self, key: &[u8]) -> u32 {
        (self.entry().2)(key)
    }
}

#[cfg(test)]
mod tests {
    use super::HashKind;

    #[test]
    fn the_table_is_in_enum_order() {
        for (i, e) in super::TABLE.iter().enumerate() {
            assert_eq!(e.0 as usize, i, "{}", e.1);
        }
    }

    #[test]
    fn names_round_trip() {
        for h in HashKind::ALL {
            assert_eq!(HashKind::from_name(h.name()), Some(h));
        }
        assert_eq!(HashKind::from_name("fnv1a"), None);
        assert_eq!(HashKind::from_name("FNV1A_64"), None);
    }

    #[test]
    fn dispatch_reaches_each_function() {
        assert_eq!(HashKind::Fnv1a_64.hash(b"a"), 0x8601_ec8c);
        assert_eq!(HashKind::Crc32a.hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(HashKind::Jenkins.hash(b""), 0xdead_beef + 13);
    }
}

//! twemproxy's key hashes (hashkit), one file per function, each tested against known vectors.

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

impl HashKind {
    pub const ALL: [HashKind; 12] = [
        HashKind::OneAtATime,
        HashKind::Md5,
        HashKind::Crc16,
        HashKind::Crc32,
        HashKind::Crc32a,
        HashKind::Fnv1_64,
        HashKind::Fnv1a_64,
        HashKind::Fnv1_32,
        HashKind::Fnv1a_32,
        HashKind::Hsieh,
        HashKind::Murmur,
        HashKind::Jenkins,
    ];

    /// The name used in config files (`one_at_a_time`, `md5`, ..., `fnv1a_64`, ...).
    pub fn name(self) -> &'static str {
        unimplemented!()
    }

    pub fn from_name(name: &str) -> Option<HashKind> {
        Self::ALL.into_iter().find(|h| h.name() == name)
    }

    /// The 32-bit hash twemproxy computes for `key`.
    pub fn hash(self, key: &[u8]) -> u32 {
        let _ = key;
        unimplemented!()
    }
}

//! Reference values for the hashes without a published test suite in twemproxy's form.
//!
//! Produced by compiling hashkit's C functions with gcc on x86_64 (signed `char`), outside this
//! repository, over keys that exercise every tail length and bytes >= 0x80.

pub const HSIEH: &[(&[u8], u32)] = &[
    (b"", 0x00000000),
    (b"a", 0x93642e87),
    (b"ab", 0x5b8c0ec3),
    (b"abc", 0xe5186b3a),
    (b"abcd", 0x3ab452d8),
    (b"abcde", 0x84786722),
    (b"foobar", 0x07a5862c),
    (b"hello world", 0x4f799873),
    (b"123456789012", 0x695675ee),
    (b"1234567890123", 0x26a12107),
    (b"The quick brown fox jumps over the lazy dog", 0x1c19ee97),
    (b"\x80", 0xd6f4cb32),
    (b"ab\xff", 0x75dc9fd6),
    (b"\xe4\xb8\xad\xe6\x96\x87\xfe", 0xf2b9bce7),
    (b"key:\x90\xa0\xb0\xc0\xd0", 0x3e9d7667),
];

pub const MURMUR: &[(&[u8], u32)] = &[
    (b"", 0x00000000),
    (b"a", 0x4b41757c),
    (b"ab", 0xe3b54dfb),
    (b"abc", 0x7b0cc428),
    (b"abcd", 0xef6a86af),
    (b"abcde", 0x9a263eda),
    (b"foobar", 0xabecff17),
    (b"hello world", 0x5e19153b),
    (b"123456789012", 0xc1017d95),
    (b"1234567890123", 0xeed45945),
    (b"The quick brown fox jumps over the lazy dog", 0x30c79125),
    (b"\x80", 0x90556245),
    (b"ab\xff", 0xec9082b2),
    (b"\xe4\xb8\xad\xe6\x96\x87\xfe", 0xbf5bb954),
    (b"key:\x90\xa0\xb0\xc0\xd0", 0xf4a0da76),
];

pub const JENKINS: &[(&[u8], u32)] = &[
    (b"", 0xdeadbefc),
    (b"a", 0xe0a38690),
    (b"ab", 0xc1b5695b),
    (b"abc", 0x8f415600),
    (b"abcd", 0xd512151a),
    (b"abcde", 0x5cff335b),
    (b"foobar", 0x0fdd8b60),
    (b"hello world", 0x153343fb),
    (b"123456789012", 0x84055907),
    (b"1234567890123", 0xc5f8e233),
    (b"The quick brown fox jumps over the lazy dog", 0x12b8163c),
    (b"\x80", 0xb16fde48),
    (b"ab\xff", 0xe9af676b),
    (b"\xe4\xb8\xad\xe6\x96\x87\xfe", 0x7e552f1d),
    (b"key:\x90\xa0\xb0\xc0\xd0", 0x812ef522),
];

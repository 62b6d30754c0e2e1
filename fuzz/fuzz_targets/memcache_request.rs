//! Feed arbitrary bytes to the memcached request parser, in two chunks (the first byte picks
//! the split), the way a client connection does: parse until more bytes are needed or the stream
//! is fatal, honouring `swallow`. Checks the invariants the server relies on.
#![no_main]

use bytes::BytesMut;
use kvrouter::protocol::memcache::{parse_request, Limits, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_key_len: 250,
        item_size_max: 4096,
        max_line_len: 2048,
    };
    let cut = (cut as usize * data.len() / 255).min(data.len());
    let mut buf = BytesMut::new();
    let mut swallow = 0usize;
    for chunk in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(chunk);
        loop {
            let skip = swallow.min(buf.len());
            let _ = buf.split_to(skip);
            swallow -= skip;
            if swallow > 0 {
                break;
            }
            let before = buf.len();
            match parse_request(&mut buf, &limits) {
                Ok(None) => {
                    assert_eq!(before, buf.len(), "Ok(None) must consume nothing");
                    break;
                }
                Ok(Some(Parsed::Request(r))) => {
                    assert_eq!(before - buf.len(), r.raw.len());
                    assert!(!r.command.is_retrieval() || !r.keys.is_empty());
                    assert!(!r.quiet || r.command.is_meta());
                    assert!(!r.command.is_meta() || r.keys.len() == usize::from(r.command.name() != "mn"));
                    let back = r.to_backend();
                    assert!(back.len() <= r.raw.len());
                }
                Ok(Some(
                    Parsed::Error { reply, swallow: s } | Parsed::TooLarge { reply, swallow: s, .. },
                )) => {
                    assert!(before > buf.len(), "an error must consume its line");
                    assert!(reply.is_empty() || reply.ends_with(b"\r\n"));
                    swallow = s;
                }
                Err(fatal) => {
                    // Empty: an HTTP request line, closed without a reply.
                    assert!(fatal.reply.is_empty() || fatal.reply.ends_with(b"\r\n"));
                    return;
                }
            }
        }
    }
});

//! Fuzz the RESP request parser: never panic, and split input gives the same requests.
#![no_main]

use bytes::BytesMut;
use kvrouter::protocol::resp::{parse_request, RespLimits};
use libfuzzer_sys::fuzz_target;

fn all(chunks: &[&[u8]]) -> (Vec<Vec<bytes::Bytes>>, bool) {
    let limits = RespLimits::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            match parse_request(&mut buf, &limits) {
                Ok(Some(r)) => out.push(r.args),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

// The first byte picks where to split the rest.
fuzz_target!(|data: &[u8]| {
    if let Some((&cut, rest)) = data.split_first() {
        let cut = cut as usize % (rest.len() + 1);
        let (a, b) = rest.split_at(cut);
        let (reqs, failed) = all(&[a, b]);
        let (ref_reqs, ref_failed) = all(&[rest]);
        if !failed && !ref_failed {
            assert_eq!(reqs, ref_reqs);
        }
    }
});

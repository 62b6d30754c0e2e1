//! Fuzz the RESP reply scanner and frame parser: never panic, scan and parse agree, and a
//! resumable scan over a split buffer finds the same length.
#![no_main]

use bytes::{Bytes, BytesMut};
use kvrouter::protocol::resp::{parse_frame, scan_reply, ReplyScanner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scanned = scan_reply(data);
    let parsed = parse_frame(&Bytes::copy_from_slice(data));
    if let Ok((frame, n)) = &parsed {
        assert_eq!(scanned.as_ref().ok().copied().flatten(), Some(*n));
        // What we encode, we scan and parse back to the same frame.
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        let out = out.freeze();
        assert_eq!(scan_reply(&out).unwrap(), Some(out.len()));
        let mut r2 = BytesMut::new();
        frame.encode_resp2(&mut r2);
        assert!(parse_frame(&r2.freeze()).is_ok());
    }
    if let Ok(Some(n)) = scanned {
        for cut in [n / 3, n / 2, n - 1] {
            let mut s = ReplyScanner::new();
            assert_eq!(s.scan(&data[..cut]).unwrap(), None);
            assert_eq!(s.scan(data).unwrap(), Some(n));
        }
    }
});

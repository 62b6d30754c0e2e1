//! Feed arbitrary bytes to the backend reply scanner (classic and meta modes, resumable and
//! stateless) and split every complete retrieval reply into items.
#![no_main]

use bytes::Bytes;
use kvrouter::protocol::memcache::{scan_reply, split_items, ReplyScanner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let retrieval = mode & 1 == 1;
    // Meta replies (mg/ms/md/ma/me), quiet or not, in a second pass over the same bytes.
    let meta = mode & 2 == 2;
    let step = (mode as usize >> 2).max(1);
    if meta {
        let mut scanner = ReplyScanner::new();
        let (mut start, mut end) = (0, 0);
        while end < data.len() {
            end = (end + step).min(data.len());
            loop {
                let buf = &data[start..end];
                let resumed = scanner.scan_meta(buf, retrieval);
                assert_eq!(resumed, ReplyScanner::new().scan_meta(buf, retrieval));
                match resumed {
                    Ok(Some(n)) => {
                        assert!(n > 0 && n <= buf.len());
                        assert!(!retrieval || buf[..n].ends_with(b"MN\r\n"));
                        start += n;
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
        return;
    }
    let mut scanner = ReplyScanner::new();
    let mut start = 0; // beginning of the current reply in `data`
    let mut end = 0; // bytes "received" so far
    while end < data.len() {
        end = (end + step).min(data.len());
        loop {
            let buf = &data[start..end];
            let resumed = scanner.scan(buf, retrieval);
            assert_eq!(resumed, scan_reply(buf, retrieval));
            match resumed {
                Ok(Some(n)) => {
                    assert!(n > 0 && n <= buf.len());
                    if retrieval {
                        let reply = Bytes::copy_from_slice(&buf[..n]);
                        if let Ok(items) = split_items(&reply) {
                            let total: usize = items.iter().map(|i| i.raw.len()).sum();
                            assert!(total < n);
                        }
                    }
                    start += n;
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

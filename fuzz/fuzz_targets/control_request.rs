//! Control-socket requests are untrusted bytes: any line gives a request or an error, never a
//! panic; a request that parses survives a round trip, and its filter's check never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vipgate::protocol::{parse_request, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse_request(data) else {
        return;
    };
    if let Request::Conns { filter, .. } | Request::Flush { filter, .. } = &req {
        let _ = filter.check();
    }
    let again = serde_json::to_vec(&req).expect("a request serializes");
    assert_eq!(parse_request(&again).as_ref(), Ok(&req));
});

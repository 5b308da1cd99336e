//! Parses arbitrary bytes as NAT-PMP (RFC 6886) and PCP (RFC 6887) requests and answers.
//! Checks: no panic; whatever decodes re-encodes to bytes that decode to the same message
//! (for a PCP answer, to the same fields: its reserved bytes and options are not kept).

#![no_main]

use libfuzzer_sys::fuzz_target;
use punchraw::core::portmap::{natpmp, pcp};

fuzz_target!(|data: &[u8]| {
    if let Some(r) = natpmp::Request::decode(data) {
        assert_eq!(natpmp::Request::decode(&r.encode()), Some(r));
    }
    if let Some(r) = natpmp::Response::decode(data) {
        assert_eq!(natpmp::Response::decode(&r.encode()), Some(r));
    }
    if let Some(r) = pcp::Request::decode(data) {
        assert_eq!(pcp::Request::decode(&r.encode()), Some(r));
    }
    if let Some(r) = pcp::Response::decode(data) {
        assert_eq!(pcp::Response::decode(&r.encode()), Some(r));
    }
});

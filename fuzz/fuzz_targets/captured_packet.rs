//! Feeds arbitrary bytes to `wire::Seen::parse`, the reader of packets from the AF_PACKET
//! socket a TCP punch and the TCP probe watch (anything on the network can put bytes there),
//! and to the raw engine's helpers for its copies of first data (`wire::tcp_payload_len`,
//! `wire::with_tcp_checksum_v4`).
//!
//! Checks: no panic; a parsed TCP segment or quoted segment keeps one address family; a
//! segment given its checksum keeps its length.

#![no_main]

use libfuzzer_sys::fuzz_target;
use punchraw::core::wire::{tcp_payload_len, with_tcp_checksum_v4, Seen};

fuzz_target!(|data: &[u8]| {
    let _ = tcp_payload_len(data);
    if let Some(copy) = with_tcp_checksum_v4(data) {
        assert_eq!(copy.len(), data.len());
    }
    match Seen::parse(data) {
        Some(Seen::Tcp { src, dst, .. }) => assert_eq!(src.is_ipv4(), dst.is_ipv4()),
        Some(Seen::IcmpTcp {
            from,
            quoted_src,
            quoted_dst,
            ..
        }) => {
            assert_eq!(quoted_src.is_ipv4(), quoted_dst.is_ipv4());
            let _ = from;
        }
        None => {}
    }
});

//! Feeds arbitrary bytes to `StunServer::handle` under every server configuration, transport,
//! arrival endpoint and source address family, and checks the server's safety properties:
//! it never panics, never aims a reply at an IP other than the sender's, answers only
//! well-formed requests with well-formed responses, and never answers with more bytes than it
//! received beyond a fixed-size response (so it cannot be used as an amplifier).

#![no_main]

use libfuzzer_sys::fuzz_target;
use punchraw::server::{DropReason, Outcome, ServerConfig, StunServer, Transport};
use punchraw::stun::{attr_type, Class, Message};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The largest error response: 420 with the 16 unknown types the server lists, plus
/// FINGERPRINT (20 + (8 + 20) + (4 + 32) + 8).
const MAX_ERROR_RESPONSE: usize = 92;

fn configs() -> Vec<ServerConfig> {
    let v4 = |d| IpAddr::V4(Ipv4Addr::new(198, 51, 100, d));
    let v6 = |d| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, d));
    vec![
        // The plain server the fixed 92-byte bound was worked out for.
        ServerConfig {
            ip: v4(1),
            alt_ip: None,
            port: 3478,
            alt_port: 3479,
            software: None,
        },
        ServerConfig {
            ip: v4(1),
            alt_ip: Some(v4(2)),
            port: 3478,
            alt_port: 3479,
            software: None,
        },
        ServerConfig {
            ip: v6(1),
            alt_ip: Some(v6(2)),
            port: 3478,
            alt_port: 3479,
            software: Some("punchraw fuzz".into()),
        },
    ]
}

fn addr_attr_len(a: SocketAddr) -> usize {
    4 + if a.is_ipv4() { 8 } else { 20 }
}

/// Size of this configuration's success response to `src` without PADDING: XOR-MAPPED- and
/// MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS, SOFTWARE, FINGERPRINT (the RFC 3489 form
/// is smaller). Taken at the largest origin/other over all endpoints.
fn success_len(cfg: &ServerConfig, src: SocketAddr) -> usize {
    let largest_addr = cfg
        .endpoints()
        .iter()
        .map(|(_, a)| addr_attr_len(*a))
        .max()
        .unwrap_or(0);
    20 + 2 * addr_attr_len(src)
        + largest_addr
        + if cfg.discovery() { largest_addr } else { 0 }
        + cfg
            .software
            .as_ref()
            .map_or(0, |s| 4 + ((s.len() + 3) & !3))
        + 8
}

fuzz_target!(|data: &[u8]| {
    let parsed = Message::parse(data).ok();
    let padded = parsed.is_some_and(|m| m.attributes().any(|a| a.typ == attr_type::PADDING));
    let sources = [
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 40000),
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 9, 9, 9, 9, 9, 9)),
            40001,
        ),
    ];
    let mut out = Vec::new();
    for cfg in configs() {
        let endpoints = cfg.endpoints();
        let mut server = StunServer::new(cfg.clone());
        for transport in [Transport::Udp, Transport::Tcp] {
            for &(local, _) in &endpoints {
                for src in sources {
                    let outcome = server.handle(transport, local, src, data, &mut out);
                    let (from, to) = match outcome {
                        Outcome::Reply { from, to } => (from, to),
                        Outcome::Drop(why) => {
                            assert!(out.is_empty(), "dropped but wrote a reply");
                            let want = match parsed {
                                None => DropReason::Malformed,
                                Some(m) => {
                                    assert_ne!(m.message_type().class, Class::Request);
                                    DropReason::NotRequest
                                }
                            };
                            assert_eq!(why, want);
                            continue;
                        }
                    };
                    let req = parsed.expect("replied to something that does not parse");
                    assert_eq!(req.message_type().class, Class::Request);
                    assert_eq!(to.ip(), src.ip(), "reply aimed away from the sender");
                    assert_ne!(to.port(), 0);
                    assert!(
                        endpoints.iter().any(|(e, _)| *e == from),
                        "reply from {from:?}, not one of this server's endpoints"
                    );
                    if transport == Transport::Tcp {
                        assert_eq!((from, to), (local, src), "TCP replies use the connection");
                    }
                    let resp = Message::parse(&out).expect("the server's reply parses");
                    assert_eq!(resp.transaction_id(), req.transaction_id());
                    assert_eq!(resp.message_type().method, req.message_type().method);
                    assert!(matches!(
                        resp.message_type().class,
                        Class::Success | Class::Error
                    ));
                    let fixed = MAX_ERROR_RESPONSE.max(success_len(&cfg, src));
                    let bound = data.len().max(fixed + if padded { 4 } else { 0 });
                    assert!(
                        out.len() <= bound,
                        "{} byte reply to a {} byte request (padded: {padded})",
                        out.len(),
                        data.len()
                    );
                    if !padded && !cfg.discovery() && src.is_ipv4() && cfg.software.is_none() {
                        assert!(out.len() <= data.len().max(MAX_ERROR_RESPONSE));
                    }
                }
            }
        }
    }
});

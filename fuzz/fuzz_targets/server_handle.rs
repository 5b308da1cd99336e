//! Feeds arbitrary bytes to `StunServer::handle` under every server configuration, transport,
//! arrival endpoint and source address family, and checks the server's safety properties:
//! it never panics, never aims a reply at an IP other than the sender's, answers only
//! well-formed requests with well-formed responses, and never answers with more than
//! `max(request length, coturn's 92-byte answer)` (140 bytes for an IPv6 source), so it is no
//! better an amplifier than coturn; `--per-source-limit` drops only UDP requests.

#![no_main]

use libfuzzer_sys::fuzz_target;
use punchraw::core::server::{
    response_limit, DropReason, Outcome, ServerConfig, SourceLimiter, StunServer, Transport,
    COTURN_BINDING_V4,
};
use punchraw::core::stun::{Class, Message};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

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
            per_source_limit: None,
            seed: 0,
        },
        ServerConfig {
            ip: v4(1),
            alt_ip: Some(v4(2)),
            port: 3478,
            alt_port: 3479,
            software: None,
            per_source_limit: None,
            seed: 0,
        },
        ServerConfig {
            ip: v6(1),
            alt_ip: Some(v6(2)),
            port: 3478,
            alt_port: 3479,
            software: Some("punchraw fuzz".into()),
            per_source_limit: None,
            seed: 0,
        },
        // A long SOFTWARE that never fits a small answer, and a per-source limit of 2.
        ServerConfig {
            ip: v4(1),
            alt_ip: Some(v4(2)),
            port: 3478,
            alt_port: 3479,
            software: Some("s".repeat(300)),
            per_source_limit: Some(2),
            seed: 0,
        },
    ]
}

fuzz_target!(|data: &[u8]| {
    let parsed = Message::parse(data).ok();
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
        // Virtual time stands still, so the limited server answers 2 per source, then drops.
        let t0 = Instant::now();
        // A small table: the default 64 Ki buckets per input would dominate the run time.
        let limiter = cfg
            .per_source_limit
            .map(|r| Arc::new(SourceLimiter::with_buckets(r, t0, 64, cfg.seed)));
        let mut server = StunServer::with_limiter(cfg.clone(), limiter);
        for transport in [Transport::Udp, Transport::Tcp] {
            for &(local, _) in &endpoints {
                for src in sources {
                    let outcome = server.handle(t0, transport, local, src, data, &mut out);
                    let (from, to) = match outcome {
                        Outcome::Reply { from, to } => (from, to),
                        Outcome::Drop(why) => {
                            assert!(out.is_empty(), "dropped but wrote a reply");
                            if why == DropReason::RateLimited {
                                assert!(cfg.per_source_limit.is_some());
                                assert_eq!(transport, Transport::Udp, "TCP is never limited");
                                continue;
                            }
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
                    // The amplification bound: never more than the request or coturn's
                    // answer to a bare Binding request (92 bytes to IPv4, 140 to IPv6).
                    let bound = response_limit(data.len(), src);
                    assert!(
                        out.len() <= bound,
                        "{} byte reply to a {} byte request from {src}",
                        out.len(),
                        data.len()
                    );
                    if src.is_ipv4() {
                        assert!(out.len() <= data.len().max(COTURN_BINDING_V4));
                    }
                }
            }
        }
    }
});

//! Drives the sans-IO TURN server (`core::turn::server::TurnServer`) with arbitrary datagrams
//! from clients (over UDP and TCP) and from peers to relay ports, over advancing virtual
//! time, with the driver's answers to its socket requests (some refused). Records whose
//! first byte says so are wrapped as a request signed with a valid user's key and the latest
//! nonce the server handed out (or with session credentials, answered by a lookup), so the
//! fuzzer reaches Allocate, Refresh, CreatePermission, ChannelBind and the relaying paths,
//! not only the 401.
//!
//! Checks: no panic; transmits leave only from relay ports that are open; an answer to a
//! request that carried no MESSAGE-INTEGRITY stays within the amplification bound; a port is
//! never opened twice nor closed unopened; the active count matches the open sockets once
//! every open request is answered.
//!
//! Input: records `[op: u8][advance: u8][len: u8][len bytes]`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use punchraw::core::server::response_limit;
use punchraw::core::stun::{
    attr_type, long_term_key, Attribute, Class, Encoder, Message, MessageType, Method,
    TransactionId,
};
use punchraw::core::turn::server::session::{session_credentials, SessionInfo};
use punchraw::core::turn::server::{
    ClientId, OpenError, RelayEvent, Source, TurnServer, TurnServerConfig, Via,
};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let relay_ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
    let mut cfg = TurnServerConfig::new(
        relay_ip,
        (50000, 50003),
        vec![("user".into(), "pass".into())],
    );
    cfg.user_quota = 3;
    cfg.session_credentials = true;
    cfg.max_bytes = Some(5000);
    let key = long_term_key("user", "punchraw", "pass");
    let (session_user, session_pass) = session_credentials(&[9; 32], "s").expect("a valid name");
    let session_key = long_term_key(&session_user, "punchraw", &session_pass);
    let t0 = Instant::now();
    let mut srv = TurnServer::new(cfg, t0).expect("valid config");
    let clients = [
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 4000),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 4001),
    ];
    let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)), 7000);
    let mut now = t0;
    let mut nonce: Vec<u8> = Vec::new();
    let mut open: BTreeSet<u16> = BTreeSet::new();
    let mut n: u32 = 0;
    let mut rest = data;
    while rest.len() >= 3 {
        let (op, advance, len) = (rest[0], rest[1], usize::from(rest[2]));
        let body = &rest[3..(3 + len).min(rest.len())];
        rest = &rest[(3 + len).min(rest.len())..];
        now += Duration::from_secs(u64::from(advance));
        let client = ClientId {
            via: if op & 0x10 != 0 { Via::Tcp } else { Via::Udp },
            addr: clients[usize::from(op >> 7)],
        };
        let mut unauth_len = None;
        match op % 4 {
            0 => {
                if Message::parse(body).is_ok_and(|m| {
                    !m.attributes()
                        .any(|a| a.typ == attr_type::MESSAGE_INTEGRITY)
                }) {
                    unauth_len = Some(body.len());
                }
                srv.handle_client(now, client, body);
            }
            1 => {
                let port = 50000 + u16::from(op >> 5 & 3);
                srv.handle_peer(now, port, peer, body);
            }
            _ => {
                // A signed request: method from the body's first byte, then records
                // `[type: u16][len: u8][value]` as attributes.
                let Some((&m, mut b)) = body.split_first() else {
                    continue;
                };
                let method = [
                    Method::Allocate,
                    Method::Refresh,
                    Method::CreatePermission,
                    Method::ChannelBind,
                ][usize::from(m % 4)];
                n += 1;
                let mut tid = [0u8; 16];
                tid[..4].copy_from_slice(&0x2112_A442u32.to_be_bytes());
                tid[12..].copy_from_slice(&n.to_be_bytes());
                let mut out = Vec::new();
                let mt = MessageType {
                    method,
                    class: Class::Request,
                };
                let mut e = Encoder::new(&mut out, mt, TransactionId(tid));
                if method == Method::Allocate && m & 0x80 == 0 {
                    e.push(&Attribute::RequestedTransport(17));
                }
                while b.len() >= 3 {
                    let typ = u16::from_be_bytes([b[0], b[1]]);
                    let l = usize::from(b[2]).min(b.len() - 3);
                    if typ != attr_type::MESSAGE_INTEGRITY && typ != attr_type::FINGERPRINT {
                        e.push(&Attribute::Other {
                            typ,
                            value: &b[3..3 + l],
                        });
                    }
                    b = &b[3 + l..];
                }
                // With bit 6 of the method byte, session credentials of session "s".
                let (user, k) = if m & 0x40 != 0 {
                    (session_user.as_bytes(), &session_key)
                } else {
                    (&b"user"[..], &key)
                };
                e.push(&Attribute::Username(user))
                    .push(&Attribute::Realm("punchraw"))
                    .push(&Attribute::Nonce(&nonce))
                    .message_integrity(k)
                    .fingerprint();
                srv.handle_client(now, client, &out);
            }
        }
        if srv.poll_timeout().is_some_and(|t| t <= now) {
            srv.handle_timeout(now);
        }
        while let Some(ev) = srv.poll_event() {
            match ev {
                RelayEvent::Open { port } => {
                    assert!((50000..=50003).contains(&port));
                    if advance % 7 == 3 {
                        srv.relay_opened(now, port, Err(OpenError::InUse));
                    } else if advance % 11 == 5 {
                        srv.relay_opened(now, port, Err(OpenError::Failed));
                    } else {
                        assert!(open.insert(port), "port {port} opened twice");
                        srv.relay_opened(now, port, Ok(()));
                    }
                }
                RelayEvent::Close { port } => assert!(open.remove(&port), "closed unopened"),
                RelayEvent::Lookup { session } => {
                    // Session "s" exists, with two members; any other does not.
                    let info = (session == "s").then(|| SessionInfo {
                        key: [9; 32],
                        members: vec![peer, clients[1]],
                    });
                    srv.session_found(now, &session, info);
                }
            }
        }
        while let Some(tx) = srv.poll_transmit() {
            match tx.from {
                Source::Relay(port) => assert!(open.contains(&port), "from a closed port"),
                Source::Primary(_) => {
                    if let Some(l) = unauth_len {
                        assert!(tx.payload.len() <= response_limit(l, tx.to));
                    }
                    if let Ok(m) = Message::parse(&tx.payload) {
                        if let Some(Ok(Attribute::Nonce(v))) = m.get(attr_type::NONCE) {
                            nonce = v.to_vec();
                        }
                    }
                }
            }
        }
        assert_eq!(srv.active(), open.len(), "every allocation has its socket");
    }
    srv.shutdown();
    while let Some(ev) = srv.poll_event() {
        if let RelayEvent::Close { port } = ev {
            assert!(open.remove(&port));
        }
    }
    assert!(open.is_empty(), "shutdown closes every socket");
});

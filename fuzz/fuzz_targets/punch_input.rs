//! Feeds arbitrary datagrams to `Punch::handle_input`, interleaved with timeouts, for both
//! roles and every strategy. A datagram that parses as STUN is also fed re-signed (USERNAME
//! and MESSAGE-INTEGRITY-SHA256 under the session key), so the fuzzer reaches the
//! authenticated paths (answers, nomination, connection) it could never forge.
//!
//! Checks: no panic; what the machine sends is bounded (no datagram beyond 1500 bytes) and
//! goes to a socket it owns; its timeout never goes backwards past `now`.
//!
//! Input: one config byte, then records `[socket/source: u8][advance: u8][len: u16 BE]
//! [len bytes]`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use punchraw::core::classify::{Allocation, Behavior};
use punchraw::core::punch::{Punch, PunchConfig, ATTR_CERT_FINGERPRINT};
use punchraw::core::rendezvous::{NatInfo, PeerData};
use punchraw::core::stun::{attr_type, Attribute, Encoder, Message};
use punchraw::core::Machine;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const KEY: [u8; 32] = [9; 32];
const MY_ID: &str = "0123456789abcdef";
const PEER_ID: &str = "fedcba9876543210";

fn nat(b: u8) -> NatInfo {
    let beh = |x: u8| match x % 3 {
        0 => Behavior::EndpointIndependent,
        1 => Behavior::AddressDependent,
        _ => Behavior::AddressAndPortDependent,
    };
    NatInfo {
        mapping: beh(b),
        filtering: beh(b >> 2),
        allocation: match (b >> 4) % 3 {
            0 => Allocation::Preserving,
            1 => Allocation::Sequential,
            _ => Allocation::Random,
        },
        delta: Some(1),
        // A narrow block (down to one port, or inverted as a hostile peer could send it)
        // exercises the block-aware random probing.
        range: (b & 0x80 != 0).then(|| [40000 + u16::from(b & 0x3f), 40000 + u16::from(b & 0x0f)]),
    }
}

/// `data` re-signed as the peer would: same type, transaction ID and attributes (minus any
/// USERNAME/integrity/fingerprint), then USERNAME `user` ("<us>:<peer>", as requests carry),
/// the peer's certificate fingerprint and MESSAGE-INTEGRITY-SHA256.
fn resign(m: &Message<'_>, user: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = Encoder::new(&mut out, m.message_type(), m.transaction_id());
    e.push(&Attribute::Username(user.as_bytes()));
    for a in m.attributes().take(8) {
        match a.typ {
            attr_type::USERNAME
            | attr_type::MESSAGE_INTEGRITY
            | attr_type::MESSAGE_INTEGRITY_SHA256
            | attr_type::FINGERPRINT
            | ATTR_CERT_FINGERPRINT => {}
            typ => {
                e.push(&Attribute::Other {
                    typ,
                    value: a.value,
                });
            }
        }
    }
    e.push(&Attribute::Other {
        typ: ATTR_CERT_FINGERPRINT,
        value: &[0x42; 32],
    });
    e.message_integrity_sha256(&KEY);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, mut rest)) = data.split_first() else {
        return;
    };
    let me: SocketAddr = "198.51.100.2:40000".parse().unwrap();
    let peer: SocketAddr = "198.51.100.1:50000".parse().unwrap();
    let (my_id, peer_id) = if c & 0x80 != 0 {
        (MY_ID, PEER_ID)
    } else {
        // The other role (controlling is decided by the IDs).
        (PEER_ID, MY_ID)
    };
    let cfg = PunchConfig {
        my_id: my_id.into(),
        my_nat: nat(c),
        my_public: me,
        my_locals: vec!["10.0.0.2:40000".parse().unwrap()],
        my_mapped: None,
        peer: PeerData {
            id: peer_id.into(),
            public: peer,
            locals: vec!["10.0.1.2:50000".parse().unwrap()],
            nat: nat(c.rotate_left(3)),
            tcp: None,
            mapped: None,
            relayed: None,
            udp_blocked: false,
            pairing: None,
            rtt_ms: None,
        },
        key: KEY,
        fingerprint: [0x24; 32],
        budget: Duration::from_secs(3),
        rate: 200,
        window: 4,
        sweep_sockets: 8,
        seed: u64::from(c),
    };
    let sockets = cfg.sockets_needed().max(1);
    let user = format!("{my_id}:{peer_id}");
    let t0 = Instant::now();
    let mut now = t0;
    let mut p = Punch::new(cfg, t0);
    let drain = |p: &mut Punch| {
        for _ in 0..100_000 {
            let Some(t) = p.poll_transmit() else { break };
            assert!(t.payload.len() <= 1500, "{} byte datagram", t.payload.len());
            assert!(t.socket < sockets, "socket {} of {sockets}", t.socket);
        }
        while p.poll_event().is_some() {}
    };
    while rest.len() >= 4 {
        let (s, adv) = (rest[0], rest[1]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        rest = &rest[4..];
        let body = &rest[..len.min(rest.len())];
        rest = &rest[body.len()..];
        now += Duration::from_millis(u64::from(adv) * 5);
        p.handle_timeout(now);
        drain(&mut p);
        let socket = usize::from(s & 0x0f) % sockets;
        let from = if s & 0x10 != 0 {
            SocketAddr::new(peer.ip(), peer.port().wrapping_add(u16::from(s >> 5)))
        } else {
            peer
        };
        if let Ok(m) = Message::parse(body) {
            let signed = resign(&m, &user);
            p.handle_input(now, socket, from, &signed);
            drain(&mut p);
        }
        p.handle_input(now, socket, from, body);
        drain(&mut p);
        if let Some(t) = p.poll_timeout() {
            assert!(
                t + Duration::from_secs(3600) > now,
                "timeout far in the past"
            );
        }
        if p.is_done() {
            break;
        }
    }
});

//! The server against hand-built requests: the rules a well-behaved client never tests
//! (ChannelBind conflicts, 437, 442, 403, retransmitted Allocates) and the amplification
//! bound of unauthenticated answers, also as a property over arbitrary input.

use super::*;
use crate::core::server::response_limit;
use crate::core::stun::{attr_type, long_term_key, Attribute, Encoder, MessageType, TransactionId};
use proptest::prelude::*;

struct Raw {
    srv: TurnServer,
    t: Instant,
    client: ClientId,
    nonce: Vec<u8>,
    key: [u8; 16],
    n: u8,
}

fn tid(n: u8) -> TransactionId {
    let mut b = [n; 16];
    b[..4].copy_from_slice(&crate::core::stun::MAGIC_COOKIE.to_be_bytes());
    TransactionId(b)
}

fn code(b: &[u8]) -> Option<u16> {
    match Message::parse(b).ok()?.get(attr_type::ERROR_CODE) {
        Some(Ok(Attribute::ErrorCode(e))) => Some(e.code),
        _ => None,
    }
}

impl Raw {
    fn new() -> Raw {
        let t = Instant::now();
        let mut r = Raw {
            srv: TurnServer::new(config(), t).unwrap(),
            t,
            client: ClientId {
                via: Via::Udp,
                addr: client_addr(0),
            },
            nonce: Vec::new(),
            key: long_term_key(USER, "punchraw", PASS),
            n: 0,
        };
        // The first, unauthenticated Allocate fetches the nonce.
        let first = r.request(
            Method::Allocate,
            &[Attribute::RequestedTransport(17)],
            false,
        );
        let out = r.send(&first);
        let m = Message::parse(&out[0].payload).unwrap();
        let Some(Ok(Attribute::Nonce(n))) = m.get(attr_type::NONCE) else {
            panic!("401 without NONCE")
        };
        r.nonce = n.to_vec();
        r
    }

    fn request(&mut self, method: Method, attrs: &[Attribute<'_>], sign: bool) -> Vec<u8> {
        self.n += 1;
        self.request_tid(tid(self.n), method, attrs, sign)
    }

    fn request_tid(
        &self,
        tid: TransactionId,
        method: Method,
        attrs: &[Attribute<'_>],
        sign: bool,
    ) -> Vec<u8> {
        let mt = MessageType {
            method,
            class: Class::Request,
        };
        let mut out = Vec::new();
        let mut e = Encoder::new(&mut out, mt, tid);
        for a in attrs {
            e.push(a);
        }
        if sign {
            e.push(&Attribute::Username(USER.as_bytes()))
                .push(&Attribute::Realm("punchraw"))
                .push(&Attribute::Nonce(&self.nonce))
                .message_integrity(&self.key);
        }
        e.fingerprint();
        out
    }

    /// Sends `b`; opens relay sockets as asked; returns what the server sent.
    fn send(&mut self, b: &[u8]) -> Vec<RelayTransmit> {
        self.srv.handle_client(self.t, self.client, b);
        while let Some(ev) = self.srv.poll_event() {
            if let RelayEvent::Open { port } = ev {
                self.srv.relay_opened(self.t, port, Ok(()));
            }
        }
        std::iter::from_fn(|| self.srv.poll_transmit()).collect()
    }

    /// Sends `b` and returns the error code of the one answer (`None` for a success).
    fn answer(&mut self, b: &[u8]) -> Option<u16> {
        let out = self.send(b);
        assert_eq!(out.len(), 1, "one answer");
        let m = Message::parse(&out[0].payload).unwrap();
        assert_eq!(
            m.transaction_id(),
            Message::parse(b).unwrap().transaction_id()
        );
        code(&out[0].payload)
    }

    fn allocate(&mut self) -> Vec<u8> {
        let req = self.request(Method::Allocate, &[Attribute::RequestedTransport(17)], true);
        assert_eq!(self.answer(&req), None);
        req
    }
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], port))
}

#[test]
fn allocate_rules() {
    let mut r = Raw::new();
    // No REQUESTED-TRANSPORT: 400; TCP: 442; a DONT-FRAGMENT we cannot honour: 420.
    let req = r.request(Method::Allocate, &[], true);
    assert_eq!(r.answer(&req), Some(400));
    let req = r.request(Method::Allocate, &[Attribute::RequestedTransport(6)], true);
    assert_eq!(r.answer(&req), Some(442));
    let attrs = [Attribute::RequestedTransport(17), Attribute::DontFragment];
    let req = r.request(Method::Allocate, &attrs, true);
    assert_eq!(r.answer(&req), Some(420));
    let attrs = [
        Attribute::RequestedTransport(17),
        Attribute::RequestedAddressFamily(2),
    ];
    let req = r.request(Method::Allocate, &attrs, true);
    assert_eq!(r.answer(&req), Some(440));
    // Before any allocation: 437 to the others.
    let req = r.request(Method::Refresh, &[], true);
    assert_eq!(r.answer(&req), Some(437));

    let first = r.allocate();
    // The same transaction again is a retransmission: the same success, no second port.
    assert_eq!(r.answer(&first), None);
    assert_eq!(r.srv.active(), 1);
    // A new one from the same 5-tuple: 437.
    let req = r.request(Method::Allocate, &[Attribute::RequestedTransport(17)], true);
    assert_eq!(r.answer(&req), Some(437));
    // Signed answers verify under the user's key.
    let out = r.send(&first);
    assert!(Message::parse(&out[0].payload)
        .unwrap()
        .verify_integrity(&r.key));
    // Lifetimes: less than the default gets the default, more than the maximum the maximum.
    for (asked, granted) in [(30, 600), (1800, 1800), (100_000, 3600)] {
        let req = r.request(Method::Refresh, &[Attribute::Lifetime(asked)], true);
        let out = r.send(&req);
        let m = Message::parse(&out[0].payload).unwrap();
        assert_eq!(
            m.get(attr_type::LIFETIME),
            Some(Ok(Attribute::Lifetime(granted)))
        );
    }
}

#[test]
fn another_user_on_the_allocation_is_441() {
    let mut r = Raw::new();
    r.allocate();
    r.key = long_term_key("bob", "punchraw", "builder");
    let mt = MessageType {
        method: Method::Refresh,
        class: Class::Request,
    };
    let mut req = Vec::new();
    Encoder::new(&mut req, mt, tid(99))
        .push(&Attribute::Username(b"bob"))
        .push(&Attribute::Realm("punchraw"))
        .push(&Attribute::Nonce(&r.nonce))
        .message_integrity(&r.key)
        .fingerprint();
    assert_eq!(r.answer(&req), Some(441));
}

#[test]
fn channel_bind_rules() {
    let mut r = Raw::new();
    r.allocate();
    let bind = |r: &mut Raw, n: u16, p: SocketAddr| {
        let attrs = [Attribute::ChannelNumber(n), Attribute::XorPeerAddress(p)];
        let req = r.request(Method::ChannelBind, &attrs, true);
        r.answer(&req)
    };
    assert_eq!(bind(&mut r, 0x3fff, peer(1)), Some(400), "below 0x4000");
    assert_eq!(bind(&mut r, 0x8000, peer(1)), Some(400), "above 0x7FFF");
    assert_eq!(bind(&mut r, 0x4000, peer(1)), None);
    assert_eq!(bind(&mut r, 0x4000, peer(1)), None, "a refresh");
    assert_eq!(bind(&mut r, 0x4000, peer(2)), Some(400), "number taken");
    assert_eq!(bind(&mut r, 0x4001, peer(1)), Some(400), "peer taken");
    assert_eq!(bind(&mut r, 0x4001, peer(2)), None);
    let v6 = SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 9));
    assert_eq!(bind(&mut r, 0x4002, v6), Some(443));
    let attrs = [Attribute::ChannelNumber(0x4003)];
    let req = r.request(Method::ChannelBind, &attrs, true);
    assert_eq!(r.answer(&req), Some(400), "no peer");
    // The channel installed the permission: data from the peer arrives as ChannelData.
    let port = r.srv.relayed(r.client).unwrap().port();
    let t = r.t;
    r.srv.handle_peer(t, port, peer(1), b"via channel");
    let out: Vec<_> = std::iter::from_fn(|| r.srv.poll_transmit()).collect();
    let cd = ChannelData::parse(&out[0].payload).unwrap();
    assert_eq!((cd.channel, cd.data), (0x4000, &b"via channel"[..]));
    // ChannelData to an unbound number goes nowhere; to a bound one, to its peer.
    let mut b = Vec::new();
    ChannelData::encode(0x4005, b"x", false, &mut b);
    assert!(r.send(&b).is_empty());
    b.clear();
    ChannelData::encode(0x4001, b"to peer 2", false, &mut b);
    let out = r.send(&b);
    assert_eq!(out[0].to, peer(2));
    assert_eq!(out[0].from, Source::Relay(port));
}

#[test]
fn forbidden_peers_are_403() {
    let mut r = Raw::new();
    r.allocate();
    for p in [
        SocketAddr::new(relay_ip(), 3478),
        SocketAddr::from(([0, 0, 0, 0], 9)),
        SocketAddr::from(([224, 0, 0, 1], 9)),
        SocketAddr::from(([255, 255, 255, 255], 9)),
        SocketAddr::from(([127, 0, 0, 1], 22)),
    ] {
        let req = r.request(
            Method::CreatePermission,
            &[Attribute::XorPeerAddress(p)],
            true,
        );
        assert_eq!(r.answer(&req), Some(403), "{p}");
    }
    // Another relayed address on this server is a peer like any other, but the permission
    // for the relay's IP reaches only live relayed ports, not the server's own services.
    let other = SocketAddr::new(relay_ip(), 50005);
    let req = r.request(
        Method::CreatePermission,
        &[Attribute::XorPeerAddress(other)],
        true,
    );
    assert_eq!(r.answer(&req), None);
    let own = r.srv.relayed(r.client).unwrap();
    for (to, relayed) in [
        (SocketAddr::new(relay_ip(), 3478), false),
        (other, false),
        (own, true),
    ] {
        let mt = MessageType {
            method: Method::Send,
            class: Class::Indication,
        };
        let mut ind = Vec::new();
        Encoder::new(&mut ind, mt, tid(77))
            .push(&Attribute::XorPeerAddress(to))
            .push(&Attribute::Data(b"x"));
        assert_eq!(r.send(&ind).len(), usize::from(relayed), "{to}");
    }
}

#[test]
fn unauthenticated_answers_obey_the_amplification_bound() {
    let mut r = Raw::new();
    let src = r.client.addr;
    let mut cases = vec![
        r.request(Method::Allocate, &[], false),
        r.request(Method::Refresh, &[], false),
        r.request(Method::Other(0x0fff), &[], false),
    ];
    // A wrong MAC, an unknown user, a stale nonce, a missing NONCE.
    // (FINGERPRINT dropped so that the flipped MAC byte is not caught by it first.)
    let mut bad = r.request(Method::CreatePermission, &[], true);
    bad.truncate(bad.len() - 8);
    let n = bad.len();
    bad[2..4].copy_from_slice(&((n - 20) as u16).to_be_bytes());
    bad[n - 1] ^= 1;
    cases.push(bad);
    r.key = long_term_key(USER, "punchraw", "wrong");
    cases.push(r.request(Method::Refresh, &[], true));
    r.nonce = b"00000001AAAAAAAA".to_vec();
    cases.push(r.request(Method::Refresh, &[], true));
    let mt = MessageType {
        method: Method::Refresh,
        class: Class::Request,
    };
    let mut no_nonce = Vec::new();
    Encoder::new(&mut no_nonce, mt, tid(200))
        .push(&Attribute::Username(USER.as_bytes()))
        .message_integrity(&r.key);
    cases.push(no_nonce);
    let mut codes = Vec::new();
    for c in &cases {
        let out = r.send(c);
        assert_eq!(out.len(), 1);
        let len = out[0].payload.len();
        assert!(len <= response_limit(c.len(), src), "{len} for {}", c.len());
        codes.push(code(&out[0].payload).unwrap());
    }
    assert_eq!(codes, [401, 401, 400, 401, 401, 438, 400]);
    // The first answer, to a bare 20-byte Allocate, still carries what the client needs.
    let out = r.send(&cases[0]);
    let m = Message::parse(&out[0].payload).unwrap();
    assert!(matches!(
        m.get(attr_type::REALM),
        Some(Ok(Attribute::Realm("punchraw")))
    ));
    assert!(matches!(
        m.get(attr_type::NONCE),
        Some(Ok(Attribute::Nonce(_)))
    ));
    // A realm of the longest length still fits a bare request from IPv4.
    let mut cfg = config();
    cfg.realm = "r".repeat(MAX_REALM_LEN);
    let mut srv = TurnServer::new(cfg, r.t).unwrap();
    srv.handle_client(r.t, r.client, &cases[0]);
    let out = srv.poll_transmit().expect("a 401");
    assert!(out.payload.len() <= response_limit(20, src));
    assert_eq!(code(&out.payload), Some(401));
}

#[test]
fn a_nonce_is_bound_to_the_client_ip() {
    let mut r = Raw::new();
    r.client.addr = SocketAddr::from(([198, 51, 100, 99], 1));
    let req = r.request(Method::Allocate, &[Attribute::RequestedTransport(17)], true);
    assert_eq!(r.answer(&req), Some(438));
}

#[test]
fn config_is_checked() {
    let mut c = config();
    c.realm = "x".repeat(MAX_REALM_LEN + 1);
    assert!(matches!(c.validate(), Err(ConfigError::Realm(_))));
    let mut c = config();
    c.ports = (100, 99);
    assert!(matches!(c.validate(), Err(ConfigError::Ports { .. })));
    let mut c = config();
    c.users.clear();
    assert_eq!(c.validate(), Err(ConfigError::NoUsers));
    let mut c = config();
    c.users.push(("a b".into(), "p".into()));
    assert!(matches!(c.validate(), Err(ConfigError::User(_))));
}

#[test]
fn is_turn_tells_turn_from_binding() {
    let mut r = Raw::new();
    assert!(TurnServer::is_turn(&r.request(
        Method::Allocate,
        &[],
        false
    )));
    assert!(!TurnServer::is_turn(&r.request(
        Method::Binding,
        &[],
        false
    )));
    assert!(TurnServer::is_turn(&[0x40, 0, 0, 0]));
    assert!(!TurnServer::is_turn(&[0x80, 0, 0, 0]));
    assert!(!TurnServer::is_turn(&[]));
}

proptest! {
    /// Arbitrary input from anyone without the key: never a panic, never a relayed datagram
    /// or a socket, and every answer within the amplification bound.
    #[test]
    fn arbitrary_input_is_bounded(
        inputs in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..200), any::<bool>(), 0u8..4),
            1..20
        )
    ) {
        let t = Instant::now();
        let mut srv = TurnServer::new(config(), t).unwrap();
        for (i, (mut bytes, as_stun, port)) in inputs.into_iter().enumerate() {
            let src = client_addr(port);
            if as_stun && bytes.len() >= 20 {
                // Make it parse as STUN more often: a valid header with the cookie.
                bytes[0] &= 0x3f;
                let n = ((bytes.len() - 20) & !3) as u16;
                bytes.truncate(20 + usize::from(n));
                bytes[2..4].copy_from_slice(&n.to_be_bytes());
                bytes[4..8].copy_from_slice(&crate::core::stun::MAGIC_COOKIE.to_be_bytes());
            }
            let now = t + Duration::from_secs(i as u64);
            srv.handle_client(now, ClientId { via: Via::Udp, addr: src }, &bytes);
            srv.handle_peer(now, 50000 + u16::from(port), src, &bytes);
            prop_assert!(srv.poll_event().is_none());
            while let Some(tx) = srv.poll_transmit() {
                prop_assert_eq!(tx.from, Source::Primary(Via::Udp));
                prop_assert_eq!(tx.to, src);
                prop_assert!(tx.payload.len() <= response_limit(bytes.len(), src));
            }
        }
    }
}

#[test]
fn over_tcp_channel_data_is_padded_and_the_connection_ends_the_allocation() {
    let mut r = Raw::new();
    r.client.via = Via::Tcp;
    r.allocate();
    let attrs = [
        Attribute::ChannelNumber(0x4000),
        Attribute::XorPeerAddress(peer(1)),
    ];
    let req = r.request(Method::ChannelBind, &attrs, true);
    assert_eq!(r.answer(&req), None);
    let port = r.srv.relayed(r.client).unwrap().port();
    let t = r.t;
    r.srv.handle_peer(t, port, peer(1), b"five!");
    let out = r.srv.poll_transmit().expect("relayed to the client");
    assert_eq!(out.from, Source::Primary(Via::Tcp));
    assert_eq!(out.to, r.client.addr);
    // RFC 8656 section 12.5: padded to a multiple of 4 over a stream.
    assert_eq!(out.payload.len(), 4 + 8);
    assert_eq!(crate::core::stun::frame_len(&out.payload), Some(12));
    // The same address over UDP is another 5-tuple.
    let udp = ClientId {
        via: Via::Udp,
        addr: r.client.addr,
    };
    assert_eq!(r.srv.relayed(udp), None);
    r.srv.client_gone(udp);
    assert_eq!(r.srv.active(), 1);
    r.srv.client_gone(r.client);
    assert_eq!(r.srv.active(), 0);
    assert_eq!(r.srv.poll_event(), Some(RelayEvent::Close { port }));
    assert_eq!(r.srv.stats().allocations_freed, 1);
}

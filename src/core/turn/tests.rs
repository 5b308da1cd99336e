//! The TURN client against hand-built server answers on a virtual clock.

use super::*;
use crate::core::stun::{
    attr_type, long_term_key, Attribute, ChannelData, Class, Encoder, ErrorCode, Message,
    MessageType, Method,
};
use crate::core::Machine;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const USER: &str = "user";
const PASS: &str = "pass";
const REALM: &str = "realm";

fn server() -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 1], 3478))
}
fn relayed() -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 1], 50000))
}
fn mapped() -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 7], 40000))
}
fn peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 9], 61000))
}
fn key() -> [u8; 16] {
    long_term_key(USER, REALM, PASS)
}
fn cfg() -> TurnConfig {
    TurnConfig::new(server(), USER, PASS, 7)
}

fn sent(c: &mut Client) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| c.poll_transmit())
        .map(|t| {
            assert_eq!(t.dst, server());
            assert_eq!(t.socket, 0);
            t.payload
        })
        .collect()
}

fn events(c: &mut Client) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn one(c: &mut Client) -> Vec<u8> {
    let mut s = sent(c);
    assert_eq!(s.len(), 1, "exactly one transmit");
    s.pop().unwrap()
}

fn msg(b: &[u8]) -> Message<'_> {
    Message::parse(b).expect("the client sends valid STUN")
}

/// An answer to `req` of `class`, with `attrs`, signed with the long-term key if `sign`.
fn answer(req: &[u8], class: Class, attrs: &[Attribute<'_>], sign: bool) -> Vec<u8> {
    let m = msg(req);
    let mt = MessageType {
        method: m.message_type().method,
        class,
    };
    let mut out = Vec::new();
    let mut e = Encoder::new(&mut out, mt, m.transaction_id());
    for a in attrs {
        e.push(a);
    }
    if sign {
        e.message_integrity(&key());
    }
    e.fingerprint();
    out
}

fn error(req: &[u8], code: u16, extra: &[Attribute<'_>]) -> Vec<u8> {
    let mut attrs = vec![Attribute::ErrorCode(ErrorCode {
        code,
        reason: "reason",
    })];
    attrs.extend_from_slice(extra);
    answer(req, Class::Error, &attrs, false)
}

fn unauthorized(req: &[u8], nonce: &[u8]) -> Vec<u8> {
    error(
        req,
        401,
        &[Attribute::Realm(REALM), Attribute::Nonce(nonce)],
    )
}

fn allocate_success(req: &[u8], lifetime: u32) -> Vec<u8> {
    answer(
        req,
        Class::Success,
        &[
            Attribute::XorRelayedAddress(relayed()),
            Attribute::XorMappedAddress(mapped()),
            Attribute::Lifetime(lifetime),
        ],
        true,
    )
}

fn feed(c: &mut Client, now: Instant, b: &[u8]) {
    c.handle_input(now, 0, server(), b);
}

/// A client taken through 401 and a successful Allocate of `lifetime` seconds at `t0`.
fn allocated_with(cfg: TurnConfig, lifetime: u32) -> (Client, Instant) {
    let t0 = Instant::now();
    let mut c = Client::new(cfg, t0);
    let req = one(&mut c);
    feed(&mut c, t0, &unauthorized(&req, b"nonce-1"));
    let req = one(&mut c);
    feed(&mut c, t0, &allocate_success(&req, lifetime));
    let ev = events(&mut c);
    assert!(matches!(ev[..], [Event::Allocated { .. }]), "{ev:?}");
    (c, t0)
}

fn allocated() -> (Client, Instant) {
    allocated_with(cfg(), 600)
}

fn method(b: &[u8]) -> (Method, Class) {
    let mt = msg(b).message_type();
    (mt.method, mt.class)
}

fn has(b: &[u8], typ: u16) -> bool {
    msg(b).attributes().any(|a| a.typ == typ)
}

#[test]
fn allocate_goes_401_then_authenticated_then_allocated() {
    let t0 = Instant::now();
    let mut c = Client::new(cfg(), t0);
    let first = one(&mut c);
    let m = msg(&first);
    assert_eq!(
        m.message_type(),
        MessageType {
            method: Method::Allocate,
            class: Class::Request
        }
    );
    assert_eq!(
        m.get(attr_type::REQUESTED_TRANSPORT),
        Some(Ok(Attribute::RequestedTransport(17)))
    );
    assert!(!has(&first, attr_type::USERNAME));
    assert!(!has(&first, attr_type::MESSAGE_INTEGRITY));
    assert!(has(&first, attr_type::FINGERPRINT));

    feed(&mut c, t0, &unauthorized(&first, b"nonce-1"));
    assert!(events(&mut c).is_empty());
    let second = one(&mut c);
    let m = msg(&second);
    assert_ne!(
        m.transaction_id(),
        msg(&first).transaction_id(),
        "a new transaction"
    );
    assert_eq!(
        m.get(attr_type::USERNAME),
        Some(Ok(Attribute::Username(b"user")))
    );
    assert_eq!(m.get(attr_type::REALM), Some(Ok(Attribute::Realm(REALM))));
    assert_eq!(
        m.get(attr_type::NONCE),
        Some(Ok(Attribute::Nonce(b"nonce-1")))
    );
    assert!(
        m.verify_integrity(&key()),
        "MESSAGE-INTEGRITY under MD5(user:realm:pass)"
    );

    feed(&mut c, t0, &allocate_success(&second, 600));
    assert_eq!(
        events(&mut c),
        [Event::Allocated {
            relayed: relayed(),
            mapped: Some(mapped()),
            lifetime: Duration::from_secs(600)
        }]
    );
    assert_eq!(c.relayed(), Some(relayed()));
    assert_eq!(c.mapped(), Some(mapped()));
    assert!(c.is_allocated());
    // A duplicate answer (a retransmission's) changes nothing.
    feed(&mut c, t0, &allocate_success(&second, 600));
    assert!(events(&mut c).is_empty());
}

#[test]
fn requested_lifetime_goes_in_the_allocate() {
    let mut cfg = cfg();
    cfg.lifetime = Some(Duration::from_secs(120));
    let mut c = Client::new(cfg, Instant::now());
    let req = one(&mut c);
    assert_eq!(
        msg(&req).get(attr_type::LIFETIME),
        Some(Ok(Attribute::Lifetime(120)))
    );
}

#[test]
fn unsigned_or_forged_success_is_ignored_after_authenticating() {
    let t0 = Instant::now();
    let mut c = Client::new(cfg(), t0);
    let req = one(&mut c);
    feed(&mut c, t0, &unauthorized(&req, b"n"));
    let req = one(&mut c);
    let attrs = [
        Attribute::XorRelayedAddress(relayed()),
        Attribute::Lifetime(600),
    ];
    feed(&mut c, t0, &answer(&req, Class::Success, &attrs, false));
    let mut forged = Vec::new();
    Encoder::new(
        &mut forged,
        MessageType {
            method: Method::Allocate,
            class: Class::Success,
        },
        msg(&req).transaction_id(),
    )
    .push(&attrs[0])
    .message_integrity(b"not the key");
    feed(&mut c, t0, &forged);
    assert!(events(&mut c).is_empty());
    assert!(!c.is_allocated());
    // The real answer still counts: the forged ones did not end the transaction.
    feed(&mut c, t0, &allocate_success(&req, 600));
    assert!(c.is_allocated());
}

#[test]
fn second_401_means_wrong_credentials() {
    let t0 = Instant::now();
    let mut c = Client::new(cfg(), t0);
    let req = one(&mut c);
    feed(&mut c, t0, &unauthorized(&req, b"n"));
    let req = one(&mut c);
    feed(&mut c, t0, &unauthorized(&req, b"n2"));
    assert_eq!(
        events(&mut c),
        [Event::Failed(TurnError::Unauthorized {
            username: USER.into(),
            realm: REALM.into()
        })]
    );
    assert!(c.is_done());
    assert_eq!(c.poll_timeout(), None);
    assert!(sent(&mut c).is_empty());
}

#[test]
fn a_401_without_realm_and_nonce_is_a_bad_response() {
    let t0 = Instant::now();
    let mut c = Client::new(cfg(), t0);
    let req = one(&mut c);
    feed(&mut c, t0, &error(&req, 401, &[]));
    assert!(matches!(
        events(&mut c)[..],
        [Event::Failed(TurnError::BadResponse {
            request: "Allocate",
            ..
        })]
    ));
}

#[test]
fn stale_nonce_retries_with_the_new_nonce() {
    let t0 = Instant::now();
    let mut c = Client::new(cfg(), t0);
    let req = one(&mut c);
    feed(&mut c, t0, &unauthorized(&req, b"n1"));
    let req = one(&mut c);
    feed(
        &mut c,
        t0,
        &error(
            &req,
            438,
            &[Attribute::Realm(REALM), Attribute::Nonce(b"n2")],
        ),
    );
    let req = one(&mut c);
    assert_eq!(
        msg(&req).get(attr_type::NONCE),
        Some(Ok(Attribute::Nonce(b"n2")))
    );
    assert!(msg(&req).verify_integrity(&key()));
    feed(&mut c, t0, &allocate_success(&req, 600));
    assert!(c.is_allocated());

    // Later requests use the newest nonce.
    c.create_permission(t0, peer().ip());
    let req = one(&mut c);
    assert_eq!(
        msg(&req).get(attr_type::NONCE),
        Some(Ok(Attribute::Nonce(b"n2")))
    );
}

#[test]
fn endless_stale_nonce_gives_up() {
    let t0 = Instant::now();
    let mut c = Client::new(cfg(), t0);
    let req = one(&mut c);
    feed(&mut c, t0, &unauthorized(&req, b"n"));
    for i in 0..3 {
        let req = one(&mut c);
        let nonce = format!("n{i}");
        feed(
            &mut c,
            t0,
            &error(&req, 438, &[Attribute::Nonce(nonce.as_bytes())]),
        );
    }
    assert_eq!(
        events(&mut c),
        [Event::Failed(TurnError::StaleNonceLoop(3))]
    );
}

#[test]
fn allocate_error_codes_become_typed_errors() {
    let alt = SocketAddr::from(([203, 0, 113, 2], 3478));
    let mut alt_value = Vec::new();
    Attribute::MappedAddress(alt)
        .encode_value(&mut alt_value, &crate::core::stun::TransactionId([0; 16]));
    let cases: Vec<(u16, Vec<Attribute<'_>>, TurnError)> = vec![
        (486, vec![], TurnError::AllocationQuota),
        (508, vec![], TurnError::InsufficientCapacity),
        (437, vec![], TurnError::AllocationMismatch),
        (441, vec![], TurnError::WrongCredentials),
        (442, vec![], TurnError::UnsupportedTransport),
        (
            403,
            vec![],
            TurnError::Forbidden {
                reason: "reason".into(),
            },
        ),
        (
            300,
            vec![Attribute::Other {
                typ: attr_type::ALTERNATE_SERVER,
                value: &alt_value,
            }],
            TurnError::TryAlternate {
                alternate: Some(alt),
            },
        ),
        (
            420,
            vec![],
            TurnError::Refused {
                request: "Allocate",
                code: 420,
                reason: "reason".into(),
            },
        ),
    ];
    for (code, extra, want) in cases {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(), t0);
        let req = one(&mut c);
        feed(&mut c, t0, &unauthorized(&req, b"n"));
        let req = one(&mut c);
        feed(&mut c, t0, &error(&req, code, &extra));
        assert_eq!(events(&mut c), [Event::Failed(want.clone())], "code {code}");
        assert!(c.is_done());
        // Every error says something a user can act on.
        assert!(!want.to_string().is_empty());
    }
}

#[test]
fn udp_retransmits_per_rfc_8489_then_times_out() {
    let t0 = Instant::now();
    let mut c = Client::new(cfg(), t0);
    let first = one(&mut c);
    // RFC 8489 section 6.2.1 with RTO 500 ms, Rc 7, Rm 16: sends at 0, 0.5, 1.5, 3.5, 7.5,
    // 15.5, 31.5 s, failure at 39.5 s.
    let mut times = vec![0u64];
    let mut now;
    loop {
        now = c.poll_timeout().expect("a timer");
        c.handle_timeout(now);
        let s = sent(&mut c);
        if s.is_empty() {
            break;
        }
        assert_eq!(
            s,
            std::slice::from_ref(&first),
            "retransmissions are the same bytes"
        );
        times.push((now - t0).as_millis() as u64);
    }
    assert_eq!(times, [0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(now - t0, Duration::from_millis(39_500));
    assert_eq!(
        events(&mut c),
        [Event::Failed(TurnError::Timeout {
            request: "Allocate",
            waited_ms: 39_500
        })]
    );
}

#[test]
fn stream_transport_sends_once_and_waits_39_5_s() {
    let mut cfg = cfg();
    cfg.transport = Transport::Stream;
    let t0 = Instant::now();
    let mut c = Client::new(cfg, t0);
    one(&mut c);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(39_500)));
    c.handle_timeout(t0 + Duration::from_millis(39_499));
    assert!(sent(&mut c).is_empty());
    c.handle_timeout(t0 + Duration::from_millis(39_500));
    assert!(sent(&mut c).is_empty());
    assert!(matches!(
        events(&mut c)[..],
        [Event::Failed(TurnError::Timeout { .. })]
    ));
}

#[test]
fn allocation_is_refreshed_a_minute_before_it_ends() {
    let (mut c, t0) = allocated();
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(540)));
    c.handle_timeout(t0 + Duration::from_secs(539));
    assert!(sent(&mut c).is_empty());
    let t1 = t0 + Duration::from_secs(540);
    c.handle_timeout(t1);
    let req = one(&mut c);
    assert_eq!(method(&req), (Method::Refresh, Class::Request));
    assert_eq!(
        msg(&req).get(attr_type::LIFETIME),
        Some(Ok(Attribute::Lifetime(600)))
    );
    assert!(msg(&req).verify_integrity(&key()));
    feed(
        &mut c,
        t1,
        &answer(&req, Class::Success, &[Attribute::Lifetime(600)], true),
    );
    assert_eq!(
        events(&mut c),
        [Event::Refreshed {
            lifetime: Duration::from_secs(600)
        }]
    );
    assert_eq!(c.expires(), Some(t1 + Duration::from_secs(600)));
    assert_eq!(c.poll_timeout(), Some(t1 + Duration::from_secs(540)));
}

#[test]
fn short_lifetimes_refresh_at_half() {
    let (c, t0) = allocated_with(cfg(), 60);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(30)));
}

#[test]
fn refresh_with_stale_nonce_retries_and_keeps_the_allocation() {
    let (mut c, t0) = allocated();
    let t1 = t0 + Duration::from_secs(540);
    c.handle_timeout(t1);
    let req = one(&mut c);
    feed(&mut c, t1, &error(&req, 438, &[Attribute::Nonce(b"fresh")]));
    let req = one(&mut c);
    assert_eq!(
        msg(&req).get(attr_type::NONCE),
        Some(Ok(Attribute::Nonce(b"fresh")))
    );
    feed(
        &mut c,
        t1,
        &answer(&req, Class::Success, &[Attribute::Lifetime(600)], true),
    );
    assert!(matches!(events(&mut c)[..], [Event::Refreshed { .. }]));
}

#[test]
fn refresh_failure_loses_the_allocation() {
    let (mut c, t0) = allocated();
    let t1 = t0 + Duration::from_secs(540);
    c.handle_timeout(t1);
    let req = one(&mut c);
    feed(&mut c, t1, &error(&req, 437, &[]));
    assert_eq!(
        events(&mut c),
        [Event::Failed(TurnError::AllocationMismatch)]
    );
    assert!(c.is_done());
}

#[test]
fn unanswered_refresh_times_out_before_the_allocation_expires() {
    let (mut c, t0) = allocated();
    let mut now = t0;
    while let Some(t) = c.poll_timeout() {
        now = t;
        c.handle_timeout(now);
        sent(&mut c);
    }
    assert_eq!(now, t0 + Duration::from_millis(540_000 + 39_500));
    assert_eq!(
        events(&mut c),
        [Event::Failed(TurnError::Timeout {
            request: "Refresh",
            waited_ms: 39_500
        })]
    );
}

#[test]
fn permission_requested_before_allocation_goes_out_after_it() {
    let t0 = Instant::now();
    let mut c = Client::new(cfg(), t0);
    c.create_permission(t0, peer().ip());
    let req = one(&mut c);
    assert_eq!(method(&req).0, Method::Allocate);
    feed(&mut c, t0, &unauthorized(&req, b"n"));
    let req = one(&mut c);
    feed(&mut c, t0, &allocate_success(&req, 600));
    let req = one(&mut c);
    assert_eq!(method(&req), (Method::CreatePermission, Class::Request));
    assert_eq!(
        msg(&req).get(attr_type::XOR_PEER_ADDRESS),
        Some(Ok(Attribute::XorPeerAddress(SocketAddr::new(
            peer().ip(),
            0
        ))))
    );
    assert!(msg(&req).verify_integrity(&key()));
    feed(&mut c, t0, &answer(&req, Class::Success, &[], true));
    let ev = events(&mut c);
    assert_eq!(ev[1..], [Event::PermissionCreated { peer: peer().ip() }]);
    assert!(c.has_permission(peer().ip()));
}

#[test]
fn permissions_are_refreshed_every_four_minutes() {
    let (mut c, t0) = allocated();
    c.create_permission(t0, peer().ip());
    let req = one(&mut c);
    feed(&mut c, t0, &answer(&req, Class::Success, &[], true));
    events(&mut c);
    assert_eq!(c.poll_timeout(), Some(t0 + PERMISSION_REFRESH));
    let t1 = t0 + PERMISSION_REFRESH;
    c.handle_timeout(t1);
    let req = one(&mut c);
    assert_eq!(method(&req).0, Method::CreatePermission);
    feed(&mut c, t1, &answer(&req, Class::Success, &[], true));
    assert!(
        events(&mut c).is_empty(),
        "a refresh is not a new permission"
    );
    // Next: the allocation refresh at 540 s, then the permission at 480 s comes first.
    assert_eq!(c.poll_timeout(), Some(t1 + PERMISSION_REFRESH));
}

#[test]
fn forbidden_permission_is_reported_and_the_allocation_stays() {
    let (mut c, t0) = allocated();
    c.send_to(t0, peer(), b"held").unwrap();
    let req = one(&mut c);
    assert_eq!(method(&req).0, Method::CreatePermission);
    feed(&mut c, t0, &error(&req, 403, &[]));
    assert_eq!(
        events(&mut c),
        [Event::PermissionFailed {
            peer: peer().ip(),
            error: TurnError::Forbidden {
                reason: "reason".into()
            }
        }]
    );
    assert!(c.is_allocated());
    assert!(
        sent(&mut c).is_empty(),
        "held data toward a refused peer is dropped"
    );
}

#[test]
fn send_waits_for_the_permission_then_goes_in_a_send_indication() {
    let (mut c, t0) = allocated();
    assert_eq!(c.send_to(t0, peer(), b"one"), Ok(()));
    assert_eq!(c.send_to(t0, peer(), b"two"), Ok(()));
    let req = one(&mut c);
    assert_eq!(
        method(&req).0,
        Method::CreatePermission,
        "only the request, data held"
    );
    feed(&mut c, t0, &answer(&req, Class::Success, &[], true));
    let out = sent(&mut c);
    assert_eq!(out.len(), 2);
    for (b, want) in out.iter().zip([&b"one"[..], b"two"]) {
        let m = msg(b);
        assert_eq!(
            m.message_type(),
            MessageType {
                method: Method::Send,
                class: Class::Indication
            }
        );
        assert_eq!(
            m.get(attr_type::XOR_PEER_ADDRESS),
            Some(Ok(Attribute::XorPeerAddress(peer())))
        );
        assert_eq!(m.get(attr_type::DATA), Some(Ok(Attribute::Data(want))));
    }
    c.send_to(t0, peer(), b"three").unwrap();
    assert_eq!(method(&one(&mut c)), (Method::Send, Class::Indication));
}

#[test]
fn send_errors() {
    let t0 = Instant::now();
    let mut c = Client::new(cfg(), t0);
    assert_eq!(c.send_to(t0, peer(), b"x"), Err(SendError::NotAllocated));
    let (mut c, t0) = allocated();
    let big = vec![0u8; MAX_DATA + 1];
    assert_eq!(
        c.send_to(t0, peer(), &big),
        Err(SendError::TooLarge(MAX_DATA + 1))
    );
    let v6 = SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 5000));
    assert_eq!(c.send_to(t0, v6, b"x"), Err(SendError::FamilyMismatch));
}

fn bound(transport: Transport) -> (Client, Instant, u16) {
    let mut cfg = cfg();
    cfg.transport = transport;
    let (mut c, t0) = allocated_with(cfg, 600);
    let ch = c.bind_channel(t0, peer()).unwrap();
    assert_eq!(ch, CHANNEL_MIN);
    let reqs = sent(&mut c);
    assert_eq!(reqs.len(), 2);
    let (perm, bind) = (&reqs[0], &reqs[1]);
    assert_eq!(method(perm).0, Method::CreatePermission);
    assert_eq!(method(bind), (Method::ChannelBind, Class::Request));
    let m = msg(bind);
    assert_eq!(
        m.get(attr_type::CHANNEL_NUMBER),
        Some(Ok(Attribute::ChannelNumber(ch)))
    );
    assert_eq!(
        m.get(attr_type::XOR_PEER_ADDRESS),
        Some(Ok(Attribute::XorPeerAddress(peer())))
    );
    assert!(m.verify_integrity(&key()));
    // Until the binding is confirmed data goes in Send indications (RFC 8656 section 12).
    feed(&mut c, t0, &answer(perm, Class::Success, &[], true));
    c.send_to(t0, peer(), b"early").unwrap();
    assert_eq!(method(&one(&mut c)).0, Method::Send);
    assert_eq!(c.channel(peer()), None);
    feed(&mut c, t0, &answer(bind, Class::Success, &[], true));
    assert_eq!(
        events(&mut c),
        [
            Event::PermissionCreated { peer: peer().ip() },
            Event::ChannelBound {
                peer: peer(),
                channel: ch
            }
        ]
    );
    assert_eq!(c.channel(peer()), Some(ch));
    (c, t0, ch)
}

#[test]
fn bound_channel_carries_channel_data() {
    let (mut c, t0, ch) = bound(Transport::Udp);
    c.send_to(t0, peer(), b"hello").unwrap();
    let b = one(&mut c);
    assert_eq!(
        b,
        [0x40, 0x00, 0, 5, b'h', b'e', b'l', b'l', b'o'],
        "no padding over UDP"
    );
    assert_eq!(ChannelData::parse(&b).unwrap().channel, ch);
    // A second peer gets the next number.
    let other = SocketAddr::from(([192, 0, 2, 10], 1));
    assert_eq!(c.bind_channel(t0, other), Some(CHANNEL_MIN + 1));
    assert_eq!(c.bind_channel(t0, peer()), Some(ch), "one channel per peer");
}

#[test]
fn stream_channel_data_is_padded() {
    let (mut c, t0, _) = bound(Transport::Stream);
    c.send_to(t0, peer(), b"hello").unwrap();
    let b = one(&mut c);
    assert_eq!(b.len(), 12);
    assert_eq!(crate::core::stun::frame_len(&b), Some(12));
}

#[test]
fn channels_are_rebound_before_ten_minutes() {
    let (mut c, t0, ch) = bound(Transport::Udp);
    // Timers: permission 240 s, allocation 540 s, channel 540 s.
    let t1 = t0 + CHANNEL_REFRESH;
    c.handle_timeout(t0 + PERMISSION_REFRESH);
    let req = one(&mut c);
    feed(
        &mut c,
        t0 + PERMISSION_REFRESH,
        &answer(&req, Class::Success, &[], true),
    );
    c.handle_timeout(t1);
    let reqs = sent(&mut c);
    let kinds: Vec<Method> = reqs.iter().map(|r| method(r).0).collect();
    // The permission's second refresh (due at 480 s) comes along.
    assert_eq!(
        kinds,
        [
            Method::Refresh,
            Method::CreatePermission,
            Method::ChannelBind
        ]
    );
    assert_eq!(
        msg(&reqs[2]).get(attr_type::CHANNEL_NUMBER),
        Some(Ok(Attribute::ChannelNumber(ch)))
    );
    feed(&mut c, t1, &answer(&reqs[2], Class::Success, &[], true));
    assert!(events(&mut c).is_empty(), "a rebind is not a new channel");
    assert_eq!(c.channel(peer()), Some(ch));
}

#[test]
fn failed_channel_bind_falls_back_to_indications() {
    let (mut c, t0) = allocated();
    c.bind_channel(t0, peer());
    let reqs = sent(&mut c);
    feed(&mut c, t0, &answer(&reqs[0], Class::Success, &[], true));
    feed(&mut c, t0, &error(&reqs[1], 400, &[]));
    let ev = events(&mut c);
    assert!(matches!(ev[1], Event::ChannelBindFailed { .. }), "{ev:?}");
    c.send_to(t0, peer(), b"x").unwrap();
    assert_eq!(method(&one(&mut c)).0, Method::Send);
}

#[test]
fn failed_rebind_keeps_receiving_on_the_channel() {
    let (mut c, t0, ch) = bound(Transport::Udp);
    let t1 = t0 + CHANNEL_REFRESH;
    c.handle_timeout(t1);
    let reqs = sent(&mut c);
    let bind = reqs
        .iter()
        .find(|r| method(r).0 == Method::ChannelBind)
        .unwrap();
    feed(&mut c, t1, &error(bind, 508, &[]));
    assert!(events(&mut c)
        .iter()
        .any(|e| matches!(e, Event::ChannelBindFailed { .. })));
    assert_eq!(c.channel(peer()), None);
    let mut cd = Vec::new();
    ChannelData::encode(ch, b"still", false, &mut cd);
    feed(&mut c, t1, &cd);
    assert_eq!(
        events(&mut c),
        [Event::Data {
            peer: peer(),
            bytes: b"still".to_vec()
        }]
    );
    c.send_to(t1, peer(), b"x").unwrap();
    assert!(sent(&mut c).iter().any(|b| method(b).0 == Method::Send));
}

#[test]
fn data_indications_and_channel_data_become_data_events() {
    let (mut c, t0, ch) = bound(Transport::Udp);
    let mut ind = Vec::new();
    Encoder::new(
        &mut ind,
        MessageType {
            method: Method::Data,
            class: Class::Indication,
        },
        crate::core::stun::TransactionId([9; 16]),
    )
    .push(&Attribute::XorPeerAddress(peer()))
    .push(&Attribute::Data(b"via indication"));
    feed(&mut c, t0, &ind);
    let mut cd = Vec::new();
    ChannelData::encode(ch, b"via channel", true, &mut cd);
    feed(&mut c, t0, &cd);
    // Unknown channels and other senders are ignored.
    let mut unknown = Vec::new();
    ChannelData::encode(ch + 1, b"?", false, &mut unknown);
    feed(&mut c, t0, &unknown);
    c.handle_input(t0, 0, peer(), &cd);
    assert_eq!(
        events(&mut c),
        [
            Event::Data {
                peer: peer(),
                bytes: b"via indication".to_vec()
            },
            Event::Data {
                peer: peer(),
                bytes: b"via channel".to_vec()
            },
        ]
    );
}

#[test]
fn close_frees_the_allocation_with_lifetime_zero() {
    let (mut c, t0) = allocated();
    c.create_permission(t0, peer().ip());
    sent(&mut c);
    c.close(t0);
    let req = one(&mut c);
    assert_eq!(method(&req).0, Method::Refresh);
    assert_eq!(
        msg(&req).get(attr_type::LIFETIME),
        Some(Ok(Attribute::Lifetime(0)))
    );
    assert!(msg(&req).verify_integrity(&key()));
    assert_eq!(c.send_to(t0, peer(), b"x"), Err(SendError::NotAllocated));
    feed(
        &mut c,
        t0,
        &answer(&req, Class::Success, &[Attribute::Lifetime(0)], true),
    );
    assert_eq!(events(&mut c), [Event::Closed]);
    assert!(c.is_done());
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn close_ends_also_on_437_or_silence() {
    let (mut c, t0) = allocated();
    c.close(t0);
    let req = one(&mut c);
    feed(&mut c, t0, &error(&req, 437, &[]));
    assert_eq!(events(&mut c), [Event::Closed]);

    let (mut c, t0) = allocated();
    c.close(t0);
    while let Some(t) = c.poll_timeout() {
        c.handle_timeout(t);
    }
    assert_eq!(events(&mut c), [Event::Closed]);
    let _ = t0;
}

#[test]
fn close_before_any_credentials_ends_at_once() {
    let t0 = Instant::now();
    let mut c = Client::new(cfg(), t0);
    sent(&mut c);
    c.close(t0);
    assert!(sent(&mut c).is_empty());
    assert_eq!(events(&mut c), [Event::Closed]);
}

#[test]
fn same_seed_same_bytes() {
    let t0 = Instant::now();
    let a = one(&mut Client::new(cfg(), t0));
    let b = one(&mut Client::new(cfg(), t0));
    assert_eq!(a, b);
    let mut other = cfg();
    other.seed = 8;
    assert_ne!(a, one(&mut Client::new(other, t0)));
}

/// A client in one of its states: allocating, waiting for credentials' answer, allocated
/// with a channel, closing.
fn client_in(state: u8) -> (Client, Instant) {
    match state % 4 {
        0 => {
            let t0 = Instant::now();
            (Client::new(cfg(), t0), t0)
        }
        1 => {
            let t0 = Instant::now();
            let mut c = Client::new(cfg(), t0);
            let req = one(&mut c);
            feed(&mut c, t0, &unauthorized(&req, b"n"));
            (c, t0)
        }
        2 => {
            let (c, t0, _) = bound(Transport::Udp);
            (c, t0)
        }
        _ => {
            let (mut c, t0) = allocated();
            c.close(t0);
            (c, t0)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any bytes, raw or as the body of a response to the client's own request (so they get
    /// past the transaction match), never make it panic.
    #[test]
    fn any_input_never_panics(state: u8, inputs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 1..8), as_response: bool, step_ms in 0u64..100_000) {
        let (mut c, t0) = client_in(state);
        let mut now = t0;
        for input in inputs {
            let mut bytes = input.clone();
            if as_response {
                if let Some(req) = sent(&mut c).pop() {
                    // Keep the request's header (type made a response, same tid), then the
                    // fuzzed attributes with a correct length.
                    let mut r = req[..20].to_vec();
                    r[1] |= 0x10;
                    r.extend_from_slice(&bytes);
                    let len = (r.len() - 20) as u16;
                    r[2..4].copy_from_slice(&len.to_be_bytes());
                    bytes = r;
                }
            }
            c.handle_input(now, 0, server(), &bytes);
            now += Duration::from_millis(step_ms);
            c.handle_timeout(now);
            let _ = c.send_to(now, peer(), &input);
            sent(&mut c);
            events(&mut c);
            if let Some(t) = c.poll_timeout() {
                prop_assert!(t > now - Duration::from_secs(1) || c.is_done());
            }
        }
    }
}

#[test]
fn turn_errors_have_distinct_messages() {
    let errors = [
        TurnError::Unauthorized {
            username: "u".into(),
            realm: "r".into(),
        },
        TurnError::AllocationQuota,
        TurnError::InsufficientCapacity,
        TurnError::AllocationMismatch,
        TurnError::WrongCredentials,
        TurnError::Timeout {
            request: "Allocate",
            waited_ms: 39_500,
        },
    ];
    let msgs: std::collections::HashSet<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(msgs.len(), errors.len());
    assert!(errors[0].to_string().contains("password"));
    let _ = IpAddr::V4(Ipv4Addr::LOCALHOST);
}

/// Over UDP, a Binding indication every `keepalive` while allocated keeps our NAT's binding
/// toward the server; none without the option.
#[test]
fn keepalive_sends_binding_indications_while_allocated() {
    let mut c = cfg();
    c.keepalive = Some(Duration::from_secs(15));
    let (mut client, t) = allocated_with(c, 600);
    sent(&mut client);
    assert_eq!(client.poll_timeout(), Some(t + Duration::from_secs(15)));
    for i in 1..=3u64 {
        let now = t + Duration::from_secs(15 * i);
        client.handle_timeout(now);
        let b = one(&mut client);
        assert_eq!(method(&b), (Method::Binding, Class::Indication));
        assert_eq!(b.len(), 28, "header and FINGERPRINT");
        client.handle_timeout(now);
        assert!(sent(&mut client).is_empty(), "once per interval");
    }
    let (mut plain, t) = allocated();
    sent(&mut plain);
    plain.handle_timeout(t + Duration::from_secs(60));
    assert!(sent(&mut plain).is_empty());
}

//! Unit tests of the sans-IO STUN server: bytes in, (bytes, endpoint, destination) out.

use super::*;
use crate::core::stun::{Class, Encoder, Message, MessageType, Method, TransactionId};
use proptest::prelude::*;
use std::time::Duration;

const PRIMARY_IP: [u8; 4] = [192, 0, 2, 1];
const ALT_IP: [u8; 4] = [192, 0, 2, 2];

fn config(discovery: bool) -> ServerConfig {
    ServerConfig {
        ip: IpAddr::from(PRIMARY_IP),
        alt_ip: discovery.then(|| IpAddr::from(ALT_IP)),
        port: 3478,
        alt_port: 3479,
        software: Some("punchraw".to_string()),
        per_source_limit: None,
        seed: 0,
    }
}

fn config_v6() -> ServerConfig {
    ServerConfig {
        ip: "2001:db8::1".parse().unwrap(),
        alt_ip: Some("2001:db8::2".parse().unwrap()),
        port: 3478,
        alt_port: 3479,
        software: None,
        per_source_limit: None,
        seed: 0,
    }
}

fn src() -> SocketAddr {
    "203.0.113.7:54321".parse().unwrap()
}

/// A request with the given attributes, optionally closed by a FINGERPRINT.
fn build(
    mt: MessageType,
    tid: TransactionId,
    attrs: &[Attribute<'_>],
    fingerprint: bool,
) -> Vec<u8> {
    let mut v = Vec::new();
    let mut e = Encoder::new(&mut v, mt, tid);
    for a in attrs {
        e.push(a);
    }
    if fingerprint {
        e.fingerprint();
    }
    v
}

fn binding(attrs: &[Attribute<'_>]) -> Vec<u8> {
    build(
        MessageType::BINDING_REQUEST,
        TransactionId::random(&mut rand::rng()),
        attrs,
        false,
    )
}

fn change(ip: bool, port: bool) -> Attribute<'static> {
    Attribute::ChangeRequest {
        change_ip: ip,
        change_port: port,
    }
}

struct Answer {
    outcome: Outcome,
    out: Vec<u8>,
}

impl Answer {
    fn msg(&self) -> Message<'_> {
        Message::parse(&self.out).expect("the server's output parses (and its FINGERPRINT checks)")
    }
    fn get(&self, typ: u16) -> Option<Attribute<'_>> {
        self.msg().get(typ).map(|r| r.expect("attribute decodes"))
    }
    fn addr(&self, typ: u16) -> Option<SocketAddr> {
        match self.get(typ)? {
            Attribute::MappedAddress(a)
            | Attribute::XorMappedAddress(a)
            | Attribute::ResponseOrigin(a)
            | Attribute::OtherAddress(a)
            | Attribute::SourceAddress(a)
            | Attribute::ChangedAddress(a) => Some(a),
            other => panic!("not an address: {other:?}"),
        }
    }
    fn error_code(&self) -> u16 {
        assert_eq!(
            self.msg().message_type().class,
            Class::Error,
            "{:?}",
            self.msg()
        );
        match self.get(attr_type::ERROR_CODE) {
            Some(Attribute::ErrorCode(e)) => e.code,
            other => panic!("no ERROR-CODE: {other:?}"),
        }
    }
    fn unknown(&self) -> Vec<u16> {
        match self.get(attr_type::UNKNOWN_ATTRIBUTES) {
            Some(Attribute::UnknownAttributes(l)) => l.iter().collect(),
            other => panic!("no UNKNOWN-ATTRIBUTES: {other:?}"),
        }
    }
    fn types(&self) -> Vec<u16> {
        self.msg().attributes().map(|a| a.typ).collect()
    }
}

fn ask(
    s: &mut StunServer,
    transport: Transport,
    local: EndpointId,
    from: SocketAddr,
    input: &[u8],
) -> Answer {
    let mut out = vec![0xee; 7]; // handle must clear what a previous call left
    let outcome = s.handle(Instant::now(), transport, local, from, input, &mut out);
    Answer { outcome, out }
}

fn ask_udp(s: &mut StunServer, input: &[u8]) -> Answer {
    ask(s, Transport::Udp, EndpointId::PRIMARY, src(), input)
}

fn reply_from(a: &Answer) -> EndpointId {
    match a.outcome {
        Outcome::Reply { from, .. } => from,
        Outcome::Drop(r) => panic!("dropped: {r:?}"),
    }
}

#[test]
fn binding_success_carries_every_address_and_a_fingerprint() {
    let cfg = config(true);
    let mut s = StunServer::new(cfg.clone(), Instant::now());
    let req = binding(&[]);
    let a = ask_udp(&mut s, &req);
    assert_eq!(
        a.outcome,
        Outcome::Reply {
            from: EndpointId::PRIMARY,
            to: src()
        }
    );
    let m = a.msg();
    assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
    assert_eq!(
        m.transaction_id(),
        Message::parse(&req).unwrap().transaction_id()
    );
    assert_eq!(a.addr(attr_type::XOR_MAPPED_ADDRESS), Some(src()));
    assert_eq!(a.addr(attr_type::MAPPED_ADDRESS), Some(src()));
    assert_eq!(
        a.addr(attr_type::RESPONSE_ORIGIN),
        Some(cfg.addr(EndpointId::PRIMARY))
    );
    assert_eq!(
        a.addr(attr_type::OTHER_ADDRESS),
        Some(cfg.addr(EndpointId(3)))
    );
    assert_eq!(
        a.get(attr_type::SOFTWARE),
        Some(Attribute::Software("punchraw"))
    );
    // RFC 8489 section 14.7: FINGERPRINT last; `msg()` already checked its CRC.
    assert_eq!(a.types().last(), Some(&attr_type::FINGERPRINT));
    assert!(a.get(attr_type::SOURCE_ADDRESS).is_none());
    assert_eq!(
        (s.stats.requests, s.stats.success, s.stats.errors),
        (1, 1, 0)
    );
}

#[test]
fn fingerprinted_request_is_answered() {
    let mut s = StunServer::new(config(true), Instant::now());
    let req = build(
        MessageType::BINDING_REQUEST,
        TransactionId::random(&mut rand::rng()),
        &[],
        true,
    );
    assert_eq!(reply_from(&ask_udp(&mut s, &req)), EndpointId::PRIMARY);
}

#[test]
fn ipv6_xor_mapped_address_uses_the_transaction_id() {
    let cfg = config_v6();
    let mut s = StunServer::new(cfg.clone(), Instant::now());
    let from: SocketAddr = "[2001:db8:ffff::7]:40000".parse().unwrap();
    let a = ask(&mut s, Transport::Udp, EndpointId(2), from, &binding(&[]));
    assert_eq!(
        a.outcome,
        Outcome::Reply {
            from: EndpointId(2),
            to: from
        }
    );
    assert_eq!(a.addr(attr_type::XOR_MAPPED_ADDRESS), Some(from));
    assert_eq!(
        a.addr(attr_type::RESPONSE_ORIGIN),
        Some(cfg.addr(EndpointId(2)))
    );
    // Always the alternate endpoint, whichever endpoint answered (coturn interop).
    assert_eq!(
        a.addr(attr_type::OTHER_ADDRESS),
        Some(cfg.addr(EndpointId(3)))
    );
}

#[test]
fn without_alternate_there_is_no_other_address() {
    let cfg = config(false);
    let mut s = StunServer::new(cfg.clone(), Instant::now());
    let a = ask_udp(&mut s, &binding(&[]));
    assert_eq!(
        a.addr(attr_type::RESPONSE_ORIGIN),
        Some(cfg.addr(EndpointId::PRIMARY))
    );
    assert!(a.get(attr_type::OTHER_ADDRESS).is_none());
}

#[test]
fn change_request_answers_from_the_flipped_endpoint() {
    let cfg = config(true);
    let mut s = StunServer::new(cfg.clone(), Instant::now());
    for local in 0..4u8 {
        for (ip, port) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = ask(
                &mut s,
                Transport::Udp,
                EndpointId(local),
                src(),
                &binding(&[change(ip, port)]),
            );
            let want = EndpointId(local ^ (u8::from(ip) << 1) ^ u8::from(port));
            assert_eq!(
                a.outcome,
                Outcome::Reply {
                    from: want,
                    to: src()
                },
                "local {local} ip {ip} port {port}"
            );
            assert_eq!(a.addr(attr_type::RESPONSE_ORIGIN), Some(cfg.addr(want)));
            assert_eq!(want.alt_ip(), EndpointId(local).alt_ip() ^ ip);
            assert_eq!(want.alt_port(), EndpointId(local).alt_port() ^ port);
            // The alternate endpoint on every answer, so clients that read it from a later
            // test (coturn's) still aim at the alternate address and port.
            assert_eq!(
                a.addr(attr_type::OTHER_ADDRESS),
                Some(cfg.addr(EndpointId(3)))
            );
        }
    }
}

#[test]
fn change_request_without_alternate_is_420() {
    let mut s = StunServer::new(config(false), Instant::now());
    for (ip, port) in [(false, true), (true, false), (true, true)] {
        let a = ask_udp(&mut s, &binding(&[change(ip, port)]));
        assert_eq!(
            a.outcome,
            Outcome::Reply {
                from: EndpointId::PRIMARY,
                to: src()
            }
        );
        assert_eq!(a.error_code(), 420);
        assert_eq!(a.unknown(), vec![attr_type::CHANGE_REQUEST]);
        assert_eq!(a.types().last(), Some(&attr_type::FINGERPRINT));
    }
}

#[test]
fn empty_change_request_is_a_plain_binding() {
    // Some clients (jstun) always send CHANGE-REQUEST, with no flag for the first test.
    let mut s = StunServer::new(config(false), Instant::now());
    let a = ask_udp(&mut s, &binding(&[change(false, false)]));
    assert_eq!(a.msg().message_type(), MessageType::BINDING_SUCCESS);
}

#[test]
fn change_request_over_tcp_is_420() {
    let mut s = StunServer::new(config(true), Instant::now());
    let a = ask(
        &mut s,
        Transport::Tcp,
        EndpointId(1),
        src(),
        &binding(&[change(true, true)]),
    );
    assert_eq!(
        a.outcome,
        Outcome::Reply {
            from: EndpointId(1),
            to: src()
        }
    );
    assert_eq!(a.error_code(), 420);
    assert_eq!(a.unknown(), vec![attr_type::CHANGE_REQUEST]);
}

#[test]
fn response_port_changes_only_the_port() {
    let mut s = StunServer::new(config(true), Instant::now());
    let a = ask_udp(&mut s, &binding(&[Attribute::ResponsePort(9999)]));
    assert_eq!(
        a.outcome,
        Outcome::Reply {
            from: EndpointId::PRIMARY,
            to: SocketAddr::new(src().ip(), 9999)
        }
    );
    // The mapped address is still where the request came from.
    assert_eq!(a.addr(attr_type::XOR_MAPPED_ADDRESS), Some(src()));

    let a = ask_udp(
        &mut s,
        &binding(&[change(true, false), Attribute::ResponsePort(7)]),
    );
    assert_eq!(
        a.outcome,
        Outcome::Reply {
            from: EndpointId(2),
            to: SocketAddr::new(src().ip(), 7)
        }
    );
}

#[test]
fn response_port_is_refused_where_it_cannot_apply() {
    let mut s = StunServer::new(config(true), Instant::now());
    // Over TCP there is no other port to answer to.
    let a = ask(
        &mut s,
        Transport::Tcp,
        EndpointId::PRIMARY,
        src(),
        &binding(&[Attribute::ResponsePort(9999)]),
    );
    assert_eq!(a.error_code(), 400);
    // RFC 5780 section 6.1: RESPONSE-PORT together with PADDING.
    let a = ask_udp(
        &mut s,
        &binding(&[Attribute::ResponsePort(9999), Attribute::Padding(&[0; 64])]),
    );
    assert_eq!(a.error_code(), 400);
    assert_eq!(
        a.outcome,
        Outcome::Reply {
            from: EndpointId::PRIMARY,
            to: src()
        }
    );
    let a = ask_udp(&mut s, &binding(&[Attribute::ResponsePort(0)]));
    assert_eq!(a.error_code(), 400);
    assert_eq!(
        a.outcome,
        Outcome::Reply {
            from: EndpointId::PRIMARY,
            to: src()
        }
    );
}

#[test]
fn padding_never_makes_the_response_larger_than_the_request() {
    let mut s = StunServer::new(config(true), Instant::now());
    let base = ask_udp(&mut s, &binding(&[])).out.len();
    static PAD: [u8; 1400] = [0; 1400];
    for plen in (0..=PAD.len()).step_by(4) {
        let req = binding(&[Attribute::Padding(&PAD[..plen])]);
        let a = ask_udp(&mut s, &req);
        let m = a.msg();
        assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
        assert!(a.get(attr_type::PADDING).is_some(), "padding {plen}");
        // An empty PADDING attribute (4 bytes) is the most a small request can add.
        assert!(
            a.out.len() <= req.len().max(base + 4),
            "padding {plen}: request {} response {}",
            req.len(),
            a.out.len()
        );
        if req.len() > base + 64 {
            // RFC 5780 section 6.1: the response does grow towards the request's size.
            assert!(
                a.out.len() + 8 >= req.len(),
                "padding {plen}: {} vs {}",
                a.out.len(),
                req.len()
            );
        }
    }
}

#[test]
fn rfc3489_request_gets_classic_attributes() {
    let cfg = config(true);
    let mut s = StunServer::new(cfg.clone(), Instant::now());
    let tid = TransactionId::new_rfc3489([0x5a; 16]);
    assert!(tid.is_rfc3489());
    let req = build(MessageType::BINDING_REQUEST, tid, &[], false);
    let a = ask(&mut s, Transport::Udp, EndpointId(1), src(), &req);
    assert_eq!(
        a.outcome,
        Outcome::Reply {
            from: EndpointId(1),
            to: src()
        }
    );
    assert_eq!(a.msg().transaction_id(), tid);
    assert_eq!(a.addr(attr_type::MAPPED_ADDRESS), Some(src()));
    assert_eq!(
        a.addr(attr_type::SOURCE_ADDRESS),
        Some(cfg.addr(EndpointId(1)))
    );
    // The alternate endpoint, as for OTHER-ADDRESS.
    assert_eq!(
        a.addr(attr_type::CHANGED_ADDRESS),
        Some(cfg.addr(EndpointId(3)))
    );
    for absent in [
        attr_type::XOR_MAPPED_ADDRESS,
        attr_type::RESPONSE_ORIGIN,
        attr_type::OTHER_ADDRESS,
        attr_type::FINGERPRINT,
    ] {
        assert!(
            a.get(absent).is_none(),
            "0x{absent:04x} in an RFC 3489 response"
        );
    }

    // RFC 3489 section 11.2.3: CHANGED-ADDRESS does not follow the change.
    let req = build(
        MessageType::BINDING_REQUEST,
        tid,
        &[change(true, true)],
        false,
    );
    let a = ask(&mut s, Transport::Udp, EndpointId::PRIMARY, src(), &req);
    assert_eq!(reply_from(&a), EndpointId(3));
    assert_eq!(
        a.addr(attr_type::SOURCE_ADDRESS),
        Some(cfg.addr(EndpointId(3)))
    );
    assert_eq!(
        a.addr(attr_type::CHANGED_ADDRESS),
        Some(cfg.addr(EndpointId(3)))
    );
}

#[test]
fn rfc3489_errors_have_no_fingerprint() {
    let mut s = StunServer::new(config(false), Instant::now());
    let tid = TransactionId::new_rfc3489([0x11; 16]);
    let a = ask_udp(
        &mut s,
        &build(
            MessageType::BINDING_REQUEST,
            tid,
            &[change(true, false)],
            false,
        ),
    );
    assert_eq!(a.error_code(), 420);
    assert!(a.get(attr_type::FINGERPRINT).is_none());
}

#[test]
fn unknown_comprehension_required_attribute_is_420() {
    let mut s = StunServer::new(config(true), Instant::now());
    let req = binding(&[
        Attribute::Other {
            typ: 0x7777,
            value: b"abcd",
        },
        Attribute::Other {
            typ: 0x8777,
            value: b"opt",
        },
        Attribute::Other {
            typ: 0x0030,
            value: b"",
        },
    ]);
    let a = ask_udp(&mut s, &req);
    assert_eq!(a.error_code(), 420);
    assert_eq!(a.unknown(), vec![0x7777, 0x0030]);
    assert_eq!(
        a.msg().transaction_id(),
        Message::parse(&req).unwrap().transaction_id()
    );
    assert_eq!(
        (s.stats.requests, s.stats.errors, s.stats.success),
        (1, 1, 0)
    );
}

#[test]
fn unknown_comprehension_optional_attribute_is_ignored() {
    let mut s = StunServer::new(config(true), Instant::now());
    let req = binding(&[Attribute::Other {
        typ: 0xc057,
        value: b"\x00\x01\x00\x00",
    }]);
    assert_eq!(
        ask_udp(&mut s, &req).msg().message_type(),
        MessageType::BINDING_SUCCESS
    );
}

#[test]
fn many_unknown_attributes_do_not_buy_a_larger_answer() {
    let mut s = StunServer::new(config(true), Instant::now());
    let attrs: Vec<_> = (0x7000..0x7040u16)
        .map(|typ| Attribute::Other { typ, value: b"" })
        .collect();
    let req = binding(&attrs);
    let a = ask_udp(&mut s, &req);
    assert_eq!(a.error_code(), 420);
    // A prefix of the unknown types, in request order, as many as the server collects.
    assert_eq!(a.unknown(), (0x7000..0x7020).collect::<Vec<u16>>());
    assert!(a.out.len() <= req.len());
    // Sixteen unknown types in an 84-byte request: all listed, within coturn's 92 bytes.
    let req = binding(&attrs[..16]);
    let a = ask_udp(&mut s, &req);
    assert_eq!(a.unknown(), (0x7000..0x7010).collect::<Vec<u16>>());
    assert!(a.out.len() <= 92, "{}", a.out.len());
}

#[test]
fn error_responses_cut_the_phrase_and_the_list_to_the_budget() {
    let mut s = StunServer::new(config(true), Instant::now());
    let req = binding(&[]);
    let msg = Message::parse(&req).unwrap();
    let types: Vec<u8> = (0x7000..0x7028u16).flat_map(u16::to_be_bytes).collect();
    let mut out = Vec::new();
    s.error(92, &msg, 420, "Unknown Attribute", &types, &mut out);
    assert!(out.len() <= 92, "{}", out.len());
    let m = Message::parse(&out).unwrap();
    let Some(Ok(Attribute::ErrorCode(e))) = m.get(attr_type::ERROR_CODE) else {
        panic!("no ERROR-CODE");
    };
    assert_eq!((e.code, e.reason), (420, ""));
    let Some(Ok(Attribute::UnknownAttributes(l))) = m.get(attr_type::UNKNOWN_ATTRIBUTES) else {
        panic!("no UNKNOWN-ATTRIBUTES");
    };
    assert_eq!(
        l.iter().collect::<Vec<_>>(),
        (0x7000..0x701a).collect::<Vec<u16>>()
    );
    // A phrase alone is cut to whole words when it does not fit.
    let long = "x".repeat(200);
    out.clear();
    s.error(92, &msg, 400, &long, &[], &mut out);
    assert_eq!(out.len(), 92);
    assert!(Message::parse(&out).is_ok());
}

#[test]
fn malformed_known_attribute_is_400() {
    let mut s = StunServer::new(config(true), Instant::now());
    let req = binding(&[Attribute::Other {
        typ: attr_type::CHANGE_REQUEST,
        value: &[0, 0, 0, 6, 0, 0, 0, 0],
    }]);
    assert_eq!(ask_udp(&mut s, &req).error_code(), 400);
    // A broken comprehension-optional attribute is ignored (RFC 8489 section 14).
    let req = binding(&[Attribute::Other {
        typ: attr_type::SOFTWARE,
        value: &[0xff, 0xfe, 0xfd, 0xfc],
    }]);
    assert_eq!(
        ask_udp(&mut s, &req).msg().message_type(),
        MessageType::BINDING_SUCCESS
    );
}

#[test]
fn unknown_method_is_400() {
    let mut s = StunServer::new(config(true), Instant::now());
    let mt = MessageType {
        method: Method::Other(0x00b),
        class: Class::Request,
    };
    let a = ask_udp(
        &mut s,
        &build(mt, TransactionId::random(&mut rand::rng()), &[], false),
    );
    assert_eq!(a.error_code(), 400);
    assert_eq!(a.msg().message_type().method, Method::Other(0x00b));
    assert_eq!(
        a.outcome,
        Outcome::Reply {
            from: EndpointId::PRIMARY,
            to: src()
        }
    );
}

#[test]
fn malformed_input_is_dropped() {
    let mut s = StunServer::new(config(true), Instant::now());
    let good = build(
        MessageType::BINDING_REQUEST,
        TransactionId::random(&mut rand::rng()),
        &[],
        true,
    );
    let mut bad_fingerprint = good.clone();
    *bad_fingerprint.last_mut().unwrap() ^= 1;
    let mut long_header = good.clone();
    long_header[3] += 4;
    let mut high_bits = good.clone();
    high_bits[0] |= 0x80;
    let mut overrun = binding(&[Attribute::Other {
        typ: 0x8001,
        value: b"abcd",
    }]);
    overrun[22..24].copy_from_slice(&200u16.to_be_bytes());
    let cases: [&[u8]; 7] = [
        b"",
        &good[..19],
        &good[..good.len() - 4],
        &bad_fingerprint,
        &long_header,
        &high_bits,
        &overrun,
    ];
    for (i, c) in cases.iter().enumerate() {
        let a = ask_udp(&mut s, c);
        assert_eq!(a.outcome, Outcome::Drop(DropReason::Malformed), "case {i}");
        assert!(a.out.is_empty(), "case {i}");
    }
    assert_eq!(s.stats.malformed, cases.len() as u64);
    assert_eq!(s.stats.requests, 0);
}

#[test]
fn indications_and_responses_are_dropped() {
    let mut s = StunServer::new(config(true), Instant::now());
    for class in [Class::Indication, Class::Success, Class::Error] {
        let mt = MessageType {
            method: Method::Binding,
            class,
        };
        let a = ask_udp(
            &mut s,
            &build(mt, TransactionId::random(&mut rand::rng()), &[], true),
        );
        assert_eq!(
            a.outcome,
            Outcome::Drop(DropReason::NotRequest),
            "{class:?}"
        );
        assert!(a.out.is_empty());
    }
    assert_eq!((s.stats.not_request, s.stats.requests), (3, 0));
}

#[test]
fn long_software_is_left_out_rather_than_exceed_the_budget() {
    let mut cfg = config(true);
    cfg.software = Some("x".repeat(300));
    let mut s = StunServer::new(cfg, Instant::now());
    let a = ask_udp(&mut s, &binding(&[]));
    assert!(a.out.len() <= 92, "{}", a.out.len());
    assert!(a.get(attr_type::SOFTWARE).is_none());
    for t in [
        attr_type::XOR_MAPPED_ADDRESS,
        attr_type::RESPONSE_ORIGIN,
        attr_type::OTHER_ADDRESS,
        attr_type::MAPPED_ADDRESS,
    ] {
        assert!(a.get(t).is_some(), "{t:#06x}");
    }
    assert_eq!(a.types().last(), Some(&attr_type::FINGERPRINT));
}

#[test]
fn ipv6_answers_keep_every_discovery_attribute_within_coturns_size() {
    let mut cfg = config_v6();
    cfg.software = Some("punchraw".into());
    let mut s = StunServer::new(cfg, Instant::now());
    let src6: SocketAddr = "[2001:db8:9::7]:40000".parse().unwrap();
    let req = binding(&[]);
    let a = ask(&mut s, Transport::Udp, EndpointId::PRIMARY, src6, &req);
    assert!(a.out.len() <= COTURN_BINDING_V6, "{}", a.out.len());
    for t in [
        attr_type::XOR_MAPPED_ADDRESS,
        attr_type::RESPONSE_ORIGIN,
        attr_type::OTHER_ADDRESS,
        attr_type::MAPPED_ADDRESS,
        attr_type::SOFTWARE,
        attr_type::FINGERPRINT,
    ] {
        assert!(a.get(t).is_some(), "{t:#06x}");
    }
}

/// What coturn 4.6.1 (`turnserver --stun-only -L 127.0.0.1 -L 127.0.0.2 -L ::1`) answered to
/// each request shape on loopback, IPv4 and IPv6 source; `None`: no answer at all.
#[test]
fn no_answer_is_larger_than_coturns_to_the_same_request() {
    static PAD100: [u8; 100] = [0; 100];
    static PAD1000: [u8; 1000] = [0; 1000];
    let unknown: Vec<_> = (0x0040..0x005eu16)
        .map(|typ| Attribute::Other { typ, value: b"" })
        .collect();
    let long_software = "s".repeat(200);
    let fp = |attrs: &[Attribute<'_>]| {
        build(
            MessageType::BINDING_REQUEST,
            TransactionId::random(&mut rand::rng()),
            attrs,
            true,
        )
    };
    let mut classic_tid = [7u8; 16];
    classic_tid[0] = 0;
    // (name, request, coturn's answer to IPv4, coturn's answer to IPv6)
    type Shape = (&'static str, Vec<u8>, Option<usize>, Option<usize>);
    let shapes: Vec<Shape> = vec![
        ("plain", binding(&[]), Some(92), Some(140)),
        ("fingerprint", fp(&[]), Some(100), Some(148)),
        (
            "rfc3489",
            build(
                MessageType::BINDING_REQUEST,
                TransactionId(classic_tid),
                &[],
                false,
            ),
            Some(84),
            Some(120),
        ),
        (
            "change ip+port",
            binding(&[change(true, true)]),
            Some(92),
            Some(140),
        ),
        (
            "change port",
            binding(&[change(false, true)]),
            Some(92),
            Some(140),
        ),
        ("16 unknown", binding(&unknown[..16]), Some(108), Some(108)),
        ("30 unknown", binding(&unknown[..30]), Some(136), Some(136)),
        (
            "padding 100",
            binding(&[Attribute::Padding(&PAD100)]),
            Some(1596),
            Some(1644),
        ),
        (
            "padding 1000",
            binding(&[Attribute::Padding(&PAD1000)]),
            Some(1596),
            Some(1644),
        ),
        (
            "bad xor-mapped",
            binding(&[Attribute::Other {
                typ: attr_type::XOR_MAPPED_ADDRESS,
                value: b"\0",
            }]),
            Some(80),
            Some(80),
        ),
        (
            "username",
            binding(&[Attribute::Username(&[b'u'; 40])]),
            Some(92),
            Some(140),
        ),
        (
            "software",
            binding(&[Attribute::Software(&long_software)]),
            Some(92),
            Some(140),
        ),
        // coturn ignores other methods; we answer 400 as RFC 8489 section 6.3.1 asks, within
        // the size of a Binding answer (which anyone can ask for instead).
        (
            "allocate",
            build(
                MessageType::from_u16(0x0003),
                TransactionId::random(&mut rand::rng()),
                &[],
                false,
            ),
            None,
            None,
        ),
    ];
    let src6: SocketAddr = "[2001:db8:9::7]:40000".parse().unwrap();
    for (name, req, v4, v6) in &shapes {
        for (cfg, src, coturn) in [(config(true), src(), v4), (config_v6(), src6, v6)] {
            let mut s = StunServer::new(cfg, Instant::now());
            let a = ask(&mut s, Transport::Udp, EndpointId::PRIMARY, src, req);
            let bound = coturn.unwrap_or(response_limit(0, src));
            assert!(
                a.out.len() <= bound,
                "{name} from {src}: {} bytes, coturn {coturn:?}",
                a.out.len()
            );
            assert!(a.out.len() <= response_limit(req.len(), src));
        }
    }
}

#[test]
fn plain_binding_answer_is_no_larger_than_coturns() {
    // Anti-amplification: a 20-byte request must not buy more than coturn's 92-byte answer.
    for discovery in [false, true] {
        let mut s = StunServer::new(config(discovery), Instant::now());
        let req = binding(&[]);
        assert_eq!(req.len(), 20);
        let a = ask_udp(&mut s, &req);
        assert_eq!(a.msg().message_type(), MessageType::BINDING_SUCCESS);
        assert!(
            a.out.len() <= 92,
            "discovery {discovery}: {} bytes",
            a.out.len()
        );
    }
}

fn arbitrary_attr() -> impl Strategy<Value = (u16, Vec<u8>)> {
    let typ = prop_oneof![
        Just(attr_type::CHANGE_REQUEST),
        Just(attr_type::CONNECT_BACK),
        Just(attr_type::RESPONSE_PORT),
        Just(attr_type::PADDING),
        Just(attr_type::MAPPED_ADDRESS),
        Just(attr_type::XOR_MAPPED_ADDRESS),
        Just(attr_type::USERNAME),
        Just(attr_type::SOFTWARE),
        Just(attr_type::ERROR_CODE),
        Just(attr_type::UNKNOWN_ATTRIBUTES),
        Just(attr_type::MESSAGE_INTEGRITY),
        any::<u16>(),
    ];
    (typ, prop::collection::vec(any::<u8>(), 0..48))
}

/// Well-framed messages with arbitrary types, IDs and attributes: they get past the parser,
/// so they exercise the request logic rather than only the length checks.
fn framed() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        any::<bool>(),
        any::<[u8; 16]>(),
        prop::collection::vec(arbitrary_attr(), 0..6),
        any::<bool>(),
    )
        .prop_map(|(typ, request, mut tid, attrs, fingerprint)| {
            let mut mt = MessageType::from_u16(typ & 0x3fff);
            if request {
                mt.class = Class::Request;
            }
            if tid[0] & 1 == 0 {
                tid[..4].copy_from_slice(&crate::core::stun::MAGIC_COOKIE.to_be_bytes());
            }
            let attrs: Vec<_> = attrs
                .iter()
                .map(|(typ, value)| Attribute::Other { typ: *typ, value })
                .collect();
            build(mt, TransactionId(tid), &attrs, fingerprint)
        })
}

fn check_any_input(
    input: &[u8],
    transport: Transport,
    local: u8,
    peer: SocketAddr,
) -> Result<(), TestCaseError> {
    for cfg in [config(true), config(false), config_v6()] {
        let n = cfg.endpoints().len() as u8;
        let local = EndpointId(local % n);
        let mut s = StunServer::new(cfg, Instant::now());
        let mut out = Vec::new();
        match s.handle(Instant::now(), transport, local, peer, input, &mut out) {
            Outcome::Reply { from, to } => {
                prop_assert_eq!(to.ip(), peer.ip());
                prop_assert!(from.0 < n);
                if transport == Transport::Tcp {
                    prop_assert_eq!((from, to), (local, peer));
                }
                prop_assert!(Message::parse(&out).is_ok());
                // Amplification bound: never more than the request or coturn's plain
                // answer (92 bytes to IPv4, 140 to IPv6).
                prop_assert!(
                    out.len() <= response_limit(input.len(), peer),
                    "{} -> {}",
                    input.len(),
                    out.len()
                );
            }
            Outcome::Drop(_) => prop_assert!(out.is_empty()),
        }
    }
    Ok(())
}

fn transport() -> impl Strategy<Value = Transport> {
    prop_oneof![Just(Transport::Udp), Just(Transport::Tcp)]
}

fn peer() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        3 => (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        1 => (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_and_replies_go_to_the_sender(
        input in prop::collection::vec(any::<u8>(), 0..600),
        transport in transport(),
        local in 0u8..4,
        peer in peer(),
    ) {
        check_any_input(&input, transport, local, peer)?;
    }

    #[test]
    fn framed_messages_never_panic_and_replies_go_to_the_sender(
        input in framed(),
        transport in transport(),
        local in 0u8..4,
        peer in peer(),
    ) {
        check_any_input(&input, transport, local, peer)?;
    }
}

// --per-source-limit

fn limited(rate: u32) -> ServerConfig {
    ServerConfig {
        per_source_limit: Some(rate),
        seed: 0,
        ..config(true)
    }
}

/// Sends `per_tick` Binding requests in `victim`'s name every `tick` for `secs` seconds of
/// virtual time; returns the answers per whole second.
fn flood(
    s: &mut StunServer,
    t0: Instant,
    victim: SocketAddr,
    secs: u64,
    tick: Duration,
    per_tick: usize,
) -> Vec<u64> {
    let req = binding(&[]);
    let mut out = Vec::new();
    let mut per_second = vec![0u64; secs as usize];
    let mut t = Duration::ZERO;
    while t < Duration::from_secs(secs) {
        for _ in 0..per_tick {
            let o = s.handle(
                t0 + t,
                Transport::Udp,
                EndpointId::PRIMARY,
                victim,
                &req,
                &mut out,
            );
            if let Outcome::Reply { to, .. } = o {
                assert_eq!(to.ip(), victim.ip());
                per_second[t.as_secs() as usize] += 1;
            }
        }
        t += tick;
    }
    per_second
}

#[test]
fn spoofed_victim_receives_at_most_the_limit() {
    let t0 = Instant::now();
    let rate = 50;
    let mut s = StunServer::new(limited(rate), Instant::now());
    // 100,000 requests per second of virtual time in the victim's name, for 10 s.
    let got = flood(&mut s, t0, src(), 10, Duration::from_millis(1), 100);
    // A burst of `rate`, then the sustained rate: never more than 2 x rate in any second,
    // rate x t + rate over any t seconds, and the budget is used.
    let total: u64 = got.iter().sum();
    assert!(total <= 10 * u64::from(rate) + u64::from(rate), "{got:?}");
    assert!(total >= 10 * u64::from(rate), "{got:?}");
    for (i, n) in got.iter().enumerate().skip(1) {
        assert!(*n <= u64::from(rate) + 1, "second {i}: {n}");
    }
    assert!(got[0] <= 2 * u64::from(rate));
    assert_eq!(s.stats.rate_limited + total, 1_000_000);
    assert_eq!(s.stats.requests, total);
}

#[test]
fn limit_applies_to_errors_and_every_endpoint_and_not_to_tcp() {
    let t0 = Instant::now();
    let mut s = StunServer::new(limited(3), t0);
    let bad = binding(&[Attribute::Other {
        typ: 0x7777,
        value: b"",
    }]);
    let mut out = Vec::new();
    let mut answered = 0;
    for i in 0..40u8 {
        let local = EndpointId(i % 4);
        if let Outcome::Reply { .. } = s.handle(t0, Transport::Udp, local, src(), &bad, &mut out) {
            answered += 1;
        }
    }
    assert_eq!(answered, 3);
    assert_eq!(s.stats.rate_limited, 37);
    for _ in 0..40 {
        let o = s.handle(
            t0,
            Transport::Tcp,
            EndpointId::PRIMARY,
            src(),
            &bad,
            &mut out,
        );
        assert!(matches!(o, Outcome::Reply { .. }), "TCP is never limited");
    }
    // After a second the budget is back.
    let later = t0 + Duration::from_secs(1);
    let o = s.handle(
        later,
        Transport::Udp,
        EndpointId::PRIMARY,
        src(),
        &bad,
        &mut out,
    );
    assert!(matches!(o, Outcome::Reply { .. }));
}

#[test]
fn one_limiter_shared_by_threads_bounds_the_total() {
    let t0 = Instant::now();
    let cfg = limited(100);
    let limiter = StunServer::limiter_for(&cfg, t0);
    let answered: u64 = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let mut s = StunServer::with_limiter(cfg.clone(), limiter.clone());
                sc.spawn(move || flood(&mut s, t0, src(), 2, Duration::from_millis(10), 50))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap().iter().sum::<u64>())
            .sum()
    });
    assert!(answered <= 2 * 100 + 100, "{answered}");
}

#[test]
fn other_sources_keep_their_own_budget_and_memory_is_fixed() {
    let t0 = Instant::now();
    let lim = SourceLimiter::new(2, t0, 7);
    // A spoofed flood from a million sources: the table does not grow.
    for i in 0..1_000_000u32 {
        lim.allow(t0, IpAddr::from(i.to_be_bytes()));
    }
    assert_eq!(
        format!("{lim:?}"),
        format!("SourceLimiter {{ rate: 2, buckets: {} }}", limit::BUCKETS)
    );
    // Sources that share nothing with the victim still get answers (a few may share its
    // bucket by chance of the hash, and then its budget).
    let victim = IpAddr::from([198, 51, 100, 9]);
    let t1 = t0 + Duration::from_secs(5);
    while lim.allow(t1, victim) {}
    let others = (0..200u8)
        .filter(|&i| lim.allow(t1, IpAddr::from([100, 64, 7, i])))
        .count();
    assert!(others >= 190, "{others}");
}

#[test]
fn ipv6_sources_share_the_budget_of_their_64() {
    let t1 = Instant::now();
    let lim = SourceLimiter::new(2, t1, 7);
    let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:ffff::99".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert!(lim.allow(t1, a) && lim.allow(t1, b));
    assert!(!lim.allow(t1, a) && !lim.allow(t1, b));
    assert!(lim.allow(t1, c));
}

#[test]
fn the_seed_decides_which_sources_share_a_bucket() {
    let t0 = Instant::now();
    let victim = IpAddr::from([198, 51, 100, 9]);
    // Which of 256 sources lost their answer to a drained victim's bucket.
    let sharers = |seed| {
        let lim = SourceLimiter::with_buckets(1, t0, 64, seed);
        while lim.allow(t0, victim) {}
        (0..=255u8)
            .filter(|&i| !lim.allow(t0, IpAddr::from([100, 64, 7, i])))
            .collect::<Vec<_>>()
    };
    let (one, two) = (sharers(1), sharers(2));
    assert!(!one.is_empty() && !two.is_empty());
    assert_eq!(one, sharers(1), "a seed reproduces the table");
    assert_ne!(one, two, "another seed shares with other sources");
}

#[test]
fn a_tiny_table_only_lowers_what_each_source_gets() {
    let t0 = Instant::now();
    let lim = SourceLimiter::with_buckets(10, t0, 1, 0);
    let mut n = 0;
    for i in 0..100u8 {
        if lim.allow(t0, IpAddr::from([10, 0, 0, i])) {
            n += 1;
        }
    }
    assert_eq!(n, 10);
}

// CONNECT-BACK (punchraw's TCP filtering test)

fn connect_back(ip: bool, port: bool) -> Attribute<'static> {
    Attribute::ConnectBack {
        change_ip: ip,
        change_port: port,
    }
}

fn ask_tcp(
    s: &mut StunServer,
    local: EndpointId,
    from: SocketAddr,
    input: &[u8],
    room: bool,
) -> (Answer, Option<ConnectBack>) {
    let mut out = vec![0xee; 7];
    let (outcome, cb) = s.handle_tcp(local, from, input, &mut out, room);
    (Answer { outcome, out }, cb)
}

#[test]
fn connect_back_is_promised_and_asked_for_from_the_flipped_endpoint() {
    let cfg = config(true);
    for local in 0..4u8 {
        let local = EndpointId(local);
        for (ip, port) in [(false, true), (true, false), (true, true)] {
            let mut s = StunServer::new(cfg.clone(), Instant::now());
            let req = build(
                MessageType::BINDING_REQUEST,
                TransactionId::random(&mut rand::rng()),
                &[connect_back(ip, port)],
                true,
            );
            let (a, cb) = ask_tcp(&mut s, local, src(), &req, true);
            assert_eq!(a.msg().message_type(), MessageType::BINDING_SUCCESS);
            // The answer itself goes back on the connection.
            assert_eq!(
                a.outcome,
                Outcome::Reply {
                    from: local,
                    to: src()
                }
            );
            let want = local.flip(ip, port);
            assert_eq!(
                cb,
                Some(ConnectBack {
                    from: want,
                    to: src()
                })
            );
            assert_eq!(
                a.get(attr_type::CONNECT_BACK_ORIGIN),
                Some(Attribute::ConnectBackOrigin(cfg.addr(want)))
            );
            assert_eq!(a.addr(attr_type::XOR_MAPPED_ADDRESS), Some(src()));
            // Still everything RFC 5780 clients read.
            assert_eq!(
                a.addr(attr_type::OTHER_ADDRESS),
                Some(cfg.addr(EndpointId(3)))
            );
        }
    }
}

#[test]
fn connect_back_is_ignored_where_it_cannot_or_must_not_happen() {
    let req = binding(&[connect_back(true, true)]);
    let no_origin = |a: &Answer| {
        assert_eq!(a.msg().message_type(), MessageType::BINDING_SUCCESS);
        assert_eq!(a.get(attr_type::CONNECT_BACK_ORIGIN), None);
    };
    // Over UDP: the source address is not proven, and `handle` never offers it.
    let mut s = StunServer::new(config(true), Instant::now());
    no_origin(&ask_udp(&mut s, &req));
    no_origin(&ask(
        &mut s,
        Transport::Tcp,
        EndpointId::PRIMARY,
        src(),
        &req,
    ));
    // No alternate address: there is no other endpoint to connect from.
    let mut s = StunServer::new(config(false), Instant::now());
    let (a, cb) = ask_tcp(&mut s, EndpointId::PRIMARY, src(), &req, true);
    no_origin(&a);
    assert_eq!(cb, None);
    // The caller has no room for another connection.
    let mut s = StunServer::new(config(true), Instant::now());
    let (a, cb) = ask_tcp(&mut s, EndpointId::PRIMARY, src(), &req, false);
    no_origin(&a);
    assert_eq!(cb, None);
    // Neither flag: that would be this connection's own 4-tuple.
    let (a, cb) = ask_tcp(
        &mut s,
        EndpointId::PRIMARY,
        src(),
        &binding(&[connect_back(false, false)]),
        true,
    );
    no_origin(&a);
    assert_eq!(cb, None);
    // A malformed value of a comprehension-optional attribute is ignored (RFC 8489
    // section 14), not an error.
    let bad = binding(&[Attribute::Other {
        typ: attr_type::CONNECT_BACK,
        value: b"\x00\x06",
    }]);
    let (a, cb) = ask_tcp(&mut s, EndpointId::PRIMARY, src(), &bad, true);
    no_origin(&a);
    assert_eq!(cb, None);
    // An RFC 3489 client cannot have meant it.
    let classic = build(
        MessageType::BINDING_REQUEST,
        TransactionId::new_rfc3489([7; 16]),
        &[connect_back(true, true)],
        false,
    );
    let (a, cb) = ask_tcp(&mut s, EndpointId::PRIMARY, src(), &classic, true);
    assert_eq!(a.get(attr_type::CONNECT_BACK_ORIGIN), None);
    assert_eq!(cb, None);
    // With CHANGE-REQUEST, which TCP cannot honour, the 420 wins and nothing is opened.
    let both = binding(&[connect_back(true, true), change(false, true)]);
    let (a, cb) = ask_tcp(&mut s, EndpointId::PRIMARY, src(), &both, true);
    assert_eq!(a.error_code(), 420);
    assert_eq!(cb, None);
}

#[test]
fn connect_back_answers_stay_within_the_budget() {
    for (cfg, peer) in [
        (config(true), src()),
        (config_v6(), "[2001:db8:9::7]:40000".parse().unwrap()),
    ] {
        let mut s = StunServer::new(cfg, Instant::now());
        // The smallest request that can carry it: header, CONNECT-BACK, no FINGERPRINT.
        let req = binding(&[connect_back(false, true)]);
        let (a, cb) = ask_tcp(&mut s, EndpointId::PRIMARY, peer, &req, true);
        assert!(cb.is_some());
        assert!(
            a.out.len() <= response_limit(req.len(), peer),
            "{}",
            a.out.len()
        );
        assert!(a.get(attr_type::CONNECT_BACK_ORIGIN).is_some());
        assert!(a.get(attr_type::FINGERPRINT).is_some());
    }
}

fn check_connect_back(input: &[u8], local: u8, peer: SocketAddr) -> Result<(), TestCaseError> {
    for cfg in [config(true), config(false), config_v6()] {
        let n = cfg.endpoints().len() as u8;
        let local = EndpointId(local % n);
        let mut s = StunServer::new(cfg.clone(), Instant::now());
        let mut out = Vec::new();
        let (outcome, cb) = s.handle_tcp(local, peer, input, &mut out, true);
        if let Some(cb) = cb {
            // Only to the requester, from another of our endpoints, after a success that
            // says where from.
            prop_assert_eq!(cb.to, peer);
            prop_assert_ne!(cb.from, local);
            prop_assert!(cb.from.0 < n);
            prop_assert_eq!(
                outcome,
                Outcome::Reply {
                    from: local,
                    to: peer
                }
            );
            let m = Message::parse(&out).expect("parses");
            prop_assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
            prop_assert_eq!(
                m.get(attr_type::CONNECT_BACK_ORIGIN),
                Some(Ok(Attribute::ConnectBackOrigin(cfg.addr(cb.from))))
            );
        } else if let Ok(m) = Message::parse(&out) {
            prop_assert!(m.get(attr_type::CONNECT_BACK_ORIGIN).is_none());
        }
        if let Outcome::Reply { .. } = outcome {
            prop_assert!(out.len() <= response_limit(input.len(), peer));
        }
    }
    Ok(())
}

fn connect_back_request() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<[u8; 12]>(),
        prop::collection::vec(arbitrary_attr(), 0..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(ip, port, tid, attrs, first, fingerprint)| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&crate::core::stun::MAGIC_COOKIE.to_be_bytes());
            id[4..].copy_from_slice(&tid);
            let tid = TransactionId(id);
            let mut list: Vec<Attribute<'_>> = attrs
                .iter()
                .map(|(typ, value)| Attribute::Other { typ: *typ, value })
                .collect();
            let cb = connect_back(ip, port);
            if first {
                list.insert(0, cb);
            } else {
                list.push(cb);
            }
            build(MessageType::BINDING_REQUEST, tid, &list, fingerprint)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn connect_back_goes_only_to_the_requester(
        input in connect_back_request(),
        local in 0u8..4,
        peer in peer(),
    ) {
        check_connect_back(&input, local, peer)?;
    }

    #[test]
    fn connect_back_on_arbitrary_bytes_never_panics(
        input in prop::collection::vec(any::<u8>(), 0..300),
        local in 0u8..4,
        peer in peer(),
    ) {
        check_connect_back(&input, local, peer)?;
    }
}

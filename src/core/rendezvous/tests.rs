use super::*;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, last)), port)
}

const SECRET: &[u8] = b"right";

fn key(session: &str) -> [u8; 32] {
    derive_rendezvous_key(SECRET, session)
}

/// A register signed with the right key, carrying the key (creates the session if needed).
fn register(session: &str, peer: &str, rtt_ms: u32) -> Vec<u8> {
    register_seq(session, peer, rtt_ms, next_seq())
}

fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn register_seq(session: &str, peer: &str, rtt_ms: u32, seq: u64) -> Vec<u8> {
    signed_register(
        session,
        peer,
        rtt_ms,
        seq,
        Some(&key(session)),
        &key(session),
    )
}

fn signed_register(
    session: &str,
    peer: &str,
    rtt_ms: u32,
    seq: u64,
    send_key: Option<&[u8; 32]>,
    mac_key: &[u8; 32],
) -> Vec<u8> {
    Msg::Register {
        session: session.into(),
        peer: peer.into(),
        seq,
        key: send_key.map(|k| crate::core::hex::encode(k)),
        locals: vec![addr(200, 5000)],
        nat: NatInfo::unknown(),
        tcp: None,
        mapped: None,
        relayed: None,
        udp_blocked: false,
        pairing: None,
        rtt_ms,
        mac: String::new(),
    }
    .encode_signed(mac_key)
}

const A: &str = "00000000000000aa";
const B: &str = "00000000000000bb";
const C: &str = "00000000000000cc";

fn decode(out: &[(SocketAddr, Vec<u8>)], to: SocketAddr) -> Vec<Msg> {
    out.iter()
        .filter(|(d, _)| *d == to)
        .map(|(_, b)| Msg::decode(b).expect("server sends valid messages"))
        .collect()
}

#[test]
fn the_peer_rtt_is_both_server_rtts_or_twice_ours_from_an_older_server() {
    let ms = Duration::from_millis;
    // A peer next to the server and one 250 ms from it: 260 ms apart, not 20.
    assert_eq!(peer_rtt(ms(10), Some(250)), ms(260));
    assert_eq!(peer_rtt(ms(250), Some(10)), ms(260));
    assert_eq!(peer_rtt(ms(80), Some(80)), ms(160));
    assert_eq!(peer_rtt(ms(80), None), ms(160));
}

/// A retry's session is a valid name for the server whatever the agreed one was, and the
/// same on both sides.
#[test]
fn a_retry_session_is_the_agreed_one_with_the_attempt_and_still_valid() {
    assert_eq!(retry_session("game-42", 2), "game-42#2");
    let long = "é".repeat(64); // 128 bytes, the most a name may have
    let r = retry_session(&long, 3);
    assert!(valid_session(&r), "{} bytes", r.len());
    assert!(r.ends_with("#3") && r.starts_with("éé"));
    assert_ne!(retry_session(&long, 2), r);
}

#[test]
fn two_peers_meet_with_start_times_that_coincide() {
    let mut r = Rendezvous::new(RendezvousConfig::default());
    let t0 = Instant::now();
    let out = r.handle(t0, addr(1, 1000), &register("s", A, 40));
    assert!(matches!(
        decode(&out, addr(1, 1000))[..],
        [Msg::Waiting { .. }]
    ));
    let t1 = t0 + Duration::from_millis(500);
    let out = r.handle(t1, addr(2, 2000), &register("s", B, 100));
    let to_a = decode(&out, addr(1, 1000));
    let to_b = decode(&out, addr(2, 2000));
    let (
        Msg::Peer {
            peer: pa,
            start_in_ms: sa,
            you: ya,
            joined_second: second_a,
        },
        Msg::Peer {
            peer: pb,
            start_in_ms: sb,
            joined_second: second_b,
            ..
        },
    ) = (&to_a[0], &to_b[0])
    else {
        panic!("both get the other: {to_a:?} {to_b:?}");
    };
    assert_eq!(pa.id, B);
    assert_eq!(pa.public, addr(2, 2000));
    assert_eq!(pb.id, A);
    assert_eq!(*ya, addr(1, 1000));
    // Each hears how far the other is from the server, and so how far the other is.
    assert_eq!((pa.rtt_ms, pb.rtt_ms), (Some(100), Some(40)));
    assert_eq!(
        peer_rtt(Duration::from_millis(40), pa.rtt_ms),
        Duration::from_millis(140)
    );
    // B came last: it plays the TLS client, and both are told alike.
    assert_eq!((*second_a, *second_b), (Some(false), Some(true)));
    // Arrival (half the RTT) plus the wait must be the same moment for both.
    assert_eq!(sa + 20, sb + 50);
    // The slower peer (B, 100 ms RTT) hears 50 ms after the server sent; the start leaves
    // it a quarter of its RTT more for an estimate that is off, plus the 50 ms margin.
    assert!(*sb >= 25, "starts after the slower peer has heard: {sb}");
    assert!(
        *sb <= 100,
        "starts soon after the slower peer has heard: {sb}"
    );
    // A peer that lost its introduction and registers again hears the same roles.
    let out = r.handle(
        t1 + Duration::from_millis(10),
        addr(1, 1000),
        &register("s", A, 40),
    );
    assert!(matches!(
        decode(&out, addr(1, 1000))[..],
        [Msg::Peer {
            joined_second: Some(false),
            ..
        }]
    ));
}

#[test]
fn third_peer_is_refused() {
    let mut r = Rendezvous::new(RendezvousConfig::default());
    let t = Instant::now();
    r.handle(t, addr(1, 1), &register("s", A, 1));
    r.handle(t, addr(2, 2), &register("s", B, 1));
    let out = r.handle(t, addr(3, 3), &register("s", C, 1));
    assert!(matches!(
        decode(&out, addr(3, 3))[..],
        [Msg::Error {
            code: ErrorCode::SessionFull,
            ..
        }]
    ));
}

#[test]
fn lone_peer_is_told_the_other_never_came() {
    let cfg = RendezvousConfig {
        wait_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let mut r = Rendezvous::new(cfg);
    let t = Instant::now();
    for i in 0..10 {
        r.handle(
            t + Duration::from_millis(300 * i),
            addr(1, 1),
            &register("s", A, 1),
        );
    }
    let out = r.expire(t + Duration::from_secs(3));
    assert!(matches!(
        decode(&out, addr(1, 1))[..],
        [Msg::Error {
            code: ErrorCode::PeerTimeout,
            ..
        }]
    ));
    assert_eq!(r.sessions(), 0);
}

#[test]
fn sessions_are_bounded_and_expire() {
    let cfg = RendezvousConfig {
        max_sessions: 10,
        ..Default::default()
    };
    let mut r = Rendezvous::new(cfg);
    let t = Instant::now();
    for i in 0..10u16 {
        r.handle(t, addr(1, i), &register(&format!("s{i}"), A, 1));
    }
    let out = r.handle(t, addr(1, 99), &register("new", A, 1));
    assert!(matches!(
        decode(&out, addr(1, 99))[..],
        [Msg::Error {
            code: ErrorCode::ServerBusy,
            ..
        }]
    ));
    // Idle peers vanish, and so do their sessions.
    r.expire(t + Duration::from_secs(6));
    assert_eq!(r.sessions(), 0);
}

#[test]
fn junk_and_forged_messages_are_dropped() {
    let mut r = Rendezvous::new(RendezvousConfig::default());
    let t = Instant::now();
    for junk in [
        &b""[..],
        b"PRV1",
        b"PRV1{",
        b"PRV1{\"t\":\"register\"}",
        b"PRV1{\"t\":\"peer\",\"you\":\"1.2.3.4:5\"}",
        b"\x00\x01\x00\x00",
    ] {
        assert!(r.handle(t, addr(1, 1), junk).is_empty());
    }
    // A server-to-client message sent to the server, or a bad peer id, is not answered.
    let forged = Msg::Waiting {
        you: addr(1, 1),
        wait_left_ms: 0,
        rejected: 0,
    }
    .encode();
    assert!(r.handle(t, addr(1, 1), &forged).is_empty());
    assert!(r
        .handle(t, addr(1, 1), &register("s", "not-hexnot-hex00", 1))
        .is_empty());
    assert!(r.handle(t, addr(1, 1), &vec![b'P'; 5000]).is_empty());
    assert_eq!(r.sessions(), 0);
}

#[test]
fn bye_frees_only_the_senders_own_entry() {
    let mut r = Rendezvous::new(RendezvousConfig::default());
    let t = Instant::now();
    r.handle(t, addr(1, 1), &register("s", A, 1));
    let bye = Msg::Bye {
        session: "s".into(),
        peer: A.into(),
        seq: next_seq(),
        mac: String::new(),
    }
    .encode_signed(&key("s"));
    r.handle(t, addr(9, 9), &bye);
    assert_eq!(r.sessions(), 1, "a stranger cannot remove A");
    r.handle(t, addr(1, 1), &bye);
    assert_eq!(r.sessions(), 0);
}

fn error_code(out: &[(SocketAddr, Vec<u8>)], to: SocketAddr) -> Option<ErrorCode> {
    match decode(out, to)[..] {
        [Msg::Error { code, .. }] => Some(code),
        _ => None,
    }
}

#[test]
fn signed_messages_verify_and_tampering_fails() {
    let k = key("s");
    let m = register("s", A, 1);
    assert!(verify_mac(&k, &m));
    assert!(!verify_mac(&key("other"), &m));
    // Any changed byte before the MAC breaks it.
    let mut t = m.clone();
    let i = t.windows(6).position(|w| w == b"rtt_ms").unwrap() + 8;
    t[i] = b'9';
    assert!(Msg::decode(&t).is_some());
    assert!(!verify_mac(&k, &t));
    // A second `mac` member is refused by the decoder.
    let mut dup = m[..m.len() - 1].to_vec();
    dup.extend_from_slice(format!(",\"mac\":\"{}\"}}", "0".repeat(64)).as_bytes());
    assert!(Msg::decode(&dup).is_none());
    // Unsigned registers do not decode.
    let unsigned = Msg::Register {
        session: "s".into(),
        peer: A.into(),
        seq: 1,
        key: None,
        locals: vec![],
        nat: NatInfo::unknown(),
        tcp: None,
        mapped: None,
        relayed: None,
        udp_blocked: false,
        pairing: None,
        rtt_ms: 1,
        mac: String::new(),
    }
    .encode();
    assert!(Msg::decode(&unsigned).is_none());
}

#[test]
fn the_key_matches_the_documented_derivation() {
    // HMAC-SHA256(secret, "punchraw v1 rendezvous\0" || session), independent of the punch key.
    let k = derive_rendezvous_key(b"right", "s");
    assert_ne!(k, crate::core::punch::derive_key(b"right", "s"));
    let mut m = HmacSha256::new_from_slice(b"right").unwrap();
    m.update(b"punchraw v1 rendezvous\0s");
    assert_eq!(k, <[u8; 32]>::from(m.finalize().into_bytes()));
}

/// The creator's first register has no key, so it is refused and re-sent with the key one
/// round trip later. A second peer whose first register came in between is refused too, but
/// held: the creation introduces it at once instead of at its own keyed register, a round
/// trip later. Held registers under another key, or older than the hold, earn nothing.
#[test]
fn a_register_that_came_before_its_session_is_introduced_when_it_is_created() {
    let mut r = Rendezvous::new(RendezvousConfig::default());
    let t = Instant::now();
    let ms = Duration::from_millis;
    let a_first = signed_register("s", A, 300, 1, None, &key("s"));
    let b_first = signed_register("s", B, 300, 1, None, &key("s"));
    let stranger = signed_register("s", C, 300, 1, None, &derive_rendezvous_key(b"wrong", "s"));
    for (from, m) in [(1, &a_first), (2, &b_first), (3, &stranger)] {
        let out = r.handle(t + ms(10 * from as u64), addr(from, 1), m);
        assert_eq!(
            error_code(&out, addr(from, 1)),
            Some(ErrorCode::UnknownSession)
        );
    }
    let out = r.handle(
        t + ms(300),
        addr(1, 1),
        &signed_register("s", A, 300, 2, Some(&key("s")), &key("s")),
    );
    assert!(
        matches!(
            decode(&out, addr(2, 1))[..],
            [Msg::Peer { ref peer, .. }] if peer.id == A
        ),
        "{out:?}"
    );
    assert!(
        matches!(
            decode(&out, addr(1, 1))[..],
            [Msg::Waiting { .. }, Msg::Peer { ref peer, .. }] if peer.id == B
        ),
        "{out:?}"
    );
    assert!(decode(&out, addr(3, 1)).is_empty(), "{out:?}");

    // Held too long: the late creator's peer learns of it from its own keyed register.
    let mut r = Rendezvous::new(RendezvousConfig::default());
    r.handle(t, addr(2, 1), &b_first);
    let out = r.handle(
        t + server::HOLD_FOR,
        addr(1, 1),
        &signed_register("s", A, 300, 2, Some(&key("s")), &key("s")),
    );
    assert!(decode(&out, addr(2, 1)).is_empty(), "{out:?}");
}

#[test]
fn unknown_session_without_key_asks_for_it_in_a_small_answer() {
    let mut r = Rendezvous::new(RendezvousConfig::default());
    let t = Instant::now();
    let m = signed_register("s", A, 1, 1, None, &key("s"));
    let out = r.handle(t, addr(1, 1), &m);
    assert_eq!(
        error_code(&out, addr(1, 1)),
        Some(ErrorCode::UnknownSession)
    );
    assert!(out.iter().all(|(_, b)| b.len() <= m.len()));
    assert_eq!(r.sessions(), 0);
    // With the key it is created; later registers need only the MAC.
    let out = r.handle(
        t,
        addr(1, 1),
        &signed_register("s", A, 1, 2, Some(&key("s")), &key("s")),
    );
    assert!(matches!(
        decode(&out, addr(1, 1))[..],
        [Msg::Waiting { .. }]
    ));
    let out = r.handle(
        t,
        addr(1, 1),
        &signed_register("s", A, 1, 3, None, &key("s")),
    );
    assert!(matches!(
        decode(&out, addr(1, 1))[..],
        [Msg::Waiting { .. }]
    ));
}

#[test]
fn wrong_key_is_refused_and_cannot_read_the_peer() {
    let mut r = Rendezvous::new(RendezvousConfig::default());
    let t = Instant::now();
    r.handle(t, addr(1, 1), &register("s", A, 1));
    let wrong = derive_rendezvous_key(b"guess", "s");
    for (seq, send_key) in [(1, None), (2, Some(&wrong))] {
        let m = signed_register("s", B, 1, seq, send_key, &wrong);
        let out = r.handle(t, addr(2, 2), &m);
        assert_eq!(error_code(&out, addr(2, 2)), Some(ErrorCode::Unauthorized));
        assert!(out
            .iter()
            .all(|(to, b)| *to == addr(2, 2) && b.len() <= m.len()));
        assert!(
            decode(&out, addr(1, 1)).is_empty(),
            "A learns nothing of the intruder"
        );
    }
    // The right peer still gets in, and meets A.
    let out = r.handle(t, addr(3, 3), &register("s", B, 1));
    assert!(
        matches!(&decode(&out, addr(3, 3))[..], [Msg::Peer { peer, .. }] if peer.id == A && peer.public == addr(1, 1))
    );
}

#[test]
fn a_replayed_register_from_elsewhere_cannot_take_over() {
    let mut r = Rendezvous::new(RendezvousConfig::default());
    let t = Instant::now();
    let a1 = register_seq("s", A, 1, 10);
    r.handle(t, addr(1, 1), &a1);
    // The attacker saw A's register and replays it from its own address.
    let out = r.handle(t, addr(6, 6), &a1);
    assert!(out.is_empty(), "a replay earns no answer: {out:?}");
    // An older one is no better.
    assert!(r
        .handle(t, addr(6, 6), &register_seq("s", A, 1, 9))
        .is_empty());
    // B arrives and is told A's real endpoint; the attacker hears nothing.
    let out = r.handle(t, addr(2, 2), &register("s", B, 1));
    assert!(decode(&out, addr(6, 6)).is_empty());
    let to_b = decode(&out, addr(2, 2));
    assert!(
        matches!(&to_b[..], [Msg::Peer { peer, .. }] if peer.public == addr(1, 1)),
        "{to_b:?}"
    );
    // A forged bye (wrong key) or a replayed one cannot remove A either.
    let bye = Msg::Bye {
        session: "s".into(),
        peer: A.into(),
        seq: 5,
        mac: String::new(),
    }
    .encode_signed(&key("s"));
    r.handle(t, addr(1, 1), &bye);
    assert_eq!(r.sessions(), 1);
}

#[test]
fn answers_to_unauthenticated_messages_are_never_larger() {
    let mut r = Rendezvous::new(RendezvousConfig {
        max_sessions: 1,
        ..Default::default()
    });
    let t = Instant::now();
    r.handle(t, addr(1, 1), &register("s", A, 1));
    let wrong = derive_rendezvous_key(b"x", "s");
    for m in [
        signed_register("s", B, 1, 1, None, &wrong),
        signed_register("t", B, 1, 1, None, &key("t")),
        signed_register("t", B, 1, 1, Some(&key("t")), &key("t")), // server-busy
        signed_register("t", B, 1, 1, Some(&wrong), &key("t")),
    ] {
        let out = r.handle(t, addr(2, 2), &m);
        assert_eq!(out.len(), 1);
        assert!(
            out[0].1.len() <= m.len(),
            "{} > {}",
            out[0].1.len(),
            m.len()
        );
    }
    assert!(small_error(ErrorCode::Unauthorized, "long text", 10).is_none());
    let e = small_error(ErrorCode::Unauthorized, "long text here", 60).unwrap();
    assert!(e.len() <= 60 && Msg::decode(&e).is_some());
}

#[test]
fn stored_state_holds_the_session_key_not_the_secret() {
    let mut reg = MemoryRegistry::new();
    let mut r = Rendezvous::new(RendezvousConfig::default());
    r.handle(Instant::now(), addr(1, 1), &register("s", A, 1));
    // Same path through the trait object: the stored key is the derived one.
    let out = reg.transact(Instant::now(), "s", &mut |_, s| {
        assert!(s.is_none());
        (Change::Keep, Vec::new())
    });
    assert!(out.unwrap().is_empty());
    let stored = r.registry.transact(Instant::now(), "s", &mut |_, s| {
        let s = s.expect("stored");
        assert_eq!(s.key, key("s"));
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("right"));
        (Change::Keep, Vec::new())
    });
    assert!(stored.is_ok());
}

/// A registry that is down: every transaction fails.
struct Down;
impl Registry for Down {
    fn transact(
        &mut self,
        _: Instant,
        _: &str,
        _: &mut dyn FnMut(u64, Option<Session>) -> (Change, Out),
    ) -> Result<Out, RegistryError> {
        Err(RegistryError::Unavailable("test".into()))
    }
    fn sessions(&self) -> Option<usize> {
        None
    }
}

#[test]
fn a_registry_outage_is_reported_to_the_peer() {
    let mut r = Rendezvous::with_registry(RendezvousConfig::default(), Box::new(Down));
    let m = register("s", A, 1);
    let out = r.handle(Instant::now(), addr(1, 1), &m);
    assert_eq!(
        error_code(&out, addr(1, 1)),
        Some(ErrorCode::RegistryUnavailable)
    );
    assert!(out[0].1.len() <= m.len());
}

#[test]
fn sessions_expire_lazily_without_a_sweep() {
    // What a TTL-based store relies on: the lone peer's next register after the wait tells
    // it the other never came.
    let cfg = RendezvousConfig {
        wait_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let mut r = Rendezvous::new(cfg);
    let t = Instant::now();
    for i in 0..6 {
        r.handle(
            t + Duration::from_millis(300 * i),
            addr(1, 1),
            &register("s", A, 1),
        );
    }
    let out = r.handle(
        t + Duration::from_millis(2100),
        addr(1, 1),
        &register("s", A, 1),
    );
    assert_eq!(error_code(&out, addr(1, 1)), Some(ErrorCode::PeerTimeout));
    assert_eq!(r.sessions(), 0);
}

#[test]
fn the_waiting_peer_learns_of_refused_joins_but_keeps_waiting() {
    let mut r = Rendezvous::new(RendezvousConfig::default());
    let t = Instant::now();
    r.handle(t, addr(1, 1), &register("s", A, 1));
    let wrong = derive_rendezvous_key(b"guess", "s");
    for seq in 1..=2 {
        r.handle(
            t,
            addr(2, 2),
            &signed_register("s", B, 1, seq, Some(&wrong), &wrong),
        );
    }
    let out = r.handle(t, addr(1, 1), &register("s", A, 1));
    assert!(
        matches!(
            decode(&out, addr(1, 1))[..],
            [Msg::Waiting { rejected: 2, .. }]
        ),
        "{out:?}"
    );
    assert_eq!(r.sessions(), 1, "a stranger cannot end the wait");
}

#[test]
fn a_mapped_endpoint_is_relayed_and_absent_when_there_is_none() {
    let mapped = addr(9, 4000);
    let with = |peer: &str, mapped: Option<SocketAddr>| {
        Msg::Register {
            session: "m".into(),
            peer: peer.into(),
            seq: next_seq(),
            key: Some(crate::core::hex::encode(&key("m"))),
            locals: vec![],
            nat: NatInfo::unknown(),
            tcp: None,
            mapped,
            relayed: None,
            udp_blocked: false,
            pairing: None,
            rtt_ms: 10,
            mac: String::new(),
        }
        .encode_signed(&key("m"))
    };
    // Without a mapping the member is left out: a server that predates it reads the
    // register, whose fields it checks strictly.
    let plain = with(B, None);
    assert!(!String::from_utf8_lossy(&plain).contains("mapped"));
    let mut r = Rendezvous::new(RendezvousConfig::default());
    let t0 = Instant::now();
    r.handle(t0, addr(1, 1000), &with(A, Some(mapped)));
    let out = r.handle(t0, addr(2, 2000), &plain);
    match &decode(&out, addr(2, 2000))[..] {
        [Msg::Peer { peer, .. }] => assert_eq!(peer.mapped, Some(mapped)),
        m => panic!("B is told of A: {m:?}"),
    }
    match &decode(&out, addr(1, 1000))[..] {
        [Msg::Peer { peer, .. }] => assert_eq!(peer.mapped, None),
        m => panic!("A is told of B: {m:?}"),
    }
    // A peer that predates the field reads a PeerData that has it (serde ignores it), and
    // one without it decodes as no mapping.
    let old: serde_json::Value = serde_json::json!({
        "id": A, "public": "198.51.100.1:1000", "locals": [],
        "nat": NatInfo::unknown(),
    });
    let p: PeerData = serde_json::from_value(old).expect("decodes");
    assert_eq!(p.mapped, None);
}

#[test]
fn a_relayed_address_is_relayed_and_absent_when_there_is_none() {
    let relayed = RelayOffer {
        addr: addr(7, 50_000),
        fp: "ab".repeat(32),
        mac: "cd".repeat(32),
    };
    let with = |peer: &str, relayed: Option<RelayOffer>| {
        Msg::Register {
            session: "r".into(),
            peer: peer.into(),
            seq: next_seq(),
            key: Some(crate::core::hex::encode(&key("r"))),
            locals: vec![],
            nat: NatInfo::unknown(),
            tcp: None,
            mapped: None,
            relayed,
            udp_blocked: false,
            pairing: None,
            rtt_ms: 10,
            mac: String::new(),
        }
        .encode_signed(&key("r"))
    };
    // Without an allocation the member is left out: a server that predates it reads the
    // register, whose fields it checks strictly.
    let plain = with(B, None);
    assert!(!String::from_utf8_lossy(&plain).contains("relayed"));
    let mut r = Rendezvous::new(RendezvousConfig::default());
    let t0 = Instant::now();
    // A learns its relayed address only after registering (the allocation needs the
    // session): the re-registration that carries it replaces what the server holds.
    r.handle(t0, addr(1, 1000), &with(A, None));
    r.handle(t0, addr(1, 1000), &with(A, Some(relayed.clone())));
    let out = r.handle(t0, addr(2, 2000), &plain);
    match &decode(&out, addr(2, 2000))[..] {
        [Msg::Peer { peer, .. }] => assert_eq!(peer.relayed, Some(relayed.clone())),
        m => panic!("B is told of A: {m:?}"),
    }
    match &decode(&out, addr(1, 1000))[..] {
        [Msg::Peer { peer, .. }] => assert_eq!(peer.relayed, None),
        m => panic!("A is told of B: {m:?}"),
    }
    // B's offer comes with a later register after the match: A, whose introduction waits
    // for it, hears at once too; a register that changes nothing answers B alone.
    let b_relayed = RelayOffer {
        addr: addr(9, 50_002),
        ..relayed.clone()
    };
    let out = r.handle(t0, addr(2, 2000), &with(B, Some(b_relayed.clone())));
    match &decode(&out, addr(1, 1000))[..] {
        [Msg::Peer { peer, .. }] => assert_eq!(peer.relayed, Some(b_relayed.clone())),
        m => panic!("A is told of B's new offer: {m:?}"),
    }
    assert_eq!(decode(&out, addr(2, 2000)).len(), 1);
    let out = r.handle(t0, addr(2, 2000), &with(B, Some(b_relayed)));
    assert!(decode(&out, addr(1, 1000)).is_empty(), "nothing new for A");
    assert_eq!(decode(&out, addr(2, 2000)).len(), 1);
    // A peer that predates the field decodes as no relayed address.
    let old: serde_json::Value = serde_json::json!({
        "id": A, "public": "198.51.100.1:1000", "locals": [],
        "nat": NatInfo::unknown(),
    });
    let p: PeerData = serde_json::from_value(old).expect("decodes");
    assert_eq!(p.relayed, None);
    // A malformed offer makes the register junk.
    let bad = RelayOffer {
        fp: "not hex".into(),
        ..relayed
    };
    assert_eq!(Msg::decode(&with(B, Some(bad))), None);
}

#[test]
fn udp_blocked_reaches_the_peer_and_is_absent_when_false() {
    let with = |peer: &str, udp_blocked: bool| {
        Msg::Register {
            session: "u".into(),
            peer: peer.into(),
            seq: next_seq(),
            key: Some(crate::core::hex::encode(&key("u"))),
            locals: vec![],
            nat: NatInfo::unknown(),
            tcp: None,
            mapped: None,
            relayed: None,
            udp_blocked,
            pairing: None,
            rtt_ms: 10,
            mac: String::new(),
        }
        .encode_signed(&key("u"))
    };
    // A client whose UDP works sends what servers that predate the field read.
    let plain = with(B, false);
    assert!(!String::from_utf8_lossy(&plain).contains("udp_blocked"));
    let mut r = Rendezvous::new(RendezvousConfig::default());
    let t0 = Instant::now();
    r.handle(t0, addr(1, 1000), &with(A, true));
    let out = r.handle(t0, addr(2, 2000), &plain);
    match &decode(&out, addr(2, 2000))[..] {
        [Msg::Peer { peer, .. }] => assert!(peer.udp_blocked),
        m => panic!("B is told of A: {m:?}"),
    }
    match &decode(&out, addr(1, 1000))[..] {
        [Msg::Peer { peer, .. }] => assert!(!peer.udp_blocked),
        m => panic!("A is told of B: {m:?}"),
    }
    let old: serde_json::Value = serde_json::json!({
        "id": A, "public": "198.51.100.1:1000", "locals": [],
        "nat": NatInfo::unknown(),
    });
    let p: PeerData = serde_json::from_value(old).expect("decodes");
    assert!(!p.udp_blocked);
}

fn outcome(session: &str, peer: &str, result: &str, mac_key: &[u8; 32]) -> Vec<u8> {
    use crate::core::classify::{Allocation, Behavior};
    let nat = NatInfo {
        mapping: Behavior::EndpointIndependent,
        filtering: Behavior::AddressAndPortDependent,
        allocation: Allocation::Preserving,
        delta: None,
        range: None,
    };
    Msg::Outcome {
        session: session.into(),
        peer: peer.into(),
        outcome: super::Outcome {
            result: result.into(),
            strategy: Some("direct".into()),
            path: Some("direct".into()),
            transport: "udp".into(),
            nat,
            peer_nat: NatInfo {
                mapping: Behavior::AddressAndPortDependent,
                allocation: Allocation::Random,
                ..nat
            },
            time_to_connected_ms: Some(420),
        },
        mac: String::new(),
    }
    .encode_signed(mac_key)
}

/// Issue #15: an outcome counts once per session, only from a member, only under the
/// session's key; the counters of sessions follow what happened.
#[test]
fn outcomes_count_once_per_introduced_session_and_only_authenticated() {
    let mut r = Rendezvous::new(RendezvousConfig::default());
    let t0 = Instant::now();
    // Before the session exists: nothing to check the MAC against.
    assert!(r
        .handle(t0, addr(1, 1000), &outcome("s", A, "success", &key("s")))
        .is_empty());
    r.handle(t0, addr(1, 1000), &register("s", A, 40));
    r.handle(t0, addr(2, 2000), &register("s", B, 40));
    assert_eq!(r.stats.sessions_created, 1);
    assert_eq!(r.stats.introductions, 1);
    // A stranger's key, and a peer id that is not a member: not counted, not answered.
    assert!(r
        .handle(
            t0,
            addr(3, 3000),
            &outcome("s", A, "success", &key("other"))
        )
        .is_empty());
    assert!(r
        .handle(t0, addr(3, 3000), &outcome("s", C, "success", &key("s")))
        .is_empty());
    assert!(r.stats.outcomes.is_empty());
    // A member's: counted, once; the other's report and repeats are not.
    let t1 = t0 + Duration::from_secs(1);
    assert!(r
        .handle(t1, addr(1, 1000), &outcome("s", A, "success", &key("s")))
        .is_empty());
    r.handle(
        t1,
        addr(2, 2000),
        &outcome("s", B, "punch-failed", &key("s")),
    );
    r.handle(t1, addr(1, 1000), &outcome("s", A, "success", &key("s")));
    assert_eq!(r.stats.outcomes.values().sum::<u64>(), 1);
    let (labels, _) = r.stats.outcomes.iter().next().unwrap();
    assert_eq!(labels.result, "success");
    assert_eq!(
        (labels.nat_a, labels.nat_b),
        ("port-restricted-cone", "symmetric-random")
    );
    assert_eq!(r.stats.outcomes_ignored, 5);
}

/// Whatever strings a peer reports, the labels come from fixed sets, so the number of
/// counters the server can be made to keep is bounded.
#[test]
fn outcome_labels_come_from_fixed_sets() {
    let mut o = match Msg::decode(&outcome("s", A, "success", &key("s"))) {
        Some(Msg::Outcome { outcome, .. }) => outcome,
        m => panic!("{m:?}"),
    };
    o.result = "x".repeat(30);
    o.strategy = Some("teleport".into());
    o.path = None;
    o.transport = "sctp".into();
    let l = o.labels();
    assert_eq!(
        (l.result, l.strategy, l.path, l.transport),
        ("other", "other", "none", "other")
    );
    // Sorted: the same pair whichever side reported it.
    let swapped = super::Outcome {
        nat: o.peer_nat,
        peer_nat: o.nat,
        ..o.clone()
    };
    assert_eq!(swapped.labels(), l);
    // Longer than any known value: the message does not decode.
    let long = Msg::Outcome {
        session: "s".into(),
        peer: A.into(),
        outcome: super::Outcome {
            result: "y".repeat(100),
            ..o
        },
        mac: String::new(),
    }
    .encode_signed(&key("s"));
    assert!(Msg::decode(&long).is_none());
}

#[test]
fn a_lone_peer_whose_wait_ends_counts_as_a_timeout() {
    let cfg = RendezvousConfig {
        wait_timeout: Duration::from_secs(2),
        ..RendezvousConfig::default()
    };
    let mut r = Rendezvous::new(cfg);
    let t0 = Instant::now();
    // Until 2.1 s: the wait ends at the last register or the sweep after it, counted once.
    for i in 0..8u64 {
        r.handle(
            t0 + Duration::from_millis(300 * i),
            addr(1, 1000),
            &signed_register("s", A, 40, i + 1, Some(&key("s")), &key("s")),
        );
        r.expire(t0 + Duration::from_millis(300 * i));
    }
    assert_eq!(r.stats.sessions_created, 1);
    assert_eq!(r.stats.peer_timeouts, 1, "{:?}", r.stats);
    assert_eq!(r.stats.introductions, 0);
}

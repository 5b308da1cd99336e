use super::*;
use std::net::{IpAddr, Ipv4Addr};

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, last)), port)
}

fn register(session: &str, peer: &str, rtt_ms: u32) -> Vec<u8> {
    Msg::Register {
        session: session.into(),
        peer: peer.into(),
        locals: vec![addr(200, 5000)],
        nat: NatInfo::unknown(),
        rtt_ms,
    }
    .encode()
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
        },
        Msg::Peer {
            peer: pb,
            start_in_ms: sb,
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
    // Arrival (half the RTT) plus the wait must be the same moment for both.
    assert_eq!(sa + 20, sb + 50);
    assert!(*sb >= 100, "starts after the slower peer has heard: {sb}");
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
    }
    .encode();
    assert!(r.handle(t, addr(1, 1), &forged).is_empty());
    assert!(r
        .handle(t, addr(1, 1), &register("s", "not-hex", 1))
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
    }
    .encode();
    r.handle(t, addr(9, 9), &bye);
    assert_eq!(r.sessions(), 1, "a stranger cannot remove A");
    r.handle(t, addr(1, 1), &bye);
    assert_eq!(r.sessions(), 0);
}

//! Feeds arbitrary datagrams to the sans-IO rendezvous client (`core::rendezvous::client`),
//! as if they came from the server or from strangers, interleaved with its timeouts over
//! advancing virtual time. A datagram that decodes as a server message is also fed re-encoded,
//! so the fuzzer reaches the `waiting`, `peer` and `error` paths quickly.
//!
//! Checks: no panic; every transmit goes to the server and decodes as a signed register of
//! this session; the client ends (introduced or failed) by its deadline and is inert after.
//!
//! Input: records `[source: u8][advance: u8][len: u16 BE][len bytes]`; an even source is the
//! server, an odd one a stranger. When the first byte has its top bit set the client pairs
//! (`connect --code`), so `peer` messages carry pairing data to check: the SPAKE2 message and
//! the confirmation come from the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use punchraw::core::pairing::{Code, Pake};
use punchraw::core::rendezvous::client::{Client, ClientConfig, ClientEvent};
use punchraw::core::rendezvous::{Msg, NatInfo};
use punchraw::core::Machine;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);

fuzz_target!(|data: &[u8]| {
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), 3478);
    let stranger = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66)), 3478);
    let t0 = Instant::now();
    let cfg = ClientConfig {
        server,
        session: "fuzz".into(),
        secret: b"secret".to_vec(),
        peer_id: "0123456789abcdef".into(),
        locals: vec![SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 0, 1, 2)),
            40000,
        )],
        nat: NatInfo::unknown(),
        tcp: None,
        mapped: None,
        relayed: None,
        rtt: Duration::from_millis(20),
        deadline: t0 + TIMEOUT,
        timeout: TIMEOUT,
        start_delay: Duration::ZERO,
        range_drift: None,
        udp_blocked: false,
        relay_hold: true,
    };
    let mut c = Client::new(cfg, t0);
    if data.first().is_some_and(|b| b & 0x80 != 0) {
        let code: Code = "7-guitar-orbit".parse().expect("a valid code");
        let (pake, msg) = Pake::start(&code, rand_core::OsRng);
        c = c.with_pairing(pake, &msg);
    }
    let mut now = t0;
    let mut ended = false;
    let turn = |c: &mut Client, now: Instant, ended: &mut bool| {
        if c.poll_timeout().is_some_and(|t| t <= now) {
            c.handle_timeout(now);
        }
        while let Some(ev) = c.poll_event() {
            assert!(!*ended, "an event after the end: {ev:?}");
            if matches!(ev, ClientEvent::Introduced(_) | ClientEvent::Failed(_)) {
                *ended = true;
            }
        }
        while let Some(t) = c.poll_transmit() {
            assert!(!*ended, "a transmit after the end");
            assert_eq!(t.dst, server);
            match Msg::decode(&t.payload) {
                Some(Msg::Register { session, .. }) => assert_eq!(session, "fuzz"),
                other => panic!("not a register: {other:?}"),
            }
        }
        if *ended {
            assert!(c.is_done() && c.poll_timeout().is_none());
        }
    };
    let mut rest = data;
    while rest.len() >= 4 {
        let (src, advance) = (rest[0], rest[1]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]])).min(rest.len() - 4);
        let datagram = &rest[4..4 + len];
        rest = &rest[4 + len..];
        now += Duration::from_millis(u64::from(advance) * 10);
        turn(&mut c, now, &mut ended);
        let from = if src % 2 == 0 { server } else { stranger };
        c.handle_input(now, 0, from, datagram);
        if let Some(m) = Msg::decode(datagram) {
            c.handle_input(now, 0, from, &m.encode());
        }
        turn(&mut c, now, &mut ended);
    }
    // Past the deadline (and the server's silence) the client has ended either way.
    let end = t0 + TIMEOUT + Duration::from_secs(6);
    while now < end {
        now = c
            .poll_timeout()
            .unwrap_or(end)
            .max(now + Duration::from_millis(1));
        turn(&mut c, now, &mut ended);
    }
    assert!(ended && c.is_done(), "the client outlived its deadline");
});

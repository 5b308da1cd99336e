//! Feeds arbitrary datagrams to the rendezvous: `Msg::decode` on every one, and a
//! `Rendezvous` (in-memory registry, small limits) on a sequence of them from a few sources
//! over advancing virtual time. A message that decodes is also re-signed with a fixed key and
//! fed again, so the fuzzer reaches the authenticated paths it could never forge.
//!
//! Checks: no panic; the TCP stream framing round-trips; a decoded message re-encodes to something that decodes to the same
//! message; replies only go to addresses that sent us something (the server cannot be aimed
//! at a third party); held sessions stay within `max_sessions` and are freed by expiry; no
//! more outcomes are counted than sessions were created (one per session, whatever is sent).
//!
//! Input: a sequence of records `[source: u8][advance: u8][len: u16 BE][len bytes]`; a source
//! with the top bit set gets `PRV1` prepended so most records reach the JSON decoder.

#![no_main]

use libfuzzer_sys::fuzz_target;
use punchraw::core::rendezvous::{
    from_stream_frame, stream_frame_len, to_stream_frame, Msg, Rendezvous, RendezvousConfig,
    StreamFrame, MAGIC,
};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

const KEY: [u8; 32] = [7; 32];
const MAX_SESSIONS: usize = 4;

fn source(i: u8) -> SocketAddr {
    match i % 4 {
        3 => SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i))),
            40000,
        ),
        _ => SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, i % 8)),
            40000 + u16::from(i),
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let cfg = RendezvousConfig {
        max_sessions: MAX_SESSIONS,
        wait_timeout: Duration::from_secs(3),
        ..RendezvousConfig::default()
    };
    let linger = cfg.linger;
    let wait = cfg.wait_timeout;
    let mut r = Rendezvous::new(cfg);
    let t0 = Instant::now();
    let mut now = t0;
    let mut seen: HashSet<SocketAddr> = HashSet::new();
    let feed = |r: &mut Rendezvous, seen: &mut HashSet<SocketAddr>, now, src, d: &[u8]| {
        seen.insert(src);
        for (to, bytes) in r.handle(now, src, d) {
            assert!(
                seen.contains(&to),
                "reply to {to}, which never sent anything"
            );
            assert!(!bytes.is_empty());
        }
        assert!(r.sessions() <= MAX_SESSIONS, "{} sessions", r.sessions());
        // Whatever the outcome reports say, each counted one is one session's.
        let counted: u64 = r.stats.outcomes.values().sum();
        assert!(counted <= r.stats.sessions_created, "{:?}", r.stats);
    };

    let mut rest = data;
    while rest.len() >= 4 {
        let (s, adv) = (rest[0], rest[1]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        rest = &rest[4..];
        let body = &rest[..len.min(rest.len())];
        rest = &rest[body.len()..];
        now += Duration::from_millis(u64::from(adv) * 20);
        let src = source(s & 0x7f);
        let mut dgram = Vec::with_capacity(body.len() + 4);
        if s & 0x80 != 0 {
            dgram.extend_from_slice(MAGIC);
        }
        dgram.extend_from_slice(body);

        // The stream framing (TCP rendezvous): any bytes measure without panic, and a
        // datagram framed and unframed comes back unchanged.
        if let StreamFrame::Complete(n) = stream_frame_len(body) {
            assert!(n <= body.len());
            assert!(from_stream_frame(&body[..n]).is_some());
        }
        if let Some(f) = to_stream_frame(&dgram) {
            assert_eq!(stream_frame_len(&f), StreamFrame::Complete(f.len()));
            assert_eq!(from_stream_frame(&f).as_deref(), Some(dgram.as_slice()));
        }
        if let Some(m) = Msg::decode(&dgram) {
            let again = Msg::decode(&m.encode());
            assert_eq!(again.as_ref(), Some(&m), "re-encoding changed the message");
            if matches!(
                m,
                Msg::Register { .. } | Msg::Bye { .. } | Msg::Outcome { .. }
            ) {
                feed(&mut r, &mut seen, now, src, &m.encode_signed(&KEY));
            }
        }
        feed(&mut r, &mut seen, now, src, &dgram);
        for (to, _) in r.expire(now) {
            assert!(
                seen.contains(&to),
                "expiry message to {to}, which never sent anything"
            );
        }
    }
    // Everything is freed once every wait and linger has passed.
    now += wait + linger + Duration::from_secs(60);
    let _ = r.expire(now);
    let _ = r.expire(now + Duration::from_secs(1));
    assert_eq!(r.sessions(), 0, "sessions outlived every timeout");
});

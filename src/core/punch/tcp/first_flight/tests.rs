use super::*;

fn peer() -> SocketAddr {
    "203.0.113.20:40000".parse().unwrap()
}

/// Unacknowledged first data goes again at three round trips and at twice that; an ACK
/// ends it, and nothing goes once the kernel's own 1 s timer is near.
#[test]
fn the_first_data_is_repeated_at_the_round_trip_until_acknowledged() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut f = FirstFlight::new(ms(80));
    // Not watched: ignored.
    f.on_sent(t0, peer(), 100, 10, b"x");
    assert_eq!(f.poll_timeout(), None);
    f.watch(peer());
    // A pure ACK is no data.
    f.on_sent(t0, peer(), 100, 0, b"ack");
    assert_eq!(f.poll_timeout(), None);
    f.on_sent(t0, peer(), 100, 10, b"hello");
    // Only the first data segment is kept.
    f.on_sent(t0 + ms(1), peer(), 110, 10, b"later");
    assert_eq!(f.poll_timeout(), Some(t0 + ms(240)));
    assert!(f.poll_repeat(t0 + ms(239)).is_none());
    let (to, bytes, after) = f.poll_repeat(t0 + ms(240)).expect("a copy");
    assert_eq!((to, &bytes[..], after), (peer(), &b"hello"[..], ms(240)));
    // An ACK short of the end does not cover it.
    f.on_ack(peer(), 105);
    assert_eq!(f.poll_timeout(), Some(t0 + ms(720)));
    let second = f.poll_repeat(t0 + ms(720)).expect("a second copy");
    assert_eq!(second.2, ms(720));
    assert_eq!((f.poll_timeout(), f.repeats), (None, 2));

    // Acknowledged (across the sequence space's wrap): no copy.
    let mut f = FirstFlight::new(ms(80));
    f.watch(peer());
    f.on_sent(t0, peer(), u32::MAX - 4, 10, b"hello");
    f.on_ack(peer(), 5);
    assert_eq!(f.poll_timeout(), None);

    // A long path: one copy at 600 ms, none after the kernel's own at 1 s.
    let mut f = FirstFlight::new(ms(200));
    f.watch(peer());
    f.on_sent(t0, peer(), 1, 10, b"hello");
    assert!(f.poll_repeat(t0 + ms(600)).is_some());
    assert_eq!(f.poll_timeout(), None);
    // The floor: 200 ms on a short path.
    let mut f = FirstFlight::new(ms(1));
    f.watch(peer());
    f.on_sent(t0, peer(), 1, 10, b"hello");
    assert_eq!(f.poll_timeout(), Some(t0 + ms(200)));
    f.forget(peer());
    assert_eq!(f.poll_timeout(), None);
}

/// A round trip measured on the path replaces the estimate: peers near each other but far
/// from the server get their copy at the floor, not at three times the estimate.
#[test]
fn a_measured_round_trip_replaces_the_estimate() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut f = FirstFlight::new(ms(300));
    f.sampled(ms(20));
    f.watch(peer());
    f.on_sent(t0, peer(), 1, 10, b"hello");
    assert_eq!(f.poll_timeout(), Some(t0 + ms(200)));
}

/// A data segment of ours as captured: ten bytes at `seq`.
fn segment(seq: u32, fill: u8) -> Vec<u8> {
    use crate::core::wire::craft::{Crafted, Flags};
    let c = Crafted {
        src: "10.0.1.2:40000".parse().unwrap(),
        dst: "203.0.113.20:40000".parse().unwrap(),
        ttl: 64,
        seq,
        ack: 1,
        flags: Flags::Ack,
        window: 500,
        options: Default::default(),
        data: true,
    };
    c.to_bytes_with(&[fill; 10])
}

/// A flight of several segments: the copy asked for at once takes the last byte of its last
/// segment along (a captured burst may exceed the link), and only an ACK of everything sent
/// ends the watch.
#[test]
fn a_copy_asked_for_at_once_brings_the_last_byte_along() {
    use crate::core::wire::{tcp_payload, Seen};
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut f = FirstFlight::new(ms(80));
    f.watch(peer());
    let first = segment(100, 1);
    f.on_sent(t0, peer(), 100, 10, &first);
    f.on_sent(t0, peer(), 110, 10, &segment(110, 2));
    f.on_sent(t0, peer(), 120, 10, &segment(120, 3));
    // A retransmission of the middle moves nothing.
    f.on_sent(t0, peer(), 110, 10, &segment(110, 4));
    f.again_now(t0 + ms(50), peer());
    let copies: Vec<Vec<u8>> = std::iter::from_fn(|| f.poll_repeat(t0 + ms(50)))
        .map(|(_, b, _)| b)
        .collect();
    assert_eq!(copies.len(), 2);
    assert_eq!(tcp_payload(&copies[0]), Some(&[3u8][..]));
    assert!(matches!(
        Seen::parse(&copies[0]),
        Some(Seen::Tcp { seq: 129, .. })
    ));
    assert_eq!(copies[1], first);
    // The first segment's ACK alone leaves the watch on; the end's ends it.
    f.on_ack(peer(), 110);
    assert!(f.poll_timeout().is_some());
    f.on_ack(peer(), 130);
    assert_eq!(f.poll_timeout(), None);
}

use super::*;
use etherparse::PacketBuilder;
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

const A: [u8; 4] = [10, 0, 1, 2];
const B: [u8; 4] = [203, 0, 113, 20];

fn tcp(flags: &str, seq: u32, ack: u32) -> Vec<u8> {
    let mut b = PacketBuilder::ipv4(A, B, 7).tcp(40000, 5000, seq, 64240);
    for f in flags.chars() {
        b = match f {
            's' => b.syn(),
            'a' => b.ack(ack),
            'r' => b.rst(),
            _ => b,
        };
    }
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("build");
    out
}

fn sa(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)
}

#[test]
fn tcp_control_segments_are_told_apart() {
    let cases = [
        ("s", Segment::Syn),
        ("sa", Segment::SynAck),
        ("r", Segment::Rst),
        ("ra", Segment::Rst),
        ("a", Segment::Other),
    ];
    for (flags, want) in cases {
        let seen = Seen::parse(&tcp(flags, 77, 99)).expect(flags);
        assert_eq!(
            seen,
            Seen::Tcp {
                src: sa(A, 40000),
                dst: sa(B, 5000),
                segment: want,
                seq: 77,
                ack: if flags.contains('a') { 99 } else { 0 },
                ttl: 7,
                window: 64240,
                options: Default::default(),
            },
            "{flags}"
        );
        assert!(seen.involves(IpAddr::from(B), IpAddr::from(A)));
        assert!(!seen.involves(IpAddr::from(B), IpAddr::from([1, 2, 3, 4])));
    }
}

/// An ICMPv4 error quoting our SYN's IP header and first 8 bytes (RFC 792).
fn icmp4(typ: u8, code: u8) -> Vec<u8> {
    let syn = tcp("s", 1, 0);
    let quote = &syn[..20 + 8];
    let mut out = Vec::new();
    PacketBuilder::ipv4([203, 0, 113, 10], A, 63)
        .icmpv4_raw(typ, code, [0; 4])
        .write(&mut out, quote)
        .expect("build");
    out
}

#[test]
fn icmp_errors_name_the_segment_they_quote() {
    let seen = Seen::parse(&icmp4(3, 3)).expect("port unreachable");
    assert_eq!(
        seen,
        Seen::IcmpTcp {
            from: IpAddr::from([203, 0, 113, 10]),
            to: IpAddr::from(A),
            kind: IcmpKind::Unreachable(3),
            quoted_src: sa(A, 40000),
            quoted_dst: sa(B, 5000),
        }
    );
    assert!(seen.involves(IpAddr::from(A), IpAddr::from(B)));
    match Seen::parse(&icmp4(11, 0)) {
        Some(Seen::IcmpTcp { kind, .. }) => assert_eq!(kind, IcmpKind::TimeExceeded),
        other => panic!("{other:?}"),
    }
    // Echo replies and other informational ICMP are not errors about a segment.
    assert_eq!(Seen::parse(&icmp4(0, 0)), None);
}

#[test]
fn icmpv6_errors_are_read_too() {
    let a6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    let b6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 20);
    let mut syn = Vec::new();
    PacketBuilder::ipv6(a6.octets(), b6.octets(), 9)
        .tcp(1111, 2222, 5, 1000)
        .syn()
        .write(&mut syn, &[])
        .expect("build");
    let mut out = Vec::new();
    PacketBuilder::ipv6(b6.octets(), a6.octets(), 60)
        .icmpv6_raw(1, 4, [0; 4])
        .write(&mut out, &syn[..48])
        .expect("build");
    assert_eq!(
        Seen::parse(&out),
        Some(Seen::IcmpTcp {
            from: IpAddr::V6(b6),
            to: IpAddr::V6(a6),
            kind: IcmpKind::Unreachable(4),
            quoted_src: SocketAddr::new(IpAddr::V6(a6), 1111),
            quoted_dst: SocketAddr::new(IpAddr::V6(b6), 2222),
        })
    );
}

#[test]
fn udp_and_short_quotes_are_not_reported() {
    let mut udp = Vec::new();
    PacketBuilder::ipv4(A, B, 64)
        .udp(1, 2)
        .write(&mut udp, b"x")
        .expect("build");
    assert_eq!(Seen::parse(&udp), None);
    // A quote cut inside the TCP ports says nothing about which segment it was.
    let syn = tcp("s", 1, 0);
    let mut out = Vec::new();
    PacketBuilder::ipv4([203, 0, 113, 10], A, 63)
        .icmpv4_raw(3, 1, [0; 4])
        .write(&mut out, &syn[..22])
        .expect("build");
    assert_eq!(Seen::parse(&out), None);
}

proptest! {
    #[test]
    fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Seen::parse(&bytes);
    }

    #[test]
    fn damaged_packets_parse_without_panic(cut in 0usize..60, flip in 0usize..60, bit in 0u8..8) {
        for mut p in [tcp("sa", 1, 2), icmp4(3, 3), icmp4(11, 0)] {
            if let Some(b) = p.get_mut(flip) {
                *b ^= 1 << bit;
            }
            p.truncate(cut.min(p.len()));
            let _ = Seen::parse(&p);
        }
    }
}

/// The fuzz seeds are written by an independent Python encoder (fuzz/make_seeds.py), so
/// reading them checks the parser against a second implementation of the formats.
#[test]
fn the_python_written_seeds_read_as_intended() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus_seed/captured_packet");
    let read = |n: &str| std::fs::read(dir.join(n)).expect("seed file");
    let host = sa(A, 40000);
    let peer = sa(B, 5000);
    let seg = |n: &str| match Seen::parse(&read(n)) {
        Some(Seen::Tcp {
            src, dst, segment, ..
        }) => (src, dst, segment),
        other => panic!("{n}: {other:?}"),
    };
    assert_eq!(seg("syn"), (host, peer, Segment::Syn));
    assert_eq!(seg("synack"), (peer, host, Segment::SynAck));
    assert_eq!(seg("rst"), (peer, host, Segment::Rst));
    for (n, want) in [
        ("icmp_unreachable", IcmpKind::Unreachable(3)),
        ("icmp_time_exceeded", IcmpKind::TimeExceeded),
    ] {
        match Seen::parse(&read(n)) {
            Some(Seen::IcmpTcp {
                kind,
                quoted_src,
                quoted_dst,
                ..
            }) => assert_eq!((kind, quoted_src, quoted_dst), (want, host, peer), "{n}"),
            other => panic!("{n}: {other:?}"),
        }
    }
}

#[test]
fn a_syns_options_are_read() {
    use crate::core::wire::TcpOptions;
    use etherparse::TcpOptionElement as O;
    let b = PacketBuilder::ipv4(A, B, 64)
        .tcp(40000, 5000, 1234, 64240)
        .syn()
        .options(&[
            O::MaximumSegmentSize(1460),
            O::SelectiveAcknowledgementPermitted,
            O::Timestamp(7, 0),
            O::Noop,
            O::WindowScale(7),
        ])
        .expect("options fit");
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("build");
    let Some(Seen::Tcp { options, .. }) = Seen::parse(&out) else {
        panic!("not a TCP segment");
    };
    assert_eq!(
        options,
        TcpOptions {
            mss: Some(1460),
            wscale: Some(7),
            sack_permitted: true,
            timestamps: Some((7, 0)),
        }
    );
}

/// A segment that left with the checksum left to the interface goes out again whole: the
/// copy's checksum is the one a full computation gives, and nothing else changes.
#[test]
fn an_outgoing_segment_gets_its_checksum_for_sending_again() {
    let mut full = Vec::new();
    PacketBuilder::ipv4(A, B, 64)
        .tcp(40000, 5000, 7, 64240)
        .ack(9)
        .write(&mut full, b"client hello")
        .expect("build");
    assert_eq!(tcp_payload_len(&full), Some(12));
    let at = 20 + 16;
    let mut partial = full.clone();
    partial[at..at + 2].copy_from_slice(&[0x12, 0x34]);
    assert_eq!(with_tcp_checksum_v4(&partial), Some(full.clone()));
    assert_eq!(tcp_payload_len(&tcp("a", 1, 2)), Some(0));
    assert_eq!(with_tcp_checksum_v4(&full[..30]), None);
    assert_eq!(with_tcp_checksum_v4(b"not a packet"), None);
}

proptest! {
    /// Whatever the bytes, neither helper panics.
    #[test]
    fn the_segment_helpers_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = tcp_payload_len(&bytes);
        let _ = with_tcp_checksum_v4(&bytes);
    }
}

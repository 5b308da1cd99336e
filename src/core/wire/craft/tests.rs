use super::*;
use crate::core::wire::{Seen, Segment};
use etherparse::{Ipv4HeaderSlice, TcpHeaderSlice};
use proptest::prelude::*;
use std::net::{Ipv4Addr, SocketAddr};

fn syn() -> Crafted {
    Crafted {
        src: "10.0.1.2:40000".parse().expect("addr"),
        dst: "203.0.113.20:5000".parse().expect("addr"),
        ttl: 64,
        seq: 0x1234_5678,
        ack: 0,
        flags: Flags::Syn,
        window: 64240,
        options: TcpOptions {
            mss: Some(1460),
            wscale: Some(7),
            sack_permitted: true,
            timestamps: Some((0xdead_beef, 0)),
        },
        data: false,
    }
}

/// Checks both checksums with etherparse's own arithmetic, independent of pnet's.
fn checksums_hold(bytes: &[u8]) {
    let ip = Ipv4HeaderSlice::from_slice(bytes).expect("IPv4 header");
    assert_eq!(
        ip.header_checksum(),
        ip.to_header().calc_header_checksum(),
        "IPv4 header checksum"
    );
    let hl = usize::from(ip.ihl()) * 4;
    let tcp = TcpHeaderSlice::from_slice(&bytes[hl..]).expect("TCP header");
    let payload = &bytes[hl + tcp.slice().len()..];
    let want = tcp
        .to_header()
        .calc_checksum_ipv4_raw(ip.source(), ip.destination(), payload)
        .expect("checksum");
    assert_eq!(tcp.checksum(), want, "TCP checksum");
}

fn segment_of(f: Flags) -> Segment {
    match f {
        Flags::Syn => Segment::Syn,
        Flags::SynAck => Segment::SynAck,
        Flags::Rst => Segment::Rst,
        Flags::Ack => Segment::Other,
    }
}

/// `c` as the watcher would see it.
fn round_trip(c: &Crafted) {
    let bytes = c.to_bytes();
    checksums_hold(&bytes);
    let ip = Ipv4HeaderSlice::from_slice(&bytes).expect("IPv4 header");
    assert!(ip.dont_fragment());
    assert_eq!(ip.identification(), c.ip_id());
    assert_ne!(ip.identification(), 0);
    assert_eq!(usize::from(ip.total_len()), bytes.len());
    let sends_ack = matches!(c.flags, Flags::SynAck | Flags::Ack);
    assert_eq!(
        Seen::parse(&bytes),
        Some(Seen::Tcp {
            src: SocketAddr::V4(c.src),
            dst: SocketAddr::V4(c.dst),
            segment: segment_of(c.flags),
            seq: c.seq,
            ack: if sends_ack { c.ack } else { 0 },
            ttl: c.ttl,
            window: c.window,
            options: c.options,
        })
    );
}

#[test]
fn a_syn_is_laid_out_as_linux_lays_out_its_own() {
    let bytes = syn().to_bytes();
    assert_eq!(bytes.len(), 20 + 20 + 20);
    // Version 4, IHL 5; DF; TTL 64; protocol 6.
    assert_eq!(bytes[0], 0x45);
    assert_eq!(bytes[6], 0x40);
    assert_eq!(bytes[8], 64);
    assert_eq!(bytes[9], 6);
    // Data offset 10 words, SYN only.
    assert_eq!(bytes[32], 10 << 4);
    assert_eq!(bytes[33], 0x02);
    // What a Linux 6.x SYN carries, byte for byte (tcpdump: mss 1460,sackOK,TS val .. ecr
    // 0,nop,wscale 7).
    assert_eq!(
        &bytes[40..],
        &[2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 1, 3, 3, 7]
    );
    round_trip(&syn());
}

#[test]
fn every_option_subset_pads_to_whole_words_and_reads_back() {
    for bits in 0..16u8 {
        let mut c = syn();
        c.options = TcpOptions {
            mss: (bits & 1 != 0).then_some(1400),
            wscale: (bits & 2 != 0).then_some(14),
            sack_permitted: bits & 4 != 0,
            timestamps: (bits & 8 != 0).then_some((1, 2)),
        };
        assert_eq!(option_bytes(&c.options).len() % 4, 0, "{bits:#b}");
        for flags in [Flags::Syn, Flags::SynAck, Flags::Ack, Flags::Rst] {
            c.flags = flags;
            c.ack = 0x9abc_def0;
            round_trip(&c);
        }
    }
}

#[test]
fn a_syn_ack_answers_with_ack_and_a_syn_carries_none() {
    let mut c = syn();
    c.ack = 77;
    let b = c.to_bytes();
    assert_eq!(u32::from_be_bytes([b[28], b[29], b[30], b[31]]), 0);
    c.flags = Flags::SynAck;
    let b = c.to_bytes();
    assert_eq!(u32::from_be_bytes([b[28], b[29], b[30], b[31]]), 77);
    assert_eq!(b[33], 0x12);
}

#[test]
fn the_packets_of_a_sweep_have_different_ids() {
    let ids: std::collections::HashSet<u16> = (5000..5100u16)
        .map(|p| {
            let mut c = syn();
            c.dst.set_port(p);
            c.ip_id()
        })
        .collect();
    assert!(ids.len() > 95, "{}", ids.len());
}

fn arb_options() -> impl Strategy<Value = TcpOptions> {
    (
        any::<Option<u16>>(),
        any::<Option<u8>>(),
        any::<bool>(),
        any::<Option<(u32, u32)>>(),
    )
        .prop_map(|(mss, wscale, sack_permitted, timestamps)| TcpOptions {
            mss,
            wscale,
            sack_permitted,
            timestamps,
        })
}

fn arb_crafted() -> impl Strategy<Value = Crafted> {
    let addr = (any::<u32>(), any::<u16>())
        .prop_map(|(ip, port)| SocketAddrV4::new(Ipv4Addr::from(ip), port));
    (
        addr.clone(),
        addr,
        any::<u8>(),
        any::<u32>(),
        any::<u32>(),
        prop_oneof![
            Just(Flags::Syn),
            Just(Flags::SynAck),
            Just(Flags::Ack),
            Just(Flags::Rst)
        ],
        any::<u16>(),
        arb_options(),
    )
        .prop_map(
            |(src, dst, ttl, seq, ack, flags, window, options)| Crafted {
                src,
                dst,
                ttl,
                seq,
                ack,
                flags,
                window,
                options,
                data: false,
            },
        )
}

proptest! {
    #[test]
    fn any_crafted_segment_reads_back_unchanged(c in arb_crafted()) {
        round_trip(&c);
    }
}

#[test]
fn a_syn_carries_its_payload_after_the_options_under_both_checksums() {
    let hello = b"\x16\x03\x01\x00\x05hello";
    let c = Crafted {
        data: true,
        ..syn()
    };
    let bytes = c.to_bytes_with(hello);
    checksums_hold(&bytes);
    let ip = Ipv4HeaderSlice::from_slice(&bytes).expect("IPv4 header");
    assert_eq!(usize::from(ip.total_len()), bytes.len());
    assert_eq!(crate::core::wire::tcp_payload(&bytes), Some(&hello[..]));
    // The TCP header is the one without payload, but for its checksum (bytes 16 and 17).
    let bare = c.to_bytes();
    assert_eq!(bytes.len(), bare.len() + hello.len());
    assert_eq!(bytes[20..36], bare[20..36]);
    assert_eq!(bytes[38..bare.len()], bare[38..]);
    assert_eq!(crate::core::wire::tcp_payload(&bare), Some(&[][..]));
}

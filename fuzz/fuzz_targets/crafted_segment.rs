//! Builds arbitrary crafted TCP segments (`wire::craft::Crafted`, what the raw SYN engine
//! sends) and reads them back with `wire::Seen::parse`, the reader of the AF_PACKET watcher.
//!
//! Checks: no panic; every field and option reads back as it was written, the payload (what
//! input is left, as a SYN carries the TLS client's hello) too; the IPv4 length field
//! matches the packet.

#![no_main]

use libfuzzer_sys::fuzz_target;
use punchraw::core::wire::craft::{Crafted, Flags};
use punchraw::core::wire::{Seen, Segment, TcpOptions};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Takes `N` bytes from the front of `data`, zero-padded when it runs out.
fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

/// The segment, and the input left over for its payload (at most an Ethernet MSS).
fn crafted(mut d: &[u8]) -> (Crafted, &[u8]) {
    let d = &mut d;
    let src = SocketAddrV4::new(Ipv4Addr::from(take::<4>(d)), u16::from_be_bytes(take(d)));
    let dst = SocketAddrV4::new(Ipv4Addr::from(take::<4>(d)), u16::from_be_bytes(take(d)));
    let [ttl, which] = take(d);
    let seq = u32::from_be_bytes(take(d));
    let ack = u32::from_be_bytes(take(d));
    let window = u16::from_be_bytes(take(d));
    let flags = match which & 3 {
        0 => Flags::Syn,
        1 => Flags::SynAck,
        2 => Flags::Ack,
        _ => Flags::Rst,
    };
    let mss = u16::from_be_bytes(take(d));
    let [ws] = take(d);
    let tsval = u32::from_be_bytes(take(d));
    let tsecr = u32::from_be_bytes(take(d));
    let options = TcpOptions {
        mss: (which & 4 != 0).then_some(mss),
        wscale: (which & 8 != 0).then_some(ws),
        sack_permitted: which & 16 != 0,
        timestamps: (which & 32 != 0).then_some((tsval, tsecr)),
    };
    let c = Crafted {
        src,
        dst,
        ttl,
        seq,
        ack,
        flags,
        window,
        options,
        data: !d.is_empty(),
    };
    (c, &d[..d.len().min(1460)])
}

fuzz_target!(|data: &[u8]| {
    let (c, payload) = crafted(data);
    let bytes = c.to_bytes_with(payload);
    assert_eq!(punchraw::core::wire::tcp_payload(&bytes), Some(payload));
    assert_eq!(
        usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
        bytes.len()
    );
    let (segment, ack) = match c.flags {
        Flags::Syn => (Segment::Syn, 0),
        Flags::SynAck => (Segment::SynAck, c.ack),
        Flags::Ack => (Segment::Other, c.ack),
        Flags::Rst => (Segment::Rst, 0),
    };
    assert_eq!(
        Seen::parse(&bytes),
        Some(Seen::Tcp {
            src: SocketAddr::V4(c.src),
            dst: SocketAddr::V4(c.dst),
            segment,
            seq: c.seq,
            ack,
            ttl: c.ttl,
            window: c.window,
            options: c.options,
        })
    );
});

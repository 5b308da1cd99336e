//! Captured IP packets, read the way a TCP punch needs them: which TCP control segment went
//! between which endpoints, and which ICMP error answered which of our segments.
//!
//! The parsing itself is etherparse's; this module only reduces a packet to a [`Seen`], the
//! one thing the punch and the probe look at. Like smoltcp's `wire`, [`Seen::parse`] takes any
//! bytes at all (they come off an AF_PACKET socket, so from the network) and returns `None`
//! for anything it does not understand; it never panics.

pub mod craft;

use etherparse::{
    IpNumber, Ipv4HeaderSlice, Ipv6HeaderSlice, NetSlice, SlicedPacket, TcpOptionElement,
    TransportSlice,
};
use std::net::{IpAddr, SocketAddr};

/// The TCP options a SYN negotiates (RFC 9293 section 3.7.1 MSS, RFC 7323 window scale and
/// timestamps, RFC 2018 SACK-permitted): what a crafted SYN must carry to look like the
/// kernel socket that continues the connection, and what the peer's SYN asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpOptions {
    /// Maximum segment size in bytes (kind 2, RFC 9293 section 3.7.1).
    pub mss: Option<u16>,
    /// Window scale shift count (kind 3, RFC 7323 section 2).
    pub wscale: Option<u8>,
    /// SACK-permitted (kind 4, RFC 2018 section 2).
    pub sack_permitted: bool,
    /// (TSval, TSecr).
    pub timestamps: Option<(u32, u32)>,
}

/// The TCP control bits a punch cares about (RFC 9293 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Segment {
    /// SYN without ACK: an active open, ours or the peer's.
    Syn,
    /// SYN with ACK: the answer to a SYN, in a simultaneous open too (RFC 9293 section 3.5).
    SynAck,
    /// Any segment with RST set, whatever the other bits.
    Rst,
    /// Anything else (data, pure ACK, FIN): not part of the handshake.
    Other,
}

/// What an ICMP error says about the segment it quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IcmpKind {
    /// Destination unreachable (ICMPv4 type 3, ICMPv6 type 1) with its code.
    Unreachable(u8),
    /// Time exceeded in transit (ICMPv4 type 11, ICMPv6 type 3): a low-TTL SYN died.
    TimeExceeded,
}

/// One captured packet, reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A TCP segment, as captured.
    Tcp {
        /// Source address and port, from the IP and TCP headers.
        src: SocketAddr,
        /// Destination address and port.
        dst: SocketAddr,
        /// Which control segment it is.
        segment: Segment,
        /// The sequence number (RFC 9293 section 3.1).
        seq: u32,
        /// The acknowledgment number, meaningful only when ACK is set.
        ack: u32,
        /// IPv4 TTL or IPv6 hop limit as captured: the hops the packet had left.
        ttl: u8,
        /// The advertised window, unscaled as on the wire.
        window: u16,
        /// The TCP options it carried, up to the first malformed one.
        options: TcpOptions,
    },
    /// An ICMP error from `from` about a TCP segment `quoted_src` -> `quoted_dst` (RFC 792 and
    /// RFC 4443 quote the offending packet's IP header and at least 8 bytes after it, which is
    /// where TCP keeps its ports).
    IcmpTcp {
        /// The source of the ICMP error: the router or host that reports it.
        from: IpAddr,
        /// The ICMP error's destination: the sender of the quoted segment, normally us.
        to: IpAddr,
        /// What the error says happened to the quoted segment.
        kind: IcmpKind,
        /// The quoted segment's source address and port.
        quoted_src: SocketAddr,
        /// The quoted segment's destination address and port.
        quoted_dst: SocketAddr,
    },
}

impl Seen {
    /// `packet` starts at the IP header (AF_PACKET with SOCK_DGRAM, or pcap LINKTYPE_RAW).
    pub fn parse(packet: &[u8]) -> Option<Seen> {
        let p = SlicedPacket::from_ip(packet).ok()?;
        let (src_ip, dst_ip, ttl) = match p.net.as_ref()? {
            NetSlice::Ipv4(v4) => {
                let h = v4.header();
                (
                    IpAddr::V4(h.source_addr()),
                    IpAddr::V4(h.destination_addr()),
                    h.ttl(),
                )
            }
            NetSlice::Ipv6(v6) => {
                let h = v6.header();
                (
                    IpAddr::V6(h.source_addr()),
                    IpAddr::V6(h.destination_addr()),
                    h.hop_limit(),
                )
            }
        };
        match p.transport.as_ref()? {
            TransportSlice::Tcp(t) => {
                let segment = match (t.syn(), t.ack(), t.rst()) {
                    (_, _, true) => Segment::Rst,
                    (true, false, false) => Segment::Syn,
                    (true, true, false) => Segment::SynAck,
                    _ => Segment::Other,
                };
                Some(Seen::Tcp {
                    src: SocketAddr::new(src_ip, t.source_port()),
                    dst: SocketAddr::new(dst_ip, t.destination_port()),
                    segment,
                    seq: t.sequence_number(),
                    ack: t.acknowledgment_number(),
                    ttl,
                    window: t.window_size(),
                    options: tcp_options(t.options_iterator()),
                })
            }
            // Destination unreachable and time exceeded: ICMPv4 types 3 and 11 (RFC 792),
            // ICMPv6 types 1 and 3 (RFC 4443).
            TransportSlice::Icmpv4(i) => icmp_error(
                (src_ip, dst_ip),
                match i.type_u8() {
                    3 => IcmpKind::Unreachable(i.code_u8()),
                    11 => IcmpKind::TimeExceeded,
                    _ => return None,
                },
                i.payload(),
            ),
            TransportSlice::Icmpv6(i) => icmp_error(
                (src_ip, dst_ip),
                match i.type_u8() {
                    1 => IcmpKind::Unreachable(i.code_u8()),
                    3 => IcmpKind::TimeExceeded,
                    _ => return None,
                },
                i.payload(),
            ),
            TransportSlice::Udp(_) => None,
        }
    }

    /// Is this a packet between `a` and `b` (either direction), or an ICMP error about one?
    pub fn involves(&self, a: IpAddr, b: IpAddr) -> bool {
        let pair = |x: IpAddr, y: IpAddr| (x == a && y == b) || (x == b && y == a);
        match *self {
            Seen::Tcp { src, dst, .. } => pair(src.ip(), dst.ip()),
            Seen::IcmpTcp {
                quoted_src,
                quoted_dst,
                ..
            } => pair(quoted_src.ip(), quoted_dst.ip()),
        }
    }
}

/// The payload length of the TCP segment in `packet` (from its first IP header byte);
/// `None` when it is no TCP segment.
pub fn tcp_payload_len(packet: &[u8]) -> Option<usize> {
    tcp_payload(packet).map(<[u8]>::len)
}

/// The data of the TCP segment in `packet` (an IP packet); `None` for anything else.
pub fn tcp_payload(packet: &[u8]) -> Option<&[u8]> {
    match SlicedPacket::from_ip(packet).ok()?.transport? {
        TransportSlice::Tcp(t) => Some(t.payload()),
        _ => None,
    }
}

/// `packet`, an IPv4 TCP segment as it left this host, with its TCP checksum computed: what
/// AF_PACKET shows of an outgoing segment may hold only the pseudo-header's sum, the rest
/// left to the interface (checksum offload), and a copy sent again on a raw socket gets no
/// such help. `None` for anything else.
pub fn with_tcp_checksum_v4(packet: &[u8]) -> Option<Vec<u8>> {
    let p = SlicedPacket::from_ip(packet).ok()?;
    let (NetSlice::Ipv4(ip), TransportSlice::Tcp(t)) = (p.net?, p.transport?) else {
        return None;
    };
    let h = ip.header();
    let sum = t.calc_checksum_ipv4(h.source(), h.destination()).ok()?;
    // The checksum is bytes 16 and 17 of the TCP header, right after the IPv4 header.
    let at = h.slice().len() + 16;
    let mut out = packet.to_vec();
    out.get_mut(at..at + 2)?.copy_from_slice(&sum.to_be_bytes());
    Some(out)
}

/// `packet`, an IPv4 TCP segment with data as it left this host, cut down to the last byte of
/// its data (the sequence number moved to match, both checksums computed): a retransmission
/// that fits any link, whatever size the captured segment had (segmentation offload shows a
/// whole burst as one). `None` for anything else or a segment without data.
pub fn tcp_last_byte_v4(packet: &[u8]) -> Option<Vec<u8>> {
    let p = SlicedPacket::from_ip(packet).ok()?;
    let (NetSlice::Ipv4(ip), TransportSlice::Tcp(t)) = (p.net?, p.transport?) else {
        return None;
    };
    let len = t.payload().len();
    let ip_len = ip.header().slice().len();
    let tcp_len = t.header_len();
    if len == 0 {
        return None;
    }
    let mut out = packet.get(..ip_len + tcp_len)?.to_vec();
    out.push(*t.payload().last()?);
    let seq = t.sequence_number().wrapping_add(len as u32 - 1);
    out.get_mut(ip_len + 4..ip_len + 8)?
        .copy_from_slice(&seq.to_be_bytes());
    let total = u16::try_from(out.len()).ok()?;
    out.get_mut(2..4)?.copy_from_slice(&total.to_be_bytes());
    let mut h = Ipv4HeaderSlice::from_slice(&out).ok()?.to_header();
    h.header_checksum = h.calc_header_checksum();
    out.get_mut(10..12)?
        .copy_from_slice(&h.header_checksum.to_be_bytes());
    with_tcp_checksum_v4(&out)
}

/// Known options are read until the first malformed one (whatever came before it stays).
fn tcp_options(
    iter: impl Iterator<Item = Result<TcpOptionElement, etherparse::TcpOptionReadError>>,
) -> TcpOptions {
    let mut o = TcpOptions::default();
    for e in iter {
        match e {
            Ok(TcpOptionElement::MaximumSegmentSize(m)) => o.mss = Some(m),
            Ok(TcpOptionElement::WindowScale(w)) => o.wscale = Some(w),
            Ok(TcpOptionElement::SelectiveAcknowledgementPermitted) => o.sack_permitted = true,
            Ok(TcpOptionElement::Timestamp(v, e)) => o.timestamps = Some((v, e)),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    o
}

fn icmp_error((from, to): (IpAddr, IpAddr), kind: IcmpKind, quote: &[u8]) -> Option<Seen> {
    let (quoted_src, quoted_dst) = quoted_tcp(quote)?;
    Some(Seen::IcmpTcp {
        from,
        to,
        kind,
        quoted_src,
        quoted_dst,
    })
}

/// The TCP endpoints of the packet quoted in an ICMP error: an IP header (v4 or v6 without
/// extension headers) followed by at least the TCP ports.
fn quoted_tcp(quote: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let (src, dst, rest) = match quote.first()? >> 4 {
        4 => {
            let h = Ipv4HeaderSlice::from_slice(quote).ok()?;
            if h.protocol() != IpNumber::TCP {
                return None;
            }
            let len = usize::from(h.ihl()) * 4;
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                quote.get(len..)?,
            )
        }
        6 => {
            let h = Ipv6HeaderSlice::from_slice(quote).ok()?;
            if h.next_header() != IpNumber::TCP {
                return None;
            }
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                quote.get(40..)?,
            )
        }
        _ => return None,
    };
    let ports = rest.get(..4)?;
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    Some((SocketAddr::new(src, sport), SocketAddr::new(dst, dport)))
}

#[cfg(test)]
mod tests;

//! TCP segments punchraw writes itself (the raw SYN engine of `connect --tcp`): a SYN sweep
//! that carries exactly the sequence number and options of the connection that continues it,
//! so strict connection tracking (nf_conntrack_tcp_be_liberal=0) on both NATs accepts what
//! follows, and the SYN-ACK that answers the peer's SYN in a simultaneous open (RFC 9293
//! section 3.5, figure 8).
//!
//! Sans-IO: [`Crafted`] is a value; [`Crafted::to_bytes`] gives the IPv4 packet (header and
//! TCP checksums filled in) that the OS layer hands to a raw socket unchanged, so the TTL
//! is per packet (low-TTL priming needs no socket option). [`Established`] is what the OS
//! layer needs to build the kernel socket that carries the data once the handshake is done
//! (TCP_REPAIR: same sequence space, same negotiated options).

use super::TcpOptions;
use std::net::SocketAddrV4;

/// The control bits of a crafted segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flags {
    /// SYN: opens the connection toward the peer, with our ISN and our options.
    Syn,
    /// SYN-ACK: our answer to the peer's SYN in a simultaneous open (RFC 9293 section 3.5).
    SynAck,
    /// ACK: the handshake's third segment, after the peer's SYN-ACK to our SYN.
    Ack,
    /// RST: aborts the connection; carries `seq` only (the ACK bit is not set).
    Rst,
}

/// One segment to send: a header, and as payload at most the first flight its sender keeps
/// (see `data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crafted {
    /// Our address and punch port; the IP source of the packet.
    pub src: SocketAddrV4,
    /// The peer's address and (predicted) port.
    pub dst: SocketAddrV4,
    /// The IP TTL: the full one, or a low one that lets a priming SYN open our NAT's mapping
    /// without reaching the peer's NAT.
    pub ttl: u8,
    /// The sequence number: our ISN in a SYN or SYN-ACK, ISN + 1 after it.
    pub seq: u32,
    /// The acknowledgment number (sent only with `SynAck` and `Ack`).
    pub ack: u32,
    /// Which control segment this is.
    pub flags: Flags,
    /// The advertised receive window as written: unscaled in a SYN or SYN-ACK (RFC 7323 section
    /// 2.2), shifted by our scale once both sides offered scaling.
    pub window: u16,
    /// The TCP options to carry, written in Linux's order by [`option_bytes`].
    pub options: TcpOptions,
    /// A SYN (or SYN-ACK) that carries the sender's first flight after its header (RFC 9293
    /// section 3.5 lets a SYN carry data; the receiver holds it until the handshake is done):
    /// the bytes are the sender's to give, to [`Crafted::to_bytes_with`].
    pub data: bool,
}

/// A handshake both sides finished on one 4-tuple: the state of the kernel socket that
/// continues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Established {
    /// Our end of the connection: the local address and punch port.
    pub local: SocketAddrV4,
    /// The peer's end, as its segments came from it (the port its NAT really used).
    pub remote: SocketAddrV4,
    /// Our next sequence number (our ISN + 1).
    pub snd_nxt: u32,
    /// The peer's next sequence number: its ISN + 1, past the data its SYN carried.
    pub rcv_nxt: u32,
    /// The data the peer's SYN carried, taken (our SYN-ACK acknowledged it): the socket's
    /// receive queue starts with it, ending at `rcv_nxt`.
    pub received: Vec<u8>,
    /// Whether our SYNs on this 4-tuple carried our first flight, and if so whether the
    /// peer's SYN-ACK acknowledged it (`snd_nxt` then lies past it). `Some(false)`: the
    /// socket starts before it and must send it first.
    pub first_flight: Option<bool>,
    /// What we sent in our SYN (or SYN-ACK) and what the peer sent in its own: the
    /// negotiated set is what both carried (RFC 7323 section 2.2, RFC 2018 section 2).
    pub ours: TcpOptions,
    /// The options of the peer's SYN or SYN-ACK.
    pub theirs: TcpOptions,
    /// The peer's window from its SYN (never scaled, RFC 7323 section 2.2).
    pub peer_window: u16,
    /// Our window as advertised in our SYN.
    pub our_window: u16,
    /// We answered the peer's SYN and the peer has not yet shown that our SYN-ACK arrived:
    /// the socket must send nothing until it has (no window probe when it leaves repair mode,
    /// no data), or our NAT's connection tracking would drop our repeated SYN-ACKs
    /// (`core::punch::tcp::raw`).
    pub awaiting_peer: bool,
}

/// IPv4 header without options (RFC 791 section 3.1).
const IPV4_HEADER: usize = 20;
/// TCP header without options (RFC 9293 section 3.1).
const TCP_HEADER: usize = 20;
/// IP protocol number of TCP.
const IPPROTO_TCP: u8 = 6;

impl Crafted {
    /// The IPv4 packet without payload, checksums filled in, ready for a raw socket with
    /// IP_HDRINCL ([`Crafted::to_bytes_with`] with none).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_with(&[])
    }

    /// The IPv4 packet with `payload` after the TCP header, checksums filled in, ready for a
    /// raw socket with IP_HDRINCL.
    ///
    /// Don't Fragment is set, as Linux sets it on every TCP segment (path MTU discovery,
    /// RFC 1191). The identification field of such an atomic datagram means nothing to the
    /// receiver (RFC 6864 section 4.1); it is derived from the segment, so the packets of a
    /// sweep differ and a retransmitted one is byte-identical. The raw socket sends it
    /// unchanged except that Linux rewrites a zero id (see [`Crafted::ip_id`]).
    pub fn to_bytes_with(&self, payload: &[u8]) -> Vec<u8> {
        use pnet_packet::ip::IpNextHeaderProtocol;
        use pnet_packet::ipv4::{self, Ipv4Flags, MutableIpv4Packet};
        use pnet_packet::tcp::{self, MutableTcpPacket, TcpFlags};
        use pnet_packet::MutablePacket;

        let options = option_bytes(&self.options);
        let tcp_len = TCP_HEADER + options.len();
        let total = IPV4_HEADER + tcp_len + payload.len();
        let mut buf = vec![0u8; total];
        {
            let mut t = MutableTcpPacket::new(&mut buf[IPV4_HEADER..])
                .expect("the buffer holds a TCP header");
            t.set_source(self.src.port());
            t.set_destination(self.dst.port());
            t.set_sequence(self.seq);
            let (flags, ack) = match self.flags {
                Flags::Syn => (TcpFlags::SYN, 0),
                Flags::SynAck => (TcpFlags::SYN | TcpFlags::ACK, self.ack),
                Flags::Ack => (TcpFlags::ACK, self.ack),
                Flags::Rst => (TcpFlags::RST, 0),
            };
            t.set_acknowledgement(ack);
            t.set_flags(flags);
            // In 32-bit words (RFC 9293 section 3.1); options are at most 20 bytes.
            t.set_data_offset((tcp_len / 4) as u8);
            t.set_window(self.window);
            t.set_urgent_ptr(0);
            t.packet_mut()[TCP_HEADER..tcp_len].copy_from_slice(&options);
            t.packet_mut()[tcp_len..].copy_from_slice(payload);
            let sum = tcp::ipv4_checksum(&t.to_immutable(), self.src.ip(), self.dst.ip());
            t.set_checksum(sum);
        }
        {
            let mut ip = MutableIpv4Packet::new(&mut buf[..IPV4_HEADER])
                .expect("the buffer holds an IPv4 header");
            ip.set_version(4);
            ip.set_header_length((IPV4_HEADER / 4) as u8);
            ip.set_dscp(0);
            ip.set_ecn(0);
            ip.set_total_length(total as u16);
            ip.set_identification(self.ip_id());
            ip.set_flags(Ipv4Flags::DontFragment);
            ip.set_fragment_offset(0);
            ip.set_ttl(self.ttl);
            ip.set_next_level_protocol(IpNextHeaderProtocol::new(IPPROTO_TCP));
            ip.set_source(*self.src.ip());
            ip.set_destination(*self.dst.ip());
            let sum = ipv4::checksum(&ip.to_immutable());
            ip.set_checksum(sum);
        }
        buf
    }

    /// The IPv4 identification [`Crafted::to_bytes`] writes: a hash of the segment, never 0
    /// (Linux replaces a zero id of an IP_HDRINCL packet with one of its own, raw(7)).
    pub fn ip_id(&self) -> u16 {
        // FNV-1a over the fields that tell the packets of one sweep apart.
        let mut h: u32 = 0x811c_9dc5;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x0100_0193);
            }
        };
        eat(&self.src.ip().octets());
        eat(&self.src.port().to_be_bytes());
        eat(&self.dst.ip().octets());
        eat(&self.dst.port().to_be_bytes());
        eat(&self.seq.to_be_bytes());
        eat(&self.ack.to_be_bytes());
        eat(&[self.ttl, self.flags as u8]);
        let id = (h ^ (h >> 16)) as u16;
        if id == 0 {
            1
        } else {
            id
        }
    }
}

/// The options in the order and with the padding Linux writes them (tcp_options_write in
/// net/ipv4/tcp_output.c), so a crafted SYN looks like the kernel's own: MSS; then
/// SACK-permitted and timestamps sharing one 32-bit word group (or two NOPs before the
/// timestamps, or before SACK-permitted when only one of them is sent); then NOP and window
/// scale. At most 20 bytes, always a multiple of 4.
pub fn option_bytes(o: &TcpOptions) -> Vec<u8> {
    const NOP: u8 = 1;
    let mut out = Vec::with_capacity(20);
    if let Some(mss) = o.mss {
        // Kind 2, length 4 (RFC 9293 section 3.2).
        out.extend_from_slice(&[2, 4]);
        out.extend_from_slice(&mss.to_be_bytes());
    }
    match (o.timestamps, o.sack_permitted) {
        (Some((val, ecr)), sack) => {
            // SACK-permitted is kind 4, length 2 (RFC 2018 section 2); timestamps kind 8,
            // length 10 (RFC 7323 section 3.2).
            out.extend_from_slice(if sack { &[4, 2] } else { &[NOP, NOP] });
            out.extend_from_slice(&[8, 10]);
            out.extend_from_slice(&val.to_be_bytes());
            out.extend_from_slice(&ecr.to_be_bytes());
        }
        (None, true) => out.extend_from_slice(&[NOP, NOP, 4, 2]),
        (None, false) => {}
    }
    if let Some(shift) = o.wscale {
        // Kind 3, length 3 (RFC 7323 section 2.2).
        out.extend_from_slice(&[NOP, 3, 3, shift]);
    }
    out
}

#[cfg(test)]
mod tests;

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
    Syn,
    SynAck,
    Ack,
    Rst,
}

/// One segment to send, without payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crafted {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ttl: u8,
    pub seq: u32,
    /// The acknowledgment number (sent only with `SynAck` and `Ack`).
    pub ack: u32,
    pub flags: Flags,
    pub window: u16,
    pub options: TcpOptions,
}

/// A handshake both sides finished on one 4-tuple: the state of the kernel socket that
/// continues it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Established {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    /// Our next sequence number (our ISN + 1).
    pub snd_nxt: u32,
    /// The peer's next sequence number (its ISN + 1).
    pub rcv_nxt: u32,
    /// What we sent in our SYN (or SYN-ACK) and what the peer sent in its own: the
    /// negotiated set is what both carried (RFC 7323 section 2.2, RFC 2018 section 2).
    pub ours: TcpOptions,
    pub theirs: TcpOptions,
    /// The peer's window from its SYN (never scaled, RFC 7323 section 2.2).
    pub peer_window: u16,
    /// Our window as advertised in our SYN.
    pub our_window: u16,
}

impl Crafted {
    /// The IPv4 packet, checksums filled in, ready for a raw socket with IP_HDRINCL.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Filled in by the packet-building change (pnet's builders).
        Vec::new()
    }
}

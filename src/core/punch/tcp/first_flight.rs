//! The first data of each connection the raw engine finished, sent again at the round trip
//! until the peer acknowledges it.
//!
//! A TCP_REPAIR socket continues a handshake it did not make, so it has no RTT sample, and
//! its first retransmission timeout is the kernel's initial 1 s (RFC 6298 section 2.1); a
//! kernel socket that made its own handshake has a sample from it and repeats lost data after
//! about three round trips (section 2.2: SRTT + 4 * RTTVAR with RTTVAR = R / 2). So a lost
//! first TLS flight cost the raw engine ~0.7 s more than the kernel engine (measured in the
//! lab at 160 ms RTT: 1.01 s against 0.31 s). This tracker sees the repaired socket's first
//! data segment leave (AF_PACKET shows it) and, while no ACK covers it, has the driver send
//! a copy of it on the raw socket after three round trips, and once more after twice that,
//! before the kernel's own timer would. The copy is the same bytes in the same sequence
//! space, so the peer takes whichever arrives and its ACK reaches the kernel socket, which
//! then has its sample. Sans-IO: the caller passes the time and what the watcher saw.
//!
//! The last data segment sent so far (the end of a flight of several, like the TLS server's)
//! is kept too and goes with the copy that [`FirstFlight::again_now`] asks for. That call
//! comes when the peer's confirmation shows our NAT's tracking was put back in step by the
//! peer's SYN-ACK to a SYN of ours that it had ignored (`core::punch::tcp::raw`): Linux's
//! conntrack then takes our window from that SYN, as if we had sent nothing after it, and
//! holds the peer's ACKs of our data as beyond what we sent, invalid, so none arrives and our
//! kernel repeats only the flight's first segment. The copy of the last segment shows the
//! tracking how far we really sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Copies of one connection's first segment at most.
const REPEATS: u8 = 2;
/// Where the kernel's own first retransmission (1 s) takes over: no copy after it.
const KERNEL_RTO: Duration = Duration::from_secs(1);
/// The kernel's smallest retransmission timeout (Linux's TCP_RTO_MIN, 200 ms).
const RTO_MIN: Duration = Duration::from_millis(200);

/// The first data segment of one connection, not yet acknowledged.
#[derive(Debug)]
struct Pending {
    /// The sequence number just past its data: an ACK at or beyond it covers it.
    end: u32,
    /// The segment as it left, from the IP header (its checksum is the caller's matter).
    packet: Vec<u8>,
    /// When it first left.
    sent: Instant,
    /// When the next copy is due.
    next: Instant,
    repeats: u8,
    /// The data segment sent since with the highest end, and that end.
    tail: Option<(u32, Vec<u8>)>,
    /// [`FirstFlight::again_now`] asked for the tail too.
    tail_due: bool,
}

impl Pending {
    /// Where our data so far ends: an ACK there covers everything sent.
    fn sent_end(&self) -> u32 {
        self.tail.as_ref().map_or(self.end, |t| t.0)
    }
}

/// See the module documentation. Connections are named by the peer's endpoint.
#[derive(Debug)]
pub struct FirstFlight {
    rto: Duration,
    /// Connections handed over whose first data has not left yet.
    watched: Vec<SocketAddr>,
    pending: HashMap<SocketAddr, Pending>,
    /// Copies sent, over all connections.
    pub repeats: u64,
}

impl FirstFlight {
    /// `rtt`: the round trip to the peer as estimated before anything crossed, until
    /// [`FirstFlight::sampled`] gives a measured one; the copies go at three of them (the RTO
    /// a kernel socket has after one sample of it), at least 200 ms.
    pub fn new(rtt: Duration) -> Self {
        FirstFlight {
            rto: (rtt * 3).max(RTO_MIN),
            watched: Vec::new(),
            pending: HashMap::new(),
            repeats: 0,
        }
    }

    /// A round trip measured on the path itself (a timestamp echo of the handshake) replaces
    /// the estimate for copies scheduled from now on.
    pub fn sampled(&mut self, rtt: Duration) {
        self.rto = (rtt * 3).max(RTO_MIN);
    }

    /// A connection to `peer` was handed to its kernel socket: its first data is watched.
    pub fn watch(&mut self, peer: SocketAddr) {
        if !self.watched.contains(&peer) {
            self.watched.push(peer);
        }
    }

    /// A segment of ours left toward `peer`: sequence number `seq`, `len` bytes of data,
    /// `packet` as captured. The first one with data of a watched connection is kept.
    pub fn on_sent(&mut self, now: Instant, peer: SocketAddr, seq: u32, len: usize, packet: &[u8]) {
        if len == 0 {
            return;
        }
        let end = seq.wrapping_add(u32::try_from(len).unwrap_or(u32::MAX));
        if let Some(p) = self.pending.get_mut(&peer) {
            if end.wrapping_sub(p.sent_end()) as i32 > 0 {
                // Its last byte tells the tracking as much as the whole, and fits any link.
                p.tail = crate::core::wire::tcp_last_byte_v4(packet).map(|b| (end, b));
            }
            return;
        }
        let Some(i) = self.watched.iter().position(|p| *p == peer) else {
            return;
        };
        self.watched.swap_remove(i);
        self.pending.insert(
            peer,
            Pending {
                end,
                packet: packet.to_vec(),
                sent: now,
                next: now + self.rto,
                repeats: 0,
                tail: None,
                tail_due: false,
            },
        );
    }

    /// The peer's segment acknowledged up to `ack` (RFC 9293 section 3.4: sequence numbers
    /// compare modulo 2^32); it covers the first data once it covers all sent so far.
    pub fn on_ack(&mut self, peer: SocketAddr, ack: u32) {
        if let Some(p) = self.pending.get(&peer) {
            if ack.wrapping_sub(p.sent_end()) as i32 >= 0 {
                self.pending.remove(&peer);
            }
        }
    }

    /// The first data to `peer` may have missed the peer's socket (it left before the peer
    /// confirmed the handshake, see [`super::raw::RawPunch::poll_data_again`]): a copy is due
    /// at once unless an ACK already covered it, and with it a copy of the last data
    /// segment sent (see the module documentation).
    pub fn again_now(&mut self, now: Instant, peer: SocketAddr) {
        if let Some(p) = self.pending.get_mut(&peer) {
            p.next = p.next.min(now);
            p.tail_due = p.tail.is_some();
        }
    }

    /// The connection to `peer` ended (or was never kept): nothing more for it.
    pub fn forget(&mut self, peer: SocketAddr) {
        self.watched.retain(|p| *p != peer);
        self.pending.remove(&peer);
    }

    /// When the next copy is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.next).min()
    }

    /// A copy due by `now`: the peer it goes to, the segment, and how long after the first
    /// sending. Once a connection had its copies, or the kernel's own timer is near, it is
    /// dropped.
    pub fn poll_repeat(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>, Duration)> {
        if let Some((peer, p)) = self.pending.iter_mut().find(|(_, p)| p.tail_due) {
            p.tail_due = false;
            let tail = p.tail.as_ref().map(|t| t.1.clone())?;
            return Some((*peer, tail, now.saturating_duration_since(p.sent)));
        }
        let peer = *self
            .pending
            .iter()
            .find(|(_, p)| p.next <= now)
            .map(|(peer, _)| peer)?;
        let p = self.pending.get_mut(&peer)?;
        let after = now.saturating_duration_since(p.sent);
        if after >= KERNEL_RTO {
            self.pending.remove(&peer);
            return None;
        }
        p.repeats += 1;
        // Each copy waits twice as long as the one before (RFC 6298 section 5.5).
        p.next = now + self.rto * (1u32 << p.repeats);
        let out = (peer, p.packet.clone(), after);
        if p.repeats >= REPEATS || p.next >= p.sent + KERNEL_RTO {
            self.pending.remove(&peer);
        }
        self.repeats += 1;
        Some(out)
    }
}

#[cfg(test)]
mod tests;

//! One allocation's state (RFC 8656 section 6.2: relayed port, lifetime, permissions,
//! channel bindings) and the pool of relay ports.

use crate::core::stun::TransactionId;
use rand::Rng;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

pub(super) struct Allocation {
    pub(super) port: u16,
    /// The user that made it: later requests must come from the same one (441).
    pub(super) username: String,
    pub(super) key: [u8; 16],
    /// The Allocate's transaction: a retransmission of it gets the success again
    /// (RFC 8656 section 7.2), anything else from this 5-tuple 437.
    pub(super) tid: TransactionId,
    /// The socket is bound; until then the allocation only waits.
    pub(super) open: bool,
    /// Ports tried so far for this Allocate.
    pub(super) attempts: u8,
    pub(super) expires: Instant,
    /// The lifetime granted, for the success response.
    pub(super) lifetime: u32,
    /// Permissions by peer IP (section 9), with their expiry.
    pub(super) perms: HashMap<IpAddr, Instant>,
    /// Channel bindings (section 12) both ways, with their expiry.
    pub(super) chans: HashMap<u16, (SocketAddr, Instant)>,
    pub(super) chan_of: HashMap<SocketAddr, u16>,
    /// Application bytes relayed in both directions, for `max_bytes`.
    pub(super) bytes: u64,
    /// Session credentials: the session and the public addresses of its members.
    pub(super) session: Option<(String, Vec<SocketAddr>)>,
}

impl Allocation {
    pub(super) fn permitted(&self, now: Instant, ip: IpAddr) -> bool {
        self.perms.get(&ip).is_some_and(|&t| t > now)
    }

    /// The peer bound to `channel`, while the binding lives.
    pub(super) fn peer_of(&self, now: Instant, channel: u16) -> Option<SocketAddr> {
        self.chans
            .get(&channel)
            .filter(|(_, t)| *t > now)
            .map(|(p, _)| *p)
    }

    /// The channel bound to `peer`, while the binding lives.
    pub(super) fn channel_of(&self, now: Instant, peer: SocketAddr) -> Option<u16> {
        let c = *self.chan_of.get(&peer)?;
        self.peer_of(now, c).map(|_| c)
    }

    /// Drops expired permissions and channels.
    pub(super) fn purge(&mut self, now: Instant) {
        self.perms.retain(|_, t| *t > now);
        let chan_of = &mut self.chan_of;
        self.chans.retain(|_, (peer, t)| {
            let live = *t > now;
            if !live {
                chan_of.remove(peer);
            }
            live
        });
    }
}

/// The relay ports in use and those the OS refused, out of the configured range.
pub(super) struct PortPool {
    lo: u16,
    hi: u16,
    used: BTreeSet<u16>,
}

impl PortPool {
    pub(super) fn new((lo, hi): (u16, u16)) -> PortPool {
        PortPool {
            lo,
            hi,
            used: BTreeSet::new(),
        }
    }

    /// A free port, chosen at random (RFC 8656 section 7.2: relayed ports should be hard to
    /// guess) and then the next free one upward, wrapping; `even` asks for an even port
    /// (EVEN-PORT, section 7.2). `None` when none is free.
    pub(super) fn take(&mut self, rng: &mut impl Rng, even: bool) -> Option<u16> {
        let span = u32::from(self.hi) - u32::from(self.lo) + 1;
        if self.used.len() as u32 >= span {
            return None;
        }
        let start = rng.random_range(0..span);
        for i in 0..span {
            let p = (u32::from(self.lo) + (start + i) % span) as u16;
            if (even && p % 2 != 0) || self.used.contains(&p) {
                continue;
            }
            self.used.insert(p);
            return Some(p);
        }
        None
    }

    pub(super) fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }

    pub(super) fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

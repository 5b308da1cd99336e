//! The second look at the mapping: when socket A's tests disagree, the same tests from a
//! fresh socket, one destination at a time ([`Classifier::recheck_if_inconsistent`]).

use super::{conclude, Classifier, Kind, Outcome};
use std::net::SocketAddr;
use std::time::Instant;

impl Classifier {
    /// The socket of the second mapping look ([`Kind::Recheck`]): the last one.
    pub(super) fn recheck_socket(&self) -> usize {
        self.cfg.sockets_needed() - 1
    }

    /// Once socket A's mapping tests have all answered and no consistent NAT explains them
    /// ([`mappings_inconsistent`]), the same tests again from a fresh socket, one
    /// destination at a time. The NAT may have given one of A's flows a port of its own:
    /// an endpoint-independent NAT does so when the mapping's port is already taken toward
    /// that destination by another internal endpoint, and Linux's NAT was seen doing it
    /// about once in 40 runs for one of two flows it created within microseconds of each
    /// other (a CGN with endpoint-independent mapping into a port block). A's tests go out
    /// back to back to save time; the recheck spaces its own by an RTT each, and only runs
    /// when A's answers need it, so a consistent NAT (and a port counter) sees no more flows.
    pub(super) fn recheck_if_inconsistent(&mut self, now: Instant) {
        if self.txns.iter().any(|t| t.kind == Kind::Recheck(0)) {
            return;
        }
        let Some((_, Some(base), Some(_))) = self.answered(Kind::Base) else {
            return;
        };
        let mut seen = Vec::new();
        for k in [Kind::MapAltIp, Kind::MapAltBoth, Kind::MapAltPort] {
            match self.outcome(k) {
                None => seen.push(None),
                Some(Outcome::Answered {
                    mapped: Some(m), ..
                }) => seen.push(Some(*m)),
                // Still waiting, or a test failed: nothing to check against.
                Some(_) => return,
            }
        }
        let (Some(m2), Some(m3)) = (seen[0], seen[1]) else {
            return;
        };
        if conclude::mappings_inconsistent(base, m2, m3, seen[2]) {
            let s = self.recheck_socket();
            self.add(now, Kind::Recheck(0), s, self.cfg.server, None, None);
        }
    }

    /// The recheck's next destination once its previous one answered: the alternate IP
    /// (test II), then the primary IP's alternate port. Neither is a destination of the
    /// allocation burst, so fewer earlier flows (this run's or a previous one's) hold tuples
    /// toward them that could move the recheck's port as well.
    pub(super) fn recheck_next(&mut self, now: Instant, step: usize, other: Option<SocketAddr>) {
        let Some(o) = other.or_else(|| self.answered(Kind::Base).and_then(|a| a.2)) else {
            return;
        };
        let server = self.cfg.server;
        let to = match step {
            0 => SocketAddr::new(o.ip(), server.port()),
            1 => SocketAddr::new(server.ip(), o.port()),
            _ => return,
        };
        let s = self.recheck_socket();
        self.add(now, Kind::Recheck(step + 1), s, to, None, None);
    }
}

//! Where every round's probes go, and from which socket: the peer's candidates, its
//! predicted ports, and its candidates of the other family.

use super::{eim, lockstep, PunchConfig, Strategy};
use std::net::SocketAddr;

impl PunchConfig {
    /// The socket for our candidates of the other family than socket 0's (the host's IPv6
    /// addresses beside a mapped IPv4 endpoint, which the peer learned among our locals):
    /// the one after the [`PunchConfig::sockets_needed`] sockets of socket 0's family;
    /// `None` when we have no such candidate. The peer's candidates of that family are
    /// probed from it, every round, whatever the strategy of socket 0's family: such a
    /// path usually crosses only stateful firewalls, which the two sides' simultaneous
    /// probes open (RFC 6092 section 3.2.3's endpoint-independent filtering is not
    /// needed).
    pub fn other_family_socket(&self) -> Option<usize> {
        self.my_locals
            .iter()
            .any(|a| !same_family(a, &self.my_public))
            .then(|| self.sockets_needed())
    }

    /// The peer's candidates of the other family than its registered endpoint, probed from
    /// [`PunchConfig::other_family_socket`]; none when we have no such socket.
    pub fn other_family_targets(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = Vec::new();
        if self.other_family_socket().is_none() {
            return v;
        }
        for a in &self.peer.locals {
            if !same_family(a, &self.peer.public) && !v.contains(a) {
                v.push(*a);
            }
        }
        v
    }
}

pub(super) fn same_family(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// What socket 0 contacts every round, in order: the endpoint the server saw, then the local
/// candidates of its family (each a flow through the NAT that prediction counts; the other
/// family's candidates go out from another socket and through no IPv4 NAT).
fn base_targets(public: SocketAddr, locals: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut v = vec![public];
    v.extend(
        locals
            .iter()
            .copied()
            .filter(|a| *a != public && same_family(a, &public)),
    );
    v
}

/// Every round's targets: socket 0's are the peer's candidates of its family, then (predict)
/// the peer's next ports.
///
/// A sequential NAT gives each new flow the next port, so the peer's flow toward our k-th
/// candidate leaves from its port `public + delta * k` (k from 1). When both sides predict,
/// each side's window flows also take consecutive ports; if our i-th window target is the
/// peer's port at offset `c_peer + i`, where `c_peer` counts the flows the peer makes before
/// its window (its base targets plus one), our i-th flow and the peer's i-th flow are each
/// other's reverse and both NATs let them through. That needs both counts exact; between two
/// sequential NATs they are not known exactly, and [`lockstep`] searches over them instead.
///
/// With a port mapping: the peer's mapped endpoint and its local candidates, never its
/// public endpoint (see the module note on conntrack clashes); a side whose peer has no
/// mapping so sends to local candidates only, and answers what comes through its own.
///
/// Then the peer's candidates of the other family ([`PunchConfig::other_family_targets`]).
pub(super) fn targets(cfg: &PunchConfig) -> Vec<SocketAddr> {
    let mut v = same_family_targets(cfg);
    v.extend(cfg.other_family_targets());
    v
}

fn same_family_targets(cfg: &PunchConfig) -> Vec<SocketAddr> {
    if cfg.strategy() == Strategy::Mapped {
        let mut v: Vec<SocketAddr> = cfg.peer.mapped.into_iter().collect();
        for a in &cfg.peer.locals {
            if *a != cfg.peer.public && same_family(a, &cfg.peer.public) && !v.contains(a) {
                v.push(*a);
            }
        }
        return v;
    }
    let mut v = base_targets(cfg.peer.public, &cfg.peer.locals);
    if cfg.strategy() != Strategy::Predict || eim(&cfg.peer.nat) {
        return v;
    }
    let step = cfg.peer.nat.delta.unwrap_or(1);
    if let Some(l) = lockstep::Lockstep::new(cfg) {
        // Both sides count: the flows before either window are not known exactly.
        for a in l.targets(cfg.peer.public, step) {
            if !v.contains(&a) {
                v.push(a);
            }
        }
        return v;
    }
    let first = if eim(&cfg.my_nat) {
        1
    } else {
        first_flow_after(cfg)
    };
    for p in window_ports(cfg, first, step) {
        let a = SocketAddr::new(cfg.peer.public.ip(), p);
        if !v.contains(&a) {
            v.push(a);
        }
    }
    v
}

/// The peer's flow (counted from 1 after its registration) that follows its flows toward
/// our candidates, which it contacts first every round.
fn first_flow_after(cfg: &PunchConfig) -> i32 {
    1 + base_targets(cfg.my_public, &cfg.my_locals).len() as i32
}

/// The peer's ports for its flows `first` to `first + window - 1` by `step` from its
/// registered one, then those before `first`, last so that they do not shift our own window
/// flows' ports.
fn window_ports(cfg: &PunchConfig, first: i32, step: i32) -> Vec<u16> {
    let base = i32::from(cfg.peer.public.port());
    let mut v = Vec::new();
    for k in (first..first + i32::from(cfg.window)).chain(1..first) {
        let p = (base + step * k).rem_euclid(65536) as u16;
        if p != 0 && !v.contains(&p) {
            v.push(p);
        }
    }
    v
}

/// [`PunchConfig::counter_ports`]: a counter side probes our candidates first, then the
/// few random ports of ours it keeps probing, each a new flow of its counter.
pub(super) fn counter_ports(cfg: &PunchConfig) -> Vec<u16> {
    window_ports(cfg, first_flow_after(cfg), cfg.peer.nat.delta.unwrap_or(1))
}

//! What a punch plan does and why a punch failed, in words for the user: pure functions of
//! the two NAT classifications, the strategy and what was seen on the wire.

use crate::core::classify::{Allocation, Behavior};
use crate::core::punch::lockstep::Lockstep;
use crate::core::punch::{tcp, Strategy};
use crate::core::rendezvous::NatInfo;
use std::collections::BTreeSet;

const MAPPED_FAILED: &str = "nothing came through the router's port mapping: a firewall may block UDP between the peers, or the router dropped the mapping; try again with --port-mapping off to see whether the punch alone works";

/// Why a UDP punch found no path.
pub fn explain_failure(me: &NatInfo, peer: &NatInfo, s: Strategy) -> String {
    if s == Strategy::Mapped {
        return MAPPED_FAILED.into();
    }
    if me.allocation == Allocation::Random
        && peer.allocation == Allocation::Random
        && me.mapping != Behavior::EndpointIndependent
        && peer.mapping != Behavior::EndpointIndependent
    {
        if me.range.is_some() && peer.range.is_some() {
            // Blocks make a two-sided sweep possible, but only by chance (at best about 63%
            // for two full blocks: each side holds at most its block in new mappings).
            return "both NATs are symmetric with random ports, each within a port block: the two-sided sweep met by chance or not at all, and this time it did not; try again, or use a relay".into();
        }
        return "both NATs are symmetric with random ports: neither side's port can be predicted or reached by a sweep within the budget; a relay is needed (or a longer --punch-budget and more --sweep-sockets for a small chance)".into();
    }
    let random = |n: &NatInfo| {
        n.allocation == Allocation::Random && n.mapping != Behavior::EndpointIndependent
    };
    let counter = super::counter;
    if s == Strategy::Sweep && ((random(me) && counter(peer)) || (counter(me) && random(peer))) {
        return "one NAT draws random ports and the other gives each new destination the next port of a counter: the random side's mappings aimed at the counter's next ports while the counter side probed a few random ports of the other's; other traffic moved the counter past them, or chance did not meet; try a larger --window or more --sweep-sockets, or a relay".into();
    }
    match s {
        Strategy::Direct => "no punch packet got through: a firewall may block UDP between the peers, or one side's NAT changed its mapping".into(),
        Strategy::Predict => "the predicted ports were wrong: other traffic through the sequential NAT moved its counter; try a larger --window".into(),
        Strategy::Sweep => "the sweep found no open port pair within the budget; try a longer --punch-budget or more --sweep-sockets".into(),
        Strategy::Mapped => MAPPED_FAILED.into(),
    }
}

/// Why two sequential NATs found no pair: what the window covered, and what lies outside it.
pub fn explain_lockstep_failure(l: &Lockstep) -> String {
    format!(
        "no predicted port pair met: both NATs allocate ports in sequence, and our {} window flows and the peer's {} cover up to {} flows through our NAT and {} through the peer's between the registration and the window (probes of private candidates included, whether routed or not); more went through one of them (other programs' traffic), a NAT skipped ports, or UDP between the NATs is blocked; try a larger --window",
        l.my_flows, l.peer_flows, l.my_extra_max, l.peer_extra_max
    )
}

/// What the packet watcher saw of the peer during a TCP punch: how many of each answer, and
/// the peer's ports involved (which port a SYN, SYN-ACK or RST came from; which port an ICMP
/// error's quoted SYN was going to; which ports our SYNs went to).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WatchCounts {
    /// SYNs that arrived from the peer.
    pub syn_in: u64,
    /// SYN-ACKs that arrived from the peer.
    pub synack_in: u64,
    /// RSTs that arrived from the peer's address (its host, or its NAT refusing our SYN).
    pub rst_in: u64,
    /// ICMP destination-unreachable errors quoting one of our SYNs to the peer.
    pub icmp_unreachable: u64,
    /// SYNs this host sent to the peer, repeats included.
    pub syn_out: u64,
    /// Peer ports our SYNs went to.
    pub syn_to: PortSet,
    /// Peer ports that SYNs came from.
    pub syn_from: PortSet,
    /// Peer ports that SYN-ACKs came from.
    pub synack_from: PortSet,
    /// Peer ports that RSTs came from.
    pub rst_from: PortSet,
    /// Peer ports our SYNs were going to when an ICMP error quoted them.
    pub icmp_for: PortSet,
}

/// A set of ports, said as ranges ("20000-20024, 20030").
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PortSet(BTreeSet<u16>);

/// Ranges said at most; the rest is counted.
const RANGES_SAID: usize = 6;

impl PortSet {
    /// Adds a port; one already in the set is not counted twice.
    pub fn insert(&mut self, port: u16) {
        self.0.insert(port);
    }

    /// How many distinct ports the set holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no port was added.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for &p in &self.0 {
            match ranges.last_mut() {
                Some((_, hi)) if hi.checked_add(1) == Some(p) => *hi = p,
                _ => ranges.push((p, p)),
            }
        }
        let mut said = 0;
        for (i, &(lo, hi)) in ranges.iter().take(RANGES_SAID).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
            said += usize::from(hi - lo) + 1;
        }
        if said < self.0.len() {
            write!(f, " and {} more", self.0.len() - said)?;
        }
        Ok(())
    }
}

impl WatchCounts {
    /// What the far side did with our SYNs, for the failure message: `None` when it stayed
    /// silent, as it should.
    pub fn hostile(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.rst_in > 0 {
            parts.push(format!("{} RST", self.rst_in));
        }
        if self.icmp_unreachable > 0 {
            parts.push(format!(
                "{} ICMP destination-unreachable",
                self.icmp_unreachable
            ));
        }
        (!parts.is_empty()).then(|| {
            format!(
                "the peer's NAT answered our SYNs with {} instead of staying silent (RFC 5382 REQ-4); every answer closes the mapping our SYN opened, so the SYNs have to cross in flight. Try --prime-ttl N (a TTL that passes our NAT but dies before the peer's) if a router lies between the NATs",
                parts.join(" and ")
            )
        })
    }
}

/// Why a TCP punch found no connection: `refused` attempts were refused locally,
/// `came_up` connections came up but failed the authenticated TLS setup.
pub fn explain_tcp_failure(
    me: &NatInfo,
    peer: &NatInfo,
    s: Strategy,
    refused: u64,
    came_up: u64,
    seen: &WatchCounts,
) -> String {
    let mut why = if came_up > 0 {
        format!("{came_up} TCP connection(s) came up but none completed the authenticated TLS setup (see the lines above)")
    } else if !tcp::predictable(me)
        && !tcp::predictable(peer)
        && me.range.is_some()
        && peer.range.is_some()
    {
        "both NATs are symmetric with random TCP ports, each within a port block: the two-sided sweep meets by chance or not at all, and this time it did not; try again, or use a relay".to_string()
    } else if !tcp::predictable(me) && !tcp::predictable(peer) {
        "neither NAT maps TCP endpoint-independently or allocates its ports predictably (both are symmetric with random ports): no port of either side can be predicted or found by a sweep; a relay is needed".to_string()
    } else if let Some(h) = seen.hostile() {
        h
    } else if s == Strategy::Sweep
        && ((!tcp::predictable(me) && super::counter(peer))
            || (super::counter(me) && !tcp::predictable(peer)))
    {
        "one NAT draws random TCP ports and the other gives each new destination the next port of a counter: the random side's connections from fresh ports aimed at the counter's next ports while the counter side kept a few probes of random ports open; other connections moved the counter past them, or chance did not meet; try a larger --window or more --sweep-sockets, or a relay".into()
    } else {
        match s {
            Strategy::Direct => "no SYN got through: a firewall may block TCP between the peers, or a NAT changed its mapping".into(),
            Strategy::Predict => "the predicted ports were wrong: other connections through the sequential NAT moved its counter; try a larger --window".into(),
            Strategy::Sweep => "the sweep found no open port pair within the budget; try a longer --punch-budget or more --sweep-sockets".into(),
            Strategy::Mapped => "no connection came through the router's TCP port mapping: a firewall may block TCP between the peers, or the router dropped the mapping".into(),
        }
    };
    // Which ports: "from port(s) ..." after each count that is not 0.
    let from = |n: u64, ports: &PortSet, word: &str| {
        if n == 0 || ports.is_empty() {
            String::new()
        } else {
            let unit = if ports.len() == 1 { "port" } else { "ports" };
            format!(" ({word} {unit} {ports})")
        }
    };
    let to = if seen.syn_to.is_empty() {
        String::new()
    } else {
        format!(
            "our SYNs went to {} port(s) of the peer: {}; ",
            seen.syn_to.len(),
            seen.syn_to
        )
    };
    why.push_str(&format!(
        " ({to}seen: {} SYN-ACK{}, {} SYN from the peer{}, {} RST{}, {} ICMP unreachable{}; {refused} attempts refused)",
        seen.synack_in,
        from(seen.synack_in, &seen.synack_from, "from"),
        seen.syn_in,
        from(seen.syn_in, &seen.syn_from, "from"),
        seen.rst_in,
        from(seen.rst_in, &seen.rst_from, "from"),
        seen.icmp_unreachable,
        from(seen.icmp_unreachable, &seen.icmp_for, "for"),
    ));
    why
}

/// What this side's TCP plan does, for the status line (`window` and `sweep_sockets` as
/// configured).
pub fn describe_plan(plan: tcp::Plan, window: u16, sweep_sockets: usize) -> String {
    match plan {
        tcp::Plan::Direct => "one simultaneous open at the peer's port".into(),
        tcp::Plan::Window { delta } => format!(
            "simultaneous opens at the predicted port and the next {window} by step {delta}"
        ),
        tcp::Plan::Lockstep { delta, controlling } => {
            let t = super::lockstep::tolerance(window);
            let (n, _) = super::lockstep::share(controlling, t, t);
            let every = if controlling {
                "every port"
            } else {
                "every other port"
            };
            format!(
                "simultaneous opens in lockstep with the peer's: {n} from the predicted port on, at {every} by step {delta}, covering up to {t} other flows through each NAT"
            )
        }
        tcp::Plan::Probe => "probing random ports of the peer from our one port".into(),
        tcp::Plan::Spray => {
            format!("{sweep_sockets} connections from fresh ports toward the peer's one port")
        }
        tcp::Plan::SprayAtCounter { delta } => format!(
            "connections from fresh ports at the peer's predicted port and the next {window} by step {delta} in turn, {sweep_sockets} at each"
        ),
        tcp::Plan::TwoSided => {
            "connections from fresh ports at random ports of the peer, while the peer does the same (a two-sided sweep)".into()
        }
        tcp::Plan::ProbeFromCounter => format!(
            "probing {} random ports of the peer from our one port, each from the next port of our NAT's counter, kept open for the peer's connections at those ports",
            tcp::counter_flows(window)
        ),
    }
}

#[cfg(test)]
mod tests;

//! TCP hole punching, sans-IO: port prediction from the ports the server saw, and the plan of
//! connection attempts around the prediction.
//!
//! TCP punching is a simultaneous open (RFC 9293 section 3.5, figure 8): both peers `connect()`
//! toward the other's predicted external endpoint at the agreed moment. The first SYN to reach
//! the far NAT finds no mapping and is dropped (or answered, by hostile NATs); the crossing SYN
//! then finds the mapping the first one opened in its own NAT and passes. Every attempt is a
//! kernel socket bound to the same local port (SO_REUSEADDR/SO_REUSEPORT), one per candidate
//! port of the peer, so that whichever 4-tuple the peer's SYN arrives on, a socket with the
//! sequence number the NATs' conntrack saw is there to finish the handshake (a raw SYN with
//! another sequence number leaves the later packets out of conntrack's window, and the NAT
//! drops them as invalid).
//!
//! Per side, the plan depends on both NATs (RFC 5382 terms):
//! - the peer maps endpoint-independently: one attempt, at its mapped port (`direct`);
//! - the peer allocates sequentially: attempts at its predicted port and the next ones by its
//!   step, paced (`predict`); when ours does too, in lockstep ([`Plan::Lockstep`]);
//! - the peer allocates randomly and we map endpoint-independently: attempts at random ports of
//!   the peer, paced at the configured rate (`sweep`, probing side);
//! - we allocate randomly and the peer maps endpoint-independently: many attempts from fresh
//!   local ports toward the peer's one port, each a new random mapping in our NAT that the
//!   peer's probes may hit (`sweep`, spraying side; the birthday paradox of the Super
//!   Holepunch design);
//! - we allocate randomly and the peer's NAT is a counter that maps per destination: attempts
//!   from fresh local ports at the counter's next ports in turn, while the peer probes a few
//!   random ports of ours from those counter ports and keeps them open ([`sweeps`]);
//! - both allocate randomly: attempts from fresh local ports at random ports of the other's
//!   range on both sides, when the two ranges are small enough (carrier-grade blocks) for two
//!   attempts to be each other's reverse within the budget ([`sweeps::two_sided_or_none`]).
//!
//! A refused attempt (the far NAT answered with RST or ICMP, which also wipes the mapping our
//! SYN opened in our own NAT) is repeated after a short random pause, until the budget ends.

pub mod address_dependent;
pub mod first_flight;
pub mod raw;
pub mod sweeps;

pub use sweeps::{
    counter_flows, counter_sweep_per_port, counter_sweep_success_probability, counter_targets,
    sweep_success_probability, two_sided_or_none, two_sided_success_probability,
};

use super::Strategy;
use crate::core::classify::{Allocation, Behavior};
use crate::core::rendezvous::{NatInfo, PeerData, TcpOffer};
use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Largest port step still taken for sequential allocation; a larger constant difference
/// between three samples is more likely chance than a counter.
const MAX_DELTA: i32 = 64;
/// Pause bounds before repeating a refused attempt. Random, so that two peers refused at the
/// same moment do not keep crossing in the same unlucky order.
const RETRY_PAUSE: (u64, u64) = (80, 300);
/// An unanswered probe of a random port is closed after this long: if the port were the
/// peer's, the peer's socket would have answered within a round trip.
pub const PROBE_LINGER: Duration = Duration::from_secs(3);
/// Ports a random-allocating NAT draws from (Linux uses 1024-65535).
const RANDOM_PORTS: (u16, u16) = (1024, 65535);

/// What the ports the server saw from one local port say about our NAT, and where our next
/// connection from that port will appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prediction {
    /// Our NAT's TCP behaviour as the samples show it: mapping, allocation, the counter's step
    /// and, for random ports that cluster in a block, the range a peer should search.
    pub nat: NatInfo,
    /// 0 when unpredictable.
    pub port: u16,
}

/// `mapped` are the external ports the server saw for successive connections from local port
/// `local`, each to another server endpoint, in the order they were made.
pub fn predict(local: u16, mapped: &[u16]) -> Prediction {
    predict_counting(local, mapped, None)
}

/// [`predict`], told which way the NAT's counter runs (the sign of the UDP classification's
/// step, when it saw one): samples that came out of order are put back in that direction
/// rather than in the one most of their steps went.
pub fn predict_counting(local: u16, mapped: &[u16], direction: Option<i32>) -> Prediction {
    let mut nat = NatInfo::unknown();
    let Some((&first, rest)) = mapped.split_first() else {
        return Prediction { nat, port: 0 };
    };
    if rest.iter().all(|&p| p == first) {
        // One external port for every destination: endpoint-independent mapping (RFC 5382
        // REQ-1), and the next connection from `local` reuses it.
        nat.mapping = Behavior::EndpointIndependent;
        nat.filtering = Behavior::Unknown;
        nat.allocation = if first == local {
            Allocation::Preserving
        } else {
            Allocation::Unknown
        };
        return Prediction { nat, port: first };
    }
    nat.mapping = Behavior::AddressAndPortDependent;
    let steps = |m: &[u16]| -> Vec<i32> {
        m.windows(2)
            .map(|w| i32::from(w[1]) - i32::from(w[0]))
            .collect()
    };
    let reordered;
    let mapped = match counter_order(mapped, &steps(mapped), direction) {
        Some(v) => {
            reordered = v;
            &reordered[..]
        }
        None => mapped,
    };
    let deltas = steps(mapped);
    let counter = if deltas.iter().all(|&x| x == deltas[0]) {
        Some(deltas[0])
    } else {
        disturbed_step(local, mapped, &deltas)
    };
    if let Some(d) = counter.filter(|&d| deltas.len() >= 2 && d != 0 && d.abs() <= MAX_DELTA) {
        nat.allocation = Allocation::Sequential;
        nat.delta = Some(d);
        let last = *mapped.last().expect("non-empty");
        let next = i32::from(last) + d;
        let port = u16::try_from(next).unwrap_or(0);
        return Prediction { nat, port };
    }
    nat.allocation = if deltas.len() >= 2 {
        Allocation::Random
    } else {
        Allocation::Unknown
    };
    // Random ports that cluster are a block (a carrier-grade NAT's per-subscriber ports):
    // what the peer's sweep should search.
    let seen = [
        *mapped.iter().min().expect("non-empty"),
        *mapped.iter().max().expect("non-empty"),
    ];
    nat.range = crate::core::classify::search_range(nat.allocation, Some(seen), mapped.len());
    Prediction { nat, port: 0 }
}

/// The ports in the order a counter handed them out, when that is not the order the
/// connections were asked for: a connection whose first SYN was lost on the way to the NAT
/// gets its port only when the kernel repeats the SYN (a second later, RFC 6298 section
/// 2), after the others took theirs. A counter's ports, sorted, step evenly; random ports
/// (almost) never do. The direction is the one most steps in the asked order went.
fn counter_order(mapped: &[u16], deltas: &[i32], direction: Option<i32>) -> Option<Vec<u16>> {
    if mapped.len() < 3 || deltas.iter().all(|&d| d == deltas[0]) {
        return None;
    }
    let mut sorted = mapped.to_vec();
    sorted.sort_unstable();
    let d = i32::from(sorted[1]) - i32::from(sorted[0]);
    let even = sorted
        .windows(2)
        .all(|w| i32::from(w[1]) - i32::from(w[0]) == d);
    if !even || d == 0 || d > MAX_DELTA {
        return None;
    }
    // Two late connections can make most steps point backwards: the direction measured
    // over UDP, when there is one, wins.
    let down = match direction.filter(|&d| d != 0) {
        Some(d) => d < 0,
        None => deltas.iter().map(|d| d.signum()).sum::<i32>() < 0,
    };
    if down {
        sorted.reverse();
    }
    Some(sorted)
}

/// The step of a counter that other hosts' flows moved between our connections (the
/// probe's model, [`crate::core::classify::fit_allocation`]: each step is the counter's step
/// times one more than those flows, at most a few). The prediction is the undisturbed next
/// port; the window's later ports by the step cover flows of others before the punch. Only
/// without a wrap of the port space, which the prediction could not follow.
fn disturbed_step(local: u16, mapped: &[u16], deltas: &[i32]) -> Option<i32> {
    let samples: Vec<(usize, u16, u16)> = (0..).zip(mapped).map(|(i, &p)| (i, local, p)).collect();
    let fit = crate::core::classify::fit_allocation(&samples);
    let d = fit
        .delta
        .filter(|_| fit.allocation == Allocation::Sequential)?;
    deltas
        .iter()
        .all(|&x| x.signum() == d.signum())
        .then_some(d)
}

fn eim(n: &NatInfo) -> bool {
    n.mapping == Behavior::EndpointIndependent
}

fn sequential(n: &NatInfo) -> bool {
    !eim(n) && n.allocation == Allocation::Sequential
}

/// The peer's LAN endpoint for a direct TCP punch beside the public one, when the peer
/// registered from our own public IPv4 address (`my_public`, one NAT or one carrier NAT in
/// front of both): its first private IPv4 candidate's address with the port its TCP punch
/// uses. `None` at another public address, without an IPv4 candidate, or when the peer opens
/// each connection from a fresh port (an offer's `local_port` 0).
pub fn lan_peer(my_public: SocketAddr, peer: &PeerData) -> Option<SocketAddr> {
    if !my_public.is_ipv4() || my_public.ip() != peer.public.ip() {
        return None;
    }
    let port = peer
        .tcp
        .as_ref()
        .map(|o| o.local_port)
        .filter(|p| *p != 0)?;
    let ip = peer
        .locals
        .iter()
        .map(SocketAddr::ip)
        .find(|ip| ip.is_ipv4() && *ip != peer.public.ip())?;
    Some(SocketAddr::new(ip, port))
}

/// Copies of each first SYN the raw engine sends, given our NAT. Behind a NAT that takes the
/// next port of a counter for every new destination, a first SYN lost before the NAT (a
/// full queue, a lossy LAN or radio link) leaves its port to the next attempt's SYN, so every
/// later attempt leaves from the port the peer predicted for the one before and the
/// prediction misses as a whole. Two copies back to back make that a loss of both. Elsewhere
/// a lost first SYN costs only its own attempt a repeat, so one is sent.
pub fn first_syn_copies(me: &NatInfo) -> u8 {
    if sequential(me) {
        2
    } else {
        1
    }
}

/// Whether the peer can aim at this NAT's next TCP port: one port for every destination, or
/// a counter with a known step.
pub fn predictable(n: &NatInfo) -> bool {
    eim(n) || sequential(n)
}

/// The pair's strategy, the same on both sides.
pub fn strategy(a: &NatInfo, b: &NatInfo) -> Strategy {
    if eim(a) && eim(b) {
        Strategy::Direct
    } else if predictable(a) && predictable(b) {
        Strategy::Predict
    } else {
        Strategy::Sweep
    }
}

/// [`strategy`] once the port mappings are known: a mapping on either side (`any_mapped`)
/// replaces anything but `direct`, as for UDP ([`super::PunchConfig::strategy`]).
pub fn strategy_mapped(a: &NatInfo, b: &NatInfo, any_mapped: bool) -> Strategy {
    match strategy(a, b) {
        Strategy::Direct => Strategy::Direct,
        _ if any_mapped => Strategy::Mapped,
        s => s,
    }
}

/// Under [`Strategy::Mapped`]: our plan and where it aims, as (plan, ip, port). Toward the
/// peer's mapping, one attempt, repeated if refused (the peer's listener on its mapped port
/// takes it). Without one the peer connects to our mapping: no attempt at all (port 0), the
/// listener alone accepts. Our own SYN toward the peer would only open a mapping of our NAT
/// that nobody aims at (see [`super`]'s note on the mapped side's silence).
pub fn mapped_plan(peer_mapped: Option<SocketAddr>, peer_public: IpAddr) -> (Plan, IpAddr, u16) {
    match peer_mapped {
        Some(m) => (Plan::Direct, m.ip(), m.port()),
        None => (Plan::Direct, peer_public, 0),
    }
}

/// What this side does in the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// One attempt at the peer's predicted port.
    Direct,
    /// The peer's predicted port, then the next ones by its step, then the ones before.
    Window {
        /// The peer's counter step in ports per new connection (1 when unknown).
        delta: i32,
    },
    /// Both NATs give each new destination the next port of a counter: the lockstep of
    /// [`super::lockstep`] over TCP. Every SYN of ours opens a mapping of our own counter as
    /// well, so a window of step one on both sides meets only when neither counter moved
    /// after its prediction (one flow of anything else, on either side, and no SYN crosses).
    /// The controlling side's k-th SYN aims at the peer's prediction plus `k` steps, the
    /// other side's l-th at plus `2l`: with `xc` and `xf` flows of others before the windows,
    /// SYNs `k = xc + 2 xf` and `l = xc + xf` are each other's reverse.
    Lockstep {
        /// The peer's counter step in ports per new connection.
        delta: i32,
        /// Whether we are the controlling side (the larger id), which aims at every port.
        controlling: bool,
    },
    /// Random ports of the peer, from our one local port.
    Probe,
    /// Many attempts from fresh local ports toward the peer's one port.
    Spray,
    /// We allocate at random and the peer's NAT gives each new destination the next port of
    /// its counter (symmetric, sequential): the peer's probes toward our ports each leave
    /// from a new port of its counter, so attempts from fresh local ports aim at the
    /// counter's next ports in turn, each a new random mapping of ours, `--sweep-sockets`
    /// times over (the TCP form of [`super::PunchConfig::spray_at_counter`]).
    SprayAtCounter {
        /// The peer's counter step in ports per new connection.
        delta: i32,
    },
    /// The other side of [`Plan::SprayAtCounter`]: our NAT is the counter, and from our one
    /// local port we probe half a window of random ports of the peer, each the next port of
    /// our counter, and keep them open for the whole budget, so that the peer's attempts at
    /// those counter ports find them.
    ProbeFromCounter,
    /// Neither side can be found: attempts from fresh local ports at random ports of the
    /// peer's range, each a new random mapping of ours, while the peer does the same (a
    /// two-sided birthday sweep, as [`super::PunchConfig::two_sided`] over UDP); an attempt
    /// meets when the peer's came from the very mapping it aims at, toward ours.
    TwoSided,
}

impl Plan {
    /// Whether each attempt leaves from a fresh local port (a mapping of its own in a random
    /// NAT); such attempts are the kernel engine's, and no listener shares a punch port.
    pub fn fresh_ports(self) -> bool {
        matches!(
            self,
            Plan::Spray | Plan::SprayAtCounter { .. } | Plan::TwoSided
        )
    }

    /// Whether the plan is one side of a sweep, whose progress is reported as it goes.
    pub fn sweeping(self) -> bool {
        matches!(
            self,
            Plan::Probe
                | Plan::Spray
                | Plan::SprayAtCounter { .. }
                | Plan::ProbeFromCounter
                | Plan::TwoSided
        )
    }

    /// Whether the plan draws random ports of the peer instead of aiming at its prediction.
    fn probes(self) -> bool {
        matches!(self, Plan::Probe | Plan::ProbeFromCounter | Plan::TwoSided)
    }

    /// Whether an unanswered attempt is closed after [`PROBE_LINGER`] and a failed one left
    /// alone: it is one of many, and the next ones replace it.
    fn one_of_many(self) -> bool {
        matches!(
            self,
            Plan::Probe | Plan::SprayAtCounter { .. } | Plan::TwoSided
        )
    }
}

/// This side's plan from both NATs (see the module documentation): `Direct` toward an
/// endpoint-independent peer unless our ports are random (`Spray`), a `Window` around a sequential
/// peer's prediction (`SprayAtCounter` when our ports are random), `Probe` of a random peer's
/// ports from an endpoint-independent side (`ProbeFromCounter` from a sequential symmetric
/// one), and `TwoSided` when neither side is predictable ([`two_sided_or_none`] turns a
/// hopeless one into a window around the unknown port, which makes no attempt).
pub fn plan(me: &NatInfo, peer: &NatInfo) -> Plan {
    if eim(peer) {
        if eim(me) || sequential(me) {
            Plan::Direct
        } else {
            Plan::Spray
        }
    } else if sequential(peer) {
        let delta = peer.delta.unwrap_or(1);
        if predictable(me) {
            Plan::Window { delta }
        } else {
            Plan::SprayAtCounter { delta }
        }
    } else if eim(me) {
        Plan::Probe
    } else if sequential(me) {
        Plan::ProbeFromCounter
    } else {
        // Neither side can be found by the other: only both sides' sweeps can meet.
        Plan::TwoSided
    }
}

/// [`plan()`] for a pair that knows who controls (the larger id): two sequential NATs that
/// map per destination go in [`Plan::Lockstep`].
pub fn plan_in_pair(me: &NatInfo, peer: &NatInfo, controlling: bool) -> Plan {
    match plan(me, peer) {
        Plan::Window { delta } if super::lockstep::applies(me, peer) => {
            Plan::Lockstep { delta, controlling }
        }
        p => p,
    }
}

type HmacSha256 = Hmac<sha2::Sha256>;

fn offer_mac(key: &[u8; 32], from_id: &str, o: &TcpOffer) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"punchraw v1 tcp offer\0");
    mac.update(from_id.as_bytes());
    mac.update(&[0]);
    mac.update(&o.local_port.to_be_bytes());
    mac.update(&o.port.to_be_bytes());
    mac.update(o.fp.as_bytes());
    // The NAT description steers the peer's plan, so it is covered too.
    mac.update(serde_json::to_string(&o.nat).unwrap_or_default().as_bytes());
    mac
}

/// Our offer, MACed under the punch key so that the server relaying it cannot alter it.
pub fn make_offer(
    key: &[u8; 32],
    my_id: &str,
    local_port: u16,
    p: &Prediction,
    fingerprint: &[u8; 32],
) -> TcpOffer {
    let mut o = TcpOffer {
        local_port,
        port: p.port,
        nat: p.nat,
        fp: crate::core::hex::encode(fingerprint),
        mac: String::new(),
    };
    o.mac = crate::core::hex::encode(&offer_mac(key, my_id, &o).finalize().into_bytes());
    o
}

/// The peer's certificate fingerprint, when its offer verifies under our punch key.
pub fn verify_offer(key: &[u8; 32], peer_id: &str, o: &TcpOffer) -> Option<[u8; 32]> {
    let tag = crate::core::hex::decode32(&o.mac)?;
    offer_mac(key, peer_id, o).verify_slice(&tag).ok()?;
    crate::core::hex::decode32(&o.fp)
}

/// What the attempt scheduler [`TcpPunch`] aims at, and how fast and how long.
#[derive(Debug, Clone)]
pub struct TcpPunchConfig {
    /// This side's plan ([`plan()`], or [`mapped_plan`] under a port mapping).
    pub plan: Plan,
    /// The IP every attempt connects to: the peer's public one, or its mapping's.
    pub peer_ip: IpAddr,
    /// The peer's predicted port (0: unknown).
    pub peer_port: u16,
    /// Our fixed local port (unused by `Spray`).
    pub local_port: u16,
    /// How many ports past the prediction a `Window` tries, by the step; a quarter as many before
    /// it. A `Lockstep` covers a quarter of it in flows of others on each side.
    pub window: u16,
    /// Attempts per second at most.
    pub rate: u32,
    /// How many attempts from fresh local ports a `Spray` makes.
    pub sweep_sockets: usize,
    /// No new attempt or repeat after this long from the start.
    pub budget: Duration,
    /// The ports the peer's NAT draws random mappings from (`Probe` searches them):
    /// [`crate::core::punch::random_ports`] of its offer.
    pub peer_ports: [u16; 2],
    /// Seeds the random probe ports and the pauses before repeats.
    pub seed: u64,
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Open a socket bound to `from_port` (0: a fresh port) and `connect()` it to `to`.
    Connect {
        /// The attempt's number, which [`TcpPunch::handle_failure`] and [`Action::Abandon`] name
        /// it by.
        id: u64,
        /// Local port to bind, shared by all attempts with SO_REUSEADDR/SO_REUSEPORT; 0 for a
        /// fresh port (`Spray`).
        from_port: u16,
        /// The peer endpoint to connect to.
        to: SocketAddr,
    },
    /// Close attempt `id`: it can no longer succeed.
    Abandon {
        /// The attempt to close, as numbered in its [`Action::Connect`].
        id: u64,
    },
}

/// Why an attempt ended without a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptError {
    /// RST (ECONNREFUSED): the far NAT or host refused.
    Refused,
    /// ICMP error (EHOSTUNREACH, ENETUNREACH, ...).
    Unreachable,
    /// The kernel gave up retransmitting the SYN.
    TimedOut,
    /// The connection came up and failed after its handshake (TLS). Not repeated: our closing
    /// socket holds the 4-tuple (a repeat cannot even start, EADDRNOTAVAIL), and both NATs'
    /// tracking of it outlives the punch budget (SYN_RECV 60 s, closing states 10-120 s on
    /// Linux), in which a new SYN from the far side is dropped as invalid.
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Attempt {
    to: SocketAddr,
    from_port: u16,
    /// When to close it if still unanswered (random probes only).
    linger_until: Option<Instant>,
}

/// The attempt scheduler. Drive: `handle_timeout(now)` whenever `poll_timeout()` passes,
/// report failed attempts with `handle_failure`, and drain `poll_action()` after each call.
#[derive(Debug)]
pub struct TcpPunch {
    cfg: TcpPunchConfig,
    start: Instant,
    deadline: Instant,
    rng: StdRng,
    /// Targets not yet tried, in order.
    pending: VecDeque<u16>,
    /// Attempts to repeat, by when.
    retries: BTreeMap<Instant, Vec<(u16, SocketAddr)>>,
    next_send: Instant,
    live: BTreeMap<u64, Attempt>,
    next_id: u64,
    actions: VecDeque<Action>,
    probed: HashSet<u16>,
    /// Attempts made (SYNs the kernel sent first; retransmissions not counted).
    pub attempts: u64,
    /// Attempts refused with RST (ECONNREFUSED).
    pub refused: u64,
    /// Attempts ended by an ICMP error (EHOSTUNREACH, ENETUNREACH, ...).
    pub unreachable: u64,
}

impl TcpPunch {
    /// The schedule for `cfg` from `start`, the agreed moment. `Direct`, `Window` and `Spray` lay
    /// out their targets now, `Probe` draws ports as it goes; nothing is attempted when the plan
    /// needs the peer's port and it is 0 ([`TcpPunch::aimless`]).
    pub fn new(cfg: TcpPunchConfig, start: Instant) -> Self {
        let mut pending = VecDeque::new();
        // Port 0 is "unpredictable": aiming at the ports around it would only scan the peer's
        // address. Such a plan makes no attempt and leaves the peer's to the listener.
        let aimless = cfg.peer_port == 0 && !cfg.plan.probes();
        match cfg.plan {
            _ if aimless => {}
            Plan::Direct => pending.push_back(cfg.peer_port),
            Plan::Window { delta } => {
                pending.extend(counter_targets(cfg.peer_port, delta, cfg.window));
            }
            Plan::SprayAtCounter { delta } => {
                // Round by round over the counter's ports, so that each gets mappings all
                // through the budget.
                let ports = counter_targets(cfg.peer_port, delta, cfg.window);
                for _ in 0..cfg.sweep_sockets.max(1) {
                    pending.extend(ports.iter().copied());
                }
            }
            Plan::Lockstep { delta, controlling } => {
                let t = super::lockstep::tolerance(cfg.window);
                let (flows, stride) = super::lockstep::share(controlling, t, t);
                let base = i32::from(cfg.peer_port);
                for k in 0..i32::from(flows) {
                    if let Ok(p) = u16::try_from(base + stride * k * delta) {
                        if p != 0 {
                            pending.push_back(p);
                        }
                    }
                }
            }
            Plan::Spray => {
                pending.extend(std::iter::repeat_n(cfg.peer_port, cfg.sweep_sockets.max(1)))
            }
            // Drawn lazily, as many as the budget allows (a few, for the counter).
            Plan::Probe | Plan::ProbeFromCounter | Plan::TwoSided => {}
        }
        let rng = StdRng::seed_from_u64(cfg.seed);
        TcpPunch {
            deadline: start + cfg.budget,
            start,
            rng,
            pending,
            retries: BTreeMap::new(),
            next_send: start,
            live: BTreeMap::new(),
            next_id: 0,
            actions: VecDeque::new(),
            probed: HashSet::new(),
            attempts: 0,
            refused: 0,
            unreachable: 0,
            cfg,
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.cfg.rate.max(1)))
    }

    /// No attempt will be made: the peer's port is unknown and the plan needs one.
    pub fn aimless(&self) -> bool {
        self.cfg.peer_port == 0 && !self.cfg.plan.probes()
    }

    /// Whether the budget has run out at `now`: no attempt or repeat is made after that.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// The agreed moment the attempts start.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The plan in use.
    pub fn plan(&self) -> Plan {
        self.cfg.plan
    }

    /// The fixed local port of the attempts (unused by `Spray`).
    pub fn local_port(&self) -> u16 {
        self.cfg.local_port
    }

    fn source_port(&self) -> u16 {
        if self.cfg.plan.fresh_ports() {
            0
        } else {
            self.cfg.local_port
        }
    }

    fn random_port(&mut self) -> Option<u16> {
        let [lo, hi] = self.cfg.peer_ports;
        let (lo, hi) = if lo <= hi { (lo, hi) } else { RANDOM_PORTS };
        if self.cfg.plan == Plan::TwoSided {
            // Every attempt is a new mapping of ours, so a port of the peer's already
            // tried is as good a target as any other.
            return Some(self.rng.random_range(lo..=hi));
        }
        let space = usize::from(hi - lo) + 1;
        let cap = match self.cfg.plan {
            Plan::ProbeFromCounter => space.min(counter_flows(self.cfg.window)),
            _ => space,
        };
        if self.probed.len() >= cap {
            return None;
        }
        loop {
            let p = self.rng.random_range(lo..=hi);
            if self.probed.insert(p) {
                return Some(p);
            }
        }
    }

    fn connect(&mut self, now: Instant, from_port: u16, to: SocketAddr) {
        let id = self.next_id;
        self.next_id += 1;
        self.attempts += 1;
        // A random probe or a sprayed mapping that found nothing within the linger will not:
        // the far side's SYN or SYN-ACK would have come in a round trip. The counter's few
        // probes stay open: the peer's attempts at their ports may come at any time.
        let linger_until = self.cfg.plan.one_of_many().then(|| now + PROBE_LINGER);
        self.live.insert(
            id,
            Attempt {
                to,
                from_port,
                linger_until,
            },
        );
        self.actions
            .push_back(Action::Connect { id, from_port, to });
    }

    /// Queues what is due at `now` as [`Action`]s: repeats of refused attempts, abandons of random
    /// probes unanswered for [`PROBE_LINGER`], and new attempts paced at `rate` (no burst to catch
    /// up after a stall).
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.start {
            return;
        }
        if self.expired(now) {
            self.pending.clear();
            self.retries.clear();
            return;
        }
        // Repeats of refused attempts go out at their time, outside the pacing: they are few.
        let due: Vec<Instant> = self.retries.range(..=now).map(|(t, _)| *t).collect();
        for t in due {
            for (from, to) in self.retries.remove(&t).unwrap_or_default() {
                self.connect(now, from, to);
            }
        }
        let lingered: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, a)| a.linger_until.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in lingered {
            self.live.remove(&id);
            self.actions.push_back(Action::Abandon { id });
        }
        // Paced first attempts; after a stall (a slow driver) no burst to catch up.
        let interval = self.interval();
        let mut budget = 64;
        while now >= self.next_send && budget > 0 {
            let port = if self.cfg.plan.probes() {
                self.random_port()
            } else {
                self.pending.pop_front()
            };
            let Some(port) = port else { break };
            let to = SocketAddr::new(self.cfg.peer_ip, port);
            let from = self.source_port();
            self.connect(now, from, to);
            self.next_send += interval;
            budget -= 1;
        }
        if self.next_send < now {
            self.next_send = now;
        }
    }

    /// Attempt `id` failed. Refused or unreachable attempts at a target chosen on purpose are
    /// repeated (the far NAT may have answered before the peer's own SYN opened it); random
    /// probes are not, a refusal there just means a wrong port, and neither is a connection
    /// that came up ([`AttemptError::Failed`]).
    pub fn handle_failure(&mut self, now: Instant, id: u64, why: AttemptError) {
        let Some(a) = self.live.remove(&id) else {
            return;
        };
        match why {
            AttemptError::Refused => self.refused += 1,
            AttemptError::Unreachable => self.unreachable += 1,
            AttemptError::TimedOut => {}
            AttemptError::Failed => return,
        }
        if self.cfg.plan.one_of_many() || self.expired(now) {
            return;
        }
        let pause = Duration::from_millis(self.rng.random_range(RETRY_PAUSE.0..=RETRY_PAUSE.1));
        self.retries
            .entry(now + pause)
            .or_default()
            .push((a.from_port, a.to));
    }

    /// The next thing the driver must do, or `None` once the queue is drained.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`TcpPunch::handle_timeout`] is next due: the next paced attempt, repeat or linger
    /// end, at the latest the deadline; never `None`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.deadline;
        if let Some((&r, _)) = self.retries.iter().next() {
            t = t.min(r);
        }
        let more_probes = match self.cfg.plan {
            Plan::Probe | Plan::TwoSided => true,
            Plan::ProbeFromCounter => self.probed.len() < counter_flows(self.cfg.window),
            _ => false,
        };
        if !self.pending.is_empty() || more_probes {
            t = t.min(self.next_send.max(self.start));
        }
        if let Some(l) = self.live.values().filter_map(|a| a.linger_until).min() {
            t = t.min(l);
        }
        Some(t)
    }

    /// The attempt's target, for reports.
    pub fn target(&self, id: u64) -> Option<SocketAddr> {
        self.live.get(&id).map(|a| a.to)
    }
}

#[cfg(test)]
mod tests;

//! A simulated network on a virtual clock: NATs with configurable RFC 4787 behaviour, the
//! real sans-IO STUN server, latency and loss. Deterministic for a given seed and fast,
//! so the classifier (and later the punching state machines) can be tested for every NAT
//! kind without root.

pub mod tcp;
pub mod tcp_wire;

use crate::core::classify::{Behavior, Classifier, ClassifierConfig, UdpReport};
use crate::core::server::{EndpointId, Outcome, ServerConfig, StunServer, Transport};
use crate::core::Machine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// How a simulated NAT picks external ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortAlloc {
    /// Keep the internal port when free.
    Preserve,
    /// A counter shared by all new mappings, advancing by `step`.
    Sequential {
        start: u16,
        step: u16,
    },
    /// [`PortAlloc::Sequential`] on a NAT other hosts use too: before each new mapping of
    /// ours, up to `max_extra` flows of others (a number drawn from the NAT's seeded
    /// generator) take the counter's next ports, as Klinec and Matyas (2014) model a busy NAT.
    SequentialDisturbed {
        start: u16,
        step: u16,
        max_extra: u16,
    },
    /// [`PortAlloc::Sequential`] on a NAT whose other hosts open `per_s` new flows a second,
    /// evenly in time: between two of our mappings the counter moves by as many flows as
    /// fell in the interval (the late allocation probes time this).
    SequentialBusy {
        start: u16,
        step: u16,
        per_s: u32,
    },
    Random,
    /// A counter per destination, each starting at its own hashed offset (RFC 6056
    /// algorithms 3 and 4, as Linux picks ephemeral ports and libslirp inherits): sequential
    /// toward one destination, unpredictable toward a new one.
    PerDestination {
        step: u16,
    },
    /// Random within `lo..=hi`, the block of ports a carrier-grade NAT gives this
    /// subscriber (RFC 6888 section 5).
    RandomIn {
        lo: u16,
        hi: u16,
        /// A port may serve several destinations at once, as Linux's `snat ... random`
        /// allows (conntrack needs only the reply tuples to differ), so the block holds more
        /// mappings than ports; without it a full block drops new flows.
        reuse: bool,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct NatBehavior {
    pub mapping: Behavior,
    pub filtering: Behavior,
    pub alloc: PortAlloc,
    pub hairpin: bool,
    /// Idle time after which a binding is forgotten (RFC 4787 REQ-5 says at least 2 min).
    pub timeout: Duration,
    /// The first flow toward this destination that would reuse an existing mapping finds
    /// its port taken toward it (by another internal endpoint, not simulated) and gets a
    /// port of its own, as Linux's NAT does when the 5-tuple is taken; later flows do not.
    pub collide_toward: Option<SocketAddr>,
}

impl NatBehavior {
    pub fn new(mapping: Behavior, filtering: Behavior, alloc: PortAlloc) -> Self {
        NatBehavior {
            mapping,
            filtering,
            alloc,
            hairpin: false,
            timeout: Duration::from_secs(120),
            collide_toward: None,
        }
    }
}

#[derive(Debug)]
struct Binding {
    internal: SocketAddr,
    /// The part of the destination the mapping depends on (none, IP, or IP and port).
    key_dst: Option<SocketAddr>,
    external: u16,
    /// Remote endpoints this binding sent to; what filtering compares against.
    contacted: Vec<SocketAddr>,
    last_used: Instant,
}

pub struct SimNat {
    pub public_ip: IpAddr,
    pub behavior: NatBehavior,
    bindings: Vec<Binding>,
    next_seq: u16,
    /// Next port toward each destination ([`PortAlloc::PerDestination`]).
    per_dst: HashMap<SocketAddr, u16>,
    /// [`PortAlloc::SequentialBusy`]: when others' flows were last counted, and the
    /// fraction of a flow carried over.
    busy_since: Option<(Instant, f64)>,
    /// [`NatBehavior::collide_toward`] has happened.
    collided: bool,
    rng: StdRng,
}

impl SimNat {
    pub fn new(public_ip: IpAddr, behavior: NatBehavior, seed: u64) -> Self {
        let next_seq = match behavior.alloc {
            PortAlloc::Sequential { start, .. }
            | PortAlloc::SequentialDisturbed { start, .. }
            | PortAlloc::SequentialBusy { start, .. } => start,
            _ => 0,
        };
        SimNat {
            public_ip,
            behavior,
            bindings: Vec::new(),
            next_seq,
            per_dst: HashMap::new(),
            busy_since: None,
            collided: false,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn key(&self, dst: SocketAddr) -> Option<SocketAddr> {
        match self.behavior.mapping {
            Behavior::AddressDependent => Some(SocketAddr::new(dst.ip(), 0)),
            Behavior::AddressAndPortDependent => Some(dst),
            _ => None,
        }
    }

    fn expire(&mut self, now: Instant) {
        let t = self.behavior.timeout;
        self.bindings
            .retain(|b| now.saturating_duration_since(b.last_used) < t);
    }

    fn port_free(&self, p: u16) -> bool {
        p >= 1024 && !self.bindings.iter().any(|b| b.external == p)
    }

    /// The shared counter's next free port after `others` flows of other hosts took theirs.
    fn counter(&mut self, step: u16, others: u16) -> u16 {
        self.next_seq = self.next_seq.wrapping_add(step.wrapping_mul(others));
        loop {
            let p = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(step);
            if self.port_free(p) {
                break p;
            }
        }
    }

    /// Translates an outgoing packet's source; creates or refreshes the binding. `None` when
    /// a new binding is needed and the NAT has no port left for it (a port block is full):
    /// the packet is dropped, as a real NAT drops it.
    pub fn outbound(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Option<SocketAddr> {
        self.expire(now);
        let mut key = self.key(dst);
        let own = |b: &Binding| b.internal == src && b.key_dst == Some(dst);
        if self.bindings.iter().any(own) {
            // A flow that collided keeps the port it got.
            key = Some(dst);
        } else if self.behavior.collide_toward == Some(dst)
            && !self.collided
            && self.bindings.iter().any(|b| b.internal == src)
        {
            key = Some(dst);
            self.collided = true;
        }
        if let Some(b) = self
            .bindings
            .iter_mut()
            .find(|b| b.internal == src && b.key_dst == key)
        {
            b.last_used = now;
            if !b.contacted.contains(&dst) {
                b.contacted.push(dst);
            }
            return Some(SocketAddr::new(self.public_ip, b.external));
        }
        let external = match self.behavior.alloc {
            PortAlloc::Preserve if self.port_free(src.port()) => src.port(),
            PortAlloc::Sequential { step, .. } => self.counter(step, 0),
            PortAlloc::SequentialDisturbed {
                step, max_extra, ..
            } => {
                // Others' mappings are not simulated, only the ports they take.
                let others = self.rng.random_range(0..=max_extra);
                self.counter(step, others)
            }
            PortAlloc::SequentialBusy { step, per_s, .. } => {
                let (since, carry) = self.busy_since.unwrap_or((now, 0.0));
                let flows = carry + f64::from(per_s) * (now - since).as_secs_f64();
                self.busy_since = Some((now, flows.fract()));
                self.counter(step, flows.trunc() as u16)
            }
            PortAlloc::PerDestination { step } => {
                // Two offsets a few steps apart make two counters that interleave into one
                // (1 in several thousand draws): no sampling could tell that NAT from a
                // sequential one, so the simulated one keeps its counters apart.
                let apart = |nat: &Self, p: u16| {
                    nat.per_dst
                        .values()
                        .all(|&q| p.abs_diff(q) > step.saturating_mul(64))
                };
                let mut first = self.rng.random_range(1024..=60000);
                while !self.per_dst.contains_key(&dst) && !apart(self, first) {
                    first = self.rng.random_range(1024..=60000);
                }
                let mut p = *self.per_dst.entry(dst).or_insert(first);
                while !self.port_free(p) {
                    p = p.wrapping_add(step).max(1024);
                }
                self.per_dst.insert(dst, p.wrapping_add(step).max(1024));
                p
            }
            PortAlloc::RandomIn { lo, hi, reuse } => {
                let free = |nat: &Self, p: u16| {
                    if reuse {
                        p >= 1024
                            && !nat
                                .bindings
                                .iter()
                                .any(|b| b.external == p && b.key_dst == key)
                    } else {
                        nat.port_free(p)
                    }
                };
                // Random tries first (the usual case), then a scan: a full block is a drop.
                let mut tried = None;
                for _ in 0..64 {
                    let p = self.rng.random_range(lo..=hi);
                    if free(self, p) {
                        tried = Some(p);
                        break;
                    }
                }
                tried.or_else(|| (lo..=hi).find(|&p| free(self, p)))?
            }
            _ => loop {
                let p = self.rng.random_range(1024..=65535);
                if self.port_free(p) {
                    break p;
                }
            },
        };
        self.bindings.push(Binding {
            internal: src,
            key_dst: key,
            external,
            contacted: vec![dst],
            last_used: now,
        });
        Some(SocketAddr::new(self.public_ip, external))
    }

    /// Where an incoming packet to `dst` (an external address) goes, if the filter lets it.
    pub fn inbound(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Option<SocketAddr> {
        self.expire(now);
        let filtering = self.behavior.filtering;
        let b = self.bindings.iter_mut().find(|b| {
            b.external == dst.port()
                && match filtering {
                    Behavior::EndpointIndependent => true,
                    Behavior::AddressDependent => b.contacted.iter().any(|c| c.ip() == src.ip()),
                    _ => b.contacted.contains(&src),
                }
        })?;
        b.last_used = now;
        Some(b.internal)
    }
}

#[derive(Debug, PartialEq, Eq)]
struct InFlight {
    at: Instant,
    seq: u64,
    src: SocketAddr,
    dst: SocketAddr,
    data: Vec<u8>,
}

impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Earliest first from a max-heap.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// One host (optionally behind a NAT) and an RFC 5780 STUN server, with a packet queue
/// ordered by delivery time.
pub struct SimNet {
    pub now: Instant,
    pub nat: Option<SimNat>,
    pub server: StunServer,
    pub host_ip: IpAddr,
    /// One-way latency between the NAT (or host) and the server.
    pub latency: Duration,
    /// Probability that any one packet is lost (past the NAT, after it mapped the packet).
    pub loss: f64,
    /// Probability that a packet from the host is lost on its way to the NAT, before it
    /// mapped it: a port counter does not move for it, and the copy that gets through later
    /// takes a later port (the lab's NATs drop in their forward chain, before translation).
    pub loss_before_nat: f64,
    queue: BinaryHeap<InFlight>,
    seq: u64,
    rng: StdRng,
    /// Datagrams delivered to the host, per destination socket address.
    pub delivered: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
}

pub const SIM_SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const SIM_SERVER_ALT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const SIM_NAT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub const SIM_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

impl SimNet {
    pub fn new(nat: Option<NatBehavior>, alternate: bool, seed: u64) -> Self {
        let host_ip = if nat.is_some() {
            IpAddr::V4(SIM_HOST)
        } else {
            IpAddr::V4(SIM_NAT)
        };
        let now = Instant::now();
        SimNet {
            now,
            nat: nat.map(|b| SimNat::new(IpAddr::V4(SIM_NAT), b, seed ^ 0x5eed)),
            server: StunServer::new(
                ServerConfig {
                    ip: IpAddr::V4(SIM_SERVER),
                    alt_ip: alternate.then_some(IpAddr::V4(SIM_SERVER_ALT)),
                    port: 3478,
                    alt_port: 3479,
                    software: None,
                    per_source_limit: None,
                    seed: 0,
                },
                now,
            ),
            host_ip,
            latency: Duration::from_millis(10),
            loss: 0.0,
            loss_before_nat: 0.0,
            queue: BinaryHeap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(seed),
            delivered: Vec::new(),
        }
    }

    pub fn server_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(SIM_SERVER), 3478)
    }

    fn push(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            return;
        }
        self.seq += 1;
        self.queue.push(InFlight {
            at: self.now + self.latency,
            seq: self.seq,
            src,
            dst,
            data,
        });
    }

    /// The host sends a datagram from `src` (a local address).
    pub fn send_from_host(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        let now = self.now;
        match &mut self.nat {
            None => self.push(src, dst, data),
            Some(nat) if dst.ip() == nat.public_ip => {
                // A packet to the NAT's own address from inside: hairpin or drop.
                if !nat.behavior.hairpin {
                    return;
                }
                let Some(ext_src) = nat.outbound(now, src, dst) else {
                    return;
                };
                if let Some(internal) = nat.inbound(now, ext_src, dst) {
                    self.delivered.push((internal, ext_src, data));
                }
            }
            Some(_) if self.loss_before_nat > 0.0 && self.rng.random_bool(self.loss_before_nat) => {
            }
            Some(nat) => {
                if let Some(ext) = nat.outbound(now, src, dst) {
                    self.push(ext, dst, data);
                }
            }
        }
    }

    fn server_endpoint(&self, dst: SocketAddr) -> Option<EndpointId> {
        let cfg = self.server.config();
        cfg.endpoints()
            .into_iter()
            .find(|(_, a)| *a == dst)
            .map(|(id, _)| id)
    }

    /// Delivers everything due by `until`, advancing the clock; returns when the queue has
    /// nothing due by then.
    pub fn run_until(&mut self, until: Instant) {
        while let Some(p) = self.queue.peek() {
            if p.at > until {
                break;
            }
            let p = self.queue.pop().expect("peeked");
            self.now = self.now.max(p.at);
            self.deliver(p);
        }
        self.now = self.now.max(until);
    }

    pub fn next_delivery(&self) -> Option<Instant> {
        self.queue.peek().map(|p| p.at)
    }

    fn deliver(&mut self, p: InFlight) {
        if let Some(ep) = self.server_endpoint(p.dst) {
            let mut out = Vec::new();
            if let Outcome::Reply { from, to } =
                self.server
                    .handle(self.now, Transport::Udp, ep, p.src, &p.data, &mut out)
            {
                let from = self.server.config().addr(from);
                self.push(from, to, out);
            }
            return;
        }
        let now = self.now;
        let internal = match &mut self.nat {
            Some(nat) if p.dst.ip() == nat.public_ip => nat.inbound(now, p.src, p.dst),
            None if p.dst.ip() == self.host_ip => Some(p.dst),
            _ => None,
        };
        if let Some(dst) = internal {
            self.delivered.push((dst, p.src, p.data));
        }
    }
}

/// Runs a full classification of the given NAT (or none) on the virtual clock and returns
/// the report and how long it took in virtual time.
pub fn classify(
    nat: Option<NatBehavior>,
    alternate: bool,
    loss: f64,
    seed: u64,
    lifetime_max: Option<Duration>,
) -> (UdpReport, Duration) {
    classify_with_latency(
        nat,
        alternate,
        loss,
        seed,
        lifetime_max,
        Duration::from_millis(10),
    )
}

/// [`classify`] with `latency` one way between the host and the server.
pub fn classify_with_latency(
    nat: Option<NatBehavior>,
    alternate: bool,
    loss: f64,
    seed: u64,
    lifetime_max: Option<Duration>,
    latency: Duration,
) -> (UdpReport, Duration) {
    classify_configured(nat, alternate, loss, seed, latency, |cfg| {
        cfg.lifetime_max = lifetime_max;
    })
}

/// [`classify_with_latency`] with the classifier's configuration adjusted by `tune` (the
/// server address and the seed are set before).
pub fn classify_configured(
    nat: Option<NatBehavior>,
    alternate: bool,
    loss: f64,
    seed: u64,
    latency: Duration,
    tune: impl FnOnce(&mut ClassifierConfig),
) -> (UdpReport, Duration) {
    classify_after(nat, alternate, loss, seed, latency, tune, |_, _| {})
}

/// [`classify_configured`] on a network that `before` has already used, given the local
/// addresses the classifier's sockets will have: what an earlier run left in the NAT.
pub fn classify_after(
    nat: Option<NatBehavior>,
    alternate: bool,
    loss: f64,
    seed: u64,
    latency: Duration,
    tune: impl FnOnce(&mut ClassifierConfig),
    before: impl FnOnce(&mut SimNet, &[SocketAddr]),
) -> (UdpReport, Duration) {
    let mut net = SimNet::new(nat, alternate, seed);
    net.loss = loss;
    net.latency = latency;
    let mut cfg = ClassifierConfig::new(net.server_addr());
    cfg.seed = seed;
    tune(&mut cfg);
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let mut locals: Vec<SocketAddr> = Vec::new();
    while locals.len() < cfg.sockets_needed() {
        let a = SocketAddr::new(net.host_ip, rng.random_range(32768..61000));
        if !locals.contains(&a) {
            locals.push(a);
        }
    }
    let index: HashMap<SocketAddr, usize> =
        locals.iter().enumerate().map(|(i, a)| (*a, i)).collect();
    before(&mut net, &locals);
    net.run_until(net.now + latency * 2);
    net.delivered.clear();
    let start = net.now;
    let mut c = Classifier::new(cfg, locals.clone(), start);
    let limit = start + Duration::from_secs(3600);
    while !c.is_done() && net.now < limit {
        while let Some(t) = c.poll_transmit() {
            net.send_from_host(locals[t.socket], t.dst, t.payload);
        }
        for (dst, src, data) in std::mem::take(&mut net.delivered) {
            if let Some(&i) = index.get(&dst) {
                c.handle_input(net.now, i, src, &data);
            }
        }
        if c.is_done() {
            break;
        }
        if c.poll_transmit_pending() {
            continue;
        }
        let wake = match (c.poll_timeout(), net.next_delivery()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        net.run_until(wake);
        if c.poll_timeout().is_some_and(|t| t <= net.now) {
            c.handle_timeout(net.now);
        }
    }
    let elapsed = c.elapsed(net.now);
    (
        c.report()
            .cloned()
            .expect("classifier must finish within the virtual hour"),
        elapsed,
    )
}

/// Two hosts, each behind its own (optional) NAT, and a stand-in for the rendezvous server
/// that only records which public endpoint a registration came from.
pub struct PairNet {
    pub now: Instant,
    pub nats: [Option<SimNat>; 2],
    pub hosts: [IpAddr; 2],
    pub latency: Duration,
    /// Extra random delay up to this much per packet, which reorders packets.
    pub jitter: Duration,
    /// Packets lost past the NAT (after it mapped them).
    pub loss: f64,
    /// Packets lost on the way to the NAT (a busy Wi-Fi link, a NAT dropping under load),
    /// before it mapped them: a sequential NAT's counter does not move for them.
    pub loss_before_nat: f64,
    /// Whether each side's NAT routes packets toward private (RFC 1918) addresses out of its
    /// WAN side, as a NAT with a default route does: such a packet (a probe of the peer's
    /// local candidate) then creates a mapping and moves a sequential counter. A NAT without
    /// a route for them drops them before translation, and its counter stays.
    pub routes_private: [bool; 2],
    /// Each host's IPv6 address, routed (never translated) beside its IPv4 NAT
    /// ([`PairNet::add_ipv6`]).
    pub hosts6: [Option<IpAddr>; 2],
    /// The stateful IPv6 firewall in front of each host, a "NAT" that keeps addresses and
    /// ports and only filters; `None` routes IPv6 unfiltered.
    firewalls6: [Option<SimNat>; 2],
    queue: BinaryHeap<InFlight>,
    seq: u64,
    rng: StdRng,
    /// (side, internal destination, source, data) delivered to a host.
    pub delivered: Vec<(usize, SocketAddr, SocketAddr, Vec<u8>)>,
}

pub const PAIR_SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(SIM_SERVER), 3478);

impl PairNet {
    pub fn new(a: Option<NatBehavior>, b: Option<NatBehavior>, seed: u64) -> Self {
        let public = [
            Ipv4Addr::new(198, 51, 100, 10),
            Ipv4Addr::new(198, 51, 100, 20),
        ];
        let private = [Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 2, 2)];
        let mk = |i: usize, n: Option<NatBehavior>| {
            n.map(|b| SimNat::new(IpAddr::V4(public[i]), b, seed ^ (i as u64 + 77)))
        };
        PairNet {
            now: Instant::now(),
            hosts: [
                IpAddr::V4(if a.is_some() { private[0] } else { public[0] }),
                IpAddr::V4(if b.is_some() { private[1] } else { public[1] }),
            ],
            nats: [mk(0, a), mk(1, b)],
            latency: Duration::from_millis(15),
            jitter: Duration::ZERO,
            loss: 0.0,
            loss_before_nat: 0.0,
            routes_private: [true; 2],
            hosts6: [None, None],
            firewalls6: [None, None],
            queue: BinaryHeap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(seed),
            delivered: Vec::new(),
        }
    }

    /// Gives `side` a global IPv6 address (`2001:db8:<side+1>::2`), behind a stateful
    /// firewall that lets in what answers the host's own traffic with `filtering`
    /// (RFC 6092 section 3.2.3 recommends address-and-port-dependent), or unfiltered.
    pub fn add_ipv6(&mut self, side: usize, filtering: Option<Behavior>) -> IpAddr {
        let ip = IpAddr::V6(std::net::Ipv6Addr::new(
            0x2001,
            0xdb8,
            side as u16 + 1,
            0,
            0,
            0,
            0,
            2,
        ));
        self.hosts6[side] = Some(ip);
        self.firewalls6[side] = filtering.map(|f| {
            let b = NatBehavior::new(Behavior::EndpointIndependent, f, PortAlloc::Preserve);
            SimNat::new(ip, b, side as u64)
        });
        ip
    }

    /// `n` new flows through `side`'s NAT from another program on the host (each to its own
    /// destination, so each takes a new mapping): other traffic that moves a sequential
    /// counter.
    pub fn other_flows(&mut self, side: usize, n: u16) {
        let now = self.now;
        let src = SocketAddr::new(self.hosts[side], 53000);
        if let Some(nat) = &mut self.nats[side] {
            for i in 0..n {
                let _ = nat.outbound(now, src, SocketAddr::new(PAIR_SERVER.ip(), 9000 + i));
            }
        }
    }

    /// The endpoint the rendezvous server would see for a registration from `src`.
    pub fn register(&mut self, side: usize, src: SocketAddr) -> SocketAddr {
        let now = self.now;
        match &mut self.nats[side] {
            Some(nat) => nat
                .outbound(now, src, PAIR_SERVER)
                .expect("a fresh NAT has a port for the registration"),
            None => src,
        }
    }

    pub fn send(&mut self, side: usize, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        let now = self.now;
        let private = matches!(dst.ip(), IpAddr::V4(a) if a.is_private());
        if private && self.nats[side].is_some() && !self.routes_private[side] {
            return;
        }
        if self.loss_before_nat > 0.0 && self.rng.random_bool(self.loss_before_nat) {
            return;
        }
        if src.is_ipv4() != dst.is_ipv4() {
            // A socket of one family cannot send to the other (EAFNOSUPPORT).
            return;
        }
        let translator = if dst.is_ipv6() {
            if self.hosts6[side].is_none() {
                return;
            }
            &mut self.firewalls6[side]
        } else {
            &mut self.nats[side]
        };
        let ext = match translator {
            Some(nat) => match nat.outbound(now, src, dst) {
                Some(ext) => ext,
                None => return,
            },
            None => src,
        };
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            return;
        }
        let jitter = if self.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.jitter.mul_f64(self.rng.random::<f64>())
        };
        self.seq += 1;
        self.queue.push(InFlight {
            at: self.now + self.latency + jitter,
            seq: self.seq,
            src: ext,
            dst,
            data,
        });
    }

    pub fn next_delivery(&self) -> Option<Instant> {
        self.queue.peek().map(|p| p.at)
    }

    pub fn run_until(&mut self, until: Instant) {
        while let Some(p) = self.queue.peek() {
            if p.at > until {
                break;
            }
            let p = self.queue.pop().expect("peeked");
            self.now = self.now.max(p.at);
            let now = self.now;
            for side in 0..2 {
                let (host, translator) = if p.dst.is_ipv6() {
                    (self.hosts6[side], &mut self.firewalls6[side])
                } else {
                    (Some(self.hosts[side]), &mut self.nats[side])
                };
                let internal = match translator {
                    Some(nat) if nat.public_ip == p.dst.ip() => nat.inbound(now, p.src, p.dst),
                    None if host == Some(p.dst.ip()) => Some(p.dst),
                    _ => None,
                };
                if let Some(dst) = internal {
                    self.delivered.push((side, dst, p.src, p.data));
                    break;
                }
            }
        }
        self.now = self.now.max(until);
    }
}

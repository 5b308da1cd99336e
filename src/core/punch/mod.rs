//! UDP hole punching between two peers, sans-IO.
//!
//! Both peers learn each other's public endpoint, local candidates and NAT classification
//! from the rendezvous and start at the agreed moment. Every punch packet is a STUN Binding
//! request (responses are Binding success) carrying `USERNAME = "<to>:<from>"`, our TLS
//! certificate fingerprint and MESSAGE-INTEGRITY-SHA256 keyed from the shared secret, the
//! way ICE (RFC 8445 section 7.2) authenticates its connectivity checks: a stray or forged
//! packet is never taken for the peer. The peer with the larger id is *controlling*: it picks
//! the first pair that worked both ways and nominates it; the other side follows.
//!
//! Strategies ([`choose_strategy`]): `direct` when at least one side maps
//! endpoint-independently in a way the other can reach; `predict` when a symmetric side
//! allocates ports sequentially (the other side tries the next ports by the measured step);
//! `sweep` against random allocation (a birthday attack: the random side opens many
//! mappings toward the other's fixed endpoint while the other probes random ports);
//! `mapped` when no plain strategy is sure to work and one side's router maps its punch
//! port on request (PCP, NAT-PMP, UPnP IGD; see [`PunchConfig::strategy`]).
//!
//! # Through a router's port mapping
//!
//! A mapping (a DNAT rule on the router, miniupnpd's `prerouting_miniupnpd` chain on Linux)
//! lets anyone in at the mapped endpoint, but it does not make our own new flows leave from
//! it: miniupnpd adds no SNAT rule for a MAP (its `postrouting_miniupnpd` chain stays empty;
//! it is for PCP PEER), so our outgoing packets still get the NAT's ordinary (here random)
//! source port. So the peer sends to the mapped endpoint, and the mapped side answers what
//! arrives, to the source it arrived from: the answer matches the conntrack entry the
//! peer's packet created through the DNAT rule and leaves from the mapped port.
//!
//! The mapped side stays silent toward the peer's public endpoint. Seen in the lab (Linux
//! 6.18, miniupnpd 2.3.1, nftables): when it sends there first, its NAT holds an entry whose
//! original tuple (our socket to the peer) is the reply tuple the peer's packet through the
//! mapping needs. The kernel does not drop that packet; it resolves the clash by rewriting
//! the inbound flow's source port, so the peer appears at another port of its address, and
//! only answers to that port go back through the mapping; our own packets to the peer's
//! real endpoint keep leaving from the first entry's random port, which a filtering peer NAT
//! drops. Older kernels (and other NATs) may drop the clashing packet instead. Silence
//! avoids both: the first packet of the flow is the peer's.

pub mod explain;
pub mod lockstep;
pub mod priming;
mod sweep;
pub use sweep::{
    counter_flows, counter_sweep_per_port, counter_sweep_success_probability, TWO_SIDED_HOPELESS,
};
mod targets;
use targets::{same_family, targets};
pub mod tcp;
#[cfg(test)]
mod tests;

use crate::core::classify::{Allocation, Behavior};
use crate::core::rendezvous::{NatInfo, PeerData};
use crate::core::stun::{
    attr_type, Attribute, Class, Encoder, Message, MessageType, TransactionId,
};
use crate::core::{Machine, Transmit};
use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Comprehension-optional attributes (RFC 8489 section 18.3: 0x8000-0xFFFF) private to
/// punchraw: the sender's certificate fingerprint, and the controlling side's nomination.
pub const ATTR_CERT_FINGERPRINT: u16 = 0xC0A1;
/// The controlling side's nomination, with an empty value: the request carrying it names the pair
/// both sides use, like ICE's USE-CANDIDATE (RFC 8445 section 7.1.2).
pub const ATTR_NOMINATE: u16 = 0xC0A2;

/// Ports a random-allocating NAT draws from when nothing narrower is known (Linux uses
/// 1024-65535 for masquerade).
const RANDOM_PORTS: [u16; 2] = [1024, 65535];

/// Most sockets one side sends from in a two-sided sweep. Each socket's probe toward one of
/// the peer's ports is a mapping of its own, so `k` sockets make `k` times as many distinct
/// (our port, their port) pairs as one; four sockets over two 512-port blocks expect 16
/// meetings, and more only cost time the first meeting no longer needs.
const TWO_SIDED_MAX_SOCKETS: usize = 4;

/// Where `n`'s random mappings are: its block when the probe found one, else every
/// non-privileged port. The range comes from the peer through the rendezvous, so one that
/// makes no sense (inverted, privileged) counts as unknown rather than as a panic.
pub fn random_ports(n: &NatInfo) -> [u16; 2] {
    match n.range {
        Some([lo, hi]) if RANDOM_PORTS[0] <= lo && lo <= hi => [lo, hi],
        _ => RANDOM_PORTS,
    }
}

/// How many ports [`random_ports`] spans.
fn port_count(n: &NatInfo) -> f64 {
    span(random_ports(n))
}

/// How many ports `[lo, hi]` holds, both ends included.
pub fn span([lo, hi]: [u16; 2]) -> f64 {
    f64::from(hi.saturating_sub(lo)) + 1.0
}

/// How the pair punches, the same on both sides: [`choose_strategy`] from the two NAT
/// classifications, or [`PunchConfig::strategy`] once port mappings are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Each side sends to the other's public endpoint and local candidates: enough when one side
    /// maps endpoint-independently in a way the other can reach.
    Direct,
    /// A symmetric side whose ports are predictable (sequential or preserved) is aimed at its next
    /// ports: the predicted one and a window past it by the measured step.
    Predict,
    /// A birthday sweep against random allocation: the random side opens many mappings toward the
    /// other's fixed endpoint while the other probes random ports (both probe when neither side
    /// can be predicted).
    Sweep,
    /// The peer sends to a port mapping the other side's router granted.
    Mapped,
}

impl Strategy {
    /// The name in logs, reports and JSON: `direct`, `predict`, `sweep` or `mapped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Direct => "direct",
            Strategy::Predict => "predict",
            Strategy::Sweep => "sweep",
            Strategy::Mapped => "mapped",
        }
    }
}

fn eim(n: &NatInfo) -> bool {
    n.mapping == Behavior::EndpointIndependent
}

/// A NAT that gives each new destination the next port of a counter.
fn counter(n: &NatInfo) -> bool {
    !eim(n) && n.allocation == Allocation::Sequential
}

fn predictable(n: &NatInfo) -> bool {
    eim(n)
        || matches!(
            n.allocation,
            Allocation::Sequential | Allocation::Preserving
        )
}

/// The same answer on both sides: it depends only on the pair of classifications.
pub fn choose_strategy(a: &NatInfo, b: &NatInfo) -> Strategy {
    let reachable = |x: &NatInfo| {
        eim(x)
            && matches!(
                x.filtering,
                Behavior::EndpointIndependent | Behavior::AddressDependent
            )
    };
    if (eim(a) && eim(b)) || reachable(a) || reachable(b) {
        Strategy::Direct
    } else if predictable(a) && predictable(b) {
        Strategy::Predict
    } else {
        Strategy::Sweep
    }
}

/// Derives the punch key from the secret and session: HMAC-SHA256(secret, label | session),
/// so one secret used for two sessions gives two keys.
pub fn derive_key(secret: &[u8], session: &str) -> [u8; 32] {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"punchraw v1 punch key\0");
    mac.update(session.as_bytes());
    mac.finalize().into_bytes().into()
}

/// What one side needs to punch: both sides' rendezvous data, the shared key and certificate
/// fingerprint, and the budget and pacing of the probes.
#[derive(Debug, Clone)]
pub struct PunchConfig {
    /// Our id in the session; the side with the larger id is controlling (it nominates).
    pub my_id: String,
    /// Our NAT's classification, as the peer also learned it through the rendezvous.
    pub my_nat: NatInfo,
    /// Our socket 0 as the rendezvous saw it, and its local addresses: the peer targets
    /// these, and prediction must know how many flows the peer creates before its window.
    pub my_public: SocketAddr,
    /// Socket 0's local addresses, which the peer probes as host candidates (a peer behind the
    /// same NAT reaches us there).
    pub my_locals: Vec<SocketAddr>,
    /// Our socket 0's port as our router maps it, when it granted a mapping (the peer
    /// learns it as [`PeerData::mapped`]).
    pub my_mapped: Option<SocketAddr>,
    /// What the rendezvous told us about the peer: its id, public endpoint, local addresses, NAT
    /// classification and any router mapping.
    pub peer: PeerData,
    /// The key of every packet's MESSAGE-INTEGRITY-SHA256, from [`derive_key`].
    pub key: [u8; 32],
    /// SHA-256 of our per-run certificate; the peer pins it.
    pub fingerprint: [u8; 32],
    /// Give up after this long from the start.
    pub budget: Duration,
    /// Probes per second toward random ports (sweep), and the cap on all punch traffic.
    pub rate: u32,
    /// How many ports past the peer's last seen one to try (predict). Between two
    /// sequential NATs a quarter of it is the tolerance for unexpected flows on either side
    /// ([`lockstep`]).
    pub window: u16,
    /// Extra sockets the random side opens in a sweep.
    pub sweep_sockets: usize,
    /// Seeds transaction IDs, random probe ports and the sweep's order; the driver draws it, tests
    /// fix it.
    pub seed: u64,
}

impl PunchConfig {
    /// [`choose_strategy`], except that a port mapping on either side replaces anything
    /// but `direct`: a mapped endpoint is reachable from anyone, while prediction can be
    /// thrown off by other traffic and a sweep is a gamble. `direct` stays, because it
    /// already works without the router. Both sides know both mappings, so both agree.
    pub fn strategy(&self) -> Strategy {
        let s = choose_strategy(&self.my_nat, &self.peer.nat);
        if s != Strategy::Direct && (self.my_mapped.is_some() || self.peer.mapped.is_some()) {
            Strategy::Mapped
        } else {
            s
        }
    }

    fn controlling(&self) -> bool {
        self.my_id > self.peer.id
    }
}

/// Why a punch gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Packets claiming to be the peer failed the integrity check, and none passed.
    AuthFailed {
        /// Packets that failed MESSAGE-INTEGRITY-SHA256 or carried another certificate.
        rejected: u64,
    },
    /// Nothing got through within the budget.
    NoPath {
        /// The strategy that was tried.
        strategy: Strategy,
        /// STUN requests sent in all.
        probes: u64,
    },
}

/// What the punch tells its driver, through [`Machine::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// First event, queued at construction: the strategy both sides agreed on.
    Started {
        /// The strategy in use ([`PunchConfig::strategy`]).
        strategy: Strategy,
    },
    /// A sweep's progress (probes sent so far).
    Progress {
        /// STUN requests sent so far.
        probes: u64,
    },
    /// A pair worked both ways and was nominated (by us when controlling, else by the peer); the
    /// punch is done and the socket is the driver's.
    Connected {
        /// Our socket the pair uses, by index into the driver's sockets.
        socket: usize,
        /// Where the peer really is: the source of its packets, which for a symmetric peer may be
        /// none of the ports we sent to.
        remote: SocketAddr,
        /// SHA-256 of the peer's certificate, from its authenticated packets: the one to pin in
        /// the QUIC handshake that follows.
        peer_fingerprint: [u8; 32],
        /// STUN requests sent until then.
        probes: u64,
    },
    /// Nothing connected within the budget; the punch is done.
    Failed(Failure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Check,
    Nominate,
}

/// The UDP hole punch of one side, a sans-IO [`Machine`] on the sockets
/// [`PunchConfig::sockets_needed`] asks for; see the module documentation.
pub struct Punch {
    cfg: PunchConfig,
    start: Instant,
    rng: StdRng,
    /// Where socket 0 sends every round: the peer's public endpoint, its locals, and the
    /// predicted ports.
    fixed_targets: Vec<SocketAddr>,
    next_round: Instant,
    next_random: Instant,
    next_spray: Instant,
    /// Our outstanding requests: transaction id to (socket, remote, role).
    pending: HashMap<TransactionId, (usize, SocketAddr, Role)>,
    /// Remotes that sent us a valid request, per socket.
    heard_from: Vec<(usize, SocketAddr)>,
    peer_fingerprint: Option<[u8; 32]>,
    queue: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// STUN requests sent so far: checks, nominations and sweep probes.
    pub probes: u64,
    /// Datagrams that claimed to be the peer but failed MESSAGE-INTEGRITY-SHA256, or carried
    /// another certificate than the peer's first.
    pub rejected: u64,
    /// Datagrams not for this punch: not STUN, a wrong USERNAME, an answer to no request of ours,
    /// or another STUN class.
    pub stray: u64,
    done: bool,
    last_progress: u64,
    /// A two-sided sweep's probes in the order they go out: every (socket, peer port) pair
    /// once, shuffled, so no probe repeats a mapping before all were made. Against a counter
    /// ([`PunchConfig::spray_at_counter`]): every sprayed socket toward each of the counter's
    /// ports; from it: the few ports of the peer that it probes.
    sweep: Vec<(usize, u16)>,
    sweep_next: usize,
}

const ROUND: Duration = Duration::from_millis(100);
/// Copies of each first packet of a predicting punch (see `handle_timeout`).
const FIRST_COPIES: usize = 3;
const SPRAY_EVERY: Duration = Duration::from_millis(1000);

impl Punch {
    /// `start` is the agreed moment; nothing is sent before it.
    pub fn new(cfg: PunchConfig, start: Instant) -> Self {
        let fixed = targets(&cfg);
        let seed = cfg.seed;
        let strategy = cfg.strategy();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sweep = Vec::new();
        if cfg.two_sided() {
            let [lo, hi] = random_ports(&cfg.peer.nat);
            for socket in 0..cfg.two_sided_sockets() {
                sweep.extend((lo..=hi).map(|p| (socket, p)));
            }
            sweep.shuffle(&mut rng);
        } else if cfg.spray_at_counter() {
            for port in cfg.counter_ports() {
                sweep.extend((1..cfg.sockets_needed()).map(|socket| (socket, port)));
            }
        } else if cfg.probe_from_counter() {
            let [lo, hi] = random_ports(&cfg.peer.nat);
            let ports: Vec<u16> = (lo..=hi).collect();
            sweep = ports
                .choose_multiple(&mut rng, cfg.counter_flows())
                .map(|&p| (0, p))
                .collect();
        }
        Punch {
            cfg,
            start,
            rng,
            sweep,
            sweep_next: 0,
            fixed_targets: fixed,
            next_round: start,
            next_random: start,
            next_spray: start,
            pending: HashMap::new(),
            heard_from: Vec::new(),
            peer_fingerprint: None,
            queue: VecDeque::new(),
            events: VecDeque::from([Event::Started { strategy }]),
            probes: 0,
            rejected: 0,
            stray: 0,
            done: false,
            last_progress: 0,
        }
    }

    /// Whether probes go out at the rate: toward the peer's random ports, or our mappings
    /// toward its counter's ports.
    fn sweeps(&self) -> bool {
        self.cfg.i_probe_random() || self.cfg.spray_at_counter()
    }

    /// Whether the extra sockets keep mappings toward the peer's registered endpoint open,
    /// refreshed every [`SPRAY_EVERY`] (against a counter they go out in the sweep instead).
    fn sprays_at_endpoint(&self) -> bool {
        self.cfg.i_spray() && !self.cfg.spray_at_counter()
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &PunchConfig {
        &self.cfg
    }

    /// The window of two sequential NATs, when this pair uses it (for the failure text).
    pub fn lockstep(&self) -> Option<lockstep::Lockstep> {
        lockstep::Lockstep::new(&self.cfg)
    }

    /// The socket that checks a fixed target: the main one, or the other family's
    /// (`None` without one).
    fn target_socket(&self, dst: &SocketAddr) -> Option<usize> {
        if same_family(dst, &self.cfg.my_public) {
            Some(0)
        } else {
            self.cfg.other_family_socket()
        }
    }

    fn request(&mut self, socket: usize, dst: SocketAddr, role: Role) {
        let tid = TransactionId::random(&mut self.rng);
        let mut payload = Vec::with_capacity(120);
        let username = format!("{}:{}", self.cfg.peer.id, self.cfg.my_id);
        let mut e = Encoder::new(&mut payload, MessageType::BINDING_REQUEST, tid);
        e.push(&Attribute::Username(username.as_bytes()));
        e.push(&Attribute::Other {
            typ: ATTR_CERT_FINGERPRINT,
            value: &self.cfg.fingerprint,
        });
        if role == Role::Nominate {
            e.push(&Attribute::Other {
                typ: ATTR_NOMINATE,
                value: &[],
            });
        }
        e.message_integrity_sha256(&self.cfg.key);
        e.fingerprint();
        // Old transactions are kept: a late answer to any of them still proves the pair.
        if self.pending.len() > 100_000 {
            self.pending.clear();
        }
        self.pending.insert(tid, (socket, dst, role));
        self.probes += 1;
        self.queue.push_back(Transmit {
            socket,
            dst,
            payload,
        });
    }

    fn respond(&mut self, socket: usize, to: SocketAddr, tid: TransactionId) {
        let mut payload = Vec::with_capacity(120);
        let mut e = Encoder::new(&mut payload, MessageType::BINDING_SUCCESS, tid);
        e.push(&Attribute::XorMappedAddress(to));
        e.push(&Attribute::Other {
            typ: ATTR_CERT_FINGERPRINT,
            value: &self.cfg.fingerprint,
        });
        e.message_integrity_sha256(&self.cfg.key);
        e.fingerprint();
        self.queue.push_back(Transmit {
            socket,
            dst: to,
            payload,
        });
    }

    fn connected(&mut self, socket: usize, remote: SocketAddr) {
        if self.done {
            return;
        }
        let Some(fp) = self.peer_fingerprint else {
            return;
        };
        self.done = true;
        self.events.push_back(Event::Connected {
            socket,
            remote,
            peer_fingerprint: fp,
            probes: self.probes,
        });
    }

    /// Authenticates a message as the peer's: USERNAME names us then the peer, and the
    /// MESSAGE-INTEGRITY-SHA256 verifies with the shared key.
    fn authentic(&mut self, msg: &Message<'_>, expect_username: bool) -> Option<[u8; 32]> {
        if expect_username {
            let want = format!("{}:{}", self.cfg.my_id, self.cfg.peer.id);
            match msg.get(attr_type::USERNAME) {
                Some(Ok(Attribute::Username(u))) if u == want.as_bytes() => {}
                _ => {
                    self.stray += 1;
                    return None;
                }
            }
        }
        if !msg.verify_integrity_sha256(&self.cfg.key) {
            self.rejected += 1;
            return None;
        }
        let fp = msg.attributes().find(|a| a.typ == ATTR_CERT_FINGERPRINT)?;
        let fp: [u8; 32] = fp.value.try_into().ok()?;
        if self.peer_fingerprint.is_some_and(|known| known != fp) {
            // Authenticated, but a different certificate than before: not the same run.
            self.rejected += 1;
            return None;
        }
        self.peer_fingerprint = Some(fp);
        Some(fp)
    }
}

impl Machine for Punch {
    type Event = Event;

    /// A datagram arrived on `socket` from `from`. After [`Event::Connected`], the driver
    /// must still drain [`Punch::poll_transmit`] (the last answer and nominations) before
    /// handing the socket to QUIC.
    fn handle_input(&mut self, now: Instant, socket: usize, from: SocketAddr, data: &[u8]) {
        if self.done {
            return;
        }
        let Ok(msg) = Message::parse(data) else {
            // A QUIC packet from an authenticated remote (the long header's first bit, or
            // the short header's fixed bit, RFC 9000 section 17: a stream already running
            // through a relay moves over in short-header packets), or one of the relay-first
            // stream's path probes: the controlling side has moved on, so its nomination was
            // lost; follow it. STUN's two top bits are zero.
            if !self.cfg.controlling()
                && data.first().is_some_and(|b| b & 0xc0 != 0)
                && self.heard_from.contains(&(socket, from))
            {
                self.connected(socket, from);
            } else {
                self.stray += 1;
            }
            return;
        };
        let tid = msg.transaction_id();
        match msg.message_type().class {
            Class::Request => {
                if self.authentic(&msg, true).is_none() {
                    return;
                }
                self.respond(socket, from, tid);
                let nominated = msg.attributes().any(|a| a.typ == ATTR_NOMINATE);
                if !self.heard_from.contains(&(socket, from)) {
                    self.heard_from.push((socket, from));
                    // A triggered check (RFC 8445 section 7.3.1.4): answer the newly heard
                    // remote with our own request so the pair is proven both ways quickly.
                    if now >= self.start {
                        self.request(socket, from, Role::Check);
                    }
                }
                if nominated && !self.cfg.controlling() {
                    self.connected(socket, from);
                }
            }
            Class::Success => {
                let Some(&(s, dst, role)) = self.pending.get(&tid) else {
                    self.stray += 1;
                    return;
                };
                if s != socket || self.authentic(&msg, false).is_none() {
                    return;
                }
                // The answer may come from another port than we sent to (a symmetric peer);
                // `from` is where the peer really is.
                let _ = dst;
                if self.cfg.controlling() {
                    if role == Role::Check {
                        // Nominate the first working pair, several times because the
                        // follower learns of it only from this.
                        for _ in 0..3 {
                            self.request(socket, from, Role::Nominate);
                        }
                    }
                    self.connected(socket, from);
                }
            }
            _ => self.stray += 1,
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.done || now < self.start {
            return;
        }
        if now >= self.start + self.cfg.budget {
            self.done = true;
            let f = if self.rejected > 0 && self.peer_fingerprint.is_none() {
                Failure::AuthFailed {
                    rejected: self.rejected,
                }
            } else {
                Failure::NoPath {
                    strategy: self.cfg.strategy(),
                    probes: self.probes,
                }
            };
            self.events.push_back(Event::Failed(f));
            return;
        }
        if now >= self.next_round {
            // A sequential NAT numbers new flows in the order their first packets reach it,
            // and the prediction counts on that order: one first packet lost before the NAT
            // would give every later flow the port meant for the one before it, and the lost
            // flow a port after all of them. So the first round sends each first packet
            // three times, back to back: the NAT maps on whichever copy arrives (at 5% loss
            // all three of one of 40 flows are lost once in 200 punches, two in 10).
            let copies =
                if self.next_round == self.start && self.cfg.strategy() == Strategy::Predict {
                    FIRST_COPIES
                } else {
                    1
                };
            // Remotes that reached us with a valid request (peer-reflexive candidates, RFC
            // 8445 section 7.3.1.3) stay on the check list like the fixed targets: the one
            // triggered check may be lost, or the request may have come before our start,
            // when nothing is sent; and behind a symmetric NAT the peer is only there.
            let heard: Vec<(usize, SocketAddr)> = self
                .heard_from
                .iter()
                .filter(|&&(s, a)| {
                    !(self.fixed_targets.contains(&a) && self.target_socket(&a) == Some(s))
                })
                .copied()
                .collect();
            for (socket, dst) in heard {
                self.request(socket, dst, Role::Check);
            }
            for dst in self.fixed_targets.clone() {
                let Some(socket) = self.target_socket(&dst) else {
                    continue;
                };
                self.request(socket, dst, Role::Check);
                if let Some(t) = self.queue.back().cloned() {
                    for _ in 1..copies {
                        self.queue.push_back(t.clone());
                    }
                }
            }
            self.next_round = now + ROUND;
        }
        if self.sprays_at_endpoint() && now >= self.next_spray {
            // Each extra socket keeps a mapping toward the peer's fixed endpoint open; the
            // peer's random probes are what have to land on one of them.
            for s in 1..self.cfg.sockets_needed() {
                self.request(s, self.cfg.peer.public, Role::Check);
            }
            self.next_spray = now + SPRAY_EVERY;
        }
        if self.sweeps() && now >= self.next_random {
            // Catch up on the probes the rate allows since the last call, in 10 ms slices.
            let per_slice = (self.cfg.rate / 100).max(1);
            for _ in 0..per_slice {
                let (socket, port) = if self.sweep.is_empty() {
                    let [lo, hi] = random_ports(&self.cfg.peer.nat);
                    (0, self.rng.random_range(lo..=hi))
                } else {
                    // Round after round through the same order: a repeat refreshes the
                    // mappings the first pass made.
                    let next = self.sweep[self.sweep_next % self.sweep.len()];
                    self.sweep_next += 1;
                    next
                };
                self.request(
                    socket,
                    SocketAddr::new(self.cfg.peer.public.ip(), port),
                    Role::Check,
                );
            }
            self.next_random = now + Duration::from_millis(10);
            if self.probes >= self.last_progress + u64::from(self.cfg.rate) {
                self.last_progress = self.probes;
                self.events.push_back(Event::Progress {
                    probes: self.probes,
                });
            }
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.queue.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let mut t = self.next_round.min(self.start + self.cfg.budget);
        if self.sweeps() {
            t = t.min(self.next_random);
        }
        if self.sprays_at_endpoint() {
            t = t.min(self.next_spray);
        }
        Some(t)
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

//! The UDP NAT classifier: RFC 5780 behaviour discovery as a sans-IO state machine.
//!
//! Drive it as a [`crate::core::Machine`], like quinn-proto's `Connection`: after
//! construction and after every [`Classifier::handle_input`] or
//! [`Classifier::handle_timeout`], drain
//! [`Classifier::poll_transmit`], then sleep until [`Classifier::poll_timeout`] or until a
//! datagram arrives; stop when [`Classifier::is_done`]. The classifier never reads a clock
//! and owns no socket: it names sockets by index into the `locals` it was built with, each of
//! which the driver binds fresh, so no test can contaminate another's binding.
//!
//! All tests that do not depend on an earlier answer start at once: mapping (RFC 5780 section
//! 4.3) on socket A and filtering (4.4) on two more sockets with one CHANGE-REQUEST each; a
//! filtering test answered asks again from a fresh socket (see the `filter` module).
//! The first answer starts the rest: port allocation on a burst of fresh sockets toward the
//! server's two endpoints in turn, hairpinning (4.5) toward A's mapping, and the optional
//! binding-lifetime search (4.6).

mod busy;
mod conclude;
mod filter;
mod pacing;
mod recheck;
mod report;
pub mod tcp;

pub use busy::{busy_range, drift_range, punch_horizon, range_ahead, Busy, BUSY_AHEAD};
pub use conclude::{
    classify_allocation, counter_ahead, fit_allocation, AllocationFit, MAX_EXTRA_FLOWS,
};
pub use report::{
    disturbance, search_range, Allocation, Behavior, LegacyType, LifetimeRange, UdpReport,
};
pub use tcp::TcpReport;

use crate::core::stun::{
    attr_type, Attribute, Class, Encoder, Message, MessageType, TransactionId,
};
use crate::core::{Machine, Transmit};
use pacing::after_send;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// First retransmission timeout before the RTT is known. RFC 8489 section 6.2.1 suggests
/// 500 ms for the open Internet; NAT discovery talks to one server and measures its RTT
/// first, so it can start near 100 ms and scale from the measurement.
const INITIAL_RTO: Duration = Duration::from_millis(100);
/// Sends per transaction whose silence is itself a result (filtering, hairpinning). With 5%
/// loss each way all three exchanges fail with probability below 0.1%; the time this costs
/// is what a restrictive NAT's classification takes, so the copies are spaced by the
/// measured RTT ([`copy_gap`]) rather than by a doubling timeout, and the last one is given
/// [`answer_wait`]: the same loss tolerance in about 3 RTTs instead of 9.
const ATTEMPTS: u32 = 3;
/// Sends of the very first request before the server is declared unreachable: eight within
/// about 3.2 s ([`MAX_BASE_GAP`]), so that 20% loss each way (36% per exchange) leaves the
/// server unheard with probability 0.36^8, about 3 in 10,000 (six sends doubling to 1.6 s
/// took as long and failed 1 in 500: seen in the lab).
const BASE_ATTEMPTS: u32 = 8;
/// Longest gap between sends of the first request, and the wait for an answer after the
/// last: RFC 8489 section 6.2.1 doubles the RTO without bound, but at two requests a second
/// toward one server there is no congestion to back off from, and every copy is one more
/// chance on a lossy path.
const MAX_BASE_GAP: Duration = Duration::from_millis(500);
/// Fresh sockets used to observe the port-allocation pattern.
pub const DEFAULT_ALLOC_SOCKETS: usize = 5;
/// The same for the quick classification before a punch ([`ClassifierConfig::quick`]).
pub const QUICK_ALLOC_SOCKETS: usize = 7;
/// Points of the binding-lifetime search, in seconds; only those up to the bound are used.
const LIFETIME_GRID: [f64; 22] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 32.0, 40.0, 50.0, 64.0, 80.0,
    100.0, 128.0, 180.0, 256.0, 360.0,
];

/// What the UDP classifier probes: the STUN server, how many allocation samples to take, and which
/// optional tests to run.
#[derive(Debug, Clone)]
pub struct ClassifierConfig {
    /// The STUN server's primary endpoint. Mapping and filtering need a server that also answers
    /// from an RFC 5780 alternate address (OTHER-ADDRESS, CHANGE-REQUEST).
    pub server: SocketAddr,
    /// Fresh sockets in the port-allocation burst, one mapping and one sample each
    /// ([`DEFAULT_ALLOC_SOCKETS`], or [`QUICK_ALLOC_SOCKETS`] for [`ClassifierConfig::quick`]).
    pub alloc_sockets: usize,
    /// Run the binding-lifetime search, bounded by this duration.
    pub lifetime_max: Option<Duration>,
    /// Seeds the transaction IDs; the driver draws it, tests fix it.
    pub seed: u64,
    /// Classify only what a punch needs, as soon as it is known ([`ClassifierConfig::quick`]).
    pub quick: bool,
}

impl ClassifierConfig {
    /// The full probe of `server`: [`DEFAULT_ALLOC_SOCKETS`] allocation samples, every test
    /// including hairpinning, no binding-lifetime search, seed 0.
    pub fn new(server: SocketAddr) -> Self {
        ClassifierConfig {
            server,
            alloc_sockets: DEFAULT_ALLOC_SOCKETS,
            lifetime_max: None,
            seed: 0,
            quick: false,
        }
    }

    /// For `connect`: the punch's strategy needs the mapping, the allocation, and whether
    /// the filtering lets any host in (endpoint-independent or address-dependent), which a
    /// filtering test's *answer* shows one RTT after its first copy. So hairpinning is not
    /// tested, and once everything else is settled and a filtering test's first copy has
    /// had two RTTs, its silence counts as the restrictive answer rather than waiting out
    /// every copy: a lost answer then makes the strategy the conservative one (the peer
    /// sweeps or predicts toward us; our replies still come from the one mapping), never an
    /// impossible one. The probe keeps the full test, since its answer is the product.
    ///
    /// It also takes seven allocation samples instead of five (in the same burst, so no
    /// time): a rerun within the NAT's mapping timeout may get local ports whose old mappings
    /// the NAT still holds, and seven samples let the fit leave two such stale ones out
    /// (three when the rest is an undisturbed counter, see [`fit_allocation`]).
    pub fn quick(server: SocketAddr) -> Self {
        ClassifierConfig {
            quick: true,
            alloc_sockets: QUICK_ALLOC_SOCKETS,
            ..Self::new(server)
        }
    }

    fn lifetime_points(&self) -> Vec<Duration> {
        let Some(max) = self.lifetime_max else {
            return Vec::new();
        };
        let mut v: Vec<Duration> = LIFETIME_GRID
            .iter()
            .map(|&s| Duration::from_secs_f64(s))
            .filter(|&d| d < max)
            .collect();
        v.push(max);
        v
    }

    /// How many fresh sockets the driver must bind before constructing the classifier.
    pub fn sockets_needed(&self) -> usize {
        let lifetime = self.lifetime_points().len();
        // A, B, C, H, allocation burst, lifetime probes plus the socket that checks them,
        // the two late allocation probes, the twins of B and C, the mapping recheck.
        4 + self.alloc_sockets
            + if lifetime > 0 { lifetime + 1 } else { 0 }
            + busy::LATE_SOCKETS
            + 2
            + 1
    }
}

/// Progress worth telling a person about while the classifier runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Test I was answered: the server is reachable and the RTT is known.
    ServerAnswered {
        /// Socket A's local address.
        local: SocketAddr,
        /// Socket A's external address as the server saw it (XOR-MAPPED-ADDRESS).
        mapped: SocketAddr,
        /// Round-trip time to the server's primary endpoint.
        rtt: Duration,
        /// The server's alternate endpoint (OTHER-ADDRESS), when it has one.
        other: Option<SocketAddr>,
    },
    /// A binding left idle for `after` still let the server's answer in (RFC 5780 section 4.6
    /// lifetime test).
    LifetimeAlive {
        /// How long the binding was idle before the check.
        after: Duration,
    },
    /// A binding left idle for `after` no longer let the server's answer in: the NAT had dropped
    /// it by then.
    LifetimeExpired {
        /// How long the binding was idle before the check.
        after: Duration,
    },
}

const SOCK_A: usize = 0;
const SOCK_B: usize = 1;
const SOCK_C: usize = 2;
const SOCK_H: usize = 3;
const SOCK_ALLOC0: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Test I: A to the primary endpoint.
    Base,
    /// Test II: A to the alternate IP, primary port.
    MapAltIp,
    /// Test III: A to the alternate IP and port.
    MapAltBoth,
    /// A to the primary IP and the alternate port: a second look at port dependence, so that
    /// test III matching test II by chance (a random allocator drawing the same port twice)
    /// is not taken for an address-dependent mapping.
    MapAltPort,
    /// Filtering test II: answer from the other IP and port.
    FilterIpPort,
    /// Filtering test III: answer from the other port only.
    FilterPort,
    /// Filtering test II again, once answered, from a fresh socket of its own: the
    /// `filter` module says why.
    FilterIpPortTwin,
    /// Filtering test III from its second socket, for the same reason.
    FilterPortTwin,
    /// H sends to A's mapped address; success is A receiving it.
    Hairpin,
    Alloc(usize),
    LifetimeOpen(usize),
    /// Sent from the checker socket with RESPONSE-PORT set to probe `i`'s mapped port.
    LifetimeCheck(usize),
    /// The late allocation probes that time a port counter ([`busy`]).
    Late(usize),
    /// The mapping tests again from a fresh socket, when A's disagree
    /// ([`Classifier::recheck_if_inconsistent`]): 0 to the primary endpoint, 1 to the
    /// alternate IP, 2 to the primary IP's alternate port.
    Recheck(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Pending,
    Answered {
        from: SocketAddr,
        mapped: Option<SocketAddr>,
        other: Option<SocketAddr>,
        socket: usize,
        at: Instant,
        /// The answer is to the first copy, so the NAT mapped the flow when that copy left;
        /// after a later copy's answer it may have mapped it any time up to that copy (the
        /// first one lost on its way to the NAT).
        first_copy: bool,
    },
    /// The server answered with an error (e.g. 420: it cannot change address).
    Rejected(u16),
    TimedOut,
}

#[derive(Debug)]
struct Txn {
    /// One transaction ID per copy sent, with when it left. Every copy is a request of its
    /// own rather than a retransmission (RFC 8489 section 6.2.1 would reuse the ID), so an
    /// answer says which copy it answers and every answer is an exact RTT sample: Karn's
    /// ambiguity never arises, however slow the path.
    ids: Vec<(TransactionId, Instant)>,
    kind: Kind,
    socket: usize,
    dst: SocketAddr,
    change: Option<(bool, bool)>,
    response_port: Option<u16>,
    sent: u32,
    max_sends: u32,
    rto0: Duration,
    next: Instant,
    outcome: Outcome,
}

/// The UDP NAT classifier: runs the RFC 5780 tests against one STUN server and produces a
/// [`UdpReport`]. Sans-IO; see the module documentation for how to drive it.
pub struct Classifier {
    cfg: ClassifierConfig,
    locals: Vec<SocketAddr>,
    start: Instant,
    txns: Vec<Txn>,
    queue: VecDeque<Transmit>,
    events: VecDeque<Event>,
    srtt: Option<Duration>,
    lifetime_points: Vec<Duration>,
    /// When each lifetime probe's mapping was last refreshed by its own answer.
    lifetime_opened: Vec<Option<Instant>>,
    lifetime_state: Vec<Option<bool>>,
    /// Set when the server refused or ignored RESPONSE-PORT (error code, 0 for ignored).
    lifetime_unsupported: Option<u16>,
    report: Option<UdpReport>,
    rng: StdRng,
}

impl Classifier {
    /// `locals[i]` is the local address of the driver's socket `i`; there must be
    /// `cfg.sockets_needed()` of them, all bound to the same IP.
    pub fn new(cfg: ClassifierConfig, locals: Vec<SocketAddr>, now: Instant) -> Self {
        assert_eq!(
            locals.len(),
            cfg.sockets_needed(),
            "driver must bind sockets_needed() sockets"
        );
        let lifetime_points = cfg.lifetime_points();
        let n_life = lifetime_points.len();
        let mut c = Classifier {
            locals,
            start: now,
            txns: Vec::new(),
            queue: VecDeque::new(),
            events: VecDeque::new(),
            srtt: None,
            lifetime_opened: vec![None; n_life],
            lifetime_state: vec![None; n_life],
            lifetime_unsupported: None,
            lifetime_points,
            report: None,
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
        };
        let server = c.cfg.server;
        // The allocation burst waits for the first answer, which names the server's other
        // endpoint (see `on_answer`).
        c.add(now, Kind::Base, SOCK_A, server, None, None);
        c.add_filter_tests(now);
        c.flush(now);
        c
    }

    /// The RTT is known, or smaller than thought: what was scheduled follows it.
    fn reschedule(&mut self) {
        let srtt = self.srtt;
        let rtt_wait = srtt.map_or(Duration::ZERO, |r| r * 3);
        for t in &mut self.txns {
            if t.outcome != Outcome::Pending {
                continue;
            }
            if let Some(&(_, last)) = t.ids.last() {
                t.next = t.next.min(last + after_send(t, srtt, rtt_wait));
            }
        }
    }

    /// The first RTT is known, after the tests that started with the first request have
    /// sent all their copies blind (an initial timeout apart, so on a path slower than that
    /// they were all in flight at once, and the first answers of a fresh path may also wait
    /// for neighbour discovery): each such test still waiting gets one more copy now, paced
    /// like every later one, so its silence is judged by the path's real RTT.
    fn resend_blind(&mut self, now: Instant) {
        for t in &mut self.txns {
            if t.outcome == Outcome::Pending && t.kind != Kind::Base && t.sent >= t.max_sends {
                t.max_sends = t.sent + 1;
                t.next = now;
            }
        }
    }

    fn rto0(&self) -> Duration {
        match self.srtt {
            Some(rtt) => (rtt * 2).clamp(INITIAL_RTO, Duration::from_secs(1)),
            None => INITIAL_RTO,
        }
    }

    fn add(
        &mut self,
        now: Instant,
        kind: Kind,
        socket: usize,
        dst: SocketAddr,
        change: Option<(bool, bool)>,
        response_port: Option<u16>,
    ) {
        let max_sends = if kind == Kind::Base {
            BASE_ATTEMPTS
        } else {
            ATTEMPTS
        };
        self.txns.push(Txn {
            ids: Vec::new(),
            kind,
            socket,
            dst,
            change,
            response_port,
            sent: 0,
            max_sends,
            rto0: self.rto0(),
            next: now,
            outcome: Outcome::Pending,
        });
    }

    /// Sends what is due, expires what has waited long enough, and concludes when nothing
    /// is left pending.
    fn flush(&mut self, now: Instant) {
        self.progress_lifetime(now);
        let rtt_wait = self.srtt.map_or(Duration::ZERO, |r| r * 3);
        for t in &mut self.txns {
            if t.outcome != Outcome::Pending || t.next > now {
                continue;
            }
            if t.sent >= t.max_sends {
                if t.kind != Kind::Base && self.srtt.is_none() {
                    // No RTT yet to judge silence by (the first answer is still on its way,
                    // on a long path): keep listening; the RTT, or the server's silence,
                    // decides.
                    t.next = now + INITIAL_RTO;
                    continue;
                }
                t.outcome = Outcome::TimedOut;
                continue;
            }
            t.sent += 1;
            let id = TransactionId::random(&mut self.rng);
            t.ids.push((id, now));
            self.queue.push_back(Transmit {
                socket: t.socket,
                dst: t.dst,
                payload: binding_request(id, t.change, t.response_port),
            });
            t.next = now + after_send(t, self.srtt, rtt_wait);
        }
        self.progress_lifetime(now);
        self.drop_moot_late();
        self.settle_quick(now);
        self.finish_if_settled();
    }

    /// Whether `poll_transmit` has something; lets a driver loop until the queue is empty.
    pub fn poll_transmit_pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The result, once [`Classifier::is_done`].
    pub fn report(&self) -> Option<&UdpReport> {
        self.report.as_ref()
    }

    /// How long the classification took, once done.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
    }

    fn lifetime_socket(&self, i: usize) -> usize {
        SOCK_ALLOC0 + self.cfg.alloc_sockets + i
    }

    fn lifetime_checker(&self) -> usize {
        SOCK_ALLOC0 + self.cfg.alloc_sockets + self.lifetime_points.len()
    }

    fn on_answer(
        &mut self,
        now: Instant,
        kind: Kind,
        mapped: Option<SocketAddr>,
        other: Option<SocketAddr>,
    ) {
        match kind {
            Kind::Base => {
                let Some(mapped) = mapped else { return };
                if let Some(rtt) = self.srtt {
                    self.events.push_back(Event::ServerAnswered {
                        local: self.locals[SOCK_A],
                        mapped,
                        rtt,
                        other,
                    });
                }
                // The allocation burst goes first and back to back, so the NAT creates these
                // mappings consecutively and a sequential allocator shows its true step. It
                // alternates between the server's two endpoints: an allocator that counts per
                // destination from a hashed offset (RFC 6056 algorithms 3 and 4) is
                // sequential toward one destination and unpredictable toward a new one, which
                // is what a peer is; one destination alone would call it sequential.
                let dests: Vec<SocketAddr> =
                    std::iter::once(self.cfg.server).chain(other).collect();
                for i in 0..self.cfg.alloc_sockets {
                    let to = dests[i % dests.len()];
                    self.add(now, Kind::Alloc(i), SOCK_ALLOC0 + i, to, None, None);
                }
                if let Some(o) = other {
                    self.add(
                        now,
                        Kind::MapAltIp,
                        SOCK_A,
                        SocketAddr::new(o.ip(), self.cfg.server.port()),
                        None,
                        None,
                    );
                    self.add(now, Kind::MapAltBoth, SOCK_A, o, None, None);
                    // Not for connect's quick look: address- or port-dependent is the same
                    // punch, and a sequential counter should see no flow it need not.
                    if !self.cfg.quick {
                        let alt_port = SocketAddr::new(self.cfg.server.ip(), o.port());
                        self.add(now, Kind::MapAltPort, SOCK_A, alt_port, None, None);
                    }
                }
                if !self.cfg.quick {
                    self.add(now, Kind::Hairpin, SOCK_H, mapped, None, None);
                }
                for i in 0..self.lifetime_points.len() {
                    let s = self.lifetime_socket(i);
                    self.add(now, Kind::LifetimeOpen(i), s, self.cfg.server, None, None);
                }
                self.add_late_pair(now);
            }
            Kind::MapAltIp | Kind::MapAltBoth | Kind::MapAltPort => {
                self.recheck_if_inconsistent(now)
            }
            Kind::FilterIpPort | Kind::FilterPort => {
                if let Some((from, ..)) = self.answered(kind) {
                    self.confirm_filter_answer(now, kind, from);
                }
            }
            Kind::Recheck(step) => self.recheck_next(now, step, other),
            Kind::LifetimeOpen(i) => {
                // The clock starts at the answer: that is when the NAT last saw the binding used.
                self.lifetime_opened[i] = Some(now);
            }
            Kind::LifetimeCheck(i) => {
                self.lifetime_state[i] = Some(true);
                self.events.push_back(Event::LifetimeAlive {
                    after: self.lifetime_points[i],
                });
            }
            _ => {}
        }
    }

    fn outcome(&self, kind: Kind) -> Option<&Outcome> {
        self.txns
            .iter()
            .find(|t| t.kind == kind)
            .map(|t| &t.outcome)
    }

    fn finish_if_settled(&mut self) {
        if self.report.is_some() {
            return;
        }
        let pending = self.txns.iter().any(|t| t.outcome == Outcome::Pending)
            || (0..self.lifetime_points.len())
                .any(|i| self.lifetime_opened[i].is_some() && self.lifetime_state[i].is_none());
        let base_failed = matches!(
            self.outcome(Kind::Base),
            Some(Outcome::TimedOut | Outcome::Rejected(_))
        );
        if !pending || base_failed {
            self.report = Some(self.conclude());
        }
    }

    fn progress_lifetime(&mut self, now: Instant) {
        let n = self.lifetime_points.len();
        if let Some(code) = (0..n).find_map(|i| match self.outcome(Kind::LifetimeCheck(i)) {
            Some(Outcome::Rejected(code)) => Some(*code),
            _ => None,
        }) {
            self.lifetime_unsupported.get_or_insert(code);
            for st in &mut self.lifetime_state {
                st.get_or_insert(false);
            }
            return;
        }
        for i in 0..n {
            if let Some(Outcome::TimedOut) = self.outcome(Kind::LifetimeCheck(i)) {
                if self.lifetime_state[i].is_none() {
                    self.lifetime_state[i] = Some(false);
                    self.events.push_back(Event::LifetimeExpired {
                        after: self.lifetime_points[i],
                    });
                }
            }
            if matches!(
                self.outcome(Kind::LifetimeOpen(i)),
                Some(Outcome::TimedOut | Outcome::Rejected(_))
            ) {
                self.lifetime_state[i].get_or_insert(false);
            }
        }
        // A binding that expired after T has also expired after any longer wait: stop those.
        if let Some(first_dead) = (0..n).find(|&i| self.lifetime_state[i] == Some(false)) {
            for i in first_dead + 1..n {
                if self.lifetime_state[i].is_none() {
                    self.lifetime_state[i] = Some(false);
                    for t in self
                        .txns
                        .iter_mut()
                        .filter(|t| t.kind == Kind::LifetimeCheck(i))
                    {
                        t.outcome = Outcome::TimedOut;
                    }
                }
            }
        }
        for i in 0..n {
            let Some(opened) = self.lifetime_opened[i] else {
                continue;
            };
            if self.lifetime_state[i].is_some()
                || self.txns.iter().any(|t| t.kind == Kind::LifetimeCheck(i))
                || now < opened + self.lifetime_points[i]
            {
                continue;
            }
            let Some(Outcome::Answered {
                mapped: Some(m), ..
            }) = self.outcome(Kind::LifetimeOpen(i))
            else {
                continue;
            };
            // RFC 5780 section 4.6: ask from another socket for the answer to go to the
            // probe's mapped port, so the probe itself never refreshes its binding.
            let checker = self.lifetime_checker();
            self.add(
                now,
                Kind::LifetimeCheck(i),
                checker,
                self.cfg.server,
                None,
                Some(m.port()),
            );
        }
    }
}

/// A Binding request with the given transaction ID and attributes, FINGERPRINTed.
fn binding_request(
    id: TransactionId,
    change: Option<(bool, bool)>,
    response_port: Option<u16>,
) -> Vec<u8> {
    let mut payload = Vec::with_capacity(48);
    let mut e = Encoder::new(&mut payload, MessageType::BINDING_REQUEST, id);
    if let Some((change_ip, change_port)) = change {
        e.push(&Attribute::ChangeRequest {
            change_ip,
            change_port,
        });
    }
    if let Some(p) = response_port {
        e.push(&Attribute::ResponsePort(p));
    }
    e.fingerprint();
    payload
}

impl Machine for Classifier {
    type Event = Event;

    /// A datagram arrived on socket `socket` from `from`. Anything that is not an answer to
    /// one of our transactions is ignored: stray traffic cannot change the result.
    fn handle_input(&mut self, now: Instant, socket: usize, from: SocketAddr, data: &[u8]) {
        let Ok(msg) = Message::parse(data) else {
            return;
        };
        let id = msg.transaction_id();
        let Some((ti, sent_at)) = self.txns.iter().enumerate().find_map(|(i, t)| {
            t.ids
                .iter()
                .find(|(tid, _)| *tid == id)
                .map(|&(_, at)| (i, at))
        }) else {
            return;
        };
        let class = msg.message_type().class;
        let t = &self.txns[ti];
        if t.outcome != Outcome::Pending {
            return;
        }
        if t.kind == Kind::Hairpin {
            // Our own request looped back by the NAT to socket A (RFC 5780 section 4.5).
            if class == Class::Request && socket == SOCK_A {
                let t = &mut self.txns[ti];
                t.outcome = Outcome::Answered {
                    from,
                    mapped: None,
                    other: None,
                    socket,
                    at: now,
                    first_copy: t.ids.first().is_some_and(|&(first, _)| first == id),
                };
            }
            self.flush(now);
            return;
        }
        let expected_socket = match t.kind {
            Kind::LifetimeCheck(i) => self.lifetime_socket(i),
            _ => t.socket,
        };
        if socket != expected_socket {
            if matches!(t.kind, Kind::LifetimeCheck(_))
                && socket == t.socket
                && class == Class::Success
            {
                // The answer came back to the asking socket: the server ignores RESPONSE-PORT
                // (RFC 5780 section 7.5), so lifetimes cannot be measured through it.
                self.txns[ti].outcome = Outcome::Rejected(0);
                self.flush(now);
            }
            return;
        }
        match class {
            Class::Success => {
                let mapped = msg.mapped_address();
                let other = match msg.get(attr_type::OTHER_ADDRESS) {
                    Some(Ok(Attribute::OtherAddress(a))) => Some(a),
                    _ => match msg.get(attr_type::CHANGED_ADDRESS) {
                        Some(Ok(Attribute::ChangedAddress(a))) => Some(a),
                        _ => None,
                    },
                };
                // The smallest RTT seen so far paces what follows (the first answer of a
                // fresh path may include the NAT's neighbour discovery, later ones do not);
                // a hairpinned answer never left the NAT, so it says nothing of the server.
                let sample = now.saturating_duration_since(sent_at);
                if self.txns[ti].kind != Kind::Hairpin && self.srtt.is_none_or(|r| sample < r) {
                    if self.srtt.is_none() {
                        self.resend_blind(now);
                    }
                    self.srtt = Some(sample);
                    self.reschedule();
                }
                let t = &mut self.txns[ti];
                t.outcome = Outcome::Answered {
                    from,
                    mapped,
                    other,
                    socket,
                    at: now,
                    first_copy: t.ids.first().is_some_and(|&(first, _)| first == id),
                };
                let kind = t.kind;
                self.on_answer(now, kind, mapped, other);
            }
            Class::Error => {
                let code = match msg.get(attr_type::ERROR_CODE) {
                    Some(Ok(Attribute::ErrorCode(e))) => e.code,
                    _ => 0,
                };
                self.txns[ti].outcome = Outcome::Rejected(code);
            }
            _ => {}
        }
        self.flush(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.flush(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.queue.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.report.is_some() {
            return None;
        }
        let mut next = self
            .txns
            .iter()
            .filter(|t| t.outcome == Outcome::Pending)
            .map(|t| t.next)
            .min();
        for (i, opened) in self.lifetime_opened.iter().enumerate() {
            if let (Some(at), None) = (opened, self.lifetime_state[i]) {
                if !self.txns.iter().any(|t| t.kind == Kind::LifetimeCheck(i)) {
                    let due = *at + self.lifetime_points[i];
                    next = Some(next.map_or(due, |n| n.min(due)));
                }
            }
        }
        next
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn is_done(&self) -> bool {
        self.report.is_some()
    }
}

#[cfg(test)]
mod tests;

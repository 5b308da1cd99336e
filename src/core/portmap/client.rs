//! The PCP / NAT-PMP client machine: asks the gateway for a mapping of one internal port,
//! PCP first and NAT-PMP after (RFC 6887 section 9), keeps it (renewal at half its
//! lifetime, a new request after a router restart), and deletes it.
//!
//! It is a [`Machine`] on one socket (number 0), the one whose port is mapped or any other
//! of ours: both protocols map the port named in the request, not the sender's. Datagrams
//! from anywhere but the gateway's port 5351 are dropped (RFC 6886 section 3.1, RFC 6887
//! section 8.3).
//!
//! # Timing
//!
//! Requests are retransmitted from [`PortMapConfig::first_rto`] on, doubling (RFC 6886
//! section 3.1 starts at 250 ms; RFC 6887 section 8.1.1's 3 s start is for routers that
//! may be far away, ours is one hop). A protocol that has not answered within
//! [`PortMapConfig::give_up`] is taken as absent: the probe must stay short, and a LAN
//! gateway that answers at all answers within milliseconds. A renewal, once the mapping
//! exists, is retried until the mapping would expire.
//!
//! # Router restarts
//!
//! Every answer carries the router's epoch (seconds since it started or lost its state).
//! One that is smaller than our clock says it should be (RFC 6886 section 3.6, RFC 6887
//! section 8.5) means the router forgot the mapping: the machine says
//! [`Event::RouterRestarted`] and asks again. A PCP ANNOUNCE or a NAT-PMP address
//! announcement that shows it is answered after a random 0-5 s (RFC 6887 section 14.1.1),
//! so that a LAN of clients does not answer at once.

use super::natpmp::{self, ResultCode as PmpResult};
use super::pcp::{self, ResultCode as PcpResult};
use super::{Protocol, Via};
use crate::core::{Machine, Transmit};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// RFC 6886 section 3.1.
pub const FIRST_RTO: Duration = Duration::from_millis(250);
/// How long each protocol has to answer the first request; two protocols, ~2 s in all.
pub const GIVE_UP: Duration = Duration::from_secs(1);
/// RFC 6887 section 14.1.1: renew within a random 0-5 s after an ANNOUNCE.
pub const ANNOUNCE_JITTER: Duration = Duration::from_secs(5);
/// A renewal is not sent more often than this, whatever lifetime the router grants.
const MIN_RENEW: Duration = Duration::from_secs(1);
/// The longest wait between two retransmissions of a renewal.
const MAX_RTO: Duration = Duration::from_secs(8);

/// What to map and how to ask: the gateway, the port, the lifetime, which protocols to try, and
/// the timing of retransmissions.
#[derive(Debug, Clone)]
pub struct PortMapConfig {
    /// The gateway to ask, on its port 5351 (usually the default gateway).
    pub gateway: IpAddr,
    /// Our address on the link to the gateway: PCP's client address (RFC 6887 section 8.1).
    pub client: IpAddr,
    /// The transport of the port to map.
    pub protocol: Protocol,
    /// Our port to map: the one peers should reach.
    pub internal_port: u16,
    /// The external port we would like; 0 leaves it to the router.
    pub suggested_external: u16,
    /// The lifetime to ask for; the router may grant less. Renewed at half of what it grants.
    pub lifetime: Duration,
    /// Try PCP (RFC 6887) first.
    pub pcp: bool,
    /// Try NAT-PMP (RFC 6886) when PCP is off or gave no mapping.
    pub nat_pmp: bool,
    /// First retransmission timeout of a request, doubled after each send ([`FIRST_RTO`]).
    pub first_rto: Duration,
    /// How long each protocol has to answer the first request before it counts as absent
    /// ([`GIVE_UP`]); also how long the router gets to confirm a delete.
    pub give_up: Duration,
    /// Upper bound of the random wait before asking again after a router announcement
    /// ([`ANNOUNCE_JITTER`], RFC 6887 section 14.1.1).
    pub announce_jitter: Duration,
    /// Draws the PCP nonce and the wait after an announcement.
    pub seed: u64,
}

impl PortMapConfig {
    /// Maps `internal_port` of `client` through `gateway`: suggests the same external port, asks
    /// for 7200 s (RFC 6886 section 3.3's recommendation), tries PCP then NAT-PMP, with the
    /// default timing and seed 0.
    pub fn new(gateway: IpAddr, client: IpAddr, protocol: Protocol, internal_port: u16) -> Self {
        PortMapConfig {
            gateway,
            client,
            protocol,
            internal_port,
            suggested_external: internal_port,
            lifetime: Duration::from_secs(7200),
            pcp: true,
            nat_pmp: true,
            first_rto: FIRST_RTO,
            give_up: GIVE_UP,
            announce_jitter: ANNOUNCE_JITTER,
            seed: 0,
        }
    }
}

/// A granted mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The protocol that granted it.
    pub via: Via,
    /// The transport mapped.
    pub protocol: Protocol,
    /// Our port that the mapping forwards to.
    pub internal_port: u16,
    /// Where peers reach us. NAT-PMP's address comes from its external-address request.
    pub external: SocketAddr,
    /// The lifetime the router granted (which may be less than asked for).
    pub lifetime: Duration,
    /// When the grant was heard: the lifetime counts from here.
    pub granted_at: Instant,
}

impl Mapping {
    /// When the mapping lapses unless renewed: `granted_at + lifetime`.
    pub fn expires_at(&self) -> Instant {
        self.granted_at + self.lifetime
    }
}

/// Why a protocol gave no mapping; `None` where it was not tried (switched off, or an
/// earlier one granted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reasons {
    /// Why PCP gave no mapping.
    pub pcp: Option<String>,
    /// Why NAT-PMP gave no mapping.
    pub nat_pmp: Option<String>,
}

/// What the port mapper tells its driver, drained with [`Machine::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A mapping was granted: the first time, and again after each renewal or remapping
    /// (its external endpoint may have changed).
    Mapped(Mapping),
    /// No protocol gave a mapping; the machine is done.
    Unavailable(Reasons),
    /// The router's epoch shows it lost its mappings; a new request follows.
    RouterRestarted {
        /// The protocol whose answer showed the restart.
        via: Via,
    },
    /// The mapping could not be kept (a renewal refused, or unanswered until it expired);
    /// the machine is done.
    Lost {
        /// Why, in words for the user.
        reason: String,
    },
    /// After [`PortMapper::delete`]: `confirmed` if the router answered the delete.
    Deleted {
        /// Whether the router answered the delete; `false` also when nothing was requested that
        /// needed deleting.
        confirmed: bool,
    },
}

/// What is being asked of the router now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// PCP MAP: the first request, a renewal or a remap.
    PcpMap,
    NatPmpExternal,
    NatPmpMap,
    Delete(Via),
}

/// One request in flight, retransmitted until answered or `deadline`.
#[derive(Debug, Clone)]
struct Exchange {
    ask: Ask,
    payload: Vec<u8>,
    next_send: Instant,
    rto: Duration,
    deadline: Instant,
    /// Sent at least once: the router may have acted on it.
    sent: bool,
}

/// The last epoch the router announced and when we heard it.
#[derive(Debug, Clone, Copy)]
struct Epoch {
    server: u32,
    at: Instant,
}

/// The PCP / NAT-PMP client machine for one mapping; see the module documentation.
pub struct PortMapper {
    cfg: PortMapConfig,
    rng: StdRng,
    nonce: [u8; 12],
    exchange: Option<Exchange>,
    mapping: Option<Mapping>,
    /// NAT-PMP's external address, once asked.
    pmp_external: Option<std::net::Ipv4Addr>,
    epoch: Option<Epoch>,
    /// When to renew (or remap) the mapping we hold.
    renew_at: Option<Instant>,
    reasons: Reasons,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    done: bool,
}

impl PortMapper {
    /// The first request is due at `now` (PCP, or NAT-PMP when PCP is off).
    pub fn new(cfg: PortMapConfig, now: Instant) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut nonce = [0u8; 12];
        rng.fill(&mut nonce);
        let mut m = PortMapper {
            cfg,
            rng,
            nonce,
            exchange: None,
            mapping: None,
            pmp_external: None,
            epoch: None,
            renew_at: None,
            reasons: Reasons::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            done: false,
        };
        if m.cfg.pcp {
            m.start(now, Ask::PcpMap, now + m.cfg.give_up);
        } else if m.cfg.nat_pmp {
            m.start(now, Ask::NatPmpExternal, now + m.cfg.give_up);
        } else {
            m.finish(Event::Unavailable(Reasons::default()));
        }
        m
    }

    /// The mapping currently held, if any.
    pub fn mapping(&self) -> Option<&Mapping> {
        self.mapping.as_ref()
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &PortMapConfig {
        &self.cfg
    }

    /// Why each protocol tried so far gave no mapping.
    pub fn reasons(&self) -> &Reasons {
        &self.reasons
    }

    /// Deletes the mapping (lifetime 0, RFC 6886 section 3.4, RFC 6887 section 15), also
    /// one whose grant we have not heard yet but may have been made; ends with
    /// [`Event::Deleted`]. The router gets `cfg.give_up` to confirm.
    pub fn delete(&mut self, now: Instant) {
        if self.done {
            return;
        }
        let via = match (&self.mapping, &self.exchange) {
            (Some(m), _) => Some(m.via),
            (None, Some(x)) if x.sent => match x.ask {
                Ask::PcpMap => Some(Via::Pcp),
                Ask::NatPmpMap => Some(Via::NatPmp),
                Ask::NatPmpExternal | Ask::Delete(_) => None,
            },
            _ => None,
        };
        self.renew_at = None;
        match via {
            Some(v) => self.start(now, Ask::Delete(v), now + self.cfg.give_up),
            None => self.finish(Event::Deleted { confirmed: false }),
        }
    }

    /// The gateway answered our last request with an ICMP port unreachable (the driver's
    /// socket, connected to it, reports ECONNREFUSED): nothing listens on port 5351. PCP and
    /// NAT-PMP share that port (RFC 6887 section 19.1), so a first request refused settles
    /// both at once, instead of retransmitting into more ICMP errors until `give_up`. A
    /// renewal keeps its schedule (a router restarting its daemon is closed for a moment);
    /// a delete ends unconfirmed.
    pub fn handle_refused(&mut self) {
        if self.done {
            return;
        }
        let Some(ask) = self.exchange.as_ref().map(|x| x.ask) else {
            return;
        };
        match ask {
            Ask::Delete(_) => self.finish(Event::Deleted { confirmed: false }),
            _ if self.mapping.is_some() => {}
            _ => {
                let why = |name: &str| {
                    format!(
                        "refused: the router answered with ICMP port unreachable (no {name} server)"
                    )
                };
                if via_of(ask) == Via::Pcp {
                    self.reasons.pcp = Some(why("PCP"));
                }
                if self.cfg.nat_pmp {
                    self.reasons.nat_pmp = Some(why("NAT-PMP"));
                }
                let reasons = self.reasons.clone();
                self.finish(Event::Unavailable(reasons));
            }
        }
    }

    fn finish(&mut self, ev: Event) {
        self.done = true;
        self.exchange = None;
        self.renew_at = None;
        self.events.push_back(ev);
    }

    fn gateway(&self) -> SocketAddr {
        SocketAddr::new(self.cfg.gateway, natpmp::SERVER_PORT)
    }

    fn pcp_map_request(&self, lifetime_s: u32, suggested: u16) -> Vec<u8> {
        let external_ip = match &self.mapping {
            Some(m) if lifetime_s > 0 => m.external.ip(),
            _ => pcp::unspecified_like(self.cfg.client),
        };
        pcp::Request {
            lifetime_s,
            client: self.cfg.client,
            op: pcp::Opcode::Map(pcp::Map {
                nonce: self.nonce,
                protocol: self.cfg.protocol,
                internal_port: self.cfg.internal_port,
                external_port: suggested,
                external_ip,
            }),
        }
        .encode()
    }

    fn pmp_map_request(&self, lifetime_s: u32, suggested: u16) -> Vec<u8> {
        natpmp::Request::Map {
            protocol: self.cfg.protocol,
            internal_port: self.cfg.internal_port,
            suggested_external: suggested,
            lifetime_s,
        }
        .encode()
    }

    fn lifetime_s(&self) -> u32 {
        u32::try_from(self.cfg.lifetime.as_secs())
            .unwrap_or(u32::MAX)
            .max(1)
    }

    /// The port to ask for: the one we hold (a renewal keeps it), else the suggestion.
    fn suggested(&self) -> u16 {
        self.mapping
            .as_ref()
            .map_or(self.cfg.suggested_external, |m| m.external.port())
    }

    fn start(&mut self, now: Instant, ask: Ask, deadline: Instant) {
        let payload = match ask {
            Ask::PcpMap => self.pcp_map_request(self.lifetime_s(), self.suggested()),
            Ask::NatPmpExternal => natpmp::Request::ExternalAddress.encode(),
            Ask::NatPmpMap => self.pmp_map_request(self.lifetime_s(), self.suggested()),
            Ask::Delete(Via::Pcp) => self.pcp_map_request(0, 0),
            Ask::Delete(_) => self.pmp_map_request(0, 0),
        };
        self.exchange = Some(Exchange {
            ask,
            payload,
            next_send: now,
            rto: self.cfg.first_rto,
            deadline,
            sent: false,
        });
    }

    /// The protocol in `via` gave no mapping: try the next or give up.
    fn protocol_failed(&mut self, now: Instant, via: Via, reason: String) {
        match via {
            Via::Pcp => {
                self.reasons.pcp = Some(reason);
                if self.cfg.nat_pmp {
                    self.start(now, Ask::NatPmpExternal, now + self.cfg.give_up);
                    return;
                }
            }
            _ => self.reasons.nat_pmp = Some(reason),
        }
        let reasons = self.reasons.clone();
        self.finish(Event::Unavailable(reasons));
    }

    /// A failed renewal ends the mapping; a failed first request moves on.
    fn request_failed(&mut self, now: Instant, via: Via, reason: String) {
        if self.mapping.is_some() {
            self.mapping = None;
            self.finish(Event::Lost { reason });
        } else {
            self.protocol_failed(now, via, reason);
        }
    }

    fn granted(&mut self, now: Instant, via: Via, external: SocketAddr, lifetime_s: u32) {
        let lifetime = Duration::from_secs(u64::from(lifetime_s));
        let m = Mapping {
            via,
            protocol: self.cfg.protocol,
            internal_port: self.cfg.internal_port,
            external,
            lifetime,
            granted_at: now,
        };
        self.exchange = None;
        self.renew_at = Some(now + (lifetime / 2).max(MIN_RENEW));
        self.mapping = Some(m.clone());
        self.events.push_back(Event::Mapped(m));
    }

    /// Checks the router's epoch (RFC 6887 section 8.5 for PCP, RFC 6886 section 3.6 for
    /// NAT-PMP) and remembers it; true if the router lost its state since the last answer.
    fn restarted(&mut self, now: Instant, via: Via, server: u32) -> bool {
        let prev = self.epoch.replace(Epoch { server, at: now });
        let Some(prev) = prev else { return false };
        let client_delta = now.saturating_duration_since(prev.at).as_secs();
        let server = u64::from(server);
        let prev_server = u64::from(prev.server);
        match via {
            Via::Pcp => {
                if server + 1 < prev_server {
                    return true;
                }
                let server_delta = server.saturating_sub(prev_server);
                client_delta + 2 < server_delta - server_delta / 16
                    || server_delta + 2 < client_delta - client_delta / 16
            }
            _ => server + 2 < prev_server + client_delta * 7 / 8,
        }
    }

    /// After a restart seen in an announcement: ask again after a random wait. The mapping
    /// stays the one to keep: the new request suggests its port.
    fn remap_later(&mut self, now: Instant, via: Via) {
        self.events.push_back(Event::RouterRestarted { via });
        let jitter_ms = self.cfg.announce_jitter.as_millis() as u64;
        let wait = Duration::from_millis(self.rng.random_range(0..=jitter_ms));
        // A request in flight (a renewal, or the delete) settles it already.
        if self.exchange.is_none() {
            self.renew_at = Some(now + wait);
        }
    }

    fn on_pcp(&mut self, now: Instant, r: pcp::Response) {
        let asking = self.exchange.as_ref().map(|x| x.ask);
        // Section 9: a server of another version names the highest it speaks; NAT-PMP is
        // the only other we speak.
        if r.result == PcpResult::UnsuppVersion && r.version != pcp::VERSION {
            if asking == Some(Ask::PcpMap) && self.mapping.is_none() {
                let reason = format!(
                    "the router speaks PCP version {} only (UNSUPP_VERSION)",
                    r.version
                );
                self.protocol_failed(now, Via::Pcp, reason);
            }
            return;
        }
        if r.version != pcp::VERSION {
            return;
        }
        let restarted = self.restarted(now, Via::Pcp, r.epoch);
        match r.op {
            Some(pcp::Opcode::Announce) => {
                if restarted && self.mapping.as_ref().is_some_and(|m| m.via == Via::Pcp) {
                    self.remap_later(now, Via::Pcp);
                }
            }
            Some(pcp::Opcode::Map(m)) => {
                if m.nonce != self.nonce
                    || m.protocol != self.cfg.protocol
                    || m.internal_port != self.cfg.internal_port
                {
                    return;
                }
                match asking {
                    // A success with a lifetime left answers an earlier renewal, late: the
                    // delete's own answer carries lifetime 0 (RFC 6887 section 15).
                    Some(Ask::Delete(Via::Pcp))
                        if r.result == PcpResult::Success && r.lifetime_s > 0 => {}
                    Some(Ask::Delete(Via::Pcp)) => {
                        self.finish(Event::Deleted {
                            confirmed: r.result == PcpResult::Success,
                        });
                    }
                    Some(Ask::PcpMap) | None => {
                        let ours = self.mapping.as_ref().is_some_and(|m| m.via == Via::Pcp);
                        if asking.is_none() && !ours {
                            return;
                        }
                        if restarted && ours {
                            self.events
                                .push_back(Event::RouterRestarted { via: Via::Pcp });
                        }
                        if r.result == PcpResult::Success && r.lifetime_s > 0 {
                            let external = SocketAddr::new(m.external_ip, m.external_port);
                            self.granted(now, Via::Pcp, external, r.lifetime_s);
                        } else if asking.is_some() {
                            let why = format!("PCP MAP refused: {}", r.result.describe());
                            self.request_failed(now, Via::Pcp, why);
                        }
                    }
                    _ => {}
                }
            }
            None => {
                // An error that echoes only the header (a server that could not parse
                // the request): it refuses whatever we asked.
                if r.opcode == 1 && r.result != PcpResult::Success {
                    match asking {
                        Some(Ask::PcpMap) => {
                            let why = format!("PCP MAP refused: {}", r.result.describe());
                            self.request_failed(now, Via::Pcp, why);
                        }
                        Some(Ask::Delete(Via::Pcp)) => {
                            self.finish(Event::Deleted { confirmed: false })
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn on_natpmp(&mut self, now: Instant, r: natpmp::Response) {
        let asking = self.exchange.as_ref().map(|x| x.ask);
        // RFC 6887 section 9: a NAT-PMP gateway answers a PCP request in version 0.
        if asking == Some(Ask::PcpMap) && self.mapping.is_none() {
            let why = "the router speaks NAT-PMP, not PCP (it answered our PCP request in NAT-PMP)";
            self.protocol_failed(now, Via::Pcp, why.into());
            return;
        }
        let restarted = self.restarted(now, Via::NatPmp, r.epoch());
        let ours = self.mapping.as_ref().is_some_and(|m| m.via == Via::NatPmp);
        match r {
            natpmp::Response::ExternalAddress {
                result, external, ..
            } => {
                if asking == Some(Ask::NatPmpExternal) {
                    if result == PmpResult::Success {
                        self.pmp_external = Some(external);
                        let deadline = self.exchange.as_ref().map_or(now, |x| x.deadline);
                        // The gateway answers: the map request gets a full budget.
                        self.start(now, Ask::NatPmpMap, deadline.max(now + self.cfg.give_up));
                    } else {
                        let why = format!("NAT-PMP external address: {}", result.describe());
                        self.request_failed(now, Via::NatPmp, why);
                    }
                } else if ours && result == PmpResult::Success {
                    // Section 3.2.1: sent when the address changes or the router restarts.
                    if restarted {
                        self.remap_later(now, Via::NatPmp);
                    } else if self.pmp_external != Some(external) {
                        self.pmp_external = Some(external);
                        if let Some(mut m) = self.mapping.clone() {
                            m.external.set_ip(IpAddr::V4(external));
                            self.mapping = Some(m.clone());
                            self.events.push_back(Event::Mapped(m));
                        }
                    }
                }
            }
            natpmp::Response::Map {
                protocol,
                result,
                internal_port,
                external_port,
                lifetime_s,
                ..
            } => {
                if protocol != self.cfg.protocol || internal_port != self.cfg.internal_port {
                    return;
                }
                match asking {
                    // As for PCP: a late renewal answer, not the delete's (RFC 6886
                    // section 3.4 answers a delete with lifetime 0).
                    Some(Ask::Delete(Via::NatPmp))
                        if result == PmpResult::Success && lifetime_s > 0 => {}
                    Some(Ask::Delete(Via::NatPmp)) => self.finish(Event::Deleted {
                        confirmed: result == PmpResult::Success,
                    }),
                    Some(Ask::NatPmpMap) => {
                        if restarted && ours {
                            self.events
                                .push_back(Event::RouterRestarted { via: Via::NatPmp });
                        }
                        match self.pmp_external {
                            Some(ip) if result == PmpResult::Success && lifetime_s > 0 => {
                                let external = SocketAddr::new(IpAddr::V4(ip), external_port);
                                self.granted(now, Via::NatPmp, external, lifetime_s);
                            }
                            _ => {
                                let why = format!("NAT-PMP map refused: {}", result.describe());
                                self.request_failed(now, Via::NatPmp, why);
                            }
                        }
                    }
                    _ => {}
                }
            }
            natpmp::Response::Error { result, .. } => match asking {
                Some(Ask::NatPmpExternal | Ask::NatPmpMap) => {
                    let why = format!("NAT-PMP refused: {}", result.describe());
                    self.request_failed(now, Via::NatPmp, why);
                }
                Some(Ask::Delete(Via::NatPmp)) => self.finish(Event::Deleted { confirmed: false }),
                _ => {}
            },
        }
    }
}

fn via_of(ask: Ask) -> Via {
    match ask {
        Ask::PcpMap => Via::Pcp,
        Ask::NatPmpExternal | Ask::NatPmpMap => Via::NatPmp,
        Ask::Delete(v) => v,
    }
}

impl Machine for PortMapper {
    type Event = Event;

    fn handle_input(&mut self, now: Instant, _socket: usize, from: SocketAddr, data: &[u8]) {
        if self.done || from != self.gateway() {
            return;
        }
        if let Some(r) = pcp::Response::decode(data) {
            self.on_pcp(now, r);
        } else if let Some(r) = natpmp::Response::decode(data) {
            self.on_natpmp(now, r);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if self.exchange.is_none() && self.renew_at.is_some_and(|t| t <= now) {
            self.renew_at = None;
            if let Some(m) = &self.mapping {
                let (ask, deadline) = match m.via {
                    Via::Pcp => (Ask::PcpMap, m.expires_at()),
                    _ => (Ask::NatPmpMap, m.expires_at()),
                };
                // After a restart the old expiry may be near: the router gets at least
                // the first request's budget.
                self.start(now, ask, deadline.max(now + self.cfg.give_up));
            }
        }
        let gateway = self.gateway();
        let Some(x) = self.exchange.as_mut() else {
            return;
        };
        if now >= x.deadline {
            let ask = x.ask;
            let waited = self.cfg.give_up.as_millis();
            match ask {
                Ask::Delete(_) => self.finish(Event::Deleted { confirmed: false }),
                _ => {
                    let what = if self.mapping.is_some() {
                        format!("the router stopped answering {}", via_of(ask))
                    } else {
                        format!(
                            "no {} answer from {gateway} within {waited} ms",
                            via_of(ask)
                        )
                    };
                    self.exchange = None;
                    self.request_failed(now, via_of(ask), what);
                }
            }
            return;
        }
        if now >= x.next_send {
            self.transmits.push_back(Transmit {
                socket: 0,
                dst: gateway,
                payload: x.payload.clone(),
            });
            x.sent = true;
            x.next_send = now + x.rto;
            x.rto = (x.rto * 2).min(MAX_RTO);
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        match &self.exchange {
            Some(x) => Some(x.next_send.min(x.deadline)),
            None => self.renew_at,
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn is_done(&self) -> bool {
        self.done && self.events.is_empty()
    }
}

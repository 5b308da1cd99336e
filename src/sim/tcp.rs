//! TCP through a simulated NAT: a NAT that maps and filters TCP connections (RFC 5382, in
//! RFC 4787's terms), the real sans-IO STUN server answering Binding over TCP (with
//! punchraw's CONNECT-BACK), and [`probe`], which runs the TCP probe's plan
//! ([`crate::core::classify::tcp::plan`]) against them on a virtual clock, the way
//! `probe`'s driver runs it against the network.
//!
//! Connections are not simulated segment by segment: a connection through the NAT is its
//! mapping plus one exchange, and an unsolicited SYN is one inbound packet the NAT's filter
//! lets through or not.

use crate::core::classify::tcp::plan::{
    BindingAnswer, ConnectBackAnswer, ConnectBackError, Source, Step, TcpProbe, WatchError,
};
use crate::core::classify::tcp::TcpReport;
use crate::core::classify::{Allocation, Behavior};
use crate::core::punch::tcp::{predict, Prediction};
use crate::core::rendezvous::NatInfo;
use crate::core::server::{Outcome, ServerConfig, StunServer};
use crate::core::stun::{
    attr_type, Attribute, Class, Encoder, Message, MessageType, TransactionId, MAGIC_COOKIE,
};
use crate::core::wire::{Seen, Segment};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// A TCP NAT: what external port each new (local port, destination) flow gets, and which
/// unsolicited SYNs its filter lets in.
///
/// Mapping: endpoint-independent keeps the local port; otherwise a flow is keyed by the
/// destination's address (address-dependent) or address and port, and a new key gets the
/// next port of a counter shared by all flows (sequential, starting at 20000, by `delta`) or
/// a random one. Filtering compares an inbound SYN's source with the destinations the
/// external port sent to.
pub struct SimTcpNat {
    kind: NatInfo,
    next: u16,
    rng: StdRng,
    flows: HashMap<(u16, SocketAddr), u16>,
    /// Per external port: each local port mapped to it and every destination it sent to
    /// from there. A random NAT may give one port to several flows toward different
    /// destinations (Linux's conntrack does, as their reply tuples differ).
    externals: HashMap<u16, Vec<(u16, Vec<SocketAddr>)>>,
}

impl SimTcpNat {
    pub fn new(kind: NatInfo, seed: u64) -> Self {
        SimTcpNat {
            kind,
            next: 20000,
            rng: StdRng::seed_from_u64(seed),
            flows: HashMap::new(),
            externals: HashMap::new(),
        }
    }

    /// The external port of a connection from `local` to `to`.
    pub fn map(&mut self, local: u16, to: SocketAddr) -> u16 {
        let key = match self.kind.mapping {
            Behavior::AddressDependent => SocketAddr::new(to.ip(), 0),
            _ => to,
        };
        let p = match self.flows.get(&(local, key)) {
            Some(&p) => p,
            None => {
                let p = match self.kind.allocation {
                    _ if self.kind.mapping == Behavior::EndpointIndependent => local,
                    Allocation::Sequential => {
                        let p = self.next;
                        self.next = (i32::from(self.next) + self.kind.delta.unwrap_or(1)) as u16;
                        p
                    }
                    // A carrier-grade NAT's random ports stay in the subscriber's block.
                    _ => match self.kind.range {
                        Some([lo, hi]) if lo <= hi => self.rng.random_range(lo..=hi),
                        _ => self.rng.random_range(1024..=65535),
                    },
                };
                self.flows.insert((local, key), p);
                p
            }
        };
        let flows = self.externals.entry(p).or_default();
        let i = match flows.iter().position(|(l, _)| *l == local) {
            Some(i) => i,
            None => {
                flows.push((local, Vec::new()));
                flows.len() - 1
            }
        };
        if !flows[i].1.contains(&to) {
            flows[i].1.push(to);
        }
        p
    }

    /// The local port an unsolicited SYN from `src` to external port `port` reaches, if the
    /// filter lets it in.
    pub fn inbound(&self, src: SocketAddr, port: u16) -> Option<u16> {
        let flows = self.externals.get(&port)?;
        flows.iter().find_map(|(local, sent)| {
            let passes = match self.kind.filtering {
                Behavior::EndpointIndependent => true,
                Behavior::AddressDependent => sent.iter().any(|d| d.ip() == src.ip()),
                _ => sent.contains(&src),
            };
            passes.then_some(*local)
        })
    }

    /// Three observation connections from `local` to the server, as `connect --tcp` makes.
    pub fn observe(&mut self, local: u16) -> Prediction {
        let seen: Vec<u16> = (0..3)
            .map(|i| self.map(local, SocketAddr::from(([203, 0, 113, 1], 3478 + i))))
            .collect();
        predict(local, &seen)
    }
}

pub const SIM_TCP_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const SIM_TCP_NAT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub const SIM_TCP_SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const SIM_TCP_SERVER_ALT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// L, the shared local port of the mapping tests.
pub const SIM_TCP_SHARED_PORT: u16 = 40000;
/// The first port handed out as a fresh one.
pub const SIM_TCP_FRESH_PORT: u16 = 41000;

/// What the simulated network did, in order: what a test asserts about the sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The watcher was (re)opened, or tried to be, for these hosts.
    Watch(Vec<IpAddr>),
    Reserve(SocketAddr),
    Release,
    /// A connection from `local` to `to`, seen outside as coming from `mapped` (`None`:
    /// nothing listens there).
    Connect {
        local: SocketAddr,
        to: SocketAddr,
        mapped: Option<SocketAddr>,
    },
    /// The server sent an unsolicited SYN from `from` to `to`; `reached` says where it got
    /// in, if the NAT let it.
    Syn {
        from: SocketAddr,
        to: SocketAddr,
        reached: Option<SocketAddr>,
    },
}

/// One host, optionally behind a [`SimTcpNat`], and an RFC 5780 STUN server over TCP.
pub struct SimTcpNet {
    pub now: Instant,
    pub nat: Option<SimTcpNat>,
    pub server: StunServer,
    pub host_ip: IpAddr,
    pub public_ip: IpAddr,
    /// One-way latency between the host and the server; a connection plus Binding takes two
    /// round trips.
    pub latency: Duration,
    /// Whether the server honours CONNECT-BACK (coturn, like any server that does not know
    /// the attribute, ignores it).
    pub connect_back: bool,
    next_port: u16,
    rng: StdRng,
    /// SYNs on their way: (arrival, source, external destination).
    in_flight: Vec<(Instant, SocketAddr, SocketAddr)>,
    pub events: Vec<Event>,
}

impl SimTcpNet {
    pub fn new(nat: Option<NatInfo>, alternate: bool, seed: u64) -> Self {
        let host_ip = IpAddr::V4(if nat.is_some() {
            SIM_TCP_HOST
        } else {
            SIM_TCP_NAT
        });
        let now = Instant::now();
        SimTcpNet {
            now,
            nat: nat.map(|k| SimTcpNat::new(k, seed ^ 0x7c9)),
            server: StunServer::new(
                ServerConfig {
                    ip: IpAddr::V4(SIM_TCP_SERVER),
                    alt_ip: alternate.then_some(IpAddr::V4(SIM_TCP_SERVER_ALT)),
                    port: 3478,
                    alt_port: 3479,
                    software: None,
                    per_source_limit: None,
                    seed: 0,
                },
                now,
            ),
            host_ip,
            public_ip: IpAddr::V4(SIM_TCP_NAT),
            latency: Duration::from_millis(10),
            connect_back: true,
            next_port: SIM_TCP_FRESH_PORT,
            rng: StdRng::seed_from_u64(seed),
            in_flight: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn server_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(SIM_TCP_SERVER), 3478)
    }

    /// A local address with a port no earlier connection used.
    pub fn fresh(&mut self) -> SocketAddr {
        self.next_port += 1;
        SocketAddr::new(self.host_ip, self.next_port)
    }

    /// A connection from `local` to `to` carrying one Binding request with `extra`
    /// attributes; the response as received, or why there was none. The clock advances by
    /// the handshake and the exchange.
    pub fn exchange(
        &mut self,
        local: SocketAddr,
        to: SocketAddr,
        extra: &[Attribute<'_>],
    ) -> Result<Vec<u8>, String> {
        let rtt = self.latency * 2;
        let mapped = match &mut self.nat {
            Some(n) => SocketAddr::new(self.public_ip, n.map(local.port(), to)),
            None => local,
        };
        let cfg = self.server.config().clone();
        let ep = cfg.endpoints().into_iter().find(|(_, a)| *a == to);
        self.events.push(Event::Connect {
            local,
            to,
            mapped: ep.map(|_| mapped),
        });
        let Some((ep, _)) = ep else {
            // A RST comes back after one round trip.
            self.now += rtt;
            return Err(format!(
                "cannot connect to {to} over TCP from {local}: Connection refused"
            ));
        };
        let mut tid = [0u8; 16];
        tid[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        self.rng.fill(&mut tid[4..]);
        let mut req = Vec::new();
        {
            let mut e = Encoder::new(&mut req, MessageType::BINDING_REQUEST, TransactionId(tid));
            for a in extra {
                e.push(a);
            }
            e.fingerprint();
        }
        let mut out = Vec::new();
        // Handshake, then request; the server answers (and connects back) half a round trip
        // before the answer is here.
        self.now += rtt + self.latency;
        let (outcome, cb) = self
            .server
            .handle_tcp(ep, mapped, &req, &mut out, self.connect_back);
        if let Some(cb) = cb {
            let from = cfg.addr(cb.from);
            self.in_flight.push((self.now + self.latency, from, cb.to));
        }
        self.now += self.latency;
        match outcome {
            Outcome::Reply { .. } => Ok(out),
            Outcome::Drop(why) => Err(format!("no STUN answer over TCP from {to} ({why:?})")),
        }
    }

    /// The SYNs that reach the host by `until`, as the watcher sees them; the clock advances
    /// to `until`.
    pub fn run_until(&mut self, until: Instant) -> Vec<Seen> {
        self.now = self.now.max(until);
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) =
            self.in_flight.drain(..).partition(|&(at, _, _)| at <= now);
        self.in_flight = later;
        let mut seen = Vec::new();
        for (_, from, to) in due {
            let reached = match &self.nat {
                Some(n) if to.ip() == self.public_ip => n
                    .inbound(from, to.port())
                    .map(|p| SocketAddr::new(self.host_ip, p)),
                None if to.ip() == self.host_ip => Some(to),
                _ => None,
            };
            self.events.push(Event::Syn { from, to, reached });
            if let Some(dst) = reached {
                seen.push(Seen::Tcp {
                    src: from,
                    dst,
                    segment: Segment::Syn,
                    seq: 0,
                    ack: 0,
                    ttl: 64,
                    window: 64240,
                    options: Default::default(),
                });
            }
        }
        seen
    }

    /// The next SYN's arrival.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.iter().map(|&(at, _, _)| at).min()
    }
}

/// A Binding response's mapped and alternate addresses, or why it has none (the checks the
/// driver's TCP STUN client makes).
fn binding_answer(
    response: &[u8],
    to: SocketAddr,
) -> Result<(SocketAddr, Option<SocketAddr>), String> {
    let m = Message::parse(response).map_err(|_| format!("{to} answered garbage"))?;
    match m.message_type().class {
        Class::Success => {}
        _ => {
            let code = match m.get(attr_type::ERROR_CODE) {
                Some(Ok(Attribute::ErrorCode(e))) => e.code,
                _ => 0,
            };
            return Err(format!(
                "{to} answered the TCP Binding request with error {code}"
            ));
        }
    }
    let mapped = m
        .mapped_address()
        .ok_or_else(|| format!("{to}'s TCP Binding response has no mapped address"))?;
    let other = match m.get(attr_type::OTHER_ADDRESS) {
        Some(Ok(Attribute::OtherAddress(a))) => Some(a),
        _ => None,
    };
    Ok((mapped, other))
}

/// Runs the TCP probe's plan against `net` with a watcher that opens or fails as `watcher`
/// says; returns the report. What happened on the way is in `net.events`.
pub fn probe(net: &mut SimTcpNet, watcher: Result<(), WatchError>) -> TcpReport {
    let mut p = TcpProbe::new(net.server_addr(), None);
    let shared = SocketAddr::new(net.host_ip, SIM_TCP_SHARED_PORT);
    let limit = net.now + Duration::from_secs(3600);
    loop {
        assert!(
            net.now < limit,
            "the TCP probe must end within the virtual hour"
        );
        match p.next_step() {
            Step::Done => break,
            Step::Watch { hosts } => {
                net.events.push(Event::Watch(hosts));
                p.handle_watch(watcher.clone());
            }
            Step::Reserve => {
                net.events.push(Event::Reserve(shared));
                p.handle_reserved(shared);
            }
            Step::Release => net.events.push(Event::Release),
            // Nothing is captured here.
            Step::Drain => {}
            Step::Binding { from, to, .. } => {
                let local = match from {
                    Source::Shared => shared,
                    Source::Fresh => net.fresh(),
                };
                let started = net.now;
                let r = net
                    .exchange(local, to, &[])
                    .and_then(|resp| binding_answer(&resp, to))
                    .map(|(mapped, other)| BindingAnswer {
                        local,
                        mapped,
                        other,
                        rtt: net.now - started,
                    });
                p.handle_binding(r);
            }
            Step::ConnectBack {
                to,
                change_ip,
                change_port,
                ..
            } => {
                let local = net.fresh();
                let ask = Attribute::ConnectBack {
                    change_ip,
                    change_port,
                };
                match net.exchange(local, to, &[ask]) {
                    Ok(resp) => {
                        let refused = Message::parse(&resp)
                            .ok()
                            .filter(|m| m.message_type().class == Class::Error)
                            .map(|m| match m.get(attr_type::ERROR_CODE) {
                                Some(Ok(Attribute::ErrorCode(e))) => e.code,
                                _ => 0,
                            });
                        let r = match refused {
                            Some(code) => Err(ConnectBackError::Refused { code }),
                            None => Ok(ConnectBackAnswer {
                                local,
                                response: &resp,
                            }),
                        };
                        p.handle_connect_back(net.now, r);
                    }
                    Err(e) => p.handle_connect_back(net.now, Err(ConnectBackError::Failed(e))),
                }
            }
            Step::AwaitSyns { until } => {
                let wake = net.next_arrival().map_or(until, |t| t.min(until));
                for seen in net.run_until(wake) {
                    p.handle_seen(false, &seen);
                }
                p.handle_timeout(net.now);
            }
        }
    }
    p.report()
}

//! The TCP probe's sequence of steps, sans-IO: what `probe` does over TCP, in which order, and
//! what each answer changes about what comes next. The executor
//! ([`crate::driver::probe::tcp`], or the simulator in `crate::sim::tcp`) owns the
//! sockets, the AF_PACKET watcher and the clock; this module owns every decision.
//!
//! Call order:
//!
//! ```text
//! let mut p = TcpProbe::new(server, hint);
//! loop {
//!     match p.next_step() {
//!         Step::Watch { hosts }            => p.handle_watch(open a SYN watcher on `hosts`),
//!         Step::Reserve                    => p.handle_reserved(bind L, the shared local port),
//!         Step::Binding { from, to, .. }   => p.handle_binding(one STUN Binding over TCP),
//!         Step::Release                    => close L (no answer),
//!         Step::Drain                      => read what the watcher queued (no answer),
//!         Step::ConnectBack { to, .. }     => p.handle_connect_back(now, the request's answer),
//!         Step::AwaitSyns { until }        => { wait at most until `until`;
//!                                               p.handle_seen(..) for every watched packet;
//!                                               p.handle_timeout(now) }
//!         Step::Done                       => break,
//!     }
//! }
//! let report = p.report();
//! ```
//!
//! A step that needs an answer (all but `Release`, `Drain` and `Done`) is handed out again by
//! [`TcpProbe::next_step`] until its `handle_*` is called; `AwaitSyns` is repeated until
//! [`TcpProbe::handle_timeout`] ends the wait (every promised SYN seen, or `until` passed).
//!
//! The order, all back to back (a lab NAT answers each in well under a millisecond, and a
//! sequential NAT's shared counter must see the allocation connections one after another):
//!
//! 1. the watcher, so it already queues what comes (it needs CAP_NET_RAW);
//! 2. L, bound (not listening) for the whole mapping phase so that the OS gives its port to
//!    nobody else between the three mapping tests;
//! 3. RFC 5780 section 4.3 tests I-III over TCP from L: to the primary endpoint, to the
//!    alternate IP (test II, only with an alternate), to the alternate IP and port (test III,
//!    only when test II answered), and, when test III matched a test II that differed from
//!    test I, to the primary IP and alternate port (a second look at port dependence); when
//!    test I names an alternate the watcher does not cover yet, the watcher is reopened to
//!    include it;
//! 4. the allocation connections, each from a fresh port, toward the primary endpoint and
//!    (when test III answered) the alternate one in turn;
//! 5. the two CONNECT-BACK connections (change port, then change IP and port), each from a
//!    fresh port and held open by the executor while the SYN is awaited (a NAT may drop a
//!    closed connection's mapping, RFC 5382 section 5), for [`SYN_WAIT_RTTS`] round trips of
//!    test I plus [`SYN_WAIT_BASE`]. A request that met silence (no handshake or no
//!    answer, [`ConnectBackError::Silent`]) is made once more from another fresh port.
//!    Without an alternate address, or without a watcher, they are not made and filtering
//!    is unknown, with the reason.

use super::{classify, SynTest, TcpAnswer, TcpObservations, TcpReport};
use crate::core::classify::DEFAULT_ALLOC_SOCKETS;
use crate::core::stun::{attr_type, Attribute, Message};
use crate::core::wire::{Seen, Segment};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Longest wait for one TCP Binding: room for one SYN retransmission (1 s, RFC 6298).
pub const BINDING_TIMEOUT: Duration = Duration::from_millis(2500);
/// The unsolicited SYN must arrive within this plus [`SYN_WAIT_RTTS`] measured round trips
/// of test I; it leaves the server right after the CONNECT-BACK answer.
pub const SYN_WAIT_BASE: Duration = Duration::from_millis(300);
/// Round trips of test I (connect plus Binding) that the unsolicited SYN is awaited, on top of
/// [`SYN_WAIT_BASE`].
pub const SYN_WAIT_RTTS: u32 = 4;

/// Why filtering is unknown without an alternate address. No privilege would help then, so
/// this reason wins over a missing watcher.
pub const NO_ALTERNATE: &str = "the server has no RFC 5780 alternate address, so there is no other endpoint it could connect back from";

/// Which local address a Binding goes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// L, from [`Step::Reserve`], shared with SO_REUSEADDR/SO_REUSEPORT.
    Shared,
    /// A port the OS picks for this connection alone.
    Fresh,
}

/// What a Binding is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    /// RFC 5780 section 4.3 test I: L to the primary endpoint.
    Primary,
    /// Test II: L to the alternate IP and the primary port.
    AltIp,
    /// Test III: L to the alternate IP and port.
    AltBoth,
    /// L to the primary IP and the alternate port, when test III matched a test II that
    /// differed from test I: a random allocator's chance repeat is not an address-dependent
    /// mapping (see [`super::TcpObservations::alt_port`]).
    AltPort,
    /// The `n`th allocation connection (from 0).
    Allocation(usize),
}

/// Which filtering test a CONNECT-BACK is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// RFC 5780 section 4.4 test III: the SYN from the alternate port only.
    Port,
    /// Test II: the SYN from the alternate IP and port.
    Both,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Open a watcher for SYNs from `hosts`, replacing any earlier one (whose queue a
    /// [`Step::Drain`] has just read). Answer: [`TcpProbe::handle_watch`].
    Watch {
        /// The server IPs whose SYNs to watch for: the primary one and, once known, the alternate.
        hosts: Vec<IpAddr>,
    },
    /// Bind L: a fresh local port, shareable, not listening, held until [`Step::Release`].
    /// Answer: [`TcpProbe::handle_reserved`]; a failure ends the probe with an error.
    Reserve,
    /// One STUN Binding over a new TCP connection from `from` to `to`, closed afterwards.
    /// Answer: [`TcpProbe::handle_binding`].
    Binding {
        /// Which test this Binding is.
        test: Test,
        /// Whether it goes from L or from a fresh port.
        from: Source,
        /// The server endpoint to connect to.
        to: SocketAddr,
        /// Longest wait for the connection and the answer ([`BINDING_TIMEOUT`]).
        timeout: Duration,
    },
    /// Close L.
    Release,
    /// Read what the watcher (if any) has queued, into the capture.
    Drain,
    /// A Binding with CONNECT-BACK (`change_ip`, `change_port`) over a new connection from a
    /// fresh port to `to`, kept open until [`Step::Done`]. Answer:
    /// [`TcpProbe::handle_connect_back`].
    ConnectBack {
        /// Which filtering test this is (RFC 5780 section 4.4 test III or II).
        filter: Filter,
        /// The server endpoint the request goes to (its primary one).
        to: SocketAddr,
        /// Ask for the SYN from the server's alternate IP.
        change_ip: bool,
        /// Ask for the SYN from the server's alternate port.
        change_port: bool,
        /// Longest wait for the request's answer ([`BINDING_TIMEOUT`]).
        timeout: Duration,
    },
    /// Hand every packet the watcher sees to [`TcpProbe::handle_seen`] and the time to
    /// [`TcpProbe::handle_timeout`], waiting no later than `until` between them.
    AwaitSyns {
        /// When to stop waiting for promised SYNs that have not arrived: [`SYN_WAIT_BASE`] plus
        /// [`SYN_WAIT_RTTS`] round trips after the last CONNECT-BACK answer.
        until: Instant,
    },
    /// Finished: [`TcpProbe::report`].
    Done,
}

/// Why the watcher could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchError {
    /// No CAP_NET_RAW, so no AF_PACKET socket.
    NoCapability,
    /// The socket could not be opened, and the OS's words for it.
    Open(String),
}

impl WatchError {
    fn reason(&self) -> String {
        match self {
            WatchError::NoCapability => "watching for the server's SYN needs CAP_NET_RAW (an AF_PACKET socket); run as root or grant it with `setcap cap_net_raw+ep` on the binary".into(),
            WatchError::Open(e) => {
                format!("cannot open the AF_PACKET socket that watches for the server's SYN: {e}")
            }
        }
    }
}

/// A Binding's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingAnswer {
    /// Our end of the connection.
    pub local: SocketAddr,
    /// XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS).
    pub mapped: SocketAddr,
    /// OTHER-ADDRESS.
    pub other: Option<SocketAddr>,
    /// Connect plus request and response.
    pub rtt: Duration,
}

/// A CONNECT-BACK request's answer: our end of the (still open) connection and the response
/// as received, whose CONNECT-BACK-ORIGIN says where the SYN will come from.
#[derive(Debug, Clone, Copy)]
pub struct ConnectBackAnswer<'a> {
    /// Our end of the still-open connection: the port the SYN must reach.
    pub local: SocketAddr,
    /// The STUN response as received; its CONNECT-BACK-ORIGIN names the SYN's source.
    pub response: &'a [u8],
}

/// Why a CONNECT-BACK request got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectBackError {
    /// The server answered with a STUN error response.
    Refused {
        /// The STUN ERROR-CODE number the server answered with (RFC 8489 section 14.8).
        code: u16,
    },
    /// Nothing came back in time (no SYN-ACK, or no answer to the request), in words: the
    /// SYN, the request or the answer was lost, or a NAT dropped this one flow. Unlike a
    /// refusal this says nothing about the server, so the request is made once more from
    /// another fresh port.
    Silent(String),
    /// Anything else (refused or reset connection, garbage), in words.
    Failed(String),
}

/// One CONNECT-BACK connection whose SYN is awaited.
#[derive(Debug, Clone, Copy)]
struct Back {
    local: SocketAddr,
    /// Where the server promised the SYN will come from.
    origin: SocketAddr,
    arrived: bool,
}

/// The TCP probe; see the module documentation for the call order.
#[derive(Debug)]
pub struct TcpProbe {
    /// The hosts the watcher covers.
    hosts: Vec<IpAddr>,
    obs: TcpObservations,
    /// The last watcher's state: open, or why not.
    watcher: Result<(), String>,
    /// Test I's OTHER-ADDRESS and round trip.
    other: Option<SocketAddr>,
    rtt: Duration,
    queue: VecDeque<Step>,
    /// The step handed out that still needs its answer.
    current: Option<Step>,
    /// The CONNECT-BACK tests, [`Filter::Port`] then [`Filter::Both`]; `None` until asked.
    backs: [Option<Result<Back, String>>; 2],
    /// Whether each CONNECT-BACK test was already made again after a silent first try.
    retried: [bool; 2],
}

impl TcpProbe {
    /// A probe of `server`; `hint` is the alternate endpoint the UDP tests learned, so that the
    /// watcher covers it from the start.
    pub fn new(server: SocketAddr, hint: Option<SocketAddr>) -> Self {
        let mut hosts = vec![server.ip()];
        hosts.extend(hint.map(|h| h.ip()).filter(|ip| *ip != server.ip()));
        let queue = VecDeque::from([
            Step::Watch {
                hosts: hosts.clone(),
            },
            Step::Reserve,
            binding(Test::Primary, Source::Shared, server),
        ]);
        TcpProbe {
            hosts,
            obs: TcpObservations {
                server,
                // Until [`Step::Reserve`] is answered, which comes before any test.
                local: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                primary: Err("the probe did not run".into()),
                rtt: None,
                alt_ip: None,
                alt_both: None,
                alt_port: None,
                allocation: Vec::new(),
                filter_port: SynTest::Unknown(String::new()),
                filter_both: SynTest::Unknown(String::new()),
            },
            watcher: Err(String::new()),
            other: None,
            rtt: Duration::ZERO,
            queue,
            current: None,
            backs: [None, None],
            retried: [false, false],
        }
    }

    /// What to do now; see [`Step`].
    pub fn next_step(&mut self) -> Step {
        if let Some(s) = &self.current {
            return s.clone();
        }
        let Some(s) = self.queue.pop_front() else {
            return Step::Done;
        };
        if !matches!(s, Step::Release | Step::Drain | Step::Done) {
            self.current = Some(s.clone());
        }
        s
    }

    /// The answer to [`Step::Watch`].
    pub fn handle_watch(&mut self, r: Result<(), WatchError>) {
        if matches!(self.current, Some(Step::Watch { .. })) {
            self.current = None;
            self.watcher = r.map_err(|e| e.reason());
        }
    }

    /// The answer to [`Step::Reserve`]: L's address.
    pub fn handle_reserved(&mut self, local: SocketAddr) {
        if matches!(self.current, Some(Step::Reserve)) {
            self.current = None;
            self.obs.local = local;
        }
    }

    /// The answer to [`Step::Binding`], or why there was none.
    pub fn handle_binding(&mut self, r: Result<BindingAnswer, String>) {
        let Some(Step::Binding { test, .. }) = self.current else {
            return;
        };
        self.current = None;
        let server = self.obs.server;
        match test {
            Test::Primary => {
                let a = match r {
                    Ok(a) => a,
                    Err(why) => {
                        self.obs.primary = Err(why);
                        self.queue.push_back(Step::Drain);
                        return;
                    }
                };
                self.obs.primary = Ok(TcpAnswer {
                    mapped: a.mapped,
                    other: a.other,
                });
                self.obs.rtt = Some(a.rtt);
                self.rtt = a.rtt;
                self.other = a.other;
                match a.other {
                    Some(other) => {
                        if !self.hosts.contains(&other.ip()) {
                            // The UDP answer named no (or another) alternate: watch the one
                            // TCP named.
                            self.hosts.push(other.ip());
                            self.queue.push_back(Step::Drain);
                            self.queue.push_back(Step::Watch {
                                hosts: self.hosts.clone(),
                            });
                        }
                        let alt_ip = SocketAddr::new(other.ip(), server.port());
                        self.queue
                            .push_back(binding(Test::AltIp, Source::Shared, alt_ip));
                    }
                    None => self.allocation(),
                }
            }
            Test::AltIp => {
                let went = r.is_ok();
                self.obs.alt_ip = Some(r.map(|a| a.mapped));
                match self.other {
                    // Test III only when test II showed the alternate IP answers at all.
                    Some(other) if went => {
                        self.queue
                            .push_back(binding(Test::AltBoth, Source::Shared, other));
                    }
                    _ => self.allocation(),
                }
            }
            Test::AltBoth => {
                let m3 = r.as_ref().ok().map(|a| a.mapped);
                self.obs.alt_both = Some(r.map(|a| a.mapped));
                let m2 = self.obs.alt_ip.as_ref().and_then(|r| r.as_ref().ok());
                let m1 = self.obs.primary.as_ref().ok().map(|a| a.mapped);
                match self.other {
                    Some(other) if m3.is_some() && m2 == m3.as_ref() && m1 != m3 => {
                        let to = SocketAddr::new(server.ip(), other.port());
                        self.queue
                            .push_back(binding(Test::AltPort, Source::Shared, to));
                    }
                    _ => self.allocation(),
                }
            }
            Test::AltPort => {
                self.obs.alt_port = Some(r.map(|a| a.mapped));
                self.allocation();
            }
            Test::Allocation(n) => {
                self.obs
                    .allocation
                    .push(r.ok().map(|a| (a.local.port(), a.mapped.port())));
                self.next_allocation(n + 1);
            }
        }
    }

    /// After the mapping tests: L is no longer needed, and the allocation connections follow.
    fn allocation(&mut self) {
        self.queue.push_back(Step::Release);
        self.queue.push_back(Step::Drain);
        self.next_allocation(0);
    }

    fn next_allocation(&mut self, n: usize) {
        if n < DEFAULT_ALLOC_SOCKETS {
            // Toward the server's two endpoints in turn, when the other one answered TCP
            // (test III): an allocator that counts per destination from a hashed offset (RFC
            // 6056 algorithms 3 and 4, Linux's ephemeral ports as libslirp uses them) is
            // sequential toward one destination but unpredictable toward a new peer.
            let to = match (self.other, &self.obs.alt_both) {
                (Some(other), Some(Ok(_))) if n % 2 == 1 => other,
                _ => self.obs.server,
            };
            self.queue
                .push_back(binding(Test::Allocation(n), Source::Fresh, to));
        } else {
            self.queue.push_back(Step::Drain);
            self.filtering();
        }
    }

    /// The CONNECT-BACK tests, when they can tell anything.
    fn filtering(&mut self) {
        let why = match (self.other, &self.watcher) {
            (None, _) => NO_ALTERNATE.to_string(),
            (Some(_), Err(why)) => why.clone(),
            (Some(_), Ok(())) => {
                let to = self.obs.server;
                for (filter, change_ip) in [(Filter::Port, false), (Filter::Both, true)] {
                    self.queue.push_back(Step::ConnectBack {
                        filter,
                        to,
                        change_ip,
                        change_port: true,
                        timeout: BINDING_TIMEOUT,
                    });
                }
                return;
            }
        };
        self.obs.filter_port = SynTest::Unknown(why.clone());
        self.obs.filter_both = SynTest::Unknown(why);
    }

    /// The answer to [`Step::ConnectBack`], at `now`.
    pub fn handle_connect_back(
        &mut self,
        now: Instant,
        r: Result<ConnectBackAnswer<'_>, ConnectBackError>,
    ) {
        let Some(step @ Step::ConnectBack { filter, .. }) = self.current.clone() else {
            return;
        };
        self.current = None;
        let server = self.obs.server;
        let back = match r {
            // Kernels retransmit a SYN from the same port, so a flow the NAT cannot map (a
            // hashed port already taken toward this server) stays dropped; a fresh port is a
            // fresh 5-tuple, and a second loss in a row is the rarer event.
            Err(ConnectBackError::Silent(_)) if !self.retried[filter as usize] => {
                self.retried[filter as usize] = true;
                self.queue.push_front(step);
                return;
            }
            Err(ConnectBackError::Silent(e)) => Err(format!(
                "the CONNECT-BACK request failed twice, from two local ports: {e}"
            )),
            Err(ConnectBackError::Refused { code }) => Err(format!(
                "{server} refused the CONNECT-BACK request with error {code}"
            )),
            Err(ConnectBackError::Failed(e)) => {
                Err(format!("the CONNECT-BACK request failed: {e}"))
            }
            Ok(a) => match origin(a.response) {
                Some(origin) => Ok(Back {
                    local: a.local,
                    origin,
                    arrived: false,
                }),
                None => Err(format!("{server} does not offer CONNECT-BACK (punchraw's TCP filtering test: not a punchraw server, an older one, or one without --alternate), so TCP filtering cannot be measured")),
            },
        };
        self.backs[filter as usize] = Some(back);
        if filter == Filter::Both {
            if self.open() {
                let until = now + SYN_WAIT_BASE + self.rtt * SYN_WAIT_RTTS;
                self.queue.push_back(Step::AwaitSyns { until });
            } else {
                // Nothing to wait for; what the watcher queued still goes to the capture.
                self.queue.push_back(Step::Drain);
                self.settle();
            }
        }
    }

    /// A packet the watcher saw while [`Step::AwaitSyns`] is current (sent by this host when
    /// `outgoing`). Returns the (origin, local address) of each CONNECT-BACK test it answers.
    pub fn handle_seen(&mut self, outgoing: bool, seen: &Seen) -> Vec<(SocketAddr, SocketAddr)> {
        let mut hits = Vec::new();
        if !matches!(self.current, Some(Step::AwaitSyns { .. })) || outgoing {
            return hits;
        }
        let Seen::Tcp {
            src,
            dst,
            segment: Segment::Syn,
            ..
        } = *seen
        else {
            return hits;
        };
        for b in self.backs.iter_mut().flatten().flatten() {
            // After the NAT the SYN is addressed to our own port (and, without a NAT, to our
            // own address too).
            if !b.arrived && src == b.origin && dst.port() == b.local.port() {
                b.arrived = true;
                hits.push((b.origin, b.local));
            }
        }
        hits
    }

    /// The time, while [`Step::AwaitSyns`] is current: ends the wait when every promised SYN
    /// arrived or its time is up.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(Step::AwaitSyns { until }) = self.current {
            if !self.open() || now >= until {
                self.current = None;
                self.settle();
            }
        }
    }

    /// Whether some CONNECT-BACK test still awaits its SYN.
    fn open(&self) -> bool {
        self.backs.iter().flatten().flatten().any(|b| !b.arrived)
    }

    fn settle(&mut self) {
        let test = |b: &Option<Result<Back, String>>| match b {
            Some(Ok(b)) => SynTest::Watched {
                origin: b.origin,
                arrived: b.arrived,
            },
            Some(Err(why)) => SynTest::Unknown(why.clone()),
            None => SynTest::Unknown("the CONNECT-BACK request was not made".into()),
        };
        self.obs.filter_port = test(&self.backs[Filter::Port as usize]);
        self.obs.filter_both = test(&self.backs[Filter::Both as usize]);
    }

    /// What was seen so far.
    pub fn observations(&self) -> &TcpObservations {
        &self.obs
    }

    /// The classification of what was seen (complete after [`Step::Done`]).
    pub fn report(&self) -> TcpReport {
        classify(&self.obs)
    }
}

fn binding(test: Test, from: Source, to: SocketAddr) -> Step {
    Step::Binding {
        test,
        from,
        to,
        timeout: BINDING_TIMEOUT,
    }
}

/// CONNECT-BACK-ORIGIN of a response: where the server will send the SYN from.
fn origin(response: &[u8]) -> Option<SocketAddr> {
    match Message::parse(response)
        .ok()?
        .get(attr_type::CONNECT_BACK_ORIGIN)
    {
        Some(Ok(Attribute::ConnectBackOrigin(origin))) => Some(origin),
        _ => None,
    }
}

#[cfg(test)]
mod tests;

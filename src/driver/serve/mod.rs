//! Socket loops for `punchraw serve`: they feed the sans-IO [`StunServer`] and send what it
//! answers.
//!
//! Threads, not an event loop: UDP has, per endpoint, one socket and thread per core (the
//! sockets share the port with SO_REUSEPORT, so the kernel spreads clients over them by their
//! address and port), TCP one accept thread per endpoint and one thread per connection
//! (bounded). Every blocking call has a short timeout so that all threads notice [`Shutdown`]
//! within about [`POLL_INTERVAL`].
//! Each thread owns its own `StunServer` (only config and counters) and its own buffers,
//! receives and sends in batches (`recvmmsg`/`sendmmsg`, [`crate::os::mmsg`]) and allocates
//! nothing per datagram; the hot path takes no lock; counters are folded into shared atomics
//! in batches. Only rendezvous messages, which are rare, take the registry's lock.

mod bind;
mod metrics;
pub mod registry;
mod relay;
mod tcp;
mod tcp_rdv;
mod udp;

use bind::bind_all;
use tcp::accept_loop;
use udp::udp_loop;

use crate::core::rendezvous::{RendezvousConfig, RendezvousStats};
use crate::core::server::{EndpointId, ServerConfig, SourceLimiter, Stats, StunServer};
use crate::core::turn::server::{TurnServerConfig, TurnStats};
use crate::driver::serve::registry::RendezvousService;
use crate::driver::Status;
use crate::os::signals::Shutdown;
use crate::Error;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Upper bound on how long any server thread blocks before it looks at the shutdown flag.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Concurrent TCP connections over all endpoints; beyond this a connection is accepted and
/// closed at once, so a connection flood costs a bounded number of threads.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// A TCP connection that sends nothing for this long is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The same for a connection that holds a TURN allocation, whose client may be quiet until
/// its next refresh (at most the longest lifetime).
pub const TURN_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3660);
/// Largest TURN frame over TCP: a STUN message of the longest length, or ChannelData with 65535
/// bytes and its padding (RFC 8656 section 12.5).
pub const TURN_TCP_MAX_FRAME: usize = 20 + 65_535;
/// Largest STUN message accepted over TCP. A Binding request needs far less; refusing longer
/// frames bounds the per-connection buffer.
pub const TCP_MAX_FRAME: usize = 2048;
/// A peer that does not read its responses cannot hold a connection thread longer than this.
const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// CONNECT-BACK connections open at once over the whole server; a request beyond this is
/// answered without the promise (no CONNECT-BACK-ORIGIN), so the client knows.
pub const MAX_CONNECT_BACKS: usize = 32;
/// CONNECT-BACKs one TCP connection may ask for: the probe needs one per connection.
const CONNECT_BACKS_PER_CONNECTION: usize = 2;
/// A connect-back socket is closed after this long if the handshake has neither completed
/// nor failed: long enough for the kernel's one SYN retransmission (RFC 6298 section 2's
/// 1 s initial RTO), short enough to keep the number of open sockets small.
const CONNECT_BACK_LIFETIME: Duration = Duration::from_secs(2);
/// Receive slot per datagram. A STUN request (even with RFC 5780 PADDING up to the MTU) and
/// any rendezvous message fit; a longer datagram arrives flagged as truncated and is counted
/// as malformed, so it is never cut short into something that parses.
const UDP_BUF_LEN: usize = 2048;
/// The same on the primary endpoint with `--relay`, whose clients send application datagrams
/// in ChannelData and Send indications: room for jumbo frames and then some (a batch is 1 MiB
/// per thread). Longer TURN datagrams are dropped and counted as malformed, as above.
const UDP_RELAY_BUF_LEN: usize = 16 * 1024;
/// Room reserved per response; an answer never needs more than the request's size plus the
/// fixed attributes, and a buffer that grows stays grown.
const UDP_OUT_LEN: usize = 2048;
/// Environment override for the number of UDP sockets and threads per endpoint (default: the
/// available parallelism).
pub const UDP_THREADS_ENV: &str = "PUNCHRAW_UDP_THREADS";
/// Upper bound on that number, whatever the machine or the environment says.
const MAX_UDP_THREADS: usize = 64;
/// Fold per-thread counters into the shared ones after this many datagrams.
const UDP_FLUSH_EVERY: u32 = 256;
/// With ephemeral ports, the port the OS picked for one socket can be taken on the other IP
/// or for TCP; binding starts over this many times before giving up.
const EPHEMERAL_ATTEMPTS: usize = 32;
const TCP_BACKLOG: i32 = 128;
const THREAD_STACK: usize = 256 * 1024;

/// Counters of a running or finished server.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServeStats {
    /// What the protocol logic saw over UDP (datagrams) and TCP (framed messages).
    pub udp: Stats,
    /// The same over TCP, counting framed messages.
    pub tcp: Stats,
    /// The same per endpoint, indexed by [`EndpointId`] (0 primary, 1 alternate port, 2
    /// alternate IP, 3 both).
    pub udp_by_endpoint: [Stats; 4],
    /// The TCP counters per endpoint, indexed the same way.
    pub tcp_by_endpoint: [Stats; 4],
    /// UDP answers the kernel refused to send (each is logged at debug level).
    pub udp_send_errors: u64,
    /// TCP connections taken into service (those in `tcp_rejected` not included).
    pub tcp_accepted: u64,
    /// Accepted and closed at once because [`MAX_TCP_CONNECTIONS`] were open.
    pub tcp_rejected: u64,
    /// Closed because the peer sent something that is not STUN or a frame too long.
    pub tcp_closed_junk: u64,
    /// Closed because the peer sent nothing for [`TCP_IDLE_TIMEOUT`] (for a connection
    /// holding a TURN allocation, [`TURN_TCP_IDLE_TIMEOUT`]).
    pub tcp_closed_idle: u64,
    /// TCP connections open at the time of the snapshot.
    pub tcp_active: u64,
    /// CONNECT-BACK connections started, and those refused because [`MAX_CONNECT_BACKS`]
    /// were open.
    pub tcp_connect_backs: u64,
    /// CONNECT-BACK requests refused because too many were already open.
    pub tcp_connect_backs_refused: u64,
    /// Server threads that panicked; non-zero means the server was degraded.
    pub thread_panics: u64,
    /// `--relay`: the TURN server's counters.
    pub relay: Option<RelayStats>,
}

/// The TURN relay's counters (`serve --relay`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RelayStats {
    /// The TURN server machine's own counters: requests, allocations, permissions, channels,
    /// bytes and datagrams relayed.
    pub turn: TurnStats,
    /// Allocations that exist now (0 after the server stopped: it frees them all).
    pub active: u64,
    /// TURN inputs dropped because the machine was unusable (a thread panicked holding it).
    pub forward_dropped: u64,
    /// Relayed datagrams or answers that could not be sent, to a peer or to a client.
    pub send_errors: u64,
}

impl fmt::Display for RelayStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.turn;
        write!(
            f,
            "relay: {} requests; allocations {} made, {} active, {} freed by the client, \
             {} expired, {} freed at exit; {} permissions, {} channels; relayed {} bytes \
             ({} datagrams) to peers and {} bytes ({} datagrams) to clients; dropped {} \
             without permission, {} over the byte bound, {} malformed",
            t.requests,
            t.allocations_made,
            self.active,
            t.allocations_freed,
            t.allocations_expired,
            t.allocations_closed,
            t.permissions_created,
            t.channels_bound,
            t.bytes_to_peers,
            t.datagrams_to_peers,
            t.bytes_to_clients,
            t.datagrams_to_clients,
            t.dropped_no_permission,
            t.dropped_over_bytes,
            t.malformed,
        )?;
        let refusals: Vec<String> = t
            .refusals
            .iter()
            .map(|(c, n)| format!("{c} x{n}"))
            .collect();
        if !refusals.is_empty() {
            write!(f, "; refusals: {}", refusals.join(", "))?;
        }
        if self.forward_dropped + self.send_errors > 0 {
            write!(
                f,
                "; {} inputs dropped, {} send errors",
                self.forward_dropped, self.send_errors
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for ServeStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (u, t) = (&self.udp, &self.tcp);
        write!(
            f,
            "udp: {} requests ({} ok, {} errors), {} malformed, {} non-requests, {} send errors; \
             tcp: {} connections ({} refused over the limit, {} closed for junk, {} idle), \
             {} requests ({} ok, {} errors), {} malformed, {} non-requests",
            u.requests,
            u.success,
            u.errors,
            u.malformed,
            u.not_request,
            self.udp_send_errors,
            self.tcp_accepted,
            self.tcp_rejected,
            self.tcp_closed_junk,
            self.tcp_closed_idle,
            t.requests,
            t.success,
            t.errors,
            t.malformed,
            t.not_request,
        )?;
        if u.rate_limited > 0 {
            write!(
                f,
                "; {} udp requests over --per-source-limit",
                u.rate_limited
            )?;
        }
        if self.tcp_connect_backs + self.tcp_connect_backs_refused > 0 {
            write!(
                f,
                "; {} tcp connect-backs ({} refused over the limit)",
                self.tcp_connect_backs, self.tcp_connect_backs_refused
            )?;
        }
        if self.thread_panics > 0 {
            write!(f, "; {} server threads panicked", self.thread_panics)?;
        }
        if let Some(r) = &self.relay {
            write!(f, "; {r}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    success: AtomicU64,
    errors: AtomicU64,
    malformed: AtomicU64,
    not_request: AtomicU64,
    rate_limited: AtomicU64,
}

impl Counters {
    /// Adds a thread's counters and zeroes them, so each event is added once.
    fn drain_from(&self, s: &mut Stats) {
        let d = std::mem::take(s);
        for (c, v) in [
            (&self.requests, d.requests),
            (&self.success, d.success),
            (&self.errors, d.errors),
            (&self.malformed, d.malformed),
            (&self.not_request, d.not_request),
            (&self.rate_limited, d.rate_limited),
        ] {
            if v != 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        }
    }

    fn load(&self) -> Stats {
        Stats {
            requests: self.requests.load(Ordering::Relaxed),
            success: self.success.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            not_request: self.not_request.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
        }
    }
}

/// Counters of one transport, one set per endpoint ([`EndpointId`]'s index).
#[derive(Default)]
struct ByEndpoint([Counters; 4]);

impl ByEndpoint {
    fn at(&self, id: EndpointId) -> &Counters {
        &self.0[usize::from(id.0 & 3)]
    }

    fn load(&self) -> [Stats; 4] {
        [0, 1, 2, 3].map(|i| self.0[i].load())
    }
}

/// The counters of every endpoint added up.
fn total(by: &[Stats; 4]) -> Stats {
    by.iter().fold(Stats::default(), |a, b| Stats {
        requests: a.requests + b.requests,
        success: a.success + b.success,
        errors: a.errors + b.errors,
        malformed: a.malformed + b.malformed,
        not_request: a.not_request + b.not_request,
        rate_limited: a.rate_limited + b.rate_limited,
    })
}

#[derive(Default)]
struct Shared {
    /// `--per-source-limit`, shared by all UDP threads.
    limiter: Option<Arc<SourceLimiter>>,
    udp: ByEndpoint,
    tcp: ByEndpoint,
    udp_send_errors: AtomicU64,
    tcp_accepted: AtomicU64,
    tcp_rejected: AtomicU64,
    tcp_closed_junk: AtomicU64,
    tcp_closed_idle: AtomicU64,
    tcp_active: AtomicUsize,
    connect_backs_active: AtomicUsize,
    tcp_connect_backs: AtomicU64,
    tcp_connect_backs_refused: AtomicU64,
    thread_panics: AtomicU64,
    /// `--relay`: the TURN machine (for its drops) and its published counters.
    relay: Option<(Arc<relay::Forwarder>, Arc<relay::RelayShared>)>,
    /// Peers that meet over TCP (UDP blocked), where their rendezvous messages go.
    rdv_tcp: tcp_rdv::RdvConns,
}

impl Shared {
    fn snapshot(&self) -> ServeStats {
        let (udp, tcp) = (self.udp.load(), self.tcp.load());
        ServeStats {
            udp: total(&udp),
            tcp: total(&tcp),
            udp_by_endpoint: udp,
            tcp_by_endpoint: tcp,
            udp_send_errors: self.udp_send_errors.load(Ordering::Relaxed),
            tcp_accepted: self.tcp_accepted.load(Ordering::Relaxed),
            tcp_rejected: self.tcp_rejected.load(Ordering::Relaxed),
            tcp_closed_junk: self.tcp_closed_junk.load(Ordering::Relaxed),
            tcp_closed_idle: self.tcp_closed_idle.load(Ordering::Relaxed),
            tcp_active: self.tcp_active.load(Ordering::Relaxed) as u64,
            tcp_connect_backs: self.tcp_connect_backs.load(Ordering::Relaxed),
            tcp_connect_backs_refused: self.tcp_connect_backs_refused.load(Ordering::Relaxed),
            thread_panics: self.thread_panics.load(Ordering::Relaxed),
            relay: self.relay.as_ref().map(|(fwd, r)| RelayStats {
                turn: r.stats.lock().ok().and_then(|s| *s).unwrap_or_default(),
                active: r.active.load(Ordering::Relaxed) as u64,
                forward_dropped: fwd.dropped.load(Ordering::Relaxed),
                send_errors: r.send_errors.load(Ordering::Relaxed),
            }),
        }
    }
}

/// The caller's shutdown flag plus one private to this server, so [`ServerHandle::stop`] and
/// a failed start can stop the threads without touching a flag the caller may share.
#[derive(Clone)]
struct Stop {
    external: Shutdown,
    own: Arc<AtomicBool>,
}

impl Stop {
    fn requested(&self) -> bool {
        self.own.load(Ordering::Relaxed) || self.external.requested()
    }
    fn trigger(&self) {
        self.own.store(true, Ordering::Relaxed)
    }
}

/// A started server. Dropping it leaves the threads running; stop them with the
/// [`Shutdown`] given to [`spawn`] or with [`ServerHandle::stop`], then [`ServerHandle::join`].
pub struct ServerHandle {
    config: ServerConfig,
    endpoints: Vec<(EndpointId, SocketAddr)>,
    relay: Option<TurnServerConfig>,
    stop: Stop,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// The rendezvous of this server (its counters, for the metrics).
    rdv: Option<Arc<RendezvousService>>,
}

impl ServerHandle {
    /// The configuration actually served: ports are the bound ones when 0 was asked for.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Every endpoint with its bound address; each is served over both UDP and TCP.
    pub fn endpoints(&self) -> &[(EndpointId, SocketAddr)] {
        &self.endpoints
    }

    /// The bound address of endpoint `e`; `None` when it is not served (without behaviour
    /// discovery, that is without an alternate IP, only the primary one is).
    pub fn addr(&self, e: EndpointId) -> Option<SocketAddr> {
        self.endpoints
            .iter()
            .find(|(id, _)| *id == e)
            .map(|(_, a)| *a)
    }

    /// A snapshot of the counters so far.
    pub fn stats(&self) -> ServeStats {
        self.shared.snapshot()
    }

    /// The rendezvous counters, and the sessions waiting and introduced now when the
    /// registry can tell.
    pub fn rendezvous_stats(&self) -> (RendezvousStats, Option<(usize, usize)>) {
        self.rdv.as_ref().map(|r| r.stats()).unwrap_or_default()
    }

    /// Asks the threads to stop without setting the caller's [`Shutdown`].
    pub fn stop(&self) {
        self.stop.trigger()
    }

    /// True once a server thread has ended without a stop being requested: a panic.
    pub fn degraded(&self) -> bool {
        !self.stop.requested() && self.threads.iter().any(|t| t.is_finished())
    }

    /// Waits for every thread (connection threads included) and returns the final counters.
    pub fn join(self) -> ServeStats {
        for t in self.threads {
            if t.join().is_err() {
                self.shared.thread_panics.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.shared.snapshot()
    }
}

/// `punchraw serve`: binds, serves until SIGINT or SIGTERM, prints the final counters, then
/// returns [`Error::Interrupted`] naming the signal (or exit 1 if a server thread crashed).
///
/// `cfgs` holds one configuration per address family, the first one also carrying the
/// rendezvous' primary role and `relay`. Each family is a server of its own, side by side in
/// this process: RFC 5780's OTHER-ADDRESS and CHANGE-REQUEST stay within the family a
/// request came in on (section 7.4), and the per-source limit counts IPv6 sources per /64
/// in the core either way. A later family gets a rendezvous of its own (with the in-memory
/// registry its sessions are its own; with Redis they are shared).
pub fn run(
    cfgs: Vec<ServerConfig>,
    rendezvous: RendezvousConfig,
    relay: Option<TurnServerConfig>,
    metrics: Option<SocketAddr>,
    status: &Status,
) -> Result<ExitCode, Error> {
    // Installed before binding so a signal that arrives during startup still ends in the
    // orderly path below.
    let shutdown =
        Shutdown::install().map_err(|e| Error::io("cannot install SIGINT/SIGTERM handlers", e))?;
    let mut handles: Vec<ServerHandle> = Vec::new();
    let mut relay = relay;
    for cfg in cfgs {
        match spawn_relay(
            cfg,
            rendezvous.clone(),
            relay.take(),
            shutdown.clone(),
            status,
        ) {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The families already started stop before the error is told.
                for h in handles {
                    h.stop();
                    h.join();
                }
                return Err(e);
            }
        }
    }
    for h in &handles {
        announce(h, status);
    }
    let metrics_stop = Stop {
        external: shutdown.clone(),
        own: Arc::new(AtomicBool::new(false)),
    };
    let views = handles.iter().map(metrics::View::of).collect();
    let metrics_thread = match metrics.map(|a| metrics::serve(a, metrics_stop.clone(), views)) {
        Some(Ok((bound, thread))) => {
            status.say(format!(
                "metrics (Prometheus/OpenMetrics text) at http://{bound}/metrics"
            ));
            Some(thread)
        }
        Some(Err(e)) => {
            for h in handles {
                h.stop();
                h.join();
            }
            return Err(Error::context("starting --metrics", e));
        }
        None => None,
    };
    while !shutdown.requested() {
        if handles.iter().any(ServerHandle::degraded) {
            warn!("a server thread stopped unexpectedly; shutting down");
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    for h in &handles {
        h.stop();
    }
    metrics_stop.trigger();
    if let Some(t) = metrics_thread {
        let _ = t.join();
    }
    let several = handles.len() > 1;
    let mut panics = 0;
    for h in handles {
        let primary = h.config().addr(EndpointId::PRIMARY);
        let stats = h.join();
        panics += stats.thread_panics;
        if several {
            status.say(format!("stopped {primary}; {stats}"));
        } else {
            status.say(format!("stopped; {stats}"));
        }
    }
    if panics > 0 {
        // A crashed thread is what the operator must hear about, signal or not.
        return Ok(ExitCode::FAILURE);
    }
    // Stopping on a signal is the normal end of a server, and it still ends like every
    // other command stopped by one (130/143), so a supervisor sees which signal it was.
    match shutdown.signal() {
        Some(signal) => Err(Error::Interrupted { signal }),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn announce(h: &ServerHandle, status: &Status) {
    let list = h
        .endpoints()
        .iter()
        .map(|(_, a)| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    status.say(format!("serving STUN over UDP and TCP on {list}"));
    if let Some(r) = &h.relay {
        status.say(format!(
            "relaying TURN (RFC 8656) over UDP on {}, relay ports {}-{} on {}, realm {:?}, {} user(s)",
            h.endpoints()[0].1,
            r.ports.0,
            r.ports.1,
            r.relay_ip,
            r.realm,
            r.users.len()
        ));
    }
    if h.config().discovery() {
        status.say("behaviour discovery (RFC 5780) is on: CHANGE-REQUEST is answered from the other address/port, CONNECT-BACK over TCP with a SYN from there");
    } else {
        status.say("behaviour discovery (RFC 5780) is off: give --alternate IP2 to enable it");
    }
    if h.config().ip.is_unspecified() || h.config().alt_ip.is_some_and(|a| a.is_unspecified()) {
        // RFC 5780 section 7.3: RESPONSE-ORIGIN must name the address the response left from,
        // which a wildcard bind does not know.
        warn!("listening on a wildcard address: RESPONSE-ORIGIN and OTHER-ADDRESS will carry it; give the host's own address");
    }
}

/// Binds every endpoint over UDP and TCP and starts the server threads. With `cfg.port == 0`
/// both ports are chosen by the OS and the returned handle (and every response's
/// RESPONSE-ORIGIN and OTHER-ADDRESS) carries the actual ones.
pub fn spawn(cfg: ServerConfig, shutdown: Shutdown) -> Result<ServerHandle, Error> {
    spawn_with(
        cfg,
        RendezvousConfig::default(),
        shutdown,
        &Status::stderr(),
    )
}

/// [`spawn`] with the rendezvous settings given; the rendezvous runs on the primary UDP
/// endpoint.
pub fn spawn_with(
    cfg: ServerConfig,
    rendezvous: RendezvousConfig,
    shutdown: Shutdown,
    status: &Status,
) -> Result<ServerHandle, Error> {
    spawn_relay(cfg, rendezvous, None, shutdown, status)
}

/// [`spawn_with`] plus, with `relay`, a TURN server on the primary UDP port (`serve
/// --relay`); its relayed addresses are on `relay.relay_ip`.
pub fn spawn_relay(
    cfg: ServerConfig,
    rendezvous: RendezvousConfig,
    relay: Option<TurnServerConfig>,
    shutdown: Shutdown,
    status: &Status,
) -> Result<ServerHandle, Error> {
    if let Some(r) = &relay {
        r.validate()
            .map_err(|e| bind::invalid(&format!("--relay: {e}")))?;
    }
    let bound = bind_all(&cfg)?;
    let config = bound.config;
    let endpoints = config.endpoints();
    let stop = Stop {
        external: shutdown,
        own: Arc::new(AtomicBool::new(false)),
    };
    // Only the primary endpoint introduces peers. Its sockets share one registry: the two
    // peers of a session come from different addresses, so the kernel may hand them to
    // different sockets. With Redis (`rendezvous.registry`) a worker thread of its own talks
    // to Redis and answers from a clone of the primary socket.
    let rdv = Arc::new(RendezvousService::start(
        &rendezvous,
        &bound.udp[0][0],
        status,
    )?);
    let relay_parts = match relay.clone() {
        Some(turn) => {
            let rs = Arc::new(relay::RelayShared::default());
            let (fwd, parts) =
                relay::channel(turn, &bound.udp[0][0], Arc::clone(&rdv), Arc::clone(&rs))
                    .map_err(|e| Error::io("cannot set up the TURN relay", e))?;
            Some((fwd, rs, parts))
        }
        None => None,
    };
    // One per-source budget for every UDP thread of every endpoint.
    let shared = Arc::new(Shared {
        limiter: StunServer::limiter_for(&config, Instant::now()),
        relay: relay_parts
            .as_ref()
            .map(|(fwd, rs, _)| (Arc::clone(fwd), Arc::clone(rs))),
        ..Shared::default()
    });
    let forwarder = relay_parts.as_ref().map(|(fwd, _, _)| Arc::clone(fwd));
    let udp = Arc::new(bound.udp);
    let mut handle = ServerHandle {
        config: config.clone(),
        endpoints: endpoints.clone(),
        relay: relay.clone(),
        stop: stop.clone(),
        shared: Arc::clone(&shared),
        threads: Vec::new(),
        rdv: None,
    };

    handle.rdv = Some(Arc::clone(&rdv));
    let started = (|| {
        for &(id, addr) in &endpoints {
            let group = udp.get(usize::from(id.0)).map_or(0, Vec::len);
            for k in 0..group {
                let (udp, cfg, stop, shared) = (
                    Arc::clone(&udp),
                    config.clone(),
                    stop.clone(),
                    Arc::clone(&shared),
                );
                let rdv = (id == EndpointId::PRIMARY).then(|| Arc::clone(&rdv));
                let fwd = forwarder
                    .as_ref()
                    .filter(|_| id == EndpointId::PRIMARY)
                    .map(Arc::clone);
                handle
                    .threads
                    .push(start(format!("udp {addr} #{k}"), move || {
                        let services = udp::Services {
                            rdv: rdv.as_deref(),
                            relay: fwd.as_deref(),
                        };
                        udp_loop(id, k, &udp, cfg, services, &stop, &shared)
                    })?);
            }
        }
        if let Some((fwd, _, parts)) = relay_parts {
            let stop = stop.clone();
            handle.threads.push(start("turn relay".into(), move || {
                relay::relay_loop(&fwd, parts, &stop)
            })?);
        }
        for (&(id, addr), listener) in endpoints.iter().zip(bound.tcp) {
            let (cfg, stop, shared) = (config.clone(), stop.clone(), Arc::clone(&shared));
            let rdv = (id == EndpointId::PRIMARY).then(|| (Arc::clone(&rdv), Arc::clone(&udp)));
            handle.threads.push(start(format!("tcp {addr}"), move || {
                accept_loop(id, listener, cfg, &stop, &shared, rdv)
            })?);
        }
        Ok::<_, io::Error>(())
    })();
    if let Err(e) = started {
        handle.stop();
        handle.join();
        return Err(Error::io("cannot start a server thread", e));
    }
    debug!(?endpoints, "STUN server started");
    Ok(handle)
}

fn start(name: String, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(name)
        .stack_size(THREAD_STACK)
        .spawn(f)
}

/// UDP sockets (and threads) per endpoint: one per core unless [`UDP_THREADS_ENV`] says.
pub fn udp_threads() -> usize {
    std::env::var(UDP_THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
        .min(MAX_UDP_THREADS)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

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

pub mod registry;

use crate::core::rendezvous::{Msg, RendezvousConfig};
use crate::core::server::{
    ConnectBack, DropReason, EndpointId, Outcome, ServerConfig, SourceLimiter, Stats, StunServer,
    Transport,
};
use crate::core::stun::{attr_type, Message};
use crate::driver::serve::registry::RendezvousService;
use crate::os::mmsg::{RecvBatch, SendBatch, MAX_BATCH};
use crate::os::signals::Shutdown;
use crate::Error;
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Upper bound on how long any server thread blocks before it looks at the shutdown flag.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Concurrent TCP connections over all endpoints; beyond this a connection is accepted and
/// closed at once, so a connection flood costs a bounded number of threads.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// A TCP connection that sends nothing for this long is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
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
    pub tcp: Stats,
    pub udp_send_errors: u64,
    pub tcp_accepted: u64,
    /// Accepted and closed at once because [`MAX_TCP_CONNECTIONS`] were open.
    pub tcp_rejected: u64,
    /// Closed because the peer sent something that is not STUN or a frame too long.
    pub tcp_closed_junk: u64,
    pub tcp_closed_idle: u64,
    pub tcp_active: u64,
    /// CONNECT-BACK connections started, and those refused because [`MAX_CONNECT_BACKS`]
    /// were open.
    pub tcp_connect_backs: u64,
    pub tcp_connect_backs_refused: u64,
    /// Server threads that panicked; non-zero means the server was degraded.
    pub thread_panics: u64,
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

#[derive(Default)]
struct Shared {
    /// `--per-source-limit`, shared by all UDP threads.
    limiter: Option<Arc<SourceLimiter>>,
    udp: Counters,
    tcp: Counters,
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
}

impl Shared {
    fn snapshot(&self) -> ServeStats {
        ServeStats {
            udp: self.udp.load(),
            tcp: self.tcp.load(),
            udp_send_errors: self.udp_send_errors.load(Ordering::Relaxed),
            tcp_accepted: self.tcp_accepted.load(Ordering::Relaxed),
            tcp_rejected: self.tcp_rejected.load(Ordering::Relaxed),
            tcp_closed_junk: self.tcp_closed_junk.load(Ordering::Relaxed),
            tcp_closed_idle: self.tcp_closed_idle.load(Ordering::Relaxed),
            tcp_active: self.tcp_active.load(Ordering::Relaxed) as u64,
            tcp_connect_backs: self.tcp_connect_backs.load(Ordering::Relaxed),
            tcp_connect_backs_refused: self.tcp_connect_backs_refused.load(Ordering::Relaxed),
            thread_panics: self.thread_panics.load(Ordering::Relaxed),
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
    stop: Stop,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
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

    pub fn addr(&self, e: EndpointId) -> Option<SocketAddr> {
        self.endpoints
            .iter()
            .find(|(id, _)| *id == e)
            .map(|(_, a)| *a)
    }

    pub fn stats(&self) -> ServeStats {
        self.shared.snapshot()
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
pub fn run(cfg: ServerConfig, rendezvous: RendezvousConfig) -> Result<ExitCode, Error> {
    // Installed before binding so a signal that arrives during startup still ends in the
    // orderly path below.
    let shutdown =
        Shutdown::install().map_err(|e| Error::io("cannot install SIGINT/SIGTERM handlers", e))?;
    let handle = spawn_with(cfg, rendezvous, shutdown.clone())?;
    announce(&handle);
    while !shutdown.requested() {
        if handle.degraded() {
            warn!("a server thread stopped unexpectedly; shutting down");
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    handle.stop();
    let stats = handle.join();
    say(&format!("stopped; {stats}"));
    if stats.thread_panics > 0 {
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

/// Logs at info; when info is filtered out (the CLI default), prints a plain line instead so
/// the operator still sees what is served.
fn say(line: &str) {
    if tracing::event_enabled!(tracing::Level::INFO) {
        info!("{line}");
    } else {
        eprintln!("punchraw: {line}");
    }
}

fn announce(h: &ServerHandle) {
    let list = h
        .endpoints()
        .iter()
        .map(|(_, a)| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    say(&format!("serving STUN over UDP and TCP on {list}"));
    if h.config().discovery() {
        say("behaviour discovery (RFC 5780) is on: CHANGE-REQUEST is answered from the other address/port, CONNECT-BACK over TCP with a SYN from there");
    } else {
        say("behaviour discovery (RFC 5780) is off: give --alternate IP2 to enable it");
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
    spawn_with(cfg, RendezvousConfig::default(), shutdown)
}

/// [`spawn`] with the rendezvous settings given; the rendezvous runs on the primary UDP
/// endpoint.
pub fn spawn_with(
    cfg: ServerConfig,
    rendezvous: RendezvousConfig,
    shutdown: Shutdown,
) -> Result<ServerHandle, Error> {
    let bound = bind_all(&cfg)?;
    let config = bound.config;
    let endpoints = config.endpoints();
    let stop = Stop {
        external: shutdown,
        own: Arc::new(AtomicBool::new(false)),
    };
    // One per-source budget for every UDP thread of every endpoint.
    let shared = Arc::new(Shared {
        limiter: StunServer::limiter_for(&config, Instant::now()),
        ..Shared::default()
    });
    let udp = Arc::new(bound.udp);
    let mut handle = ServerHandle {
        config: config.clone(),
        endpoints: endpoints.clone(),
        stop: stop.clone(),
        shared: Arc::clone(&shared),
        threads: Vec::new(),
    };

    // Only the primary endpoint introduces peers. Its sockets share one registry: the two
    // peers of a session come from different addresses, so the kernel may hand them to
    // different sockets. With Redis (`rendezvous.registry`) a worker thread of its own talks
    // to Redis and answers from a clone of the primary socket.
    let rdv = Arc::new(RendezvousService::start(&rendezvous, &udp[0][0])?);
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
                handle
                    .threads
                    .push(start(format!("udp {addr} #{k}"), move || {
                        udp_loop(id, k, &udp, cfg, rdv.as_deref(), &stop, &shared)
                    })?);
            }
        }
        for (&(id, addr), listener) in endpoints.iter().zip(bound.tcp) {
            let (cfg, stop, shared) = (config.clone(), stop.clone(), Arc::clone(&shared));
            handle.threads.push(start(format!("tcp {addr}"), move || {
                accept_loop(id, listener, cfg, &stop, &shared)
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

struct Bound {
    config: ServerConfig,
    /// In `EndpointId` order, so any socket of `udp[from.0]` can answer from that endpoint;
    /// each group holds [`udp_threads`] sockets sharing the endpoint's address.
    udp: Vec<Vec<UdpSocket>>,
    tcp: Vec<TcpListener>,
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

fn invalid(what: &str) -> Error {
    Error::io(
        "invalid server configuration",
        io::Error::new(io::ErrorKind::InvalidInput, what.to_string()),
    )
}

fn bind_all(cfg: &ServerConfig) -> Result<Bound, Error> {
    if let Some(alt) = cfg.alt_ip {
        if alt == cfg.ip {
            return Err(invalid("the alternate IP must differ from the primary IP"));
        }
        if alt.is_ipv4() != cfg.ip.is_ipv4() {
            return Err(invalid(
                "the primary and alternate IPs must be of the same family",
            ));
        }
        if cfg.port != 0 && cfg.alt_port == cfg.port {
            return Err(invalid(
                "the alternate port must differ from the primary port",
            ));
        }
    }
    let ephemeral = cfg.port == 0 || (cfg.discovery() && cfg.alt_port == 0);
    let mut attempt = 1;
    loop {
        match try_bind(cfg) {
            Ok(b) => return Ok(b),
            Err((addr, e))
                if ephemeral
                    && e.kind() == io::ErrorKind::AddrInUse
                    && attempt < EPHEMERAL_ATTEMPTS =>
            {
                debug!(%addr, attempt, "OS-chosen port taken elsewhere; binding again");
                attempt += 1;
            }
            Err((addr, source)) => return Err(Error::Bind { addr, source }),
        }
    }
}

/// One binding attempt. The first UDP socket on each port fixes that port (the OS picks it
/// when asked for 0); every other socket then uses the same number.
fn try_bind(cfg: &ServerConfig) -> Result<Bound, (SocketAddr, io::Error)> {
    let n = udp_threads();
    let mut config = cfg.clone();
    let primary = bind_udp_group(SocketAddr::new(cfg.ip, cfg.port), n)?;
    config.port = port_of(&primary[0])?;
    let mut udp = vec![primary];
    if cfg.discovery() {
        let want = if cfg.port == 0 { 0 } else { cfg.alt_port };
        let alt_port = bind_udp_group(SocketAddr::new(cfg.ip, want), n)?;
        config.alt_port = port_of(&alt_port[0])?;
        udp.push(alt_port);
    }
    let endpoints = config.endpoints();
    for &(_, addr) in &endpoints[udp.len()..] {
        udp.push(bind_udp_group(addr, n)?);
    }
    let tcp = endpoints
        .iter()
        .map(|&(_, addr)| bind_tcp(addr))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Bound { config, udp, tcp })
}

fn port_of(s: &UdpSocket) -> Result<u16, (SocketAddr, io::Error)> {
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    s.local_addr()
        .map(|a| a.port())
        .map_err(|e| (unspecified, e))
}

fn new_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        // Binding [::] must not also take the IPv4 port another process may serve.
        s.set_only_v6(true)?;
    }
    Ok(s)
}

/// Binds `n` UDP sockets to `addr` (the port the OS picks when it is 0), sharing it with
/// SO_REUSEPORT when `n > 1`.
///
/// SO_REUSEPORT alone would let this group join a port that another process of the same user
/// already serves with SO_REUSEPORT (and the kernel may even pick such a port for port 0), so
/// the port is first taken with a plain socket, which fails if anyone holds it, and released
/// just before the group binds. A process that binds the port with SO_REUSEPORT after we
/// started can still join; run one server per port.
fn bind_udp_group(addr: SocketAddr, n: usize) -> Result<Vec<UdpSocket>, (SocketAddr, io::Error)> {
    let first = bind_udp(addr, false)?;
    if n <= 1 {
        return Ok(vec![first]);
    }
    let addr = first.local_addr().map_err(|e| (addr, e))?;
    drop(first);
    (0..n).map(|_| bind_udp(addr, true)).collect()
}

fn bind_udp(addr: SocketAddr, reuse_port: bool) -> Result<UdpSocket, (SocketAddr, io::Error)> {
    let go = || -> io::Result<UdpSocket> {
        // No SO_REUSEADDR: on UDP it would let two servers share the port silently.
        let s = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
        if reuse_port {
            s.set_reuse_port(true)?;
        }
        // Best effort: a deeper queue absorbs bursts; the kernel caps it at rmem_max.
        let _ = s.set_recv_buffer_size(1 << 20);
        s.bind(&addr.into())?;
        s.set_read_timeout(Some(POLL_INTERVAL))?;
        Ok(s.into())
    };
    go().map_err(|e| (addr, e))
}

/// The listener of one endpoint. It shares its port with SO_REUSEPORT because CONNECT-BACK
/// sends its SYN from this very address and port, from a socket that must bind it too (Linux
/// lets a second socket bind a listening port only when both have SO_REUSEPORT).
///
/// SO_REUSEPORT would also let this listener join another same-user process's listener on
/// the port without an error, so the port is first bound by a plain socket, which fails if
/// anyone listens there, as with the UDP sockets ([`bind_udp_group`]).
fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, (SocketAddr, io::Error)> {
    let go = || -> io::Result<TcpListener> {
        // SO_REUSEADDR on both: a restart must not wait out TIME_WAIT of the previous run's
        // connections; a port held by a live listener still fails the check.
        let check = new_socket(addr, Type::STREAM, Protocol::TCP)?;
        check.set_reuse_address(true)?;
        check.bind(&addr.into())?;
        drop(check);
        let s = new_socket(addr, Type::STREAM, Protocol::TCP)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&addr.into())?;
        s.listen(TCP_BACKLOG)?;
        // poll() says when to accept; non-blocking keeps a connection reset in between from
        // parking the thread in accept().
        s.set_nonblocking(true)?;
        Ok(s.into())
    };
    go().map_err(|e| (addr, e))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Serves socket `k` of endpoint `id` until shutdown. `rdv` is the rendezvous registry, on
/// the primary endpoint only.
fn udp_loop(
    id: EndpointId,
    k: usize,
    sockets: &[Vec<UdpSocket>],
    cfg: ServerConfig,
    rdv: Option<&RendezvousService>,
    stop: &Stop,
    shared: &Shared,
) {
    let local = cfg.addr(id);
    let sock = &sockets[usize::from(id.0)][k];
    let mut last_expiry = Instant::now();
    let send_all = |msgs: Vec<(SocketAddr, Vec<u8>)>| {
        for (to, bytes) in msgs {
            if let Err(e) = sock.send_to(&bytes, to) {
                debug!(%to, error = %e, "rendezvous send failed");
            }
        }
    };
    let mut server = StunServer::with_limiter(cfg, shared.limiter.clone());
    let mut rx = RecvBatch::new(MAX_BATCH, UDP_BUF_LEN);
    let mut tx = SendBatch::new(UDP_OUT_LEN);
    let mut out = Vec::with_capacity(UDP_OUT_LEN);
    let mut unflushed = 0u32;
    // Checked on every batch, not only on timeouts: under a flood recv never times out.
    while !stop.requested() {
        // One socket of the group runs the expiry, so it runs once per period.
        if let Some(r) = rdv.filter(|_| k == 0) {
            if last_expiry.elapsed() >= Duration::from_millis(500) {
                last_expiry = Instant::now();
                let msgs = r.expire(last_expiry);
                send_all(msgs);
            }
        }
        let n = match rx.recv(sock) {
            Ok(n) => n,
            Err(e) if is_timeout(&e) => {
                shared.udp.drain_from(&mut server.stats);
                unflushed = 0;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // E.g. an ICMP error surfacing on the socket: transient, but do not spin.
                debug!(%local, error = %e, "udp receive failed");
                thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        // One clock read per batch: the datagrams of a batch arrived together.
        let now = Instant::now();
        for i in 0..n {
            let (data, src, truncated) = rx.get(i);
            let Some(src) = src else { continue };
            if truncated {
                server.stats.malformed += 1;
                log_drop(
                    Transport::Udp,
                    DropReason::Malformed,
                    src,
                    local,
                    data.len(),
                );
                continue;
            }
            if let Some(r) = rdv.filter(|_| Msg::is_rendezvous(data)) {
                let msgs = r.handle(now, src, data);
                send_all(msgs);
                continue;
            }
            // The common case answers from this very endpoint: straight into the send batch.
            let Some(buf) = tx.next_buf() else {
                unreachable!("the send batch is flushed after every receive batch");
            };
            match server.handle(now, Transport::Udp, id, src, data, buf) {
                Outcome::Reply { from, to } if from == id => tx.commit(to),
                Outcome::Reply { from, to } => {
                    // RFC 5780 section 6.1: CHANGE-REQUEST answers leave from the other IP
                    // and/or port, so the sending socket is one of the group `from` names.
                    std::mem::swap(buf, &mut out);
                    let Some(group) = sockets.get(usize::from(from.0)).filter(|g| !g.is_empty())
                    else {
                        debug!(%src, ?from, "no socket for the endpoint to answer from");
                        continue;
                    };
                    if let Err(e) = group[k % group.len()].send_to(&out, to) {
                        shared.udp_send_errors.fetch_add(1, Ordering::Relaxed);
                        debug!(%to, %src, %local, error = %e, "udp send failed");
                    }
                }
                Outcome::Drop(reason) => log_drop(Transport::Udp, reason, src, local, data.len()),
            }
        }
        if !tx.is_empty() {
            let (_, failed, err) = tx.flush(sock);
            if failed > 0 {
                shared
                    .udp_send_errors
                    .fetch_add(failed as u64, Ordering::Relaxed);
                if let Some(e) = err {
                    debug!(%local, failed, error = %e, "udp send failed");
                }
            }
        }
        unflushed += n as u32;
        if unflushed >= UDP_FLUSH_EVERY {
            shared.udp.drain_from(&mut server.stats);
            unflushed = 0;
        }
    }
    shared.udp.drain_from(&mut server.stats);
}

fn log_drop(
    transport: Transport,
    reason: DropReason,
    src: SocketAddr,
    local: SocketAddr,
    len: usize,
) {
    match reason {
        DropReason::Malformed => {
            debug!(?transport, %src, %local, len, "dropped: not a well-formed STUN message")
        }
        DropReason::NotRequest => debug!(?transport, %src, %local, len, "dropped: not a request"),
        DropReason::RateLimited => {
            debug!(?transport, %src, %local, len, "dropped: --per-source-limit reached")
        }
    }
}

/// Waits until `l` has a connection to accept or `timeout` passes.
fn wait_acceptable(l: &TcpListener, timeout: Duration) -> io::Result<bool> {
    crate::os::poll::wait_readable(l.as_fd(), timeout)
}

/// Decrements the open-connection count however the connection thread ends.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.tcp_active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn accept_loop(
    id: EndpointId,
    listener: TcpListener,
    cfg: ServerConfig,
    stop: &Stop,
    shared: &Arc<Shared>,
) {
    let local = cfg.addr(id);
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.requested() {
        match wait_acceptable(&listener, POLL_INTERVAL) {
            Ok(true) => {}
            Ok(false) => {
                reap(&mut conns, shared);
                continue;
            }
            Err(e) => {
                debug!(%local, error = %e, "poll on the listener failed");
                thread::sleep(POLL_INTERVAL);
                continue;
            }
        }
        loop {
            let (stream, peer) = match listener.accept() {
                Ok(c) => c,
                Err(e) if is_timeout(&e) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // Typically EMFILE: the pending connection stays queued, so back off
                    // instead of spinning on a listener that polls readable.
                    warn!(%local, error = %e, "tcp accept failed");
                    thread::sleep(Duration::from_millis(50));
                    break;
                }
            };
            if shared.tcp_active.fetch_add(1, Ordering::Relaxed) >= MAX_TCP_CONNECTIONS {
                shared.tcp_active.fetch_sub(1, Ordering::Relaxed);
                shared.tcp_rejected.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, remote_port = peer.port(), %local, "tcp connection refused: too many open");
                continue;
            }
            let slot = Slot(Arc::clone(shared));
            shared.tcp_accepted.fetch_add(1, Ordering::Relaxed);
            let (cfg, stop, shared2) = (cfg.clone(), stop.clone(), Arc::clone(shared));
            let spawned = start(format!("tcp {peer}"), move || {
                let _slot = slot;
                serve_connection(id, stream, peer, cfg, &stop, &shared2);
            });
            match spawned {
                Ok(h) => conns.push(h),
                Err(e) => warn!(%peer, error = %e, "cannot start a connection thread; closing it"),
            }
        }
        reap(&mut conns, shared);
    }
    for c in conns {
        if c.join().is_err() {
            shared.thread_panics.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Joins finished connection threads so their handles do not pile up.
fn reap(conns: &mut Vec<JoinHandle<()>>, shared: &Shared) {
    let mut i = 0;
    while i < conns.len() {
        if conns[i].is_finished() {
            if conns.swap_remove(i).join().is_err() {
                shared.thread_panics.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            i += 1;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    Eof,
    Idle,
    NotStun,
    TooLong(usize),
    Malformed,
    Io(io::ErrorKind),
    Shutdown,
}

fn serve_connection(
    id: EndpointId,
    mut stream: TcpStream,
    peer: SocketAddr,
    cfg: ServerConfig,
    stop: &Stop,
    shared: &Shared,
) {
    let local = cfg.addr(id);
    debug!(%peer, remote_port = peer.port(), %local, "tcp connection opened");
    // Accepted sockets inherit O_NONBLOCK from the listener on BSDs, not on Linux.
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(POLL_INTERVAL)))
        .and_then(|()| stream.set_write_timeout(Some(TCP_WRITE_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true));
    if let Err(e) = setup {
        debug!(%peer, error = %e, "cannot set up tcp connection");
        return;
    }
    let mut server = StunServer::new(cfg.clone(), Instant::now());
    let mut buf = [0u8; TCP_MAX_FRAME];
    let mut have = 0;
    let mut out = Vec::with_capacity(256);
    let mut last_input = Instant::now();
    let mut backs = ConnectBacks::new(shared);
    let mut pending: Vec<PendingBack<'_>> = Vec::new();
    let why = loop {
        let (used, closed) = serve_frames(
            &mut server,
            id,
            peer,
            &buf[..have],
            &mut out,
            &mut stream,
            &mut backs,
        );
        shared.tcp.drain_from(&mut server.stats);
        buf.copy_within(used..have, 0);
        have -= used;
        // After the answers are written: the client learns the origin before the SYN comes.
        for (cb, slot) in backs.asked.drain(..) {
            let from = cfg.addr(cb.from);
            match open_connect_back(from, cb.to) {
                Ok(sock) => {
                    shared.tcp_connect_backs.fetch_add(1, Ordering::Relaxed);
                    debug!(%from, to = %cb.to, "tcp connect-back: SYN sent");
                    pending.push(PendingBack {
                        sock,
                        from,
                        to: cb.to,
                        until: Instant::now() + CONNECT_BACK_LIFETIME,
                        _slot: slot,
                    });
                }
                Err(e) => debug!(%from, to = %cb.to, error = %e, "tcp connect-back failed"),
            }
        }
        reap_connect_backs(&mut pending);
        if let Some(c) = closed {
            break c;
        }
        if stop.requested() {
            break Close::Shutdown;
        }
        match stream.read(&mut buf[have..]) {
            Ok(0) => break Close::Eof,
            Ok(n) => {
                have += n;
                last_input = Instant::now();
            }
            Err(e) if is_timeout(&e) => {
                if last_input.elapsed() >= TCP_IDLE_TIMEOUT {
                    break Close::Idle;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Close::Io(e.kind()),
        }
    };
    match why {
        Close::NotStun | Close::TooLong(_) | Close::Malformed => {
            shared.tcp_closed_junk.fetch_add(1, Ordering::Relaxed);
        }
        Close::Idle => {
            shared.tcp_closed_idle.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    debug!(%peer, remote_port = peer.port(), %local, reason = ?why, "tcp connection closed");
    // A client may close as soon as it has its answer; its SYN keeps its one retransmission.
    while !pending.is_empty() && !stop.requested() {
        thread::sleep(Duration::from_millis(50));
        reap_connect_backs(&mut pending);
    }
}

/// The CONNECT-BACKs of one connection: how many it may still ask for, and those asked for
/// by the frames just answered, each holding one of the server's [`MAX_CONNECT_BACKS`] slots.
struct ConnectBacks<'a> {
    shared: &'a Shared,
    left: usize,
    asked: Vec<(ConnectBack, BackSlot<'a>)>,
}

/// One of the server-wide connect-back slots, given back on drop.
struct BackSlot<'a>(&'a AtomicUsize);

impl Drop for BackSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<'a> ConnectBacks<'a> {
    fn new(shared: &'a Shared) -> Self {
        ConnectBacks {
            shared,
            left: CONNECT_BACKS_PER_CONNECTION,
            asked: Vec::new(),
        }
    }

    /// A slot for a request that carries CONNECT-BACK, if this connection and the server
    /// have room for one more.
    fn reserve(&mut self, request: &[u8]) -> Option<BackSlot<'a>> {
        let wants = Message::parse(request)
            .ok()
            .is_some_and(|m| m.get(attr_type::CONNECT_BACK).is_some());
        if !wants || self.left == 0 {
            return None;
        }
        let active = &self.shared.connect_backs_active;
        if active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECT_BACKS {
            active.fetch_sub(1, Ordering::Relaxed);
            self.shared
                .tcp_connect_backs_refused
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(BackSlot(active))
    }
}

/// A connect-back whose handshake is under way.
struct PendingBack<'a> {
    sock: Socket,
    from: SocketAddr,
    to: SocketAddr,
    until: Instant,
    _slot: BackSlot<'a>,
}

/// Sends the SYN: a non-blocking connect from `from` (the endpoint's own address and port,
/// shared with its listener through SO_REUSEPORT) to `to`.
fn open_connect_back(from: SocketAddr, to: SocketAddr) -> io::Result<Socket> {
    let s = new_socket(from, Type::STREAM, Protocol::TCP)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&from.into())?;
    s.set_nonblocking(true)?;
    // Closing with linger 0 ends a completed handshake with a RST instead of leaving a
    // TIME_WAIT on the endpoint's port toward the client.
    let _ = s.set_linger(Some(Duration::ZERO));
    match s.connect(&to.into()) {
        Ok(()) => Ok(s),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
        Err(e) => Err(e),
    }
}

/// Closes the connect-backs whose handshake completed or failed (a RST or an ICMP error from
/// the client's NAT, say) or whose time is up.
fn reap_connect_backs(pending: &mut Vec<PendingBack<'_>>) {
    let now = Instant::now();
    pending.retain(|p| {
        let result = match p.sock.take_error() {
            Ok(Some(e)) => Some(format!("failed: {e}")),
            Err(e) => Some(format!("failed: {e}")),
            Ok(None) if p.sock.peer_addr().is_ok() => Some("connected".to_string()),
            Ok(None) if now >= p.until => Some("no answer".to_string()),
            Ok(None) => None,
        };
        match result {
            Some(r) => {
                debug!(from = %p.from, to = %p.to, result = %r, "tcp connect-back closed");
                false
            }
            None => true,
        }
    });
}

/// Answers every complete message at the start of `input` (RFC 8489 section 6.2.2: over TCP
/// the STUN header's length field is the framing). Returns how many bytes were consumed and
/// whether the connection must close.
fn serve_frames<'a>(
    server: &mut StunServer,
    id: EndpointId,
    peer: SocketAddr,
    input: &[u8],
    out: &mut Vec<u8>,
    stream: &mut impl Write,
    backs: &mut ConnectBacks<'a>,
) -> (usize, Option<Close>) {
    let mut used = 0;
    loop {
        let rest = &input[used..];
        if rest.is_empty() {
            return (used, None);
        }
        // RFC 8489 section 5: the two top bits of a STUN message are zero. Checked on the first
        // byte so junk is refused before 4 bytes arrive.
        if rest[0] & 0xc0 != 0 {
            return (used, Some(Close::NotStun));
        }
        let Some(len) = Message::frame_len(rest) else {
            return (used, None);
        };
        if len > TCP_MAX_FRAME {
            return (used, Some(Close::TooLong(len)));
        }
        if rest.len() < len {
            return (used, None);
        }
        let slot = backs.reserve(&rest[..len]);
        let (outcome, cb) = server.handle_tcp(id, peer, &rest[..len], out, slot.is_some());
        match outcome {
            // Over TCP the answer goes back on the same connection whatever `from`/`to` say;
            // the logic refuses CHANGE-REQUEST and RESPONSE-PORT on TCP (RFC 5780 section 6.1).
            Outcome::Reply { .. } => {
                if let Err(e) = stream.write_all(out) {
                    return (used + len, Some(Close::Io(e.kind())));
                }
                // The promise is in what was just written; an unused slot goes back on drop.
                if let (Some(cb), Some(slot)) = (cb, slot) {
                    backs.left -= 1;
                    backs.asked.push((cb, slot));
                }
            }
            Outcome::Drop(DropReason::Malformed) => return (used + len, Some(Close::Malformed)),
            // Indications (e.g. keepalives) get no answer but keep the connection; TCP is
            // never rate limited.
            Outcome::Drop(DropReason::NotRequest | DropReason::RateLimited) => {}
        }
        used += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stun::{Encoder, MessageType, TransactionId};
    use std::net::IpAddr;

    fn server() -> StunServer {
        StunServer::new(
            ServerConfig {
                ip: IpAddr::from([127, 0, 0, 1]),
                alt_ip: None,
                port: 3478,
                alt_port: 3479,
                software: None,
                per_source_limit: None,
            },
            Instant::now(),
        )
    }

    fn request() -> Vec<u8> {
        let mut v = Vec::new();
        Encoder::new(
            &mut v,
            MessageType::BINDING_REQUEST,
            TransactionId::random(&mut rand::rng()),
        );
        v
    }

    const PEER: SocketAddr =
        SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 9)), 40000);

    #[test]
    fn frames_split_anywhere_are_answered_once_each() {
        let two = [request(), request()].concat();
        for cut in 0..=two.len() {
            let mut s = server();
            let (mut out, mut wire) = (Vec::new(), Vec::new());
            let (used, close) = serve_frames(
                &mut s,
                EndpointId::PRIMARY,
                PEER,
                &two[..cut],
                &mut out,
                &mut wire,
                &mut ConnectBacks::new(&Shared::default()),
            );
            assert_eq!(close, None);
            let rest = &two[used..];
            let (used2, close2) = serve_frames(
                &mut s,
                EndpointId::PRIMARY,
                PEER,
                rest,
                &mut out,
                &mut wire,
                &mut ConnectBacks::new(&Shared::default()),
            );
            assert_eq!((used2, close2), (rest.len(), None));
            assert_eq!(s.stats.success, 2, "cut at {cut}");
            let first = Message::frame_len(&wire).unwrap();
            Message::parse(&wire[..first]).unwrap();
            Message::parse(&wire[first..]).unwrap();
        }
    }

    #[test]
    fn junk_and_long_frames_close() {
        let mut s = server();
        let (mut out, mut wire) = (Vec::new(), Vec::new());
        let r = serve_frames(
            &mut s,
            EndpointId::PRIMARY,
            PEER,
            b"GET / HTTP/1.1\r\n",
            &mut out,
            &mut wire,
            &mut ConnectBacks::new(&Shared::default()),
        );
        assert_eq!(r, (0, Some(Close::NotStun)));
        let r = serve_frames(
            &mut s,
            EndpointId::PRIMARY,
            PEER,
            b"\xff",
            &mut out,
            &mut wire,
            &mut ConnectBacks::new(&Shared::default()),
        );
        assert_eq!(r, (0, Some(Close::NotStun)));
        let mut long = request();
        long[2..4].copy_from_slice(&4000u16.to_be_bytes());
        let r = serve_frames(
            &mut s,
            EndpointId::PRIMARY,
            PEER,
            &long,
            &mut out,
            &mut wire,
            &mut ConnectBacks::new(&Shared::default()),
        );
        assert_eq!(r, (0, Some(Close::TooLong(4020))));
        // Framed correctly but not a valid message (length not a multiple of 4).
        let mut bad = request();
        bad[3] = 2;
        bad.extend_from_slice(&[0, 0]);
        let r = serve_frames(
            &mut s,
            EndpointId::PRIMARY,
            PEER,
            &bad,
            &mut out,
            &mut wire,
            &mut ConnectBacks::new(&Shared::default()),
        );
        assert_eq!(r, (22, Some(Close::Malformed)));
        assert!(wire.is_empty());
    }

    #[test]
    fn connect_backs_are_bounded_per_connection_and_per_server() {
        let mut s = StunServer::new(
            ServerConfig {
                alt_ip: Some(IpAddr::from([127, 0, 0, 2])),
                ..server().config().clone()
            },
            Instant::now(),
        );
        let ask = || {
            let mut v = Vec::new();
            let mut e = Encoder::new(
                &mut v,
                MessageType::BINDING_REQUEST,
                TransactionId::random(&mut rand::rng()),
            );
            e.push(&crate::core::stun::Attribute::ConnectBack {
                change_ip: true,
                change_port: true,
            });
            v
        };
        let promised = |wire: &[u8]| {
            let mut n = 0;
            let mut at = 0;
            while at < wire.len() {
                let len = Message::frame_len(&wire[at..]).unwrap();
                let m = Message::parse(&wire[at..at + len]).unwrap();
                n += usize::from(m.get(attr_type::CONNECT_BACK_ORIGIN).is_some());
                at += len;
            }
            n
        };
        let shared = Shared::default();
        let input = [ask(), ask(), ask()].concat();
        let (mut out, mut wire) = (Vec::new(), Vec::new());
        let mut backs = ConnectBacks::new(&shared);
        let r = serve_frames(
            &mut s,
            EndpointId::PRIMARY,
            PEER,
            &input,
            &mut out,
            &mut wire,
            &mut backs,
        );
        assert_eq!(r, (input.len(), None));
        assert_eq!(s.stats.success, 3);
        // Two per connection, each promised in its answer and holding a server-wide slot.
        assert_eq!(backs.asked.len(), CONNECT_BACKS_PER_CONNECTION);
        assert_eq!(promised(&wire), CONNECT_BACKS_PER_CONNECTION);
        assert_eq!(
            backs.asked[0].0,
            ConnectBack {
                from: EndpointId(3),
                to: PEER
            }
        );
        assert_eq!(shared.connect_backs_active.load(Ordering::Relaxed), 2);
        drop(backs);
        assert_eq!(shared.connect_backs_active.load(Ordering::Relaxed), 0);
        // A plain request takes no slot.
        let mut backs = ConnectBacks::new(&shared);
        assert!(backs.reserve(&request()).is_none());
        // With every server-wide slot taken the answer carries no promise.
        shared
            .connect_backs_active
            .store(MAX_CONNECT_BACKS, Ordering::Relaxed);
        wire.clear();
        let one = ask();
        let r = serve_frames(
            &mut s,
            EndpointId::PRIMARY,
            PEER,
            &one,
            &mut out,
            &mut wire,
            &mut backs,
        );
        assert_eq!(r, (one.len(), None));
        assert!(backs.asked.is_empty());
        assert_eq!(promised(&wire), 0);
        assert_eq!(shared.tcp_connect_backs_refused.load(Ordering::Relaxed), 1);
        assert_eq!(
            shared.connect_backs_active.load(Ordering::Relaxed),
            MAX_CONNECT_BACKS
        );
    }

    #[test]
    fn indications_keep_the_connection_without_answer() {
        let mut s = server();
        let (mut out, mut wire) = (Vec::new(), Vec::new());
        let mut ind = Vec::new();
        Encoder::new(
            &mut ind,
            MessageType {
                method: crate::core::stun::Method::Binding,
                class: crate::core::stun::Class::Indication,
            },
            TransactionId::random(&mut rand::rng()),
        );
        let input = [ind.clone(), request()].concat();
        let r = serve_frames(
            &mut s,
            EndpointId::PRIMARY,
            PEER,
            &input,
            &mut out,
            &mut wire,
            &mut ConnectBacks::new(&Shared::default()),
        );
        assert_eq!(r, (input.len(), None));
        assert_eq!(s.stats.not_request, 1);
        assert_eq!(s.stats.success, 1);
    }
}

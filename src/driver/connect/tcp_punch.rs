//! `punchraw connect --tcp`, the operating-system side: predicting our NAT's next TCP port
//! from connections to the server, then the punch itself (the attempts that
//! [`crate::core::punch::tcp::TcpPunch`] plans, as kernel sockets sharing one local port, beside a
//! listener on it), watched by an AF_PACKET socket, with this host's RSTs to the peer
//! suppressed by an nft rule while it runs; finally TLS over the first connection that
//! authenticates.
//!
//! Why kernel sockets and not crafted SYNs: the NATs' connection tracking learns the sequence
//! number of the SYN that opened a mapping, and with strict tracking (Linux's default,
//! nf_conntrack_tcp_be_liberal=0) later segments with another sequence number are dropped as
//! invalid. A kernel socket per candidate port sends the SYN whose sequence number the
//! kernel then uses for the whole connection, so whichever 4-tuple the peer's SYN arrives on
//! finds a socket in SYN-SENT that completes the simultaneous open (RFC 9293 section 3.5).
//! Low-TTL priming sets IP_TTL on the socket for its first SYN only: its retransmissions and
//! the handshake go out with the normal TTL.

use crate::core::classify::Behavior;
use crate::core::punch::tcp::{
    self as plan_tcp, Action, AttemptError, Plan, Prediction, TcpPunch, TcpPunchConfig,
};
use crate::core::rendezvous::NatInfo;
use crate::core::wire::{IcmpKind, Seen, Segment};
use crate::driver::kebab;
use crate::driver::tcp_stun;
use crate::os::capture::Capture;
use crate::os::nft::PunchRules;
use crate::os::packet::Watcher;
use crate::os::privileges::{self, CAP_NET_ADMIN, CAP_NET_RAW};
use crate::os::signals::Shutdown;
use crate::os::ttl;
use crate::transport::quic::{Role, StreamStats};
use crate::transport::tls::{self, TlsError, TlsSide};
use crate::Error;
use socket2::{SockRef, TcpKeepalive};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsStream;

/// Time for one TCP Binding exchange with the server while predicting.
const BINDING_TIMEOUT: Duration = Duration::from_secs(3);
/// Time for the TLS handshake (and the commitment) on one punched connection.
pub const TLS_TIMEOUT: Duration = Duration::from_secs(6);
/// TLS handshakes at most at once: a sweep may bring up several connections, but a flood of
/// them at the listener is someone else.
const MAX_HANDSHAKES: usize = 16;
/// How often a sweep reports its progress.
const PROGRESS: Duration = Duration::from_secs(1);
/// How often the punch loop looks at Ctrl-C and its planner when nothing else happens.
const TICK: Duration = Duration::from_millis(20);
/// Open descriptors a sweep may need: the probing side keeps every probe for
/// [`plan_tcp::PROBE_LINGER`] at up to the maximum rate.
const WANT_FILES: u64 = 65_536;

/// The capabilities `--tcp` needs, for the up-front check.
pub const NEEDED: [(u32, &str, &str); 2] = [
    (
        CAP_NET_ADMIN,
        "CAP_NET_ADMIN",
        "for the nft rule that keeps this host's RSTs from closing the NAT mapping during the punch",
    ),
    (
        CAP_NET_RAW,
        "CAP_NET_RAW",
        "for the AF_PACKET socket that watches SYN, SYN-ACK, RST and ICMP",
    ),
];

/// Fails with the exact missing capabilities, before any work starts, and checks that the
/// `nft` we will run gets CAP_NET_ADMIN from us (with file capabilities instead of root it
/// must be lent explicitly).
pub fn check_privileges() -> Result<(), Error> {
    let missing = privileges::missing(&NEEDED);
    if !missing.is_empty() {
        return Err(Error::Privileges {
            missing: missing.join(", "),
        });
    }
    privileges::lend_to_children(&[CAP_NET_ADMIN])
        .map_err(|e| Error::io("cannot pass CAP_NET_ADMIN on to `nft`", e))?;
    crate::os::nft::check_usable()
}

/// What the connections to the server showed about our NAT's TCP mapping.
#[derive(Debug, Clone)]
pub struct TcpPrep {
    /// Our address and the local port every punch connection uses.
    pub local: SocketAddr,
    pub prediction: Prediction,
    /// (server endpoint, where it saw us), in the order the connections were made.
    pub samples: Vec<(SocketAddr, SocketAddr)>,
}

impl TcpPrep {
    pub fn describe(&self) -> String {
        let ports: Vec<String> = self
            .samples
            .iter()
            .map(|(_, m)| m.port().to_string())
            .collect();
        let n = &self.prediction.nat;
        let mut s = format!(
            "TCP from port {}: the server saw ports {} -> mapping {}, allocation {}",
            self.local.port(),
            ports.join(", "),
            kebab(&n.mapping),
            kebab(&n.allocation)
        );
        if let Some(d) = n.delta {
            s.push_str(&format!(" (delta {d})"));
        }
        if self.prediction.port != 0 {
            s.push_str(&format!(
                "; our next TCP port predicted: {}",
                self.prediction.port
            ));
        } else {
            s.push_str("; our next TCP port cannot be predicted");
        }
        s
    }
}

/// The server endpoints in the order RFC 5780 section 4.3 tests the mapping (primary, then
/// other address, then other address and port), with the other port of the primary address
/// first: that step tells port-dependent from address-dependent mapping.
fn endpoints(server: SocketAddr, other: Option<SocketAddr>) -> Vec<SocketAddr> {
    let mut v = vec![server];
    if let Some(o) = other {
        for e in [
            SocketAddr::new(server.ip(), o.port()),
            SocketAddr::new(o.ip(), server.port()),
            o,
        ] {
            if !v.contains(&e) {
                v.push(e);
            }
        }
    }
    v
}

/// Connects from one fresh local port to each server endpoint and predicts where our next
/// connection from that port will appear. `udp` (from the UDP classification) stands in when
/// the server has no alternate endpoints to compare with.
pub fn prepare(
    server: SocketAddr,
    local_ip: IpAddr,
    other: Option<SocketAddr>,
    udp: NatInfo,
) -> Result<TcpPrep, Error> {
    let mut local = SocketAddr::new(local_ip, 0);
    let mut samples = Vec::new();
    for (i, ep) in endpoints(server, other).into_iter().enumerate() {
        match tcp_stun::binding(local, ep, &[], BINDING_TIMEOUT) {
            Ok(b) => {
                local = b.local;
                samples.push((ep, b.mapped));
            }
            Err(e) if i == 0 && e.unreachable() => {
                return Err(Error::TcpServerUnreachable {
                    server,
                    reason: e.to_string(),
                })
            }
            Err(e) if i == 0 => {
                return Err(Error::TcpServerBroken {
                    server,
                    reason: e.to_string(),
                })
            }
            // The other endpoints only sharpen the prediction.
            Err(e) => tracing::warn!("TCP Binding to {ep} failed: {e}"),
        }
    }
    let ports: Vec<u16> = samples.iter().map(|(_, m)| m.port()).collect();
    let prediction = if ports.len() >= 2 {
        plan_tcp::predict(local.port(), &ports)
    } else {
        // One sample says nothing about mapping; assume TCP maps as UDP does (Linux NATs
        // treat both alike).
        let seen = ports[0];
        let port = match (udp.mapping, udp.delta) {
            (Behavior::EndpointIndependent, _) => seen,
            (_, Some(d)) if udp.allocation == crate::core::classify::Allocation::Sequential => {
                u16::try_from(i32::from(seen) + d).unwrap_or(0)
            }
            _ => 0,
        };
        Prediction { nat: udp, port }
    };
    Ok(TcpPrep {
        local,
        prediction,
        samples,
    })
}

/// `--prime-ttl` resolved for this punch.
pub fn priming(
    choice: crate::driver::connect::PrimeTtl,
    my_nat: &NatInfo,
    local: IpAddr,
    peer: IpAddr,
    server_rtt: Duration,
) -> (Option<u32>, String) {
    use crate::driver::connect::PrimeTtl;
    match choice {
        PrimeTtl::Off => (None, "low-TTL priming off (--prime-ttl off)".into()),
        PrimeTtl::Fixed(t) => (
            Some(u32::from(t)),
            format!("low-TTL priming: first SYNs with TTL {t} (--prime-ttl)"),
        ),
        // The measurement is one new UDP flow through our NAT; a NAT that allocates per
        // flow would move its counter and spoil the prediction already sent to the peer.
        PrimeTtl::Auto if my_nat.mapping != Behavior::EndpointIndependent => (
            None,
            "low-TTL priming off: measuring the hops would move our NAT's port counter (set --prime-ttl N to force it)".into(),
        ),
        PrimeTtl::Auto => {
            let p = ttl::priming_ttl(local, peer, ttl::wait_for(server_rtt));
            (p.ttl, p.explain())
        }
    }
}

/// Everything the punch needs, resolved by `connect`.
pub struct PunchSetup {
    pub plan: Plan,
    pub local: SocketAddr,
    pub peer_ip: IpAddr,
    pub peer_port: u16,
    pub window: u16,
    pub rate: u32,
    pub sweep_sockets: usize,
    pub budget: Duration,
    pub start: Instant,
    pub prime_ttl: Option<u32>,
    pub keepalive: Duration,
    pub tls: Arc<TlsSide>,
}

/// What the watcher saw of the peer during the punch (counted here, explained in core).
pub use crate::core::punch::explain::WatchCounts;

impl WatchCounts {
    fn note(&mut self, s: &Seen, outgoing: bool, peer: IpAddr) -> Option<String> {
        match *s {
            Seen::Tcp { src, segment, .. } if !outgoing && src.ip() == peer => match segment {
                Segment::Syn => {
                    self.syn_in += 1;
                    (self.syn_in == 1).then(|| format!("the peer's SYN arrived from {src}"))
                }
                Segment::SynAck => {
                    self.synack_in += 1;
                    (self.synack_in == 1).then(|| format!("SYN-ACK from {src}"))
                }
                Segment::Rst => {
                    self.rst_in += 1;
                    (self.rst_in == 1).then(|| format!("RST from {src}: the peer's NAT refused a SYN of ours that came before the peer's own (it wipes the mapping our SYN opened); retrying"))
                }
                Segment::Other => None,
            },
            Seen::IcmpTcp {
                from,
                kind,
                quoted_dst,
                ..
            } if !outgoing && quoted_dst.ip() == peer => match kind {
                IcmpKind::Unreachable(code) => {
                    self.icmp_unreachable += 1;
                    let what = if from == peer {
                        "the peer's NAT refused a SYN of ours; the error is dropped here, so the attempt stays open for the peer's SYN"
                    } else {
                        "a router on the way refused a SYN of ours"
                    };
                    (self.icmp_unreachable == 1).then(|| {
                        format!("ICMP destination unreachable (code {code}) from {from}: {what}")
                    })
                }
                // Our own priming SYNs dying on the way, as intended.
                IcmpKind::TimeExceeded => None,
            },
            _ => None,
        }
    }
}

/// How the punch ended without a connection.
#[derive(Debug)]
pub enum PunchEnd {
    Interrupted,
    /// The budget ran out.
    Exhausted {
        attempts: u64,
        refused: u64,
        /// TCP connections that came up (and then failed TLS).
        came_up: u64,
        seen: WatchCounts,
        /// A connection came up but failed authentication.
        auth: Option<Box<TlsError>>,
    },
    Setup(Error),
}

/// The authenticated connection the punch made.
pub struct Connection {
    pub stream: TlsStream<TcpStream>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Connection attempts made (first SYNs).
    pub attempts: u64,
}

/// The punch's outcome.
pub struct Punched {
    /// The stream's sockets are registered with this runtime, so it carries the transfer.
    runtime: tokio::runtime::Runtime,
    pub conn: Connection,
}

enum Ev {
    Connected {
        id: u64,
        stream: TcpStream,
    },
    Failed {
        id: u64,
        why: AttemptError,
    },
    Accepted {
        stream: TcpStream,
    },
    /// The TLS outcome of a connection, with the attempt it came from (none: accepted).
    Tls(Option<u64>, Box<Result<TlsStream<TcpStream>, TlsError>>),
}

/// Opens the watcher and the nft rules, then gives up root (keeping CAP_NET_ADMIN, which the
/// rules' removal needs). Returns the guards; dropping them undoes both.
pub fn arm(peer: IpAddr, priming: bool) -> Result<(Watcher, PunchRules), Error> {
    let watcher = Watcher::open(&[peer]).map_err(|e| {
        Error::io(
            "cannot open the AF_PACKET socket that watches the punch (needs CAP_NET_RAW)",
            e,
        )
    })?;
    let rules = PunchRules::install(peer, priming)?;
    match privileges::drop_except(&[CAP_NET_ADMIN]) {
        Ok(d) => tracing::info!(user = ?d.user, "privileges dropped, CAP_NET_ADMIN kept"),
        Err(e) => tracing::warn!("could not drop privileges: {e}"),
    }
    raise_file_limit();
    Ok((watcher, rules))
}

/// A probing sweep keeps hundreds of sockets open at once; the usual soft limit of 1024
/// descriptors would end it early.
fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = WANT_FILES.min(hard);
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard);
        }
    }
}

/// Runs the punch until a connection authenticates, the budget ends, or Ctrl-C.
/// `on_status` gets the lines worth telling the user.
pub fn punch(
    setup: &PunchSetup,
    watcher: Watcher,
    capture: Option<&mut Capture>,
    shutdown: &Shutdown,
    on_status: &mut dyn FnMut(String),
) -> Result<Punched, PunchEnd> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PunchEnd::Setup(Error::io("cannot start the async runtime", e)))?;
    // The watcher blocks in poll(2); a thread feeds its packets in.
    let stop = Arc::new(AtomicBool::new(false));
    let (pkt_tx, mut pkt_rx) = mpsc::unbounded_channel();
    let watch = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("tcp-watch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match watcher.wait(Duration::from_millis(50)) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(_) => return,
                    }
                    while let Ok(Some(p)) = watcher.recv() {
                        if pkt_tx.send(p).is_err() || stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                }
            })
            .map_err(|e| PunchEnd::Setup(Error::io("cannot start the watcher thread", e)))?
    };
    let mut capture = capture;
    let result = runtime.block_on(run_punch(
        setup,
        &mut pkt_rx,
        &mut capture,
        shutdown,
        on_status,
    ));
    stop.store(true, Ordering::Relaxed);
    let _ = watch.join();
    // Packets seen up to the end still go to the capture.
    while let Ok(p) = pkt_rx.try_recv() {
        if let Some(c) = capture.as_deref_mut() {
            if concerns(&p, setup.peer_ip) {
                let _ = c.ip(&p.data, p.at);
            }
        }
    }
    result.map(|conn| Punched { runtime, conn })
}

/// A socket for attempt `from_port` (0: fresh) -> `to`, its first SYN sent. Errors are local
/// ones (bind, socket): the attempt cannot even start.
fn start_attempt(
    local_ip: IpAddr,
    from_port: u16,
    to: SocketAddr,
    prime_ttl: Option<u32>,
) -> io::Result<std::net::TcpStream> {
    let s = tcp_stun::shared_port_socket(SocketAddr::new(local_ip, from_port))?;
    s.set_nonblocking(true)?;
    let normal = match prime_ttl {
        Some(t) if to.is_ipv4() => {
            let n = s.ttl()?;
            s.set_ttl(t)?;
            Some(n)
        }
        _ => None,
    };
    match s.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    // connect(2) sent the SYN; retransmissions and the handshake use the normal TTL.
    if let Some(n) = normal {
        s.set_ttl(n)?;
    }
    Ok(s.into())
}

fn attempt_error(e: &io::Error) -> AttemptError {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => AttemptError::Refused,
        Some(libc::ETIMEDOUT) => AttemptError::TimedOut,
        _ => AttemptError::Unreachable,
    }
}

async fn run_punch(
    setup: &PunchSetup,
    packets: &mut mpsc::UnboundedReceiver<crate::os::packet::Packet>,
    capture: &mut Option<&mut Capture>,
    shutdown: &Shutdown,
    on_status: &mut dyn FnMut(String),
) -> Result<Connection, PunchEnd> {
    let local_ip = setup.local.ip();
    let mut planner = TcpPunch::new(
        TcpPunchConfig {
            plan: setup.plan,
            peer_ip: setup.peer_ip,
            peer_port: setup.peer_port,
            local_port: setup.local.port(),
            window: setup.window,
            rate: setup.rate,
            sweep_sockets: setup.sweep_sockets,
            budget: setup.budget,
            seed: rand::random(),
        },
        setup.start,
    );
    if planner.aimless() {
        on_status("the peer's next TCP port cannot be predicted, so no attempt can aim at it; waiting out the budget in case the peer's attempts get through".into());
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Ev>();
    let mut tasks: HashMap<u64, JoinHandle<()>> = HashMap::new();
    let mut others: Vec<JoinHandle<()>> = Vec::new();
    let commit_turn = Arc::new(tokio::sync::Mutex::new(()));
    let mut seen = WatchCounts::default();
    let mut auth_failure: Option<Box<TlsError>> = None;
    let mut handshakes = 0usize;
    let mut came_up = 0u64;
    // Handshakes still running when the budget ends get their timeout, then the punch ends
    // whatever they do.
    let hard_stop = setup.start + setup.budget + TLS_TIMEOUT;
    let sweeping = matches!(setup.plan, Plan::Probe | Plan::Spray);
    let mut next_progress = setup.start + PROGRESS;

    // A SYN from the peer on a 4-tuple no attempt has (the peer's NAT chose another port than
    // we tried) is completed by the kernel here.
    if setup.plan != Plan::Spray {
        let l = tcp_stun::shared_port_socket(setup.local)
            .and_then(|s| {
                s.listen(64)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .and_then(|s| TcpListener::from_std(s.into()));
        match l {
            Ok(listener) => {
                let tx = tx.clone();
                others.push(tokio::spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((stream, _)) => {
                                if tx.send(Ev::Accepted { stream }).is_err() {
                                    return;
                                }
                            }
                            // Out of descriptors during a wide sweep, or a connection reset
                            // before it was accepted: the listener itself is fine.
                            Err(e) => {
                                tracing::debug!("accept failed: {e}");
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                }));
            }
            Err(e) => tracing::warn!("no listener on {}: {e}", setup.local),
        }
    }

    let spawn_tls = |stream: TcpStream,
                     attempt: Option<u64>,
                     tx: &mpsc::UnboundedSender<Ev>,
                     others: &mut Vec<JoinHandle<()>>,
                     handshakes: &mut usize| {
        let _ = stream.set_nodelay(true);
        let tx = tx.clone();
        let turn = commit_turn.clone();
        let side = setup.tls.clone();
        *handshakes += 1;
        others.push(tokio::spawn(async move {
            let r = side.handshake(stream, Some(&turn)).await;
            let _ = tx.send(Ev::Tls(attempt, Box::new(r)));
        }));
    };

    loop {
        if shutdown.requested() {
            abort_all(&mut tasks, &mut others);
            return Err(PunchEnd::Interrupted);
        }
        let now = Instant::now();
        planner.handle_timeout(now);
        if sweeping && now >= next_progress {
            next_progress = now + PROGRESS;
            on_status(format!(
                "sweep: {} attempts so far, {} refused",
                planner.attempts,
                planner.refused + planner.unreachable
            ));
        }
        while let Some(a) = planner.poll_action() {
            match a {
                Action::Connect { id, from_port, to } => {
                    match start_attempt(local_ip, from_port, to, setup.prime_ttl)
                        .and_then(TcpStream::from_std)
                    {
                        Ok(stream) => {
                            let tx = tx.clone();
                            tasks.insert(
                                id,
                                tokio::spawn(async move {
                                    let ev = match stream.writable().await {
                                        Err(e) => Ev::Failed {
                                            id,
                                            why: attempt_error(&e),
                                        },
                                        Ok(()) => match stream.take_error() {
                                            Ok(Some(e)) | Err(e) => Ev::Failed {
                                                id,
                                                why: attempt_error(&e),
                                            },
                                            Ok(None) => match stream.peer_addr() {
                                                Ok(_) => Ev::Connected { id, stream },
                                                Err(e) => Ev::Failed {
                                                    id,
                                                    why: attempt_error(&e),
                                                },
                                            },
                                        },
                                    };
                                    let _ = tx.send(ev);
                                }),
                            );
                        }
                        Err(e) => {
                            tracing::debug!(
                                "attempt to {to} from port {from_port} could not start: {e}"
                            );
                            planner.handle_failure(now, id, AttemptError::Unreachable);
                        }
                    }
                }
                Action::Abandon { id } => {
                    if let Some(t) = tasks.remove(&id) {
                        t.abort();
                    }
                }
            }
        }
        if planner.expired(now) && (handshakes == 0 || now >= hard_stop) {
            abort_all(&mut tasks, &mut others);
            return Err(PunchEnd::Exhausted {
                attempts: planner.attempts,
                refused: planner.refused + planner.unreachable,
                came_up,
                seen,
                auth: auth_failure,
            });
        }
        let wake = planner
            .poll_timeout()
            .map_or(now + TICK, |t| t.min(now + TICK).max(now));
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            Some(p) = packets.recv() => {
                if let Some(s) = &p.seen {
                    if let Some(line) = seen.note(s, p.outgoing, setup.peer_ip) {
                        on_status(line);
                    }
                }
                if let Some(c) = capture.as_deref_mut() {
                    if concerns(&p, setup.peer_ip) {
                        if let Err(e) = c.ip(&p.data, p.at) {
                            tracing::warn!("capture: {e}");
                        }
                    }
                }
            }
            Some(ev) = rx.recv() => match ev {
                Ev::Connected { id, stream } => {
                    tasks.remove(&id);
                    if let Ok(r) = stream.peer_addr() {
                        on_status(format!("TCP connection up with {r}; authenticating (TLS)"));
                    }
                    came_up += 1;
                    spawn_tls(stream, Some(id), &tx, &mut others, &mut handshakes);
                }
                Ev::Accepted { stream } => {
                    // Anyone may connect to the listener; only the peer's address gets a
                    // handshake, and only so many at once.
                    let from = stream.peer_addr().ok();
                    if from.map(|r| r.ip()) != Some(setup.peer_ip) || handshakes >= MAX_HANDSHAKES {
                        tracing::debug!(?from, "closing a connection to the listener that is not the peer's");
                        continue;
                    }
                    if let Some(r) = from {
                        on_status(format!("TCP connection from {r} accepted; authenticating (TLS)"));
                    }
                    came_up += 1;
                    spawn_tls(stream, None, &tx, &mut others, &mut handshakes);
                }
                Ev::Failed { id, why } => {
                    tasks.remove(&id);
                    planner.handle_failure(Instant::now(), id, why);
                }
                Ev::Tls(attempt, r) => match *r {
                Ok(mut stream) => {
                    if setup.tls.role() == Role::Server {
                        if let Err(e) = tls::accept_commitment(&mut stream).await {
                            handshakes -= 1;
                            on_status(format!("the chosen connection failed: {e}; punching on"));
                            continue;
                        }
                    }
                    let (tcp, _) = stream.get_ref();
                    let (local, remote) = match (tcp.local_addr(), tcp.peer_addr()) {
                        (Ok(l), Ok(r)) => (l, r),
                        _ => {
                            handshakes -= 1;
                            continue;
                        }
                    };
                    if !setup.keepalive.is_zero() {
                        let ka = TcpKeepalive::new()
                            .with_time(setup.keepalive)
                            .with_interval(setup.keepalive);
                        let _ = SockRef::from(tcp).set_tcp_keepalive(&ka);
                    }
                    abort_all(&mut tasks, &mut others);
                    return Ok(Connection {
                        stream,
                        local,
                        remote,
                        attempts: planner.attempts,
                    });
                }
                Err(e) => {
                    handshakes -= 1;
                    on_status(format!("{e}; closing that connection and punching on"));
                    // An attempt whose connection failed is the planner's to repeat.
                    if let Some(id) = attempt {
                        planner.handle_failure(Instant::now(), id, AttemptError::TimedOut);
                    }
                    if e.is_auth_failure() {
                        auth_failure = Some(Box::new(e));
                    }
                }
                },
            },
        }
    }
}

/// Packets of the punch: TCP with the peer, and ICMP errors about such TCP (the filter lets
/// every ICMP through, and IPv6 TCP with anyone).
fn concerns(p: &crate::os::packet::Packet, peer: IpAddr) -> bool {
    match p.seen {
        Some(Seen::Tcp { src, dst, .. }) => src.ip() == peer || dst.ip() == peer,
        Some(Seen::IcmpTcp {
            quoted_src,
            quoted_dst,
            ..
        }) => quoted_src.ip() == peer || quoted_dst.ip() == peer,
        None => false,
    }
}

fn abort_all(tasks: &mut HashMap<u64, JoinHandle<()>>, others: &mut Vec<JoinHandle<()>>) {
    for (_, t) in tasks.drain() {
        t.abort();
    }
    for t in others.drain(..) {
        t.abort();
    }
}

/// Carries the user's bytes over the punched connection.
pub fn transfer(
    p: Punched,
    input: impl io::Read + Send + 'static,
    output: impl io::Write + Send + 'static,
    shutdown: &Shutdown,
) -> Result<StreamStats, Error> {
    let Punched {
        runtime,
        conn: Connection { stream, remote, .. },
    } = p;
    runtime.block_on(async {
        let work = tls::transfer(stream, remote, input, output);
        tokio::pin!(work);
        loop {
            tokio::select! {
                r = &mut work => return r.map_err(Error::from),
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if shutdown.requested() {
                        return Err(Error::Interrupted);
                    }
                }
            }
        }
    })
}

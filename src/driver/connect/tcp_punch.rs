//! `punchraw connect --tcp`, the operating-system side: predicting our NAT's next TCP port
//! from connections to the server, then the punch itself (the attempts that
//! [`crate::core::punch::tcp::TcpPunch`] plans, as kernel sockets sharing one local port, beside a
//! listener on it), watched by an AF_PACKET socket, with this host's RSTs to the peer
//! suppressed by an nft rule while it runs; finally TLS over the first connection that
//! authenticates.
//!
//! Two engines send the attempts. The kernel engine (`--syn-engine kernel`) opens a kernel
//! socket per candidate port: the NATs' connection tracking learns the sequence number of the
//! SYN that opened a mapping, and with strict tracking (Linux's default,
//! nf_conntrack_tcp_be_liberal=0) later segments with another sequence number are dropped as
//! invalid, so whichever 4-tuple the peer's SYN arrives on must find a socket in SYN-SENT
//! with that sequence number to complete the simultaneous open (RFC 9293 section 3.5). The raw
//! engine (`raw.rs`, the default) gets the same guarantee with one sequence number for every
//! crafted SYN and a TCP_REPAIR socket that continues it. Low-TTL priming: the kernel engine
//! sets IP_TTL on the socket for its first SYN only; the raw engine writes the TTL into the
//! packet.

mod dual;
mod predict;
mod raw;
mod transfer;
mod watch;

use crate::core::punch::priming::{self, PrimeTtl};
use crate::core::punch::tcp::{Action, AttemptError, Plan, TcpPunch, TcpPunchConfig};
use crate::core::rendezvous::NatInfo;
use crate::driver::tcp_stun;
use crate::error::StreamError;
use crate::os::capture::Capture;
use crate::os::nft::PunchRules;
use crate::os::packet::Watcher;
use crate::os::privileges::{self, CAP_NET_ADMIN, CAP_NET_RAW};
use crate::os::rawtcp::RawTcpSender;
use crate::os::signals::Shutdown;
use crate::os::ttl;
use crate::transport::tls::{self, TlsSide};
use crate::transport::Role;
use crate::Error;
pub use dual::{direct_setup, ipv6_setup};
use dual::{first_connected, Lane};
pub use predict::{from_samples, prepare, prepare_from, sample, sample_opened, Reserved, TcpPrep};
pub use raw::SynEngine;
use socket2::{SockRef, TcpKeepalive};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsStream;
pub use transfer::transfer;

/// Time for the TLS handshake (and the commitment) on one punched connection.
pub const TLS_TIMEOUT: Duration = Duration::from_secs(6);
/// How long the stream's data may go unacknowledged before the connection counts as lost
/// (TCP_USER_TIMEOUT, RFC 5482 section 3): the QUIC stream's idle timeout. Without it a
/// peer that vanished (switched off, or its NAT's binding gone) while we had data in flight
/// held us for the kernel's ~15 minutes of retransmissions (tcp_retries2); seen in the lab
/// when a punch left one side's segments dropped by its NAT. On an idle connection it also
/// decides when unanswered keep-alive probes end it (tcp(7)), instead of their count.
const STREAM_TIMEOUT: Duration = crate::transport::quic::IDLE_TIMEOUT;
/// TLS handshakes at most at once: a sweep may bring up several connections, but a flood of
/// them at the listener is someone else.
const MAX_HANDSHAKES: usize = 16;
/// How often a sweep reports its progress.
const PROGRESS: Duration = Duration::from_secs(1);
/// How often the punch loop looks at Ctrl-C and its planner when nothing else happens.
const TICK: Duration = Duration::from_millis(20);
/// Open descriptors a sweep may need: the probing side keeps every probe for
/// [`crate::core::punch::tcp::PROBE_LINGER`] at up to the maximum rate.
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

/// What `--syn-engine raw` needs, for the up-front check.
pub const NEEDED_RAW: [(u32, &str, &str); 2] = [
    (
        CAP_NET_ADMIN,
        "CAP_NET_ADMIN",
        "for the nft rule that keeps this host's RSTs from closing the NAT mapping during the punch, and for the TCP_REPAIR socket that continues the crafted handshake",
    ),
    (
        CAP_NET_RAW,
        "CAP_NET_RAW",
        "for the AF_PACKET socket that watches SYN, SYN-ACK, RST and ICMP, and the raw socket that sends the crafted SYNs",
    ),
];

/// Fails with the exact missing capabilities, before any work starts, and checks that the
/// `nft` we will run gets CAP_NET_ADMIN from us (with file capabilities instead of root it
/// must be lent explicitly).
pub fn check_privileges(engine: SynEngine) -> Result<(), Error> {
    let needed = match engine {
        SynEngine::Kernel => &NEEDED,
        SynEngine::Raw => &NEEDED_RAW,
    };
    let missing = privileges::missing(needed);
    if !missing.is_empty() {
        return Err(Error::Privileges {
            missing: missing.join(", "),
        });
    }
    privileges::lend_to_children(&[CAP_NET_ADMIN])
        .map_err(|e| Error::io("cannot pass CAP_NET_ADMIN on to `nft`", e))?;
    crate::os::nft::check_usable()
}

/// `--prime-ttl` resolved for this punch, measuring the hops toward the peer when the core
/// asks for it, by the punch's `start` ([`priming::wait_within`]).
pub fn priming(
    choice: PrimeTtl,
    my_nat: &NatInfo,
    local: IpAddr,
    peer: IpAddr,
    peer_rtt: Duration,
    start: std::time::Instant,
) -> (Option<u32>, String) {
    match priming::choose(choice, my_nat) {
        priming::Choice::Decided(ttl, why) => (ttl, why),
        priming::Choice::Measure => {
            let left = start.saturating_duration_since(std::time::Instant::now());
            let p = ttl::priming_ttl(local, peer, priming::wait_within(peer_rtt, left));
            (p.ttl, p.explain())
        }
    }
}

/// Everything the punch needs, resolved by `connect`.
pub struct PunchSetup {
    /// This side's plan: where the attempts aim and from which ports.
    pub plan: Plan,
    /// Our shared punch port (the one the TCP prediction measured), listened on and
    /// connected from.
    pub local: SocketAddr,
    /// The IP every attempt connects to: the peer's public one, or its mapping's.
    pub peer_ip: IpAddr,
    /// Another address of the peer's whose connections our listener takes: its LAN address
    /// when a second punch goes there from the same port ([`direct_setup`]). Both punches'
    /// listeners share the port, so the kernel hands a connection to either.
    pub also_from: Option<IpAddr>,
    /// The peer's predicted port (0: unknown).
    pub peer_port: u16,
    /// Where the peer's NAT draws random ports (a `Probe` searches them).
    pub peer_ports: [u16; 2],
    /// Ports past the prediction a window tries (`--window`).
    pub window: u16,
    /// Attempts per second at most (`--rate`).
    pub rate: u32,
    /// Attempts from fresh local ports a spray makes (`--sweep-sockets`).
    pub sweep_sockets: usize,
    /// Time for the attempts, from `start` (TLS handshakes under way may finish after it).
    pub budget: Duration,
    /// The agreed start of the punch (never in the past).
    pub start: Instant,
    /// TTL of each attempt's first SYN, low enough to open our NAT's mapping without
    /// reaching the peer's; `None`: no priming.
    pub prime_ttl: Option<u32>,
    /// TCP keep-alive idle time and interval on the connection kept (zero: none).
    pub keepalive: Duration,
    /// Our TLS side: role, certificate, the peer's pinned fingerprint, handshake timeout.
    pub tls: Arc<TlsSide>,
    /// The round trip toward the peer as best known
    /// ([`crate::core::rendezvous::peer_rtt`]): the raw engine's pace.
    pub rtt: Duration,
    /// Copies of each first SYN on the raw engine ([`crate::core::punch::tcp::first_syn_copies`]).
    pub first_syn_copies: u8,
    /// The raw socket, with `--syn-engine raw` ([`arm`] opens it).
    pub raw: Option<RawTcpSender>,
    /// Serialises the TLS client's commitments across connections, and across the punches of
    /// both families, which share it (see `transport::tls`).
    pub commitment: Arc<tls::Commitment>,
}

impl PunchSetup {
    /// The attempt planner's configuration, the same for both engines.
    pub(super) fn punch_config(&self) -> TcpPunchConfig {
        TcpPunchConfig {
            plan: self.plan,
            peer_ip: self.peer_ip,
            peer_port: self.peer_port,
            peer_ports: self.peer_ports,
            local_port: self.local.port(),
            window: self.window,
            rate: self.rate,
            sweep_sockets: self.sweep_sockets,
            budget: self.budget,
            seed: rand::random(),
        }
    }
}

/// What the watcher saw of the peer during the punch (counted here, explained in core).
pub use crate::core::punch::explain::WatchCounts;

/// How the punch ended without a connection.
#[derive(Debug)]
pub enum PunchEnd {
    /// A signal or the caller's shutdown stopped the punch.
    Interrupted,
    /// The budget ran out.
    Exhausted {
        /// Connection attempts made (first SYNs).
        attempts: u64,
        /// Attempts refused by RST or ended by an ICMP error.
        refused: u64,
        /// TCP connections that came up (and then failed TLS).
        came_up: u64,
        /// What the watcher saw of the peer, for the failure's explanation.
        seen: Box<WatchCounts>,
        /// A connection came up but failed authentication.
        auth: Option<Box<StreamError>>,
    },
    /// The punch could not start (the async runtime, the watcher thread, the punch port).
    Setup(Error),
}

/// The authenticated connection the punch made.
pub struct Connection {
    /// The TLS stream, authenticated and committed to (the server's acceptance is the first
    /// thing a TLS client reads: see [`crate::transport::tls`]).
    pub stream: TlsStream<TcpStream>,
    /// Our TLS role on it.
    pub role: Role,
    /// Our end of the connection.
    pub local: SocketAddr,
    /// The peer's end, as we reached it through its NAT.
    pub remote: SocketAddr,
    /// Connection attempts made (first SYNs).
    pub attempts: u64,
    /// SYNs sent to the peer, repeats included (as the watcher saw them leave).
    pub syns: u64,
    /// Sockets the punch opened (listener, one per kernel attempt, accepted connections; the
    /// raw engine's raw socket, held port and repaired sockets).
    pub sockets: u64,
    /// When the TCP handshake of this connection completed, before its TLS handshake.
    pub up_at: Instant,
}

/// The punch's outcome.
pub struct Punched {
    /// The stream's sockets are registered with this runtime, so it carries the transfer.
    runtime: tokio::runtime::Runtime,
    /// The connection, with the punch's counts.
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
    /// The TLS outcome of a connection, with the attempt it came from (none: accepted) and
    /// when the connection came up.
    Tls(
        Option<u64>,
        Instant,
        Box<Result<TlsStream<TcpStream>, StreamError>>,
    ),
}

/// Opens the watcher and the nft rules for `peers` (the peer's IPv4 address, and its IPv6
/// one when both families are punched) and (raw engine, IPv4) the raw socket, then gives up root
/// (keeping CAP_NET_ADMIN, which the rules' removal and TCP_REPAIR need). Returns the guards;
/// dropping them undoes all.
pub fn arm(
    peers: &[IpAddr],
    priming: bool,
    engine: SynEngine,
) -> Result<(Watcher, PunchRules, Option<RawTcpSender>), Error> {
    let watcher = Watcher::open(peers).map_err(|e| {
        Error::io(
            "cannot open the AF_PACKET socket that watches the punch (needs CAP_NET_RAW)",
            e,
        )
    })?;
    let sender = match engine {
        SynEngine::Raw if peers.first().is_some_and(IpAddr::is_ipv4) => Some(raw::open_sender()?),
        _ => None,
    };
    let rules = PunchRules::install(peers, priming)?;
    match privileges::drop_except(&[CAP_NET_ADMIN]) {
        Ok(d) => tracing::info!(user = ?d.user, "privileges dropped, CAP_NET_ADMIN kept"),
        Err(e) => tracing::warn!("could not drop privileges: {e}"),
    }
    // A probing sweep keeps hundreds of sockets open at once; the usual soft limit of 1024
    // descriptors would end it early.
    privileges::raise_file_limit(WANT_FILES);
    Ok((watcher, rules, sender))
}

/// The capture, shared by the punches of both families.
type CaptureCell<'a> = RefCell<Option<&'a mut Capture>>;

/// Runs the punch until a connection authenticates, the budget ends, or Ctrl-C. With `also`
/// (the peer's IPv6 or LAN address beside its public IPv4 one, see [`direct_setup`]), that
/// punch runs at the same time on kernel sockets and the first connection to authenticate
/// is kept: the TLS client commits to one only (the two share [`PunchSetup::commitment`]),
/// and the other punch is dropped with all it opened. `on_status` gets the lines worth
/// telling the user.
pub fn punch(
    setup: &PunchSetup,
    also: Option<&PunchSetup>,
    watcher: Watcher,
    capture: Option<&mut Capture>,
    shutdown: &Shutdown,
    on_status: &mut dyn FnMut(String),
) -> Result<Punched, PunchEnd> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PunchEnd::Setup(Error::io("cannot start the async runtime", e)))?;
    let (pkt_tx, mut pkt_rx) = mpsc::unbounded_channel();
    let (also_tx, mut also_rx) = mpsc::unbounded_channel();
    let also_peer = also.map(|s| s.peer_ip);
    let watch = watch::WatchThread::spawn(watcher, also_peer, pkt_tx, also_tx)
        .map_err(|e| PunchEnd::Setup(Error::io("cannot start the watcher thread", e)))?;
    let capture: CaptureCell<'_> = RefCell::new(capture);
    let engine = setup
        .raw
        .as_ref()
        .and_then(|s| Some((s, raw::engine(setup, on_status)?)));
    if setup.raw.is_some() && engine.is_none() {
        on_status("the raw SYN engine leaves the spraying side of a sweep to kernel sockets (a fresh port per attempt); punching with them".into());
    }
    let status = RefCell::new(on_status);
    let mut say = |line: String| (*status.borrow_mut())(line);
    let lane = if also_peer.is_some_and(|ip| ip.is_ipv6()) {
        "IPv6"
    } else {
        "LAN"
    };
    let mut say_also = |line: String| (*status.borrow_mut())(format!("{lane}: {line}"));
    let result = runtime.block_on(async {
        let first: Lane<'_> = match engine {
            Some((sender, (engine, hello))) => Box::pin(raw::run(
                setup,
                engine,
                hello,
                sender,
                &mut pkt_rx,
                &capture,
                shutdown,
                &mut say,
            )),
            None => Box::pin(run_punch(setup, &mut pkt_rx, &capture, shutdown, &mut say)),
        };
        match also {
            None => first.await,
            Some(v6) => {
                let second = run_punch(v6, &mut also_rx, &capture, shutdown, &mut say_also);
                first_connected(first, Box::pin(second)).await
            }
        }
    });
    // Packets seen up to the end still go to the capture.
    let mut capture = capture.into_inner();
    watch.stop(capture.is_some());
    for (rx, peer) in [
        (&mut pkt_rx, Some(setup.peer_ip)),
        (&mut also_rx, also_peer),
    ] {
        while let Ok(p) = rx.try_recv() {
            if let (Some(c), Some(peer)) = (capture.as_deref_mut(), peer) {
                if watch::concerns(&p, peer) {
                    let _ = c.ip(&p.data, p.at);
                }
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

/// The punch loop's state: the planner, the attempts in flight, the handshakes and what the
/// watcher saw. Each phase of [`run_punch`] is a method.
struct PunchLoop<'a> {
    setup: &'a PunchSetup,
    planner: TcpPunch,
    tx: mpsc::UnboundedSender<Ev>,
    /// Attempts in flight, by planner id.
    tasks: HashMap<u64, JoinHandle<()>>,
    /// The listener and the TLS handshakes.
    others: Vec<JoinHandle<()>>,
    seen: WatchCounts,
    auth_failure: Option<Box<StreamError>>,
    handshakes: usize,
    came_up: u64,
    /// Sockets opened so far ([`Connection::sockets`]).
    sockets: u64,
}

/// What ended one turn of the loop.
enum Turn {
    Go,
    Done(Box<Result<Connection, PunchEnd>>),
}

async fn run_punch(
    setup: &PunchSetup,
    packets: &mut mpsc::UnboundedReceiver<crate::os::packet::Packet>,
    capture: &CaptureCell<'_>,
    shutdown: &Shutdown,
    on_status: &mut dyn FnMut(String),
) -> Result<Connection, PunchEnd> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Ev>();
    let mut l = PunchLoop::new(setup, tx);
    if l.planner.aimless() {
        on_status("no attempt aims at the peer (its next TCP port cannot be predicted, or it connects to our port mapping); waiting out the budget for the peer's attempts".into());
    }
    // A SYN from the peer on a 4-tuple no attempt has (the peer's NAT chose another port than
    // we tried) is completed by the kernel here.
    if !setup.plan.fresh_ports() {
        l.open_listener();
    }
    // Handshakes still running when the budget ends get their timeout, then the punch ends
    // whatever they do.
    let hard_stop = setup.start + setup.budget + TLS_TIMEOUT;
    let sweeping = setup.plan.sweeping();
    let mut next_progress = setup.start + PROGRESS;
    let result = loop {
        if shutdown.requested() {
            break Err(PunchEnd::Interrupted);
        }
        let now = Instant::now();
        l.planner.handle_timeout(now);
        if sweeping && now >= next_progress {
            next_progress = now + PROGRESS;
            on_status(format!(
                "sweep: {} attempts so far, {} refused",
                l.planner.attempts,
                l.planner.refused + l.planner.unreachable
            ));
        }
        l.start_attempts(now);
        if l.planner.expired(now) && (l.handshakes == 0 || now >= hard_stop) {
            break Err(l.exhausted());
        }
        let wake = l
            .planner
            .poll_timeout()
            .map_or(now + TICK, |t| t.min(now + TICK).max(now));
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            Some(p) = packets.recv() => l.on_packet(&p, capture, on_status),
            Some(ev) = rx.recv() => {
                if let Turn::Done(r) = l.on_event(ev, on_status).await {
                    break *r;
                }
            }
        }
    };
    l.abort_all();
    result
}

impl<'a> PunchLoop<'a> {
    fn new(setup: &'a PunchSetup, tx: mpsc::UnboundedSender<Ev>) -> Self {
        let planner = TcpPunch::new(setup.punch_config(), setup.start);
        PunchLoop {
            setup,
            planner,
            tx,
            tasks: HashMap::new(),
            others: Vec::new(),
            seen: WatchCounts::default(),
            auth_failure: None,
            handshakes: 0,
            came_up: 0,
            sockets: 0,
        }
    }

    /// A listener on the punch port, feeding accepted connections in as [`Ev::Accepted`].
    fn open_listener(&mut self) {
        let l = tcp_stun::shared_port_socket(self.setup.local)
            .and_then(|s| {
                s.listen(64)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .and_then(|s| TcpListener::from_std(s.into()));
        let listener = match l {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("no listener on {}: {e}", self.setup.local);
                return;
            }
        };
        self.sockets += 1;
        let tx = self.tx.clone();
        self.others.push(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        if tx.send(Ev::Accepted { stream }).is_err() {
                            return;
                        }
                    }
                    // Out of descriptors during a wide sweep, or a connection reset before
                    // it was accepted: the listener itself is fine.
                    Err(e) => {
                        tracing::debug!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }

    /// Carries out what the planner asks: new attempts (a kernel socket each, watched by a
    /// task until it connects or fails) and abandoned ones.
    fn start_attempts(&mut self, now: Instant) {
        while let Some(a) = self.planner.poll_action() {
            match a {
                Action::Connect { id, from_port, to } => {
                    match start_attempt(self.setup.local.ip(), from_port, to, self.setup.prime_ttl)
                        .and_then(TcpStream::from_std)
                    {
                        Ok(stream) => {
                            self.sockets += 1;
                            let tx = self.tx.clone();
                            self.tasks.insert(
                                id,
                                tokio::spawn(async move {
                                    let _ = tx.send(attempt_outcome(id, stream).await);
                                }),
                            );
                        }
                        Err(e) => {
                            tracing::debug!(
                                "attempt to {to} from port {from_port} could not start: {e}"
                            );
                            self.planner
                                .handle_failure(now, id, AttemptError::Unreachable);
                        }
                    }
                }
                Action::Abandon { id } => {
                    if let Some(t) = self.tasks.remove(&id) {
                        t.abort();
                    }
                }
            }
        }
    }

    /// A packet from the watcher: counted, told, captured.
    fn on_packet(
        &mut self,
        p: &crate::os::packet::Packet,
        capture: &CaptureCell<'_>,
        on_status: &mut dyn FnMut(String),
    ) {
        if let Some(s) = &p.seen {
            if let Some(line) = self.seen.note(s, p.outgoing, self.setup.peer_ip) {
                on_status(line);
            }
        }
        if let Some(c) = capture.borrow_mut().as_deref_mut() {
            if watch::concerns(p, self.setup.peer_ip) {
                if let Err(e) = c.ip(&p.data, p.at) {
                    tracing::warn!("capture: {e}");
                }
            }
        }
    }

    async fn on_event(&mut self, ev: Ev, on_status: &mut dyn FnMut(String)) -> Turn {
        match ev {
            Ev::Connected { id, stream } => {
                self.tasks.remove(&id);
                if let Ok(r) = stream.peer_addr() {
                    on_status(format!("TCP connection up with {r}; authenticating (TLS)"));
                }
                self.came_up += 1;
                self.spawn_tls(stream, Some(id));
            }
            Ev::Accepted { stream } => {
                self.sockets += 1;
                // Anyone may connect to the listener; only the peer's address gets a
                // handshake, and only so many at once.
                let from = stream.peer_addr().ok();
                let peers = [Some(self.setup.peer_ip), self.setup.also_from];
                if !from.is_some_and(|r| peers.contains(&Some(r.ip())))
                    || self.handshakes >= MAX_HANDSHAKES
                {
                    tracing::debug!(
                        ?from,
                        "closing a connection to the listener that is not the peer's"
                    );
                    return Turn::Go;
                }
                if let Some(r) = from {
                    on_status(format!(
                        "TCP connection from {r} accepted; authenticating (TLS)"
                    ));
                }
                self.came_up += 1;
                self.spawn_tls(stream, None);
            }
            Ev::Failed { id, why } => {
                self.tasks.remove(&id);
                self.planner.handle_failure(Instant::now(), id, why);
            }
            Ev::Tls(attempt, up_at, r) => {
                return self.on_handshake(attempt, up_at, *r, on_status).await
            }
        }
        Turn::Go
    }

    /// A TLS handshake ended: the connection to keep, or one more failure to learn from.
    async fn on_handshake(
        &mut self,
        attempt: Option<u64>,
        up_at: Instant,
        r: Result<TlsStream<TcpStream>, StreamError>,
        on_status: &mut dyn FnMut(String),
    ) -> Turn {
        let mut stream = match r {
            Ok(s) => s,
            Err(e) => {
                self.handshakes -= 1;
                on_status(format!("{e}; closing that connection and punching on"));
                // Ends the attempt; its 4-tuple is spent (see `AttemptError::Failed`).
                if let Some(id) = attempt {
                    self.planner
                        .handle_failure(Instant::now(), id, AttemptError::Failed);
                }
                if e.is_auth_failure() {
                    self.auth_failure = Some(Box::new(e));
                }
                return Turn::Go;
            }
        };
        if self.setup.tls.role() == Role::Server {
            if let Err(e) = tls::accept_commitment(&mut stream).await {
                self.handshakes -= 1;
                on_status(format!("the chosen connection failed: {e}; punching on"));
                return Turn::Go;
            }
        }
        let (tcp, _) = stream.get_ref();
        let (local, remote) = match (tcp.local_addr(), tcp.peer_addr()) {
            (Ok(l), Ok(r)) => (l, r),
            _ => {
                self.handshakes -= 1;
                return Turn::Go;
            }
        };
        let sock = SockRef::from(tcp);
        if !self.setup.keepalive.is_zero() {
            let ka = TcpKeepalive::new()
                .with_time(self.setup.keepalive)
                .with_interval(self.setup.keepalive);
            let _ = sock.set_tcp_keepalive(&ka);
        }
        let _ = sock.set_tcp_user_timeout(Some(STREAM_TIMEOUT));
        Turn::Done(Box::new(Ok(Connection {
            stream,
            role: self.setup.tls.role(),
            local,
            remote,
            attempts: self.planner.attempts,
            syns: self.seen.syn_out,
            sockets: self.sockets,
            up_at,
        })))
    }

    fn spawn_tls(&mut self, stream: TcpStream, attempt: Option<u64>) {
        self.spawn_tls_prepared(stream, attempt, None);
    }

    /// [`PunchLoop::spawn_tls`], the TLS client continuing `prepared` when given (its hello
    /// went in our SYNs).
    fn spawn_tls_prepared(
        &mut self,
        stream: TcpStream,
        attempt: Option<u64>,
        prepared: Option<crate::transport::tls::PreparedClient>,
    ) {
        let _ = stream.set_nodelay(true);
        let tx = self.tx.clone();
        let turn = self.setup.commitment.clone();
        let side = self.setup.tls.clone();
        self.handshakes += 1;
        let up_at = Instant::now();
        self.others.push(tokio::spawn(async move {
            let r = side.handshake_prepared(stream, Some(&turn), prepared).await;
            let _ = tx.send(Ev::Tls(attempt, up_at, Box::new(r)));
        }));
    }

    fn exhausted(&mut self) -> PunchEnd {
        PunchEnd::Exhausted {
            attempts: self.planner.attempts,
            refused: self.planner.refused + self.planner.unreachable,
            came_up: self.came_up,
            seen: Box::new(std::mem::take(&mut self.seen)),
            auth: self.auth_failure.take(),
        }
    }

    fn abort_all(&mut self) {
        for (_, t) in self.tasks.drain() {
            t.abort();
        }
        for t in self.others.drain(..) {
            t.abort();
        }
    }
}

/// A punch given up because the other family's connected first leaves nothing running in
/// the runtime that goes on to carry the stream (its listener would accept, its attempts
/// connect).
impl Drop for PunchLoop<'_> {
    fn drop(&mut self) {
        self.abort_all();
    }
}

/// How one attempt's non-blocking connect ended: writable with no error means connected.
async fn attempt_outcome(id: u64, stream: TcpStream) -> Ev {
    let failed = |e: &io::Error| Ev::Failed {
        id,
        why: attempt_error(e),
    };
    if let Err(e) = stream.writable().await {
        return failed(&e);
    }
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => failed(&e),
        Ok(None) => match stream.peer_addr() {
            Ok(_) => Ev::Connected { id, stream },
            Err(e) => failed(&e),
        },
    }
}

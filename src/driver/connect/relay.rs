//! The relay fallback's allocation: a thread that drives the sans-IO TURN client
//! (`core::turn::Client`) on a UDP socket of its own to the TURN server -- or a TCP or TLS
//! connection, `?transport=tcp|tls` ([`stream`]) -- keeps the allocation refreshed while
//! connect runs (RFC 8656 section 8), and frees it with a Refresh of lifetime 0 when
//! dropped -- after success, an error or a signal alike.
//!
//! With `--relay auto` the TURN server is the rendezvous server itself (`serve --relay`, on
//! its primary port) with session credentials derived from the session key. The session
//! exists only once its first peer registered, so that peer's first Allocate is refused
//! (401): the thread tries again every [`RETRY`] until the rendezvous ends, and the
//! rendezvous loop offers the relayed address as soon as there is one.

use crate::core::rendezvous::derive_rendezvous_key;
use crate::core::turn::server::session::{session_credentials, SESSION_MISS_CACHE};
use crate::core::turn::{Client, Event, Transport, TurnConfig, TurnError};
use crate::core::Machine;
use crate::transport::quic::RelayLink;
use crate::Error;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

mod stream;

/// `connect --relay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayMode {
    /// `off`: never relay; a punch that fails ends the connect.
    Off,
    /// The rendezvous server's own relay, with session credentials.
    Auto,
    /// An explicit TURN server (`turn://USER:PASS@HOST:PORT`), with long-term credentials.
    Turn {
        /// The TURN server's address (HOST resolved; port 3478, or 5349 over TLS, when none
        /// was given).
        server: SocketAddr,
        /// The long-term credential's user name.
        username: String,
        /// The long-term credential's password.
        password: String,
        /// How we reach the server (`?transport=`).
        transport: RelayTransport,
    },
}

/// How we reach an explicit TURN server (RFC 8656 section 3.1); the relayed leg is UDP
/// whichever it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayTransport {
    /// Plain UDP to the server (the default).
    Udp,
    /// Over a TCP connection to the server.
    Tcp,
    /// TLS over TCP: the server's certificate must name `name` and chain to one of `roots`.
    Tls {
        /// The name the server's certificate must carry: HOST without its port.
        name: String,
        /// The CA certificates to trust (`--relay-ca`, or the system's bundle).
        roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    },
}

/// The longest a receive blocks: the bound on noticing a stop.
const POLL: Duration = Duration::from_millis(50);
/// A refused first Allocate is tried again this often, until the rendezvous ends: our own
/// register creates the session within a round trip or two, and the sooner the allocation
/// follows, the sooner a relay-first stream starts. Above the server's memory of a session
/// it did not find (`core::turn::server::session::SESSION_MISS_CACHE`).
const RETRY: Duration = Duration::from_millis(250);
/// The wait for the server to confirm the freeing Refresh before giving up on it.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Binding indications toward the TURN server this often: below the 30 s after which some
/// NATs forget an idle UDP binding.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long the relay's host must keep refusing our datagrams (ICMP port unreachable) before
/// the relay counts as gone: one refusal may be a stray, a second a second later is not.
const GONE_AFTER: Duration = Duration::from_secs(1);
/// The relay socket's buffers each way, as the QUIC socket's (`transport::quic`).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;
/// Relayed datagrams waiting for QUIC; beyond, they are dropped as a full socket would.
const QUEUE: usize = 4096;

#[derive(Debug, Clone)]
pub(super) enum State {
    Allocating {
        last_error: Option<String>,
    },
    Allocated(SocketAddr),
    Failed(TurnError),
    /// The TCP or TLS connection to the server could not be made, or ended (and the
    /// allocation with it).
    Unreachable(String),
}

/// Where relayed datagrams go once the stream runs: to the QUIC socket's queue.
type Relayed = mpsc::Sender<(SocketAddr, Vec<u8>)>;

/// The way to the server: set once connected (at once for UDP); until then the client
/// keeps what it has to send.
enum Link {
    Udp(UdpSocket),
    Stream(stream::Writer),
}

struct Shared {
    link: OnceLock<Link>,
    client: Mutex<Client>,
    state: Mutex<State>,
    stop: AtomicBool,
    data: Mutex<Option<Relayed>>,
    /// Why the allocation stopped serving, once we know it did without the server saying
    /// so: its host answered ICMP port unreachable (nothing listens there any more; the UDP
    /// socket is connected, so Linux reports it), or the TCP connection ended.
    gone: Mutex<Option<String>>,
    /// Since when the server's host refuses our datagrams, with nothing heard since.
    refused_since: Mutex<Option<Instant>>,
    allocated: AtomicBool,
    /// The rendezvous has shown that the session exists: a refused first Allocate is tried
    /// again at once rather than at its next [`RETRY`].
    session_exists: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn flush(&self, c: &mut Client) {
        let Some(link) = self.link.get() else {
            return;
        };
        while let Some(t) = c.poll_transmit() {
            match link {
                // A lost datagram is repeated by the client's own timers (or lost, as on UDP).
                Link::Udp(sock) => {
                    if let Err(e) = sock.send_to(&t.payload, t.dst) {
                        self.note_error(&e);
                    }
                }
                Link::Stream(w) => w.send(&t.payload),
            }
        }
    }

    /// The allocation is gone for `why`; the relayed QUIC socket's receive side ends, which
    /// ends its stream now rather than at QUIC's idle timeout.
    fn set_gone(&self, why: String) {
        let mut gone = lock(&self.gone);
        if gone.is_none() {
            *gone = Some(why);
            lock(&self.data).take();
        }
    }

    /// A pending ICMP error is reported by whichever call on the socket comes next, a send
    /// as well as a receive, so both note it. An allocated relay whose host keeps refusing
    /// our datagrams for [`GONE_AFTER`], with nothing received meanwhile, is gone.
    fn note_error(&self, e: &std::io::Error) {
        if e.kind() != std::io::ErrorKind::ConnectionRefused
            || !self.allocated.load(Ordering::Relaxed)
        {
            return;
        }
        let now = Instant::now();
        let first = *lock(&self.refused_since).get_or_insert(now);
        if now.duration_since(first) >= GONE_AFTER && lock(&self.gone).is_none() {
            tracing::warn!("the TURN server's host keeps answering ICMP port unreachable");
            self.set_gone("its host answers ICMP port unreachable: the TURN server is gone".into());
        }
    }

    fn note_heard(&self) {
        *lock(&self.refused_since) = None;
    }
}

/// A running allocation; dropping it frees it.
pub(super) struct Relay {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    pub(super) server: SocketAddr,
    pub(super) username: String,
    /// How we reach the server: "UDP", "TCP" or "TLS".
    over: &'static str,
    /// `--relay turn://...`: the user chose this relay, so its refusal is an error.
    explicit: bool,
    started: Instant,
}

impl Relay {
    /// Starts allocating; `None` with `--relay off` or when there is nothing to allocate
    /// with (said in the returned reason).
    pub(super) fn start(
        mode: &RelayMode,
        rendezvous: SocketAddr,
        session: &str,
        secret: &str,
        bind: Option<IpAddr>,
        retry_until: Instant,
        auto_over: &RelayTransport,
    ) -> Result<Option<Relay>, String> {
        let (server, username, password, retry, transport) = match mode {
            RelayMode::Off => return Ok(None),
            RelayMode::Auto => {
                let key = derive_rendezvous_key(secret.as_bytes(), session);
                let (u, p) = session_credentials(&key, session).ok_or_else(|| {
                    "the session name cannot be a TURN username (printable ASCII only)".to_string()
                })?;
                (rendezvous, u, p, true, auto_over)
            }
            RelayMode::Turn {
                server,
                username,
                password,
                transport,
            } => (
                *server,
                username.clone(),
                password.clone(),
                false,
                transport,
            ),
        };
        let any: IpAddr = match (bind, server) {
            (Some(ip), _) => ip,
            (None, SocketAddr::V4(_)) => IpAddr::from([0u8; 4]),
            (None, SocketAddr::V6(_)) => IpAddr::from([0u16; 8]),
        };
        let mut cfg = TurnConfig::new(server, &username, &password, rand::random());
        let link = OnceLock::new();
        // Made on the thread (connecting and a handshake take round trips).
        let mut dial = None;
        let over = match transport {
            RelayTransport::Udp => "UDP",
            RelayTransport::Tcp => "TCP",
            RelayTransport::Tls { .. } => "TLS",
        };
        match transport {
            RelayTransport::Udp => {
                let sock = UdpSocket::bind(SocketAddr::new(any, 0))
                    .map_err(|e| format!("cannot open a socket for the relay: {e}"))?;
                // Connected, so that an ICMP port unreachable from a relay that died reaches
                // us as ECONNREFUSED (an unconnected UDP socket never hears of it); the
                // client only ever talks to this one server.
                sock.connect(server)
                    .map_err(|e| format!("cannot reach the relay {server}: {e}"))?;
                // The whole stream arrives here in bursts while this thread may be busy
                // sending; the default buffer (~200 KB) overflowed at tens of MB/s.
                crate::os::udp::grow_buffers(&sock, SOCKET_BUFFER);
                let _ = link.set(Link::Udp(sock));
                // The peer may keep us waiting longer than a NAT keeps an idle binding.
                cfg.keepalive = Some(KEEPALIVE);
            }
            RelayTransport::Tcp => {
                cfg.transport = Transport::Stream;
                dial = Some(Dial { bind, tls: None });
            }
            RelayTransport::Tls { name, roots } => {
                cfg.transport = Transport::Stream;
                let tls = stream::tls(name, roots)?;
                dial = Some(Dial {
                    bind,
                    tls: Some(tls),
                });
            }
        }
        let shared = Arc::new(Shared {
            link,
            client: Mutex::new(Client::new(cfg.clone(), Instant::now())),
            state: Mutex::new(State::Allocating { last_error: None }),
            stop: AtomicBool::new(false),
            data: Mutex::new(None),
            gone: Mutex::new(None),
            refused_since: Mutex::new(None),
            allocated: AtomicBool::new(false),
            session_exists: AtomicBool::new(false),
        });
        // Over UDP the first Allocate leaves from this thread, before the caller classifies
        // the NAT: a sequential NAT then maps this flow ahead of the allocation burst, where
        // from the relay's thread it could fall inside the burst or between the late probes
        // on a short path and read as another host's flow (a counter not quiet). Without a
        // link yet (TCP, TLS) the thread sends it once it has dialled.
        shared.flush(&mut lock(&shared.client));
        let s = shared.clone();
        let retry_until = retry.then_some(retry_until);
        let thread = std::thread::Builder::new()
            .name("turn-relay".into())
            .spawn(move || run(&s, cfg, retry_until, dial))
            .map_err(|e| format!("cannot start the relay thread: {e}"))?;
        Ok(Some(Relay {
            shared,
            thread: Some(thread),
            server,
            username,
            over,
            explicit: matches!(mode, RelayMode::Turn { .. }),
            started: Instant::now(),
        }))
    }

    pub(super) fn state(&self) -> State {
        lock(&self.shared.state).clone()
    }

    /// [`Relay::state`], noting first whether the rendezvous has shown the session to
    /// exist (then a refused first Allocate is tried again without waiting out [`RETRY`]).
    pub(super) fn poll_state(&self, session_exists: bool) -> State {
        if session_exists {
            self.shared.session_exists.store(true, Ordering::Relaxed);
        }
        self.state()
    }

    pub(super) fn relayed(&self) -> Option<SocketAddr> {
        match self.state() {
            State::Allocated(a) => Some(a),
            _ => None,
        }
    }

    /// Why the allocation stopped serving, once it did: the server's host said nothing
    /// listens there any more (then `true`: we closed the relayed socket for that), or the
    /// allocation failed (a Refresh unanswered or refused).
    pub(super) fn lost(&self) -> Option<(String, bool)> {
        if let Some(why) = lock(&self.shared.gone).clone() {
            return Some((why, true));
        }
        match self.state() {
            State::Failed(e) => Some((e.to_string(), false)),
            _ => None,
        }
    }

    /// Waits until the first Allocate is settled (allocated, refused, failed) or `max`.
    pub(super) fn settle(&self, max: Duration, stop: &dyn Fn() -> bool) -> State {
        let until = Instant::now() + max;
        loop {
            let s = self.state();
            match s {
                State::Allocating { last_error: None } if Instant::now() < until && !stop() => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                s => return s,
            }
        }
    }

    /// The QUIC socket's link to `peer` (its relayed address) through our allocation: a
    /// channel is bound to it (RFC 8656 section 12, with its permission, section 9); until
    /// the binding is confirmed, data goes in Send indications once the permission is in.
    pub(super) fn link(&self, peer: SocketAddr) -> Option<RelayLink> {
        let local = self.relayed()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        *lock(&self.shared.data) = Some(tx);
        {
            let mut c = lock(&self.shared.client);
            c.bind_channel(Instant::now(), peer)?;
            self.shared.flush(&mut c);
        }
        let shared = self.shared.clone();
        let send = Box::new(move |dst: SocketAddr, d: &[u8]| {
            let mut c = lock(&shared.client);
            // Too large or no allocation any more: lost, as a datagram may be.
            let _ = c.send_to(Instant::now(), dst, d);
            shared.flush(&mut c);
        });
        Some(RelayLink {
            local,
            send,
            recv: rx,
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether a failed first Allocate may succeed once the session exists.
fn retryable(e: &TurnError) -> bool {
    matches!(e, TurnError::Unauthorized { .. })
}

/// A TCP or TLS connection for the relay thread to make.
struct Dial {
    bind: Option<IpAddr>,
    tls: Option<stream::Tls>,
}

/// Where the relay thread reads the server's messages from.
enum Source {
    Udp(Vec<u8>),
    Stream(stream::Reader),
}

/// Makes the stream to the server, if there is one to make; `None` when it cannot be made
/// (said in the state).
fn dial(s: &Shared, cfg: &TurnConfig, dial: Option<Dial>) -> Option<Source> {
    let Some(d) = dial else {
        return Some(Source::Udp(vec![0u8; 65_536]));
    };
    match stream::connect(cfg.server, d.bind, d.tls) {
        Ok((writer, reader)) => {
            let _ = s.link.set(Link::Stream(writer));
            // The client's clock for its first Allocate starts now that it can go.
            *lock(&s.client) = Client::new(cfg.clone(), Instant::now());
            Some(Source::Stream(reader))
        }
        Err(why) => {
            *lock(&s.state) = State::Unreachable(why);
            None
        }
    }
}

fn run(s: &Shared, cfg: TurnConfig, retry_until: Option<Instant>, dial_to: Option<Dial>) {
    let Some(mut source) = dial(s, &cfg, dial_to) else {
        return;
    };
    let mut retry_at: Option<Instant> = None;
    // When the last refused Allocate was answered.
    let mut failed_at: Option<Instant> = None;
    let mut closing: Option<Instant> = None;
    let mut allocated = false;
    // The client queued its first Allocate when it was made; it goes now, not when the
    // first retransmission timer (an RTO later) next flushes the queue.
    s.flush(&mut lock(&s.client));
    loop {
        let now = Instant::now();
        if s.stop.load(Ordering::Relaxed) && closing.is_none() {
            closing = Some(now);
            retry_at = None;
            let mut c = lock(&s.client);
            c.close(now);
            s.flush(&mut c);
        }
        if closing.is_some_and(|t| now.duration_since(t) >= CLOSE_WAIT) {
            tracing::debug!("the TURN server did not confirm the freeing Refresh");
            return;
        }
        if let (Some(t), Some(failed)) = (retry_at, failed_at) {
            // Not before the server forgot the miss it remembers of our last try.
            let soon = failed + SESSION_MISS_CACHE;
            if soon < t && s.session_exists.load(Ordering::Relaxed) {
                retry_at = Some(soon.max(now));
            }
        }
        if retry_at.is_some_and(|t| t <= now) {
            retry_at = None;
            let mut cfg = cfg.clone();
            cfg.seed = rand::random();
            let mut c = lock(&s.client);
            *c = Client::new(cfg, now);
            s.flush(&mut c);
        }
        let (events, timeout, done) = {
            let mut c = lock(&s.client);
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
                s.flush(&mut c);
            }
            let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
            (events, c.poll_timeout(), c.is_done())
        };
        for ev in events {
            match ev {
                Event::Allocated { relayed, .. } => {
                    allocated = true;
                    s.allocated.store(true, Ordering::Relaxed);
                    *lock(&s.state) = State::Allocated(relayed);
                }
                Event::Data { peer, bytes } => {
                    if let Some(tx) = lock(&s.data).as_ref() {
                        let _ = tx.try_send((peer, bytes));
                    }
                }
                Event::Failed(e) if closing.is_none() => {
                    let again =
                        !allocated && retryable(&e) && retry_until.is_some_and(|u| now + RETRY < u);
                    *lock(&s.state) = if again {
                        retry_at = Some(now + RETRY);
                        failed_at = Some(now);
                        State::Allocating {
                            last_error: Some(e.to_string()),
                        }
                    } else {
                        State::Failed(e)
                    };
                }
                Event::PermissionFailed { peer, error } => {
                    tracing::warn!(%peer, %error, "TURN permission refused");
                }
                Event::ChannelBindFailed { peer, error } => {
                    tracing::debug!(%peer, %error, "ChannelBind refused; Send indications go on");
                }
                _ => {}
            }
        }
        if done && retry_at.is_none() {
            return;
        }
        let wake = [timeout, retry_at].into_iter().flatten().min();
        let wait = wake.map_or(POLL, |t| {
            t.saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), POLL)
        });
        match &mut source {
            Source::Udp(buf) => {
                let Some(Link::Udp(sock)) = s.link.get() else {
                    return;
                };
                if sock.set_read_timeout(Some(wait)).is_err() {
                    return;
                }
                match sock.recv_from(buf) {
                    Ok((n, from)) => {
                        s.note_heard();
                        let mut c = lock(&s.client);
                        c.handle_input(Instant::now(), 0, from, &buf[..n]);
                        s.flush(&mut c);
                    }
                    Err(e) => s.note_error(&e),
                }
            }
            Source::Stream(r) => match r.read(wait) {
                Ok(frames) => {
                    let mut c = lock(&s.client);
                    for f in frames {
                        c.handle_input(Instant::now(), 0, cfg.server, &f);
                    }
                    s.flush(&mut c);
                }
                Err(_) if closing.is_some() => return,
                Err(why) => {
                    // RFC 8656 section 3.1: the allocation lives only as long as the
                    // connection it was made on.
                    tracing::warn!(%why, "the connection to the TURN server ended");
                    if allocated {
                        let why = format!("{why}; the allocation ended with the connection");
                        s.set_gone(why.clone());
                        *lock(&s.state) = State::Unreachable(why);
                    } else {
                        *lock(&s.state) = State::Unreachable(why);
                    }
                    return;
                }
            },
        }
    }
}

/// Starts the allocation for `connect`, before the classification so that the two overlap;
/// `None` when there is none (said). [`settled`] waits for the outcome.
pub(super) fn begin(
    cfg: &super::ConnectConfig,
    status: &crate::driver::Status,
    secret: &str,
    deadline: Instant,
) -> Option<Relay> {
    begin_over(cfg, status, secret, deadline, &RelayTransport::Udp)
}

/// [`begin`], reaching the rendezvous server's own relay (`--relay auto`) over `auto_over`:
/// TCP when UDP to it is blocked.
pub(super) fn begin_over(
    cfg: &super::ConnectConfig,
    status: &crate::driver::Status,
    secret: &str,
    deadline: Instant,
    auto_over: &RelayTransport,
) -> Option<Relay> {
    match Relay::start(
        &cfg.relay,
        cfg.server,
        &cfg.session,
        secret,
        cfg.bind,
        deadline,
        auto_over,
    ) {
        Ok(r) => r,
        Err(why) => {
            status.say(format!("relay: none ({why}); going on without"));
            None
        }
    }
}

/// Says how [`begin`]'s allocation went and keeps it if it may still serve. Waits for the
/// first answer at most [`SETTLE`] from the start, so that a second peer (whose session
/// exists) offers its relayed address in its very first register.
pub(super) fn settled(
    relay: Option<Relay>,
    cfg: &super::ConnectConfig,
    status: &crate::driver::Status,
    stop: &dyn Fn() -> bool,
) -> Result<(Option<Relay>, Option<Refusal>), Error> {
    let Some(relay) = relay else {
        return Ok((None, None));
    };
    let relay = match relay.settle(SETTLE.saturating_sub(relay.started.elapsed()), stop) {
        State::Allocated(a) => {
            status.say(format!(
                "relay: allocated {a} on {} as {} over {}",
                relay.server, relay.username, relay.over
            ));
            Some(relay)
        }
        State::Allocating { last_error: None } => {
            // A server that relays answers within a few round trips, also to refuse; one that
            // does not answer in SETTLE would only hold up the rendezvous.
            status.say(format!(
                "relay: no answer from {} within {} s; going on without",
                relay.server,
                SETTLE.as_secs()
            ));
            None
        }
        State::Allocating {
            last_error: Some(e),
        } => {
            // Only `auto` retries: session credentials of a session not registered yet.
            tracing::debug!(error = %e, "first Allocate refused");
            status.say(format!(
                "relay: {} does not know session {:?} yet (401); allocating again once our register has created it",
                relay.server, cfg.session
            ));
            Some(relay)
        }
        State::Unreachable(why) => {
            status.say(format!(
                "relay: cannot reach {} over {} ({why}); going on without",
                relay.server, relay.over
            ));
            return Ok((None, None));
        }
        State::Failed(e) => {
            let refusal = refusal(relay.server, relay.explicit, e)?;
            match &refusal {
                Some(r) => status.say(format!(
                    "relay: {} refused our allocation ({}); punching on without a relay to fall back to",
                    r.server, r.error
                )),
                None => status.say("relay: none; going on without"),
            }
            return Ok((None, refusal));
        }
    };
    Ok((relay, None))
}

/// A relay's refusal that matters if no hole opens: that relay was the fallback.
#[derive(Debug)]
pub(super) struct Refusal {
    server: SocketAddr,
    error: TurnError,
}

/// What a failed allocation means (said at debug level when it means nothing): with
/// `--relay turn://...`, refused credentials are the user's to fix now (exit 7), and any
/// other error response is the relay refusing to serve; with `auto`, only a relay that
/// says it is full (486, 508) refused -- any other answer (a 400 from a server that does
/// not relay, a 401 for a session it never learnt) means there is no relay to use.
fn refusal(server: SocketAddr, explicit: bool, error: TurnError) -> Result<Option<Refusal>, Error> {
    tracing::debug!(%error, "the allocation failed");
    let counts = match (&error, explicit) {
        (TurnError::Unauthorized { username, realm }, true) => {
            return Err(Error::RelayCredentials {
                server,
                username: username.clone(),
                realm: realm.clone(),
            })
        }
        (TurnError::AllocationQuota | TurnError::InsufficientCapacity, _) => true,
        (TurnError::Timeout { .. } | TurnError::BadResponse { .. }, _) => false,
        (_, explicit) => explicit,
    };
    Ok(counts.then_some(Refusal { server, error }))
}

/// The error when no hole opened: the relay's refusal (exit 7, it can be acted on) when the
/// fallback was refused -- at the start (`refused`) or later, after a retried Allocate --
/// and the punch's failure otherwise.
pub(super) fn no_direct_path(
    relay: Option<&Relay>,
    refused: Option<Refusal>,
    failed: Error,
) -> Error {
    let later = || {
        let relay = relay?;
        match relay.state() {
            State::Failed(e) => refusal(relay.server, relay.explicit, e).unwrap_or(None),
            _ => None,
        }
    };
    match refused.or_else(later) {
        Some(r) => Error::RelayRefused {
            server: r.server,
            refusal: r.error.to_string(),
            punch: Box::new(failed),
        },
        None => failed,
    }
}

/// The wait for the first allocation's outcome before the rendezvous starts.
const SETTLE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "192.0.2.1:3478";

    fn judged(explicit: bool, e: TurnError) -> Result<Option<u16>, u8> {
        let server = SERVER.parse().unwrap();
        match refusal(server, explicit, e) {
            Ok(r) => Ok(r.map(|r| match r.error {
                TurnError::AllocationQuota => 486,
                TurnError::InsufficientCapacity => 508,
                TurnError::Refused { code, .. } => code,
                _ => 0,
            })),
            Err(e) => Err(e.exit_code()),
        }
    }

    fn refused(code: u16) -> TurnError {
        TurnError::Refused {
            request: "Allocate",
            code,
            reason: "x".into(),
        }
    }

    #[test]
    fn explicit_relay_with_wrong_credentials_is_exit_7_at_once() {
        let e = TurnError::Unauthorized {
            username: "u".into(),
            realm: "r".into(),
        };
        assert_eq!(judged(true, e.clone()), Err(7));
        // `auto`: session credentials of a session the server never learnt; no relay.
        assert_eq!(judged(false, e), Ok(None));
    }

    #[test]
    fn a_full_relay_is_a_refusal_in_either_mode() {
        for explicit in [true, false] {
            assert_eq!(judged(explicit, TurnError::AllocationQuota), Ok(Some(486)));
            assert_eq!(
                judged(explicit, TurnError::InsufficientCapacity),
                Ok(Some(508))
            );
        }
    }

    #[test]
    fn other_refusals_count_only_for_an_explicit_relay() {
        // A rendezvous server without --relay answers an Allocate with 400.
        assert_eq!(judged(false, refused(400)), Ok(None));
        assert_eq!(judged(true, refused(400)), Ok(Some(400)));
        let silent = TurnError::Timeout {
            request: "Allocate",
            waited_ms: 1,
        };
        assert_eq!(judged(true, silent), Ok(None));
    }

    #[test]
    fn a_refused_fallback_replaces_the_punch_failure() {
        let punch = || Error::PunchFailed {
            strategy: "sweep",
            probes: 1,
            explanation: "x".into(),
        };
        let r = Refusal {
            server: SERVER.parse().unwrap(),
            error: TurnError::InsufficientCapacity,
        };
        let e = no_direct_path(None, Some(r), punch());
        assert_eq!(e.exit_code(), 7);
        let text = e.chain();
        assert!(
            text.contains("192.0.2.1:3478")
                && text.contains("508")
                && text.contains("punching failed"),
            "{text}"
        );
        assert_eq!(no_direct_path(None, None, punch()).exit_code(), 8);
    }

    #[test]
    fn the_first_allocate_has_left_when_the_relay_starts() {
        use crate::core::stun::{Class, Message, Method};
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let to = server.local_addr().unwrap();
        let mode = RelayMode::Turn {
            server: to,
            username: "u".into(),
            password: "p".into(),
            transport: RelayTransport::Udp,
        };
        let relay = Relay::start(
            &mode,
            to,
            "s",
            "secret",
            Some(to.ip()),
            Instant::now() + Duration::from_secs(5),
            &RelayTransport::Udp,
        )
        .unwrap()
        .unwrap();
        // Loopback delivers at send: without waiting, the request is already here, so a
        // classification started next comes after it at any NAT.
        let mut buf = [0u8; 1500];
        let (n, _) = server
            .recv_from(&mut buf)
            .expect("the first Allocate was sent before start returned");
        let m = Message::parse(&buf[..n]).unwrap().message_type();
        assert_eq!((m.method, m.class), (Method::Allocate, Class::Request));
        drop(server);
        drop(relay);
    }
}

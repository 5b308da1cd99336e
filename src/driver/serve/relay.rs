//! `serve --relay`: the TURN server machine ([`crate::core::turn::server::TurnServer`]) and
//! its relay sockets, behind one lock ([`Forwarder`]) that every thread receiving TURN takes.
//!
//! The primary UDP port is shared by the socket group of [`super::udp`] (SO_REUSEPORT), so any
//! of its threads may receive a client's TURN datagram (ChannelData, and STUN whose method is
//! not Binding: [`TurnServer::is_turn`]). That thread feeds it to the machine itself and sends
//! what comes out after letting go of the lock: answers to UDP clients from its own socket,
//! which has the primary address and port, so the client's 5-tuple is the same both ways, in
//! the `sendmmsg` batch of its receive batch ([`Outbox`]). A relayed stream between two
//! clients of this server (both peers of a session relayed here) thus costs one thread and
//! no hand-over per datagram: the machine moves data between its own allocations itself.
//! Handing datagrams to a relay thread instead (a queue and a wake-up per burst) woke a
//! second thread for every burst and left the stream at 0.8x coturn's throughput.
//!
//! One thread, [`relay_loop`], polls the relay sockets for what peers outside send, runs the
//! machine's timers and frees everything at shutdown. A thread that opens a relay socket
//! wakes it, so the new socket is polled at once.
//!
//! TURN over TCP (RFC 8656 section 3.1): a connection thread of [`super::tcp`] on the primary
//! endpoint frames with [`crate::core::stun::frame_len`] and feeds TURN frames the same way,
//! marked as TCP; at its first one it registers a second handle of its stream
//! ([`RelayShared::tcp`]) on which answers are written, and when it closes it says so, which
//! ends the allocation of that 5-tuple.

use super::*;
use crate::core::turn::server::session::SessionInfo;
use crate::core::turn::server::{
    ClientId, OpenError, RelayEvent, Source, TurnServer, TurnServerConfig, TurnStats, Via,
};
use crate::driver::serve::registry::RendezvousService;
use crate::os::mmsg::SendBatch;
use crate::os::poll;
use crate::os::queue::{self, QueueRx, QueueTx};
use socket2::{Protocol, Type};
use std::collections::HashMap;
use std::io;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::debug;

/// Largest datagram relayed; a UDP payload cannot be longer.
const MAX_DATAGRAM: usize = 65_536;
/// Datagrams read from one relay socket per poll round, so one busy socket cannot starve the
/// rest.
const READS_PER_ROUND: usize = 64;
/// Receive buffer asked for each relay socket (the kernel caps it at rmem_max).
const RELAY_RCVBUF: usize = 1 << 20;
/// Room reserved per datagram of a batch toward clients (a full-size QUIC packet in
/// ChannelData; larger ones grow their buffer).
const BATCH_SLOT: usize = 2048;
/// How often the counters are published to [`Shared`] while running.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// The machine, its sockets, and what every thread needs to feed it.
pub(super) struct Forwarder {
    state: Mutex<State>,
    /// Tells the relay thread that a relay socket was opened.
    wake: QueueTx,
    /// A socket on the primary address, for answers no UDP thread sends.
    primary: UdpSocket,
    rdv: Arc<RendezvousService>,
    shared: Arc<RelayShared>,
    /// Inputs dropped because a thread panicked while holding the machine.
    pub(super) dropped: AtomicU64,
}

struct State {
    turn: TurnServer,
    sockets: HashMap<u16, Arc<UdpSocket>>,
}

/// What the machine asked to send, kept until the lock is let go ([`Forwarder::send`]).
pub(super) struct Outbox {
    msgs: Vec<(Dest, SocketAddr, Vec<u8>)>,
    /// UDP threads batch their answers to clients; others send them one by one.
    batch: Option<SendBatch>,
}

enum Dest {
    Client(Via),
    Relay(Arc<UdpSocket>),
}

impl Outbox {
    /// For a thread that sends answers to clients one by one.
    pub(super) fn single() -> Outbox {
        Outbox {
            msgs: Vec::new(),
            batch: None,
        }
    }

    /// For a thread that sends its answers to clients in `sendmmsg` batches.
    pub(super) fn batched() -> Outbox {
        Outbox {
            msgs: Vec::with_capacity(crate::os::mmsg::MAX_BATCH),
            batch: Some(SendBatch::new(BATCH_SLOT)),
        }
    }
}

/// The relay thread's end of the wake-ups.
pub(super) struct RelayParts {
    woken: QueueRx,
}

/// The shared machine for the receiving threads and the relay thread's parts. Fails on a
/// configuration [`TurnServerConfig::validate`] refuses.
pub(super) fn channel(
    cfg: TurnServerConfig,
    primary: &UdpSocket,
    rdv: Arc<RendezvousService>,
    shared: Arc<RelayShared>,
) -> io::Result<(Arc<Forwarder>, RelayParts)> {
    let turn = TurnServer::new(cfg, Instant::now())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let (wake, woken) = queue::pair(1 << 12)?;
    Ok((
        Arc::new(Forwarder {
            state: Mutex::new(State {
                turn,
                sockets: HashMap::new(),
            }),
            wake,
            primary: primary.try_clone()?,
            rdv,
            shared,
            dropped: AtomicU64::new(0),
        }),
        RelayParts { woken },
    ))
}

/// Counters published for the statistics, and the TCP connections answers go down.
#[derive(Default)]
pub(super) struct RelayShared {
    pub(super) stats: Mutex<Option<TurnStats>>,
    pub(super) active: AtomicUsize,
    pub(super) send_errors: AtomicU64,
    /// Write halves of the TCP connections that spoke TURN, by client address: answers to
    /// them are written there (RFC 8656 section 3.1).
    pub(super) tcp: Mutex<HashMap<SocketAddr, TcpStream>>,
}

impl Forwarder {
    fn lock(&self) -> Option<MutexGuard<'_, State>> {
        let st = self.state.lock().ok();
        if st.is_none() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        st
    }

    /// Feeds `bytes` from `src` (over UDP, or over the TCP connection from `src` when `tcp`)
    /// to the machine and sends what it answers at once.
    pub(super) fn forward(&self, src: SocketAddr, tcp: bool, bytes: &[u8]) {
        let mut out = Outbox::single();
        let via = if tcp { Via::Tcp } else { Via::Udp };
        self.take_in(Instant::now(), ClientId { via, addr: src }, bytes, &mut out);
        self.send(&mut out, &self.primary);
    }

    /// Feeds a UDP datagram from `src` to the machine; what it answers waits in `out` for
    /// [`Forwarder::send`].
    pub(super) fn forward_udp(
        &self,
        now: Instant,
        src: SocketAddr,
        bytes: &[u8],
        out: &mut Outbox,
    ) {
        let client = ClientId {
            via: Via::Udp,
            addr: src,
        };
        self.take_in(now, client, bytes, out);
    }

    fn take_in(&self, now: Instant, client: ClientId, bytes: &[u8], out: &mut Outbox) {
        if let Some(mut st) = self.lock() {
            st.turn.handle_client(now, client, bytes);
            self.drain(&mut st, out);
        }
    }

    /// The TCP connection from `src` closed: so does its allocation.
    pub(super) fn tcp_gone(&self, src: SocketAddr) {
        let mut out = Outbox::single();
        if let Some(mut st) = self.lock() {
            st.turn.client_gone(ClientId {
                via: Via::Tcp,
                addr: src,
            });
            self.drain(&mut st, &mut out);
        }
        self.send(&mut out, &self.primary);
    }

    /// Carries out what the machine asks that needs the lock -- sockets to open and close,
    /// sessions to look up -- and collects what it sends into `out`.
    fn drain(&self, st: &mut State, out: &mut Outbox) {
        let relay_ip = st.turn.config().relay_ip;
        loop {
            let mut moved = false;
            while let Some(ev) = st.turn.poll_event() {
                moved = true;
                match ev {
                    RelayEvent::Open { port } => {
                        let result = match bind_relay(relay_ip, port) {
                            Ok(s) => {
                                st.sockets.insert(port, Arc::new(s));
                                // Lost only when the wake-ups are already queued.
                                let _ = self.wake.send(&[]);
                                Ok(())
                            }
                            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(OpenError::InUse),
                            Err(e) => {
                                debug!(port, error = %e, "cannot open a relay socket");
                                Err(OpenError::Failed)
                            }
                        };
                        st.turn.relay_opened(Instant::now(), port, result);
                    }
                    RelayEvent::Close { port } => {
                        st.sockets.remove(&port);
                    }
                    RelayEvent::Lookup { session } => {
                        let now = Instant::now();
                        let info = self
                            .rdv
                            .session_info(now, &session)
                            .map(|(key, members)| SessionInfo { key, members });
                        st.turn.session_found(now, &session, info);
                    }
                }
            }
            while let Some(tx) = st.turn.poll_transmit() {
                moved = true;
                let dest = match tx.from {
                    Source::Primary(via) => Dest::Client(via),
                    Source::Relay(port) => match st.sockets.get(&port) {
                        Some(s) => Dest::Relay(Arc::clone(s)),
                        None => continue,
                    },
                };
                out.msgs.push((dest, tx.to, tx.payload));
            }
            if !moved {
                return;
            }
        }
    }

    /// Sends what `out` holds; answers to UDP clients leave from `udp`, a socket on the
    /// primary address.
    pub(super) fn send(&self, out: &mut Outbox, udp: &UdpSocket) {
        let mut failed = 0u64;
        for (dest, to, payload) in out.msgs.drain(..) {
            let sent = match dest {
                Dest::Client(Via::Udp) => match out.batch.as_mut() {
                    Some(b) => {
                        if !b.push(&payload, to) {
                            failed += flush(b, udp);
                            b.push(&payload, to);
                        }
                        continue;
                    }
                    None => udp.send_to(&payload, to).map(|_| ()),
                },
                // A reader that does not keep up holds this thread up to the connection's
                // write timeout, once: a failed write may have left part of a frame on the
                // stream, so the connection is shut down, which ends its allocation.
                Dest::Client(Via::Tcp) => match self.shared.tcp.lock() {
                    Ok(mut conns) => match conns.get(&to) {
                        Some(mut s) => {
                            let r = s.write_all(&payload);
                            if r.is_err() {
                                if let Some(s) = conns.remove(&to) {
                                    let _ = s.shutdown(std::net::Shutdown::Both);
                                }
                            }
                            r
                        }
                        None => continue,
                    },
                    Err(_) => continue,
                },
                Dest::Relay(s) => s.send_to(&payload, to).map(|_| ()),
            };
            if let Err(e) = sent {
                failed += 1;
                debug!(%to, error = %e, "relay send failed");
            }
        }
        if let Some(b) = out.batch.as_mut() {
            failed += flush(b, udp);
        }
        if failed > 0 {
            self.shared.send_errors.fetch_add(failed, Ordering::Relaxed);
        }
    }
}

/// Sends a batch; returns how many datagrams the kernel refused.
fn flush(batch: &mut SendBatch, udp: &UdpSocket) -> u64 {
    if batch.is_empty() {
        return 0;
    }
    let (_, failed, err) = batch.flush(udp);
    if failed > 0 {
        debug!(failed, error = ?err, "relay sends to clients failed");
    }
    failed as u64
}

fn bind_relay(ip: IpAddr, port: u16) -> io::Result<UdpSocket> {
    let addr = SocketAddr::new(ip, port);
    let s = super::bind::new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    // Best effort, as for the primary sockets: one thread serves every relay socket, so a
    // deeper queue absorbs a peer's burst while it is busy elsewhere.
    let _ = s.set_recv_buffer_size(RELAY_RCVBUF);
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Serves the relay sockets and the machine's timers until shutdown, then frees every
/// allocation.
pub(super) fn relay_loop(fwd: &Forwarder, parts: RelayParts, stop: &Stop) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = Outbox::batched();
    let mut published = Instant::now();
    while !stop.requested() {
        let Some((sockets, wait)) = fwd.lock().map(|st| {
            let now = Instant::now();
            let wait = st
                .turn
                .poll_timeout()
                .map_or(POLL_INTERVAL, |t| t.saturating_duration_since(now))
                .min(POLL_INTERVAL);
            let sockets: Vec<(u16, Arc<UdpSocket>)> = st
                .sockets
                .iter()
                .map(|(p, s)| (*p, Arc::clone(s)))
                .collect();
            (sockets, wait)
        }) else {
            return;
        };
        let ready = {
            let mut fds = Vec::with_capacity(sockets.len() + 1);
            fds.push(parts.woken.as_fd());
            fds.extend(sockets.iter().map(|(_, s)| s.as_fd()));
            match poll::readable(&fds, wait) {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "poll on the relay sockets failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        };
        if ready.first().copied().unwrap_or(false) {
            while parts.woken.take().is_ok() {}
        }
        for ((port, s), _) in sockets.iter().zip(&ready[1..]).filter(|(_, r)| **r) {
            for _ in 0..READS_PER_ROUND {
                let Ok((n, peer)) = s.recv_from(&mut buf) else {
                    break;
                };
                if let Some(mut st) = fwd.lock() {
                    st.turn.handle_peer(Instant::now(), *port, peer, &buf[..n]);
                    fwd.drain(&mut st, &mut out);
                }
                if out.msgs.len() >= crate::os::mmsg::MAX_BATCH {
                    fwd.send(&mut out, &fwd.primary);
                }
            }
        }
        if let Some(mut st) = fwd.lock() {
            let now = Instant::now();
            if st.turn.poll_timeout().is_some_and(|t| t <= now) {
                st.turn.handle_timeout(now);
            }
            fwd.drain(&mut st, &mut out);
            if published.elapsed() >= STATS_EVERY {
                published = Instant::now();
                publish(&st.turn, &fwd.shared);
            }
        }
        fwd.send(&mut out, &fwd.primary);
    }
    // SIGINT/SIGTERM: the allocations end with the server, and the statistics say so.
    if let Some(mut st) = fwd.lock() {
        st.turn.shutdown();
        fwd.drain(&mut st, &mut out);
        publish(&st.turn, &fwd.shared);
    }
    fwd.send(&mut out, &fwd.primary);
}

fn publish(turn: &TurnServer, shared: &RelayShared) {
    shared.active.store(turn.active(), Ordering::Relaxed);
    if let Ok(mut s) = shared.stats.lock() {
        *s = Some(*turn.stats());
    }
}

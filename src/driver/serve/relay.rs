//! `serve --relay`: one thread owns the TURN server machine
//! ([`crate::core::turn::server::TurnServer`]) and every relay socket, and polls them with
//! [`crate::os::poll`].
//!
//! The primary UDP port is shared by the socket group of [`super::udp`] (SO_REUSEPORT), so any
//! of its threads may receive a client's TURN datagram. They pass those (ChannelData, and STUN
//! whose method is not Binding: [`TurnServer::is_turn`]) to this thread over a pollable queue
//! ([`crate::os::queue`]), the client's address in front ([`Forwarder`]); the relay thread
//! answers from a clone of a primary socket, which has the same address and port, so the
//! client's 5-tuple is the same both ways. A full queue drops the datagram, as a full socket buffer would.
//!
//! TURN over TCP (RFC 8656 section 3.1): a connection thread of [`super::tcp`] on the primary
//! endpoint frames with [`crate::core::stun::frame_len`] and forwards TURN frames the same
//! way, marked as TCP; at its first one it registers a second handle of its stream
//! ([`RelayShared::tcp`]) on which this thread writes the answers, and when it closes it
//! says so, which ends the allocation of that 5-tuple.

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
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::debug;

/// Largest datagram relayed; a UDP payload cannot be longer.
const MAX_DATAGRAM: usize = 65_536;
/// Datagrams read from one socket per poll round, so one busy socket cannot starve the rest.
const READS_PER_ROUND: usize = 64;
/// Receive buffer asked for each relay socket (the kernel caps it at rmem_max).
const RELAY_RCVBUF: usize = 1 << 20;
/// Room reserved per datagram of the batch toward clients (a full-size QUIC packet in
/// ChannelData; larger ones grow their buffer).
const BATCH_SLOT: usize = 2048;
/// How often the counters are published to [`Shared`] while running.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// The UDP threads' end: hands TURN datagrams to the relay thread.
pub(super) struct Forwarder {
    tx: QueueTx,
    pub(super) dropped: AtomicU64,
}

/// What a forwarded record carries, in the top bits of its first byte (the low bits are
/// the address family, 4 or 6).
const FROM_TCP: u8 = 0x80;
const TCP_GONE: u8 = 0x40;

impl Forwarder {
    /// Queues `bytes` from `src` (over UDP, or over the TCP connection from `src` when `tcp`)
    /// for the relay thread; drops them when the queue is full.
    pub(super) fn forward(&self, src: SocketAddr, tcp: bool, bytes: &[u8]) {
        self.send(src, if tcp { FROM_TCP } else { 0 }, bytes);
    }

    /// Tells the relay thread that the TCP connection from `src` closed.
    pub(super) fn tcp_gone(&self, src: SocketAddr) {
        self.send(src, TCP_GONE, &[]);
    }

    fn send(&self, src: SocketAddr, kind: u8, bytes: &[u8]) {
        let mut buf = Vec::with_capacity(bytes.len() + 19);
        match src.ip() {
            IpAddr::V4(ip) => {
                buf.push(kind | 4);
                buf.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                buf.push(kind | 6);
                buf.extend_from_slice(&ip.octets());
            }
        }
        buf.extend_from_slice(&src.port().to_be_bytes());
        buf.extend_from_slice(bytes);
        if self.tx.send_owned(buf).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The kind bits, the address in front of a forwarded datagram, and the datagram.
fn unwrap_forwarded(buf: &[u8]) -> Option<(u8, SocketAddr, &[u8])> {
    let (&first, rest) = buf.split_first()?;
    let (ip, rest): (IpAddr, _) = match first & 0x0f {
        4 => {
            let (a, r) = rest.split_at_checked(4)?;
            (<[u8; 4]>::try_from(a).ok()?.into(), r)
        }
        6 => {
            let (a, r) = rest.split_at_checked(16)?;
            (<[u8; 16]>::try_from(a).ok()?.into(), r)
        }
        _ => return None,
    };
    let (p, data) = rest.split_at_checked(2)?;
    let src = SocketAddr::new(ip, u16::from_be_bytes([p[0], p[1]]));
    Some((first & 0xf0, src, data))
}

/// The relay thread's inputs: the receiving end of the forwarder and a socket that sends
/// from the primary address.
pub(super) struct RelayParts {
    rx: QueueRx,
    primary: UdpSocket,
}

/// A connected pair: the forwarder for the UDP threads and the relay thread's parts.
pub(super) fn channel(primary: &UdpSocket) -> io::Result<(Arc<Forwarder>, RelayParts)> {
    // Room for bursts of full-size datagrams.
    let (tx, rx) = queue::pair(8 << 20)?;
    let primary = primary.try_clone()?;
    Ok((
        Arc::new(Forwarder {
            tx,
            dropped: AtomicU64::new(0),
        }),
        RelayParts { rx, primary },
    ))
}

/// Counters the relay thread publishes.
#[derive(Default)]
pub(super) struct RelayShared {
    pub(super) stats: Mutex<Option<TurnStats>>,
    pub(super) active: AtomicUsize,
    pub(super) send_errors: AtomicU64,
    /// Write halves of the TCP connections that spoke TURN, by client address: the relay
    /// thread answers on them (RFC 8656 section 3.1).
    pub(super) tcp: Mutex<HashMap<SocketAddr, TcpStream>>,
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

/// Runs the TURN server until shutdown, then frees every allocation.
pub(super) fn relay_loop(
    cfg: TurnServerConfig,
    parts: RelayParts,
    rdv: &RendezvousService,
    stop: &Stop,
    shared: &RelayShared,
) {
    let relay_ip = cfg.relay_ip;
    let mut turn = match TurnServer::new(cfg, Instant::now()) {
        Ok(t) => t,
        Err(e) => {
            // Checked by the caller before the thread starts.
            debug!(error = %e, "invalid relay configuration");
            return;
        }
    };
    let mut io = RelayIo {
        sockets: HashMap::new(),
        primary: &parts.primary,
        relay_ip,
        to_clients: SendBatch::new(BATCH_SLOT),
    };
    let mut buf = vec![0u8; MAX_DATAGRAM + 19];
    let mut published = Instant::now();
    while !stop.requested() {
        let now = Instant::now();
        let wait = turn
            .poll_timeout()
            .map_or(POLL_INTERVAL, |t| t.saturating_duration_since(now))
            .min(POLL_INTERVAL);
        let ports: Vec<u16> = io.sockets.keys().copied().collect();
        let ready = {
            let mut fds = Vec::with_capacity(ports.len() + 1);
            fds.push(parts.rx.as_fd());
            fds.extend(
                ports
                    .iter()
                    .filter_map(|p| io.sockets.get(p))
                    .map(|s| s.as_fd()),
            );
            match poll::readable(&fds, wait) {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "poll on the relay sockets failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        };
        let now = Instant::now();
        if ready.first().copied().unwrap_or(false) {
            for _ in 0..READS_PER_ROUND {
                let Ok(msg) = parts.rx.take() else {
                    break;
                };
                match unwrap_forwarded(&msg) {
                    Some((TCP_GONE, src, _)) => turn.client_gone(ClientId {
                        via: Via::Tcp,
                        addr: src,
                    }),
                    Some((kind, src, data)) => {
                        let via = if kind == FROM_TCP { Via::Tcp } else { Via::Udp };
                        turn.handle_client(now, ClientId { via, addr: src }, data);
                    }
                    None => {}
                }
                drain(&mut turn, &mut io, rdv, shared);
            }
            io.flush(shared);
        }
        for (port, _) in ports.iter().zip(&ready[1..]).filter(|(_, r)| **r) {
            for _ in 0..READS_PER_ROUND {
                let Some(s) = io.sockets.get(port) else {
                    break;
                };
                let (n, peer) = match s.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(_) => break,
                };
                turn.handle_peer(now, *port, peer, &buf[..n]);
                drain(&mut turn, &mut io, rdv, shared);
            }
        }
        if turn.poll_timeout().is_some_and(|t| t <= now) {
            turn.handle_timeout(now);
        }
        drain(&mut turn, &mut io, rdv, shared);
        io.flush(shared);
        if published.elapsed() >= STATS_EVERY {
            published = Instant::now();
            publish(&turn, shared);
        }
    }
    // SIGINT/SIGTERM: the allocations end with the server, and the statistics say so.
    turn.shutdown();
    drain(&mut turn, &mut io, rdv, shared);
    io.flush(shared);
    publish(&turn, shared);
}

fn publish(turn: &TurnServer, shared: &RelayShared) {
    shared.active.store(turn.active(), Ordering::Relaxed);
    if let Ok(mut s) = shared.stats.lock() {
        *s = Some(*turn.stats());
    }
}

/// The relay thread's sockets: one per relay port, and the primary one toward clients, whose
/// datagrams go out in batches (`sendmmsg`): a relayed stream is mostly ChannelData toward
/// clients, one system call per datagram otherwise.
struct RelayIo<'a> {
    sockets: HashMap<u16, UdpSocket>,
    primary: &'a UdpSocket,
    relay_ip: IpAddr,
    to_clients: SendBatch,
}

impl RelayIo<'_> {
    fn send_to_client(&mut self, payload: &[u8], to: SocketAddr, shared: &RelayShared) {
        if !self.to_clients.push(payload, to) {
            self.flush(shared);
            self.to_clients.push(payload, to);
        }
    }

    fn flush(&mut self, shared: &RelayShared) {
        if self.to_clients.is_empty() {
            return;
        }
        let (_, failed, err) = self.to_clients.flush(self.primary);
        if failed > 0 {
            shared
                .send_errors
                .fetch_add(failed as u64, Ordering::Relaxed);
            debug!(failed, error = ?err, "relay sends to clients failed");
        }
    }
}

/// Carries out what the machine asks: sockets to open and close, datagrams to send (those
/// to clients over UDP wait in the batch for [`RelayIo::flush`]).
fn drain(
    turn: &mut TurnServer,
    io: &mut RelayIo<'_>,
    rdv: &RendezvousService,
    shared: &RelayShared,
) {
    loop {
        let mut moved = false;
        while let Some(ev) = turn.poll_event() {
            moved = true;
            match ev {
                RelayEvent::Open { port } => {
                    let result = match bind_relay(io.relay_ip, port) {
                        Ok(s) => {
                            io.sockets.insert(port, s);
                            Ok(())
                        }
                        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(OpenError::InUse),
                        Err(e) => {
                            debug!(port, error = %e, "cannot open a relay socket");
                            Err(OpenError::Failed)
                        }
                    };
                    turn.relay_opened(Instant::now(), port, result);
                }
                RelayEvent::Close { port } => {
                    io.sockets.remove(&port);
                }
                RelayEvent::Lookup { session } => {
                    let now = Instant::now();
                    let info = rdv
                        .session_info(now, &session)
                        .map(|(key, members)| SessionInfo { key, members });
                    turn.session_found(now, &session, info);
                }
            }
        }
        while let Some(tx) = turn.poll_transmit() {
            moved = true;
            let sent = match tx.from {
                Source::Primary(Via::Udp) => {
                    io.send_to_client(&tx.payload, tx.to, shared);
                    continue;
                }
                // A reader that does not keep up holds the relay thread up to the connection's
                // write timeout, once: a failed write may have left part of a frame on the
                // stream, so the connection is shut down, which ends its allocation.
                Source::Primary(Via::Tcp) => match shared.tcp.lock() {
                    Ok(mut conns) => match conns.get(&tx.to) {
                        Some(mut s) => {
                            let r = s.write_all(&tx.payload).map(|()| tx.payload.len());
                            if r.is_err() {
                                if let Some(s) = conns.remove(&tx.to) {
                                    let _ = s.shutdown(std::net::Shutdown::Both);
                                }
                            }
                            r
                        }
                        None => continue,
                    },
                    Err(_) => continue,
                },
                Source::Relay(port) => match io.sockets.get(&port) {
                    Some(s) => s.send_to(&tx.payload, tx.to),
                    None => continue,
                },
            };
            if let Err(e) = sent {
                shared.send_errors.fetch_add(1, Ordering::Relaxed);
                debug!(to = %tx.to, error = %e, "relay send failed");
            }
        }
        if !moved {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_records_round_trip_and_junk_is_refused() {
        let (tx, rx) = queue::pair(1 << 16).unwrap();
        let fwd = Forwarder {
            tx,
            dropped: AtomicU64::new(0),
        };
        let v4 = SocketAddr::from(([198, 51, 100, 7], 40000));
        let v6 = SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 7], 40001));
        fwd.forward(v4, false, b"udp");
        fwd.forward(v6, true, b"tcp");
        fwd.tcp_gone(v4);
        let mut buf = [0u8; 64];
        let mut next = || {
            let n = rx.recv(&mut buf).unwrap();
            let (k, a, d) = unwrap_forwarded(&buf[..n]).unwrap();
            (k, a, d.to_vec())
        };
        assert_eq!(next(), (0, v4, b"udp".to_vec()));
        assert_eq!(next(), (FROM_TCP, v6, b"tcp".to_vec()));
        assert_eq!(next(), (TCP_GONE, v4, Vec::new()));
        assert_eq!(fwd.dropped.load(Ordering::Relaxed), 0);
        for junk in [&[][..], &[4, 1, 2], &[5, 0, 0, 0, 0, 0, 0], &[6; 10]] {
            assert!(unwrap_forwarded(junk).is_none(), "{junk:?}");
        }
    }
}

//! The TCP side: one accept thread per endpoint, one bounded thread per connection, and
//! the CONNECT-BACK connections the TCP filtering test asks for (docs/connect-back.md).

use super::bind::new_socket;
use super::tcp_rdv::{RdvParts, RdvTcp};
use super::*;
use crate::core::rendezvous::{may_be_stream_frame, stream_frame_len, StreamFrame};
use crate::core::server::{ConnectBack, DropReason, EndpointId, Outcome, ServerConfig, StunServer};
use crate::core::stun::{attr_type, frame_len, Message};
use crate::core::turn::TurnServer;
use socket2::{Protocol, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Waits until `l` has a connection to accept or `timeout` passes.
pub(super) fn wait_acceptable(l: &TcpListener, timeout: Duration) -> io::Result<bool> {
    crate::os::poll::wait_readable(l.as_fd(), timeout)
}

/// Decrements the open-connection count however the connection thread ends.
pub(super) struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.tcp_active.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) fn accept_loop(
    id: EndpointId,
    listener: TcpListener,
    cfg: ServerConfig,
    stop: &Stop,
    shared: &Arc<Shared>,
    rdv: Option<RdvParts>,
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
            let rdv = rdv.clone();
            let spawned = start(format!("tcp {peer}"), move || {
                let _slot = slot;
                let rdv = rdv.as_ref().and_then(|(service, udp)| {
                    Some(RdvTcp {
                        service,
                        conns: &shared2.rdv_tcp,
                        udp: udp.first()?.first()?,
                    })
                });
                serve_connection(id, stream, peer, cfg, &stop, &shared2, rdv.as_ref());
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
pub(super) fn reap(conns: &mut Vec<JoinHandle<()>>, shared: &Shared) {
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
pub(super) enum Close {
    Eof,
    Idle,
    NotStun,
    TooLong(usize),
    Malformed,
    Io(io::ErrorKind),
    Shutdown,
}

pub(super) fn serve_connection(
    id: EndpointId,
    mut stream: TcpStream,
    peer: SocketAddr,
    cfg: ServerConfig,
    stop: &Stop,
    shared: &Shared,
    rdv: Option<&RdvTcp<'_>>,
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
    // No limiter: TCP sources cannot be spoofed, so `--per-source-limit` is UDP's only, and a
    // limiter of its own would cost every connection a 512 KiB table.
    let mut server = StunServer::with_limiter(cfg.clone(), None);
    // `--relay`: TURN frames on the primary port go to the TURN machine, which answers on a
    // second handle of this stream, registered at the first TURN frame (RFC 8656 section 3.1).
    let relay = shared.relay.as_ref().filter(|_| id == EndpointId::PRIMARY);
    let mut turn_half = relay.and_then(|_| stream.try_clone().ok());
    let mut buf = vec![
        0u8;
        if relay.is_some() {
            TURN_TCP_MAX_FRAME
        } else {
            TCP_MAX_FRAME
        }
    ];
    let mut have = 0;
    let mut out = Vec::with_capacity(256);
    let mut last_input = Instant::now();
    let mut backs = ConnectBacks::new(shared);
    let mut pending: Vec<PendingBack<'_>> = Vec::new();
    let rdv_half = rdv.and_then(|_| stream.try_clone().ok());
    let why = loop {
        let mut to_rdv = |frame: &[u8]| {
            if let (Some(r), Some(s)) = (rdv, rdv_half.as_ref()) {
                r.handle(peer, s, frame);
            }
        };
        let mut to_relay = |frame: &[u8]| {
            let Some((fwd, rs)) = relay else {
                return;
            };
            if let Some(s) = turn_half.take() {
                if let Ok(mut conns) = rs.tcp.lock() {
                    conns.insert(peer, s);
                }
            }
            fwd.forward(peer, true, frame);
        };
        let (used, closed) = serve_frames(
            &mut server,
            id,
            peer,
            &buf[..have],
            &mut out,
            &mut stream,
            &mut backs,
            relay.map(|_| &mut to_relay as ToRelay<'_>),
            rdv.map(|_| &mut to_rdv as ToRelay<'_>),
        );
        shared.tcp.at(id).drain_from(&mut server.stats);
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
                // An allocation's client may stay quiet between refreshes.
                let idle = if turn_half.is_none() && relay.is_some() {
                    TURN_TCP_IDLE_TIMEOUT
                } else {
                    TCP_IDLE_TIMEOUT
                };
                if last_input.elapsed() >= idle {
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
    if let Some(r) = rdv {
        r.conns.remove(peer);
    }
    if let Some((fwd, rs)) = relay.filter(|_| turn_half.is_none()) {
        if let Ok(mut conns) = rs.tcp.lock() {
            conns.remove(&peer);
        }
        fwd.tcp_gone(peer);
    }
    // A client may close as soon as it has its answer; its SYN keeps its one retransmission.
    while !pending.is_empty() && !stop.requested() {
        thread::sleep(Duration::from_millis(50));
        reap_connect_backs(&mut pending);
    }
}

/// The CONNECT-BACKs of one connection: how many it may still ask for, and those asked for
/// by the frames just answered, each holding one of the server's [`MAX_CONNECT_BACKS`] slots.
pub(super) struct ConnectBacks<'a> {
    shared: &'a Shared,
    left: usize,
    asked: Vec<(ConnectBack, BackSlot<'a>)>,
}

/// One of the server-wide connect-back slots, given back on drop.
pub(super) struct BackSlot<'a>(&'a AtomicUsize);

impl Drop for BackSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<'a> ConnectBacks<'a> {
    pub(super) fn new(shared: &'a Shared) -> Self {
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
pub(super) struct PendingBack<'a> {
    sock: Socket,
    from: SocketAddr,
    to: SocketAddr,
    until: Instant,
    _slot: BackSlot<'a>,
}

/// Sends the SYN: a non-blocking connect from `from` (the endpoint's own address and port,
/// shared with its listener through SO_REUSEPORT) to `to`.
pub(super) fn open_connect_back(from: SocketAddr, to: SocketAddr) -> io::Result<Socket> {
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
pub(super) fn reap_connect_backs(pending: &mut Vec<PendingBack<'_>>) {
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

/// Where TURN frames go (`--relay`): feeds one frame to the TURN machine.
pub(super) type ToRelay<'f> = &'f mut dyn FnMut(&[u8]);

/// Answers every complete message at the start of `input` (RFC 8489 section 6.2.2: over TCP
/// the STUN header's length field is the framing). With `turn` (`--relay`, primary endpoint)
/// TURN frames -- ChannelData and STUN methods other than Binding, framed per RFC 8656
/// section 12.5 -- go to it instead, and with `rdv` (primary endpoint) rendezvous frames
/// (docs/rendezvous.md, "Over TCP") go to it. Returns how many bytes were consumed and whether the
/// connection must close.
#[allow(clippy::too_many_arguments)]
pub(super) fn serve_frames<'a>(
    server: &mut StunServer,
    id: EndpointId,
    peer: SocketAddr,
    input: &[u8],
    out: &mut Vec<u8>,
    stream: &mut impl Write,
    backs: &mut ConnectBacks<'a>,
    mut turn: Option<ToRelay<'_>>,
    mut rdv: Option<ToRelay<'_>>,
) -> (usize, Option<Close>) {
    let mut used = 0;
    loop {
        let rest = &input[used..];
        if rest.is_empty() {
            return (used, None);
        }
        // Before the TURN check: the magic's first byte has the top bits 01, like ChannelData.
        if let Some(f) = rdv.as_mut().filter(|_| may_be_stream_frame(rest)) {
            match stream_frame_len(rest) {
                StreamFrame::Incomplete => return (used, None),
                StreamFrame::Complete(n) => {
                    f(&rest[..n]);
                    used += n;
                    continue;
                }
                StreamFrame::Invalid => return (used, Some(Close::Malformed)),
            }
        }
        let is_turn = turn.is_some() && TurnServer::is_turn(rest);
        // RFC 8489 section 5: the two top bits of a STUN message are zero. Checked on the first
        // byte so junk is refused before 4 bytes arrive.
        if rest[0] & 0xc0 != 0 && !is_turn {
            return (used, Some(Close::NotStun));
        }
        let (len, max) = if is_turn {
            (frame_len(rest), TURN_TCP_MAX_FRAME)
        } else {
            (Message::frame_len(rest), TCP_MAX_FRAME)
        };
        let Some(len) = len else {
            return (used, None);
        };
        if len > max {
            return (used, Some(Close::TooLong(len)));
        }
        if rest.len() < len {
            return (used, None);
        }
        if let Some(f) = turn.as_mut().filter(|_| is_turn) {
            f(&rest[..len]);
            used += len;
            continue;
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
pub(super) mod tests {
    use super::*;
    use crate::core::stun::{Encoder, MessageType, TransactionId};
    use std::net::IpAddr;

    pub(in crate::driver::serve) fn server() -> StunServer {
        StunServer::new(
            ServerConfig {
                ip: IpAddr::from([127, 0, 0, 1]),
                alt_ip: None,
                port: 3478,
                alt_port: 3479,
                software: None,
                per_source_limit: None,
                seed: 0,
            },
            Instant::now(),
        )
    }

    pub(in crate::driver::serve) fn request() -> Vec<u8> {
        let mut v = Vec::new();
        Encoder::new(
            &mut v,
            MessageType::BINDING_REQUEST,
            TransactionId::random(&mut rand::rng()),
        );
        v
    }

    pub(in crate::driver::serve) const PEER: SocketAddr =
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
                None,
                None,
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
                None,
                None,
            );
            assert_eq!((used2, close2), (rest.len(), None));
            assert_eq!(s.stats.success, 2, "cut at {cut}");
            let first = Message::frame_len(&wire).unwrap();
            Message::parse(&wire[..first]).unwrap();
            Message::parse(&wire[first..]).unwrap();
        }
    }

    #[test]
    fn turn_frames_go_to_the_relay_and_binding_to_stun() {
        use crate::core::stun::{ChannelData, Class, Method};
        let mut alloc = Vec::new();
        let mt = MessageType {
            method: Method::Allocate,
            class: Class::Request,
        };
        Encoder::new(&mut alloc, mt, TransactionId::random(&mut rand::rng()));
        let mut cd = Vec::new();
        ChannelData::encode(0x4000, b"abcde", true, &mut cd);
        let input = [alloc.clone(), request(), cd.clone()].concat();
        for cut in [input.len(), alloc.len() + 2, input.len() - 3] {
            let mut s = server();
            let (mut out, mut wire) = (Vec::new(), Vec::new());
            let mut frames: Vec<Vec<u8>> = Vec::new();
            let mut to_relay = |f: &[u8]| frames.push(f.to_vec());
            let r = serve_frames(
                &mut s,
                EndpointId::PRIMARY,
                PEER,
                &input[..cut],
                &mut out,
                &mut wire,
                &mut ConnectBacks::new(&Shared::default()),
                Some(&mut to_relay),
                None,
            );
            assert_eq!(r.1, None, "cut {cut}");
            // Only whole frames are taken; a cut one waits for the rest.
            let want = [alloc.clone(), cd.clone()];
            assert!(want.starts_with(&frames), "cut {cut}: {frames:?}");
            if cut == input.len() {
                assert_eq!(r.0, input.len());
                assert_eq!(frames.len(), 2);
                assert_eq!(s.stats.success, 1, "the Binding went to STUN");
            } else {
                assert!(r.0 < input.len());
            }
        }
        // Without a relay, ChannelData is junk on a STUN connection.
        let mut s = server();
        let (mut out, mut wire) = (Vec::new(), Vec::new());
        let r = serve_frames(
            &mut s,
            EndpointId::PRIMARY,
            PEER,
            &cd,
            &mut out,
            &mut wire,
            &mut ConnectBacks::new(&Shared::default()),
            None,
            None,
        );
        assert_eq!(r, (0, Some(Close::NotStun)));
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
            None,
            None,
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
            None,
            None,
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
            None,
            None,
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
            None,
            None,
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
            None,
            None,
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
            None,
            None,
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
            None,
            None,
        );
        assert_eq!(r, (input.len(), None));
        assert_eq!(s.stats.not_request, 1);
        assert_eq!(s.stats.success, 1);
    }
}

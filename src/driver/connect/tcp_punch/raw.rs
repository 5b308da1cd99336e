//! `connect --tcp --syn-engine raw`: the punch as crafted segments. The sans-IO engine
//! ([`RawPunch`]) decides every SYN and SYN-ACK; this loop sends them on one raw socket
//! ([`RawTcpSender`]), feeds it what the AF_PACKET watcher sees, and turns each finished
//! handshake into a kernel socket with TCP_REPAIR ([`crate::os::tcp_repair`]), which then
//! takes the same TLS and commitment path as the kernel engine's connections. The TLS
//! client's session is made before the punch so that its hello can ride in the SYNs to the
//! predicted port; the socket on that 4-tuple continues it ([`PreparedClient`]).
//!
//! The punch port is held by a socket bound to it (SO_REUSEADDR/SO_REUSEPORT, not listening)
//! so that no other program takes it. Nothing listens on it: a listening socket would answer
//! the peer's SYN with a SYN-ACK of the kernel's own ISN, not the one the NATs saw. The kernel
//! therefore answers the peer's SYN and SYN-ACK with a RST, which the punch's nft rule drops
//! (it drops every RST of this host's to the peer while the punch runs).

use super::{Connection, PunchEnd, PunchLoop, PunchSetup, Turn, TICK};
use crate::core::punch::tcp::first_flight::FirstFlight;
use crate::core::punch::tcp::raw::{RawConfig, RawPunch};
use crate::core::wire::{self, Seen, Segment};
use crate::driver::tcp_stun;
use crate::os::packet::Packet;
use crate::os::rawtcp::RawTcpSender;
use crate::os::signals::Shutdown;
use crate::transport::tls::PreparedClient;
use crate::transport::Role;
use crate::Error;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::Instant;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// `--syn-engine`: who sends the punch's SYNs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SynEngine {
    /// A kernel socket per attempt.
    Kernel,
    /// Crafted segments on a raw socket, TCP_REPAIR for the connection.
    #[default]
    Raw,
}

/// Linux's defaults for a SYN on an Ethernet path: MSS 1460, window 64240 (44 segments),
/// window scale 7. The TCP_REPAIR socket continues with what was negotiated. The MSS is the
/// path's instead where its MTU is known ([`mss_for`]).
const MSS: u16 = 1460;
const WINDOW: u16 = 64240;
const WSCALE: u8 = 7;
const TTL: u8 = 64;

/// The engine for `setup`, when the raw engine takes this punch (IPv4, not the spraying side
/// of a sweep, which stays with kernel sockets: see [`crate::core::punch::tcp::raw`]), and the
/// TLS client's session whose ClientHello its SYNs to the predicted port carry.
pub(super) fn engine(
    setup: &PunchSetup,
    on_status: &mut dyn FnMut(String),
) -> Option<(RawPunch, Option<PreparedClient>)> {
    let IpAddr::V4(local_ip) = setup.local.ip() else {
        return None;
    };
    if setup.plan.fresh_ports() {
        return None;
    }
    let mss = mss_for(crate::os::udp::path_mtu(
        IpAddr::V4(local_ip),
        setup.peer_ip,
    ));
    let hello = hello_for_syns(setup, mss, on_status);
    let engine = RawPunch::new(
        RawConfig {
            punch: setup.punch_config(),
            local_ip,
            rtt: setup.rtt,
            prime_ttl: setup.prime_ttl.map(|t| t.min(255) as u8),
            ttl: TTL,
            mss,
            wscale: WSCALE,
            window: WINDOW,
            first_copies: setup.first_syn_copies,
            syn_data: hello.as_ref().map(|h| h.hello.clone()).unwrap_or_default(),
        },
        setup.start,
    )?;
    Some((engine, hello))
}

/// The TLS client's session for the SYNs to the predicted port to carry its hello (a round
/// trip sooner than after the handshake: the peer's SYN-ACK brings the server's answer).
/// `None` for the server, without a predicted port, or when the hello would not fit in one
/// segment of `mss`.
fn hello_for_syns(
    setup: &PunchSetup,
    mss: u16,
    on_status: &mut dyn FnMut(String),
) -> Option<PreparedClient> {
    if setup.tls.role() != Role::Client || setup.peer_port == 0 {
        return None;
    }
    let prepared = setup
        .tls
        .prepare_client()
        .map_err(|e| tracing::debug!("no ClientHello for the SYNs: {e}"))
        .ok()?;
    // Options take up to 20 bytes of the segment's MSS.
    if prepared.hello.len() + 20 > usize::from(mss) {
        return None;
    }
    on_status(format!(
        "our SYNs to the predicted port {} carry our TLS ClientHello ({} bytes)",
        setup.peer_port,
        prepared.hello.len()
    ));
    Some(prepared)
}

/// The MSS our SYNs announce: what the kernel's own SYN would (RFC 9293 section 3.7.1), the
/// path MTU less the IPv4 and TCP headers, so that a host whose link is narrower than
/// Ethernet's (a tunnel, a container network) is never sent segments its link drops; 1460
/// when the MTU is unknown.
fn mss_for(mtu: Option<u32>) -> u16 {
    mtu.map_or(MSS, |m| {
        u16::try_from(m.saturating_sub(40).clamp(536, 65_495)).unwrap_or(MSS)
    })
}

/// Opens the raw socket (needs CAP_NET_RAW, so before privileges are dropped).
pub fn open_sender() -> Result<RawTcpSender, Error> {
    RawTcpSender::open().map_err(|e| {
        Error::io(
            "cannot open the raw IPv4 socket that sends the crafted SYNs (needs CAP_NET_RAW); --syn-engine kernel needs none",
            e,
        )
    })
}

/// The raw punch loop; the kernel engine's [`PunchLoop`] carries the TLS handshakes.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    setup: &PunchSetup,
    mut engine: RawPunch,
    hello: Option<PreparedClient>,
    sender: &RawTcpSender,
    packets: &mut mpsc::UnboundedReceiver<Packet>,
    capture: &super::CaptureCell<'_>,
    shutdown: &Shutdown,
    on_status: &mut dyn FnMut(String),
) -> Result<Connection, PunchEnd> {
    // Held until the punch ends; the TCP_REPAIR sockets bind beside it.
    let _hold = tcp_stun::shared_port_socket(setup.local).map_err(|e| {
        PunchEnd::Setup(Error::io(
            format!("cannot hold the punch port {}", setup.local),
            e,
        ))
    })?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut l = PunchLoop::new(setup, tx);
    // The raw socket and the held port.
    l.sockets += 2;
    if engine.planner().aimless() {
        on_status("no SYN aims at the peer (its next TCP port cannot be predicted, or it connects to our port mapping); waiting out the budget for the peer's SYN".into());
    }
    on_status(format!(
        "raw SYN engine: every SYN from port {} with sequence number {}, repeated after {} ms",
        setup.local.port(),
        engine.isn(),
        setup.rtt.as_millis().max(25)
    ));
    let hard_stop = setup.start + setup.budget + super::TLS_TIMEOUT;
    let mut answered = Answered {
        hello,
        ..Answered::default()
    };
    let sweeping = setup.plan.sweeping();
    let mut next_progress = setup.start + super::PROGRESS;
    let mut send_errors = 0u64;
    let mut first = FirstFlight::new(setup.rtt);
    // A connection whose TLS is done but whose handshake finished from the peer's data, until
    // the peer acknowledges ours (`RawPunch::awaiting_ack_of_data`), with when that began.
    let mut held: Option<(Connection, Instant)> = None;
    let result = loop {
        if shutdown.requested() {
            break Err(PunchEnd::Interrupted);
        }
        let now = Instant::now();
        engine.handle_timeout(now);
        establish(
            &mut engine,
            sender,
            &mut send_errors,
            &mut l,
            &mut answered,
            &mut first,
            on_status,
        );
        repeat_first_data(&mut first, now, sender, on_status);
        if let Some((c, since)) = held.take() {
            let SocketAddr::V4(remote) = c.remote else {
                break Ok(c);
            };
            if !engine.awaiting_ack_of_data(remote) {
                break Ok(c);
            }
            if now < since + super::TLS_TIMEOUT {
                held = Some((c, since));
            } else {
                on_status(format!(
                    "the peer never acknowledged our data on {remote} (after its SYN-ACK went missing); closing that connection and punching on"
                ));
                engine.handle_closed(remote);
            }
        }
        if sweeping && now >= next_progress {
            next_progress = now + super::PROGRESS;
            on_status(format!(
                "sweep: {} SYNs to {} ports so far, {} refused",
                engine.syns,
                engine.planner().attempts,
                engine.planner().refused + engine.planner().unreachable
            ));
        }
        if engine.planner().expired(now)
            && held.is_none()
            && ((l.handshakes == 0 && answered.waiting.is_empty()) || now >= hard_stop)
        {
            for remote in answered.waiting.keys() {
                on_status(format!(
                    "the peer never showed that our SYN-ACK to {remote} arrived ({} SYN-ACKs sent in all, repeated at the round trip); its NAT may drop them",
                    engine.synacks
                ));
            }
            for remote in &answered.early {
                on_status(format!(
                    "the peer never showed that our SYN-ACK to {remote} arrived (our first data went right behind it, so our SYN was repeated at the round trip instead); its NAT may drop them"
                ));
            }
            let p = engine.planner();
            let mut end = l.exhausted();
            if let PunchEnd::Exhausted {
                attempts, refused, ..
            } = &mut end
            {
                *attempts = p.attempts;
                *refused = p.refused + p.unreachable;
            }
            if send_errors > 0 {
                on_status(format!(
                    "{send_errors} crafted segment(s) could not be sent"
                ));
            }
            break Err(end);
        }
        let due = match (engine.poll_timeout(), first.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let wake = due.map_or(now + TICK, |t| t.min(now + TICK).max(now));
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            Some(p) = packets.recv() => {
                l.on_packet(&p, capture, on_status);
                if let Some(Seen::Tcp { src, dst, seq, ack, segment, .. }) = p.seen {
                    if p.outgoing {
                        let len = wire::tcp_payload_len(&p.data).unwrap_or(0);
                        first.on_sent(Instant::now(), dst, seq, len, &p.data);
                    } else if segment == Segment::Other {
                        first.on_ack(src, ack);
                    }
                }
                if let (false, Some(s)) = (p.outgoing, &p.seen) {
                    let payload = wire::tcp_payload(&p.data).unwrap_or_default();
                    engine.handle_seen_with(Instant::now(), s, payload);
                    if let Some(rtt) = engine.rtt_sample() {
                        first.sampled(rtt);
                    }
                    // A SYN-ACK to the peer's SYN goes out now, not at the next tick.
                    establish(&mut engine, sender, &mut send_errors, &mut l, &mut answered, &mut first, on_status);
                }
            }
            Some(ev) = rx.recv() => {
                if let Turn::Done(r) = l.on_event(ev, on_status).await {
                    match r.map(|mut c| {
                        c.attempts = engine.planner().attempts;
                        c
                    }) {
                        Ok(c) if matches!(c.remote, SocketAddr::V4(v) if engine.awaiting_ack_of_data(v)) => {
                            on_status(format!(
                                "TLS done with {}, whose SYN-ACK never reached us (the handshake finished from its data); waiting for it to acknowledge our data, which our NAT may drop until we answer the peer's repeated SYN",
                                c.remote
                            ));
                            held = Some((c, Instant::now()));
                        }
                        r => break r,
                    }
                }
            }
        }
    };
    l.abort_all();
    result
}

/// Sockets built from a SYN we answered, before the peer showed it has our SYN-ACK.
#[derive(Default)]
struct Answered {
    /// Silent until then (the TLS server's; see [`RawPunch`]'s documentation).
    waiting: HashMap<SocketAddrV4, TcpStream>,
    /// Already speaking: the TLS client's, whose first flight left with our SYN-ACK, and the
    /// server's that took the client's hello from its SYN.
    early: HashSet<SocketAddrV4>,
    /// The TLS client's session whose hello our SYNs to the predicted port carried, until the
    /// socket on that 4-tuple takes it.
    hello: Option<PreparedClient>,
}

/// Sends the copies of first data that are due ([`FirstFlight`]), with their checksums
/// computed (the captured segment may have left that to the interface).
fn repeat_first_data(
    first: &mut FirstFlight,
    now: Instant,
    sender: &RawTcpSender,
    on_status: &mut dyn FnMut(String),
) {
    while let Some((to, packet, after)) = first.poll_repeat(now) {
        let (SocketAddr::V4(dst), Some(packet)) = (to, wire::with_tcp_checksum_v4(&packet)) else {
            continue;
        };
        match sender.send_bytes(&packet, dst) {
            Ok(()) => on_status(format!(
                "no ACK yet for our first data to {to} after {} ms: sent it again from the raw socket (the repaired socket's own first timeout is 1 s)",
                after.as_millis()
            )),
            Err(e) => tracing::debug!("copy of our first data to {to} not sent: {e}"),
        }
    }
}

fn flush(engine: &mut RawPunch, sender: &RawTcpSender, errors: &mut u64) {
    while let Some(c) = engine.poll_transmit() {
        let payload = if c.data { engine.syn_data() } else { &[] };
        if let Err(e) = sender.send_with(&c, payload) {
            *errors += 1;
            tracing::debug!("crafted {:?} to {} not sent: {e}", c.flags, c.dst);
        }
    }
}

/// Each finished handshake becomes a kernel socket in the sequence space the NATs saw, and
/// goes to TLS: at once after the peer's SYN-ACK; when we answered its SYN, the TLS client's
/// at once too (its first flight then follows our SYN-ACK, and is sent again when the peer's
/// confirmation shows it may have come before the peer's socket), the server's after the
/// peer's confirmation (until then it waits in `Answered::waiting`, sending nothing). Then
/// the engine's queued segments go out.
///
/// The sockets come first: the handshake's third segment is queued with its socket, and the
/// peer's first data (its TLS ClientHello) follows it within a round trip -- on a short path
/// sooner than TCP_REPAIR makes the socket (about half a millisecond here), and a segment that
/// finds no socket is lost to this host's RST (dropped by the nft rule), so the stream waited
/// out the peer's retransmission timeout (200 ms) before TLS could go on (seen in the lab at
/// 0 ms, one try in about twenty). The socket's window probe then goes before the third
/// segment, which a peer in SYN-RECEIVED answers with an ACK and otherwise ignores (RFC 9293
/// section 3.10.7.4), as it would after it.
fn establish(
    engine: &mut RawPunch,
    sender: &RawTcpSender,
    send_errors: &mut u64,
    l: &mut PunchLoop<'_>,
    answered: &mut Answered,
    first: &mut FirstFlight,
    on_status: &mut dyn FnMut(String),
) {
    fn up(
        l: &mut PunchLoop<'_>,
        first: &mut FirstFlight,
        (s, remote, prepared): (TcpStream, SocketAddrV4, Option<PreparedClient>),
        on_status: &mut dyn FnMut(String),
    ) {
        on_status(format!(
            "TCP connection up with {remote} (crafted handshake); authenticating (TLS)"
        ));
        first.watch(SocketAddr::V4(remote));
        l.came_up += 1;
        l.spawn_tls_prepared(s, None, prepared);
    }
    let mut ready = Vec::new();
    while let Some(e) = engine.poll_established() {
        l.sockets += 1;
        // Our SYNs on this 4-tuple carried the TLS client's hello: its session goes on here,
        // and the socket sends the hello first unless the peer's SYN-ACK took it.
        let prepared = e.first_flight.and_then(|_| answered.hello.take());
        let stream = crate::os::tcp_repair::established(&e).and_then(|mut s| {
            if let (Some(false), Some(p)) = (e.first_flight, &prepared) {
                std::io::Write::write_all(&mut s, &p.hello)?;
            }
            s.set_nonblocking(true)?;
            TcpStream::from_std(s)
        });
        // The server that took the client's hello from its SYN answers at once too.
        let speaks = l.setup.tls.role() == Role::Client || !e.received.is_empty();
        match stream {
            // The TLS client's first flight leaves with our answer to the peer's SYN, a round
            // trip sooner than after the peer's confirmation; the server only listens, unless
            // it has the client's hello. The engine says when the peer's confirmation calls
            // for that flight again.
            Ok(s) if e.awaiting_peer && speaks => {
                engine.sending_early(e.remote);
                answered.early.insert(e.remote);
                ready.push((s, e.remote, prepared));
            }
            Ok(s) if e.awaiting_peer => {
                tracing::debug!(
                    "answered the SYN from {}; waiting for the peer to show it has our SYN-ACK",
                    e.remote
                );
                answered.waiting.insert(e.remote, s);
            }
            Ok(s) => ready.push((s, e.remote, prepared)),
            Err(err) => {
                on_status(format!(
                    "the handshake with {} finished, but its socket could not be made (TCP_REPAIR needs CAP_NET_ADMIN): {err}",
                    e.remote
                ));
                engine.handle_closed(e.remote);
            }
        }
    }
    flush(engine, sender, send_errors);
    for r in ready {
        up(l, first, r, on_status);
    }
    while let Some(remote) = engine.poll_confirmed() {
        answered.early.remove(&remote);
        if let Some(s) = answered.waiting.remove(&remote) {
            up(l, first, (s, remote, None), on_status);
        }
    }
    while let Some(remote) = engine.poll_data_again() {
        first.again_now(Instant::now(), SocketAddr::V4(remote));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tunnel's or a container's narrower link shows in the MSS; no MTU gives Ethernet's.
    #[test]
    fn the_mss_is_the_path_mtu_less_the_headers() {
        assert_eq!(mss_for(Some(1500)), 1460);
        assert_eq!(mss_for(Some(1420)), 1380);
        assert_eq!(mss_for(Some(9000)), 8960);
        assert_eq!(mss_for(Some(100)), 536);
        assert_eq!(mss_for(None), 1460);
    }
}

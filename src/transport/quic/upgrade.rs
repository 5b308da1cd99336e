//! Relay first, then direct: the socket quinn runs on while a punch may still open a direct
//! path. It starts as the relayed socket (`super::relayed`); once the punch hands over its
//! socket ([`Upgrade::install`]) every datagram goes out on the direct path, and what comes
//! in there from the punched peer endpoint is handed up as if it came from the peer's relayed
//! address. quinn sees one path and one peer address throughout, so the switch costs its
//! stream nothing: QUIC already retransmits what a path loses and puts bytes in order.
//!
//! The direct path is watched with small probes of our own while it carries the stream, as
//! ICE's consent freshness does (RFC 7675), but at the pace of the path's measured round
//! trip: a probe goes out at most once per round trip (at least [`MIN_PROBE_EVERY`] apart)
//! when quinn sends, the peer's socket answers it at once, and when no answer came for
//! [`DEAD_AFTER_RTTS`] round trips (at least [`MIN_DEAD_AFTER`]) the path is given up and
//! everything goes through the relay again. A probe is 12 bytes: the magic `PRPB` (answer
//! `PRPA`) and a nonce, shorter than any QUIC packet, so neither side mistakes it for one.

use super::gso::GsoGate;
use super::pace::Pace;
use super::relayed::RelayedSocket;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

const PROBE: &[u8; 4] = b"PRPB";
const ANSWER: &[u8; 4] = b"PRPA";
const PROBE_LEN: usize = 12;
/// Probes closer together than this would only add packets: a path that answers within it
/// is judged by the next probe anyway.
pub const MIN_PROBE_EVERY: Duration = Duration::from_millis(100);
/// Round trips without an answer before the direct path counts as gone.
pub const DEAD_AFTER_RTTS: u32 = 6;
/// The shortest silence that gives the path up, whatever its round trip: a scheduling hiccup
/// on either host must not send the stream back to the relay.
pub const MIN_DEAD_AFTER: Duration = Duration::from_millis(1000);

/// The punched socket and the peer's endpoint on it.
pub struct DirectPath {
    /// The socket the punch succeeded on, handed over to the stream.
    pub socket: UdpSocket,
    /// The peer's punched endpoint (address and port as seen from our side).
    pub remote: SocketAddr,
}

/// A change of the path the stream's datagrams take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathChange {
    /// Our datagrams go to the peer's punched endpoint from now on.
    Direct {
        /// The peer's punched endpoint.
        remote: SocketAddr,
    },
    /// The direct path stopped answering for `silent`; back through the relay.
    Relay {
        /// How long the direct path had been silent when it was given up.
        silent: Duration,
    },
}

type OnChange = Box<dyn Fn(PathChange) + Send + Sync>;

/// The handover point between the punch and the stream.
pub struct Upgrade {
    state: Mutex<State>,
    on_change: OnChange,
}

struct State {
    /// Installed, not yet registered with the runtime (that needs its reactor).
    pending: Option<DirectPath>,
    direct: Option<Direct>,
    /// quinn's receive task, woken when a direct path arrives so it polls that too.
    waker: Option<Waker>,
    /// The round trip the direct path starts from (the punch's view of it).
    rtt: Duration,
}

struct Direct {
    socket: Arc<dyn AsyncUdpSocket>,
    remote: SocketAddr,
    /// Given up: the relay carries everything again, for good.
    dead: bool,
    consent: Consent,
}

/// The direct path's probes and their answers, without I/O.
struct Consent {
    rtt: Duration,
    next_probe: Instant,
    /// Probes not answered yet, oldest first (nonce, sent). An answer to any of them shows
    /// the path alive and answers the older ones too: on a path whose round trip is as long
    /// as the probe interval, the answer to one probe comes after the next went out.
    outstanding: std::collections::VecDeque<(u64, Instant)>,
    next_nonce: u64,
}

/// Unanswered probes remembered; older ones only tell that the path was silent since then,
/// which the oldest remembered one tells as well.
const OUTSTANDING: usize = 64;

impl Consent {
    fn new(rtt: Duration, now: Instant, first_nonce: u64) -> Consent {
        Consent {
            rtt,
            next_probe: now,
            outstanding: std::collections::VecDeque::new(),
            next_nonce: first_nonce,
        }
    }

    fn probe_every(&self) -> Duration {
        self.rtt.max(MIN_PROBE_EVERY)
    }

    fn dead_after(&self) -> Duration {
        (self.rtt * DEAD_AFTER_RTTS).max(MIN_DEAD_AFTER)
    }

    /// Before a datagram goes out: `Err(silence)` when the path stopped answering, else the
    /// nonce of a probe to send now, if one is due.
    fn due(&mut self, now: Instant) -> Result<Option<u64>, Duration> {
        if let Some(&(_, since)) = self.outstanding.front() {
            let silent = now.saturating_duration_since(since);
            if silent > self.dead_after() {
                return Err(silent);
            }
        }
        if now < self.next_probe {
            return Ok(None);
        }
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        if self.outstanding.len() == OUTSTANDING {
            // Keep the oldest (the start of the silence); drop the one after it.
            self.outstanding.remove(1);
        }
        self.outstanding.push_back((nonce, now));
        self.next_probe = now + self.probe_every();
        Ok(Some(nonce))
    }

    /// The peer answered probe `nonce`: a round-trip sample, and the silence is over.
    fn answered(&mut self, nonce: u64, now: Instant) {
        let Some(i) = self.outstanding.iter().position(|&(n, _)| n == nonce) else {
            return;
        };
        self.rtt = now.saturating_duration_since(self.outstanding[i].1);
        self.outstanding.drain(..=i);
    }
}

impl Upgrade {
    /// `rtt` is the round trip to assume toward the peer until probes measure it;
    /// `on_change` hears every path change (from quinn's task: it must not block).
    pub fn new(rtt: Duration, on_change: OnChange) -> Arc<Upgrade> {
        Arc::new(Upgrade {
            state: Mutex::new(State {
                pending: None,
                direct: None,
                waker: None,
                rtt,
            }),
            on_change,
        })
    }

    /// Hands over the punched socket: the stream moves to it at its next datagram.
    pub fn install(&self, path: DirectPath) {
        let mut s = self.lock();
        s.pending = Some(path);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    /// Whether the stream's datagrams now take the direct path.
    pub fn is_direct(&self) -> bool {
        let s = self.lock();
        s.pending.is_some() || s.direct.as_ref().is_some_and(|d| !d.dead)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl State {
    /// Registers a freshly installed socket with the runtime (we are inside it here).
    fn take_pending(&mut self, gso_open: &Arc<AtomicBool>, pace: &Arc<Pace>) -> Option<PathChange> {
        let p = self.pending.take()?;
        let _ = p.socket.set_nonblocking(true);
        // As a punched socket's (`quic::run`): at the default buffer a fast stream overflows
        // the receiver's socket between two polls.
        super::grow_buffers(&p.socket, "direct");
        let inner = match TokioRuntime.wrap_udp_socket(p.socket) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("the punched socket cannot carry the stream: {e}");
                return None;
            }
        };
        self.direct = Some(Direct {
            // Paced like a punched socket, from the same bucket as the relay's leg.
            socket: GsoGate::new(inner, gso_open.clone(), Some(pace.clone())),
            remote: p.remote,
            dead: false,
            consent: Consent::new(self.rtt, Instant::now(), rand::random()),
        });
        Some(PathChange::Direct { remote: p.remote })
    }
}

impl Direct {
    fn send_small(&self, magic: &[u8; 4], nonce: u64) {
        let mut b = [0u8; PROBE_LEN];
        b[..4].copy_from_slice(magic);
        b[4..].copy_from_slice(&nonce.to_be_bytes());
        let t = Transmit {
            destination: self.remote,
            ecn: None,
            contents: &b,
            segment_size: None,
            src_ip: None,
        };
        // A probe the socket cannot take now is one unanswered probe, which is allowed.
        let _ = self.socket.try_send(&t);
    }

    /// Before a datagram goes out: a probe when one is due, and whether the path still
    /// answers (`Some` when it was just given up).
    fn check(&mut self, now: Instant) -> Option<PathChange> {
        match self.consent.due(now) {
            Err(silent) => {
                self.dead = true;
                Some(PathChange::Relay { silent })
            }
            Ok(Some(nonce)) => {
                self.send_small(PROBE, nonce);
                None
            }
            Ok(None) => None,
        }
    }

    /// A 12-byte datagram of ours from the peer: answered or counted; `false` when it is
    /// not one (a QUIC packet).
    fn small(&mut self, data: &[u8], now: Instant) -> bool {
        if data.len() != PROBE_LEN {
            return false;
        }
        let nonce = u64::from_be_bytes(data[4..].try_into().expect("12 - 4 bytes"));
        if &data[..4] == PROBE {
            self.send_small(ANSWER, nonce);
            true
        } else if &data[..4] == ANSWER {
            self.consent.answered(nonce, now);
            true
        } else {
            false
        }
    }
}

/// The socket quinn runs on: the relayed one, and the direct one once installed.
pub(super) struct SwitchingSocket {
    relay: Arc<RelayedSocket>,
    up: Arc<Upgrade>,
    /// The peer's relayed address: where quinn believes the peer is, on either path.
    peer: SocketAddr,
    gso_open: Arc<AtomicBool>,
    /// The connections' pacing, told of every path change (the controllers start over).
    pace: Arc<Pace>,
    /// Receive batch size of a UDP socket here (quinn sizes its buffers once, at the start).
    max_receive: usize,
    /// Which path is polled first, alternated so neither starves the other.
    direct_first: AtomicBool,
    /// The allocation went away under a direct stream (said once).
    relay_gone: AtomicBool,
}

impl SwitchingSocket {
    pub(super) fn new(
        relay: Arc<RelayedSocket>,
        up: Arc<Upgrade>,
        peer: SocketAddr,
        gso_open: Arc<AtomicBool>,
        pace: Arc<Pace>,
    ) -> io::Result<Arc<Self>> {
        // What a UDP socket of this host takes per receive call (GRO), learnt from one.
        let probe = TokioRuntime.wrap_udp_socket(UdpSocket::bind("0.0.0.0:0")?)?;
        Ok(Arc::new(SwitchingSocket {
            relay,
            up,
            peer,
            gso_open,
            pace,
            max_receive: probe.max_receive_segments(),
            direct_first: AtomicBool::new(true),
            relay_gone: AtomicBool::new(false),
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        let mut s = self.up.lock();
        if let Some(change) = s.take_pending(&self.gso_open, &self.pace) {
            self.changed(change);
        }
        s
    }

    fn changed(&self, change: PathChange) {
        self.pace.path_changed();
        (self.up.on_change)(change);
    }

    fn poll_direct(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.state();
        s.waker = Some(cx.waker().clone());
        let Some(d) = s.direct.as_mut() else {
            return Poll::Pending;
        };
        loop {
            let n = match d.socket.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => {
                    tracing::debug!("direct path receive: {e}");
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            };
            let now = Instant::now();
            let mut kept = 0;
            for i in 0..n {
                let len = meta[i].len;
                if meta[i].addr != d.remote || d.small(&bufs[i][..len], now) {
                    continue;
                }
                if kept != i {
                    let (to, from) = bufs.split_at_mut(i);
                    to[kept][..len].copy_from_slice(&from[0][..len]);
                    meta[kept] = meta[i];
                }
                meta[kept].addr = self.peer;
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }
}

impl SwitchingSocket {
    /// The relay's datagrams; once the allocation is gone that is an error for quinn only
    /// when no direct path carries the stream (the relay dying under a direct stream
    /// costs it nothing).
    fn poll_relay(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        match self.relay.poll_recv(cx, bufs, meta) {
            Poll::Ready(Err(e)) if self.up.is_direct() => {
                if !self.relay_gone.swap(true, Ordering::Relaxed) {
                    tracing::info!("the relay is gone ({e}); the direct path carries on");
                }
                Poll::Pending
            }
            r => r,
        }
    }
}

impl fmt::Debug for SwitchingSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwitchingSocket")
            .field("peer", &self.peer)
            .field("direct", &self.up.is_direct())
            .finish()
    }
}

impl AsyncUdpSocket for SwitchingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(SwitchPoller {
            relay: self.relay.clone().create_io_poller(),
            socket: self,
            direct: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let mut s = self.state();
        if let Some(d) = s.direct.as_mut().filter(|d| !d.dead) {
            match d.check(Instant::now()) {
                Some(change) => self.changed(change),
                None => {
                    return d.socket.try_send(&Transmit {
                        destination: d.remote,
                        ..*transmit
                    })
                }
            }
        }
        drop(s);
        self.relay.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let direct_first = !self.direct_first.fetch_xor(true, Ordering::Relaxed);
        if direct_first {
            if let Poll::Ready(r) = self.poll_direct(cx, bufs, meta) {
                return Poll::Ready(r);
            }
            self.poll_relay(cx, bufs, meta)
        } else {
            match self.poll_relay(cx, bufs, meta) {
                Poll::Pending => self.poll_direct(cx, bufs, meta),
                ready => ready,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.relay.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        match self.state().direct.as_ref().filter(|d| !d.dead) {
            Some(d) => d.socket.max_transmit_segments(),
            None => 1,
        }
    }

    fn max_receive_segments(&self) -> usize {
        self.max_receive
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

/// Writable when the path in use is, as that path's own poller says (both are paced).
struct SwitchPoller {
    socket: Arc<SwitchingSocket>,
    relay: Pin<Box<dyn UdpPoller>>,
    direct: Option<Pin<Box<dyn UdpPoller>>>,
}

impl fmt::Debug for SwitchPoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwitchPoller").finish()
    }
}

impl UdpPoller for SwitchPoller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        if self.direct.is_none() {
            let socket = self
                .socket
                .state()
                .direct
                .as_ref()
                .filter(|d| !d.dead)
                .map(|d| d.socket.clone());
            self.direct = socket.map(|s| s.create_io_poller());
        }
        let dead = self.socket.state().direct.as_ref().is_none_or(|d| d.dead);
        match self.direct.as_mut() {
            Some(p) if !dead => p.as_mut().poll_writable(cx),
            _ => self.relay.as_mut().poll_writable(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// The punched socket gets the receive buffer a punched socket gets when the stream starts
    /// on it (as root, the stream window's size): at the default ~200 KB a relay-first stream
    /// at 0 ms lost 10-30% of its packets to the receiver's socket once it went direct (lab,
    /// 256 MiB).
    #[test]
    fn the_direct_path_gets_the_streams_socket_buffer() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _inside = runtime.enter();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let same = socket.try_clone().unwrap();
        let fresh = UdpSocket::bind("127.0.0.1:0").unwrap();
        let wanted = crate::os::udp::grow_buffers(&fresh, super::super::SOCKET_BUFFER);
        let mut state = State {
            pending: Some(DirectPath {
                socket,
                remote: "127.0.0.1:9".parse().unwrap(),
            }),
            direct: None,
            waker: None,
            rtt: 10 * MS,
        };
        let change = state.take_pending(&Arc::new(AtomicBool::new(true)), &Pace::new());
        assert!(matches!(change, Some(PathChange::Direct { .. })));
        let granted = socket2::SockRef::from(&same).recv_buffer_size().unwrap();
        assert_eq!(granted, wanted);
    }

    /// A path whose round trip (150 ms) is as long as the probe interval: every answer comes
    /// after the next probe went out, and the path must still count as alive.
    #[test]
    fn answers_that_cross_the_next_probe_keep_the_path_alive() {
        let t0 = Instant::now();
        let mut c = Consent::new(150 * MS, t0, 7);
        let mut sent = Vec::new();
        for step in 0..100u32 {
            let now = t0 + step * 10 * MS;
            // Answers arrive 155 ms after their probe, after the next one went out.
            while let Some(&(n, at)) = sent.first() {
                if now < at + 155 * MS {
                    break;
                }
                c.answered(n, now);
                sent.remove(0);
            }
            match c.due(now) {
                Err(silent) => panic!("given up at {step} after {silent:?}"),
                Ok(Some(n)) => sent.push((n, now)),
                Ok(None) => {}
            }
        }
        assert!(c.rtt >= 150 * MS && c.rtt <= 170 * MS, "{:?}", c.rtt);
    }

    /// Silence: given up once no answer came for six round trips, and not before a second.
    #[test]
    fn silence_gives_the_path_up_after_six_round_trips_and_a_second_at_least() {
        for (rtt, after) in [(10 * MS, MIN_DEAD_AFTER), (400 * MS, 2400 * MS)] {
            let t0 = Instant::now();
            let mut c = Consent::new(rtt, t0, 0);
            let mut now = t0;
            let gave_up = loop {
                match c.due(now) {
                    Err(silent) => break silent,
                    Ok(_) => now += 5 * MS,
                }
                assert!(now < t0 + 10 * after, "never given up");
            };
            assert!(
                gave_up > after && gave_up <= after + 10 * MS,
                "{rtt:?}: {gave_up:?}"
            );
        }
    }

    /// One answer ends the silence; a late answer to a forgotten probe changes nothing.
    #[test]
    fn an_answer_ends_the_silence() {
        let t0 = Instant::now();
        let mut c = Consent::new(20 * MS, t0, 100);
        let first = c.due(t0).unwrap().expect("a probe at once");
        assert_eq!(
            c.due(t0 + MS).unwrap(),
            None,
            "not again before the interval"
        );
        let second = c.due(t0 + 200 * MS).unwrap().expect("the next probe");
        c.answered(second, t0 + 230 * MS);
        assert!(c.outstanding.is_empty(), "the older probe is answered too");
        c.answered(first, t0 + 240 * MS);
        assert_eq!(c.rtt, 30 * MS);
        assert!(
            c.due(t0 + 1500 * MS).is_ok(),
            "alive: the silence ended at 230 ms"
        );
    }
}

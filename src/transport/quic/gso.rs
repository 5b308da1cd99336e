//! Segmentation offload while the path stays clean.
//!
//! With GSO one `sendmsg` hands the kernel a burst of datagrams as one buffer, which is what
//! lets a QUIC stream approach a TCP one (measured in the lab: ~3x the throughput of one
//! datagram per call). But where that buffer crosses a NAT as one unit -- a Linux NAT on a
//! virtual link, as in containers and this project's lab -- a drop there loses the whole
//! burst, so random loss becomes burst loss that the congestion controller reads as heavy
//! congestion, and a 20% loss path crawled. So the path decides: the socket offers GSO while
//! the connections see (almost) no loss, and single datagrams after an interval with loss,
//! until the path has been clean for a while. quinn asks the socket for the largest burst
//! before every transmit, so the change takes effect at once.
//!
//! Loss while a connection still probes for the path's rate (BBR's STARTUP, `Pace::probing`)
//! does not count: that is the probe overrunning a queue, which ends with STARTUP, and on a
//! long path it lasts several intervals. Lab, 3 runs each: 100 Mbit/s each way under a 160 ms
//! RTT, 32 MiB, the switch had closed in 2 of 3 runs and stayed closed to the end, and the
//! sender spent 383-526 CPU ms; now it stays open, 363-390 ms, at the same 7.3-7.8 MiB/s; 40 ms
//! one way with 1% loss at each NAT, 64 MiB, 14.4-16.2 MiB/s and 799-940 CPU ms for both ends
//! before, 15.1-17.9 and 653-804 now; 20% loss at 0 ms still closes it.
//!
//! While the switch is open the socket also joins quinn's bursts into larger ones
//! ([`Joined`]): at 0 ms in the lab (two port-restricted cones, 256 MiB, 5 runs each,
//! alternating) the QUIC stream went from 342 to 413 MiB/s (medians) and the CPU time of both
//! peers from 1.42 to 1.13 s.

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::convert::Infallible;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use super::pace::{Pace, PacedPoller};

/// How often the connections' loss counters are read.
const INTERVAL: Duration = Duration::from_millis(250);
/// A clean stretch this long lets bursts out again.
const CLEAN_FOR: Duration = Duration::from_secs(5);

/// The socket quinn runs on, with the offload switch, joining quinn's bursts.
pub(super) struct GsoGate {
    inner: Arc<dyn AsyncUdpSocket>,
    open: Arc<AtomicBool>,
    /// Bursts not yet handed to the kernel; `None` where no runtime could take the flusher
    /// (every transmit then goes out as it comes).
    joined: Option<Joined>,
    /// The pacing of quinn's sends (`pace`), where there is one.
    pace: Option<Arc<Pace>>,
}

/// quinn (0.11) hands the socket at most ten datagrams per transmit, a fixed cap in its
/// connection driver, while one GSO `sendmsg` takes up to 64 KiB. Every `sendmsg` crosses the
/// whole stack (and, on a Linux NAT, its forwarding path) once, whatever its size: on the lab's
/// clean path the sender's kernel time was mostly that per-call cost (19,000 calls for
/// 256 MiB). So consecutive bursts to the same place are joined here, and what is joined goes
/// out when the driver yields -- after its own 20-datagram turn, or when it has nothing more
/// to send -- by a task that runs right behind it, or at once when the next burst would not
/// fit. The copy is of data the encryption just wrote (in cache), a fraction of the call it
/// saves.
struct Joined {
    pending: Mutex<Pending>,
    wake: Arc<Notify>,
}

/// One burst being joined: its datagrams back to back, all of `segment` bytes but the last.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    to: Option<(SocketAddr, Option<IpAddr>, Option<EcnCodepoint>)>,
    segment: usize,
}

/// The most one joined burst carries: the kernel's limit on a UDP GSO send (64 segments,
/// and a datagram's 64 KiB less the headers).
const JOINED_BYTES: usize = 65_000;
const JOINED_SEGMENTS: usize = 64;

impl Pending {
    fn takes(&self, t: &Transmit, segment: usize, most: usize) -> bool {
        self.to == Some((t.destination, t.src_ip, t.ecn))
            && self.segment == segment
            // Only a burst's last datagram may be short.
            && self.buf.len() % segment == 0
            && self.buf.len() + t.contents.len() <= JOINED_BYTES
            && (self.buf.len() + t.contents.len()).div_ceil(segment) <= most
    }

    fn transmit(&self) -> Option<Transmit<'_>> {
        let (destination, src_ip, ecn) = self.to?;
        Some(Transmit {
            destination,
            ecn,
            contents: &self.buf,
            segment_size: (self.buf.len() > self.segment).then_some(self.segment),
            src_ip,
        })
    }
}

impl GsoGate {
    /// `open` is the switch [`watch`] sets; `pace` paces quinn's sends.
    pub(super) fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        open: Arc<AtomicBool>,
        pace: Option<Arc<Pace>>,
    ) -> Arc<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let joined = runtime.as_ref().map(|_| Joined {
            pending: Mutex::new(Pending::default()),
            wake: Arc::new(Notify::new()),
        });
        let gate = Arc::new(GsoGate {
            inner,
            open,
            joined,
            pace,
        });
        if let (Some(runtime), Some(joined)) = (runtime, &gate.joined) {
            runtime.spawn(flusher(
                Arc::downgrade(&gate),
                joined.wake.clone(),
                gate.inner.clone().create_io_poller(),
            ));
        }
        gate
    }

    /// Hands the joined burst to the kernel. `WouldBlock` keeps it for the next try.
    fn flush(&self, pending: &mut Pending) -> io::Result<()> {
        let Some(t) = pending.transmit() else {
            return Ok(());
        };
        self.inner.try_send(&t)?;
        pending.buf.clear();
        pending.to = None;
        Ok(())
    }

    fn flush_now(&self) -> io::Result<()> {
        match &self.joined {
            Some(j) => self.flush(&mut j.pending.lock().unwrap_or_else(|e| e.into_inner())),
            None => Ok(()),
        }
    }

    /// Hands one of quinn's transmits on: joined to the burst being built while the switch is
    /// open, on its own when it is closed.
    fn send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(joined) = &self.joined else {
            return self.inner.try_send(transmit);
        };
        let mut pending = joined.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !self.open.load(Ordering::Relaxed) {
            // No bursts while the path loses packets: what is still joined goes first.
            self.flush(&mut pending)?;
            return self.inner.try_send(transmit);
        }
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        let most = self.inner.max_transmit_segments().min(JOINED_SEGMENTS);
        if !pending.takes(transmit, segment, most) {
            // Sent before this one, so the order stays; full socket: quinn tries this
            // transmit again once the socket is writable, after what is joined.
            self.flush(&mut pending)?;
            pending.to = Some((transmit.destination, transmit.src_ip, transmit.ecn));
            pending.segment = segment;
        }
        pending.buf.extend_from_slice(transmit.contents);
        if pending.buf.len() + segment > JOINED_BYTES {
            // Full: out now. A full socket leaves it to the flusher.
            match self.flush(&mut pending) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
        if pending.to.is_some() {
            joined.wake.notify_one();
        }
        Ok(())
    }
}

/// What is still joined when the endpoint lets go of the socket (a close sent just before the
/// runtime ends) goes out then, if the socket takes it.
impl Drop for GsoGate {
    fn drop(&mut self) {
        let _ = self.flush_now();
    }
}

/// Sends what was joined once the driver that queued it has yielded; waits for the socket
/// when it is full. Ends with the socket.
async fn flusher(gate: Weak<GsoGate>, wake: Arc<Notify>, mut writable: Pin<Box<dyn UdpPoller>>) {
    loop {
        wake.notified().await;
        // Let the connection driver, when it woke itself for another turn, add that turn.
        tokio::task::yield_now().await;
        loop {
            let Some(gate) = gate.upgrade() else { return };
            match gate.flush_now() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(gate);
                    if std::future::poll_fn(|cx| writable.as_mut().poll_writable(cx))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                // quinn-udp reports no other send error (it logs and drops them).
                _ => break,
            }
        }
    }
}

impl fmt::Debug for GsoGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GsoGate")
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish()
    }
}

impl AsyncUdpSocket for GsoGate {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        let inner = self.inner.clone().create_io_poller();
        match &self.pace {
            Some(pace) => Box::pin(PacedPoller::new(pace.clone(), inner)),
            None => inner,
        }
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.send(transmit)?;
        if let Some(pace) = &self.pace {
            pace.sent(Instant::now(), transmit.contents.len());
        }
        Ok(())
    }
    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        if !self.open.load(Ordering::Relaxed) {
            return 1;
        }
        let most = self.inner.max_transmit_segments();
        match &self.pace {
            Some(pace) => most.min(pace.max_segments()),
            None => most,
        }
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Lossy intervals in a row that close the switch. Random loss on the path shows in every
/// interval; a single burst does not, and closing on it halved a clean path's throughput for
/// the rest of the transfer (single datagrams cost twice the CPU per byte on both sides). Such
/// bursts: the receiver's socket buffer overflowing once while its runtime was busy, or the
/// first STARTUP overrunning a line's queue (lab, 1 Gbit/s line: ~2,500 packets lost within
/// ~10 ms, traced), which now and then straddles two intervals -- at two intervals the switch
/// then closed (one of ~15 runs: 7.8 instead of 2.6 CPU-s per GiB on the sender). Three
/// cannot be straddled by an episode shorter than an interval.
const LOSSY_INTERVALS: u32 = 3;
/// Packets an interval must have sent, without being lossy, to count as clean. A quiet
/// interval says nothing about the path: a connection stalled by loss sends next to nothing
/// and declares nothing lost until an acknowledgement arrives, and when such intervals
/// counted as clean they broke the lossy streak and reopened the switch, so a path losing 20%
/// kept sending bursts, lost them whole, and stalled for minutes (lab, one transfer in 16).
const BUSY: u64 = 20;

/// The switch's rule, from one interval's counts: closed by [`LOSSY_INTERVALS`] lossy
/// intervals in a row, lossy meaning more than one packet in a hundred declared lost (at
/// least two: one lost packet says nothing); open again once busy intervals (at least
/// [`BUSY`] packets sent) were clean for [`CLEAN_FOR`]. Quiet intervals change nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Policy {
    pub closed: bool,
    clean: Duration,
    lossy: u32,
}

impl Policy {
    /// `probing`: the loss may still be that of a connection probing for the path's rate
    /// (`Pace::probing`, [`probe_shows`]).
    pub(super) fn interval(&mut self, sent: u64, lost: u64, length: Duration, probing: bool) {
        let lossy = lost >= 2 && lost * 100 > sent;
        if lossy && probing {
            // STARTUP's overrun of a queue, which lasts a few round trips and then ends
            // with STARTUP: on a long path it spans more than [`LOSSY_INTERVALS`], and
            // closing on it left a clean path without bursts (lab, 100 Mbit/s, 160 ms RTT:
            // the sender spent ~30% more CPU for the same transfer).
            return;
        }
        if lossy {
            self.lossy += 1;
            self.clean = Duration::ZERO;
            if self.lossy >= LOSSY_INTERVALS {
                self.closed = true;
            }
        } else if sent >= BUSY {
            self.lossy = 0;
            self.clean += length;
            if self.closed && lost == 0 && self.clean >= CLEAN_FOR {
                self.closed = false;
            }
        }
    }
}

/// Whether the loss counted at `now` may still be a probe's, the probe last seen at
/// `last_probe`: for an interval after it, and for two round trips more, since a loss is
/// declared up to about a round trip after the packet left (RFC 9002 section 6.1), and the
/// probe's last round trip sent the most.
fn probe_shows(last_probe: Option<Instant>, now: Instant, rtt: Duration) -> bool {
    last_probe.is_some_and(|t| now.saturating_duration_since(t) <= INTERVAL + rtt * 2)
}

/// Runs while the connections carry the stream: reads their loss counters every
/// [`INTERVAL`] and sets the switch. Never returns.
pub(super) async fn watch(
    open: &AtomicBool,
    conns: [&quinn::Connection; 2],
    pace: &Pace,
) -> Infallible {
    let counts = || {
        conns.iter().fold((0, 0), |(s, l), c| {
            let p = c.stats().path;
            (s + p.sent_packets, l + p.lost_packets)
        })
    };
    let mut policy = Policy::default();
    let mut last = counts();
    let mut tick = tokio::time::interval(INTERVAL);
    let mut last_probe = pace.probing().then(Instant::now);
    loop {
        tick.tick().await;
        let now = counts();
        let (sent, lost) = (now.0.saturating_sub(last.0), now.1.saturating_sub(last.1));
        let was_closed = policy.closed;
        let at = Instant::now();
        if pace.probing() {
            last_probe = Some(at);
        }
        let rtt = conns.iter().map(|c| c.stats().path.rtt).max();
        let probing = probe_shows(last_probe, at, rtt.unwrap_or_default());
        policy.interval(sent, lost, INTERVAL, probing);
        last = now;
        if policy.closed != was_closed {
            tracing::debug!(
                sent,
                lost,
                "segmentation offload {}",
                if policy.closed {
                    "off: the path loses packets"
                } else {
                    "on again: the path is clean"
                }
            );
        }
        open.store(!policy.closed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = INTERVAL;

    /// One send: where to, the bytes, the segment size.
    type Sent = (SocketAddr, Vec<u8>, Option<usize>);

    /// A socket that records what it is asked to send, and refuses while told to.
    #[derive(Debug, Default)]
    struct Recorder {
        sent: Mutex<Vec<Sent>>,
        full: AtomicBool,
    }

    #[derive(Debug)]
    struct Ready;

    impl UdpPoller for Ready {
        fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncUdpSocket for Recorder {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            Box::pin(Ready)
        }
        fn try_send(&self, t: &Transmit) -> io::Result<()> {
            if self.full.load(Ordering::Relaxed) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut sent = self.sent.lock().unwrap();
            sent.push((t.destination, t.contents.to_vec(), t.segment_size));
            Ok(())
        }
        fn poll_recv(
            &self,
            _: &mut Context,
            _: &mut [IoSliceMut<'_>],
            _: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok("127.0.0.1:1".parse().unwrap())
        }
        fn max_transmit_segments(&self) -> usize {
            64
        }
    }

    fn burst(
        to: SocketAddr,
        first: u8,
        segments: usize,
        size: usize,
        last: usize,
    ) -> Transmit<'static> {
        let mut data = Vec::new();
        for i in 0..segments {
            let len = if i + 1 == segments { last } else { size };
            data.extend(std::iter::repeat_n(first.wrapping_add(i as u8), len));
        }
        Transmit {
            destination: to,
            ecn: None,
            contents: Box::leak(data.into_boxed_slice()),
            segment_size: (segments > 1).then_some(size),
            src_ip: None,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bursts_to_one_place_leave_as_one_send_after_the_driver_yields() {
        let rec = Arc::new(Recorder::default());
        let open = Arc::new(AtomicBool::new(true));
        let gate = GsoGate::new(rec.clone(), open.clone(), None);
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let other: SocketAddr = "192.0.2.2:4000".parse().unwrap();
        // A driver's turn: two bursts of ten full datagrams, then a short one that ends it.
        gate.try_send(&burst(peer, 0, 10, 1200, 1200)).unwrap();
        gate.try_send(&burst(peer, 10, 10, 1200, 1200)).unwrap();
        gate.try_send(&burst(peer, 20, 3, 1200, 500)).unwrap();
        assert!(
            rec.sent.lock().unwrap().is_empty(),
            "nothing before the driver yields"
        );
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        {
            let sent = rec.sent.lock().unwrap();
            assert_eq!(sent.len(), 1, "one send for the whole turn");
            assert_eq!(sent[0].1.len(), 22 * 1200 + 500);
            assert_eq!(sent[0].2, Some(1200));
        }
        // After a short datagram, or to another place, a new burst starts; order is kept.
        gate.try_send(&burst(peer, 30, 1, 1200, 700)).unwrap();
        gate.try_send(&burst(peer, 31, 2, 1200, 1200)).unwrap();
        gate.try_send(&burst(other, 33, 2, 1200, 1200)).unwrap();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        {
            let sent = rec.sent.lock().unwrap();
            let shape: Vec<_> = sent[1..]
                .iter()
                .map(|(to, d, s)| (*to, d.len(), *s, d[0]))
                .collect();
            assert_eq!(
                shape,
                [
                    (peer, 700, None, 30),
                    (peer, 2400, Some(1200), 31),
                    (other, 2400, Some(1200), 33)
                ]
            );
        }
        // More than one send takes (64 KiB) goes out in full sends as it comes.
        for i in 0..6 {
            gate.try_send(&burst(peer, 40 + i * 10, 10, 1400, 1400))
                .unwrap();
        }
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let sent = rec.sent.lock().unwrap();
        let sizes: Vec<_> = sent[4..].iter().map(|(_, d, _)| d.len()).collect();
        assert!(sizes.iter().all(|&n| n <= JOINED_BYTES), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 60 * 1400);
        assert_eq!(sizes.len(), 2, "{sizes:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_closed_gate_sends_each_datagram_at_once_after_what_was_joined() {
        let rec = Arc::new(Recorder::default());
        let open = Arc::new(AtomicBool::new(true));
        let gate = GsoGate::new(rec.clone(), open.clone(), None);
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        gate.try_send(&burst(peer, 0, 4, 1200, 1200)).unwrap();
        open.store(false, Ordering::Relaxed);
        gate.try_send(&burst(peer, 4, 1, 1200, 1200)).unwrap();
        let sent = rec.sent.lock().unwrap();
        let firsts: Vec<_> = sent.iter().map(|(_, d, _)| (d.len(), d[0])).collect();
        assert_eq!(firsts, [(4800, 0), (1200, 4)]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn what_is_joined_when_the_socket_is_dropped_goes_out() {
        let rec = Arc::new(Recorder::default());
        let gate = GsoGate::new(rec.clone(), Arc::new(AtomicBool::new(true)), None);
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        gate.try_send(&burst(peer, 0, 1, 1200, 60)).unwrap();
        drop(gate);
        assert_eq!(
            rec.sent.lock().unwrap().len(),
            1,
            "the last close is not lost"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_socket_keeps_the_joined_burst_until_it_can_send() {
        let rec = Arc::new(Recorder::default());
        let gate = GsoGate::new(rec.clone(), Arc::new(AtomicBool::new(true)), None);
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let other: SocketAddr = "192.0.2.2:4000".parse().unwrap();
        rec.full.store(true, Ordering::Relaxed);
        gate.try_send(&burst(peer, 0, 10, 1200, 1200)).unwrap();
        // The next burst cannot start while the joined one is stuck: quinn hears WouldBlock
        // and tries it again later.
        let e = gate.try_send(&burst(other, 10, 1, 1200, 1200)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        rec.full.store(false, Ordering::Relaxed);
        gate.try_send(&burst(other, 10, 1, 1200, 1200)).unwrap();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let sent = rec.sent.lock().unwrap();
        let shape: Vec<_> = sent.iter().map(|(to, d, _)| (*to, d.len(), d[0])).collect();
        assert_eq!(shape, [(peer, 12_000, 0), (other, 1200, 10)]);
    }

    /// quinn's driver asks the socket's poller before every transmit: with a pacing rate
    /// published, a send beyond the bucket holds the next one back for the time the rate needs
    /// for the excess, and no longer.
    #[tokio::test(flavor = "current_thread")]
    async fn a_paced_socket_holds_the_driver_back_for_the_rate() {
        let rec = Arc::new(Recorder::default());
        let pace = Pace::new();
        let gate = GsoGate::new(
            rec.clone(),
            Arc::new(AtomicBool::new(true)),
            Some(pace.clone()),
        );
        let mut poller = gate.clone().create_io_poller();
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let writable = |p: &mut Pin<Box<dyn UdpPoller>>| {
            let waker = std::task::Waker::noop();
            p.as_mut()
                .poll_writable(&mut Context::from_waker(waker))
                .is_ready()
        };
        // No rate yet: never held back.
        for i in 0..10 {
            gate.try_send(&burst(peer, i, 10, 1200, 1200)).unwrap();
        }
        assert!(writable(&mut poller));
        // 1.2 MB/s: 16 KiB of bucket, then 60 KB more is 50 ms of debt.
        let slot = pace.slot();
        slot.store(1_200_000, Ordering::Relaxed);
        gate.try_send(&burst(peer, 0, 10, 1200, 1200)).unwrap();
        gate.try_send(&burst(peer, 0, 50, 1200, 1200)).unwrap();
        let start = tokio::time::Instant::now();
        assert!(!writable(&mut poller), "in debt");
        std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
            .await
            .unwrap();
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(30) && waited < Duration::from_millis(500),
            "{waited:?}"
        );
    }

    #[test]
    fn loss_closes_the_gate_and_a_clean_stretch_opens_it() {
        let mut p = Policy::default();
        p.interval(1000, 1, I, false);
        assert!(!p.closed, "one lost packet is noise");
        p.interval(1000, 5, I, false);
        assert!(!p.closed, "half a percent");
        p.interval(100, 3, I, false);
        assert!(!p.closed, "one burst of three percent");
        p.interval(100, 3, I, false);
        assert!(!p.closed, "a burst across two intervals");
        p.interval(100, 3, I, false);
        assert!(p.closed, "three percent three times in a row");
        for _ in 0..19 {
            p.interval(100, 0, I, false);
        }
        assert!(p.closed, "not yet five seconds clean");
        p.interval(100, 0, I, false);
        assert!(!p.closed);
        // Lossy intervals between clean ones, one or two in a row, leave it open.
        for _ in 0..10 {
            p.interval(1000, 0, I, false);
            p.interval(1000, 500, I, false);
            assert!(!p.closed);
            p.interval(1000, 0, I, false);
            p.interval(1000, 500, I, false);
            p.interval(1000, 500, I, false);
            assert!(!p.closed);
        }
        p.interval(1000, 500, I, false);
        assert!(p.closed);
        for _ in 0..20 {
            p.interval(100, 0, I, false);
        }
        assert!(!p.closed);
        // Constant 20% loss closes it from its third interval on and keeps it closed.
        p.interval(100, 20, I, false);
        p.interval(100, 20, I, false);
        assert!(!p.closed);
        for _ in 0..100 {
            p.interval(100, 20, I, false);
            assert!(p.closed);
        }
    }

    #[test]
    fn a_probes_loss_shows_for_an_interval_and_two_round_trips_after_it() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        assert!(!probe_shows(None, t, ms(10)), "never probed");
        assert!(probe_shows(Some(t), t + I, ms(1)));
        assert!(!probe_shows(Some(t), t + I + ms(3), ms(1)), "a short path");
        // A satellite path: its last losses are declared long after the probe ended.
        assert!(probe_shows(Some(t), t + I * 5, ms(600)));
        assert!(!probe_shows(Some(t), t + I * 6, ms(600)));
    }

    #[test]
    fn a_probing_controllers_overrun_leaves_the_gate_open() {
        let mut p = Policy::default();
        // STARTUP overrunning a queue on a long path: many lossy intervals in a row.
        for _ in 0..8 {
            p.interval(1000, 300, I, true);
        }
        assert!(!p.closed);
        // Once the rate is found, loss is the path's.
        for _ in 0..LOSSY_INTERVALS {
            p.interval(1000, 300, I, false);
        }
        assert!(p.closed);
    }

    #[test]
    fn quiet_intervals_neither_break_a_lossy_streak_nor_reopen() {
        // A stall: a lossy interval, then next to nothing sent and nothing declared lost
        // until an acknowledgement comes, which declares the next losses.
        let mut p = Policy::default();
        p.interval(100, 30, I, false);
        for _ in 0..40 {
            p.interval(2, 0, I, false);
            assert!(!p.closed);
        }
        p.interval(10, 8, I, false);
        assert!(!p.closed);
        p.interval(2, 0, I, false);
        p.interval(10, 8, I, false);
        assert!(
            p.closed,
            "three lossy intervals with only quiet ones between"
        );
        for _ in 0..100 {
            p.interval(BUSY - 1, 0, I, false);
        }
        assert!(p.closed, "quiet intervals are not a clean path");
        for _ in 0..20 {
            p.interval(BUSY, 0, I, false);
        }
        assert!(!p.closed);
    }
}

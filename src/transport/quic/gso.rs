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

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::convert::Infallible;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// How often the connections' loss counters are read.
const INTERVAL: Duration = Duration::from_millis(250);
/// A clean stretch this long lets bursts out again.
const CLEAN_FOR: Duration = Duration::from_secs(5);

/// The socket quinn runs on, with the offload switch.
pub(super) struct GsoGate {
    inner: Arc<dyn AsyncUdpSocket>,
    open: Arc<AtomicBool>,
}

impl GsoGate {
    /// `open` is the switch [`watch`] sets.
    pub(super) fn new(inner: Arc<dyn AsyncUdpSocket>, open: Arc<AtomicBool>) -> Arc<Self> {
        Arc::new(GsoGate { inner, open })
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
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
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
        if self.open.load(Ordering::Relaxed) {
            self.inner.max_transmit_segments()
        } else {
            1
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
/// interval; a single burst (the receiver's socket buffer overflowing once while its runtime
/// was busy) does not, and closing on it halved a clean path's throughput for the rest of the
/// transfer (single datagrams cost twice the CPU per byte on both sides).
const LOSSY_INTERVALS: u32 = 2;
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
    pub(super) fn interval(&mut self, sent: u64, lost: u64, length: Duration) {
        if lost >= 2 && lost * 100 > sent {
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

/// Runs while the connections carry the stream: reads their loss counters every
/// [`INTERVAL`] and sets the switch. Never returns.
pub(super) async fn watch(open: &AtomicBool, conns: [&quinn::Connection; 2]) -> Infallible {
    let counts = || {
        conns.iter().fold((0, 0), |(s, l), c| {
            let p = c.stats().path;
            (s + p.sent_packets, l + p.lost_packets)
        })
    };
    let mut policy = Policy::default();
    let mut last = counts();
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tick.tick().await;
        let now = counts();
        policy.interval(
            now.0.saturating_sub(last.0),
            now.1.saturating_sub(last.1),
            INTERVAL,
        );
        last = now;
        open.store(!policy.closed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = INTERVAL;

    #[test]
    fn loss_closes_the_gate_and_a_clean_stretch_opens_it() {
        let mut p = Policy::default();
        p.interval(1000, 1, I);
        assert!(!p.closed, "one lost packet is noise");
        p.interval(1000, 5, I);
        assert!(!p.closed, "half a percent");
        p.interval(100, 3, I);
        assert!(!p.closed, "one burst of three percent");
        p.interval(100, 3, I);
        assert!(p.closed, "three percent twice in a row");
        for _ in 0..19 {
            p.interval(100, 0, I);
        }
        assert!(p.closed, "not yet five seconds clean");
        p.interval(100, 0, I);
        assert!(!p.closed);
        // A lossy interval between clean ones leaves it open.
        for _ in 0..10 {
            p.interval(1000, 0, I);
            p.interval(1000, 500, I);
            assert!(!p.closed);
        }
        p.interval(1000, 500, I);
        assert!(p.closed);
        for _ in 0..20 {
            p.interval(100, 0, I);
        }
        assert!(!p.closed);
        // Constant 20% loss closes it from its second interval on and keeps it closed.
        p.interval(100, 20, I);
        assert!(!p.closed);
        for _ in 0..100 {
            p.interval(100, 20, I);
            assert!(p.closed);
        }
    }

    #[test]
    fn quiet_intervals_neither_break_a_lossy_streak_nor_reopen() {
        // A stall: a lossy interval, then next to nothing sent and nothing declared lost
        // until an acknowledgement comes, which declares the next losses.
        let mut p = Policy::default();
        p.interval(100, 30, I);
        for _ in 0..40 {
            p.interval(2, 0, I);
            assert!(!p.closed);
        }
        p.interval(10, 8, I);
        assert!(p.closed, "two lossy intervals with only quiet ones between");
        for _ in 0..100 {
            p.interval(BUSY - 1, 0, I);
        }
        assert!(p.closed, "quiet intervals are not a clean path");
        for _ in 0..20 {
            p.interval(BUSY, 0, I);
        }
        assert!(!p.closed);
    }
}

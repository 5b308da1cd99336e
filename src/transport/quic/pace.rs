//! Pacing at the delivery rate the acknowledgements measure.
//!
//! quinn (0.11) paces every connection at 1.25 x its window / smoothed RTT. BBR's window is
//! twice the bandwidth-delay product (`congestion`), so quinn sends at about two and a half
//! times the rate the path delivers until the bottleneck's queue has absorbed the excess and
//! the RTT has doubled; where that queue is shorter than a round trip of data (a 100 Mbit/s
//! line with 20 ms of queue under a 160 ms RTT) the excess is dropped, and BBR, which does not
//! answer loss, goes on: the lab lost ~43% of a 32 MiB stream's packets there. BBR itself
//! paces at its bandwidth estimate times a gain (draft-cardwell-iccrg-bbr-congestion-control,
//! "pacing_rate"), and keeps its window of twice the product only as a bound for delayed and
//! batched acknowledgements. This is that pacing, beneath quinn: each connection's controller
//! publishes its pacing rate ([`Pace::slot`]), and the socket's poller holds quinn's driver
//! back while the connections together have sent more than that rate allows ([`Bucket`]).
//!
//! Bursts stay: a bucket holds [`BURST_TIME`] of the rate (at least [`MIN_BURST`]), so the
//! runtime's 1 ms timer can keep the rate, and a transmit goes out whole once the bucket is
//! not in debt (quinn's transmits, up to ten datagrams, and the joined bursts of `gso` that
//! form while the driver may send).
//!
//! Measured (lab, two port-restricted cones, one way, 2026-12-07, against the same build
//! without pacing): on that slow long line ~8% of the packets lost instead of ~43% -- what
//! is left is the first STARTUP's overshoot, which `congestion` ends at the first round that
//! overflows -- at the same 7.2-8.0 MiB/s (10 Mbit/s under 80 ms, 4 MiB: ~11% instead of 38%;
//! both directions at once, ~20% each instead of ~33%); elsewhere within the runs' spread:
//! 0 ms 256 MiB 555-686 against 543-647 MiB/s (3 runs each), 1% loss 351-428 against 354-410,
//! 40 ms one way 32 MiB 14.0-14.2 against 14.3-15.3, with 1% loss 10.9-12.2 against 10.0-11.4,
//! 5% 4.9-5.3 against 4.3-5.3, a 1 Gbit/s line 113 MiB/s both.

use quinn::UdpPoller;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The time a full bucket lasts at the rate: twice the runtime's timer resolution, so that a
/// sender woken a tick late still finds its rate's worth waiting.
const BURST_TIME: Duration = Duration::from_millis(2);
/// The smallest bucket: one transmit of quinn's (ten datagrams) and a little more.
const MIN_BURST: u64 = 16 * 1024;
/// A full datagram on a common path (1,500-byte MTU), for [`Pace::max_segments`].
const TYPICAL_DATAGRAM: u64 = 1_452;

/// The pacing of one socket: the rates its connections' controllers publish, and the bucket
/// their sends draw from.
#[derive(Default)]
pub(super) struct Pace {
    slots: Mutex<Vec<Weak<AtomicU64>>>,
    bucket: Mutex<Bucket>,
    /// Counts the changes of the path the socket sends on ([`Pace::path_changed`]).
    path: AtomicU64,
    /// Where the controllers say whether they are still probing for the path's rate
    /// ([`Pace::probing`]).
    probes: Mutex<Vec<Weak<AtomicBool>>>,
}

impl fmt::Debug for Pace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pace").field("rate", &self.rate()).finish()
    }
}

impl Pace {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Pace::default())
    }

    /// Where one connection's controller publishes its pacing rate, in bytes per second
    /// (zero: no estimate yet, so no limit from it). Dropped with the controller.
    pub(super) fn slot(&self) -> Arc<AtomicU64> {
        let slot = Arc::new(AtomicU64::new(0));
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|s| s.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        slot
    }

    /// Where one connection's controller says whether it is still probing for the path's
    /// rate with data to send (BBR's STARTUP). Dropped with the controller.
    pub(super) fn probe_flag(&self) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        probes.retain(|p| p.strong_count() > 0);
        probes.push(Arc::downgrade(&flag));
        flag
    }

    /// Whether a connection on this socket is still probing for the path's rate: loss now
    /// may be its own overrun of a queue rather than the path's (`gso`).
    pub(super) fn probing(&self) -> bool {
        let probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        probes
            .iter()
            .filter_map(Weak::upgrade)
            .any(|p| p.load(Ordering::Relaxed))
    }

    /// The sum of the connections' rates (zero: unpaced). A connection without an estimate
    /// adds nothing: in its first round trip it sends its initial window, which the bucket's
    /// [`MIN_BURST`] holds, and its first acknowledgements bring its estimate.
    fn rate(&self) -> u64 {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter_map(Weak::upgrade)
            .map(|s| s.load(Ordering::Relaxed))
            .fold(0u64, u64::saturating_add)
    }

    /// The datagrams take another path from now on (relay first, then direct, and back): the
    /// controllers start over from their initial state when they next see the count move
    /// (RFC 9000 section 9.4), and the bucket forgets the old path's debt.
    pub(super) fn path_changed(&self) {
        self.path.fetch_add(1, Ordering::Relaxed);
        *self.bucket.lock().unwrap_or_else(|e| e.into_inner()) = Bucket::default();
    }

    /// How many times the path changed so far.
    pub(super) fn path(&self) -> u64 {
        self.path.load(Ordering::Relaxed)
    }

    /// `bytes` went to the socket at `now`.
    pub(super) fn sent(&self, now: Instant, bytes: usize) {
        let rate = self.rate();
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.refill(now, rate);
        b.debit(bytes as u64);
    }

    /// The most datagrams one transmit should carry: about a millisecond of the rate, at least
    /// one. A transmit goes out whole and leaves the bucket in debt by its size, and every
    /// connection on the socket waits that debt out -- also the one that only acknowledges the
    /// peer's stream -- so on a slow line a ten-datagram transmit (14.5 KB, 116 ms at 1
    /// Mbit/s) would hold the acknowledgements of the other direction back for as long.
    /// Unpaced: no limit.
    pub(super) fn max_segments(&self) -> usize {
        match self.rate() {
            0 => usize::MAX,
            rate => usize::try_from(rate / 1_000 / TYPICAL_DATAGRAM)
                .unwrap_or(usize::MAX)
                .max(1),
        }
    }

    /// How long the sender must wait before its next transmit; `None`: send now.
    pub(super) fn wait(&self, now: Instant) -> Option<Duration> {
        let rate = self.rate();
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.refill(now, rate);
        b.wait(rate)
    }
}

/// A token bucket in bytes that may go into debt by one transmit: a transmit goes out when
/// the balance is not negative, and the balance refills at the rate up to a burst.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct Bucket {
    balance: i64,
    last: Option<Instant>,
}

impl Bucket {
    fn burst(rate: u64) -> i64 {
        let b = u128::from(rate) * BURST_TIME.as_nanos() / 1_000_000_000;
        i64::try_from(b).unwrap_or(i64::MAX).max(MIN_BURST as i64)
    }

    /// Credit for the time since the last call; a full bucket without a rate.
    fn refill(&mut self, now: Instant, rate: u64) {
        let burst = Self::burst(rate);
        let since = self
            .last
            .map_or(Duration::MAX, |l| now.saturating_duration_since(l));
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
        if rate == 0 {
            self.balance = burst;
            return;
        }
        let credit = u128::from(rate) * since.as_nanos() / 1_000_000_000;
        let credit = i64::try_from(credit).unwrap_or(i64::MAX);
        self.balance = self.balance.saturating_add(credit).min(burst);
    }

    fn debit(&mut self, bytes: u64) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        // At most one transmit of debt beyond an empty bucket counts: a rate that fell
        // sharply must not leave seconds of debt behind.
        self.balance = self.balance.saturating_sub(bytes).max(-bytes);
    }

    fn wait(&self, rate: u64) -> Option<Duration> {
        if self.balance >= 0 || rate == 0 {
            return None;
        }
        let nanos = u128::from(self.balance.unsigned_abs()) * 1_000_000_000 / u128::from(rate);
        Some(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX).max(1),
        ))
    }
}

/// The socket's poller with the pacing in front: not writable while the bucket is in debt,
/// and woken when it will not be.
pub(super) struct PacedPoller {
    pace: Arc<Pace>,
    inner: Pin<Box<dyn UdpPoller>>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl PacedPoller {
    pub(super) fn new(pace: Arc<Pace>, inner: Pin<Box<dyn UdpPoller>>) -> Self {
        PacedPoller {
            pace,
            inner,
            sleep: None,
        }
    }
}

impl fmt::Debug for PacedPoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacedPoller").finish_non_exhaustive()
    }
}

impl UdpPoller for PacedPoller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let now = Instant::now();
        if let Some(wait) = self.pace.wait(now) {
            let deadline = tokio::time::Instant::from_std(now + wait);
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            if let Some(s) = &mut self.sleep {
                if s.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
        self.inner.as_mut().poll_writable(cx)
    }
}

/// A connection's pacing rate from the controller's estimate: `gain` (thousandths) times
/// `rate`, and never below `floor` (bytes per second); zero without an estimate.
pub(super) fn pacing_rate(rate: u64, gain: u128, floor: u64) -> u64 {
    if rate == 0 {
        return 0;
    }
    let paced = u128::from(rate) * gain / 1_000;
    u64::try_from(paced).unwrap_or(u64::MAX).max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn without_a_rate_nothing_waits() {
        let pace = Pace::new();
        let t = Instant::now();
        pace.sent(t, 10_000_000);
        assert_eq!(pace.wait(t), None);
        let slot = pace.slot();
        pace.sent(t, 10_000_000);
        assert_eq!(pace.wait(t), None, "a slot without an estimate");
        drop(slot);
    }

    #[test]
    fn the_rate_over_a_second_is_the_published_one() {
        // 12.5 MB/s (100 Mbit/s): a sender that sends a 14,520-byte transmit whenever it is
        // let, woken by the 1 ms timer, moves that rate and no more.
        let pace = Pace::new();
        let slot = pace.slot();
        slot.store(12_500_000, Ordering::Relaxed);
        let start = Instant::now();
        let mut now = start;
        let mut sent = 0u64;
        while now < start + Duration::from_secs(1) {
            match pace.wait(now) {
                None => {
                    pace.sent(now, 14_520);
                    sent += 14_520;
                }
                Some(w) => now += w.max(MS),
            }
        }
        let burst = 25_000 + 14_520;
        assert!(
            (12_500_000..=12_500_000 + burst).contains(&sent),
            "{sent} bytes in a second"
        );
    }

    #[test]
    fn a_transmit_carries_about_a_millisecond_of_the_rate() {
        let pace = Pace::new();
        let slot = pace.slot();
        assert_eq!(pace.max_segments(), usize::MAX, "unpaced");
        slot.store(125_000, Ordering::Relaxed);
        assert_eq!(pace.max_segments(), 1, "1 Mbit/s");
        slot.store(12_500_000, Ordering::Relaxed);
        assert_eq!(pace.max_segments(), 8, "100 Mbit/s");
        slot.store(125_000_000, Ordering::Relaxed);
        assert_eq!(pace.max_segments(), 86, "1 Gbit/s");
    }

    #[test]
    fn the_rates_of_live_connections_add_up() {
        let pace = Pace::new();
        let a = pace.slot();
        let b = pace.slot();
        a.store(1_000_000, Ordering::Relaxed);
        b.store(3_000_000, Ordering::Relaxed);
        assert_eq!(pace.rate(), 4_000_000);
        drop(b);
        assert_eq!(pace.rate(), 1_000_000);
    }

    #[test]
    fn debt_is_at_most_one_transmit_and_is_paid_at_the_rate() {
        let mut b = Bucket::default();
        let t = Instant::now();
        b.refill(t, 1_000_000);
        assert_eq!(
            b.balance, MIN_BURST as i64,
            "a first call finds the bucket full"
        );
        b.debit(MIN_BURST + 10_000);
        assert_eq!(b.wait(1_000_000), Some(Duration::from_millis(10)));
        b.debit(1_000_000);
        assert_eq!(b.balance, -1_000_000, "no more debt than the last transmit");
        b.refill(t + Duration::from_millis(400), 1_000_000);
        assert_eq!(b.wait(1_000_000), Some(Duration::from_millis(600)));
    }

    #[test]
    fn the_socket_probes_while_a_live_controller_does() {
        let pace = Pace::new();
        assert!(!pace.probing(), "no controller");
        let (a, b) = (pace.probe_flag(), pace.probe_flag());
        assert!(!pace.probing(), "none probes yet");
        b.store(true, Ordering::Relaxed);
        assert!(pace.probing());
        drop(b);
        assert!(!pace.probing(), "the probing one is gone");
        a.store(true, Ordering::Relaxed);
        assert!(pace.probing());
    }

    #[test]
    fn pacing_rate_applies_gain_and_floor() {
        assert_eq!(pacing_rate(0, 1_250, 100), 0);
        assert_eq!(pacing_rate(1_000_000, 1_250, 100), 1_250_000);
        assert_eq!(pacing_rate(1_000, 750, 100_000), 100_000);
    }
}

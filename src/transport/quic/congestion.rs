//! quinn's BBR without its stall at the start of every connection.
//!
//! BBR is the controller for a punched path (see the module documentation of `quic`: random
//! loss is not congestion). But quinn's BBR (quinn-proto 0.11.19) opens every connection in
//! PROBE_RTT: it keeps no time of a last RTT probe before the first one, takes that for an
//! expired probe, and at its first acknowledgement holds the window at four packets for
//! 200 ms and a round trip more. Every transfer paid that at its start: in the lab at 0 ms the
//! first 200 ms of a 256 MiB stream moved ~10 MiB at four packets per round trip, the rest
//! ~800 MiB/s; on a 160 ms path it is a second of four packets per round trip. Its later
//! probes (every 10 s) hold the window down the same way, and buy nothing here: quinn's BBR
//! takes its minimum RTT from the connection's all-time minimum, not from the probe.
//!
//! So a CUBIC controller runs beside BBR on the same events, and the window is the larger of
//! the two. While BBR probes, CUBIC's slow start (or its congestion avoidance) carries the
//! stream, and it is bounded by loss like any TCP. Once loss shows, CUBIC's window shrinks
//! with every loss, so on a lossy path the window is BBR's, as before; on a clean one BBR's
//! grows past CUBIC's. The rate the socket paces at is BBR's, from the measured delivery rate
//! (`pace`): quinn's own pacing follows the window, which on a slow line with a long round
//! trip sent at twice the line's rate.
//!
//! BBR's window counts only up to twice the bandwidth-delay product that the acknowledgements
//! measure (`Delivery`): quinn's BBR estimates the bandwidth from single packets, and on a
//! rate-limited link that estimate, and the window with it, sometimes ran away, which flooded
//! the link's queue (numbers there).
//!
//! Measured (lab, two port-restricted cones, one way, 2026-12-06): at 0 ms without loss a
//! 256 MiB stream took 530-580 ms with BBR alone (3 runs; ~200 ms of it the probe) and
//! 360-390 ms with CUBIC beside it. `tools/bench-stream.sh` with CUBIC beside, MiB/s, QUIC
//! against TLS over the TCP punch in the same runs: 0 ms with 1% loss at each NAT 188 / 95,
//! 5%: 82 / 57; 40 ms one way with 1%: 9.9 / 5.3, 5%: 2.0 / 1.4 -- the lossy paths still run
//! on BBR's window.

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;
use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pace::{self, Pace};

/// The controller quinn runs: BBR, bounded by the delivery rate the path showed, and CUBIC on
/// the same events; the larger window.
pub(super) struct BbrBeside {
    bbr: Box<dyn Controller>,
    cubic: Box<dyn Controller>,
    delivery: Delivery,
    /// Where the pacing rate goes (`pace`); `None` where the socket does not pace.
    pacing: Option<Arc<AtomicU64>>,
    /// The socket's pacing, which counts its path changes, and the count this controller's
    /// state was measured under ([`BbrBeside::follow_path`]).
    path: Option<(Arc<Pace>, u64)>,
    /// Packets sent before this went on an earlier path: what becomes of them tells nothing
    /// about the current one.
    path_since: Option<Instant>,
    mtu: u16,
    /// Where this controller says whether it still probes for the rate ([`Pace::probing`]).
    probing: Option<Arc<AtomicBool>>,
}

impl BbrBeside {
    fn new(
        bbr: Box<dyn Controller>,
        cubic: Box<dyn Controller>,
        pacing: Option<Arc<AtomicU64>>,
    ) -> Self {
        BbrBeside {
            bbr,
            cubic,
            delivery: Delivery::default(),
            pacing,
            path: None,
            path_since: None,
            mtu: 1200,
            probing: None,
        }
    }

    /// A new BBR and a new CUBIC, as on a new connection.
    fn fresh(now: Instant, mtu: u16) -> (Box<dyn Controller>, Box<dyn Controller>) {
        (
            Arc::new(BbrConfig::default()).build(now, mtu),
            Arc::new(CubicConfig::default()).build(now, mtu),
        )
    }

    fn build(now: Instant, mtu: u16, pace: Option<&Arc<Pace>>) -> Self {
        let (bbr, cubic) = Self::fresh(now, mtu);
        let mut c = BbrBeside::new(bbr, cubic, pace.map(|p| p.slot()));
        c.path = pace.map(|p| (p.clone(), p.path()));
        c.probing = pace.map(|p| p.probe_flag());
        c.mtu = mtu;
        c
    }

    /// After the socket moved the stream to another path (relay first, then direct), the
    /// controllers start over as on a new connection: RFC 9000 section 9.4 asks that of a
    /// migration, and the relay's rate and round trip say nothing of the direct path's --
    /// paced at the relay's rate, a faster direct path would be found only by BBR's probes
    /// of a quarter more every eight round trips. quinn sees one path throughout, so the
    /// socket counts the changes and the controller looks at the count on every event.
    fn follow_path(&mut self, now: Instant) {
        let Some((pace, seen)) = &mut self.path else {
            return;
        };
        let path = pace.path();
        if path == *seen {
            return;
        }
        *seen = path;
        (self.bbr, self.cubic) = Self::fresh(now, self.mtu);
        self.delivery = Delivery::default();
        self.path_since = Some(now);
        if let Some(slot) = &self.pacing {
            slot.store(0, Ordering::Relaxed);
        }
    }

    fn on_old_path(&self, sent: Instant) -> bool {
        self.path_since.is_some_and(|t| sent < t)
    }

    /// The rate the socket paces this connection at: BBR's pacing gain over the measured
    /// rate, and at least CUBIC's initial window (RFC 9002's ten packets) per smoothed RTT.
    /// Not quinn's BBR's initial window: at 240 KB that floor was twice and more the rate of a
    /// 10 Mbit/s line under an 80 ms RTT (lab: 38% of the packets lost).
    fn pacing_rate(&self, now: Instant) -> u64 {
        let srtt = self.delivery.srtt.max(MARK_SPACING);
        let floor = u128::from(self.cubic.initial_window()) * 1_000_000_000 / srtt.as_nanos();
        pace::pacing_rate(
            self.delivery.rate(),
            self.delivery.pacing_gain(now),
            u64::try_from(floor).unwrap_or(u64::MAX),
        )
    }

    /// BBR's window within what the measured delivery rate justifies ([`Delivery::cap`]).
    fn bbr_window(&self) -> u64 {
        let floor = self.bbr.initial_window();
        self.bbr.window().min(self.delivery.cap().max(floor))
    }

    fn cubic_leads(&self) -> bool {
        self.cubic.window() > self.bbr_window()
    }
}

/// What multiplies the bandwidth-delay product in [`Delivery::cap`], in thousandths: BBR's
/// own gains -- 2/ln 2 while the rate still grows (STARTUP), which lets what arrives double
/// every round trip however late the samples show it, then 2 (`cwnd_gain`).
const STARTUP_GAIN: u128 = 2_885;
const CAP_GAIN: u128 = 2_000;
/// BBR's pacing gains once the pipe is full (PROBE_BW), one phase each, in thousandths: a
/// quarter less to drain a queue, the estimate for six phases, then a quarter more to find
/// more bandwidth (whose queue the next cycle's first phase drains). Starting with the
/// drain empties what STARTUP queued first, as BBR's DRAIN state does.
const CYCLE: [u128; 8] = [750, 1_000, 1_000, 1_000, 1_000, 1_000, 1_000, 1_250];
/// The rate still grows while it rose by a quarter within this many round trips (BBR's
/// "full pipe" test).
const GROWTH_ROUNDS: u32 = 3;
/// A round whose rate did not grow and that lost more than this share (numerator,
/// denominator) of its bytes ends the growth at once: the pipe is full and its queue
/// overflows, and each further round at the startup gain loses most of what exceeds the
/// queue -- in the lab (100 Mbit/s, 160 ms RTT, 20 ms of queue) a quarter of a 32 MiB
/// stream's packets in the two more rounds the full-pipe test waits. BBRv2 exits STARTUP on
/// 2% (draft-cardwell-iccrg-bbr-congestion-control-02, "BBRLossThresh"), which random loss
/// reaches: a 160 ms path with 1% loss at each NAT then left STARTUP early and took 2-10x as
/// long. Sending at the startup gain into a full queue loses more than half of what it
/// sends; random loss on a path still worth using is well below a third.
const OVERFLOW_LOSS: (u128, u128) = (1, 3);
/// Added to the smallest RTT in [`Delivery::cap`]: the delay the receiver may add to its
/// acknowledgements (`MAX_ACK_DELAY`) and a timer's granularity, which a sender must cover
/// to keep sending while acknowledgements are held back.
const ACK_ALLOWANCE: Duration = super::MAX_ACK_DELAY.saturating_add(Duration::from_millis(1));
/// The shortest spacing of the delivery marks, and the shortest epoch of the rate's
/// maximum: below the resolution that a short path's ACK batches give.
const MARK_SPACING: Duration = Duration::from_micros(100);
const MIN_EPOCH: Duration = Duration::from_millis(250);
/// Round trips (smoothed) per epoch of the rate's maximum; the estimate is the larger of the
/// current and the previous epoch's, so it forgets a rate the path no longer carries within
/// two epochs.
const EPOCH_RTTS: u32 = 10;

/// The delivery rate of the path, measured as BBR defines it (draft-cheng-iccrg-delivery-rate-
/// estimation): the bytes acknowledged between a packet's sending and its acknowledgement,
/// over that interval -- at least a round trip, so a burst of held-back acknowledgements
/// cannot make a path look faster than it is.
///
/// quinn's BBR (0.11.19) estimates the bandwidth from single packets instead: one packet's
/// bytes over the gap since the previous acknowledgement, or since the previous send. On a
/// path through a rate-limited link those gaps are sometimes microseconds (acknowledgements
/// read from the socket in one batch, datagrams sent in one burst), the estimate jumps to many
/// times the link's rate, and BBR's window with it. Measured in the lab (`natlab.sh --rate
/// 1000`, 1 Gbit/s each way on each NAT uplink with 20 ms of queue, 256 MiB, 2026-12-07): in
/// 4 of 11 transfers BBR's window went from 2.5 MB to 190 MB, the sender overran the link's
/// queue with 59% of its packets lost in 100 ms and ~14% over the transfer, the offload switch
/// (`gso`) closed on that loss, and both ends spent 3x the CPU per byte (~15 against ~5.5
/// CPU-s per GiB); in the others the window stayed at ~2 MB, losing ~1.4% in the first slow
/// start only. CUBIC beside it does not help there: the larger window counts. So BBR's window
/// is bounded here by twice the bandwidth-delay product that the acknowledgements show (2/ln 2
/// times while the rate still grows): with the bound, 21 of 21 traced transfers ran as the
/// good ones, at the same speed. On a link that drops when its queue is full this keeps the
/// queue near a round trip of data and the allowance instead of filling it (and the pacing
/// at the same rate, `pace`, keeps it near empty); on a path with random loss
/// the bound grows about as fast as BBR's own STARTUP (the rate that arrives doubles each round
/// trip until the path is full): 160 ms RTT and 1% loss at each NAT, 32 MiB, 6 runs each,
/// 10.5 against 11.3 MiB/s (medians; runs 9.3-12.0 against 9.2-12.1), 20% loss with 40 ms
/// one way: 1 MiB in 4.4-5.5 s against 4.6-24 s.
#[derive(Clone, Debug, Default)]
struct Delivery {
    /// Bytes acknowledged so far.
    delivered: u64,
    /// `(when, delivered then)`, oldest first, at most one per [`MARK_SPACING`] (or per
    /// eighth of the smallest RTT on a longer path).
    marks: VecDeque<(Instant, u64)>,
    /// The latest sending time among the packets of the acknowledgement being processed.
    newest_sent: Option<Instant>,
    /// Bytes per second: the largest sample of this epoch, then of the previous one.
    best: [u64; 2],
    epoch_start: Option<Instant>,
    min_rtt: Duration,
    srtt: Duration,
    /// Start of the current round trip (a smoothed RTT long), for the full-pipe test.
    round_start: Option<Instant>,
    /// The rate at the last round that raised it by a quarter, and rounds since.
    full_rate: u64,
    rounds_flat: u32,
    /// The sender ran out of data in this round: its rate says nothing about the path.
    app_limited_in_round: bool,
    /// The bound held BBR's window down in this round (see [`Delivery::next_round`]).
    capped_in_round: bool,
    /// When the rate stopped growing: the pacing gain cycles from here.
    cycle_start: Option<Instant>,
    /// Bytes declared lost in this round, and `delivered` at its start.
    lost_in_round: u64,
    delivered_at_round: u64,
    /// The last round had data to send and the rate still grew (STARTUP): a queue it
    /// overruns is its own doing.
    probing: bool,
}

impl Delivery {
    /// A packet sent at `sent` was acknowledged; `min_rtt` and `srtt` are the connection's.
    fn on_ack(&mut self, sent: Instant, bytes: u64, min_rtt: Duration, srtt: Duration) {
        self.delivered += bytes;
        self.newest_sent = Some(self.newest_sent.map_or(sent, |s| s.max(sent)));
        self.min_rtt = min_rtt;
        self.srtt = srtt;
    }

    /// One acknowledgement fully processed: one rate sample, from the latest packet it covers.
    /// `app_limited`: the sender had less to send than its window allowed; `capped`: BBR's
    /// window was above [`Delivery::cap`].
    fn on_end_acks(&mut self, now: Instant, app_limited: bool, capped: bool) {
        self.app_limited_in_round |= app_limited;
        self.capped_in_round |= capped;
        if let Some(sent) = self.newest_sent.take() {
            // What had been delivered when that packet left: the newest mark not after it,
            // and at least [`ACK_ALLOWANCE`] and the smallest RTT back, over which held-back
            // acknowledgements average out.
            let window_start = now.checked_sub(self.min_rtt + ACK_ALLOWANCE).unwrap_or(now);
            let before = self
                .marks
                .partition_point(|&(t, _)| t <= sent.min(window_start));
            if let Some(&(then, delivered_then)) = before.checked_sub(1).map(|i| &self.marks[i]) {
                let elapsed = now.saturating_duration_since(then);
                if !elapsed.is_zero() {
                    let bytes = u128::from(self.delivered - delivered_then);
                    let rate = bytes * 1_000_000_000 / elapsed.as_nanos();
                    let rate = u64::try_from(rate).unwrap_or(u64::MAX);
                    // A sender short of data shows its own rate, not the path's: such a
                    // sample may raise the estimate but not replace it (BBR's rule), or an
                    // idle stretch would leave a burst after it paced at the idle rate.
                    if !app_limited || rate > self.rate() {
                        self.sample(now, rate);
                    }
                }
            }
        }
        self.next_round(now);
        // A mark says what was delivered by its time, acknowledgements read at that instant
        // included (one receive batch is many of them): within the spacing the newest mark
        // takes them in, so that no sample counts them as delivered after it. The rates then
        // miss at most a spacing's worth of bytes, over an interval of at least
        // [`ACK_ALLOWANCE`]: an estimate a little low, never high.
        let spacing = (self.min_rtt / 8).max(MARK_SPACING);
        match self.marks.back_mut() {
            Some((t, delivered)) if now.saturating_duration_since(*t) < spacing => {
                *delivered = self.delivered;
            }
            _ => self.marks.push_back((now, self.delivered)),
        }
        // Marks older than any packet still likely to be acknowledged: a few round trips.
        let horizon = (self.srtt * 4).max(MIN_EPOCH);
        while self
            .marks
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) > horizon)
        {
            self.marks.pop_front();
        }
    }

    /// Once per round trip: has the rate stopped growing? Only a round in which this bound
    /// was what held the sender back can say so: not one in which the sender ran out of data
    /// (a stream waiting for its first bytes, a slow input), nor one in which BBR's own window
    /// was smaller (quinn's BBR sits at four packets for 200 ms at the start), which counted
    /// and ended the growth before the path was full: a 160 ms path with 1% loss then took
    /// twice as long to fill. Or a round that overflowed a queue ([`OVERFLOW_LOSS`]).
    fn next_round(&mut self, now: Instant) {
        match self.round_start {
            Some(start) if now.saturating_duration_since(start) < self.srtt => return,
            _ => self.round_start = Some(now),
        }
        let limited = std::mem::take(&mut self.app_limited_in_round);
        let capped = std::mem::take(&mut self.capped_in_round);
        let lost = std::mem::take(&mut self.lost_in_round);
        let delivered =
            self.delivered - std::mem::replace(&mut self.delivered_at_round, self.delivered);
        self.probing = false;
        if limited || self.rounds_flat >= GROWTH_ROUNDS {
            return;
        }
        let rate = self.rate();
        if rate >= self.full_rate.saturating_add(self.full_rate / 4) {
            self.full_rate = rate;
            self.rounds_flat = 0;
            self.probing = true;
            return;
        }
        let overflow = u128::from(lost) * OVERFLOW_LOSS.1
            > u128::from(lost.saturating_add(delivered)) * OVERFLOW_LOSS.0;
        if overflow {
            self.rounds_flat = GROWTH_ROUNDS;
        } else if capped {
            self.rounds_flat += 1;
        }
        if self.rounds_flat >= GROWTH_ROUNDS {
            self.cycle_start = Some(now);
        }
        self.probing = self.rounds_flat < GROWTH_ROUNDS;
    }

    /// The gain of [`Delivery::cap`], in thousandths.
    fn cap_gain(&self) -> u128 {
        if self.rounds_flat >= GROWTH_ROUNDS {
            CAP_GAIN
        } else {
            STARTUP_GAIN
        }
    }

    /// BBR's pacing gain at `now`, in thousandths: [`STARTUP_GAIN`] while the rate grows,
    /// then [`CYCLE`], a phase per smallest RTT and [`ACK_ALLOWANCE`] -- the span of a rate
    /// sample, so that each phase shows in the samples.
    fn pacing_gain(&self, now: Instant) -> u128 {
        let Some(start) = self.cycle_start else {
            return STARTUP_GAIN;
        };
        let phase = (self.min_rtt + ACK_ALLOWANCE).as_nanos();
        let n = now.saturating_duration_since(start).as_nanos() / phase;
        CYCLE[(n % CYCLE.len() as u128) as usize]
    }

    fn sample(&mut self, now: Instant, rate: u64) {
        let epoch = (self.srtt * EPOCH_RTTS).max(MIN_EPOCH);
        match self.epoch_start {
            Some(start) if now.saturating_duration_since(start) < epoch => {}
            _ => {
                self.best = [0, self.best[0]];
                self.epoch_start = Some(now);
            }
        }
        self.best[0] = self.best[0].max(rate);
    }

    /// Bytes per second: the largest rate of this epoch and the previous one.
    fn rate(&self) -> u64 {
        self.best[0].max(self.best[1])
    }

    /// The most BBR may have in flight: the gain ([`STARTUP_GAIN`] while the rate grows,
    /// then [`CAP_GAIN`]) times the measured rate over the smallest RTT and
    /// [`ACK_ALLOWANCE`]. Zero before the first sample.
    fn cap(&self) -> u64 {
        let cap = u128::from(self.bdp()) * self.cap_gain() / 1_000;
        u64::try_from(cap).unwrap_or(u64::MAX)
    }

    /// The measured rate over the smallest RTT and [`ACK_ALLOWANCE`]: what the path holds.
    fn bdp(&self) -> u64 {
        let span = (self.min_rtt + ACK_ALLOWANCE).as_nanos();
        let bdp = u128::from(self.rate()) * span / 1_000_000_000;
        u64::try_from(bdp).unwrap_or(u64::MAX)
    }
}

impl Controller for BbrBeside {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.follow_path(now);
        self.bbr.on_sent(now, bytes, last_packet_number);
        self.cubic.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.follow_path(now);
        if self.on_old_path(sent) {
            return;
        }
        self.bbr.on_ack(now, sent, bytes, app_limited, rtt);
        self.cubic.on_ack(now, sent, bytes, app_limited, rtt);
        self.delivery.on_ack(sent, bytes, rtt.min(), rtt.get());
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.follow_path(now);
        self.bbr
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        self.cubic
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        let capped = self.bbr.window() > self.bbr_window();
        self.delivery.on_end_acks(now, app_limited, capped);
        if let Some(slot) = &self.pacing {
            slot.store(self.pacing_rate(now), Ordering::Relaxed);
        }
        if let Some(flag) = &self.probing {
            flag.store(self.delivery.probing, Ordering::Relaxed);
        }
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.follow_path(now);
        if self.on_old_path(sent) {
            return;
        }
        self.bbr
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        self.cubic
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        self.delivery.lost_in_round = self.delivery.lost_in_round.saturating_add(lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = new_mtu;
        self.bbr.on_mtu_update(new_mtu);
        self.cubic.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.cubic.window().max(self.bbr_window())
    }

    fn metrics(&self) -> ControllerMetrics {
        if self.cubic_leads() {
            self.cubic.metrics()
        } else {
            let mut m = self.bbr.metrics();
            m.congestion_window = self.bbr_window();
            m
        }
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(BbrBeside {
            bbr: self.bbr.clone_box(),
            cubic: self.cubic.clone_box(),
            delivery: self.delivery.clone(),
            pacing: self.pacing.clone(),
            path: self.path.clone(),
            path_since: self.path_since,
            mtu: self.mtu,
            probing: self.probing.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.bbr.initial_window().max(self.cubic.initial_window())
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Builds a [`BbrBeside`] for every connection (quinn's `congestion_controller_factory`),
/// publishing its pacing rate to `pace` where the socket paces.
#[derive(Debug, Default)]
pub(super) struct BbrBesideConfig {
    pub pace: Option<Arc<Pace>>,
}

impl ControllerFactory for BbrBesideConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(BbrBeside::build(now, current_mtu, self.pace.as_ref()))
    }
}

#[cfg(test)]
mod tests;

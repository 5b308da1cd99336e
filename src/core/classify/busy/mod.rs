//! How busy a port counter is. The allocation burst goes out back to back, so on a NAT that
//! other hosts use, their flows almost never fall between our samples: the burst shows the
//! counter's step, not how fast others move it. A punch toward such a NAT predicts the port
//! its next flow gets a few RTTs later, and by then others may have taken many (Klinec and
//! Matyas 2014 found prediction working up to ~35 new flows a second on the NAT).
//!
//! So two late probes go out a measured interval apart, each from a fresh socket toward the
//! server's primary endpoint, with nothing of ours creating a mapping in between: the ports
//! the counter gave them, divided by its step, count the flows of others in that interval.
//! Extrapolated over the time a punch needs -- two RTTs and the start margin -- more than the
//! lockstep tolerates ([`MAX_EXTRA_FLOWS`]) makes the counter unpredictable: random within
//! the ports it moves through, which a sweep searches.

use super::conclude::{counter_ahead, AllocationFit, MAX_EXTRA_FLOWS};
use super::report::Allocation;
use super::{Classifier, Kind, Outcome};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Fresh sockets of the late probes.
pub(super) const LATE_SOCKETS: usize = 2;
/// How far ahead of the burst the first late probe's port may be, in flows (ours after the
/// burst and others'), before it counts as a stale mapping rather than the counter's.
const AHEAD: i32 = 64;
/// How long a peer's port prediction has to hold: from the peer's last look at our counter
/// to its punch, about two RTTs plus the rendezvous start margin.
pub fn punch_horizon(rtt: Duration) -> Duration {
    rtt * 2 + Duration::from_millis(50)
}

/// Between the two late probes: half the punch horizon, so the count over the interval,
/// doubled, is the count over the horizon. Long enough that the tolerance's worth of flows
/// shows as three or more, short enough to cost one RTT.
fn late_gap(rtt: Duration) -> Duration {
    punch_horizon(rtt) / 2
}

/// Flows of other hosts a sequential NAT mapped per second, from the late probes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Busy {
    /// New flows of other hosts the counter mapped per second: the port gap between the two late
    /// probes, divided by the counter's step, over the time between them.
    pub per_s: f64,
    /// Whether that many flows over [`punch_horizon`] exceed what a prediction tolerates.
    pub too_busy: bool,
}

impl Classifier {
    pub(super) fn late_socket(&self, i: usize) -> usize {
        let lifetime = self.lifetime_points.len();
        super::SOCK_ALLOC0 + self.cfg.alloc_sockets + lifetime + usize::from(lifetime > 0) + i
    }

    /// Queued after every other probe of the burst, so the NAT maps the first late probe
    /// after all of ours; the second waits out [`late_gap`].
    pub(super) fn add_late_pair(&mut self, now: Instant) {
        let Some(rtt) = self.srtt else { return };
        let server = self.cfg.server;
        for i in 0..LATE_SOCKETS {
            let s = self.late_socket(i);
            self.add(now, Kind::Late(i), s, server, None, None);
        }
        if let Some(t) = self.txns.iter_mut().find(|t| t.kind == Kind::Late(1)) {
            t.next = now + late_gap(rtt);
        }
    }

    /// The late probes matter only for a NAT with a port counter whose mappings depend on
    /// the destination (a peer then gets a fresh port of it); once the burst and the
    /// mapping tests say otherwise, waiting for them would only slow the result.
    pub(super) fn drop_moot_late(&mut self) {
        if self.late_moot() {
            for t in &mut self.txns {
                if matches!(t.kind, Kind::Late(_)) && t.outcome == Outcome::Pending {
                    t.outcome = Outcome::TimedOut;
                }
            }
        }
    }

    /// Whether the burst and the mapping tests have shown the late probes unneeded.
    fn late_moot(&self) -> bool {
        let settled = |k: Kind| self.outcome(k).is_none_or(|o| *o != Outcome::Pending);
        let burst_done = (0..self.cfg.alloc_sockets).all(|i| settled(Kind::Alloc(i)));
        if !burst_done || !settled(Kind::MapAltIp) || !settled(Kind::MapAltBoth) {
            return false;
        }
        let base = self.answered(Kind::Base).and_then(|a| a.1);
        let same = |k: Kind| self.answered(k).and_then(|a| a.1) == base;
        let independent = same(Kind::MapAltIp) && same(Kind::MapAltBoth);
        let samples = self.alloc_samples();
        independent || self.alloc_fit(&samples).allocation != Allocation::Sequential
    }

    /// The rate of others' flows through a counter with the fitted step; `None` when the
    /// late probes were not needed, went unanswered, or do not sit on the counter.
    pub(super) fn busy(
        &self,
        fit: &AllocationFit,
        samples: &[u16],
        reasons: &mut BTreeMap<&'static str, String>,
    ) -> Option<Busy> {
        let d = fit
            .delta
            .filter(|_| fit.allocation == Allocation::Sequential)?;
        if self.late_moot() {
            return None;
        }
        let late = |i| {
            let t = self.txns.iter().find(|t| t.kind == Kind::Late(i))?;
            let (_, Some(m), _) = self.answered(Kind::Late(i))? else {
                return None;
            };
            Some((m.port(), t.ids.first()?.1))
        };
        let (Some((p0, t0)), Some((p1, t1))) = (late(0), late(1)) else {
            reasons.insert(
                "other_flows_per_s",
                "the late allocation probes were not answered".into(),
            );
            return None;
        };
        // The first late probe's port may be off the counter: its local port still had an
        // old mapping (the OS handed out a port used toward this server within the NAT's
        // timeout: repeated runs), or others moved the counter further than we trust between
        // the burst and it. Either way the count and the time start where the burst left the
        // counter, with that probe's port one of ours only where it lies on the counter
        // between there and the second one.
        let (p0, from, late0) = if counter_ahead(p0, samples, d, AHEAD) {
            (p0, t0, 0)
        } else {
            let (pb, tb) = self.burst_end(p1, samples, d, t0)?;
            let off = |p: u16| i32::from(p.wrapping_sub(pb) as i16);
            let on = off(p0) % d == 0 && (1..off(p1) / d).contains(&(off(p0) / d));
            (pb, tb, i32::from(on))
        };
        let steps = i32::from(p1.wrapping_sub(p0) as i16);
        // Off the counter: the second late probe's port an old mapping, or a fitted step
        // that is a multiple of the counter's (every burst step disturbed alike). Nothing to
        // time.
        if steps % d != 0 || steps / d < 1 {
            return None;
        }
        // A mapping of ours made between the two (the lifetime checker's first request, a
        // filtering answer's confirmation) took a port too.
        let first_in = |t: &super::Txn| t.ids.first().is_some_and(|&(_, at)| at > from && at < t1);
        let checker = self
            .txns
            .iter()
            .filter(|t| matches!(t.kind, Kind::LifetimeCheck(_)))
            .take(1)
            .filter(|t| first_in(t))
            .count();
        let twins = self
            .txns
            .iter()
            .filter(|t| matches!(t.kind, Kind::FilterIpPortTwin | Kind::FilterPortTwin))
            .filter(|t| first_in(t))
            .count();
        // A request of ours sent before them and answered only for a later copy may have
        // been mapped when that copy left, between the two (loss before the NAT). A silent
        // test's copies are no such evidence: the filtering tests' silence is their answer.
        let resent = self
            .txns
            .iter()
            .filter(|t| !matches!(t.kind, Kind::Late(_)))
            .filter(|t| {
                matches!(
                    t.outcome,
                    Outcome::Answered {
                        first_copy: false,
                        ..
                    }
                )
            })
            .filter(|t| t.ids.first().is_some_and(|&(_, at)| at <= from))
            .filter(|t| t.ids.iter().skip(1).any(|&(_, at)| at > from && at < t1))
            .count();
        let ours = (checker + twins + resent) as i32 + late0;
        let others = (steps / d - 1 - ours).max(0);
        let gap = t1
            .saturating_duration_since(from)
            .max(Duration::from_millis(1));
        let per_s = f64::from(others) / gap.as_secs_f64();
        let horizon = punch_horizon(self.srtt.unwrap_or_default());
        Some(Busy {
            per_s: (per_s * 10.0).round() / 10.0,
            too_busy: per_s * horizon.as_secs_f64() > f64::from(MAX_EXTRA_FLOWS),
        })
    }

    /// Where our requests sent by `t0` (the burst and the tests sent with it) left the
    /// counter: the mapping closest behind the second late probe's port `p1`, among those
    /// answered for their first copy (a later copy may have been mapped after `t0`) and on
    /// the counter the samples show; with the time its request left. Anchored on `p1`, not
    /// on a sample: a sample may itself be a reused port's old mapping, which the fit
    /// tolerates, and lie far behind the rest.
    fn burst_end(&self, p1: u16, samples: &[u16], d: i32, t0: Instant) -> Option<(u16, Instant)> {
        let mut best: Option<(i32, u16, Instant)> = None;
        for t in &self.txns {
            let Some(&(_, at)) = t.ids.first() else {
                continue;
            };
            let Outcome::Answered {
                mapped: Some(m),
                first_copy: true,
                ..
            } = &t.outcome
            else {
                continue;
            };
            let m = m.port();
            let on = samples.contains(&m) || counter_ahead(m, samples, d, AHEAD);
            if matches!(t.kind, Kind::Late(_)) || at > t0 || !on {
                continue;
            }
            let behind = i32::from(p1.wrapping_sub(m) as i16);
            let flows = behind / d;
            if behind % d == 0 && flows >= 1 && best.is_none_or(|b| flows < b.0) {
                best = Some((flows, m, at));
            }
        }
        best.map(|(_, port, at)| (port, at))
    }
}

/// Where a busy counter's next mappings fall: from the lowest port seen to as far as others
/// move it in `ahead` at the measured rate (at least the ports seen), capped at the port
/// space. What a peer's sweep searches instead of a prediction.
pub fn busy_range(seen: [u16; 2], delta: i32, per_s: f64, ahead: Duration) -> [u16; 2] {
    let moved = (per_s * ahead.as_secs_f64()).ceil() * f64::from(delta);
    let [lo, hi] = seen;
    if delta > 0 {
        [lo, (f64::from(hi) + moved).min(65535.0) as u16]
    } else {
        [(f64::from(lo) + moved).max(1024.0) as u16, hi]
    }
}

/// How far past the last port seen a busy counter's search range reaches: the rendezvous and
/// the start of the punch, when both peers are up, come within about this.
pub const BUSY_AHEAD: Duration = Duration::from_secs(2);

/// The search range of a busy counter that just gave a new flow `port`, moving
/// `ports_per_s`: from there to where it is [`BUSY_AHEAD`] later.
pub fn range_ahead(port: u16, ports_per_s: f64) -> [u16; 2] {
    let end = (f64::from(port) + ports_per_s * BUSY_AHEAD.as_secs_f64()).clamp(1024.0, 65535.0);
    let end = end as u16;
    [port.min(end), port.max(end)]
}

/// `range` (from the probe) moved on by `ports_per_s` over `elapsed`: where a busy counter's
/// next mappings fall now. A range pushed past either end of the port space stops there.
pub fn drift_range(range: [u16; 2], ports_per_s: f64, elapsed: Duration) -> [u16; 2] {
    let moved = ports_per_s * elapsed.as_secs_f64();
    let shift = |p: u16| (f64::from(p) + moved).clamp(1024.0, 65535.0) as u16;
    [shift(range[0]), shift(range[1])]
}

#[cfg(test)]
mod tests;

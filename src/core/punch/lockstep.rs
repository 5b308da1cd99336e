//! The window of two sequential NATs that predict each other: a small two-dimensional search
//! over how many flows each side opened before its window.
//!
//! A NAT with a port counter shared by all flows gives each new flow of ours the next port
//! after the one the rendezvous saw (offset 0). Before its window each side opens one flow to
//! the other's public endpoint (offset 1, always), then one per private candidate of the other
//! *if* its NAT routes private addresses outward (many have no route for them and drop the
//! probe untranslated), and any other program's flows move the counter too. So each side's
//! first window flow sits at offset `2 + x`, where `x` (the "extra" flows) is known only to lie
//! in `0..=locals + tolerance`; a guess that is off by one on both sides misses every pair.
//!
//! The search: the controlling side's k-th window flow aims at the follower's offset `2 + k`,
//! the follower's l-th at the controlling side's offset `2 + 2l`. With extra flows `xc` and
//! `xf`, the controlling side's k-th flow leaves from its offset `2 + xc + k` and the
//! follower's l-th from `2 + xf + l`; for `l = xc + xf` and `k = xc + 2 * xf` each flow leaves
//! from the port the other aims at, so the two are each other's reverse and both NATs let them
//! through. One such pair exists for every (xc, xf) in range once the follower opens
//! `xc_max + xf_max + 1` flows and the controlling side `xc_max + 2 * xf_max + 1`; neither needs
//! to know whether the private candidates were routable.

use super::PunchConfig;
use crate::core::classify::{Allocation, Behavior};
use crate::core::rendezvous::NatInfo;
use std::net::SocketAddr;

/// Extra flows tolerated on each side beyond its private-candidate probes: a quarter of
/// `--window`, at least one.
pub fn tolerance(window: u16) -> u16 {
    (window / 4).max(1)
}

/// The flows a side opens in the lockstep and the stride, in the peer's flows, between the
/// ports its flows aim at, given the extra flows covered before the controlling side's window
/// (`c`) and before the other's (`f`): the controlling side `c + 2f + 1` flows at every port,
/// the other `c + f + 1` at every second.
pub fn share(controlling: bool, c: u16, f: u16) -> (u16, i32) {
    if controlling {
        (c.saturating_add(f.saturating_mul(2)).saturating_add(1), 1)
    } else {
        (c.saturating_add(f).saturating_add(1), 2)
    }
}

/// Whether the pair uses the lockstep: both NATs map per destination and count their ports.
pub fn applies(me: &NatInfo, peer: &NatInfo) -> bool {
    let counting = |n: &NatInfo| {
        n.mapping != Behavior::EndpointIndependent && n.allocation == Allocation::Sequential
    };
    counting(me) && counting(peer)
}

/// The plan both sides derive alike from the rendezvous data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockstep {
    /// Whether we are the controlling side (the larger id): its k-th window flow aims at the
    /// follower's offset `2 + k`, the follower's l-th at its offset `2 + 2l`.
    pub controlling: bool,
    /// Most extra flows covered before our window, and before the peer's.
    pub my_extra_max: u16,
    /// Most extra flows covered before the peer's window: its probes of our private candidates
    /// plus [`tolerance`].
    pub peer_extra_max: u16,
    /// Our window flows, and the peer's.
    pub my_flows: u16,
    /// How many window flows the peer opens (it derives the same plan from the same data).
    pub peer_flows: u16,
}

/// Private candidates a side probes besides the public endpoint (each may or may not be a
/// flow through its NAT; those of the other family never are).
fn candidates(public: SocketAddr, locals: &[SocketAddr]) -> u16 {
    let mut seen: Vec<SocketAddr> = Vec::new();
    for a in locals {
        if *a != public && a.is_ipv4() == public.is_ipv4() && !seen.contains(a) {
            seen.push(*a);
        }
    }
    u16::try_from(seen.len()).unwrap_or(u16::MAX)
}

impl Lockstep {
    /// `None` unless both sides predict each other's sequential ports.
    pub fn new(cfg: &PunchConfig) -> Option<Self> {
        if cfg.strategy() != super::Strategy::Predict || !applies(&cfg.my_nat, &cfg.peer.nat) {
            return None;
        }
        let t = tolerance(cfg.window);
        // Our flows before the window are the probes of the peer's candidates, and its are of
        // ours.
        let my_extra_max = candidates(cfg.peer.public, &cfg.peer.locals).saturating_add(t);
        let peer_extra_max = candidates(cfg.my_public, &cfg.my_locals).saturating_add(t);
        let controlling = cfg.my_id > cfg.peer.id;
        let (c, f) = if controlling {
            (my_extra_max, peer_extra_max)
        } else {
            (peer_extra_max, my_extra_max)
        };
        let (my_flows, _) = share(controlling, c, f);
        let (peer_flows, _) = share(!controlling, c, f);
        Some(Lockstep {
            controlling,
            my_extra_max,
            peer_extra_max,
            my_flows,
            peer_flows,
        })
    }

    /// The peer's offsets (in flows past its registered port) our window flows aim at, in
    /// the order they must be opened.
    pub fn peer_offsets(&self) -> impl Iterator<Item = i32> {
        let (_, stride) = share(self.controlling, 0, 0);
        (0..i32::from(self.my_flows)).map(move |i| 2 + stride * i)
    }

    /// Our window's targets: the peer's registered port advanced by its measured step.
    pub fn targets(&self, peer_public: SocketAddr, step: i32) -> Vec<SocketAddr> {
        let base = i32::from(peer_public.port());
        self.peer_offsets()
            .map(|k| (base + step * k).rem_euclid(65536) as u16)
            .filter(|p| *p != 0)
            .map(|p| SocketAddr::new(peer_public.ip(), p))
            .collect()
    }
}

/// Lockstep attempts at most, the first included: each later one starts from a fresh
/// registration (see [`Retry`]).
pub const ATTEMPTS: u32 = 3;

/// Whether a window that did not meet is given up early for a fresh one, and when.
///
/// Both sides' windows start at the agreed moment, so once each has run for a few peer round
/// trips and a second of rounds (a check and its answer through 20% loss at each NAT still
/// cross within ten rounds of 100 ms), a window that has not met never will: some flow
/// through one NAT went where the plan did not count it (other hosts' flows beyond the
/// tolerance, a first peer's long wait for the second while its counter moved on, a window
/// flow's first packets all lost or overtaken on their way to the NAT). Then both sides
/// register again from fresh sockets, in a session derived from the agreed one
/// ([`crate::core::rendezvous::retry_session`]): the new registrations show where both
/// counters are now, both wait for the other only a server round trip, and the next window
/// tolerates twice as many extra flows. Both sides derive the same plan from the same data
/// (the agreed start, both server RTTs, `--punch-budget` and `--window` as both were given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// How long this attempt's window runs before it is given up.
    pub window_time: std::time::Duration,
}

impl Retry {
    /// The window's run before it is given up: two peer RTTs and two seconds.
    pub fn window_time(peer_rtt: std::time::Duration) -> std::time::Duration {
        std::time::Duration::from_secs(2) + peer_rtt * 2
    }

    /// `Some` when attempt `attempt` (1-based), starting `since_first` after the first
    /// attempt's start, should end early for another: the lockstep applies, attempts remain,
    /// and the punch budget still holds this window and a whole next one after it (the next
    /// registration takes a server round trip or two, well inside the second window's margin).
    pub fn plan(
        attempt: u32,
        since_first: std::time::Duration,
        budget: std::time::Duration,
        peer_rtt: std::time::Duration,
    ) -> Option<Retry> {
        let window_time = Self::window_time(peer_rtt);
        (attempt < ATTEMPTS && since_first + window_time * 2 <= budget)
            .then_some(Retry { window_time })
    }

    /// The `--window` of attempt `attempt`: doubled for each earlier window that missed,
    /// since a miss says the counter moved more than the last window tolerated.
    pub fn window(window: u16, attempt: u32) -> u16 {
        window.saturating_mul(1u16 << attempt.saturating_sub(1).min(4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe calls a counter `sequential` only while others' flows between two of its
    /// samples stay within what this window tolerates at the default `--window` of 24.
    #[test]
    fn probe_bound_is_the_default_window_tolerance() {
        assert_eq!(crate::core::classify::MAX_EXTRA_FLOWS, tolerance(24));
    }

    /// Whatever the extra flows within the bounds, one flow of each side is the other's
    /// reverse: the property the module's comment derives.
    #[test]
    fn every_pair_of_extra_counts_in_range_meets() {
        for (xc_max, xf_max) in [(1u16, 1u16), (5, 5), (2, 7), (0, 0)] {
            let c = Lockstep {
                controlling: true,
                my_extra_max: xc_max,
                peer_extra_max: xf_max,
                my_flows: xc_max + 2 * xf_max + 1,
                peer_flows: xc_max + xf_max + 1,
            };
            let f = Lockstep {
                controlling: false,
                my_extra_max: xf_max,
                peer_extra_max: xc_max,
                my_flows: c.peer_flows,
                peer_flows: c.my_flows,
            };
            let c_aims: Vec<i32> = c.peer_offsets().collect();
            let f_aims: Vec<i32> = f.peer_offsets().collect();
            for xc in 0..=i32::from(xc_max) {
                for xf in 0..=i32::from(xf_max) {
                    // (from, to) offsets of each side's window flows.
                    let c_flows: Vec<(i32, i32)> =
                        (0..).zip(&c_aims).map(|(k, a)| (2 + xc + k, *a)).collect();
                    let met = (0..)
                        .zip(&f_aims)
                        .any(|(l, a)| c_flows.contains(&(*a, 2 + xf + l)));
                    assert!(met, "xc {xc} xf {xf} ({xc_max}, {xf_max})");
                }
            }
        }
    }

    /// The default budget holds three attempts on a near path, two on a long one, and a
    /// short budget only the one.
    #[test]
    fn retries_fit_the_budget() {
        let ms = std::time::Duration::from_millis;
        let budget = ms(12_000);
        assert!(Retry::plan(1, ms(0), budget, ms(10)).is_some());
        assert!(Retry::plan(2, ms(2_300), budget, ms(10)).is_some());
        assert!(
            Retry::plan(3, ms(4_600), budget, ms(10)).is_none(),
            "at most three"
        );
        assert_eq!(
            Retry::plan(1, ms(0), budget, ms(160)).map(|r| r.window_time),
            Some(ms(2_320))
        );
        assert!(Retry::plan(2, ms(7_000), budget, ms(1_000)).is_none());
        assert!(Retry::plan(1, ms(0), ms(3_000), ms(10)).is_none());
        assert_eq!(Retry::window(24, 1), 24);
        assert_eq!(Retry::window(24, 3), 96);
        assert_eq!(Retry::window(u16::MAX, 2), u16::MAX);
    }
}

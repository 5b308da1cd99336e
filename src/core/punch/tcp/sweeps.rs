//! The sweeps of a TCP punch where a side cannot be predicted: where they aim and their
//! chance of meeting.
//!
//! - One side random, the other endpoint-independent ([`Plan::Spray`] and
//!   [`Plan::Probe`]): the random side's mappings toward the other's one port, found
//!   by the other's probes of random ports.
//! - One side random, the other a counter ([`Plan::SprayAtCounter`] and
//!   [`Plan::ProbeFromCounter`]). A sequential symmetric NAT gives each new
//!   destination the next port of its counter, so the counter side's probe toward a random
//!   port of ours leaves from a port we can predict, and only from it. The random side
//!   cannot be predicted, but it can be many: each of its attempts from a fresh port is a new
//!   random mapping aimed at one of the counter's next ports. A probe meets when one of the
//!   mappings aimed at its counter port got the port it probes; with the probe kept open for
//!   the whole budget, every later mapping aimed at that counter port is another draw.
//! - Both random ([`Plan::TwoSided`]): both sides' attempts from fresh ports at random
//!   ports of the other, meeting when two are each other's reverse.

use super::{Plan, PROBE_LINGER};
pub use crate::core::punch::{
    counter_flows, counter_sweep_per_port, counter_sweep_success_probability, TWO_SIDED_HOPELESS,
};
use crate::core::punch::{random_ports, span};
use crate::core::rendezvous::NatInfo;
use std::time::Duration;

/// `plan` as it goes out, with a two-sided sweep's chance when it is one: a hopeless
/// [`Plan::TwoSided`] (below [`TWO_SIDED_HOPELESS`], each side making `rate` attempts a
/// second for `budget`) becomes a window around the peer's port, which is unknown for a
/// random NAT, so no attempt goes out and the listener waits for luck.
pub fn two_sided_or_none(
    plan: Plan,
    me: &NatInfo,
    peer: &NatInfo,
    rate: u32,
    budget: Duration,
) -> (Plan, Option<f64>) {
    if plan != Plan::TwoSided {
        return (plan, None);
    }
    let attempts = f64::from(rate) * budget.as_secs_f64();
    let p = two_sided_success_probability(attempts, random_ports(me), random_ports(peer), budget);
    if p < TWO_SIDED_HOPELESS {
        (Plan::Window { delta: 1 }, Some(p))
    } else {
        (plan, Some(p))
    }
}

/// The counter ports a [`Plan::SprayAtCounter`] aims at, most likely first: the predicted
/// port and a window's worth after it by the step (other traffic only moves a counter
/// forward), then a quarter as many before it.
pub fn counter_targets(port: u16, delta: i32, window: u16) -> Vec<u16> {
    let d = if delta == 0 { 1 } else { delta };
    let base = i32::from(port);
    let ahead = (0..=i32::from(window)).map(|k| base + k * d);
    let behind = (1..=i32::from(window / 4)).map(|k| base - k * d);
    ahead
        .chain(behind)
        .filter_map(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .collect()
}

/// The chance that a two-sided sweep ([`Plan::TwoSided`]) connects: `attempts` on each side
/// within `budget`, each a new mapping at a random port of its own NAT's range and aimed at a
/// random port of the other's (`mine`, `theirs`). A pair meets when each aims at the other's
/// mapping, `n^2 / (|A| |B|)` pairs on average, and only while both are open: an attempt
/// lingers [`PROBE_LINGER`], so of two attempts at random moments of the budget the later
/// one finds the earlier still there with probability `1 - (1 - linger/budget)^2`. A
/// Poisson count of meetings is zero with probability `e^-mean`.
pub fn two_sided_success_probability(
    attempts: f64,
    mine: [u16; 2],
    theirs: [u16; 2],
    budget: Duration,
) -> f64 {
    let apart = 1.0 - (PROBE_LINGER.as_secs_f64() / budget.as_secs_f64().max(1e-3)).min(1.0);
    let overlap = 1.0 - apart * apart;
    let mean = attempts * attempts / (span(mine) * span(theirs)) * overlap;
    1.0 - (-mean).exp()
}

/// The chance that a sweep connects: `mappings` random ports open on the spraying side,
/// within its NAT's `ports`, and `probes` random ports of those tried by the probing side.
pub fn sweep_success_probability(mappings: usize, probes: u64, ports: [u16; 2]) -> f64 {
    let miss = 1.0 - (mappings as f64 / span(ports)).min(1.0);
    1.0 - miss.powf(probes as f64)
}

//! The sweep between a random NAT and a port counter over TCP ([`super::Plan::SprayAtCounter`] and
//! [`super::Plan::ProbeFromCounter`]): where the random side aims, how many ports the counter side
//! probes, and the chance that they meet.
//!
//! A sequential symmetric NAT gives each new destination the next port of its counter, so
//! the counter side's probe toward a random port of ours leaves from a port we can predict,
//! and only from it. The random side cannot be predicted, but it can be many: each of its
//! attempts from a fresh port is a new random mapping aimed at one of the counter's next
//! ports. A probe meets when one of the mappings aimed at its counter port got the port it
//! probes; with the probe kept open for the whole budget, every later mapping aimed at that
//! counter port is another draw.

/// The chance that a sweep at a port counter ([`super::Plan::SprayAtCounter`]) connects: `attempts`
/// from fresh ports within the budget, shared by `aimed` counter ports and at most
/// `sweep_sockets` toward each, every one a random port within the sprayer's `ports`; the
/// counter side's `flows` probes each meet when one of the mappings aimed at its port got
/// the port it probes.
pub fn counter_sweep_success_probability(
    attempts: f64,
    aimed: usize,
    sweep_sockets: usize,
    flows: usize,
    ports: [u16; 2],
) -> f64 {
    let space = f64::from(ports[1].saturating_sub(ports[0])) + 1.0;
    let per_port = (attempts / aimed.max(1) as f64).min(sweep_sockets as f64);
    let per_flow = (per_port / space).min(1.0);
    1.0 - (1.0 - per_flow).powi(i32::try_from(flows).unwrap_or(i32::MAX))
}

/// The counter ports a [`super::Plan::SprayAtCounter`] aims at, most likely first: the predicted
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

/// The distinct ports of the peer a [`super::Plan::ProbeFromCounter`] probes: half the window (at
/// least one), so that the other half absorbs flows of other hosts through our NAT between
/// our registration and the probes, as [`crate::core::punch::PunchConfig::counter_flows`] does for UDP.
pub fn counter_flows(window: u16) -> usize {
    usize::from(window / 2).max(1)
}

//! Who sweeps in a `sweep` and with what chance: the random side's mappings, the other
//! side's probes of random ports, the two-sided sweep between two random NATs, and the sweep
//! at a port counter.

use super::{counter, port_count, predictable, span, PunchConfig, Strategy, TWO_SIDED_MAX_SOCKETS};
use crate::core::rendezvous::NatInfo;

/// Below this chance a two-sided sweep is not tried, UDP or TCP: its mappings would buy
/// nothing (over whole port ranges it is hopeless, inside two carrier-grade blocks it is not).
pub const TWO_SIDED_HOPELESS: f64 = 0.01;

/// The distinct ports of the random side that a counter side probes in a sweep at its
/// counter, UDP or TCP: half the window (at least one), so that the other half absorbs
/// flows of the counter side's other hosts or programs between its registration and its
/// probes.
pub fn counter_flows(window: u16) -> usize {
    usize::from(window / 2).max(1)
}

/// How many of the random side's `attempts` within the budget go toward each of the `aimed`
/// counter ports: an equal share, at most `sweep_sockets`.
pub fn counter_sweep_per_port(attempts: f64, aimed: usize, sweep_sockets: usize) -> f64 {
    (attempts / aimed.max(1) as f64).min(sweep_sockets as f64)
}

/// The chance that a sweep at a port counter connects, UDP or TCP: `attempts` of the random
/// side within the budget, shared by the `aimed` counter ports and at most `sweep_sockets`
/// toward each, every one a random port within the sprayer's `ports`; each of the counter
/// side's `flows` probes meets when one of the mappings aimed at its port got the port it
/// probes.
pub fn counter_sweep_success_probability(
    attempts: f64,
    aimed: usize,
    sweep_sockets: usize,
    flows: usize,
    ports: [u16; 2],
) -> f64 {
    let per_port = counter_sweep_per_port(attempts, aimed, sweep_sockets);
    let per_flow = (per_port / span(ports)).min(1.0);
    1.0 - (1.0 - per_flow).powi(i32::try_from(flows).unwrap_or(i32::MAX))
}

impl PunchConfig {
    /// Whether this side opens many mappings toward the peer's registered endpoint (it is
    /// the random, symmetric side of a sweep against a peer that can be found). Against a
    /// peer that is random too that endpoint leads nowhere, so nothing is sprayed.
    pub fn i_spray(&self) -> bool {
        self.strategy() == Strategy::Sweep
            && !predictable(&self.my_nat)
            && predictable(&self.peer.nat)
    }

    /// Whether this side probes random ports of the peer.
    pub fn i_probe_random(&self) -> bool {
        self.strategy() == Strategy::Sweep && !predictable(&self.peer.nat)
    }

    /// Whether this side sprays toward a peer whose NAT gives each new destination the next
    /// port of a counter (symmetric, sequential). That peer's probes toward our random ports
    /// each leave from a new port of its counter, never from the endpoint it registered, so
    /// mappings toward that endpoint catch nothing: ours aim at its next ports instead
    /// ([`PunchConfig::counter_ports`]), every sprayed socket at each of them, while the peer
    /// probes only [`PunchConfig::counter_flows`] ports of ours, over and over, so that its
    /// counter stays among the ports we aim at.
    pub fn spray_at_counter(&self) -> bool {
        self.i_spray() && counter(&self.peer.nat)
    }

    /// The other side of [`PunchConfig::spray_at_counter`]: our NAT is the counter, the peer
    /// sprays toward its next ports, and we probe a few random ports of the peer's, again and
    /// again.
    pub fn probe_from_counter(&self) -> bool {
        self.i_probe_random() && !self.two_sided() && counter(&self.my_nat)
    }

    /// The distinct ports of the random side that the counter side probes: half the window
    /// (at least one), so the other half absorbs flows of the counter side's other hosts
    /// or programs between its registration and its probes.
    pub fn counter_flows(&self) -> usize {
        counter_flows(self.window)
    }

    /// The counter side's ports the sprayer aims at, most likely first: its flows after
    /// those toward our candidates, a window's worth by its step, then the ones before.
    pub fn counter_ports(&self) -> Vec<u16> {
        super::targets::counter_ports(self)
    }

    /// Socket 0 is the one registered at the rendezvous; a sprayer needs more, and so does
    /// each side of a two-sided sweep ([`PunchConfig::two_sided_sockets`]).
    pub fn sockets_needed(&self) -> usize {
        if self.two_sided() {
            self.two_sided_sockets()
        } else if self.i_spray() {
            1 + self.sweep_sockets
        } else {
            1
        }
    }

    /// Probes one side sends within the budget at the rate.
    fn probes_in_budget(&self) -> f64 {
        f64::from(self.rate) * self.budget.as_secs_f64()
    }

    /// Sockets that send this side's probes in a two-sided sweep: one toward each port of
    /// the peer's range is all one socket can do (a second probe to the same port reuses the
    /// mapping), so when the budget allows more probes than the peer has ports, more
    /// sockets make more distinct mappings, up to `TWO_SIDED_MAX_SOCKETS` and
    /// `--sweep-sockets`.
    pub fn two_sided_sockets(&self) -> usize {
        Self::sockets_for(self.probes_in_budget(), &self.peer.nat, self.sweep_sockets)
    }

    fn sockets_for(probes: f64, toward: &NatInfo, cap: usize) -> usize {
        let k = (probes / port_count(toward)).ceil() as usize;
        k.clamp(1, TWO_SIDED_MAX_SOCKETS.min(cap.max(1)))
    }

    /// Neither side can be found by the other (both map per destination and allocate at
    /// random), so only a two-sided birthday sweep can meet: each side probes the ports of
    /// the other from its sockets ([`PunchConfig::two_sided_sockets`]), every probe a new
    /// random mapping of its own NAT, and a probe gets through when it happens to be the
    /// reverse of one of the peer's.
    /// Endpoint-independent mapping is reachable at its mapped port whatever its allocation
    /// (RFC 4787 section 4.1), so it never makes a sweep two-sided.
    pub fn two_sided(&self) -> bool {
        self.strategy() == Strategy::Sweep
            && !predictable(&self.my_nat)
            && !predictable(&self.peer.nat)
    }

    /// A two-sided sweep with under 1% chance: over whole port ranges it is, inside two
    /// carrier-grade port blocks it is not.
    pub fn sweep_hopeless(&self) -> bool {
        self.two_sided() && self.sweep_success_probability() < TWO_SIDED_HOPELESS
    }

    /// Chance that a sweep finds a pair within the budget. One-sided: every probe hits one
    /// of the sprayer's mappings with probability sockets / port space. Two-sided: see
    /// [`PunchConfig::two_sided_probabilities`]; this is the larger of the two.
    pub fn sweep_success_probability(&self) -> f64 {
        if self.two_sided() {
            return self.two_sided_probabilities().0;
        }
        let probes = self.probes_in_budget();
        if self.spray_at_counter() || self.probe_from_counter() {
            // Each of the counter side's flows toward one of our random ports meets when one
            // of the mappings aimed at its port got that port; the budget bounds how many
            // mappings each of the window's ports gets.
            let sprayer = if self.i_spray() {
                &self.my_nat
            } else {
                &self.peer.nat
            };
            return counter_sweep_success_probability(
                probes,
                usize::from(self.window),
                self.sweep_sockets,
                self.counter_flows(),
                super::random_ports(sprayer),
            );
        }
        // The sprayer's mappings lie in its NAT's ports, which the prober searches.
        let sprayer = if self.i_spray() {
            &self.my_nat
        } else {
            &self.peer.nat
        };
        let per_probe = (self.sweep_sockets as f64 / port_count(sprayer)).min(1.0);
        1.0 - (1.0 - per_probe).powf(probes)
    }

    /// A two-sided sweep's chance, as (if the NATs give a port to several destinations, if
    /// they do not). Each side's probes are distinct (socket, peer port) pairs, at most
    /// sockets x the peer's ports, each a new mapping at a random port of its own NAT; a
    /// probe meets when the peer sent the exact reverse, so `n_a * n_b / (|A| * |B|)` pairs
    /// meet on average and a Poisson count is zero with probability `e^-that`. A NAT that
    /// keeps each port for one mapping (no reuse across destinations; Linux's conntrack
    /// reuses, since the reply tuples differ) holds at most its block's size of them, which
    /// caps the mean at one meeting: 63%. The peer is assumed to run the same rate, budget
    /// and socket cap.
    pub fn two_sided_probabilities(&self) -> (f64, f64) {
        let probes = self.probes_in_budget();
        let (a, b) = (port_count(&self.my_nat), port_count(&self.peer.nat));
        let cap = self.sweep_sockets;
        let n_a = probes.min(Self::sockets_for(probes, &self.peer.nat, cap) as f64 * b);
        let n_b = probes.min(Self::sockets_for(probes, &self.my_nat, cap) as f64 * a);
        let p = |meet: f64| 1.0 - (-meet).exp();
        (p(n_a * n_b / (a * b)), p(n_a.min(a) * n_b.min(b) / (a * b)))
    }
}

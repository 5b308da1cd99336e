//! The late allocation probes on simulated busy counters (virtual time).

use super::super::*;
use crate::sim::{self, NatBehavior, PortAlloc};
use std::time::Duration;
use Behavior::*;

fn nat(mapping: Behavior, filtering: Behavior, alloc: PortAlloc) -> Option<NatBehavior> {
    Some(NatBehavior::new(mapping, filtering, alloc))
}

/// The simulated NAT whose counter others advance: up to a few flows between samples is
/// `sequential` with the step and the spread the NAT caused, in the report, the verdict and
/// the JSON key after `port_range`; hundreds of flows are `random` within the range seen.
#[test]
fn disturbed_counter_is_sequential_when_predictable_else_random() {
    let disturbed = |step, max_extra| {
        nat(
            AddressAndPortDependent,
            AddressAndPortDependent,
            PortAlloc::SequentialDisturbed {
                start: 20000,
                step,
                max_extra,
            },
        )
    };
    let mut spreads = Vec::new();
    for seed in 0..16 {
        // Three flows of others between the two late probes, half a punch horizon apart, are
        // six over the horizon: the most a prediction absorbs.
        let (r, _) = sim::classify(disturbed(1, 3), true, 0.0, seed, None);
        assert_eq!(r.allocation, Allocation::Sequential, "seed {seed}: {r:#?}");
        assert_eq!(r.delta, Some(1), "seed {seed}: {r:#?}");
        let [lo, hi] = r.delta_spread.expect("a spread");
        assert!(lo <= hi && hi <= 3, "seed {seed}: {r:#?}");
        if hi > 0 {
            let v = r.verdict();
            let want = format!("(step 1, disturbed by up to {hi} other flow");
            assert!(v.contains(&want), "{v}");
        }
        spreads.push(hi);
        let json = serde_json::to_string(&r).expect("json");
        assert!(
            json.contains(&format!(
                ",\"delta_spread\":[{lo},{hi}],\"other_flows_per_s\":"
            )),
            "{json}"
        );
    }
    assert!(
        spreads.iter().any(|&h| h > 1),
        "the NAT was disturbed: {spreads:?}"
    );
    for seed in 0..16 {
        let (r, _) = sim::classify(disturbed(1, 500), true, 0.0, seed, None);
        assert_eq!(r.allocation, Allocation::Random, "seed {seed}: {r:#?}");
        assert_eq!((r.delta, r.delta_spread), (None, None));
        let [lo, hi] = r.port_range.expect("the range seen");
        assert!(r.allocation_samples.iter().all(|p| (lo..=hi).contains(p)));
        let json = serde_json::to_string(&r).expect("json");
        assert!(json.contains(",\"delta_spread\":null,"), "{json}");
    }
}

/// Others' flows spread in time, as real subscribers open them: the burst never sees them,
/// the late probes do. A few a second stay `sequential` (rate reported); hundreds a second
/// are `random`, searched where the counter moves, at every RTT.
#[test]
fn a_busy_counter_is_timed_by_the_late_probes() {
    let busy = |per_s| {
        nat(
            AddressAndPortDependent,
            AddressAndPortDependent,
            PortAlloc::SequentialBusy {
                start: 20000,
                step: 1,
                per_s,
            },
        )
    };
    for one_way_ms in [1u64, 20, 80] {
        let one_way = Duration::from_millis(one_way_ms);
        for quick in [false, true] {
            let run = |per_s| {
                sim::classify_configured(busy(per_s), true, 0.0, 1, one_way, |c| c.quick = quick).0
            };
            let calm = run(5);
            let what = format!("{one_way_ms} ms one way, quick {quick}");
            assert_eq!(calm.allocation, Allocation::Sequential, "{what}: {calm:#?}");
            assert_eq!(
                calm.delta_spread,
                Some([0, 0]),
                "{what}: the burst saw none"
            );
            let rate = calm.other_flows_per_s.expect("timed");
            assert!(rate < 30.0, "{what}: {rate}");

            let r = run(400);
            assert_eq!(r.allocation, Allocation::Random, "{what}: {r:#?}");
            assert_eq!((r.delta, r.delta_spread), (None, None), "{what}");
            let rate = r.other_flows_per_s.expect("timed");
            assert!((300.0..=500.0).contains(&rate), "{what}: {rate}");
            let [lo, hi] = r.search_range.expect("where to search");
            let seen = r.port_range.expect("the range seen");
            // From the lowest port seen to about two seconds of others' flows past the
            // highest: the ports the counter gives out while a peer gets ready.
            assert_eq!(lo, seen[0], "{what}");
            assert!(hi >= seen[1] + 700 && hi <= seen[1] + 900, "{what}: {r:#?}");
            assert!(
                r.verdict().contains("new flows a second"),
                "{}",
                r.verdict()
            );
            assert!(
                !r.reasons.contains_key("other_flows_per_s"),
                "{what}: {:?}",
                r.reasons
            );
        }
    }
}

/// Late probes are not needed where the allocation cannot matter or is no counter: the
/// classification does not wait for them.
#[test]
fn late_probes_are_dropped_where_moot() {
    for alloc in [PortAlloc::Preserve, PortAlloc::Random] {
        let (r, _) = sim::classify(
            nat(AddressAndPortDependent, AddressAndPortDependent, alloc),
            true,
            0.0,
            3,
            None,
        );
        assert_eq!(r.other_flows_per_s, None, "{alloc:?}");
    }
    let eim_counter = nat(
        EndpointIndependent,
        AddressAndPortDependent,
        PortAlloc::SequentialBusy {
            start: 30000,
            step: 1,
            per_s: 400,
        },
    );
    let (r, _) = sim::classify(eim_counter, true, 0.0, 3, None);
    assert_eq!(r.allocation, Allocation::Sequential, "{r:#?}");
    assert_eq!(r.other_flows_per_s, None, "{r:#?}");
}

/// The first late probe's local port still mapped from an earlier run toward the server (the
/// OS handed it out again within the NAT's timeout): it comes back with that old port and
/// takes none of the counter's. Others' flows are then counted from where the burst left the
/// counter, so a quiet counter still reads 0 a second rather than untimed (seen in the lab:
/// connect then waited for the router, as for a busy counter), and a busy one is still timed.
#[test]
fn a_stale_first_late_probe_is_timed_from_the_burst() {
    let server = SocketAddr::from((sim::SIM_SERVER, 3478));
    for quick in [false, true] {
        let (late0, _) = sockets(quick);
        for (per_s, want) in [(0u32, 0.0..=0.0), (5, 0.0..=30.0)] {
            let alloc = if per_s == 0 {
                PortAlloc::Sequential {
                    start: 20000,
                    step: 1,
                }
            } else {
                PortAlloc::SequentialBusy {
                    start: 20000,
                    step: 1,
                    per_s,
                }
            };
            let n = nat(AddressAndPortDependent, AddressAndPortDependent, alloc);
            for seed in 0..4 {
                let r = classified_after(n, seed, quick, |net, locals| {
                    net.send_from_host(locals[late0], server, b"old".to_vec())
                });
                let what = format!("quick {quick}, {per_s} flows a second, seed {seed}");
                assert_eq!(r.allocation, Allocation::Sequential, "{what}: {r:#?}");
                let rate = r.other_flows_per_s.expect("timed despite the stale probe");
                assert!(want.contains(&rate), "{what}: {rate}");
            }
        }
    }
}

/// As above, and the burst's last socket too had an old mapping, from before others moved
/// the counter 100 flows on: that sample lies far behind the rest (the fit tolerates it).
/// The count must start where the burst really left the counter, not at that sample.
#[test]
fn a_stale_last_sample_does_not_anchor_the_count() {
    let server = SocketAddr::from((sim::SIM_SERVER, 3478));
    let (late0, last) = sockets(false);
    let alloc = PortAlloc::Sequential {
        start: 20000,
        step: 1,
    };
    let n = nat(AddressAndPortDependent, AddressAndPortDependent, alloc);
    for seed in 0..4 {
        let r = classified_after(n, seed, false, |net, locals| {
            net.send_from_host(locals[last], server, b"old".to_vec());
            for port in 0..100u16 {
                let other = SocketAddr::new(locals[0].ip(), 1024 + port);
                net.send_from_host(other, server, b"other".to_vec());
            }
            net.send_from_host(locals[late0], server, b"old".to_vec());
        });
        let what = format!("seed {seed}: {:?}", r.allocation_samples);
        assert_eq!(r.allocation, Allocation::Sequential, "{what}: {r:#?}");
        assert_eq!(r.other_flows_per_s, Some(0.0), "{what}: {r:#?}");
    }
}

/// The classifier's socket of the first late probe, and that of the burst's last probe.
fn sockets(quick: bool) -> (usize, usize) {
    let mut c = ClassifierConfig::new(SocketAddr::from((sim::SIM_SERVER, 3478)));
    c.quick = quick;
    let lifetime = c.lifetime_points().len();
    let late0 = SOCK_ALLOC0 + c.alloc_sockets + lifetime + usize::from(lifetime > 0);
    (late0, SOCK_ALLOC0 + c.alloc_sockets - 1)
}

/// The classification of `n` 1 ms one way from the server, after `before` sent what it
/// likes from the classifier's sockets (old mappings).
fn classified_after(
    n: Option<NatBehavior>,
    seed: u64,
    quick: bool,
    before: impl FnOnce(&mut sim::SimNet, &[SocketAddr]),
) -> UdpReport {
    let one_ms = Duration::from_millis(1);
    sim::classify_after(n, true, 0.0, seed, one_ms, |c| c.quick = quick, before).0
}

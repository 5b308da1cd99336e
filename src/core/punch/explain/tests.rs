use super::*;

fn nat(mapping: Behavior, allocation: Allocation) -> NatInfo {
    NatInfo {
        mapping,
        filtering: Behavior::AddressAndPortDependent,
        allocation,
        delta: (allocation == Allocation::Sequential).then_some(1),
        range: None,
    }
}

fn cone() -> NatInfo {
    nat(Behavior::EndpointIndependent, Allocation::Preserving)
}

fn sequential() -> NatInfo {
    nat(Behavior::AddressAndPortDependent, Allocation::Sequential)
}

fn random() -> NatInfo {
    nat(Behavior::AddressAndPortDependent, Allocation::Random)
}

#[test]
fn udp_failure_blames_two_random_symmetric_nats_whatever_the_strategy() {
    let both = explain_failure(&random(), &random(), Strategy::Sweep);
    assert!(
        both.starts_with("both NATs are symmetric with random ports"),
        "{both}"
    );
    assert_eq!(
        both,
        explain_failure(&random(), &random(), Strategy::Direct)
    );
    // One endpoint-independent side (even with random ports) is not that case.
    let eim_random = nat(Behavior::EndpointIndependent, Allocation::Random);
    assert!(explain_failure(&eim_random, &random(), Strategy::Sweep).starts_with("the sweep found"));
}

#[test]
fn udp_failure_between_random_ports_and_a_counter_says_so() {
    for (me, peer) in [(random(), sequential()), (sequential(), random())] {
        let why = explain_failure(&me, &peer, Strategy::Sweep);
        assert!(why.contains("next port of a counter"), "{why}");
    }
}

#[test]
fn udp_failure_otherwise_follows_the_strategy() {
    assert_eq!(
        explain_failure(&cone(), &cone(), Strategy::Direct),
        "no punch packet got through: a firewall may block UDP between the peers, or one side's NAT changed its mapping"
    );
    assert_eq!(
        explain_failure(&cone(), &sequential(), Strategy::Predict),
        "the predicted ports were wrong: other traffic through the sequential NAT moved its counter; try a larger --window"
    );
    assert_eq!(
        explain_failure(&cone(), &random(), Strategy::Sweep),
        "the sweep found no open port pair within the budget; try a longer --punch-budget or more --sweep-sockets"
    );
}

#[test]
fn udp_failure_between_two_sequential_nats_says_what_the_window_covered() {
    let l = crate::core::punch::lockstep::Lockstep {
        controlling: true,
        my_extra_max: 5,
        peer_extra_max: 6,
        my_flows: 18,
        peer_flows: 12,
    };
    let why = explain_lockstep_failure(&l);
    assert!(why.starts_with("no predicted port pair met"), "{why}");
    assert!(
        why.contains("our 18 window flows and the peer's 12 cover up to 5 flows through our NAT and 6 through the peer's"),
        "{why}"
    );
    assert!(
        !why.contains("other traffic through the sequential NAT moved"),
        "{why}"
    );
}

const NOTHING_SEEN: &str =
    " (seen: 0 SYN-ACK, 0 SYN from the peer, 0 RST, 0 ICMP unreachable; 0 attempts refused)";

#[test]
fn tcp_failure_puts_failed_tls_first() {
    let seen = WatchCounts {
        rst_in: 3,
        ..Default::default()
    };
    let why = explain_tcp_failure(&random(), &random(), Strategy::Sweep, 0, 2, &seen);
    assert!(
        why.starts_with(
            "2 TCP connection(s) came up but none completed the authenticated TLS setup"
        ),
        "{why}"
    );
}

#[test]
fn tcp_failure_between_two_unpredictable_nats_needs_a_relay() {
    let why = explain_tcp_failure(
        &random(),
        &random(),
        Strategy::Sweep,
        0,
        0,
        &WatchCounts::default(),
    );
    assert_eq!(
        why,
        "neither NAT maps TCP endpoint-independently or allocates its ports predictably (both are symmetric with random ports): no port of either side can be predicted or found by a sweep; a relay is needed".to_string()
            + NOTHING_SEEN
    );
}

#[test]
fn tcp_failure_between_two_random_blocks_was_a_two_sided_sweeps_chance() {
    let block = NatInfo {
        range: Some([20000, 20511]),
        ..random()
    };
    let why = explain_tcp_failure(
        &block,
        &block,
        Strategy::Sweep,
        0,
        0,
        &WatchCounts::default(),
    );
    assert!(
        why.starts_with("both NATs are symmetric with random TCP ports, each within a port block"),
        "{why}"
    );
}

#[test]
fn tcp_failure_between_a_random_nat_and_a_counter_says_what_the_sweep_aimed_at() {
    for (me, peer) in [(random(), sequential()), (sequential(), random())] {
        let why = explain_tcp_failure(&me, &peer, Strategy::Sweep, 0, 0, &WatchCounts::default());
        assert!(
            why.starts_with("one NAT draws random TCP ports and the other gives each new destination the next port of a counter"),
            "{why}"
        );
        assert!(why.ends_with(NOTHING_SEEN), "{why}");
    }
}

#[test]
fn tcp_failure_names_a_hostile_nat_and_counts_what_was_seen() {
    let seen = WatchCounts {
        syn_in: 1,
        synack_in: 2,
        rst_in: 4,
        icmp_unreachable: 5,
        ..Default::default()
    };
    let why = explain_tcp_failure(&cone(), &sequential(), Strategy::Predict, 7, 0, &seen);
    assert!(
        why.starts_with(
            "the peer's NAT answered our SYNs with 4 RST and 5 ICMP destination-unreachable instead of staying silent (RFC 5382 REQ-4)"
        ),
        "{why}"
    );
    assert!(
        why.ends_with(
            " (seen: 2 SYN-ACK, 1 SYN from the peer, 4 RST, 5 ICMP unreachable; 7 attempts refused)"
        ),
        "{why}"
    );
    let only_icmp = WatchCounts {
        icmp_unreachable: 1,
        ..Default::default()
    };
    assert!(only_icmp.hostile().unwrap().starts_with(
        "the peer's NAT answered our SYNs with 1 ICMP destination-unreachable instead"
    ));
    assert_eq!(WatchCounts::default().hostile(), None);
}

#[test]
fn tcp_failure_otherwise_follows_the_strategy() {
    let none = WatchCounts::default();
    assert_eq!(
        explain_tcp_failure(&cone(), &cone(), Strategy::Direct, 0, 0, &none),
        "no SYN got through: a firewall may block TCP between the peers, or a NAT changed its mapping".to_string()
            + NOTHING_SEEN
    );
    assert!(
        explain_tcp_failure(&cone(), &sequential(), Strategy::Predict, 0, 0, &none)
            .starts_with("the predicted ports were wrong: other connections through")
    );
    assert!(
        explain_tcp_failure(&cone(), &random(), Strategy::Sweep, 0, 0, &none)
            .starts_with("the sweep found no open port pair within the budget")
    );
}

#[test]
fn plans_are_described_with_their_numbers() {
    assert_eq!(
        describe_plan(tcp::Plan::Direct, 8, 64),
        "one simultaneous open at the peer's port"
    );
    assert_eq!(
        describe_plan(tcp::Plan::Window { delta: 2 }, 8, 64),
        "simultaneous opens at the predicted port and the next 8 by step 2"
    );
    assert_eq!(
        describe_plan(tcp::Plan::Probe, 8, 64),
        "probing random ports of the peer from our one port"
    );
    assert_eq!(
        describe_plan(tcp::Plan::Spray, 8, 64),
        "64 connections from fresh ports toward the peer's one port"
    );
}

#[test]
fn two_random_blocks_are_explained_as_a_chance_that_missed() {
    let mut a = random();
    let mut b = random();
    a.range = Some([40960, 41471]);
    b.range = Some([20480, 20991]);
    let why = explain_failure(&a, &b, Strategy::Sweep);
    assert!(
        why.contains("port block") && why.contains("two-sided"),
        "{why}"
    );
    b.range = None;
    assert!(explain_failure(&a, &b, Strategy::Sweep).contains("a relay is needed"));
}

#[test]
fn tcp_failure_names_the_ports_of_the_sweep_and_of_each_answer() {
    let mut seen = WatchCounts {
        syn_in: 1,
        rst_in: 3,
        icmp_unreachable: 1,
        ..Default::default()
    };
    for p in (20000..=20024).chain([20030, 65535]) {
        seen.syn_to.insert(p);
    }
    seen.syn_from.insert(39357);
    for p in [20001, 20002, 20010] {
        seen.rst_from.insert(p);
    }
    seen.icmp_for.insert(20030);
    let why = explain_tcp_failure(&cone(), &sequential(), Strategy::Predict, 3, 0, &seen);
    assert!(
        why.ends_with(
            " (our SYNs went to 27 port(s) of the peer: 20000-20024, 20030, 65535; seen: 0 SYN-ACK, 1 SYN from the peer (from port 39357), 3 RST (from ports 20001-20002, 20010), 1 ICMP unreachable (for port 20030); 3 attempts refused)"
        ),
        "{why}"
    );
}

#[test]
fn a_long_port_set_is_cut_after_six_ranges() {
    let mut s = PortSet::default();
    for p in (1000..1020).step_by(2) {
        s.insert(p);
    }
    assert_eq!(
        s.to_string(),
        "1000, 1002, 1004, 1006, 1008, 1010 and 4 more"
    );
    assert_eq!(PortSet::default().to_string(), "");
}

//! The TCP classifier on hand-made observations, and against the simulator's NATs driven the
//! way `probe` drives a real one.

use super::*;
use crate::core::classify::MAX_EXTRA_FLOWS;
use crate::sim::{NatBehavior, PortAlloc, SimNat};
use proptest::prelude::*;
use std::net::IpAddr;
use std::time::Instant;
use Behavior::*;

const SERVER: &str = "192.0.2.1:3478";
const ALT: &str = "192.0.2.2:3479";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The server's four endpoints: primary, alternate IP, alternate IP and port, alternate port.
fn endpoints() -> [SocketAddr; 4] {
    let (p, a) = (addr(SERVER), addr(ALT));
    [
        p,
        SocketAddr::new(a.ip(), p.port()),
        a,
        SocketAddr::new(p.ip(), a.port()),
    ]
}

/// Observations of a NAT that maps to `m1`, `m2`, `m3` (tests I-III), allocates
/// `alloc` from local ports 50001.., and lets the SYNs in as given.
fn obs(m: [&str; 3], alloc: &[u16], port_syn: bool, both_syn: bool) -> TcpObservations {
    let [_, _, b, c] = endpoints();
    TcpObservations {
        server: addr(SERVER),
        local: addr("10.0.0.2:50000"),
        primary: Ok(TcpAnswer {
            mapped: addr(m[0]),
            other: Some(addr(ALT)),
        }),
        rtt: Some(Duration::from_micros(1234)),
        alt_ip: Some(Ok(addr(m[1]))),
        alt_both: Some(Ok(addr(m[2]))),
        alt_port: None,
        allocation: alloc
            .iter()
            .enumerate()
            .map(|(i, &p)| Some((50001 + i as u16, p)))
            .collect(),
        filter_port: SynTest::Watched {
            origin: c,
            arrived: port_syn,
        },
        filter_both: SynTest::Watched {
            origin: b,
            arrived: both_syn,
        },
    }
}

const NAT: &str = "203.0.113.10:50000";

#[test]
fn cone_kinds() {
    let m = [NAT, NAT, NAT];
    let alloc = [50001, 50002, 50003, 50004, 50005];
    for (port_syn, both_syn, want) in [
        (true, true, EndpointIndependent),
        (true, false, AddressDependent),
        (false, false, AddressAndPortDependent),
    ] {
        let r = classify(&obs(m, &alloc, port_syn, both_syn));
        assert_eq!(r.mapping, EndpointIndependent);
        assert_eq!(r.filtering, want);
        assert_eq!(r.allocation, Allocation::Preserving);
        assert_eq!(r.delta, None);
        assert!(r.behind_nat);
        assert_eq!(r.mapped, Some(addr(NAT)));
        assert_eq!(r.rtt_ms, Some(1.23));
        assert_eq!(r.other_address, Some(addr(ALT)));
        assert_eq!(r.allocation_samples, alloc.to_vec());
        assert!(r.reasons.is_empty(), "{:?}", r.reasons);
        assert!(
            r.verdict().contains("Endpoint-independent"),
            "{}",
            r.verdict()
        );
    }
}

#[test]
fn symmetric_kinds() {
    let seq = classify(&obs(
        [
            "203.0.113.10:20000",
            "203.0.113.10:20001",
            "203.0.113.10:20002",
        ],
        &[20003, 20004, 20005, 20006, 20007],
        false,
        false,
    ));
    assert_eq!(seq.mapping, AddressAndPortDependent);
    assert_eq!(seq.filtering, AddressAndPortDependent);
    assert_eq!(
        (seq.allocation, seq.delta),
        (Allocation::Sequential, Some(1))
    );
    assert!(seq.verdict().contains("step 1"), "{}", seq.verdict());

    let ad = classify(&obs(
        [
            "203.0.113.10:30007",
            "203.0.113.10:31234",
            "203.0.113.10:31234",
        ],
        &[33000, 30101, 34001, 31777, 30555],
        false,
        false,
    ));
    assert_eq!(ad.mapping, AddressDependent);
    assert_eq!(ad.allocation, Allocation::Random);
    assert!(ad.verdict().contains("random"), "{}", ad.verdict());
}

/// One equality between two random draws is not trusted where another test contradicts it
/// (see `compare_mappings`): a port change alone that moved the mapping is port dependence.
#[test]
fn a_port_drawn_twice_is_not_taken_for_independence() {
    let alloc = [33000, 30101, 34001, 31777, 30555];
    let (x, y) = ("203.0.113.10:30007", "203.0.113.10:31234");
    for (m, alt_port, want) in [
        ([x, y, y], None, AddressDependent),
        ([x, y, y], Some(x), AddressDependent),
        (
            [x, y, y],
            Some("203.0.113.10:32222"),
            AddressAndPortDependent,
        ),
        // Test II drew test I's port again, test III did not: no endpoint-independent NAT
        // maps one local endpoint to two ports.
        ([x, x, y], None, AddressAndPortDependent),
    ] {
        let mut o = obs(m, &alloc, false, false);
        o.alt_port = alt_port.map(|a| Ok(addr(a)));
        assert_eq!(classify(&o).mapping, want, "{m:?} then {alt_port:?}");
    }
}

#[test]
fn no_nat_is_open() {
    let local = "10.0.0.2:50000";
    let mut o = obs([local; 3], &[50001, 50002, 50003, 50004, 50005], true, true);
    o.local = addr(local);
    let r = classify(&o);
    assert!(!r.behind_nat);
    assert_eq!(
        (r.mapping, r.filtering, r.allocation),
        (
            EndpointIndependent,
            EndpointIndependent,
            Allocation::Preserving
        )
    );
    assert!(r.verdict().starts_with("No NAT and no TCP filtering"));
}

#[test]
fn unreachable_server_makes_everything_unknown_with_the_reason() {
    let mut o = obs([NAT; 3], &[], false, false);
    o.primary = Err("cannot connect to 192.0.2.1:3478 over TCP: refused".into());
    let r = classify(&o);
    assert_eq!(r.mapped, None);
    assert_eq!(
        (r.mapping, r.filtering, r.allocation),
        (Unknown, Unknown, Allocation::Unknown)
    );
    for k in ["mapped", "mapping", "filtering", "allocation"] {
        assert!(r.reasons[k].contains("refused"), "{k}: {:?}", r.reasons);
    }
    assert!(r.verdict().contains("TCP to the server failed"));
}

#[test]
fn without_alternate_mapping_and_filtering_are_unknown_with_reasons() {
    let mut o = obs([NAT; 3], &[50001, 50002, 50003], false, false);
    o.primary = Ok(TcpAnswer {
        mapped: addr(NAT),
        other: None,
    });
    o.alt_ip = None;
    o.alt_both = None;
    let why = "the server did not offer CONNECT-BACK".to_string();
    o.filter_port = SynTest::Unknown(why.clone());
    o.filter_both = SynTest::Unknown(why.clone());
    let r = classify(&o);
    assert_eq!((r.mapping, r.filtering), (Unknown, Unknown));
    assert!(
        r.reasons["mapping"].contains("alternate"),
        "{:?}",
        r.reasons
    );
    assert_eq!(r.reasons["filtering"], why);
    assert_eq!(r.allocation, Allocation::Preserving);
    // Not behind a NAT, the mapping is known all the same.
    o.local = addr(NAT);
    let r = classify(&o);
    assert!(!r.behind_nat);
    assert_eq!(r.mapping, EndpointIndependent);
    assert!(!r.reasons.contains_key("mapping"));
}

#[test]
fn partial_answers_say_what_is_missing() {
    let mut o = obs(
        [NAT, "203.0.113.10:50001", NAT],
        &[50001, 50002, 50003],
        false,
        false,
    );
    o.alt_both = Some(Err("no STUN answer within 2000 ms".into()));
    // One allocation probe answered is not a pattern.
    o.allocation = vec![Some((50001, 50001)), None, None];
    let r = classify(&o);
    assert_eq!(r.mapping, Unknown);
    assert!(
        r.reasons["mapping"].contains("alternate address and port")
            && r.reasons["mapping"].contains("2000 ms"),
        "{:?}",
        r.reasons
    );
    assert_eq!(r.allocation, Allocation::Unknown);
    assert!(r.reasons["allocation"].contains("only 1 of 3"));
}

#[test]
fn filtering_needs_both_tests_and_changed_origins() {
    let [p, _, b, c] = endpoints();
    let base = obs([NAT; 3], &[50001, 50002], false, false);
    // The change-IP SYN alone decides endpoint-independent filtering.
    let mut o = base.clone();
    o.filter_both = SynTest::Watched {
        origin: b,
        arrived: true,
    };
    o.filter_port = SynTest::Unknown("no CAP_NET_RAW".into());
    assert_eq!(classify(&o).filtering, EndpointIndependent);
    // Without the change-port test, a filtered change-IP SYN leaves AD and APD open.
    o.filter_both = SynTest::Watched {
        origin: b,
        arrived: false,
    };
    let r = classify(&o);
    assert_eq!(r.filtering, Unknown);
    assert_eq!(r.reasons["filtering"], "no CAP_NET_RAW");
    // A server that "connects back" from the primary endpoint tests nothing.
    let mut o = base.clone();
    o.filter_both = SynTest::Watched {
        origin: p,
        arrived: true,
    };
    let r = classify(&o);
    assert_eq!(r.filtering, Unknown);
    assert!(r.reasons["filtering"].contains("unchanged"));
    let mut o = base;
    o.filter_port = SynTest::Watched {
        origin: b,
        arrived: true,
    };
    assert_eq!(classify(&o).filtering, Unknown);
    let _ = c;
}

#[test]
fn report_serialises_with_the_udp_key_names_and_shapes() {
    let r = classify(&obs(
        [
            "203.0.113.10:20000",
            "203.0.113.10:20001",
            "203.0.113.10:20002",
        ],
        &[20003, 20004, 20005],
        false,
        false,
    ));
    let text = serde_json::to_string(&r).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let at = |k: &str| {
        text.find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("{k} missing: {text}"))
    };
    let order: Vec<usize> = [
        "local",
        "mapped",
        "behind_nat",
        "mapping",
        "filtering",
        "allocation",
        "delta",
        "rtt_ms",
        "other_address",
        "allocation_samples",
        "reasons",
        // Added by #10 (after every key that was there before): the range seen.
        "port_range",
        // Added by #10 after port_range: the flows of others a sequential counter showed.
        "delta_spread",
    ]
    .iter()
    .map(|k| at(k))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert_eq!(v.as_object().unwrap().len(), order.len(), "{text}");
    assert_eq!(v["local"], "10.0.0.2:50000");
    assert_eq!(v["mapped"], "203.0.113.10:20000");
    assert_eq!(v["mapping"], "address-and-port-dependent");
    assert_eq!(v["allocation"], "sequential");
    assert_eq!(v["delta"], 1);
    assert_eq!(v["port_range"], serde_json::json!([20003, 20005]));
}

/// Runs the probe's sequence against a simulated NAT (or none) and returns what the driver
/// would have seen.
fn simulate(nat: Option<NatBehavior>, alternate: bool, seed: u64) -> TcpObservations {
    let [p, a, b, c] = endpoints();
    let now = Instant::now();
    let host = if nat.is_some() {
        IpAddr::from([10, 0, 0, 2])
    } else {
        IpAddr::from([198, 51, 100, 2])
    };
    let mut nat = nat.map(|n| SimNat::new(IpAddr::from([203, 0, 113, 10]), n, seed));
    let mut out = |src: SocketAddr, dst: SocketAddr| match &mut nat {
        Some(n) => n.outbound(now, src, dst).expect("a port"),
        None => src,
    };
    let l = SocketAddr::new(host, 40000);
    let primary = TcpAnswer {
        mapped: out(l, p),
        other: alternate.then_some(addr(ALT)),
    };
    let alt_ip = alternate.then(|| Ok(out(l, a)));
    let alt_both = alternate.then(|| Ok(out(l, b)));
    let alt_port = alternate.then(|| Ok(out(l, c)));
    let allocation = (1..=5u16)
        .map(|i| {
            let s = SocketAddr::new(host, 40000 + i);
            Some((s.port(), out(s, p).port()))
        })
        .collect();
    let (f1, f2) = (SocketAddr::new(host, 41000), SocketAddr::new(host, 41001));
    let (m1, m2) = (out(f1, p), out(f2, p));
    let mut syn = |origin: SocketAddr, to: SocketAddr, local: SocketAddr| {
        if !alternate {
            return SynTest::Unknown("the server did not offer CONNECT-BACK".into());
        }
        let arrived = match &mut nat {
            Some(n) => n.inbound(now, origin, to) == Some(local),
            None => true,
        };
        SynTest::Watched { origin, arrived }
    };
    let filter_port = syn(c, m1, f1);
    let filter_both = syn(b, m2, f2);
    TcpObservations {
        server: p,
        local: l,
        primary: Ok(primary),
        rtt: Some(Duration::from_millis(1)),
        alt_ip,
        alt_both,
        alt_port,
        allocation,
        filter_port,
        filter_both,
    }
}

fn behavior() -> impl Strategy<Value = Behavior> {
    prop_oneof![
        Just(EndpointIndependent),
        Just(AddressDependent),
        Just(AddressAndPortDependent),
    ]
}

fn port_alloc() -> impl Strategy<Value = PortAlloc> {
    prop_oneof![
        Just(PortAlloc::Preserve),
        (1024u16..60000, 1u16..=8).prop_map(|(start, step)| PortAlloc::Sequential { start, step }),
        (1024u16..60000, 1u16..=8, 0u16..=MAX_EXTRA_FLOWS).prop_map(|(start, step, max_extra)| {
            PortAlloc::SequentialDisturbed {
                start,
                step,
                max_extra,
            }
        }),
        Just(PortAlloc::Random),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Every combination of mapping, filtering and allocation is classified as it is.
    #[test]
    fn simulated_nats_are_classified_right(
        mapping in behavior(),
        filtering in behavior(),
        alloc in port_alloc(),
        seed in any::<u64>(),
    ) {
        let n = NatBehavior::new(mapping, filtering, alloc);
        let r = classify(&simulate(Some(n), true, seed));
        prop_assert!(r.behind_nat);
        prop_assert_eq!(r.mapping, mapping, "{:?}", r);
        prop_assert_eq!(r.filtering, filtering, "{:?}", r);
        match alloc {
            // Fresh local ports are free at the NAT, so they are kept.
            PortAlloc::Preserve => prop_assert_eq!(r.allocation, Allocation::Preserving),
            PortAlloc::Sequential { step, .. } => {
                prop_assert_eq!(r.allocation, Allocation::Sequential);
                prop_assert_eq!(r.delta, Some(i32::from(step)));
                prop_assert_eq!(r.delta_spread, Some([0, 0]));
            }
            // Others' flows within the bound: still a counter, of the step or (when every
            // step happened to be disturbed alike) a multiple of it, and never more
            // disturbed than the NAT was.
            PortAlloc::SequentialDisturbed { step, max_extra, .. } => {
                prop_assert_eq!(r.allocation, Allocation::Sequential);
                let d = r.delta.expect("a step");
                prop_assert!(d > 0 && d % i32::from(step) == 0, "{:?}", r);
                let [lo, hi] = r.delta_spread.expect("a spread");
                prop_assert!(lo <= hi && hi <= max_extra, "{:?}", r);
            }
            // Not generated: the TCP probe does not time the counter.
            PortAlloc::SequentialBusy { .. } => {}
            PortAlloc::Random | PortAlloc::PerDestination { .. } | PortAlloc::RandomIn { .. } => {
                prop_assert_eq!(r.allocation, Allocation::Random)
            }
        }
        prop_assert!(r.reasons.is_empty(), "{:?}", r.reasons);
        prop_assert!(!r.verdict().is_empty());
    }

    /// Without an alternate address nothing is guessed: what needs it is unknown, with why.
    #[test]
    fn simulated_nats_without_alternate_report_unknowns(
        mapping in behavior(),
        filtering in behavior(),
        alloc in port_alloc(),
        seed in any::<u64>(),
    ) {
        let n = NatBehavior::new(mapping, filtering, alloc);
        let r = classify(&simulate(Some(n), false, seed));
        prop_assert_eq!((r.mapping, r.filtering), (Unknown, Unknown));
        prop_assert!(r.reasons.contains_key("mapping") && r.reasons.contains_key("filtering"));
        prop_assert!(r.allocation != Allocation::Unknown);
    }
}

#[test]
fn simulated_no_nat() {
    for alternate in [true, false] {
        let r = classify(&simulate(None, alternate, 1));
        assert!(!r.behind_nat);
        assert_eq!(r.mapping, EndpointIndependent);
        assert_eq!(r.allocation, Allocation::Preserving);
        assert_eq!(
            r.filtering,
            if alternate {
                EndpointIndependent
            } else {
                Unknown
            }
        );
    }
}

//! The TCP probe's plan, driven against the simulated TCP NAT and server (every NAT kind the
//! lab has), and by hand where the simulator cannot make a step fail.

use super::*;
use crate::core::classify::{Allocation, Behavior};
use crate::core::rendezvous::NatInfo;
use crate::core::stun::{Encoder, MessageType, TransactionId};
use crate::sim::tcp::{
    probe, Event, SimTcpNet, SIM_TCP_FRESH_PORT, SIM_TCP_SERVER, SIM_TCP_SERVER_ALT,
    SIM_TCP_SHARED_PORT,
};
use Behavior::*;

fn nat(mapping: Behavior, filtering: Behavior, allocation: Allocation) -> NatInfo {
    NatInfo {
        mapping,
        filtering,
        allocation,
        delta: (allocation == Allocation::Sequential).then_some(1),
        range: None,
    }
}

/// The lab's NAT kinds (tests/lab_probe.rs): name, NAT, and the TCP report's mapping,
/// filtering, allocation and delta.
#[allow(clippy::type_complexity)]
fn lab_kinds() -> Vec<(
    &'static str,
    Option<NatInfo>,
    (Behavior, Behavior, Allocation, Option<i32>),
)> {
    use Allocation::*;
    vec![
        (
            "none",
            None,
            (EndpointIndependent, EndpointIndependent, Preserving, None),
        ),
        (
            "full-cone",
            Some(nat(EndpointIndependent, EndpointIndependent, Preserving)),
            (EndpointIndependent, EndpointIndependent, Preserving, None),
        ),
        (
            "restricted-cone",
            Some(nat(EndpointIndependent, AddressDependent, Preserving)),
            (EndpointIndependent, AddressDependent, Preserving, None),
        ),
        (
            "port-restricted-cone",
            Some(nat(
                EndpointIndependent,
                AddressAndPortDependent,
                Preserving,
            )),
            (
                EndpointIndependent,
                AddressAndPortDependent,
                Preserving,
                None,
            ),
        ),
        (
            "symmetric-random",
            Some(nat(
                AddressAndPortDependent,
                AddressAndPortDependent,
                Random,
            )),
            (
                AddressAndPortDependent,
                AddressAndPortDependent,
                Random,
                None,
            ),
        ),
        (
            "symmetric-sequential",
            Some(nat(
                AddressAndPortDependent,
                AddressAndPortDependent,
                Sequential,
            )),
            (
                AddressAndPortDependent,
                AddressAndPortDependent,
                Sequential,
                Some(1),
            ),
        ),
        (
            "address-dependent",
            Some(nat(AddressDependent, AddressAndPortDependent, Random)),
            (AddressDependent, AddressAndPortDependent, Random, None),
        ),
    ]
}

fn server() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(SIM_TCP_SERVER), 3478)
}
fn alt() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(SIM_TCP_SERVER_ALT), 3479)
}

#[test]
fn every_lab_nat_kind_is_classified_as_the_lab_expects() {
    for (name, kind, (mapping, filtering, allocation, delta)) in lab_kinds() {
        for seed in 0..20 {
            let mut net = SimTcpNet::new(kind, true, seed);
            let r = probe(&mut net, Ok(()));
            let ctx = format!("{name}, seed {seed}: {r:?}");
            assert_eq!(r.behind_nat, kind.is_some(), "{ctx}");
            assert_eq!(r.mapping, mapping, "{ctx}");
            assert_eq!(r.filtering, filtering, "{ctx}");
            assert_eq!((r.allocation, r.delta), (allocation, delta), "{ctx}");
            assert_eq!(r.other_address, Some(alt()), "{ctx}");
            assert_eq!(r.allocation_samples.len(), DEFAULT_ALLOC_SOCKETS, "{ctx}");
            assert!(r.reasons.is_empty(), "{ctx}");
            // Connect plus Binding: two round trips of 20 ms.
            assert_eq!(r.rtt_ms, Some(40.0), "{ctx}");
        }
    }
}

/// The connections and their order: the mapping tests from L while it is held, the
/// allocation connections back to back from fresh ports (toward the two endpoints in turn,
/// since test III answered), then the two CONNECT-BACKs.
#[test]
fn the_steps_come_in_the_drivers_order() {
    let kind = nat(
        AddressAndPortDependent,
        AddressAndPortDependent,
        Allocation::Sequential,
    );
    let mut net = SimTcpNet::new(Some(kind), true, 1);
    probe(&mut net, Ok(()));
    let host = net.host_ip;
    let l = SocketAddr::new(host, SIM_TCP_SHARED_PORT);
    let fresh = |i: u16| SocketAddr::new(host, SIM_TCP_FRESH_PORT + i);
    let ext = |p: u16| Some(SocketAddr::new(net.public_ip, p));
    let connect = |local, to, mapped| Event::Connect { local, to, mapped };
    let alt_ip = SocketAddr::new(alt().ip(), server().port());
    let alt_port = SocketAddr::new(server().ip(), alt().port());
    let mut want = vec![
        Event::Watch(vec![server().ip()]),
        Event::Reserve(l),
        connect(l, server(), ext(20000)),
        // Test I named an alternate the watcher does not cover yet.
        Event::Watch(vec![server().ip(), alt().ip()]),
        connect(l, alt_ip, ext(20001)),
        connect(l, alt(), ext(20002)),
        Event::Release,
    ];
    for i in 0..DEFAULT_ALLOC_SOCKETS as u16 {
        let to = if i % 2 == 1 { alt() } else { server() };
        want.push(connect(fresh(i + 1), to, ext(20003 + i)));
    }
    let n = DEFAULT_ALLOC_SOCKETS as u16;
    want.extend([
        connect(fresh(n + 1), server(), ext(20003 + n)),
        connect(fresh(n + 2), server(), ext(20004 + n)),
        // Change port first, then change IP and port; both filtered by this NAT.
        Event::Syn {
            from: alt_port,
            to: ext(20003 + n).unwrap(),
            reached: None,
        },
        Event::Syn {
            from: alt(),
            to: ext(20004 + n).unwrap(),
            reached: None,
        },
    ]);
    assert_eq!(net.events, want);
}

/// The wait for the SYNs ends as soon as both arrived, or else after four round trips of
/// test I plus 300 ms from the second CONNECT-BACK answer.
#[test]
fn the_syn_wait_ends_when_everything_arrived_or_time_is_up() {
    let open = nat(
        EndpointIndependent,
        EndpointIndependent,
        Allocation::Preserving,
    );
    let closed = nat(
        EndpointIndependent,
        AddressAndPortDependent,
        Allocation::Preserving,
    );
    let mut ends = Vec::new();
    for kind in [open, closed] {
        let mut net = SimTcpNet::new(Some(kind), true, 3);
        let start = net.now;
        probe(&mut net, Ok(()));
        ends.push(net.now - start);
    }
    // Ten connections of 40 ms; the SYNs leave the server right after the answer, so they
    // are there when it is (no wait at all), or the whole wait.
    let connections = Duration::from_millis(40) * (3 + DEFAULT_ALLOC_SOCKETS as u32 + 2);
    assert_eq!(ends[0], connections);
    assert_eq!(
        ends[1],
        connections + SYN_WAIT_BASE + Duration::from_millis(40) * SYN_WAIT_RTTS
    );
}

#[test]
fn without_an_alternate_address_mapping_and_filtering_are_unknown_with_the_reasons() {
    for (name, kind, (_, _, allocation, delta)) in lab_kinds() {
        // The missing alternate is the reason even when the watcher is missing too.
        for watcher in [Ok(()), Err(WatchError::NoCapability)] {
            let mut net = SimTcpNet::new(kind, false, 5);
            let r = probe(&mut net, watcher);
            let ctx = format!("{name}: {r:?}");
            assert_eq!(r.other_address, None, "{ctx}");
            assert_eq!(r.filtering, Unknown, "{ctx}");
            assert_eq!(r.reasons["filtering"], NO_ALTERNATE, "{ctx}");
            if kind.is_some() {
                assert_eq!(r.mapping, Unknown, "{ctx}");
                assert!(
                    r.reasons["mapping"].contains("no RFC 5780 alternate address"),
                    "{ctx}"
                );
            } else {
                // No translation at all: nothing can depend on the destination.
                assert_eq!(r.mapping, EndpointIndependent, "{ctx}");
                assert!(!r.reasons.contains_key("mapping"), "{ctx}");
            }
            assert_eq!((r.allocation, r.delta), (allocation, delta), "{ctx}");
            // Test I and the allocation connections, nothing else.
            let connections = net
                .events
                .iter()
                .filter(|e| matches!(e, Event::Connect { .. }))
                .count();
            assert_eq!(connections, 1 + DEFAULT_ALLOC_SOCKETS, "{ctx}");
            assert_eq!(
                net.events.iter().filter(|e| **e == Event::Release).count(),
                1
            );
        }
    }
}

#[test]
fn without_cap_net_raw_filtering_is_unknown_with_the_reason_and_the_rest_is_measured() {
    for (name, kind, (mapping, _, allocation, delta)) in lab_kinds() {
        let mut net = SimTcpNet::new(kind, true, 6);
        let r = probe(&mut net, Err(WatchError::NoCapability));
        let ctx = format!("{name}: {r:?}");
        assert_eq!(r.filtering, Unknown, "{ctx}");
        assert_eq!(
            r.reasons["filtering"],
            "watching for the server's SYN needs CAP_NET_RAW (an AF_PACKET socket); run as root or grant it with `setcap cap_net_raw+ep` on the binary",
            "{ctx}"
        );
        assert_eq!(r.reasons.len(), 1, "{ctx}");
        assert_eq!(r.mapping, mapping, "{ctx}");
        assert_eq!((r.allocation, r.delta), (allocation, delta), "{ctx}");
        // No CONNECT-BACK is asked for when nobody could see its SYN.
        assert!(
            !net.events.iter().any(|e| matches!(e, Event::Syn { .. })),
            "{ctx}"
        );
        assert_eq!(
            net.events
                .iter()
                .filter(|e| matches!(e, Event::Connect { .. }))
                .count(),
            // Tests I-III, and the second port test where test III matched test II.
            3 + usize::from(mapping == AddressDependent) + DEFAULT_ALLOC_SOCKETS,
            "{ctx}"
        );
    }
    let mut net = SimTcpNet::new(None, true, 6);
    let r = probe(&mut net, Err(WatchError::Open("Permission denied".into())));
    assert_eq!(
        r.reasons["filtering"],
        "cannot open the AF_PACKET socket that watches for the server's SYN: Permission denied"
    );
}

/// A server that ignores CONNECT-BACK (coturn, as a comprehension-optional attribute allows).
#[test]
fn a_server_without_connect_back_leaves_filtering_unknown_with_the_reason() {
    let mut net = SimTcpNet::new(
        Some(nat(
            EndpointIndependent,
            AddressDependent,
            Allocation::Preserving,
        )),
        true,
        7,
    );
    net.connect_back = false;
    let start = net.now;
    let r = probe(&mut net, Ok(()));
    assert_eq!(r.filtering, Unknown);
    assert!(
        r.reasons["filtering"].contains("does not offer CONNECT-BACK"),
        "{r:?}"
    );
    assert_eq!(r.mapping, EndpointIndependent);
    // Nothing promised, nothing awaited.
    assert_eq!(
        net.now - start,
        Duration::from_millis(40) * (5 + DEFAULT_ALLOC_SOCKETS as u32)
    );
}

#[test]
fn an_unreachable_server_ends_the_probe_after_test_i() {
    let mut p = TcpProbe::new(server(), None);
    assert_eq!(
        p.next_step(),
        Step::Watch {
            hosts: vec![server().ip()]
        }
    );
    p.handle_watch(Ok(()));
    assert_eq!(p.next_step(), Step::Reserve);
    let l: SocketAddr = "10.0.0.2:40000".parse().unwrap();
    p.handle_reserved(l);
    assert_eq!(
        p.next_step(),
        Step::Binding {
            test: Test::Primary,
            from: Source::Shared,
            to: server(),
            timeout: BINDING_TIMEOUT
        }
    );
    p.handle_binding(Err("connection refused".into()));
    assert_eq!(p.next_step(), Step::Drain);
    assert_eq!(p.next_step(), Step::Done);
    let r = p.report();
    assert_eq!(r.local, l);
    assert_eq!(r.mapped, None);
    for k in ["mapped", "mapping", "filtering", "allocation"] {
        assert_eq!(r.reasons[k], "connection refused");
    }
}

fn answer(mapped: &str, other: Option<SocketAddr>) -> Result<BindingAnswer, String> {
    Ok(BindingAnswer {
        local: "10.0.0.2:40000".parse().unwrap(),
        mapped: mapped.parse().unwrap(),
        other,
        rtt: Duration::from_millis(5),
    })
}

/// Runs the plan by hand up to test II, with the UDP tests' alternate as the hint.
fn up_to_test_ii() -> TcpProbe {
    let mut p = TcpProbe::new(server(), Some(alt()));
    // The hint is watched from the start, so test I needs no new watcher.
    assert_eq!(
        p.next_step(),
        Step::Watch {
            hosts: vec![server().ip(), alt().ip()]
        }
    );
    p.handle_watch(Ok(()));
    assert_eq!(p.next_step(), Step::Reserve);
    p.handle_reserved("10.0.0.2:40000".parse().unwrap());
    assert!(matches!(p.next_step(), Step::Binding { .. }));
    p.handle_binding(answer("198.51.100.7:40000", Some(alt())));
    assert_eq!(
        p.next_step(),
        Step::Binding {
            test: Test::AltIp,
            from: Source::Shared,
            to: SocketAddr::new(alt().ip(), server().port()),
            timeout: BINDING_TIMEOUT
        }
    );
    p
}

#[test]
fn test_iii_is_made_only_when_test_ii_answered() {
    let mut p = up_to_test_ii();
    p.handle_binding(Err("no STUN answer over TCP within 2500 ms".into()));
    assert_eq!(p.next_step(), Step::Release);
    assert_eq!(p.next_step(), Step::Drain);
    assert!(matches!(
        p.next_step(),
        Step::Binding {
            test: Test::Allocation(0),
            from: Source::Fresh,
            ..
        }
    ));
    assert_eq!(p.observations().alt_both, None);
    // The alternate did not answer TCP, so every allocation connection goes to the primary.
    for n in 0..DEFAULT_ALLOC_SOCKETS {
        assert_eq!(
            p.next_step(),
            Step::Binding {
                test: Test::Allocation(n),
                from: Source::Fresh,
                to: server(),
                timeout: BINDING_TIMEOUT
            }
        );
        p.handle_binding(answer("198.51.100.7:40100", Some(alt())));
    }
    let r = p.report();
    assert_eq!(r.mapping, Unknown);
    assert!(
        r.reasons["mapping"].contains("alternate address did not answer over TCP: no STUN"),
        "{r:?}"
    );

    let mut p = up_to_test_ii();
    p.handle_binding(answer("198.51.100.7:40000", Some(alt())));
    assert_eq!(
        p.next_step(),
        Step::Binding {
            test: Test::AltBoth,
            from: Source::Shared,
            to: alt(),
            timeout: BINDING_TIMEOUT
        }
    );
}

/// When test III matches a test II that differed from test I, the mapping looks
/// address-dependent, but a random allocator may have drawn the same port twice: a fourth
/// test (primary IP, alternate port) decides. A port change alone that moves the mapping is
/// port dependence. Test III differing from test II needs no fourth test.
#[test]
fn an_address_dependent_look_gets_a_second_port_test() {
    for (m4, want) in [
        ("198.51.100.7:40000", AddressDependent),
        ("198.51.100.7:40777", AddressAndPortDependent),
    ] {
        let mut p = up_to_test_ii();
        p.handle_binding(answer("198.51.100.7:40312", Some(alt())));
        assert!(matches!(
            p.next_step(),
            Step::Binding {
                test: Test::AltBoth,
                ..
            }
        ));
        p.handle_binding(answer("198.51.100.7:40312", Some(alt())));
        assert_eq!(
            p.next_step(),
            Step::Binding {
                test: Test::AltPort,
                from: Source::Shared,
                to: SocketAddr::new(server().ip(), alt().port()),
                timeout: BINDING_TIMEOUT
            }
        );
        p.handle_binding(answer(m4, Some(alt())));
        assert_eq!(p.next_step(), Step::Release);
        assert_eq!(p.next_step(), Step::Drain);
        for _ in 0..DEFAULT_ALLOC_SOCKETS {
            assert!(matches!(
                p.next_step(),
                Step::Binding {
                    test: Test::Allocation(_),
                    ..
                }
            ));
            p.handle_binding(answer("198.51.100.7:40100", Some(alt())));
        }
        assert_eq!(p.report().mapping, want, "fourth mapping {m4}");
    }
    let mut p = up_to_test_ii();
    p.handle_binding(answer("198.51.100.7:40312", Some(alt())));
    p.next_step();
    p.handle_binding(answer("198.51.100.7:40313", Some(alt())));
    assert_eq!(p.next_step(), Step::Release);
}

/// A step that needs an answer is handed out again until it gets one; answers to steps not
/// asked for change nothing.
#[test]
fn steps_wait_for_their_answers() {
    let mut p = up_to_test_ii();
    let step = p.next_step();
    assert_eq!(p.next_step(), step);
    p.handle_watch(Ok(()));
    p.handle_reserved("10.0.0.9:1".parse().unwrap());
    p.handle_timeout(Instant::now() + Duration::from_secs(60));
    assert_eq!(p.next_step(), step);
    assert_eq!(p.observations().local, "10.0.0.2:40000".parse().unwrap());
}

/// Runs the plan by hand to the CONNECT-BACKs; returns it and the wait's end.
fn to_connect_back(
    port: Result<ConnectBackAnswer<'_>, ConnectBackError>,
    both: Result<ConnectBackAnswer<'_>, ConnectBackError>,
    at: Instant,
) -> (TcpProbe, Step) {
    let mut p = to_first_connect_back();
    for (filter, r) in [(Filter::Port, port), (Filter::Both, both)] {
        connect_back_is(&mut p, filter);
        p.handle_connect_back(at, r);
    }
    let s = p.next_step();
    (p, s)
}

/// A probe whose next step is the first CONNECT-BACK.
fn to_first_connect_back() -> TcpProbe {
    let mut p = up_to_test_ii();
    p.handle_binding(answer("198.51.100.7:40000", Some(alt())));
    p.next_step();
    p.handle_binding(answer("198.51.100.7:40000", Some(alt())));
    loop {
        match p.next_step() {
            Step::Binding { .. } => p.handle_binding(answer("198.51.100.7:40001", None)),
            Step::ConnectBack { .. } => return p,
            _ => {}
        }
    }
}

/// Asserts that the next step is `filter`'s CONNECT-BACK.
fn connect_back_is(p: &mut TcpProbe, filter: Filter) {
    let s = p.next_step();
    assert!(
        matches!(s, Step::ConnectBack { filter: f, change_port: true, change_ip, .. }
            if f == filter && change_ip == (filter == Filter::Both)),
        "{s:?}"
    );
}

#[test]
fn a_silent_connect_back_is_made_once_more_from_a_fresh_port() {
    let at = Instant::now();
    let mut p = to_first_connect_back();
    let silent = || {
        Err(ConnectBackError::Silent(
            "no STUN answer within 2500 ms".into(),
        ))
    };
    // The port test: silent, then answered on the second try.
    connect_back_is(&mut p, Filter::Port);
    p.handle_connect_back(at, silent());
    connect_back_is(&mut p, Filter::Port);
    let local: SocketAddr = "10.0.0.2:41003".parse().unwrap();
    let rp = promise(SocketAddr::new(server().ip(), alt().port()));
    p.handle_connect_back(
        at,
        Ok(ConnectBackAnswer {
            local,
            response: &rp,
        }),
    );
    // The other test: silent twice, which is its reason; a refusal is never retried.
    connect_back_is(&mut p, Filter::Both);
    p.handle_connect_back(at, silent());
    connect_back_is(&mut p, Filter::Both);
    p.handle_connect_back(at, silent());
    let Step::AwaitSyns { until } = p.next_step() else {
        panic!("the port test's SYN is not awaited");
    };
    p.handle_timeout(until);
    assert_eq!(p.next_step(), Step::Done);
    assert_eq!(
        p.observations().filter_both,
        SynTest::Unknown(
            "the CONNECT-BACK request failed twice, from two local ports: no STUN answer within 2500 ms"
                .into()
        )
    );
    let mut p = to_first_connect_back();
    connect_back_is(&mut p, Filter::Port);
    p.handle_connect_back(at, Err(ConnectBackError::Refused { code: 420 }));
    connect_back_is(&mut p, Filter::Both);
}

fn promise(origin: SocketAddr) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new(
        &mut out,
        MessageType::BINDING_SUCCESS,
        TransactionId::new_rfc3489([1; 16]),
    )
    .push(&Attribute::ConnectBackOrigin(origin));
    out
}

fn syn(src: SocketAddr, dst: SocketAddr) -> Seen {
    Seen::Tcp {
        src,
        dst,
        segment: Segment::Syn,
        seq: 0,
        ack: 0,
        ttl: 64,
        window: 64240,
        options: Default::default(),
    }
}

#[test]
fn only_the_promised_syn_to_the_right_port_counts() {
    let at = Instant::now();
    let alt_port = SocketAddr::new(server().ip(), alt().port());
    let (pl, bl): (SocketAddr, SocketAddr) = (
        "10.0.0.2:41001".parse().unwrap(),
        "10.0.0.2:41002".parse().unwrap(),
    );
    let (rp, rb) = (promise(alt_port), promise(alt()));
    let (mut p, s) = to_connect_back(
        Ok(ConnectBackAnswer {
            local: pl,
            response: &rp,
        }),
        Ok(ConnectBackAnswer {
            local: bl,
            response: &rb,
        }),
        at,
    );
    // Four round trips of test I (5 ms) plus 300 ms.
    let until = at + Duration::from_millis(320);
    assert_eq!(s, Step::AwaitSyns { until });
    let nat_dst = |l: SocketAddr| SocketAddr::new("198.51.100.7".parse().unwrap(), l.port());
    // Our own SYN, the wrong origin, the wrong port, not a SYN: nothing.
    assert!(p.handle_seen(true, &syn(alt(), nat_dst(bl))).is_empty());
    assert!(p.handle_seen(false, &syn(alt_port, nat_dst(bl))).is_empty());
    assert!(p.handle_seen(false, &syn(alt(), nat_dst(pl))).is_empty());
    let mut rst = syn(alt(), nat_dst(bl));
    if let Seen::Tcp { segment, .. } = &mut rst {
        *segment = Segment::Rst;
    }
    assert!(p.handle_seen(false, &rst).is_empty());
    p.handle_timeout(until - Duration::from_millis(1));
    assert_eq!(p.next_step(), Step::AwaitSyns { until });
    assert_eq!(
        p.handle_seen(false, &syn(alt(), nat_dst(bl))),
        vec![(alt(), bl)]
    );
    // Seen once is enough.
    assert!(p.handle_seen(false, &syn(alt(), nat_dst(bl))).is_empty());
    p.handle_timeout(until);
    assert_eq!(p.next_step(), Step::Done);
    let r = p.report();
    assert_eq!(r.filtering, EndpointIndependent);
    assert_eq!(
        p.observations().filter_port,
        SynTest::Watched {
            origin: alt_port,
            arrived: false
        }
    );
}

#[test]
fn failed_connect_backs_are_the_reasons_and_nothing_is_awaited() {
    let at = Instant::now();
    let (p, s) = to_connect_back(
        Err(ConnectBackError::Refused { code: 420 }),
        Err(ConnectBackError::Failed("no STUN answer".into())),
        at,
    );
    assert_eq!(s, Step::Drain);
    assert_eq!(
        p.observations().filter_port,
        SynTest::Unknown(format!(
            "{} refused the CONNECT-BACK request with error 420",
            server()
        ))
    );
    assert_eq!(
        p.observations().filter_both,
        SynTest::Unknown("the CONNECT-BACK request failed: no STUN answer".into())
    );
    assert_eq!(
        p.report().reasons["filtering"],
        "the CONNECT-BACK request failed: no STUN answer"
    );
}

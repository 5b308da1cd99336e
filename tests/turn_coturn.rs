//! The sans-IO TURN client (`core::turn`) against coturn: two clients behind lab NATs allocate
//! relays on one coturn, give each other permissions, exchange data through Send/Data
//! indications and then through channels (ChannelData), refresh, ride out coturn's stale
//! nonces (438), free their allocations with a lifetime-0 Refresh, and get typed errors for
//! wrong credentials and a used-up quota.
//!
//! The clients run in this process over plain UDP sockets opened inside the lab's host
//! namespaces (a helper thread enters the namespace with setns(2), binds, and ends; the
//! socket stays in that namespace). A small loop drives them as `core::Machine` says.
//!
//! Needs root (network namespaces, nftables) and coturn's `turnserver`; skipped otherwise
//! unless PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{find_program, ChildGuard, Lab, Node};
use common::turn::{await_both, exchange, run, udp_socket_in, Clock, Side};
use punchraw::core::turn::{Event, SendError, TurnError};
use punchraw::core::Machine;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const USER: &str = "alice";
const PASS: &str = "wonderland";
const REALM: &str = "punchraw.test";

fn server() -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 1], 3478))
}

/// The lab, or `None` (skipped) without root or without coturn.
fn lab(what: &str) -> Option<Lab> {
    if find_program("turnserver").is_none() {
        if std::env::var("PUNCHRAW_REQUIRE_LAB").as_deref() == Ok("1") {
            panic!("{what}: turnserver not found (and PUNCHRAW_REQUIRE_LAB=1)");
        }
        eprintln!("skipped: {what}: turnserver not found (apt-get install coturn)");
        return None;
    }
    // Symmetric NAT on A: a pair no punch would connect, which is what the relay is for.
    Lab::up("symmetric-random", Some("port-restricted-cone"))
}

/// Our client of user alice on coturn.
fn side(name: &'static str, sock: UdpSocket, password: &str, seed: u64, t: Instant) -> Side {
    Side::new(name, sock, server(), (USER, password), seed, t)
}

/// coturn as a relay with long-term credentials (the NAT-LAB.md command line) plus `extra`.
fn start_coturn(lab: &Lab, extra: &[&str]) -> (ChildGuard, common::tempdir::Dir) {
    let user = format!("{USER}:{PASS}");
    let mut args = vec![
        "-L",
        "203.0.113.1",
        "--relay-ip",
        "203.0.113.1",
        "--lt-cred-mech",
        "--user",
        &user,
        "--realm",
        REALM,
    ];
    args.extend_from_slice(extra);
    common::coturn(lab, &args)
}

#[test]
fn turn_client_against_coturn() {
    let Some(lab) = lab("turn client against coturn") else {
        return;
    };
    // Nonces go stale after 4 s, so the later requests meet 438 Stale Nonce.
    let (_coturn, _dir) = start_coturn(&lab, &["--stale-nonce=4"]);
    let clock = Clock {
        skip: Duration::ZERO,
    };
    let mut a = side("a", udp_socket_in(lab.ns(Node::A)), PASS, 1, clock.now());
    let mut b = side("b", udp_socket_in(lab.ns(Node::B)), PASS, 2, clock.now());

    // Allocate: 401, then authenticated.
    run(
        &mut [&mut a, &mut b],
        &clock,
        Duration::from_secs(10),
        "allocate",
        |s| {
            s.iter().all(|s| {
                s.events
                    .iter()
                    .any(|e| matches!(e, Event::Allocated { .. }))
            })
        },
    );
    for (s, nat) in [(&mut a, "NAT_A"), (&mut b, "NAT_B")] {
        let Some(Event::Allocated {
            relayed,
            mapped,
            lifetime,
        }) = s.take(|e| matches!(e, Event::Allocated { .. }))
        else {
            unreachable!()
        };
        assert_eq!(
            relayed.ip(),
            server().ip(),
            "{}: relayed on coturn's relay ip",
            s.name
        );
        assert_eq!(
            mapped.map(|m| m.ip()),
            Some(lab.addr(nat).into()),
            "{}",
            s.name
        );
        assert_eq!(
            lifetime,
            Duration::from_secs(600),
            "coturn's default lifetime"
        );
    }

    // Permissions both ways (both relays share coturn's one address, so one each).
    let (ra, rb) = (a.relayed(), b.relayed());
    a.client.create_permission(clock.now(), rb.ip());
    b.client.create_permission(clock.now(), ra.ip());
    await_both(&mut a, &mut b, &clock, "permissions", |e| {
        matches!(e, Event::PermissionCreated { .. })
    });

    // Data through Send and Data indications.
    exchange(&mut a, &mut b, &clock, "indication", 50);
    assert_eq!(a.wire.sent_send_indications, 50);
    assert_eq!(a.wire.recv_data_indications, 50);
    assert_eq!(b.wire.recv_data_indications, 50);
    assert_eq!(a.wire.sent_channel_data + a.wire.recv_channel_data, 0);

    // Let the nonce go stale: the ChannelBinds meet 438 and retry with the new nonce.
    std::thread::sleep(Duration::from_secs(5));
    let ca = a.client.bind_channel(clock.now(), rb).expect("a channel");
    let cb = b.client.bind_channel(clock.now(), ra).expect("b channel");
    run(
        &mut [&mut a, &mut b],
        &clock,
        Duration::from_secs(10),
        "channel binds",
        |s| {
            s.iter().all(|s| {
                s.events
                    .iter()
                    .any(|e| matches!(e, Event::ChannelBound { .. }))
            })
        },
    );
    assert!(
        a.wire.recv_438 > 0,
        "coturn said 438 after --stale-nonce: {:?}",
        a.wire
    );
    assert_eq!(a.client.channel(rb), Some(ca));
    assert_eq!(b.client.channel(ra), Some(cb));
    a.events.clear();
    b.events.clear();

    // Data through channels: ChannelData both ways, on the wire too.
    let before = (a.wire.sent_send_indications, b.wire.recv_data_indications);
    exchange(&mut a, &mut b, &clock, "channel", 50);
    assert_eq!(a.wire.sent_channel_data, 50);
    assert_eq!(b.wire.sent_channel_data, 50);
    assert_eq!(
        a.wire.recv_channel_data, 50,
        "coturn relays to a bound channel as ChannelData"
    );
    assert_eq!(b.wire.recv_channel_data, 50);
    assert_eq!(
        (a.wire.sent_send_indications, b.wire.recv_data_indications),
        before
    );

    // Refresh: skip the clock to the refresh time (540 s of the 600 s lifetime).
    let mut clock = clock;
    clock.skip = Duration::from_secs(541);
    run(
        &mut [&mut a, &mut b],
        &clock,
        Duration::from_secs(10),
        "refresh",
        |s| {
            s.iter().all(|s| {
                s.events
                    .iter()
                    .any(|e| matches!(e, Event::Refreshed { .. }))
            })
        },
    );
    for s in [&mut a, &mut b] {
        let Some(Event::Refreshed { lifetime }) = s.take(|e| matches!(e, Event::Refreshed { .. }))
        else {
            unreachable!()
        };
        assert_eq!(lifetime, Duration::from_secs(600), "{}", s.name);
        assert!(
            !s.events.iter().any(|e| matches!(e, Event::Failed(_))),
            "{:?}",
            s.events
        );
    }
    // Permissions and channels were refreshed on the way (due at 240 s and 540 s) and still
    // carry data.
    exchange(&mut a, &mut b, &clock, "after refresh", 10);

    // Free both allocations with lifetime 0.
    a.client.close(clock.now());
    b.client.close(clock.now());
    run(
        &mut [&mut a, &mut b],
        &clock,
        Duration::from_secs(10),
        "close",
        |s| s.iter().all(|s| s.client.is_done()),
    );
    for s in [&a, &b] {
        assert!(
            s.events.contains(&Event::Closed),
            "{}: {:?}",
            s.name,
            s.events
        );
    }
    assert_eq!(
        a.client.send_to(clock.now(), rb, b"late"),
        Err(SendError::NotAllocated)
    );

    // Freed for real: a new Allocate from the same 5-tuple succeeds (with the old allocation
    // alive it would get 437 Allocation Mismatch until the old one expired, 600 s). coturn
    // frees the 5-tuple about a second after the lifetime-0 Refresh (measured: 437 up to
    // 0.76 s, success at 1.02 s), hence the retries.
    let mut sock = a.sock;
    let freed = Instant::now();
    let mut again = loop {
        let mut s = side("a again", sock, PASS, 3, clock.now());
        run(
            &mut [&mut s],
            &clock,
            Duration::from_secs(10),
            "re-allocate",
            |s| {
                s[0].events
                    .iter()
                    .any(|e| matches!(e, Event::Allocated { .. } | Event::Failed(_)))
            },
        );
        match &s.events[0] {
            Event::Allocated { .. } => break s,
            Event::Failed(TurnError::AllocationMismatch)
                if freed.elapsed() < Duration::from_secs(5) =>
            {
                sock = s.sock;
                std::thread::sleep(Duration::from_millis(250));
            }
            other => panic!("re-allocation after close: {other:?}"),
        }
    };
    again.client.close(clock.now());
    run(
        &mut [&mut again],
        &clock,
        Duration::from_secs(10),
        "close again",
        |s| s[0].client.is_done(),
    );
}

#[test]
fn coturn_refusals_are_typed_errors() {
    let Some(lab) = lab("turn errors against coturn") else {
        return;
    };
    let (_coturn, _dir) = start_coturn(&lab, &["--user-quota=1"]);
    let clock = Clock {
        skip: Duration::ZERO,
    };

    // Wrong password: 401, then 401 again to the authenticated request.
    let mut wrong = side(
        "wrong",
        udp_socket_in(lab.ns(Node::A)),
        "not-it",
        4,
        clock.now(),
    );
    run(
        &mut [&mut wrong],
        &clock,
        Duration::from_secs(10),
        "wrong password",
        |s| s[0].client.is_done(),
    );
    assert_eq!(
        wrong.events,
        [Event::Failed(TurnError::Unauthorized {
            username: USER.into(),
            realm: REALM.into()
        })]
    );

    // Quota 1: the second allocation of the same user is refused with 486.
    let mut first = side(
        "first",
        udp_socket_in(lab.ns(Node::A)),
        PASS,
        5,
        clock.now(),
    );
    run(
        &mut [&mut first],
        &clock,
        Duration::from_secs(10),
        "first allocation",
        |s| {
            s[0].events
                .iter()
                .any(|e| matches!(e, Event::Allocated { .. }))
        },
    );
    let mut second = side(
        "second",
        udp_socket_in(lab.ns(Node::B)),
        PASS,
        6,
        clock.now(),
    );
    run(
        &mut [&mut second],
        &clock,
        Duration::from_secs(10),
        "second allocation",
        |s| s[0].client.is_done(),
    );
    assert_eq!(second.events, [Event::Failed(TurnError::AllocationQuota)]);
    first.client.close(clock.now());
    run(
        &mut [&mut first],
        &clock,
        Duration::from_secs(10),
        "close",
        |s| s[0].client.is_done(),
    );
}

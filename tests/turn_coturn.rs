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
use punchraw::core::stun::{attr_type, Attribute, ChannelData, Class, Message, Method};
use punchraw::core::turn::{Client, Event, SendError, TurnConfig, TurnError};
use punchraw::core::Machine;
use std::collections::HashSet;
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

/// A UDP socket bound inside namespace `ns`: a helper thread enters it (setns affects only
/// the calling thread), binds, and ends; the socket keeps its namespace.
fn udp_socket_in(ns: String) -> UdpSocket {
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("open the lab netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind a UDP socket in the lab");
        s.set_nonblocking(true).expect("nonblocking");
        s
    })
    .join()
    .expect("socket thread")
}

/// What crossed one side's socket, by kind, as the test checks the wire forms.
#[derive(Default, Debug)]
struct Wire {
    sent_send_indications: u32,
    sent_channel_data: u32,
    recv_data_indications: u32,
    recv_channel_data: u32,
    recv_438: u32,
}

/// One TURN client and its socket.
struct Side {
    name: &'static str,
    sock: UdpSocket,
    client: Client,
    events: Vec<Event>,
    wire: Wire,
}

impl Side {
    fn new(name: &'static str, sock: UdpSocket, password: &str, seed: u64, t: Instant) -> Side {
        let mut cfg = TurnConfig::new(server(), USER, password, seed);
        cfg.rto = Duration::from_millis(200);
        cfg.software = Some("punchraw turn_coturn test".into());
        Side {
            name,
            sock,
            client: Client::new(cfg, t),
            events: Vec::new(),
            wire: Wire::default(),
        }
    }

    /// One turn of the `Machine` loop at time `t`: input, timeout, transmits, events.
    fn pump(&mut self, t: Instant) {
        let mut buf = vec![0u8; 65_536];
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let b = &buf[..n];
                    if ChannelData::is_channel_data(b) {
                        self.wire.recv_channel_data += 1;
                    } else if let Ok(m) = Message::parse(b) {
                        let mt = m.message_type();
                        if mt.method == Method::Data && mt.class == Class::Indication {
                            self.wire.recv_data_indications += 1;
                        }
                        if let Some(Ok(Attribute::ErrorCode(e))) = m.get(attr_type::ERROR_CODE) {
                            if e.code == 438 {
                                self.wire.recv_438 += 1;
                            }
                        }
                    }
                    self.client.handle_input(t, 0, from, b);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{}: recv: {e}", self.name),
            }
        }
        if self.client.poll_timeout().is_some_and(|d| d <= t) {
            self.client.handle_timeout(t);
        }
        self.flush();
        while let Some(ev) = self.client.poll_event() {
            self.events.push(ev);
        }
    }

    fn flush(&mut self) {
        while let Some(tx) = self.client.poll_transmit() {
            if ChannelData::is_channel_data(&tx.payload) {
                self.wire.sent_channel_data += 1;
            } else if Message::parse(&tx.payload)
                .is_ok_and(|m| m.message_type().method == Method::Send)
            {
                self.wire.sent_send_indications += 1;
            }
            self.sock
                .send_to(&tx.payload, tx.dst)
                .unwrap_or_else(|e| panic!("{}: send to {}: {e}", self.name, tx.dst));
        }
    }

    fn take(&mut self, f: impl Fn(&Event) -> bool) -> Option<Event> {
        let i = self.events.iter().position(f)?;
        Some(self.events.remove(i))
    }

    fn relayed(&self) -> SocketAddr {
        self.client.relayed().expect("allocated")
    }
}

/// The test's clock: real time plus a skip, so a refresh due in minutes can be made due now
/// (the machine only knows the instants it is given).
struct Clock {
    skip: Duration,
}

impl Clock {
    fn now(&self) -> Instant {
        Instant::now() + self.skip
    }
}

/// Pumps all sides until `done` holds, panicking with the events seen after `limit`.
fn run(
    sides: &mut [&mut Side],
    clock: &Clock,
    limit: Duration,
    what: &str,
    done: impl Fn(&mut [&mut Side]) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        for s in sides.iter_mut() {
            s.pump(clock.now());
        }
        if done(sides) {
            return;
        }
        if Instant::now() > deadline {
            let seen: Vec<_> = sides.iter().map(|s| (s.name, &s.events, &s.wire)).collect();
            panic!("{what}: not within {limit:?}; seen {seen:#?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sends `count` numbered datagrams each way and waits for all of them; returns nothing but
/// panics on loss, corruption or a wrong sender.
fn exchange(a: &mut Side, b: &mut Side, clock: &Clock, tag: &str, count: u32) {
    let (ra, rb) = (a.relayed(), b.relayed());
    let payload = |from: &str, i: u32| -> Vec<u8> {
        let mut p = format!("{tag} {from} #{i} ").into_bytes();
        p.resize(1200, (i % 251) as u8);
        p
    };
    for i in 0..count {
        a.client
            .send_to(clock.now(), rb, &payload("a", i))
            .expect("a sends");
        b.client
            .send_to(clock.now(), ra, &payload("b", i))
            .expect("b sends");
    }
    a.flush();
    b.flush();
    let got = |s: &mut Side, from: SocketAddr, who: &str| -> HashSet<u32> {
        let mut seen = HashSet::new();
        s.events.retain(|e| match e {
            Event::Data { peer, bytes } if *peer == from => {
                let i = (0..count)
                    .find(|&i| *bytes == payload(who, i))
                    .unwrap_or_else(|| panic!("{tag}: unexpected bytes from {who}"));
                seen.insert(i);
                false
            }
            _ => true,
        });
        seen
    };
    let mut at_b = HashSet::new();
    let mut at_a = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while at_a.len() < count as usize || at_b.len() < count as usize {
        a.pump(clock.now());
        b.pump(clock.now());
        at_b.extend(got(b, ra, "a"));
        at_a.extend(got(a, rb, "b"));
        assert!(
            Instant::now() < deadline,
            "{tag}: a got {} of {count}, b got {} of {count}; a {:?} b {:?}",
            at_a.len(),
            at_b.len(),
            a.wire,
            b.wire
        );
        std::thread::sleep(Duration::from_millis(2));
    }
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
    let mut a = Side::new("a", udp_socket_in(lab.ns(Node::A)), PASS, 1, clock.now());
    let mut b = Side::new("b", udp_socket_in(lab.ns(Node::B)), PASS, 2, clock.now());

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
    run(
        &mut [&mut a, &mut b],
        &clock,
        Duration::from_secs(10),
        "permissions",
        |s| {
            s.iter().all(|s| {
                s.events
                    .iter()
                    .any(|e| matches!(e, Event::PermissionCreated { .. }))
            })
        },
    );
    a.events.clear();
    b.events.clear();

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
        let mut s = Side::new("a again", sock, PASS, 3, clock.now());
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
    let mut wrong = Side::new(
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
    let mut first = Side::new(
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
    let mut second = Side::new(
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

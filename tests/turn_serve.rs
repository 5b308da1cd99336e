//! `punchraw serve --relay` as a TURN server (RFC 8656) in the lab: coturn's
//! `turnutils_uclient` relays through it (channels and Send indications, to the server over
//! UDP and over TCP, every datagram echoed back); our own client machine (`core::turn::Client`) relays between two hosts behind NATs
//! both ways; a peer without a permission gets nothing through; a wrong password is a typed
//! 401; and the statistics `serve` prints at SIGINT count the allocations and free them.
//!
//! Needs root (network namespaces, nftables) and coturn's `turnutils_uclient`; skipped
//! otherwise unless PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{find_program, ChildGuard, Lab, Node};
use common::turn::{await_both, exchange, run, udp_socket_in, Clock, Side};
use punchraw::core::turn::{Event, TurnError};
use punchraw::core::Machine;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

const USER: &str = "u";
const PASS: &str = "p";
const REALM: &str = "lab.test";

fn server() -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 1], 3478))
}

/// The lab, or `None` (skipped) without root or without coturn's client.
fn lab(what: &str) -> Option<Lab> {
    if find_program("turnutils_uclient").is_none() {
        if std::env::var("PUNCHRAW_REQUIRE_LAB").as_deref() == Ok("1") {
            panic!("{what}: turnutils_uclient not found (and PUNCHRAW_REQUIRE_LAB=1)");
        }
        eprintln!("skipped: {what}: turnutils_uclient not found (apt-get install coturn)");
        return None;
    }
    Lab::up("symmetric-random", Some("port-restricted-cone"))
}

/// `punchraw serve --relay` with user u:p, its stderr kept for the statistics.
struct Relay {
    child: ChildGuard,
    log: std::path::PathBuf,
    _dir: common::tempdir::Dir,
}

impl Relay {
    fn start(lab: &Lab, extra: &[&str]) -> Relay {
        let dir = common::tempdir::Dir::new(&format!("{}-relay", lab.name()));
        let log = dir.path.join("serve.log");
        let file = std::fs::File::create(&log).expect("serve log");
        let user = format!("{USER}:{PASS}");
        let mut args = vec![
            "--relay",
            "--relay-user",
            &user,
            "--relay-realm",
            REALM,
            "--relay-ports",
            "40000-40999",
        ];
        args.extend_from_slice(extra);
        let child = common::punchraw_serve_to(lab, &args, Stdio::from(file));
        Relay {
            child,
            log,
            _dir: dir,
        }
    }

    /// SIGINT, then the server's final status lines.
    fn stop(self) -> String {
        self.stop_with(nix::sys::signal::Signal::SIGINT, 130)
    }

    /// `signal`, the exit code it must end with, then the server's final status lines.
    fn stop_with(mut self, signal: nix::sys::signal::Signal, code: i32) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal serve");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait serve") {
                assert_eq!(status.code(), Some(code), "serve ends like a {signal}");
                break;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::read_to_string(&self.log).expect("read serve log")
    }
}

/// The number before `what` in the relay statistics, e.g. `count(log, "made")`.
fn count(log: &str, what: &str) -> u64 {
    let relay = log
        .split("relay: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no relay statistics in {log}"));
    let at = relay
        .find(&format!(" {what}"))
        .unwrap_or_else(|| panic!("no {what:?} in {relay}"));
    relay[..at]
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {what:?} in {relay}"))
}

/// `turnutils_uclient -y` (two clients relaying to each other) from host A with `flags`;
/// returns (sent, received) datagrams after checking it succeeded without loss.
fn uclient(lab: &Lab, flags: &[&str]) -> (u64, u64) {
    let out = lab
        .cmd(Node::A, "timeout")
        .args([
            "60",
            "turnutils_uclient",
            "-y",
            "-c",
            "-u",
            USER,
            "-w",
            PASS,
        ])
        .args(["-n", "50", "-l", "400"])
        .args(flags)
        .arg("203.0.113.1")
        .output()
        .expect("run turnutils_uclient");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "turnutils_uclient {flags:?}: {text}");
    let field = |name: &str| -> u64 {
        let at = text
            .rfind(name)
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        text[at + name.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("{name} unreadable in {text}"))
    };
    let (sent, recv) = (field("tot_send_msgs="), field("tot_recv_msgs="));
    assert!(
        text.contains("Total lost packets 0 "),
        "uclient {flags:?} lost packets: {text}"
    );
    (sent, recv)
}

#[test]
fn turnutils_uclient_relays_through_punchraw() {
    let Some(lab) = lab("turnutils_uclient against serve --relay") else {
        return;
    };
    let relay = Relay::start(&lab, &[]);
    // Channels (ChannelData), then Send and Data indications (-s); over UDP, then over TCP
    // to the server (-t, RFC 8656 section 3.1; the relayed transport stays UDP).
    for flags in [&[][..], &["-s"], &["-t"], &["-t", "-s"]] {
        let (sent, recv) = uclient(&lab, flags);
        assert_eq!((sent, recv), (100, 100), "uclient {flags:?}");
    }
    let log = relay.stop();
    assert!(count(&log, "made") >= 8, "{log}");
    assert_eq!(count(&log, "active"), 0, "{log}");
    assert!(count(&log, "channels") >= 2, "{log}");
    // 100 datagrams of 400 bytes each way per run.
    assert!(count(&log, "bytes") >= 4 * 40_000, "{log}");
    let tcp: u64 = log
        .split("tcp: ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tcp connections in {log}"));
    assert!(tcp >= 2, "uclient -t came over TCP: {log}");
}

#[test]
fn our_client_relays_between_two_nated_hosts() {
    let Some(lab) = lab("our TURN client through serve --relay") else {
        return;
    };
    let relay = Relay::start(&lab, &[]);
    let clock = Clock {
        skip: Duration::ZERO,
    };
    let creds = (USER, PASS);
    let sock_a = udp_socket_in(lab.ns(Node::A));
    let sock_b = udp_socket_in(lab.ns(Node::B));
    let mut a = Side::new("a", sock_a, server(), creds, 1, clock.now());
    let mut b = Side::new("b", sock_b, server(), creds, 2, clock.now());
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
            relayed, mapped, ..
        }) = s.take(|e| matches!(e, Event::Allocated { .. }))
        else {
            unreachable!()
        };
        assert_eq!(relayed.ip(), server().ip(), "{}", s.name);
        assert!((40000..=40999).contains(&relayed.port()), "{}", s.name);
        assert_eq!(
            mapped.map(|m| m.ip()),
            Some(lab.addr(nat).into()),
            "{}",
            s.name
        );
    }
    let (ra, rb) = (a.relayed(), b.relayed());
    a.client.create_permission(clock.now(), rb.ip());
    b.client.create_permission(clock.now(), ra.ip());
    await_both(&mut a, &mut b, &clock, "permissions", |e| {
        matches!(e, Event::PermissionCreated { .. })
    });
    exchange(&mut a, &mut b, &clock, "indication", 50);
    assert_eq!(a.wire.recv_data_indications, 50);
    assert_eq!(b.wire.recv_data_indications, 50);

    a.client.bind_channel(clock.now(), rb).expect("a channel");
    b.client.bind_channel(clock.now(), ra).expect("b channel");
    await_both(&mut a, &mut b, &clock, "channel binds", |e| {
        matches!(e, Event::ChannelBound { .. })
    });
    exchange(&mut a, &mut b, &clock, "channel", 50);
    assert_eq!(a.wire.recv_channel_data, 50, "{:?}", a.wire);
    assert_eq!(b.wire.recv_channel_data, 50, "{:?}", b.wire);

    // A datagram larger than a STUN request (the primary port's receive slots are sized for
    // relaying): 8000 bytes, fragmented on the way, arrive whole.
    let big: Vec<u8> = (0..8000u32).map(|i| (i % 253) as u8).collect();
    a.client
        .send_to(clock.now(), rb, &big)
        .expect("a sends big");
    a.flush();
    run(
        &mut [&mut a, &mut b],
        &clock,
        Duration::from_secs(10),
        "a big datagram",
        |s| {
            s[1].events
                .iter()
                .any(|e| matches!(e, Event::Data { bytes, .. } if bytes.len() == 8000))
        },
    );
    assert!(b
        .events
        .iter()
        .any(|e| matches!(e, Event::Data { peer, bytes } if *peer == ra && *bytes == big)));

    a.client.close(clock.now());
    b.client.close(clock.now());
    run(
        &mut [&mut a, &mut b],
        &clock,
        Duration::from_secs(10),
        "close",
        |s| s.iter().all(|s| s.client.is_done()),
    );
    assert!(a.events.contains(&Event::Closed) && b.events.contains(&Event::Closed));
    let log = relay.stop();
    assert_eq!(count(&log, "made"), 2, "{log}");
    assert_eq!(count(&log, "freed by the client"), 2, "{log}");
    assert_eq!(count(&log, "active"), 0, "{log}");
    assert!(count(&log, "bytes") >= 100 * 1200, "{log}");
}

#[test]
fn a_peer_without_permission_gets_nothing_through() {
    let Some(lab) = lab("serve --relay permissions") else {
        return;
    };
    let relay = Relay::start(&lab, &[]);
    let clock = Clock {
        skip: Duration::ZERO,
    };
    let sock = udp_socket_in(lab.ns(Node::A));
    let mut a = Side::new("a", sock, server(), (USER, PASS), 3, clock.now());
    run(
        &mut [&mut a],
        &clock,
        Duration::from_secs(10),
        "allocate",
        |s| {
            s[0].events
                .iter()
                .any(|e| matches!(e, Event::Allocated { .. }))
        },
    );
    a.events.clear();
    let ra = a.relayed();
    // A plain UDP peer on host B (behind its NAT) sends to A's relayed address.
    let peer = udp_socket_in(lab.ns(Node::B));
    let poke = |tag: &str| {
        for _ in 0..5 {
            peer.send_to(tag.as_bytes(), ra).expect("peer sends");
        }
    };
    poke("unpermitted");
    let until = Instant::now() + Duration::from_millis(700);
    while Instant::now() < until {
        a.pump(clock.now());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !a.events.iter().any(|e| matches!(e, Event::Data { .. })),
        "relayed without a permission: {:?}",
        a.events
    );
    // With a permission for NAT B's address the same datagrams arrive, from NAT B.
    let nat_b = std::net::IpAddr::from(lab.addr("NAT_B"));
    a.client.create_permission(clock.now(), nat_b);
    run(
        &mut [&mut a],
        &clock,
        Duration::from_secs(10),
        "permission",
        |s| {
            s[0].events
                .iter()
                .any(|e| matches!(e, Event::PermissionCreated { .. }))
        },
    );
    poke("permitted");
    run(
        &mut [&mut a],
        &clock,
        Duration::from_secs(10),
        "data from the permitted peer",
        |s| {
            s[0].events.iter().any(|e| {
                matches!(e, Event::Data { peer, bytes } if peer.ip() == nat_b && bytes == b"permitted")
            })
        },
    );
    let log = relay.stop();
    assert!(
        count(&log, "without") >= 5,
        "dropped without permission: {log}"
    );
}

#[test]
fn wrong_password_is_a_typed_401() {
    let Some(lab) = lab("serve --relay wrong password") else {
        return;
    };
    let relay = Relay::start(&lab, &[]);
    let clock = Clock {
        skip: Duration::ZERO,
    };
    let sock = udp_socket_in(lab.ns(Node::A));
    let mut wrong = Side::new("wrong", sock, server(), (USER, "nope"), 4, clock.now());
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
    let log = relay.stop();
    assert_eq!(count(&log, "made"), 0, "{log}");
    assert!(log.contains("401 x2"), "{log}");
}

/// The relay's options are checked before anything is bound: no lab needed.
#[test]
fn relay_options_are_checked() {
    let serve = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_punchraw"))
            .args(["serve", "--listen", "127.0.0.1", "--port", "1"])
            .args(args)
            .output()
            .expect("run punchraw serve");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = serve(&["--relay", "--registry", "redis://127.0.0.1:1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--relay needs at least one --relay-user USER:PASS"),
        "{err}"
    );
    let (code, err) = serve(&["--relay-user", "u:p"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("add --relay"), "{err}");
    let realm = "r".repeat(33);
    let (code, err) = serve(&["--relay", "--relay-user", "u:p", "--relay-realm", &realm]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("realm"), "{err}");
    let (code, err) = serve(&["--relay", "--relay-user", "u:p", "--relay-ports", "5-4"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("LO <= HI"), "{err}");
    let (code, err) = serve(&["--relay", "--relay-user", "nopassword"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("USER:PASS"), "{err}");
}

/// A TCP stream to the server opened inside namespace `ns` (as `udp_socket_in`).
fn tcp_stream_in(ns: String, to: SocketAddr) -> std::net::TcpStream {
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("open the lab netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect")
    })
    .join()
    .expect("socket thread")
}

/// Our client over TCP (RFC 8656 section 3.1): allocates and receives relayed data framed on
/// the stream; when it stops reading, the relay does not stall on it for more than the write
/// timeout: it shuts the connection, and the allocation ends with it.
#[test]
fn over_tcp_a_client_that_stops_reading_is_cut_off() {
    use punchraw::core::stun::frame_len;
    use punchraw::core::turn::{Client, Transport, TurnConfig};
    use std::io::{Read, Write};
    let Some(lab) = lab("our TURN client over TCP through serve --relay") else {
        return;
    };
    let relay = Relay::start(&lab, &[]);
    let mut stream = tcp_stream_in(lab.ns(Node::A), server());
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut cfg = TurnConfig::new(server(), USER, PASS, 5);
    cfg.transport = Transport::Stream;
    let t0 = Instant::now();
    let mut c = Client::new(cfg, t0);
    let nat_b = std::net::IpAddr::from(lab.addr("NAT_B"));
    let mut events = Vec::new();
    let mut inbuf = Vec::new();
    let mut permitted = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events
        .iter()
        .any(|e| matches!(e, Event::PermissionCreated { .. }))
    {
        assert!(
            Instant::now() < deadline,
            "no allocation over TCP: {events:?}"
        );
        while let Some(tx) = c.poll_transmit() {
            stream.write_all(&tx.payload).expect("write to the server");
        }
        let mut b = [0u8; 4096];
        if let Ok(n) = stream.read(&mut b) {
            inbuf.extend_from_slice(&b[..n]);
        }
        while let Some(n) = frame_len(&inbuf).filter(|&n| n <= inbuf.len()) {
            let frame: Vec<u8> = inbuf.drain(..n).collect();
            c.handle_input(Instant::now(), 0, server(), &frame);
        }
        events.extend(std::iter::from_fn(|| c.poll_event()));
        if !permitted && c.is_allocated() {
            c.create_permission(Instant::now(), nat_b);
            permitted = true;
        }
    }
    let ra = c.relayed().expect("allocated");
    // A peer on host B floods the relayed address; nobody reads on A.
    let peer = udp_socket_in(lab.ns(Node::B));
    let chunk = vec![7u8; 1400];
    let flood_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < flood_until {
        for _ in 0..64 {
            let _ = peer.send_to(&chunk, ra);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // The server shut the connection: after what is buffered, the stream ends.
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut b = vec![0u8; 1 << 16];
    let ended = Instant::now() + Duration::from_secs(30);
    loop {
        match stream.read(&mut b) {
            Ok(0) => break,
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            _ => assert!(Instant::now() < ended, "the relay never cut the stream"),
        }
    }
    let log = relay.stop();
    assert_eq!(count(&log, "made"), 1, "{log}");
    assert_eq!(count(&log, "freed by the client"), 1, "{log}");
    assert!(count(&log, "send errors") >= 1, "{log}");
}

/// Session credentials: while `punchraw connect` on host B waits in session "relay-team",
/// our client on host A authenticates with the credentials derived from the session's
/// rendezvous key (no --relay-user is configured) and may relay toward B's public address
/// only.
#[test]
fn session_credentials_relay_only_toward_the_other_peer() {
    use punchraw::core::rendezvous::derive_rendezvous_key;
    use punchraw::core::turn::server::session::session_credentials;
    let Some(lab) = lab("serve --relay session credentials") else {
        return;
    };
    let dir = common::tempdir::Dir::new(&format!("{}-session", lab.name()));
    let log = dir.path.join("serve.log");
    let child = common::punchraw_serve_to(
        &lab,
        &["--relay", "--relay-ports", "40000-40999"],
        Stdio::from(std::fs::File::create(&log).expect("serve log")),
    );
    let relay = Relay {
        child,
        log,
        _dir: dir,
    };
    let (session, secret) = ("relay-team", "correct horse");
    let _b = ChildGuard(
        lab.cmd(Node::B, env!("CARGO_BIN_EXE_punchraw"))
            .args(["connect", "--server", "203.0.113.1", "--session", session])
            .args(["--secret", secret, "--timeout", "30"])
            // Its own relay fallback would be a second allocation; only ours is counted.
            .args(["--relay", "off"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start punchraw connect on B"),
    );
    // Classification, then registration every 300 ms.
    std::thread::sleep(Duration::from_secs(4));
    let key = derive_rendezvous_key(secret.as_bytes(), session);
    let (user, pass) = session_credentials(&key, session).expect("a valid session name");
    let clock = Clock {
        skip: Duration::ZERO,
    };
    let sock = udp_socket_in(lab.ns(Node::A));
    let mut a = Side::new("a", sock, server(), (&user, &pass), 6, clock.now());
    run(
        &mut [&mut a],
        &clock,
        Duration::from_secs(10),
        "allocate with session credentials",
        |s| {
            s[0].events
                .iter()
                .any(|e| matches!(e, Event::Allocated { .. } | Event::Failed(_)))
        },
    );
    assert!(
        matches!(a.events[..], [Event::Allocated { .. }]),
        "{:?}",
        a.events
    );
    a.events.clear();
    let nat_b = std::net::IpAddr::from(lab.addr("NAT_B"));
    let stranger = std::net::IpAddr::from([203, 0, 113, 2]);
    a.client.create_permission(clock.now(), nat_b);
    a.client.create_permission(clock.now(), stranger);
    run(
        &mut [&mut a],
        &clock,
        Duration::from_secs(10),
        "permissions",
        |s| s[0].events.len() >= 2,
    );
    assert!(
        a.events.contains(&Event::PermissionCreated { peer: nat_b }),
        "{:?}",
        a.events
    );
    assert!(
        a.events.iter().any(|e| matches!(
            e,
            Event::PermissionFailed { peer, error: TurnError::Forbidden { .. } } if *peer == stranger
        )),
        "{:?}",
        a.events
    );
    // A wrong secret's credentials are refused.
    let wrong_key = derive_rendezvous_key(b"wrong", session);
    let (wu, wp) = session_credentials(&wrong_key, session).unwrap();
    let sock = udp_socket_in(lab.ns(Node::A));
    let mut w = Side::new("wrong", sock, server(), (&wu, &wp), 7, clock.now());
    run(
        &mut [&mut w],
        &clock,
        Duration::from_secs(10),
        "wrong session key",
        |s| s[0].client.is_done(),
    );
    assert!(
        matches!(
            w.events[..],
            [Event::Failed(TurnError::Unauthorized { .. })]
        ),
        "{:?}",
        w.events
    );
    let log = relay.stop();
    assert_eq!(count(&log, "made"), 1, "{log}");
    assert!(log.contains("403 x1"), "{log}");
}

/// SIGTERM frees the allocations still held, and the statistics say so.
#[test]
fn sigterm_frees_the_allocations() {
    let Some(lab) = lab("serve --relay SIGTERM") else {
        return;
    };
    let relay = Relay::start(&lab, &[]);
    let clock = Clock {
        skip: Duration::ZERO,
    };
    let mut sides: Vec<Side> = [Node::A, Node::B]
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let sock = udp_socket_in(lab.ns(n));
            Side::new(
                "s",
                sock,
                server(),
                (USER, PASS),
                20 + i as u64,
                clock.now(),
            )
        })
        .collect();
    let [a, b] = &mut sides[..] else {
        unreachable!()
    };
    run(
        &mut [a, b],
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
    let log = relay.stop_with(nix::sys::signal::Signal::SIGTERM, 143);
    assert_eq!(count(&log, "made"), 2, "{log}");
    assert_eq!(count(&log, "freed at exit"), 2, "{log}");
    assert_eq!(count(&log, "active"), 0, "{log}");
}

//! `punchraw connect` falls back to the TURN relay (RFC 8656) when no hole opens: two
//! random-port symmetric NATs, the rendezvous server also a relay (`serve --relay`, session
//! credentials), 1 MiB each way checked by hash; with `--relay off` the same pair fails as
//! before (exit 8). Every allocation is freed by its client: the server's statistics at exit
//! show none active and none left to free. Needs root; skipped otherwise unless
//! PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{ChildGuard, Lab, LabOptions, Node};
use common::pair::*;
use common::relay::{endless_pair, kill_under, random_pair, Ended, Serve};
use std::time::{Duration, Instant};

/// The number before `what` in the relay statistics.
fn count(log: &str, what: &str) -> u64 {
    common::relay::count(log, "relay: ", what)
}

#[test]
fn random_symmetric_pair_connects_through_the_relay() {
    through_the_relay(random_pair());
}

/// The same with 40 ms one way on each NAT's uplink (A and B 160 ms apart round trip).
#[test]
fn random_symmetric_pair_connects_through_the_relay_at_40_ms() {
    through_the_relay(Lab::up_with(
        LabOptions::new("symmetric-random")
            .kind_b("symmetric-random")
            .delay_ms(40),
    ));
}

/// With `--tcp` a TCP punch that fails falls back to the relay the same way (the relayed
/// stream is QUIC over the two allocations, as without `--tcp`).
#[test]
fn random_symmetric_pair_with_tcp_connects_through_the_relay() {
    through_the_relay_with(random_pair(), &["--tcp", "--punch-budget", "2"]);
}

fn through_the_relay(lab: Option<Lab>) {
    through_the_relay_with(lab, &["--punch-budget", "2"]);
}

fn through_the_relay_with(lab: Option<Lab>, extra: &[&str]) {
    let Some(lab) = lab else {
        return;
    };
    let serve = Serve::start(&lab);
    let p = pair(&lab, 0, "right", 1 << 20, extra);
    let log = serve.stop();
    let what = format!(
        "stderr of A:\n{}\nstderr of B:\n{}\nserve:\n{log}",
        p.a.stderr, p.b.stderr
    );
    for (n, s) in [("A", &p.a), ("B", &p.b)] {
        assert_eq!(s.code, Some(0), "{n}: {what}");
        let r = &s.report;
        assert_eq!(r["connected"], true, "{n}: {r:#}");
        assert_eq!(r["path"], "relay", "{n}: {r:#}");
        assert!(r["relay"].is_string(), "{n}: {r:#}");
        assert_eq!(
            r["peer"].as_str().map(|p| p.starts_with("203.0.113.1:")),
            Some(true),
            "{n}: {r:#}"
        );
        assert_eq!(r["bytes_sent"], 1 << 20, "{n}: {r:#}");
        // Never direct; the first byte came through the relay.
        assert!(r["time_to_direct_ms"].is_null(), "{n}: {r:#}");
        assert!(r["time_to_first_byte_ms"].is_u64(), "{n}: {r:#}");
        // UDP starts there at once (relay first); TCP falls back to it after the punch.
        assert!(s.stderr.contains("through the relay"), "{n}: {what}");
        // With `--tcp` the punch starts without waiting for the relayed offers; they are
        // exchanged once it failed.
        assert_eq!(
            s.stderr
                .contains("exchanging relayed addresses with the peer"),
            extra.contains(&"--tcp"),
            "{n}: {what}"
        );
    }
    assert!(p.data_ok, "data differs: {what}");
    assert_eq!(count(&log, "made"), 2, "{log}");
    assert_eq!(count(&log, "active"), 0, "{log}");
    assert_eq!(count(&log, "freed by the client"), 2, "{log}");
    assert_eq!(count(&log, "freed at exit"), 0, "{log}");
}

/// A cone pair punches a hole even with the relay on offer: the stream, which started on
/// the relay, ends direct, the report says when, and both allocations are freed.
#[test]
fn cone_pair_ends_direct() {
    let Some(lab) =
        Lab::up_with(LabOptions::new("port-restricted-cone").kind_b("port-restricted-cone"))
    else {
        return;
    };
    let serve = Serve::start(&lab);
    // Enough data each way for the stream to outlast the punch: 1 MiB on a LAN-short path is
    // through the relay before the hole opens, and the stream rightly ends where it was.
    let p = pair(&lab, 0, "right", 16 << 20, &[]);
    let log = serve.stop();
    let what = format!(
        "stderr of A:\n{}\nstderr of B:\n{}\nserve:\n{log}",
        p.a.stderr, p.b.stderr
    );
    for (n, s) in [("A", &p.a), ("B", &p.b)] {
        assert_eq!(s.code, Some(0), "{n}: {what}");
        let r = &s.report;
        assert_eq!(r["path"], "direct", "{n}: {r:#}");
        let direct = r["time_to_direct_ms"].as_u64();
        let first = r["time_to_first_byte_ms"].as_u64();
        assert!(direct.is_some() && first.is_some(), "{n}: {r:#}");
        assert!(
            first
                <= r["elapsed_ms"]
                    .as_u64()
                    .zip(r["stream_ms"].as_u64())
                    .map(|(a, b)| a + b),
            "{n}: {r:#}"
        );
    }
    assert!(p.data_ok, "data differs: {what}");
    assert_eq!(count(&log, "active"), 0, "{log}");
    assert_eq!(count(&log, "freed at exit"), 0, "{log}");
}

#[test]
fn random_symmetric_pair_with_relay_off_fails_as_before() {
    let Some(lab) = random_pair() else {
        return;
    };
    let serve = Serve::start(&lab);
    let p = pair(
        &lab,
        0,
        "right",
        1024,
        &["--punch-budget", "2", "--relay", "off"],
    );
    let log = serve.stop();
    for (n, s) in [("A", &p.a), ("B", &p.b)] {
        assert_eq!(s.code, Some(8), "{n}: {}", s.stderr);
        assert_eq!(s.report["connected"], false, "{n}: {:#}", s.report);
        assert!(
            s.report["path"].is_null() && s.report["relay"].is_null(),
            "{n}: {:#}",
            s.report
        );
        // No stream: neither time exists.
        assert!(
            s.report["time_to_direct_ms"].is_null() && s.report["time_to_first_byte_ms"].is_null(),
            "{n}: {:#}",
            s.report
        );
    }
    assert_eq!(count(&log, "made"), 0, "{log}");
}

/// A peer interrupted while it waits for the other, its allocation made: SIGINT frees it
/// (exit 130), so the server ends with it freed by the client, none active.
#[test]
fn sigint_frees_the_allocation() {
    let Some(lab) = random_pair() else {
        return;
    };
    let serve = Serve::start(&lab);
    let dir = Dir::new(&format!("{}-sigint", lab.name()));
    std::fs::write(dir.0.join("a.in"), b"x").expect("write");
    let session = format!("{}-sigint", lab.name());
    let a = connect_cmd(
        &lab,
        common::lab::Node::A,
        &dir.0,
        "a",
        &session,
        "right",
        &[],
    )
    .spawn()
    .expect("start connect A");
    let mut a = ChildGuard(a);
    // Classification and the port-mapping wait (~3 s), the refused first Allocate, the
    // register that creates the session, the retry 1.2 s later.
    std::thread::sleep(Duration::from_secs(8));
    assert!(a.0.try_wait().expect("wait A").is_none(), "A ended early");
    let pid = nix::unistd::Pid::from_raw(a.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal A");
    let (code, stderr) = a.0.wait_with_output_ref();
    assert_eq!(code, Some(130), "{}", String::from_utf8_lossy(&stderr));
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(stderr.contains("offering our relayed address"), "{stderr}");
    let log = serve.stop();
    assert_eq!(count(&log, "made"), 1, "{log}");
    assert_eq!(count(&log, "active"), 0, "{log}");
    assert_eq!(count(&log, "freed by the client"), 1, "{log}");
}

/// `--relay turn://USER:PASS@HOST:PORT`: the same pair through coturn (long-term
/// credentials) instead of the rendezvous server's relay.
#[test]
fn random_symmetric_pair_connects_through_coturn() {
    if common::lab::find_program("turnserver").is_none() {
        if std::env::var("PUNCHRAW_REQUIRE_LAB").as_deref() == Ok("1") {
            panic!("turnserver (coturn) not found (and PUNCHRAW_REQUIRE_LAB=1)");
        }
        eprintln!("skipped: turnserver (coturn) not found");
        return;
    }
    let Some(lab) = random_pair() else {
        return;
    };
    let _serve = common::punchraw_serve_5780(&lab);
    let (_coturn, _dir) = common::coturn(
        &lab,
        &[
            "-L",
            "203.0.113.1",
            "--listening-port",
            "3480",
            "--relay-ip",
            "203.0.113.1",
            "--min-port",
            "41000",
            "--max-port",
            "41999",
            "--lt-cred-mech",
            "--user",
            "relayuser:relaypass",
            "--realm",
            "lab",
        ],
    );
    let relay = "turn://relayuser:relaypass@203.0.113.1:3480";
    let p = pair(
        &lab,
        0,
        "right",
        1 << 20,
        &["--punch-budget", "2", "--relay", relay],
    );
    let what = format!("stderr of A:\n{}\nstderr of B:\n{}", p.a.stderr, p.b.stderr);
    for (n, s) in [("A", &p.a), ("B", &p.b)] {
        assert_eq!(s.code, Some(0), "{n}: {what}");
        assert_eq!(s.report["path"], "relay", "{n}: {:#}", s.report);
    }
    assert!(p.data_ok, "data differs: {what}");
}

/// NATs that forget an idle UDP binding after 20 s, and B coming 30 s after A: A's
/// allocation is kept reachable by Binding indications to the server every 15 s, so the
/// relayed stream still reaches A.
#[test]
fn a_long_wait_behind_a_forgetful_nat_keeps_the_relay_reachable() {
    let Some(lab) = Lab::up_with(
        LabOptions::new("symmetric-random")
            .kind_b("symmetric-random")
            .udp_timeout_s(20),
    ) else {
        return;
    };
    let serve = Serve::start(&lab);
    let p = pair_between(
        &lab,
        0,
        "right",
        1 << 16,
        &["--punch-budget", "2", "--timeout", "60"],
        &[],
        &|| std::thread::sleep(Duration::from_secs(30)),
    );
    let log = serve.stop();
    let what = format!(
        "stderr of A:\n{}\nstderr of B:\n{}\nserve:\n{log}",
        p.a.stderr, p.b.stderr
    );
    for (n, s) in [("A", &p.a), ("B", &p.b)] {
        assert_eq!(s.code, Some(0), "{n}: {what}");
        assert_eq!(s.report["path"], "relay", "{n}: {:#}", s.report);
    }
    assert!(p.data_ok, "data differs: {what}");
}

/// `--relay turn://USER:PASS@...` with a wrong password: connect stops at once, before the
/// rendezvous, with exit 7 and what to fix.
#[test]
fn wrong_relay_password_is_exit_7_at_once() {
    let Some(lab) = random_pair() else {
        return;
    };
    let serve = Serve::start_with(&lab, &["--relay-user", "relayuser:relaypass"]);
    let dir = Dir::new(&format!("{}-badpass", lab.name()));
    std::fs::write(dir.0.join("a.in"), b"x").expect("write");
    let session = format!("{}-badpass", lab.name());
    let relay = "turn://relayuser:wrong@203.0.113.1:3478";
    let started = Instant::now();
    let a = connect_cmd(
        &lab,
        common::lab::Node::A,
        &dir.0,
        "a",
        &session,
        "right",
        &["--relay", relay],
    )
    .output()
    .expect("run connect A");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&a.stderr);
    let log = serve.stop();
    assert_eq!(a.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains("203.0.113.1:3478 refused user \"relayuser\"'s credentials (401")
            && stderr.contains("check USER:PASS in --relay"),
        "{stderr}"
    );
    // Classification and the first Allocate; no waiting for a peer that never comes.
    assert!(took < Duration::from_secs(15), "took {took:?}: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("a.json")).expect("report"))
            .expect("report JSON");
    assert!(
        report["error"].as_str().is_some_and(|e| e.contains("401")),
        "{report:#}"
    );
    assert_eq!(count(&log, "made"), 0, "{log}");
}

/// A relay whose user quota (1) is used up by one peer: the other's Allocate gets 486,
/// which it says and punches on; when the punch fails, it ends with exit 7 naming the
/// refusal instead of the bare exit 8, and the first (its peer offered no relayed address)
/// with exit 8.
#[test]
fn relay_quota_refusal_is_exit_7_when_no_hole_opens() {
    let Some(lab) = random_pair() else {
        return;
    };
    let serve = Serve::start_with(
        &lab,
        &[
            "--relay-user",
            "relayuser:relaypass",
            "--relay-user-quota",
            "1",
        ],
    );
    let relay = "turn://relayuser:relaypass@203.0.113.1:3478";
    let p = pair(
        &lab,
        0,
        "right",
        1024,
        &["--punch-budget", "2", "--relay", relay],
    );
    let log = serve.stop();
    let what = format!(
        "stderr of A:\n{}\nstderr of B:\n{}\nserve:\n{log}",
        p.a.stderr, p.b.stderr
    );
    // A starts 300 ms first, so its Allocate normally wins; either order is right.
    let (first, refused) = if p.a.code == Some(7) {
        (&p.b, &p.a)
    } else {
        (&p.a, &p.b)
    };
    assert_eq!(first.code, Some(8), "{what}");
    assert_eq!(refused.code, Some(7), "{what}");
    let err = &refused.stderr;
    assert!(
        err.contains("refused our allocation")
            && err.contains("486 Allocation Quota Reached")
            && err.contains("punching on without a relay"),
        "{what}"
    );
    assert!(
        err.contains("no direct path, and the relay 203.0.113.1:3478"),
        "{what}"
    );
    assert!(
        refused.report["error"]
            .as_str()
            .is_some_and(|e| e.contains("486") && e.contains("punching failed")),
        "{:#}",
        refused.report
    );
    assert_eq!(count(&log, "made"), 1, "{log}");
    assert_eq!(count(&log, "active"), 0, "{log}");
}

/// The relay dies (SIGKILL) while a relayed stream runs and no direct path exists: both
/// peers end within a bounded time with exit 9 and a message that names the relay, and
/// neither panics.
#[test]
fn relay_dying_mid_stream_is_exit_9() {
    let Some(lab) = random_pair() else {
        return;
    };
    let mut serve = Serve::start(&lab);
    let (dir, sides) = endless_pair(&lab, "relaydies", &[]);
    for Ended {
        name,
        code,
        stderr,
        took,
    } in kill_under(&mut serve, sides)
    {
        assert_eq!(code, Some(9), "{name}: {stderr}");
        assert!(
            stderr.contains("the relay 203.0.113.1:3478 stopped relaying")
                && stderr.contains("no direct path"),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        // Not quinn's words for the socket we closed on learning that the relay is gone.
        let error = stderr.lines().find(|l| l.contains("error: ")).unwrap_or("");
        assert!(!error.contains("endpoint driver"), "{name}: {stderr}");
        // The relay's host refusing our datagrams ends the stream, not QUIC's idle timeout
        // (30 s).
        assert!(
            took < Duration::from_secs(10),
            "{name} took {took:?}: {stderr}"
        );
        let report: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.0.join(format!("{name}.json"))).expect("report"),
        )
        .expect("report JSON");
        assert_eq!(report["path"], "relay", "{name}: {report:#}");
        assert!(
            report["time_to_first_byte_ms"].is_u64(),
            "{name}: {report:#}"
        );
    }
}

/// SIGINT to one peer while the relayed stream is busy: it exits 130, the other ends (the
/// stream was closed as interrupted), and both allocations are freed by their clients.
#[test]
fn sigint_mid_relayed_stream_frees_both_allocations() {
    let Some(lab) = random_pair() else {
        return;
    };
    let serve = Serve::start(&lab);
    let (_dir, mut sides) = endless_pair(&lab, "sigintrelayed", &[]);
    let pid = nix::unistd::Pid::from_raw(sides[0].1 .0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal A");
    let stopped = Instant::now();
    let (code_a, err_a) = sides[0].1 .0.wait_with_output_ref();
    let (code_b, err_b) = sides[1].1 .0.wait_with_output_ref();
    let took = stopped.elapsed();
    let what = format!(
        "stderr of A:\n{}\nstderr of B:\n{}",
        String::from_utf8_lossy(&err_a),
        String::from_utf8_lossy(&err_b)
    );
    let log = serve.stop();
    assert_eq!(code_a, Some(130), "{what}");
    // B hears the close at once rather than waiting out the idle timeout.
    assert_eq!(code_b, Some(9), "{what}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {what}");
    assert_eq!(count(&log, "made"), 2, "{log}");
    assert_eq!(count(&log, "active"), 0, "{log}");
    assert_eq!(count(&log, "freed by the client"), 2, "{log}");
}

/// Relay first, then direct, while data flows: a cone pair whose punch starts a second
/// late (`--start-delay-ms`); each side sends half of its 1 MiB at once (through the relay,
/// where the stream starts), pauses, then sends the rest, which crosses the direct path the
/// punch opened meanwhile. Every byte arrives once and in order, the first byte came before
/// the direct path, and the report ends direct.
#[test]
fn a_relay_first_stream_moves_to_the_direct_path_while_data_flows() {
    upgrade_while_flowing(false);
}

/// The same, with the relay SIGKILLed during the pause, after the stream went direct: the
/// second halves cross the direct path all the same.
#[test]
fn the_relay_dying_under_a_direct_stream_loses_nothing() {
    upgrade_while_flowing(true);
}

fn upgrade_while_flowing(kill_relay: bool) {
    let Some(lab) =
        Lab::up_with(LabOptions::new("port-restricted-cone").kind_b("port-restricted-cone"))
    else {
        return;
    };
    let mut serve = Serve::start(&lab);
    let dir = Dir::new(&format!("{}-upgrade", lab.name()));
    let half = 512 << 10;
    let start = |node: Node, name: &str, seed: u64| {
        let input = dir.0.join(format!("{name}.in"));
        std::fs::write(&input, data(seed, 2 * half)).expect("write input");
        // The input in two halves with a pause between, longer than the punch's delay.
        let feeder = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "head -c {half} {p}; sleep 2.5; tail -c +{} {p}",
                half + 1,
                p = input.display()
            ))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the feeder");
        let mut feeder = ChildGuard(feeder);
        let stdin = feeder.0.stdout.take().expect("piped");
        let mut c = connect_cmd(
            &lab,
            node,
            &dir.0,
            name,
            &format!("{}-upgrade", lab.name()),
            "right",
            &["--start-delay-ms", "1000"],
        );
        c.stdin(stdin);
        (ChildGuard(c.spawn().expect("start connect")), feeder)
    };
    let (mut a, _fa) = start(Node::A, "a", 11);
    std::thread::sleep(Duration::from_millis(300));
    let (mut b, _fb) = start(Node::B, "b", 12);
    if kill_relay {
        // Rendezvous, relayed stream and the punch (a second after the agreed start) are
        // done by now; the second halves are still waiting.
        std::thread::sleep(Duration::from_millis(2000));
        serve.child.0.kill().expect("kill serve");
        let _ = serve.child.0.wait();
    }
    let (code_a, err_a) = a.0.wait_with_output_ref();
    let (code_b, err_b) = b.0.wait_with_output_ref();
    let log = if kill_relay {
        "(killed)".to_string()
    } else {
        serve.stop()
    };
    let what = format!(
        "stderr of A:\n{}\nstderr of B:\n{}\nserve:\n{log}",
        String::from_utf8_lossy(&err_a),
        String::from_utf8_lossy(&err_b)
    );
    assert_eq!((code_a, code_b), (Some(0), Some(0)), "{what}");
    for (name, err) in [("a", &err_a), ("b", &err_b)] {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.0.join(format!("{name}.json"))).unwrap())
                .unwrap();
        assert_eq!(r["path"], "direct", "{name}: {r:#}\n{what}");
        let first = r["time_to_first_byte_ms"].as_u64();
        let direct = r["time_to_direct_ms"].as_u64();
        assert!(
            first.is_some() && direct.is_some() && first < direct,
            "{name}: the first byte came through the relay, before the direct path: {r:#}"
        );
        let err = String::from_utf8_lossy(err);
        assert!(
            err.contains("relay first: the stream starts through the relay"),
            "{what}"
        );
        assert!(err.contains("path: direct to"), "{what}");
    }
    for (from, to) in [("a", "b"), ("b", "a")] {
        assert!(
            sha(&dir.0.join(format!("{from}.in"))) == sha(&dir.0.join(format!("{to}.out"))),
            "{from} to {to} intact: {what}"
        );
    }
    if !kill_relay {
        assert_eq!(count(&log, "freed by the client"), 2, "{log}");
    }
}

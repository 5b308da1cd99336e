//! A host whose NAT forwards no UDP at all (issue #12, "UDP blocked"): `connect` finds the
//! server silent over UDP but answering STUN over TCP, meets the peer over TCP to the same
//! port (docs/rendezvous.md, "Over TCP"), allocates on `serve --relay` over TCP, and the pair
//! connects relayed, 1 MiB each way checked by hash; the peer behind an ordinary cone skips
//! its punch. A server reachable over neither stays exit 3. Needs root; skipped otherwise
//! unless PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{Lab, LabOptions, Node};
use common::pair::*;
use common::relay::Serve;
use std::time::{Duration, Instant};

/// Drops every forwarded datagram of `protocols` (e.g. "udp") in NAT A: host A behind it
/// reaches nothing over them. The rule goes with the lab's namespace.
fn nat_a_forwards_no(lab: &Lab, protocols: &str) {
    let rules = format!(
        "add table inet udpblocked\n\
         add chain inet udpblocked forward {{ type filter hook forward priority -10; }}\n\
         add rule inet udpblocked forward meta l4proto {{ {protocols} }} drop\n"
    );
    lab.nft(Node::NatA, &rules);
}

#[test]
fn udp_blocked_host_and_a_cone_connect_relayed_over_tcp() {
    udp_blocked_pair(&[]);
}

/// The same with `--tcp` on both sides: the stream still goes through the relay (over TCP to
/// the server on A's side), and neither side waits for a TCP punch toward a peer that met
/// the server over TCP only.
#[test]
fn udp_blocked_host_and_a_cone_connect_relayed_with_tcp_too() {
    udp_blocked_pair(&["--tcp"]);
}

fn udp_blocked_pair(extra: &[&str]) {
    let Some(lab) =
        Lab::up_with(LabOptions::new("port-restricted-cone").kind_b("port-restricted-cone"))
    else {
        return;
    };
    nat_a_forwards_no(&lab, "udp");
    let serve = Serve::start(&lab);
    let started = Instant::now();
    let p = pair(&lab, 0, "right", 1 << 20, extra);
    let took = started.elapsed();
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
        assert_eq!(r["bytes_sent"], 1 << 20, "{n}: {r:#}");
        assert_eq!(
            r["probes_sent"], 0,
            "{n}: no punch with a UDP-blocked side: {r:#}"
        );
        assert!(s.stderr.contains("goes through the relay"), "{n}: {what}");
    }
    assert!(p.data_ok, "data differs: {what}");
    assert!(
        p.a.stderr.contains("UDP to 203.0.113.1:3478 is blocked")
            && p.a.stderr.contains("rendezvous runs over TCP"),
        "A: {what}"
    );
    assert!(
        p.a.stderr.contains("over TCP"),
        "A allocates over TCP: {what}"
    );
    assert!(
        p.b.stderr.contains("the peer's UDP is blocked"),
        "B: {what}"
    );
    // B skipped the punch budget (default 10 s) and went to the relay at once.
    assert!(took < Duration::from_secs(30), "took {took:?}: {what}");
}

#[test]
fn a_server_reachable_over_neither_udp_nor_tcp_is_exit_3() {
    let Some(lab) = Lab::up_with(LabOptions::new("port-restricted-cone")) else {
        return;
    };
    nat_a_forwards_no(&lab, "udp, tcp");
    let _serve = common::punchraw_serve(&lab, &["--relay"]);
    let dir = Dir::new(&format!("{}-neither", lab.name()));
    std::fs::write(dir.0.join("a.in"), b"x").expect("write");
    let out = connect_cmd(
        &lab,
        Node::A,
        &dir.0,
        "a",
        "neither",
        "right",
        &["--timeout", "20"],
    )
    .output()
    .expect("run connect");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("nor over TCP"), "{stderr}");
}

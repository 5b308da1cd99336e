//! IPv6 beside IPv4 (issue 14, first phase): `punchraw serve` on both families, `punchraw
//! probe` classifying each, in the dual-stack lab (`natlab.sh up --ipv6`), where IPv6 is
//! routed, not translated, through each NAT namespace's stateful firewall.
//! Needs root (network namespaces, nftables); skipped otherwise unless
//! PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{Lab, LabOptions, Node};
use common::pair::{check_connected, check_connected_over, pair, pair_sides, Pair, Side, MIB};
use serde_json::Value;
use std::process::Output;

const BIN: &str = env!("CARGO_BIN_EXE_punchraw");
const EI: &str = "endpoint-independent";
const APD: &str = "address-and-port-dependent";

/// `punchraw serve` with RFC 5780 discovery on both families.
fn serve_dual(lab: &Lab) -> common::lab::ChildGuard {
    common::punchraw_serve(
        lab,
        &[
            "--alternate",
            "203.0.113.2",
            "--listen",
            "2001:db8::1",
            "--alternate",
            "2001:db8::2",
        ],
    )
}

/// `probe ARGS...` from host A.
fn probe(lab: &Lab, args: &[&str]) -> Output {
    lab.cmd(Node::A, BIN)
        .arg("probe")
        .args(args)
        .output()
        .expect("run punchraw probe")
}

fn json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "exactly one JSON line: {stdout}");
    serde_json::from_str(&stdout).expect("stdout is one JSON object")
}

/// What a host with a global address behind a stateful firewall is, on `family` ("udp" or
/// "tcp" of the `ipv6` object).
fn assert_firewall_only(v: &Value, family: &str, filtering: &str) {
    let f = &v["ipv6"][family];
    let ctx = format!("ipv6 {family}: {v:#}");
    assert_eq!(f["behind_nat"], false, "{ctx}");
    assert_eq!(f["mapping"], EI, "{ctx}");
    assert_eq!(f["filtering"], filtering, "{ctx}");
    assert_eq!(f["allocation"], "preserving", "{ctx}");
    assert_eq!(f["local"], f["mapped"], "{ctx}");
    assert!(
        f["local"]
            .as_str()
            .is_some_and(|l| l.starts_with("[2001:db8:1::2]:")),
        "{ctx}"
    );
    assert_eq!(f["other_address"], "[2001:db8::2]:3479", "{ctx}");
    assert_eq!(f["reasons"], serde_json::json!({}), "{ctx}");
}

/// Behind a symmetric IPv4 NAT whose IPv6 is routed through a stateful firewall: the name
/// is probed on both families; IPv4 reads as before (APDM, random ports), IPv6 says no NAT,
/// endpoint-independent and port preserving, with the firewall's address-and-port-dependent
/// filtering, over UDP and TCP (CONNECT-BACK from the alternate IPv6 address).
#[test]
fn probe_classifies_the_ipv6_firewall_beside_the_ipv4_nat() {
    let Some(lab) = Lab::up_with(LabOptions::new("symmetric-random").ipv6()) else {
        return;
    };
    let _srv = serve_dual(&lab);
    let v = json(&probe(
        &lab,
        &["--server", "srv.lab", "--json", "--no-port-mapping"],
    ));
    assert_eq!(v["server"], "203.0.113.1:3478", "{v:#}");
    for family in ["udp", "tcp"] {
        let f = &v[family];
        assert_eq!(f["behind_nat"], true, "ipv4 {family}: {v:#}");
        assert_eq!(f["mapping"], APD, "ipv4 {family}: {v:#}");
        assert_eq!(f["filtering"], APD, "ipv4 {family}: {v:#}");
        assert_eq!(f["allocation"], "random", "ipv4 {family}: {v:#}");
        assert_eq!(f["other_address"], "203.0.113.2:3479", "{v:#}");
    }
    assert_eq!(v["udp"]["legacy_type"], "symmetric", "{v:#}");
    assert_firewall_only(&v, "udp", APD);
    assert_firewall_only(&v, "tcp", APD);
    let keys = |o: &Value| o.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&v["ipv6"]["udp"]), keys(&v["udp"]), "{v:#}");
    assert_eq!(keys(&v["ipv6"]["tcp"]), keys(&v["tcp"]), "{v:#}");

    // -6 alone: IPv4's keys are null, the table names the family.
    let out = probe(&lab, &["--server", "srv.lab", "-6", "--no-port-mapping"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("  UDP (IPv6)\n"), "{table}");
    assert!(table.contains("  TCP (IPv6)\n"), "{table}");
    assert!(!table.contains("  UDP\n"), "{table}");
    assert!(table.contains("Verdict (UDP, IPv6): No NAT"), "{table}");
    let v = json(&probe(
        &lab,
        &[
            "--server",
            "srv.lab",
            "-6",
            "--json",
            "--no-tcp",
            "--no-port-mapping",
        ],
    ));
    assert_eq!(v["udp"], Value::Null, "{v:#}");
    assert_eq!(v["ipv6"]["tcp"], Value::Null, "{v:#}");
    assert_firewall_only(&v, "udp", APD);
}

/// Kind none routes IPv6 unfiltered: the probe sees the open Internet.
#[test]
fn probe_sees_unfiltered_ipv6_behind_a_plain_router() {
    let Some(lab) = Lab::up_with(LabOptions::new("none").ipv6()) else {
        return;
    };
    let _srv = serve_dual(&lab);
    let v = json(&probe(
        &lab,
        &["--server", "srv.lab", "-6", "--json", "--no-port-mapping"],
    ));
    assert_firewall_only(&v, "udp", EI);
    assert_firewall_only(&v, "tcp", EI);
}

/// `-6` toward a server that has no IPv6 (the name has no AAAA address, an IPv6 literal
/// this host has no route to, or a server that does not answer on IPv6): a clear error and
/// exit 3, as for an unreachable server; `connect` to such a literal too.
#[test]
fn probe_6_without_ipv6_exits_3_and_says_why() {
    // A lab without --ipv6: srv.lab has only its A address, and the hosts no IPv6 at all.
    let Some(lab) = Lab::up_with(LabOptions::new("port-restricted-cone")) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let out = probe(&lab, &["--server", "srv.lab", "-6", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(
            "server \"srv.lab\" has no IPv6 (-6) address; it has only 203.0.113.1:3478 (IPv4)"
        ),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    let out = probe(&lab, &["--server", "2001:db8::1", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("cannot be reached from this host"), "{err}");
    // Without -6 the name is probed on the family it has, as before.
    let v = json(&probe(
        &lab,
        &[
            "--server",
            "srv.lab",
            "--json",
            "--no-tcp",
            "--no-port-mapping",
        ],
    ));
    assert_eq!(v["ipv6"], Value::Null, "{v:#}");
    assert_eq!(v["udp"]["mapping"], EI, "{v:#}");
    // `connect` to an IPv6 server from a host without IPv6: the same exit and a way out.
    let out = lab
        .cmd(Node::A, BIN)
        .args(["connect", "--server", "2001:db8::1", "--session", "s"])
        .args(["--relay", "off", "--timeout", "5"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run punchraw connect");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("this host has no IPv6 route to the server [2001:db8::1]:3478")
            && err.contains("give the server's IPv4 address"),
        "{err}"
    );
    drop(lab);

    // A dual-stack lab whose server answers on IPv4 only.
    let Some(lab) = Lab::up_with(LabOptions::new("port-restricted-cone").ipv6()) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let out = probe(&lab, &["--server", "srv.lab", "-6", "--no-tcp"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("no STUN answer from [2001:db8::1]:3478 over UDP"),
        "{err}"
    );
    // Both families: IPv4 decides the exit status as before, IPv6 reports blocked.
    let v = json(&probe(
        &lab,
        &[
            "--server",
            "srv.lab",
            "--json",
            "--no-tcp",
            "--no-port-mapping",
        ],
    ));
    assert_eq!(v["udp"]["legacy_type"], "port-restricted-cone", "{v:#}");
    assert_eq!(v["ipv6"]["udp"]["legacy_type"], "blocked", "{v:#}");
}

/// Every NAT kind's namespace is, for IPv6, the same stateful firewall (the cgn-* kinds:
/// the home NAT, behind the CGN routing IPv6): no NAT, EIM, preserving, APDF on UDP and TCP;
/// the server's name resolves to both families in the host's namespace, and `down` removes
/// the hosts file again.
#[test]
fn every_nat_kind_is_a_stateful_ipv6_firewall() {
    let kinds = [
        "full-cone",
        "restricted-cone",
        "port-restricted-cone",
        "symmetric-sequential",
        "address-dependent",
        "port-restricted-rst",
        "port-restricted-icmp",
        "cgn-block-random",
        "cgn-eim-translated",
        "cgn-block-sequential",
    ];
    for kind in kinds {
        let Some(lab) = Lab::up_with(LabOptions::new(kind).kind_b("none").ipv6()) else {
            return;
        };
        for node in [Node::A, Node::B] {
            let out = lab
                .cmd(node, "getent")
                .args(["ahosts", "srv.lab"])
                .output()
                .expect("run getent");
            let hosts = String::from_utf8_lossy(&out.stdout);
            assert!(
                hosts.contains("203.0.113.1 ") && hosts.contains("2001:db8::1 "),
                "{kind} {node:?}: {hosts}"
            );
        }
        let _srv = serve_dual(&lab);
        let v = json(&probe(
            &lab,
            &["--server", "srv.lab", "-6", "--json", "--no-port-mapping"],
        ));
        assert_eq!(v["server"], "[2001:db8::1]:3478", "{kind}: {v:#}");
        assert_firewall_only(&v, "udp", APD);
        assert_firewall_only(&v, "tcp", APD);
        let hosts = std::path::PathBuf::from(format!("/etc/netns/{}-a/hosts", lab.name()));
        assert!(hosts.exists(), "{}", hosts.display());
        drop(_srv);
        drop(lab);
        assert!(!hosts.exists(), "down removes {}", hosts.display());
    }
}

/// NAT66 (`--nat66`) is classified as what it does: behind a NAT on IPv6, with the mapping
/// and allocation of its masquerade (EIM and preserving, or APDM with random ports for
/// "fully-random").
#[test]
fn nat66_is_classified_as_what_it_does() {
    let Some(lab) = Lab::up_with(
        LabOptions::new("symmetric-random")
            .kind_b("port-restricted-cone")
            .nat66(),
    ) else {
        return;
    };
    let _srv = serve_dual(&lab);
    for (node, wan, mapping, allocation) in [
        (Node::A, "[2001:db8::10]:", APD, "random"),
        (Node::B, "[2001:db8::20]:", EI, "preserving"),
    ] {
        let out = lab
            .cmd(node, BIN)
            .args([
                "probe",
                "--server",
                "srv.lab",
                "-6",
                "--json",
                "--no-port-mapping",
            ])
            .output()
            .expect("run punchraw probe");
        let v = json(&out);
        for family in ["udp", "tcp"] {
            let f = &v["ipv6"][family];
            let ctx = format!("{node:?} ipv6 {family}: {v:#}");
            assert_eq!(f["behind_nat"], true, "{ctx}");
            assert_eq!(f["mapping"], mapping, "{ctx}");
            assert_eq!(f["filtering"], APD, "{ctx}");
            assert_eq!(f["allocation"], allocation, "{ctx}");
            assert!(
                f["local"].as_str().is_some_and(|l| l.starts_with("[fd00:")),
                "{ctx}"
            );
            assert!(
                f["mapped"].as_str().is_some_and(|m| m.starts_with(wan)),
                "{ctx}"
            );
        }
    }
}

/// coturn's STUN server on both families (RFC 5780 on each: two addresses per family) gives
/// the same IPv6 classification over UDP; TCP filtering is unknown there (no CONNECT-BACK).
#[test]
fn probe_classifies_ipv6_against_coturn_too() {
    let Some(lab) = Lab::up_with(LabOptions::new("port-restricted-cone").ipv6()) else {
        return;
    };
    let (_coturn, _dir) = common::coturn(
        &lab,
        &[
            "--stun-only",
            "-L",
            "203.0.113.1",
            "-L",
            "203.0.113.2",
            "-L",
            "2001:db8::1",
            "-L",
            "2001:db8::2",
        ],
    );
    let v = json(&probe(
        &lab,
        &["--server", "srv.lab", "--json", "--no-port-mapping"],
    ));
    assert_eq!(v["udp"]["mapping"], EI, "{v:#}");
    assert_eq!(v["udp"]["behind_nat"], true, "{v:#}");
    assert_firewall_only(&v, "udp", APD);
    let t = &v["ipv6"]["tcp"];
    assert_eq!(t["behind_nat"], false, "{v:#}");
    assert_eq!(t["mapping"], EI, "{v:#}");
    assert_eq!(t["filtering"], "unknown", "{v:#}");
}

/// Both sides' reports name the other's IPv6 address as the peer; the sides, for more checks.
fn connected_over_ipv6<'a>(p: &'a Pair, what: &str) -> [(&'static str, &'a Side); 2] {
    for (n, s, other) in [
        ("A", &p.a, "[2001:db8:2::2]:"),
        ("B", &p.b, "[2001:db8:1::2]:"),
    ] {
        let peer = s.report["peer"].as_str().unwrap_or_default();
        assert!(
            peer.starts_with(other),
            "{what}: {n}: peer {peer}\n{}",
            s.stderr
        );
    }
    [("A", &p.a), ("B", &p.b)]
}

/// `connect` beside IPv4 (issue 14, second phase): two hosts behind random-symmetric IPv4
/// NATs (no IPv4 punch can be expected: a two-sided sweep over whole port ranges, or a TCP
/// window around an unpredictable port) whose IPv6 is routed through the NAT namespaces'
/// stateful firewalls. Each offers its IPv6 address among its locals and punches it beside
/// IPv4: the simultaneous probes (UDP) or SYNs (TCP) open both firewalls, and 1 MiB each way
/// crosses the IPv6 path, over UDP and over TCP.
#[test]
fn random_symmetric_ipv4_pair_connects_over_ipv6_udp_and_tcp() {
    let opts = LabOptions::new("symmetric-random").kind_b("symmetric-random");
    let Some(lab) = Lab::up_with(opts.ipv6()) else {
        return;
    };
    let _serve = common::punchraw_serve_5780(&lab);
    for (try_no, transport, extra, says) in [
        (
            1,
            "udp",
            &["--relay", "off"][..],
            "IPv6: probing the peer at",
        ),
        (
            2,
            "tcp",
            &["--relay", "off", "--tcp"][..],
            "IPv6: punching TCP to",
        ),
    ] {
        let p = pair(&lab, try_no, "right", MIB, extra);
        let what = format!("random x random, IPv6 beside, {transport}");
        check_connected_over(&p, transport, "direct", &what);
        for (n, s) in connected_over_ipv6(&p, &what) {
            assert!(
                s.stderr.contains(says),
                "{what}: {n} says it tries IPv6:\n{}",
                s.stderr
            );
            assert_eq!(s.report["path"], "direct", "{what}: {n}");
        }
    }
}

/// An IPv4-only peer (`-4`) and a dual-stack one: the dual-stack side's IPv6 candidates are
/// left alone by the other, it says the peer offered none, and the pair meets over IPv4.
#[test]
fn ipv4_only_and_dual_stack_peers_connect_over_ipv4() {
    let opts = LabOptions::new("port-restricted-cone").kind_b("port-restricted-cone");
    let Some(lab) = Lab::up_with(opts.ipv6()) else {
        return;
    };
    let _serve = common::punchraw_serve_5780(&lab);
    let p = pair_sides(&lab, 1, "right", MIB, [&[], &["-4"], &[]], &|| {
        std::thread::sleep(std::time::Duration::from_millis(300))
    });
    check_connected(&p, "direct", "IPv4-only A, dual-stack B");
    for (n, s) in [("A", &p.a), ("B", &p.b)] {
        let peer = s.report["peer"].as_str().unwrap_or_default();
        assert!(
            peer.parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.is_ipv4()),
            "{n}: peer {peer}"
        );
    }
    assert!(
        !p.a.stderr.contains("IPv6"),
        "-4 leaves IPv6 out:\n{}",
        p.a.stderr
    );
    assert!(
        p.b.stderr.contains("the peer offered no IPv6 address"),
        "B:\n{}",
        p.b.stderr
    );
}

/// A rendezvous over IPv6 (`--server` an IPv6 address; the server's IPv6 side has one of its
/// own): the peers classify, register and punch over IPv6 alone, UDP and TCP, with nothing
/// said about a second family.
#[test]
fn a_rendezvous_over_ipv6_connects_udp_and_tcp() {
    let opts = LabOptions::new("port-restricted-cone").kind_b("port-restricted-cone");
    let Some(lab) = Lab::up_with(opts.ipv6()) else {
        return;
    };
    let _serve = serve_dual(&lab);
    let v6 = ["--server", "2001:db8::1", "--relay", "off"];
    for (try_no, transport, tcp) in [(1, "udp", &[][..]), (2, "tcp", &["--tcp"][..])] {
        let extra: Vec<&str> = v6.iter().chain(tcp).copied().collect();
        let p = pair(&lab, try_no, "right", MIB, &extra);
        let what = format!("IPv6 rendezvous, {transport}");
        check_connected_over(&p, transport, "direct", &what);
        for (n, s) in connected_over_ipv6(&p, &what) {
            assert!(
                !s.stderr.contains("beside IPv4") && !s.stderr.contains("came first"),
                "{what}: {n} punched one family:\n{}",
                s.stderr
            );
        }
    }
}

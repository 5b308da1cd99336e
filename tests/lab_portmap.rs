//! Port mapping against Debian's miniupnpd (lab kind upnp-random): the probe reports what
//! the router offers for each protocol alone, all three and none, and leaves no mapping
//! behind; Debian's own clients (`natpmpc`, `upnpc`) see and delete a mapping punchraw
//! made. Needs root, natlab's tools and miniupnpd, natpmpc, miniupnpc; skipped without.

mod common;

use common::lab::{find_program, Lab, LabOptions, Node};
use common::pair::{check_connected, pair, BIN, MIB};
use serde_json::Value;

fn tools_present() -> bool {
    for p in ["miniupnpd", "natpmpc", "upnpc"] {
        if find_program(p).is_none() {
            eprintln!(
                "SKIP: {p} not installed (apt-get install miniupnpd-nftables natpmpc miniupnpc)"
            );
            return false;
        }
    }
    true
}

fn lab(portmap: &str) -> Option<Lab> {
    if !tools_present() {
        return None;
    }
    Lab::up_with(LabOptions::new("upnp-random").portmap(portmap))
}

fn probe(lab: &Lab) -> Value {
    let out = lab
        .cmd(Node::A, BIN)
        .args(["probe", "--server", "203.0.113.1", "--json", "--no-tcp"])
        .output()
        .expect("run punchraw probe");
    assert!(
        out.status.success(),
        "probe failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// The dnat rules miniupnpd holds (one per mapping).
fn router_rules(lab: &Lab) -> String {
    let out = lab
        .cmd(Node::NatA, "nft")
        .args(["list", "chain", "inet", "miniupnpd", "prerouting_miniupnpd"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("dnat"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn check_offer(portmap: &str, upnp: bool, nat_pmp: bool, pcp: bool) {
    let Some(lab) = lab(portmap) else { return };
    let _srv = common::punchraw_serve_5780(&lab);
    let v = probe(&lab);
    let pm = &v["port_mapping"];
    let ctx = format!("--portmap {portmap}: {pm:#}");
    assert_eq!(pm["upnp"], upnp, "{ctx}");
    assert_eq!(pm["nat_pmp"], nat_pmp, "{ctx}");
    assert_eq!(pm["pcp"], pcp, "{ctx}");
    // The order is checked on the serialised text in cli::table's tests (serde_json's
    // Value sorts keys).
    let keys: Vec<&String> = pm.as_object().expect("an object").keys().collect();
    assert_eq!(
        keys,
        [
            "external",
            "lifetime_s",
            "nat_pmp",
            "pcp",
            "reasons",
            "upnp"
        ],
        "{ctx}"
    );
    if upnp || nat_pmp || pcp {
        let ext = pm["external"].as_str().expect("external");
        assert!(ext.starts_with("11.0.113.10:"), "{ctx}");
        assert!(pm["lifetime_s"].as_u64().is_some(), "{ctx}");
    } else {
        assert!(
            pm["external"].is_null() && pm["lifetime_s"].is_null(),
            "{ctx}"
        );
    }
    for (k, on) in [("upnp", upnp), ("nat_pmp", nat_pmp), ("pcp", pcp)] {
        assert_eq!(pm["reasons"].get(k).is_some(), !on, "reason for {k}, {ctx}");
    }
    assert_eq!(
        router_rules(&lab),
        "",
        "a mapping left on the router, {ctx}"
    );
}

#[test]
fn probe_sees_all_three() {
    check_offer("upnp,natpmp,pcp", true, true, true);
}

#[test]
fn probe_sees_upnp_alone() {
    check_offer("upnp", true, false, false);
}

#[test]
fn probe_sees_natpmp_alone() {
    check_offer("natpmp", false, true, false);
}

#[test]
fn probe_sees_pcp_alone() {
    check_offer("pcp", false, false, true);
}

#[test]
fn probe_sees_none() {
    check_offer("none", false, false, false);
}

#[test]
fn no_port_mapping_flag_gives_null() {
    let Some(lab) = lab("upnp,natpmp,pcp") else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let out = lab
        .cmd(Node::A, BIN)
        .args([
            "probe",
            "--server",
            "203.0.113.1",
            "--json",
            "--no-tcp",
            "--no-port-mapping",
        ])
        .output()
        .expect("run punchraw probe");
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(v["port_mapping"].is_null(), "{v:#}");
}

/// A behind miniupnpd serving `portmap` (random-symmetric NAT), B behind a random-symmetric
/// NAT without one: a pair no punch connects (`random_symmetric_on_both_sides_fails_cleanly`
/// in lab_connect).
fn pair_lab(portmap: &str) -> Option<Lab> {
    if !tools_present() {
        return None;
    }
    Lab::up_with(
        LabOptions::new("upnp-random")
            .portmap(portmap)
            .kind_b("symmetric-random"),
    )
}

/// UDP through the mapping `via` (the report's name) that A's router granted, 1 MiB each
/// way; nothing of ours left on the router after.
fn connects_through(portmap: &str, via: &str, extra: &[&str]) {
    let Some(lab) = pair_lab(portmap) else { return };
    let _srv = common::punchraw_serve_5780(&lab);
    let p = pair(&lab, 0, "right", MIB, extra);
    let what = format!("--portmap {portmap} {extra:?}");
    check_connected(&p, "mapped", &what);
    let pm = &p.a.report["port_mapping"];
    assert_eq!(pm["via"], via, "{what}: A's mapping {pm:#}\n{}", p.a.stderr);
    assert!(
        pm["external"]
            .as_str()
            .is_some_and(|e| e.starts_with("11.0.113.10:")),
        "{what}: {pm:#}"
    );
    assert!(
        p.a.stderr.contains("port mapping: ") && p.b.stderr.contains("sending there"),
        "{what}: status lines\nA:\n{}\nB:\n{}",
        p.a.stderr,
        p.b.stderr
    );
    // B's router offers nothing: B went on without and said why.
    let pb = &p.b.report["port_mapping"];
    assert!(
        pb["via"].is_null() && pb["reasons"].is_object(),
        "{what}: B {pb:#}"
    );
    assert_eq!(
        router_rules(&lab),
        "",
        "{what}: a mapping left on the router"
    );
}

#[test]
fn udp_connects_through_natpmp() {
    connects_through("natpmp", "nat_pmp", &[]);
}

#[test]
fn udp_connects_through_pcp() {
    connects_through("pcp", "pcp", &[]);
}

#[test]
fn udp_connects_through_upnp() {
    connects_through("upnp", "upnp", &[]);
}

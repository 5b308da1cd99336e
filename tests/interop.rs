//! Clients nobody here wrote against `punchraw serve`, from behind lab NATs: the RFC 3489
//! `stun` client (stun-client package) and coturn's `turnutils_natdiscovery`. Needs root;
//! skipped otherwise unless PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{Lab, Node};

fn run(lab: &Lab, program: &str, args: &[&str]) -> String {
    let out = lab
        .cmd(Node::A, program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} (is its package installed?): {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The classic client gets its mapped address (the NAT's public address) and the same
/// verdict punchraw gives.
fn stun_client(kind: &str, verdict: &str) {
    let Some(lab) = Lab::up(kind, None) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let out = run(&lab, "stun", &["203.0.113.1", "-v"]);
    assert!(
        out.contains("MappedAddress = 203.0.113.10:"),
        "{kind}: no mapped address in:\n{out}"
    );
    let primary = out
        .lines()
        .find(|l| l.starts_with("Primary:"))
        .unwrap_or_else(|| panic!("{kind}: no verdict line in:\n{out}"));
    assert!(
        primary.contains(verdict),
        "{kind}: expected {verdict:?}, got {primary:?}"
    );
}

#[test]
fn stun_client_full_cone() {
    stun_client("full-cone", "Independent Mapping, Independent Filter");
}

#[test]
fn stun_client_port_restricted_cone() {
    stun_client(
        "port-restricted-cone",
        "Independent Mapping, Port Dependent Filter",
    );
}

#[test]
fn stun_client_symmetric() {
    stun_client("symmetric-random", "Dependent Mapping");
}

/// coturn's RFC 5780 client reports the same behaviour as punchraw's probe.
fn natdiscovery(kind: &str, mapping: &str, filtering: &str) {
    let Some(lab) = Lab::up(kind, None) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let out = run(&lab, "turnutils_natdiscovery", &["-m", "-f", "203.0.113.1"]);
    assert!(
        out.contains(&format!("NAT with {mapping} Mapping")),
        "{kind}: mapping {mapping:?} not in:\n{out}"
    );
    assert!(
        out.contains(&format!("NAT with {filtering} Filtering")),
        "{kind}: filtering {filtering:?} not in:\n{out}"
    );
}

#[test]
fn natdiscovery_full_cone() {
    natdiscovery("full-cone", "Endpoint Independent", "Endpoint Independent");
}

#[test]
fn natdiscovery_restricted_cone() {
    natdiscovery(
        "restricted-cone",
        "Endpoint Independent",
        "Address Dependent",
    );
}

#[test]
fn natdiscovery_port_restricted_cone() {
    natdiscovery(
        "port-restricted-cone",
        "Endpoint Independent",
        "Address and Port Dependent",
    );
}

#[test]
fn natdiscovery_symmetric() {
    natdiscovery(
        "symmetric-sequential",
        "Address and Port Dependent",
        "Address and Port Dependent",
    );
}

#[test]
fn natdiscovery_address_dependent() {
    natdiscovery(
        "address-dependent",
        "Address Dependent",
        "Address and Port Dependent",
    );
}

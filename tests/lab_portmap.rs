//! Port mapping against Debian's miniupnpd (lab kind upnp-random): the probe reports what
//! the router offers for each protocol alone, all three and none, and leaves no mapping
//! behind; Debian's own clients (`natpmpc`, `upnpc`) see and delete a mapping punchraw
//! made. Needs root, natlab's tools and miniupnpd, natpmpc, miniupnpc; skipped without.

mod common;

use common::lab::ChildGuard;
use common::lab::{find_program, Lab, LabOptions, Node};
use common::pair::{check_connected_over, connect_cmd, pair, Dir, WaitRef, BIN, MIB};
use serde_json::Value;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// These tests run one at a time: each holds a miniupnpd, and its checks (a mapping present
/// while connect waits, gone right after it exits, renewed within its 4 s lifetime) are timed
/// against that daemon's answers; two labs and their transfers at once on a 2-core machine
/// made miniupnpd and the signal's timing race (a rule still there after the exit, a signal
/// before the status line).
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

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

/// The dnat rules miniupnpd holds on NAT A (one per mapping).
fn router_rules(lab: &Lab) -> String {
    rules_on(lab, Node::NatA)
}

/// The dnat rules miniupnpd holds on `nat`.
fn rules_on(lab: &Lab, nat: Node) -> String {
    let out = lab
        .cmd(nat, "nft")
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
    // Nothing listens on 5351 then: the router's ICMP port unreachable is the reason, not
    // a wait for an answer that cannot come.
    if !nat_pmp && !pcp {
        for k in ["nat_pmp", "pcp"] {
            let why = pm["reasons"][k].as_str().unwrap_or_default();
            assert!(
                why.starts_with("refused: the router answered with ICMP port unreachable"),
                "{k}: {ctx}"
            );
        }
    }
    if portmap == "none" {
        no_ssdp_refused(pm, &ctx);
    }
    assert_eq!(
        router_rules(&lab),
        "",
        "a mapping left on the router, {ctx}"
    );
}

#[test]
fn probe_sees_all_three() {
    let _alone = one_at_a_time();
    check_offer("upnp,natpmp,pcp", true, true, true);
}

#[test]
fn probe_sees_upnp_alone() {
    let _alone = one_at_a_time();
    check_offer("upnp", true, false, false);
}

#[test]
fn probe_sees_natpmp_alone() {
    let _alone = one_at_a_time();
    check_offer("natpmp", false, true, false);
}

#[test]
fn probe_sees_pcp_alone() {
    let _alone = one_at_a_time();
    check_offer("pcp", false, false, true);
}

#[test]
fn probe_sees_none() {
    let _alone = one_at_a_time();
    check_offer("none", false, false, false);
}

#[test]
fn no_port_mapping_flag_gives_null() {
    let _alone = one_at_a_time();
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

/// UDP (TCP with `--tcp` in `extra`) through the mapping `via` (the report's name) that
/// A's router granted, 1 MiB each way; nothing of ours left on the router after.
fn connects_through(portmap: &str, via: &str, extra: &[&str]) {
    let Some(lab) = pair_lab(portmap) else { return };
    let _srv = common::punchraw_serve_5780(&lab);
    let p = pair(&lab, 0, "right", MIB, extra);
    let what = format!("--portmap {portmap} {extra:?}");
    let tcp = extra.contains(&"--tcp");
    check_connected_over(&p, if tcp { "tcp" } else { "udp" }, "mapped", &what);
    let (proto, b_says) = if tcp {
        ("TCP", "connecting there")
    } else {
        ("UDP", "sending there")
    };
    let pm = &p.a.report["port_mapping"];
    assert_eq!(pm["via"], via, "{what}: A's mapping {pm:#}\n{}", p.a.stderr);
    assert!(
        pm["external"]
            .as_str()
            .is_some_and(|e| e.starts_with("11.0.113.10:")),
        "{what}: {pm:#}"
    );
    assert_eq!(pm["protocol"], proto.to_lowercase(), "{what}: {pm:#}");
    assert!(
        p.a.stderr.contains(&format!("maps {proto} 11.0.113.10:")) && p.b.stderr.contains(b_says),
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
    let _alone = one_at_a_time();
    connects_through("natpmp", "nat_pmp", &[]);
}

#[test]
fn udp_connects_through_pcp() {
    let _alone = one_at_a_time();
    connects_through("pcp", "pcp", &[]);
}

#[test]
fn udp_connects_through_upnp() {
    let _alone = one_at_a_time();
    connects_through("upnp", "upnp", &[]);
}

#[test]
fn tcp_connects_through_natpmp() {
    let _alone = one_at_a_time();
    connects_through("natpmp", "nat_pmp", &["--tcp"]);
}

#[test]
fn tcp_connects_through_pcp() {
    let _alone = one_at_a_time();
    connects_through("pcp", "pcp", &["--tcp"]);
}

#[test]
fn tcp_connects_through_upnp() {
    let _alone = one_at_a_time();
    connects_through("upnp", "upnp", &["--tcp"]);
}

#[test]
fn tcp_connects_through_a_mapping_with_the_raw_syn_engine() {
    let _alone = one_at_a_time();
    connects_through("natpmp", "nat_pmp", &["--tcp", "--syn-engine", "raw"]);
}

/// Waits up to `secs` for miniupnpd to hold a mapping; its rules.
fn wait_for_rule(lab: &Lab, secs: u64) -> String {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = router_rules(lab);
        if !r.is_empty() || Instant::now() >= until {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A alone (the peer never comes) holds a mapping through `portmap`; it ends by SIGINT, by
/// SIGTERM and by its --timeout (exit 5), and after each the router holds nothing of ours.
fn every_exit_deletes_the_mapping(portmap: &str, extra: &[&str]) {
    let Some(lab) = pair_lab(portmap) else { return };
    let _srv = common::punchraw_serve_5780(&lab);
    let dir = Dir::new(&format!("{}-exits", lab.name()));
    std::fs::write(dir.0.join("a.in"), b"x").expect("write");
    for (how, want) in [("INT", 130), ("TERM", 143), ("timeout", 5)] {
        let session = format!("{}-{how}", lab.name());
        let timeout = if how == "timeout" { "6" } else { "60" };
        let mut a = ChildGuard(
            connect_cmd(
                &lab,
                Node::A,
                &dir.0,
                "a",
                &session,
                "right",
                &["--timeout", timeout],
            )
            .spawn()
            .expect("start connect"),
        );
        let rules = wait_for_rule(&lab, 10);
        assert!(
            rules.contains("dnat"),
            "--portmap {portmap}: no mapping while A waits"
        );
        if how != "timeout" {
            // `ip netns exec` execs the program, so this is punchraw's own pid.
            let st = Command::new("kill")
                .args([&format!("-{how}"), &a.0.id().to_string()])
                .status()
                .expect("kill");
            assert!(st.success());
        }
        let (code, err) = a.0.wait_with_output_ref();
        let err = String::from_utf8_lossy(&err);
        assert_eq!(
            code,
            Some(want),
            "--portmap {portmap} {extra:?}, {how}: {err}"
        );
        assert!(err.contains("port mapping: "), "{err}");
        assert_eq!(
            router_rules(&lab),
            "",
            "--portmap {portmap} {extra:?}: a mapping left after {how}:\n{err}"
        );
    }
}

#[test]
fn every_exit_deletes_the_natpmp_mapping() {
    let _alone = one_at_a_time();
    every_exit_deletes_the_mapping("natpmp", &[]);
}

#[test]
fn every_exit_deletes_the_pcp_mapping() {
    let _alone = one_at_a_time();
    every_exit_deletes_the_mapping("pcp", &[]);
}

#[test]
fn every_exit_deletes_the_upnp_mapping() {
    let _alone = one_at_a_time();
    every_exit_deletes_the_mapping("upnp", &[]);
}

#[test]
fn every_exit_deletes_the_tcp_mappings() {
    let _alone = one_at_a_time();
    every_exit_deletes_the_mapping("pcp", &["--tcp"]);
    every_exit_deletes_the_mapping("upnp", &["--tcp"]);
}

/// Without a mapping the pair is two random-symmetric NATs again: exit 8 with the usual
/// explanation, and (for a router that offers none) a status line saying why.
fn fails_as_without(portmap: &str, extra: &[&str]) {
    let Some(lab) = pair_lab(portmap) else { return };
    let _srv = common::punchraw_serve_5780(&lab);
    let mut args = vec!["--punch-budget", "3"];
    args.extend_from_slice(extra);
    let p = pair(&lab, 0, "right", 1024, &args);
    let what = format!("--portmap {portmap} {extra:?}");
    for s in [&p.a, &p.b] {
        assert_ne!(s.report["strategy"], "mapped", "{what}: {:#}", s.report);
        if s.code == Some(0) {
            continue; // a two-sided sweep may meet by chance
        }
        assert_eq!(s.code, Some(8), "{what}: {}", s.stderr);
        assert!(
            s.stderr
                .contains("both NATs are symmetric with random ports"),
            "{what}: {}",
            s.stderr
        );
    }
    assert_eq!(router_rules(&lab), "", "{what}");
    check_without(&p.a.report["port_mapping"], &p.a.stderr, extra, &what);
    if portmap == "none" {
        // Nothing listens on 5351: the ICMP refusal is the reason, said on the status line.
        let pm = &p.a.report["port_mapping"];
        for (k, name) in [("pcp", "PCP"), ("nat_pmp", "NAT-PMP")] {
            let why = format!(
                "refused: the router answered with ICMP port unreachable (no {name} server)"
            );
            assert_eq!(pm["reasons"][k], why.as_str(), "{what}: {pm:#}");
            assert!(p.a.stderr.contains(&why), "{what}: {}", p.a.stderr);
        }
        no_ssdp_refused(pm, &what);
    }
}

/// A router with nothing on SSDP's port refuses the unicast search with ICMP port
/// unreachable, and that (not 2 s of silence) is the UPnP reason: the discovery ended early.
fn no_ssdp_refused(pm: &Value, what: &str) {
    let why = pm["reasons"]["upnp"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("no UPnP IGD: the router at ")
            && why.contains("answered SSDP with ICMP port unreachable"),
        "{what}: {pm:#}"
    );
}

fn check_without(pm: &Value, err: &str, extra: &[&str], what: &str) {
    if extra.contains(&"off") {
        assert!(pm.is_null(), "{what}: {pm:#}");
        assert!(!err.contains("port mapping"), "{what}: {err}");
    } else {
        assert!(pm["via"].is_null(), "{what}: {pm:#}");
        for k in ["pcp", "nat_pmp", "upnp"] {
            assert!(
                pm["reasons"][k].is_string(),
                "{what}: no reason for {k}: {pm:#}"
            );
        }
        assert!(
            err.contains("port mapping: none for UDP ("),
            "{what}: {err}"
        );
        assert!(err.contains("going on without"), "{what}: {err}");
    }
}

#[test]
fn a_router_without_port_mapping_goes_on_and_says_why() {
    let _alone = one_at_a_time();
    fails_as_without("none", &[]);
}

#[test]
fn port_mapping_off_fails_as_before() {
    let _alone = one_at_a_time();
    fails_as_without("upnp,natpmp,pcp", &["--port-mapping", "off"]);
}

/// Behind NATs that map endpoint-independently the punch opens the way by itself, so connect
/// does not wait out SSDP's discovery for a mapping nobody offers: it says it did not wait,
/// for UDP and for TCP, and connects directly.
#[test]
fn behind_endpoint_independent_nats_connect_does_not_wait_for_a_mapping() {
    let _alone = one_at_a_time();
    let Some(lab) = Lab::up("port-restricted-cone", Some("port-restricted-cone")) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for (t, extra) in [&[][..], &["--tcp"][..]].into_iter().enumerate() {
        let p = pair(&lab, t as u32, "right", 1024, extra);
        for (n, s) in [("A", &p.a), ("B", &p.b)] {
            assert_eq!(s.code, Some(0), "{extra:?} {n}: {}", s.stderr);
            assert_eq!(s.report["strategy"], "direct", "{extra:?} {n}");
            let pm = &s.report["port_mapping"];
            assert!(pm["via"].is_null(), "{extra:?} {n}: {pm:#}");
            let why = pm["reasons"]["upnp"].as_str().unwrap_or_default();
            assert!(
                why.starts_with("not waited for: our NAT maps"),
                "{extra:?} {n}: {pm:#}"
            );
        }
    }
}

/// Asked for a 4 s lifetime, A's mapping is still there 10 s later (renewed at half of it),
/// while a 4 s mapping made by Debian's own client (`control`, run in A's namespace)
/// expired by then: miniupnpd does remove what is not renewed.
fn the_mapping_is_renewed(portmap: &str, control: &[&str]) {
    let Some(lab) = pair_lab(portmap) else { return };
    let _srv = common::punchraw_serve_5780(&lab);
    let out = lab
        .cmd(Node::A, control[0])
        .args(&control[1..])
        .output()
        .expect("run the control client");
    assert!(out.status.success(), "{control:?}: {out:?}");
    assert!(
        wait_for_rule(&lab, 5).contains("dnat"),
        "{control:?} mapped nothing"
    );
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        router_rules(&lab),
        "",
        "--portmap {portmap}: the control mapping of 4 s did not expire within 10 s"
    );
    let dir = Dir::new(&format!("{}-renew", lab.name()));
    std::fs::write(dir.0.join("a.in"), b"x").expect("write");
    let args = ["--timeout", "60", "--port-mapping-lifetime", "4"];
    let mut a = ChildGuard(
        connect_cmd(&lab, Node::A, &dir.0, "a", lab.name(), "right", &args)
            .spawn()
            .expect("start connect"),
    );
    let first = wait_for_rule(&lab, 10);
    assert!(first.contains("dnat"), "--portmap {portmap}: no mapping");
    std::thread::sleep(Duration::from_secs(10));
    let later = router_rules(&lab);
    let st = Command::new("kill")
        .args(["-INT", &a.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let (code, err) = a.0.wait_with_output_ref();
    let err = String::from_utf8_lossy(&err);
    assert_eq!(later, first, "--portmap {portmap}: not renewed:\n{err}");
    assert_eq!(code, Some(130), "{err}");
    assert!(!err.contains("renewal failed"), "{err}");
    assert_eq!(
        router_rules(&lab),
        "",
        "--portmap {portmap}: left after SIGINT"
    );
}

#[test]
fn the_natpmp_mapping_is_renewed() {
    let _alone = one_at_a_time();
    the_mapping_is_renewed("natpmp", &["natpmpc", "-a", "40000", "40000", "udp", "4"]);
}

#[test]
fn the_upnp_mapping_is_renewed() {
    let _alone = one_at_a_time();
    the_mapping_is_renewed(
        "upnp",
        &[
            "upnpc", "-e", "control", "-a", "10.0.1.2", "40000", "40000", "UDP", "4",
        ],
    );
}

/// Both routers map: each side sends to (connects to) the other's mapping; the first
/// authenticated path wins. Nothing left on either router.
fn both_mapped_connect(extra: &[&str]) {
    if !tools_present() {
        return;
    }
    let Some(lab) = Lab::up_with(
        LabOptions::new("upnp-random")
            .portmap("upnp,natpmp,pcp")
            .kind_b("upnp-random"),
    ) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let p = pair(&lab, 0, "right", MIB, extra);
    let tcp = extra.contains(&"--tcp");
    let what = format!("both mapped {extra:?}");
    check_connected_over(&p, if tcp { "tcp" } else { "udp" }, "mapped", &what);
    for (n, s) in [("A", &p.a), ("B", &p.b)] {
        assert_eq!(s.report["port_mapping"]["via"], "pcp", "{what}: {n}");
    }
    for node in [Node::NatA, Node::NatB] {
        assert_eq!(rules_on(&lab, node), "", "{what}: left on {node:?}");
    }
}

#[test]
fn both_mapped_connect_over_udp() {
    let _alone = one_at_a_time();
    both_mapped_connect(&[]);
}

#[test]
fn both_mapped_connect_over_tcp() {
    let _alone = one_at_a_time();
    both_mapped_connect(&["--tcp"]);
}

/// A router that answers with an error (miniupnpd whose WAN interface is missing: NAT-PMP
/// result 3, PCP NETWORK_FAILURE, UPnP no external address): connect goes on without a
/// mapping, fails as two random-symmetric NATs do, and its report and status line name each
/// refusal with its code.
#[test]
fn a_router_that_refuses_goes_on_without_and_names_the_error() {
    let _alone = one_at_a_time();
    let Some(lab) = pair_lab("upnp,natpmp,pcp,wandown") else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let p = pair(&lab, 0, "right", 1024, &["--punch-budget", "3"]);
    let a = &p.a;
    assert_ne!(a.report["strategy"], "mapped", "{:#}", a.report);
    if a.code != Some(0) {
        assert_eq!(a.code, Some(8), "{}", a.stderr);
    }
    let pm = &a.report["port_mapping"];
    assert!(pm["via"].is_null(), "{pm:#}");
    for (k, code) in [("pcp", "NETWORK_FAILURE"), ("nat_pmp", "network failure")] {
        let why = pm["reasons"][k].as_str().unwrap_or_default();
        assert!(why.contains(code), "{k}: {pm:#}");
        assert!(a.stderr.contains(why), "{k}: {}", a.stderr);
    }
    let why = pm["reasons"]["upnp"].as_str().unwrap_or_default();
    assert!(
        why.contains("the router has no external address"),
        "upnp: {pm:#}"
    );
    assert!(a.stderr.contains("going on without"), "{}", a.stderr);
    assert_eq!(router_rules(&lab), "");
}

/// The rule miniupnpd holds for one mapping: (external port, internal port).
fn rule_ports(rule: &str) -> (u16, u16) {
    let after = |key: &str| -> Option<u16> {
        let rest = &rule[rule.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let ext = after("dport ").expect("the external port in the rule");
    let int = after("10.0.1.2:").expect("the internal endpoint in the rule");
    (ext, int)
}

/// While connect holds a mapping (its peer never comes), Debian's own client run in A's
/// namespace (`upnpc -l`) lists it and deletes it like one of its own (`delete`, given the rule's
/// external and internal port); punchraw then exits by SIGTERM (143) without complaining
/// about the mapping that vanished under it.
fn a_debian_client_lists_and_deletes_ours(
    portmap: &str,
    description: &str,
    delete: fn(u16, u16) -> Vec<String>,
) {
    let Some(lab) = pair_lab(portmap) else { return };
    let _srv = common::punchraw_serve_5780(&lab);
    let dir = Dir::new(&format!("{}-interop", lab.name()));
    std::fs::write(dir.0.join("a.in"), b"x").expect("write");
    let mut a = ChildGuard(
        connect_cmd(
            &lab,
            Node::A,
            &dir.0,
            "a",
            lab.name(),
            "right",
            &["--timeout", "60"],
        )
        .spawn()
        .expect("start connect"),
    );
    let rule = wait_for_rule(&lab, 10);
    assert!(rule.contains("dnat"), "--portmap {portmap}: no mapping");
    let (ext, int) = rule_ports(&rule);
    let out = lab
        .cmd(Node::A, "upnpc")
        .arg("-l")
        .output()
        .expect("upnpc -l");
    let text = String::from_utf8_lossy(&out.stdout);
    let ours = text
        .lines()
        .find(|l| l.contains(&format!("{ext}->10.0.1.2:{int}")))
        .unwrap_or_default();
    assert!(
        ours.contains(&format!("'{description}")),
        "--portmap {portmap}: upnpc -l does not list ours ({ext} -> {int}) as '{description}':\n{text}"
    );
    let del = delete(ext, int);
    let out = lab
        .cmd(Node::A, &del[0])
        .args(&del[1..])
        .output()
        .expect("delete");
    assert!(out.status.success(), "{del:?}: {out:?}");
    assert_eq!(
        router_rules(&lab),
        "",
        "--portmap {portmap}: {del:?} left the rule"
    );
    std::thread::sleep(Duration::from_millis(500));
    let st = Command::new("kill")
        .args(["-TERM", &a.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let (code, err) = a.0.wait_with_output_ref();
    let err = String::from_utf8_lossy(&err);
    assert_eq!(code, Some(143), "--portmap {portmap}: {err}");
    for bad in ["error", "warning", "lost", "failed"] {
        assert!(
            !err.to_lowercase().contains(bad),
            "--portmap {portmap}: '{bad}' after the delete:\n{err}"
        );
    }
    assert_eq!(router_rules(&lab), "", "--portmap {portmap}: {err}");
}

#[test]
fn upnpc_lists_and_deletes_our_upnp_mapping() {
    let _alone = one_at_a_time();
    a_debian_client_lists_and_deletes_ours("upnp", "punchraw connect", |ext, _| {
        vec!["upnpc".into(), "-d".into(), ext.to_string(), "UDP".into()]
    });
}

/// NAT-PMP has no list request and no description: miniupnpd's UPnP side lists the mapping
/// under a name of its own. The delete names the internal port, lifetime 0 (RFC 6886
/// section 3.4).
#[test]
fn upnpc_lists_and_natpmpc_deletes_our_natpmp_mapping() {
    let _alone = one_at_a_time();
    a_debian_client_lists_and_deletes_ours("upnp,natpmp", "NAT-PMP", |ext, int| {
        let (ext, int) = (ext.to_string(), int.to_string());
        ["natpmpc", "-a", &ext, &int, "udp", "0"]
            .map(String::from)
            .to_vec()
    });
}

/// The mapping is asked for while the NAT is classified; a signal then (here the STUN
/// server is absent, so the classification waits) still says the mapping is deleted, and
/// it is.
#[test]
fn an_interrupt_during_the_classification_says_the_mapping_goes() {
    let _alone = one_at_a_time();
    let Some(lab) = pair_lab("pcp") else { return };
    let dir = Dir::new(&format!("{}-classify", lab.name()));
    std::fs::write(dir.0.join("a.in"), b"x").expect("write");
    let mut a = ChildGuard(
        connect_cmd(&lab, Node::A, &dir.0, "a", lab.name(), "right", &[])
            .spawn()
            .expect("start connect"),
    );
    assert!(wait_for_rule(&lab, 10).contains("dnat"), "no mapping");
    let st = Command::new("kill")
        .args(["-INT", &a.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let (code, err) = a.0.wait_with_output_ref();
    let err = String::from_utf8_lossy(&err);
    assert_eq!(code, Some(130), "{err}");
    assert!(
        err.contains("port mapping: stopped while asking the router"),
        "{err}"
    );
    assert_eq!(router_rules(&lab), "", "left after SIGINT:\n{err}");
}

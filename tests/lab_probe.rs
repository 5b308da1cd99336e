//! `punchraw probe` behind every lab NAT, against `punchraw serve` and against coturn's
//! server, over UDP and TCP, plus the pcap capture read by tshark and the binding-lifetime
//! search.
//! Needs root (network namespaces, nftables); skipped otherwise unless
//! PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{ChildGuard, Lab, LabOptions, Node};
use serde_json::Value;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_punchraw");

struct Expect {
    kind: &'static str,
    behind_nat: bool,
    mapping: &'static str,
    filtering: &'static str,
    allocation: &'static str,
    delta: Option<i64>,
    hairpinning: bool,
    legacy: &'static str,
    tcp: Tcp,
}

/// What the `tcp` object must say (RFC 5382 terms; `behind_nat` is the UDP one's).
struct Tcp {
    mapping: &'static str,
    filtering: &'static str,
    allocation: &'static str,
    delta: Option<i64>,
}

const EI: &str = "endpoint-independent";
const AD: &str = "address-dependent";
const APD: &str = "address-and-port-dependent";

/// coturn's STUN server with RFC 5780 on both addresses. Debian's default config disables
/// RFC 5780, hence an empty config file.
fn start_coturn(lab: &Lab) -> (ChildGuard, common::tempdir::Dir) {
    let both = ["--stun-only", "-L", "203.0.113.1", "-L", "203.0.113.2"];
    common::coturn(lab, &both)
}

/// `probe --json EXTRA...` from host A (TCP included unless EXTRA says `--no-tcp`).
fn probe_json(lab: &Lab, extra: &[&str]) -> Value {
    probe_json_via(lab, &[], extra)
}

/// The same, run through `wrapper` (e.g. `setpriv` with its options) when not empty.
fn probe_json_via(lab: &Lab, wrapper: &[&str], extra: &[&str]) -> Value {
    let mut c = match wrapper.split_first() {
        Some((prog, args)) => {
            let mut c = lab.cmd(Node::A, prog);
            c.args(args).arg(BIN);
            c
        }
        None => lab.cmd(Node::A, BIN),
    };
    let out = c
        .args(["probe", "--server", "203.0.113.1", "--json"])
        .args(extra)
        .output()
        .expect("run punchraw probe");
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

/// `connect_back`: the server does punchraw's CONNECT-BACK, so TCP filtering is measured.
fn check(v: &Value, e: &Expect, against: &str, connect_back: bool) {
    let u = &v["udp"];
    let ctx = format!("{} against {against}: {v:#}", e.kind);
    assert_eq!(u["behind_nat"], e.behind_nat, "behind_nat, {ctx}");
    assert_eq!(u["mapping"], e.mapping, "mapping, {ctx}");
    assert_eq!(u["filtering"], e.filtering, "filtering, {ctx}");
    assert_eq!(u["allocation"], e.allocation, "allocation, {ctx}");
    assert_eq!(u["delta"].as_i64(), e.delta, "delta, {ctx}");
    assert_eq!(u["hairpinning"], e.hairpinning, "hairpinning, {ctx}");
    assert_eq!(u["legacy_type"], e.legacy, "legacy_type, {ctx}");
    assert_eq!(v["server"], "203.0.113.1:3478", "{ctx}");
    assert!(v["elapsed_ms"].as_u64().is_some(), "{ctx}");
    assert!(
        u["local"].as_str().is_some() && u["mapped"].as_str().is_some(),
        "{ctx}"
    );
    let t = &v["tcp"];
    assert_eq!(t["behind_nat"], e.behind_nat, "tcp behind_nat, {ctx}");
    assert_eq!(t["mapping"], e.tcp.mapping, "tcp mapping, {ctx}");
    assert_eq!(t["allocation"], e.tcp.allocation, "tcp allocation, {ctx}");
    assert_eq!(t["delta"].as_i64(), e.tcp.delta, "tcp delta, {ctx}");
    assert!(
        t["local"].as_str().is_some() && t["mapped"].as_str().is_some(),
        "{ctx}"
    );
    assert_eq!(t["other_address"], "203.0.113.2:3479", "{ctx}");
    if connect_back {
        assert_eq!(t["filtering"], e.tcp.filtering, "tcp filtering, {ctx}");
        assert_eq!(t["reasons"], serde_json::json!({}), "tcp reasons, {ctx}");
    } else {
        // coturn ignores CONNECT-BACK, as a comprehension-optional attribute must be.
        assert_eq!(t["filtering"], "unknown", "tcp filtering, {ctx}");
        assert!(
            t["reasons"]["filtering"]
                .as_str()
                .is_some_and(|s| s.contains("does not offer CONNECT-BACK")),
            "tcp filtering reason, {ctx}"
        );
    }
}

/// The one-way delay on each NAT's uplink in the tests "with 40 ms delay": the RTT to the
/// server grows by 80 ms; the classification must not depend on it.
const DELAY_MS: u32 = 40;

/// Classifies the lab NAT with punchraw's own server, then with coturn's.
fn classify_kind(e: Expect) {
    classify_kind_with(LabOptions::new(e.kind), e);
}

/// [`classify_kind`] with [`DELAY_MS`] one way on the NAT's uplink.
fn classify_kind_with_delay(e: Expect) {
    classify_kind_with(LabOptions::new(e.kind).delay_ms(DELAY_MS), e);
}

/// [`classify_kind`] in a lab with `opts` (whose `kind_a` is `e.kind`).
fn classify_kind_with(opts: LabOptions, e: Expect) {
    assert_eq!(opts.kind_a, e.kind);
    let Some(lab) = Lab::up_with(opts) else {
        return;
    };
    {
        let _srv = common::punchraw_serve_5780(&lab);
        let v = probe_json(&lab, &[]);
        eprintln!("{}: probe took {} ms", e.kind, v["elapsed_ms"]);
        check(&v, &e, "punchraw serve", true);
    }
    let (_coturn, _dir) = start_coturn(&lab);
    let v = probe_json(&lab, &[]);
    check(&v, &e, "coturn", false);
}

#[test]
fn probe_none() {
    classify_kind(no_nat());
}

#[test]
fn probe_none_with_40_ms_delay() {
    classify_kind_with_delay(no_nat());
}

fn no_nat() -> Expect {
    Expect {
        kind: "none",
        behind_nat: false,
        mapping: EI,
        filtering: EI,
        allocation: "preserving",
        delta: None,
        hairpinning: true,
        legacy: "open-internet",
        tcp: Tcp {
            mapping: EI,
            filtering: EI,
            allocation: "preserving",
            delta: None,
        },
    }
}

#[test]
fn probe_full_cone() {
    classify_kind(full_cone());
}

#[test]
fn probe_full_cone_with_40_ms_delay() {
    classify_kind_with_delay(full_cone());
}

fn full_cone() -> Expect {
    Expect {
        kind: "full-cone",
        behind_nat: true,
        mapping: EI,
        filtering: EI,
        allocation: "preserving",
        delta: None,
        hairpinning: false,
        legacy: "full-cone",
        tcp: Tcp {
            mapping: EI,
            filtering: EI,
            allocation: "preserving",
            delta: None,
        },
    }
}

#[test]
fn probe_restricted_cone() {
    classify_kind(restricted_cone());
}

#[test]
fn probe_restricted_cone_with_40_ms_delay() {
    classify_kind_with_delay(restricted_cone());
}

fn restricted_cone() -> Expect {
    Expect {
        kind: "restricted-cone",
        behind_nat: true,
        mapping: EI,
        filtering: AD,
        allocation: "preserving",
        delta: None,
        hairpinning: false,
        legacy: "restricted-cone",
        tcp: Tcp {
            mapping: EI,
            filtering: AD,
            allocation: "preserving",
            delta: None,
        },
    }
}

#[test]
fn probe_port_restricted_cone() {
    classify_kind(port_restricted_cone());
}

/// 40 ms each way on both uplinks (RTT to the server +80 ms): the classification must not
/// depend on the path's delay.
#[test]
fn probe_port_restricted_cone_with_40_ms_delay() {
    classify_kind_with(
        LabOptions::new("port-restricted-cone").delay_ms(40),
        port_restricted_cone(),
    );
}

/// The probe measures the path's RTT (and scales its waits with it) also when the path is
/// slower than the first retransmission timeout: here the first answer, which includes ARP
/// across the delayed links, comes after 160 ms.
#[test]
fn probe_measures_the_rtt_with_40_ms_delay() {
    let Some(lab) = Lab::up_with(LabOptions::new("port-restricted-cone").delay_ms(40)) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let v = probe_json(&lab, &[]);
    let rtt = v["udp"]["rtt_ms"].as_f64();
    // The element never forwards early: the RTT is at least twice the one-way delay.
    assert!(rtt.is_some_and(|r| r >= 80.0), "udp rtt_ms {rtt:?}: {v:#}");
}

/// 200 ms each way (400 ms RTT, a long satellite-like path): a full cone still classifies as
/// one.
#[test]
fn probe_full_cone_with_200_ms_delay() {
    classify_kind_with(
        LabOptions::new("full-cone").delay_ms(200),
        Expect {
            kind: "full-cone",
            behind_nat: true,
            mapping: EI,
            filtering: EI,
            allocation: "preserving",
            delta: None,
            hairpinning: false,
            legacy: "full-cone",
            tcp: Tcp {
                mapping: EI,
                filtering: EI,
                allocation: "preserving",
                delta: None,
            },
        },
    );
}

/// A NAT that hairpins (RFC 4787 section 6, `natlab.sh up --hairpin`): the probe's hairpin
/// test (RFC 5780 section 4.5) sees its own request come back to socket A, whatever the
/// NAT's filtering; nothing else of the classification changes.
#[test]
fn probe_port_restricted_cone_with_hairpinning() {
    classify_kind_with(
        LabOptions::new("port-restricted-cone").hairpin_a(),
        Expect {
            hairpinning: true,
            ..port_restricted_cone()
        },
    );
}

/// A symmetric NAT that hairpins: the hairpinned request arrives from a new mapping of
/// the NAT (its source is not the mapping the server saw), which is still hairpinning.
#[test]
fn probe_symmetric_random_with_hairpinning() {
    classify_kind_with(
        LabOptions::new("symmetric-random").hairpin_a(),
        Expect {
            hairpinning: true,
            ..symmetric_random()
        },
    );
}

fn port_restricted_cone() -> Expect {
    Expect {
        kind: "port-restricted-cone",
        behind_nat: true,
        mapping: EI,
        filtering: APD,
        allocation: "preserving",
        delta: None,
        hairpinning: false,
        legacy: "port-restricted-cone",
        tcp: Tcp {
            mapping: EI,
            filtering: APD,
            allocation: "preserving",
            delta: None,
        },
    }
}

#[test]
fn probe_symmetric_random() {
    classify_kind(symmetric_random());
}

#[test]
fn probe_symmetric_random_with_40_ms_delay() {
    classify_kind_with(
        LabOptions::new("symmetric-random").delay_ms(40),
        symmetric_random(),
    );
}

fn symmetric_random() -> Expect {
    Expect {
        kind: "symmetric-random",
        behind_nat: true,
        mapping: APD,
        filtering: APD,
        allocation: "random",
        delta: None,
        hairpinning: false,
        legacy: "symmetric",
        tcp: Tcp {
            mapping: APD,
            filtering: APD,
            allocation: "random",
            delta: None,
        },
    }
}

#[test]
fn probe_symmetric_sequential() {
    classify_kind(symmetric_sequential());
}

#[test]
fn probe_symmetric_sequential_with_40_ms_delay() {
    classify_kind_with_delay(symmetric_sequential());
}

fn symmetric_sequential() -> Expect {
    Expect {
        kind: "symmetric-sequential",
        behind_nat: true,
        mapping: APD,
        filtering: APD,
        allocation: "sequential",
        delta: Some(1),
        hairpinning: false,
        legacy: "symmetric",
        tcp: Tcp {
            mapping: APD,
            filtering: APD,
            allocation: "sequential",
            delta: Some(1),
        },
    }
}

#[test]
fn probe_address_dependent_mapping() {
    classify_kind(address_dependent());
}

#[test]
fn probe_address_dependent_mapping_with_40_ms_delay() {
    classify_kind_with_delay(address_dependent());
}

fn address_dependent() -> Expect {
    Expect {
        kind: "address-dependent",
        behind_nat: true,
        mapping: AD,
        filtering: APD,
        allocation: "random",
        delta: None,
        hairpinning: false,
        legacy: "symmetric",
        tcp: Tcp {
            mapping: AD,
            filtering: APD,
            allocation: "random",
            delta: None,
        },
    }
}

/// Without --alternate the server is plain STUN: the probe still reports what it can and
/// names the reason for the rest.
#[test]
fn probe_without_alternate_reports_unknown_with_reasons() {
    let Some(lab) = Lab::up("port-restricted-cone", None) else {
        return;
    };
    let _srv = common::punchraw_serve(&lab, &[]);
    let v = probe_json(&lab, &[]);
    for u in [&v["udp"], &v["tcp"]] {
        assert_eq!(u["mapping"], "unknown", "{v:#}");
        assert_eq!(u["filtering"], "unknown", "{v:#}");
        assert_eq!(u["allocation"], "preserving", "{v:#}");
        assert_eq!(u["behind_nat"], true, "{v:#}");
        assert!(
            u["reasons"]["mapping"]
                .as_str()
                .is_some_and(|s| s.contains("alternate")),
            "{v:#}"
        );
        assert!(
            u["reasons"]["filtering"]
                .as_str()
                .is_some_and(|s| s.contains("alternate")),
            "{v:#}"
        );
    }
}

#[test]
fn probe_unreachable_server_fails_clearly() {
    let Some(lab) = Lab::up("port-restricted-cone", None) else {
        return;
    };
    // Nobody listens on the server address: no answer, clear message, non-zero exit.
    let out = lab
        .cmd(Node::A, BIN)
        .args(["probe", "--server", "203.0.113.1", "--no-tcp"])
        .output()
        .expect("run probe");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no STUN answer from 203.0.113.1:3478"),
        "{err}"
    );
    // With TCP: the same exit, and the report says why TCP knows nothing either.
    let out = lab
        .cmd(Node::A, BIN)
        .args(["probe", "--server", "203.0.113.1", "--json"])
        .output()
        .expect("run probe");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("the report is still printed");
    let t = &v["tcp"];
    assert_eq!(t["mapped"], Value::Null, "{v:#}");
    assert_eq!(t["mapping"], "unknown", "{v:#}");
    assert!(
        t["reasons"]["mapped"]
            .as_str()
            .is_some_and(|s| s.contains("cannot connect to 203.0.113.1:3478 over TCP")),
        "{v:#}"
    );
}

#[test]
fn probe_port_restricted_rst() {
    classify_kind(port_restricted_rst());
}

#[test]
fn probe_port_restricted_rst_with_40_ms_delay() {
    classify_kind_with_delay(port_restricted_rst());
}

fn port_restricted_rst() -> Expect {
    Expect {
        kind: "port-restricted-rst",
        behind_nat: true,
        mapping: EI,
        filtering: APD,
        allocation: "preserving",
        delta: None,
        hairpinning: false,
        legacy: "port-restricted-cone",
        // The NAT answers the unsolicited SYN with a RST to the server: still filtered.
        tcp: Tcp {
            mapping: EI,
            filtering: APD,
            allocation: "preserving",
            delta: None,
        },
    }
}

#[test]
fn probe_port_restricted_icmp() {
    classify_kind(port_restricted_icmp());
}

#[test]
fn probe_port_restricted_icmp_with_40_ms_delay() {
    classify_kind_with_delay(port_restricted_icmp());
}

fn port_restricted_icmp() -> Expect {
    Expect {
        kind: "port-restricted-icmp",
        behind_nat: true,
        mapping: EI,
        filtering: APD,
        allocation: "preserving",
        delta: None,
        hairpinning: false,
        legacy: "port-restricted-cone",
        tcp: Tcp {
            mapping: EI,
            filtering: APD,
            allocation: "preserving",
            delta: None,
        },
    }
}

/// `--no-tcp` skips TCP: the key stays, as null.
#[test]
fn no_tcp_skips_the_tcp_tests() {
    let Some(lab) = Lab::up("full-cone", None) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let v = probe_json(&lab, &["--no-tcp"]);
    assert_eq!(v["tcp"], Value::Null, "{v:#}");
    assert!(
        v.as_object().is_some_and(|o| o.contains_key("tcp")),
        "{v:#}"
    );
    assert_eq!(v["udp"]["filtering"], EI, "{v:#}");
}

/// Without CAP_NET_RAW the SYN cannot be watched: filtering is unknown, with the reason, and
/// the rest of the TCP classification (and the exit status) is unaffected.
#[test]
fn tcp_filtering_without_cap_net_raw_is_unknown_with_the_reason() {
    let Some(lab) = Lab::up("restricted-cone", None) else {
        return;
    };
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("PUNCHRAW_REQUIRE_LAB").is_none(),
            "setpriv (util-linux) is needed to drop CAP_NET_RAW"
        );
        eprintln!("skipped: no setpriv");
        return;
    }
    let _srv = common::punchraw_serve_5780(&lab);
    let v = probe_json_via(
        &lab,
        &[
            "setpriv",
            "--bounding-set",
            "-net_raw",
            "--inh-caps",
            "-net_raw",
            "--",
        ],
        &[],
    );
    let t = &v["tcp"];
    assert_eq!(t["filtering"], "unknown", "{v:#}");
    assert!(
        t["reasons"]["filtering"]
            .as_str()
            .is_some_and(|s| s.contains("CAP_NET_RAW")),
        "{v:#}"
    );
    assert_eq!(t["mapping"], EI, "{v:#}");
    assert_eq!(t["allocation"], "preserving", "{v:#}");
    // UDP needs no privilege at all.
    assert_eq!(v["udp"]["filtering"], AD, "{v:#}");
}

/// The capture holds what the probe sent and received and tshark dissects it as STUN with
/// no warning.
#[test]
fn capture_is_read_by_tshark() {
    let Some(lab) = Lab::up("symmetric-sequential", None) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let dir = common::tempdir::Dir::new(&format!("{}-cap", lab.name()));
    let pcap = dir.path.join("probe.pcap");
    let v = probe_json(&lab, &["--capture", pcap.to_str().expect("utf-8 path")]);
    assert_eq!(v["udp"]["allocation"], "sequential");
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args(["-T", "fields", "-e", "stun.type", "-e", "ip.src"])
        .output()
        .expect("run tshark (apt-get install tshark)");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        // tshark always says this when run as root; it is not about the file.
        .filter(|l| !l.contains("Running as user") && !l.trim().is_empty())
        .collect();
    assert!(warnings.is_empty(), "tshark warned: {warnings:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let requests = stdout.lines().filter(|l| l.starts_with("0x0001")).count();
    let responses = stdout.lines().filter(|l| l.starts_with("0x0101")).count();
    assert!(
        requests >= 9 && responses >= 8,
        "requests {requests}, responses {responses}:\n{stdout}"
    );
    // Answers from the alternate address prove the capture has both directions.
    assert!(stdout.contains("203.0.113.2"), "{stdout}");
    // The TCP tests are in it too (the AF_PACKET watcher's view): one SYN per connection
    // (three mapping, five allocation, two filtering tests) and STUN answers over TCP.
    let tshark = |filter: &str, field: &str| {
        let out = std::process::Command::new("tshark")
            .arg("-r")
            .arg(&pcap)
            .args(["-Y", filter, "-T", "fields", "-e", field])
            .output()
            .expect("run tshark");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let syns = tshark("tcp.flags.syn == 1 && tcp.flags.ack == 0", "ip.dst");
    assert!(syns.lines().count() >= 10, "{syns}");
    let answers = tshark("tcp && stun.type == 0x0101", "ip.src");
    assert!(answers.lines().count() >= 10, "{answers}");
}

/// The lifetime search brackets the NAT's real UDP timeout and stops soon after it.
#[test]
fn lifetime_search_brackets_conntrack_timeout() {
    let mut opts = LabOptions::new("port-restricted-cone");
    opts.udp_timeout_s = Some(4);
    let Some(lab) = Lab::up_with(opts) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let started = std::time::Instant::now();
    let v = probe_json(&lab, &["--no-tcp", "--lifetime", "--lifetime-max", "30"]);
    let l = &v["udp"]["lifetime"];
    let min = l["min_s"].as_f64().expect("min_s");
    let max = l["max_s"]
        .as_f64()
        .expect("max_s: the binding must expire within 30 s");
    assert!(min < 4.5 && (3.0..=8.0).contains(&max), "{v:#}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "search ran past the expiry"
    );
}

/// Behind a double NAT (`cgn-*`: a home NAT behind a carrier-grade NAT, RFC 6598 between
/// them): the classification as for a single NAT of that behaviour, against punchraw's
/// server and coturn, and for UDP and TCP every allocation sample and the reported
/// `port_range` inside the CGN's port block. With `names_block`, the human-readable UDP and
/// TCP verdicts name the block (as a range inside it).
fn classify_cgn(e: Expect, names_block: bool) {
    classify_cgn_with(LabOptions::new(e.kind), e, names_block)
}

/// [`classify_cgn`] in a lab with `opts` (whose `kind_a` is `e.kind`).
fn classify_cgn_with(opts: LabOptions, e: Expect, names_block: bool) {
    assert_eq!(opts.kind_a, e.kind);
    let Some(lab) = Lab::up_with(opts) else {
        return;
    };
    let [lo, hi] = lab.block("BLOCK_A");
    let in_block = |v: &Value, against: &str| {
        for proto in ["udp", "tcp"] {
            let r = &v[proto];
            let ctx = format!(
                "{} {proto} against {against}, block {lo}-{hi}: {v:#}",
                e.kind
            );
            let samples: Vec<u64> = r["allocation_samples"]
                .as_array()
                .unwrap_or_else(|| panic!("allocation_samples, {ctx}"))
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            assert!(samples.len() >= 4, "allocation samples, {ctx}");
            assert!(
                samples
                    .iter()
                    .all(|&p| (u64::from(lo)..=u64::from(hi)).contains(&p)),
                "allocation samples outside the block, {ctx}"
            );
            let range: Vec<u64> = r["port_range"]
                .as_array()
                .unwrap_or_else(|| panic!("port_range, {ctx}"))
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            assert!(
                range.len() == 2
                    && u64::from(lo) <= range[0]
                    && range[0] <= range[1]
                    && range[1] <= u64::from(hi),
                "port_range not inside the block, {ctx}"
            );
            let mapped_port = r["mapped"]
                .as_str()
                .and_then(|m| m.rsplit_once(':'))
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .unwrap_or_else(|| panic!("mapped, {ctx}"));
            assert!((lo..=hi).contains(&mapped_port), "mapped port, {ctx}");
        }
    };
    {
        let _srv = common::punchraw_serve_5780(&lab);
        let v = probe_json(&lab, &[]);
        check(&v, &e, "punchraw serve", true);
        in_block(&v, "punchraw serve");
        if names_block {
            let out = lab
                .cmd(Node::A, BIN)
                .args(["probe", "--server", "203.0.113.1"])
                .output()
                .expect("run punchraw probe");
            assert!(out.status.success(), "{out:?}");
            let table = String::from_utf8_lossy(&out.stdout);
            for proto in ["UDP", "TCP"] {
                let verdict = table
                    .lines()
                    .find(|l| l.starts_with(&format!("Verdict ({proto}):")))
                    .unwrap_or_else(|| panic!("no {proto} verdict:\n{table}"));
                let named = verdict
                    .split("fall within ")
                    .nth(1)
                    .and_then(|r| r.split(':').next())
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)));
                assert!(
                    verdict.contains("port block")
                        && named.is_some_and(|(a, b)| lo <= a && a <= b && b <= hi),
                    "the {proto} verdict does not name a range inside {lo}-{hi}: {verdict}"
                );
            }
        }
    }
    let (_coturn, _dir) = start_coturn(&lab);
    let v = probe_json(&lab, &[]);
    check(&v, &e, "coturn", false);
    in_block(&v, "coturn");
}

/// A CGN that maps address-and-port-dependently with random ports inside a 512-port block:
/// symmetric, random, and the verdict says the ports stay in a block.
#[test]
fn probe_cgn_block_random() {
    classify_cgn(cgn_block_random(), true);
}

#[test]
fn probe_cgn_block_random_with_40_ms_delay() {
    classify_cgn_with(
        LabOptions::new("cgn-block-random").delay_ms(DELAY_MS),
        cgn_block_random(),
        true,
    );
}

fn cgn_block_random() -> Expect {
    Expect {
        kind: "cgn-block-random",
        behind_nat: true,
        mapping: APD,
        filtering: APD,
        allocation: "random",
        delta: None,
        hairpinning: false,
        legacy: "symmetric",
        tcp: Tcp {
            mapping: APD,
            filtering: APD,
            allocation: "random",
            delta: None,
        },
    }
}

/// A CGN with endpoint-independent mapping whose ports are translated into its block (never
/// the source port): a port-restricted cone whose new mappings get random ports of the block.
#[test]
fn probe_cgn_eim_translated() {
    classify_cgn(cgn_eim_translated(), false);
}

#[test]
fn probe_cgn_eim_translated_with_40_ms_delay() {
    classify_cgn_with(
        LabOptions::new("cgn-eim-translated").delay_ms(DELAY_MS),
        cgn_eim_translated(),
        false,
    );
}

fn cgn_eim_translated() -> Expect {
    Expect {
        kind: "cgn-eim-translated",
        behind_nat: true,
        mapping: EI,
        filtering: APD,
        allocation: "random",
        delta: None,
        hairpinning: false,
        legacy: "port-restricted-cone",
        tcp: Tcp {
            mapping: EI,
            filtering: APD,
            allocation: "random",
            delta: None,
        },
    }
}

/// A CGN with sequential ports inside its block: sequential, step 1.
#[test]
fn probe_cgn_block_sequential() {
    classify_cgn(cgn_block_sequential(), false);
}

#[test]
fn probe_cgn_block_sequential_with_40_ms_delay() {
    classify_cgn_with(
        LabOptions::new("cgn-block-sequential").delay_ms(DELAY_MS),
        cgn_block_sequential(),
        false,
    );
}

fn cgn_block_sequential() -> Expect {
    Expect {
        kind: "cgn-block-sequential",
        behind_nat: true,
        mapping: APD,
        filtering: APD,
        allocation: "sequential",
        delta: Some(1),
        hairpinning: false,
        legacy: "symmetric",
        tcp: Tcp {
            mapping: APD,
            filtering: APD,
            allocation: "sequential",
            delta: Some(1),
        },
    }
}

/// #10: a sequential NAT that other subscribers behind it keep busy. Their flows never fall
/// inside the back-to-back allocation burst; the two late probes time them. A few a second
/// stay `sequential` (and the rate is reported); hundreds a second make the counter
/// `random`, with a search range reaching past the samples toward where it moves. (Without
/// the port-mapping check, whose wait for UPnP answers would let the counter run ahead
/// between the two probes.)
#[test]
fn probe_times_a_busy_sequential_counter() {
    for (rate, want) in [(5u32, "sequential"), (400, "random")] {
        let Some(lab) =
            Lab::up_with(LabOptions::new("symmetric-sequential").background_flows_a(rate))
        else {
            return;
        };
        let _srv = common::punchraw_serve_5780(&lab);
        let v = probe_json(&lab, &["--no-tcp", "--no-port-mapping"]);
        let u = &v["udp"];
        let ctx = format!("{rate} flows/s: {v:#}");
        eprintln!(
            "{rate} flows/s: allocation {}, measured {}, search range {}",
            u["allocation"], u["other_flows_per_s"], u["search_range"]
        );
        assert_eq!(u["allocation"], want, "{ctx}");
        let measured = u["other_flows_per_s"].as_f64().expect(&ctx);
        if want == "sequential" {
            assert_eq!(u["delta"], 1, "{ctx}");
            assert!(measured < 60.0, "{ctx}");
            continue;
        }
        assert!(measured > 100.0, "{ctx}");
        let range = |k: &str| {
            let r = u[k].as_array().unwrap_or_else(|| panic!("{k}: {ctx}"));
            [r[0].as_u64().unwrap(), r[1].as_u64().unwrap()]
        };
        let [seen_lo, seen_hi] = range("port_range");
        let [lo, hi] = range("search_range");
        assert_eq!(lo, seen_lo, "{ctx}");
        assert!(hi > seen_hi + 100, "{ctx}");
        // The ports the counter gives next lie there: a flow opened now gets one.
        let next = probe_json(&lab, &["--no-tcp", "--no-port-mapping"]);
        let first = next["udp"]["allocation_samples"][0]
            .as_u64()
            .expect("a sample");
        assert!((lo..=hi).contains(&first), "next port {first}: {ctx}");
    }
}

//! `punchraw probe` behind every lab NAT, against `punchraw serve` and against coturn's
//! server, plus the pcap capture read by tshark and the binding-lifetime search.
//! Needs root (network namespaces, nftables); skipped otherwise unless
//! PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{ChildGuard, Lab, LabOptions, Node};
use serde_json::Value;
use std::process::Stdio;
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
}

const EI: &str = "endpoint-independent";
const AD: &str = "address-dependent";
const APD: &str = "address-and-port-dependent";

/// coturn's STUN server with RFC 5780 on both addresses. Debian's default config disables
/// RFC 5780, hence an empty config file.
fn start_coturn(lab: &Lab) -> (ChildGuard, tempdir::Dir) {
    let dir = tempdir::Dir::new(lab.name());
    let conf = dir.path.join("turnserver.conf");
    std::fs::write(&conf, "").expect("write empty coturn config");
    let child = lab
        .cmd(Node::Srv, "turnserver")
        .arg("-c")
        .arg(&conf)
        .args([
            "--stun-only",
            "-L",
            "203.0.113.1",
            "-L",
            "203.0.113.2",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--log-file",
            "stdout",
            "--pidfile",
        ])
        .arg(dir.path.join("turnserver.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start coturn turnserver (apt-get install coturn)");
    std::thread::sleep(Duration::from_millis(800));
    (ChildGuard(child), dir)
}

/// A temporary directory removed on drop, without pulling in a crate for it.
mod tempdir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }
    impl Dir {
        pub fn new(tag: &str) -> Self {
            let path = std::env::temp_dir().join(format!("punchraw-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&path).expect("create temp dir");
            Dir { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn probe_json(lab: &Lab, extra: &[&str]) -> Value {
    let out = lab
        .cmd(Node::A, BIN)
        .args(["probe", "--server", "203.0.113.1", "--json", "--no-tcp"])
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

fn check(v: &Value, e: &Expect, against: &str) {
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
}

/// Classifies the lab NAT with punchraw's own server, then with coturn's.
fn classify_kind(e: Expect) {
    let Some(lab) = Lab::up(e.kind, None) else {
        return;
    };
    {
        let _srv = common::punchraw_serve_5780(&lab);
        let v = probe_json(&lab, &[]);
        check(&v, &e, "punchraw serve");
    }
    let (_coturn, _dir) = start_coturn(&lab);
    let v = probe_json(&lab, &[]);
    check(&v, &e, "coturn");
}

#[test]
fn probe_none() {
    classify_kind(Expect {
        kind: "none",
        behind_nat: false,
        mapping: EI,
        filtering: EI,
        allocation: "preserving",
        delta: None,
        hairpinning: true,
        legacy: "open-internet",
    });
}

#[test]
fn probe_full_cone() {
    classify_kind(Expect {
        kind: "full-cone",
        behind_nat: true,
        mapping: EI,
        filtering: EI,
        allocation: "preserving",
        delta: None,
        hairpinning: false,
        legacy: "full-cone",
    });
}

#[test]
fn probe_restricted_cone() {
    classify_kind(Expect {
        kind: "restricted-cone",
        behind_nat: true,
        mapping: EI,
        filtering: AD,
        allocation: "preserving",
        delta: None,
        hairpinning: false,
        legacy: "restricted-cone",
    });
}

#[test]
fn probe_port_restricted_cone() {
    classify_kind(Expect {
        kind: "port-restricted-cone",
        behind_nat: true,
        mapping: EI,
        filtering: APD,
        allocation: "preserving",
        delta: None,
        hairpinning: false,
        legacy: "port-restricted-cone",
    });
}

#[test]
fn probe_symmetric_random() {
    classify_kind(Expect {
        kind: "symmetric-random",
        behind_nat: true,
        mapping: APD,
        filtering: APD,
        allocation: "random",
        delta: None,
        hairpinning: false,
        legacy: "symmetric",
    });
}

#[test]
fn probe_symmetric_sequential() {
    classify_kind(Expect {
        kind: "symmetric-sequential",
        behind_nat: true,
        mapping: APD,
        filtering: APD,
        allocation: "sequential",
        delta: Some(1),
        hairpinning: false,
        legacy: "symmetric",
    });
}

#[test]
fn probe_address_dependent_mapping() {
    classify_kind(Expect {
        kind: "address-dependent",
        behind_nat: true,
        mapping: AD,
        filtering: APD,
        allocation: "random",
        delta: None,
        hairpinning: false,
        legacy: "symmetric",
    });
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
    let u = &v["udp"];
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
}

/// The capture holds what the probe sent and received and tshark dissects it as STUN with
/// no warning.
#[test]
fn capture_is_read_by_tshark() {
    let Some(lab) = Lab::up("symmetric-sequential", None) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let dir = tempdir::Dir::new(&format!("{}-cap", lab.name()));
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
    let v = probe_json(&lab, &["--lifetime", "--lifetime-max", "30"]);
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

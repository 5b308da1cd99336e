//! `punchraw connect` between two hosts behind lab NATs: 1 MiB each way, checked by hash,
//! the second peer started a moment after the first. Needs root; skipped otherwise unless
//! PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{ChildGuard, Lab, LabOptions, Node};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_punchraw");
const MIB: usize = 1 << 20;

struct Dir(PathBuf);
impl Dir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("punchraw-conn-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        Dir(p)
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).expect("read output")).to_vec()
}

struct Side {
    code: Option<i32>,
    report: Value,
    stderr: String,
}

struct Pair {
    a: Side,
    b: Side,
    data_ok: bool,
}

fn connect_cmd(
    lab: &Lab,
    node: Node,
    dir: &Path,
    name: &str,
    session: &str,
    secret: &str,
    extra: &[&str],
) -> Command {
    let mut c = lab.cmd(node, BIN);
    c.args([
        "connect",
        "--server",
        "203.0.113.1",
        "--session",
        session,
        "--secret",
        secret,
    ])
    .args(if extra.contains(&"--timeout") {
        &[][..]
    } else {
        &["--timeout", "40"][..]
    })
    .arg("--report")
    .arg(dir.join(format!("{name}.json")))
    .args(extra)
    .stdin(std::fs::File::open(dir.join(format!("{name}.in"))).expect("input"))
    .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).expect("output"))
    .stderr(Stdio::piped());
    c
}

/// One connection attempt: A starts, B follows 300 ms later.
fn pair(lab: &Lab, try_no: u32, secret_b: &str, len: usize, extra: &[&str]) -> Pair {
    let dir = Dir::new(&format!("{}-{try_no}", lab.name()));
    std::fs::write(dir.0.join("a.in"), data(u64::from(try_no) * 2 + 1, len)).expect("write");
    std::fs::write(dir.0.join("b.in"), data(u64::from(try_no) * 2 + 2, len)).expect("write");
    let session = format!("{}-{try_no}", lab.name());
    let a = connect_cmd(lab, Node::A, &dir.0, "a", &session, "right", extra)
        .spawn()
        .expect("start connect A");
    let mut a = ChildGuard(a);
    std::thread::sleep(Duration::from_millis(300));
    let b = connect_cmd(lab, Node::B, &dir.0, "b", &session, secret_b, extra)
        .output()
        .expect("run connect B");
    let a_out = a.0.wait_with_output_ref();
    let side = |name: &str, code: Option<i32>, stderr: Vec<u8>| Side {
        code,
        report: std::fs::read(dir.0.join(format!("{name}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    let data_ok = sha(&dir.0.join("a.in")) == sha(&dir.0.join("b.out"))
        && sha(&dir.0.join("b.in")) == sha(&dir.0.join("a.out"));
    Pair {
        a: side("a", a_out.0, a_out.1),
        b: side("b", b.status.code(), b.stderr),
        data_ok,
    }
}

/// Waits for the guarded child and collects its stderr without giving up the guard.
trait WaitRef {
    fn wait_with_output_ref(&mut self) -> (Option<i32>, Vec<u8>);
}
impl WaitRef for std::process::Child {
    fn wait_with_output_ref(&mut self) -> (Option<i32>, Vec<u8>) {
        let mut err = Vec::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = std::io::Read::read_to_end(&mut e, &mut err);
        }
        let code = self.wait().ok().and_then(|s| s.code());
        (code, err)
    }
}

fn check_connected(p: &Pair, strategy: &str, what: &str) {
    for (n, s) in [("A", &p.a), ("B", &p.b)] {
        assert_eq!(
            s.code,
            Some(0),
            "{what}: {n} exit code; stderr of A:\n{}\nstderr of B:\n{}",
            p.a.stderr,
            p.b.stderr
        );
        let r = &s.report;
        assert_eq!(r["connected"], true, "{what}: {n} {r:#}");
        assert_eq!(r["transport"], "udp", "{what}: {n} {r:#}");
        assert_eq!(r["strategy"], strategy, "{what}: {n} {r:#}");
        assert!(r["error"].is_null(), "{what}: {n} {r:#}");
        assert!(
            r["local"].is_string() && r["peer"].is_string(),
            "{what}: {n} {r:#}"
        );
        assert!(
            r["elapsed_ms"].is_u64() && r["probes_sent"].is_u64(),
            "{what}: {n} {r:#}"
        );
    }
    assert!(p.data_ok, "{what}: data differs");
}

/// `tries` attempts in one lab; every one must connect with `strategy` and move 1 MiB each
/// way intact.
fn all_connect(kind_a: &str, kind_b: &str, strategy: &str, tries: u32) {
    let Some(lab) = Lab::up(kind_a, Some(kind_b)) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..tries {
        let p = pair(&lab, t, "right", MIB, &[]);
        check_connected(&p, strategy, &format!("{kind_a} x {kind_b}, try {t}"));
    }
}

#[test]
fn cone_and_cone_connect_directly() {
    all_connect("port-restricted-cone", "port-restricted-cone", "direct", 10);
}

#[test]
fn full_cone_and_random_symmetric_connect_directly() {
    all_connect("full-cone", "symmetric-random", "direct", 10);
}

#[test]
fn restricted_cone_and_random_symmetric_connect_directly() {
    all_connect("restricted-cone", "symmetric-random", "direct", 10);
}

#[test]
fn sequential_symmetric_connects_by_prediction() {
    all_connect(
        "port-restricted-cone",
        "symmetric-sequential",
        "predict",
        10,
    );
}

#[test]
fn random_symmetric_connects_by_sweep() {
    let Some(lab) = Lab::up("port-restricted-cone", Some("symmetric-random")) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let tries = 20;
    let mut ok = 0;
    let mut failures = Vec::new();
    for t in 0..tries {
        let p = pair(&lab, t, "right", 64 * 1024, &[]);
        assert_eq!(p.a.report["strategy"], "sweep", "{}", p.a.stderr);
        if p.a.code == Some(0) && p.b.code == Some(0) && p.data_ok {
            ok += 1;
        } else {
            failures.push(format!("A: {}\nB: {}", p.a.stderr, p.b.stderr));
        }
    }
    assert!(
        ok * 100 >= tries * 95,
        "{ok}/{tries} connected; failures:\n{}",
        failures.join("\n---\n")
    );
}

#[test]
fn random_symmetric_on_both_sides_fails_cleanly() {
    let Some(lab) = Lab::up("symmetric-random", Some("symmetric-random")) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let p = pair(&lab, 0, "right", 1024, &["--punch-budget", "3"]);
    for s in [&p.a, &p.b] {
        if s.code == Some(0) {
            continue; // connecting anyway is allowed
        }
        assert_eq!(s.code, Some(8), "{}", s.stderr);
        assert!(
            s.stderr
                .contains("both NATs are symmetric with random ports"),
            "{}",
            s.stderr
        );
        assert_eq!(s.report["connected"], false);
        assert!(
            s.report["error"]
                .as_str()
                .is_some_and(|e| e.contains("punching failed")),
            "{:#}",
            s.report
        );
    }
}

#[test]
fn cones_connect_through_10_percent_loss() {
    let Some(lab) = Lab::up_with(
        LabOptions::new("port-restricted-cone")
            .kind_b("port-restricted-cone")
            .loss_pct(10),
    ) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..3 {
        let p = pair(&lab, t, "right", MIB, &[]);
        check_connected(&p, "direct", &format!("10% loss, try {t}"));
    }
}

#[test]
fn cones_connect_through_20_percent_loss() {
    let Some(lab) = Lab::up_with(
        LabOptions::new("port-restricted-cone")
            .kind_b("port-restricted-cone")
            .loss_pct(20),
    ) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..3 {
        let p = pair(&lab, t, "right", MIB, &[]);
        check_connected(&p, "direct", &format!("20% loss, try {t}"));
    }
}

#[test]
fn wrong_secret_fails_with_authentication_error() {
    let Some(lab) = Lab::up("port-restricted-cone", Some("port-restricted-cone")) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let p = pair(&lab, 0, "wrong", 1024, &["--punch-budget", "2"]);
    for s in [&p.a, &p.b] {
        assert_eq!(s.code, Some(7), "{}", s.stderr);
        assert!(
            s.stderr.contains("peer authentication failed"),
            "{}",
            s.stderr
        );
    }
}

#[test]
fn lone_peer_is_told_the_other_never_came() {
    let Some(lab) = Lab::up("port-restricted-cone", Some("port-restricted-cone")) else {
        return;
    };
    let _srv = common::punchraw_serve(&lab, &["--alternate", "203.0.113.2", "--wait-timeout", "3"]);
    let out = lab
        .cmd(Node::A, BIN)
        .args([
            "connect",
            "--server",
            "203.0.113.1",
            "--session",
            "alone",
            "--secret",
            "s",
            "-q",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run connect");
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("never came"));
}

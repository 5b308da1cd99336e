//! One `punchraw connect` pair in a lab: both sides' inputs, reports, stderr and whether
//! 1 MiB (or any length) each way arrived intact, checked by hash. Shared by lab_connect
//! and lab_portmap.

use super::lab::{ChildGuard, Lab, Node};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_punchraw");
pub const MIB: usize = 1 << 20;

pub struct Dir(pub PathBuf);
impl Dir {
    pub fn new(tag: &str) -> Self {
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
pub fn data(seed: u64, len: usize) -> Vec<u8> {
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

pub fn sha(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).expect("read output")).to_vec()
}

pub struct Side {
    pub code: Option<i32>,
    pub report: Value,
    pub stderr: String,
}

pub struct Pair {
    pub a: Side,
    pub b: Side,
    pub data_ok: bool,
}

pub fn connect_cmd(
    lab: &Lab,
    node: Node,
    dir: &Path,
    name: &str,
    session: &str,
    secret: &str,
    extra: &[&str],
) -> Command {
    let mut c = lab.cmd(node, BIN);
    c.arg("connect")
        .args(if extra.contains(&"--server") {
            &[][..]
        } else {
            &["--server", "203.0.113.1"][..]
        })
        .args(["--session", session, "--secret", secret])
        .args(if extra.contains(&"--timeout") {
            &[][..]
        } else {
            &["--timeout", "40"][..]
        })
        .arg("--report")
        .arg(dir.join(format!("{name}.json")))
        .args(extra);
    // For chasing a rare failure: every connect keeps a capture named by its session.
    if let Some(d) = std::env::var_os("PUNCHRAW_TEST_CAPTURES") {
        c.arg("--capture")
            .arg(Path::new(&d).join(format!("{session}-{name}.pcap")));
    }
    c.stdin(std::fs::File::open(dir.join(format!("{name}.in"))).expect("input"))
        .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).expect("output"))
        .stderr(Stdio::piped());
    c
}

/// One connection attempt: A starts, B follows 300 ms later.
pub fn pair(lab: &Lab, try_no: u32, secret_b: &str, len: usize, extra: &[&str]) -> Pair {
    pair_with(lab, try_no, secret_b, len, extra, &[])
}

/// [`pair`] with `extra_b` given to B only.
pub fn pair_with(
    lab: &Lab,
    try_no: u32,
    secret_b: &str,
    len: usize,
    extra: &[&str],
    extra_b: &[&str],
) -> Pair {
    pair_between(lab, try_no, secret_b, len, extra, extra_b, &|| {
        std::thread::sleep(Duration::from_millis(300))
    })
}

/// [`pair_with`], running `between` (instead of a 300 ms wait) after A started and
/// before B starts.
pub fn pair_between(
    lab: &Lab,
    try_no: u32,
    secret_b: &str,
    len: usize,
    extra: &[&str],
    extra_b: &[&str],
    between: &dyn Fn(),
) -> Pair {
    pair_sides(lab, try_no, secret_b, len, [extra, &[], extra_b], between)
}

/// The general attempt: `extra[0]` to both, `extra[1]` to A only, `extra[2]` to B only.
pub fn pair_sides(
    lab: &Lab,
    try_no: u32,
    secret_b: &str,
    len: usize,
    extras: [&[&str]; 3],
    between: &dyn Fn(),
) -> Pair {
    pair_on(
        lab,
        [Node::A, Node::B],
        try_no,
        secret_b,
        len,
        extras,
        between,
    )
}

/// [`pair_sides`] between any two hosts of the lab (`nodes`, playing A and B), such as two
/// behind the same NAT.
pub fn pair_on(
    lab: &Lab,
    [node_a, node_b]: [Node; 2],
    try_no: u32,
    secret_b: &str,
    len: usize,
    [extra, extra_a, extra_b]: [&[&str]; 3],
    between: &dyn Fn(),
) -> Pair {
    let dir = Dir::new(&format!("{}-{try_no}", lab.name()));
    std::fs::write(dir.0.join("a.in"), data(u64::from(try_no) * 2 + 1, len)).expect("write");
    std::fs::write(dir.0.join("b.in"), data(u64::from(try_no) * 2 + 2, len)).expect("write");
    let session = format!("{}-{try_no}", lab.name());
    let extra_a: Vec<&str> = extra.iter().chain(extra_a).copied().collect();
    let a = connect_cmd(lab, node_a, &dir.0, "a", &session, "right", &extra_a)
        .spawn()
        .expect("start connect A");
    let mut a = ChildGuard(a);
    between();
    let extra_b: Vec<&str> = extra.iter().chain(extra_b).copied().collect();
    let b = connect_cmd(lab, node_b, &dir.0, "b", &session, secret_b, &extra_b)
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
    if extra.contains(&"--tcp") {
        assert_no_punch_rules_on(lab, &[node_a, node_b]);
        lab.assert_strict_tcp_tracking();
    }
    let data_ok = sha(&dir.0.join("a.in")) == sha(&dir.0.join("b.out"))
        && sha(&dir.0.join("b.in")) == sha(&dir.0.join("a.out"));
    Pair {
        a: side("a", a_out.0, a_out.1),
        b: side("b", b.status.code(), b.stderr),
        data_ok,
    }
}

/// Waits for the guarded child and collects its stderr without giving up the guard.
pub trait WaitRef {
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

pub fn check_connected(p: &Pair, strategy: &str, what: &str) {
    check_connected_over(p, "udp", strategy, what)
}

pub fn check_connected_over(p: &Pair, transport: &str, strategy: &str, what: &str) {
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
        assert_eq!(r["transport"], transport, "{what}: {n} {r:#}");
        // `strategy` may name alternatives, "a|b".
        assert!(
            strategy.split('|').any(|st| r["strategy"] == st),
            "{what}: {n} strategy is not {strategy}: {r:#}"
        );
        assert!(r["error"].is_null(), "{what}: {n} {r:#}");
        assert!(
            r["local"].is_string() && r["peer"].is_string(),
            "{what}: {n} {r:#}"
        );
        assert!(
            r["elapsed_ms"].is_u64() && r["probes_sent"].is_u64(),
            "{what}: {n} {r:#}"
        );
        // The stream ran to its end, and what it cost is reported beside how long it took.
        assert!(
            r["stream_ms"].is_u64() && r["stream_cpu_ms"].is_u64(),
            "{what}: {n} {r:#}"
        );
        // The hole opens before the direct path is authenticated (TCP: before TLS).
        if r["path"] == "direct" {
            let punched = r["time_to_punched_ms"].as_u64();
            assert!(
                punched.is_some_and(|t| Some(t) <= r["time_to_direct_ms"].as_u64()),
                "{what}: {n} time_to_punched_ms: {r:#}"
            );
        }
    }
    assert!(p.data_ok, "{what}: data differs");
}

/// No punchraw nft table left on either host.
pub fn assert_no_punch_rules(lab: &Lab) {
    assert_no_punch_rules_on(lab, &[Node::A, Node::B]);
}

/// No punchraw nft table left on these hosts.
pub fn assert_no_punch_rules_on(lab: &Lab, nodes: &[Node]) {
    for &node in nodes {
        let out = lab
            .cmd(node, "nft")
            .args(["list", "tables"])
            .output()
            .expect("run nft");
        let tables = String::from_utf8_lossy(&out.stdout);
        assert!(
            !tables.contains("punchraw_"),
            "{node:?} still has punch rules:\n{tables}"
        );
    }
}

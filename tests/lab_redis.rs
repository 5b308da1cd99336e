//! Several rendezvous servers sharing one Redis (`punchraw serve --registry`): peers behind two
//! NATs, each told a different server, meet and move data; a server restart loses no waiting
//! session; a Redis outage gives a clear error and the servers recover by themselves.
//! Needs root and `redis-server`; skipped otherwise unless PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{find_program, ChildGuard, Lab, Node};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_punchraw");
const REDIS: &str = "redis://203.0.113.1:6379";

struct Dir(PathBuf);
impl Dir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("punchraw-redis-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        Dir(p)
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

/// The lab, or `None` (skipped) without root or without `redis-server`.
fn lab() -> Option<Lab> {
    if find_program("redis-server").is_none() {
        if std::env::var("PUNCHRAW_REQUIRE_LAB").as_deref() == Ok("1") {
            panic!("redis lab: redis-server not found (and PUNCHRAW_REQUIRE_LAB=1)");
        }
        eprintln!("skipped: redis lab: redis-server not found (apt-get install redis-server)");
        return None;
    }
    Lab::up("port-restricted-cone", Some("port-restricted-cone"))
}

fn wait_tcp(lab: &Lab, port: u16) {
    // The test process is outside the lab; ask from inside the server namespace.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let ok = lab
            .cmd(Node::Srv, "bash")
            .args(["-c", &format!("exec 3<>/dev/tcp/203.0.113.1/{port}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on 203.0.113.1:{port} in the lab");
}

fn redis(lab: &Lab) -> ChildGuard {
    let child = lab
        .cmd(Node::Srv, "redis-server")
        .args([
            "--port",
            "6379",
            "--bind",
            "203.0.113.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let g = ChildGuard(child);
    wait_tcp(lab, 6379);
    g
}

/// `punchraw serve` on `ip` (port 3478) with the shared registry.
fn server(lab: &Lab, ip: &str) -> ChildGuard {
    let child = lab
        .cmd(Node::Srv, BIN)
        .args(["serve", "--listen", ip, "--registry", REDIS])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start punchraw serve");
    std::thread::sleep(Duration::from_millis(400));
    ChildGuard(child)
}

fn connect(lab: &Lab, node: Node, dir: &Path, name: &str, server: &str, session: &str) -> Command {
    let mut c = lab.cmd(node, BIN);
    c.args([
        "connect",
        "--server",
        server,
        "--session",
        session,
        "--secret",
        "s3cret",
        "--timeout",
        "30",
    ])
    .stdin(std::fs::File::open(dir.join(format!("{name}.in"))).expect("input"))
    .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).expect("output"))
    .stderr(Stdio::piped());
    c
}

/// A via server 1 (203.0.113.1), B via server 2 (203.0.113.2), B `gap` after A; `between`
/// runs while A waits alone. Both must exit 0 with the other's bytes.
fn meet(lab: &Lab, tag: &str, between: impl FnOnce(), gap: Duration) {
    let dir = Dir::new(&format!("{}-{tag}", lab.name()));
    let (a_in, b_in) = (data(1, 6000), data(2, 9000));
    std::fs::write(dir.0.join("a.in"), &a_in).unwrap();
    std::fs::write(dir.0.join("b.in"), &b_in).unwrap();
    let session = format!("{}-{tag}", lab.name());
    let mut a = ChildGuard(
        connect(lab, Node::A, &dir.0, "a", "203.0.113.1", &session)
            .spawn()
            .expect("start A"),
    );
    std::thread::sleep(gap);
    between();
    let b = connect(lab, Node::B, &dir.0, "b", "203.0.113.2", &session)
        .output()
        .expect("run B");
    let a_out = a.0.wait().expect("wait A");
    let mut a_err = String::new();
    if let Some(mut e) = a.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut a_err);
    }
    let b_err = String::from_utf8_lossy(&b.stderr);
    assert!(a_out.success(), "{tag}: A failed:\n{a_err}\nB:\n{b_err}");
    assert!(b.status.success(), "{tag}: B failed:\n{b_err}\nA:\n{a_err}");
    assert_eq!(
        std::fs::read(dir.0.join("b.out")).unwrap(),
        a_in,
        "{tag}: A to B"
    );
    assert_eq!(
        std::fs::read(dir.0.join("a.out")).unwrap(),
        b_in,
        "{tag}: B to A"
    );
}

#[test]
fn peers_on_two_servers_sharing_redis_connect_and_survive_outages() {
    let Some(lab) = lab() else { return };
    let mut redis_srv = Some(redis(&lab));
    let mut s1 = Some(server(&lab, "203.0.113.1"));
    let _s2 = server(&lab, "203.0.113.2");

    // 1. Two servers, one Redis: A registers on server 1, B on server 2.
    meet(&lab, "two", || {}, Duration::from_millis(300));

    // 2. Server 1 restarts while A waits there: the session is in Redis, nothing is lost.
    meet(
        &lab,
        "restart",
        || {
            drop(s1.take());
            s1 = Some(server(&lab, "203.0.113.1"));
        },
        Duration::from_millis(1500),
    );

    // 3. Redis down: a peer gets the registry error quickly, with a clear message.
    drop(redis_srv.take());
    let dir = Dir::new(&format!("{}-down", lab.name()));
    std::fs::write(dir.0.join("a.in"), b"x").unwrap();
    let started = Instant::now();
    let out: Output = connect(&lab, Node::A, &dir.0, "a", "203.0.113.1", "down")
        .output()
        .expect("run A");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("cannot reach its session registry"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );

    // 4. Redis back: the same servers (not restarted) introduce peers again.
    redis_srv = Some(redis(&lab));
    meet(&lab, "back", || {}, Duration::from_millis(300));
    drop((redis_srv, s1));
}

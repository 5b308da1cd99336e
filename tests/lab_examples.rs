//! The embedding API's examples (issue #15) in the NAT lab against `punchraw serve`:
//! `file_copy` moves 1 MiB from one NAT to the other (checked by hash), `chat` carries lines
//! both ways. `cargo build --examples` must have run first (tools/test.sh does it).
//! Needs root; skipped otherwise unless PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{Lab, Node};
use common::pair::{data, sha, Dir, MIB};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// target/<profile>/examples/NAME, beside the directory of this test binary.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --examples` first (tools/test.sh does; `cargo test \
         --all-targets` builds examples only as test harnesses)",
        path.display()
    );
    path
}

fn run_both(mut a: Command, mut b: Command) -> [std::process::Output; 2] {
    let ca = a
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start A");
    std::thread::sleep(Duration::from_millis(300));
    let cb = b
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start B");
    [
        ca.wait_with_output().expect("A"),
        cb.wait_with_output().expect("B"),
    ]
}

#[test]
fn file_copy_example_moves_a_file_through_two_nats() {
    let Some(lab) = Lab::up("port-restricted-cone", Some("symmetric-sequential")) else {
        return;
    };
    let _srv = common::punchraw_serve(&lab, &["--alternate", "203.0.113.2"]);
    let dir = Dir::new(lab.name());
    let (src, dst) = (dir.0.join("in.bin"), dir.0.join("out.bin"));
    std::fs::write(&src, data(7, MIB)).expect("write input");
    let bin = example("file_copy");
    let cmd = |node: Node, mode: &str, path: &PathBuf| {
        let mut c = lab.cmd(node, bin.to_str().unwrap());
        c.args([mode, "203.0.113.1", "copy", "s3cret"]).arg(path);
        c
    };
    let [a, b] = run_both(cmd(Node::A, "send", &src), cmd(Node::B, "receive", &dst));
    let why = format!(
        "A: {}\nB: {}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    assert!(a.status.success() && b.status.success(), "{why}");
    assert_eq!(sha(&src), sha(&dst), "the copy differs: {why}");
}

#[test]
fn chat_example_carries_lines_both_ways() {
    let Some(lab) = Lab::up("port-restricted-cone", Some("port-restricted-cone")) else {
        return;
    };
    let _srv = common::punchraw_serve(&lab, &["--alternate", "203.0.113.2"]);
    let dir = Dir::new(lab.name());
    let bin = example("chat");
    let cmd = |node: Node, name: &str, said: &str| {
        let input = dir.0.join(format!("{name}.in"));
        std::fs::write(&input, said).expect("write input");
        let mut c = lab.cmd(node, bin.to_str().unwrap());
        c.args(["203.0.113.1", "talk", "s3cret", name])
            .stdin(std::fs::File::open(&input).expect("input"));
        c
    };
    let [a, b] = run_both(
        cmd(Node::A, "alice", "hi bob\nhow are you\n"),
        cmd(Node::B, "bob", "hi alice\n"),
    );
    let (out_a, out_b) = (
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout),
    );
    let why = format!(
        "A: {out_a}{}\nB: {out_b}{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    assert!(a.status.success() && b.status.success(), "{why}");
    assert_eq!(out_b, "alice: hi bob\nalice: how are you\n", "{why}");
    assert_eq!(out_a, "bob: hi alice\n", "{why}");
}

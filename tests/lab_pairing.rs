//! `connect --code` in the NAT lab (issue 16): one side picks and prints a pairing code, the
//! other types it, and the two connect with the key the exchange agreed on; 1 MiB each way
//! by hash, over UDP and over TCP. A mistyped code ends both sides with "wrong code", exit 7.
//! Needs root; skipped otherwise unless PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{ChildGuard, Lab, LabOptions, Node};
use common::pair::{data, sha, Dir, WaitRef, BIN, MIB};
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

struct Side {
    code: Option<i32>,
    stderr: String,
    report: serde_json::Value,
}

/// A with `--code` (reading the code it prints), then B with `--code CODE` (`typed` turns
/// A's code into what B types); `extra` to both.
fn pair(lab: &Lab, dir: &Dir, extra: &[&str], typed: impl Fn(&str) -> String) -> [Side; 2] {
    let start = |node: Node, name: &str, code: Option<&str>| {
        let input = dir.0.join(format!("{name}.in"));
        std::fs::write(&input, data(u64::from(name.as_bytes()[0]), MIB)).expect("input");
        let mut c = lab.cmd(node, BIN);
        c.args([
            "connect",
            "--server",
            "203.0.113.1",
            "--timeout",
            "40",
            "--code",
        ])
        .args(code)
        .arg("--report")
        .arg(dir.0.join(format!("{name}.json")))
        .args(extra)
        .stdin(std::fs::File::open(&input).expect("input"))
        .stdout(std::fs::File::create(dir.0.join(format!("{name}.out"))).expect("output"))
        .stderr(Stdio::piped());
        ChildGuard(c.spawn().expect("start connect"))
    };
    let mut a = start(Node::A, "a", None);
    // A's stderr, line by line, until the code; the rest is kept for the asserts.
    let (tx, rx) = mpsc::channel();
    let mut err_a = BufReader::new(a.0.stderr.take().expect("piped"));
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut line = String::new();
        while err_a.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(rest) = line.strip_prefix("punchraw: pairing code: ") {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            all.push_str(&line);
            line.clear();
        }
        let _ = err_a.read_to_string(&mut all);
        all
    });
    let code = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("A prints its pairing code");
    let mut b = start(Node::B, "b", Some(&typed(&code)));
    let (code_b, err_b) = b.0.wait_with_output_ref();
    let code_a = a.0.wait().ok().and_then(|s| s.code());
    let err_a = reader.join().expect("reader");
    let side = |name: &str, code, stderr: String| Side {
        code,
        stderr,
        report: std::fs::read(dir.0.join(format!("{name}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null),
    };
    [
        side("a", code_a, err_a),
        side("b", code_b, String::from_utf8_lossy(&err_b).into_owned()),
    ]
}

#[test]
fn a_pairing_code_connects_over_udp_and_tcp() {
    let opts = LabOptions::new("port-restricted-cone").kind_b("port-restricted-cone");
    let Some(lab) = Lab::up_with(opts) else {
        return;
    };
    let _serve = common::punchraw_serve_5780(&lab);
    for (transport, extra) in [("udp", &[][..]), ("tcp", &["--tcp"][..])] {
        let dir = Dir::new(&format!("{}-{transport}", lab.name()));
        let sides = pair(&lab, &dir, extra, |c| c.to_uppercase().replace('-', " "));
        let what = format!(
            "{transport}: stderr of A:\n{}\nstderr of B:\n{}",
            sides[0].stderr, sides[1].stderr
        );
        for s in &sides {
            assert_eq!(s.code, Some(0), "{what}");
            assert_eq!(s.report["connected"], true, "{what}");
            assert_eq!(s.report["transport"], transport, "{what}");
            assert!(
                s.stderr
                    .contains("pairing: the other side typed the same code"),
                "{what}"
            );
        }
        assert!(
            sides[0]
                .stderr
                .contains("waiting for the other side to type the code"),
            "{what}"
        );
        for (from, to) in [("a", "b"), ("b", "a")] {
            assert!(
                sha(&dir.0.join(format!("{from}.in"))) == sha(&dir.0.join(format!("{to}.out"))),
                "{from} to {to} intact: {what}"
            );
        }
    }
}

#[test]
fn a_mistyped_code_ends_both_sides_with_exit_7() {
    let Some(lab) = Lab::up_with(LabOptions::new("port-restricted-cone").kind_b("none")) else {
        return;
    };
    let _serve = common::punchraw_serve_5780(&lab);
    let dir = Dir::new(&format!("{}-wrong", lab.name()));
    // The same number, another second word; with --quiet, which still shows the code and
    // the final error.
    let sides = pair(&lab, &dir, &["-q"], |c| {
        let (rest, last) = c.rsplit_once('-').expect("N-word-word");
        let other = if last == "zebra" { "tiger" } else { "zebra" };
        format!("{rest}-{other}")
    });
    for s in &sides {
        assert_eq!(s.code, Some(7), "stderr:\n{}", s.stderr);
        assert!(s.stderr.contains("wrong code"), "{}", s.stderr);
        assert_eq!(s.report["connected"], false);
    }
}

//! Helpers shared by the integration tests (`mod common;` in each test file).
//! Each test binary uses a subset, hence the dead_code allowance.
#![allow(dead_code)]

pub mod lab;

use lab::{ChildGuard, Lab, Node};
use std::process::Stdio;
use std::time::Duration;

/// Starts `punchraw serve --listen 203.0.113.1 EXTRA...` in the lab's server namespace and
/// gives it a moment to bind.
pub fn punchraw_serve(lab: &Lab, extra: &[&str]) -> ChildGuard {
    let child = lab
        .cmd(Node::Srv, env!("CARGO_BIN_EXE_punchraw"))
        .args(["serve", "--listen", "203.0.113.1"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start punchraw serve");
    std::thread::sleep(Duration::from_millis(400));
    ChildGuard(child)
}

/// `punchraw serve` with RFC 5780 behaviour discovery on both lab server addresses.
pub fn punchraw_serve_5780(lab: &Lab) -> ChildGuard {
    punchraw_serve(lab, &["--alternate", "203.0.113.2"])
}

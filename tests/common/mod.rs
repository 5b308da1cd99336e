//! Helpers shared by the integration tests (`mod common;` in each test file).
//! Each test binary uses a subset, hence the dead_code allowance.
#![allow(dead_code)]

pub mod lab;
pub mod pair;
pub mod relay;
pub mod turn;

use lab::{ChildGuard, Lab, Node};
use std::process::Stdio;
use std::time::Duration;

/// Starts `punchraw serve --listen 203.0.113.1 EXTRA...` in the lab's server namespace and
/// gives it a moment to bind.
pub fn punchraw_serve(lab: &Lab, extra: &[&str]) -> ChildGuard {
    punchraw_serve_to(lab, extra, Stdio::null())
}

/// [`punchraw_serve`] with its stderr (status lines, the statistics at exit) to `stderr`.
pub fn punchraw_serve_to(lab: &Lab, extra: &[&str], stderr: Stdio) -> ChildGuard {
    let child = lab
        .cmd(Node::Srv, env!("CARGO_BIN_EXE_punchraw"))
        .args(["serve", "--listen", "203.0.113.1"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start punchraw serve");
    std::thread::sleep(Duration::from_millis(400));
    ChildGuard(child)
}

/// `punchraw serve` with RFC 5780 behaviour discovery on both lab server addresses.
pub fn punchraw_serve_5780(lab: &Lab) -> ChildGuard {
    punchraw_serve(lab, &["--alternate", "203.0.113.2"])
}

/// coturn's `turnserver` in the lab's server namespace with `args` (addresses and mode), an
/// empty config file (Debian's default config disables RFC 5780) and the options every test
/// wants (no CLI, TLS or DTLS, its pid file in a temporary directory removed with the guard).
pub fn coturn(lab: &Lab, args: &[&str]) -> (ChildGuard, tempdir::Dir) {
    let dir = tempdir::Dir::new(lab.name());
    let conf = dir.path.join("turnserver.conf");
    std::fs::write(&conf, "").expect("write empty coturn config");
    let child = lab
        .cmd(Node::Srv, "turnserver")
        .arg("-c")
        .arg(&conf)
        .args(args)
        .args([
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
pub mod tempdir {
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

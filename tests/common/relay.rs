//! The relay tests' server and pairs: `serve --relay` with its statistics, and a pair of
//! random-symmetric NATs (no hole opens) whose relayed stream is kept busy.

use super::lab::{ChildGuard, Lab, LabOptions, Node};
use super::pair::{connect_cmd, Dir, WaitRef};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// `serve --relay` with behaviour discovery, its stderr kept for the statistics.
pub struct Serve {
    pub child: ChildGuard,
    log: std::path::PathBuf,
    _dir: super::tempdir::Dir,
}

impl Serve {
    pub fn start(lab: &Lab) -> Serve {
        Serve::start_with(lab, &[])
    }

    /// With `extra` options (relay users, quotas).
    pub fn start_with(lab: &Lab, extra: &[&str]) -> Serve {
        let dir = super::tempdir::Dir::new(&format!("{}-serve", lab.name()));
        let log = dir.path.join("serve.log");
        let file = std::fs::File::create(&log).expect("serve log");
        let args: Vec<&str> = ["--alternate", "203.0.113.2", "--relay"]
            .iter()
            .chain(extra)
            .copied()
            .collect();
        let child = super::punchraw_serve_to(lab, &args, Stdio::from(file));
        Serve {
            child,
            log,
            _dir: dir,
        }
    }

    /// SIGINT, then its log with the statistics.
    pub fn stop(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal serve");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.0.try_wait().expect("wait serve").is_none() {
            assert!(Instant::now() < deadline, "serve did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::read_to_string(&self.log).expect("read serve log")
    }
}

/// The number before `what` in the statistics section that starts with `section`
/// ("relay: ", "tcp: ").
pub fn count(log: &str, section: &str, what: &str) -> u64 {
    let part = log
        .split(section)
        .last()
        .unwrap_or_else(|| panic!("no {section:?} statistics in {log}"));
    let at = part
        .find(&format!(" {what}"))
        .unwrap_or_else(|| panic!("no {what:?} in {part}"));
    part[..at]
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {what:?} in {part}"))
}

/// How one side of a [`endless_pair`] pair ended after [`kill_under`].
pub struct Ended {
    pub name: &'static str,
    pub code: Option<i32>,
    pub stderr: String,
    /// From the kill to the side's exit.
    pub took: Duration,
}

/// SIGKILLs the relay under a busy relayed pair and waits for each side to end.
pub fn kill_under(serve: &mut Serve, sides: Vec<(&'static str, ChildGuard)>) -> Vec<Ended> {
    serve.child.0.kill().expect("kill serve");
    let _ = serve.child.0.wait();
    let killed = Instant::now();
    sides
        .into_iter()
        .map(|(name, mut c)| {
            let (code, stderr) = c.0.wait_with_output_ref();
            Ended {
                name,
                code,
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
                took: killed.elapsed(),
            }
        })
        .collect()
}

/// Two random-port symmetric NATs: no hole opens between them.
pub fn random_pair() -> Option<Lab> {
    Lab::up_with(LabOptions::new("symmetric-random").kind_b("symmetric-random"))
}

/// A pair of the lab's hosts (for the relay tests a random x random pair, `serve --relay`
/// already running) with endless input on both sides and `extra` connect options, once data
/// flows both ways (through the relay, for those): the stream is busy at that moment.
pub fn endless_pair(
    lab: &Lab,
    tag: &str,
    extra: &[&str],
) -> (Dir, Vec<(&'static str, ChildGuard)>) {
    let dir = Dir::new(&format!("{}-{tag}", lab.name()));
    let session = format!("{}-{tag}", lab.name());
    let mut sides = Vec::new();
    for (node, name) in [(Node::A, "a"), (Node::B, "b")] {
        std::fs::write(dir.0.join(format!("{name}.in")), b"").expect("write");
        let mut cmd = connect_cmd(
            lab,
            node,
            &dir.0,
            name,
            &session,
            "right",
            &[&["--punch-budget", "2", "--timeout", "40"], extra].concat(),
        );
        // Endless input, 64 KiB every 20 ms, so the stream is still busy at the fault the
        // test makes; the writer stops when the connect is gone.
        cmd.stdin(Stdio::piped());
        let mut child = ChildGuard(cmd.spawn().expect("start connect"));
        let mut input = child.0.stdin.take().expect("stdin");
        std::thread::spawn(move || loop {
            if std::io::Write::write_all(&mut input, &[7u8; 65536]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        });
        sides.push((name, child));
        std::thread::sleep(Duration::from_millis(300));
    }
    // Both have received relayed data: the stream runs through the relay.
    let deadline = Instant::now() + Duration::from_secs(45);
    let received =
        |name: &str| std::fs::metadata(dir.0.join(format!("{name}.out"))).map_or(0, |m| m.len());
    while received("a") == 0 || received("b") == 0 {
        assert!(Instant::now() < deadline, "no stream came up");
        for (name, c) in &mut sides {
            assert!(
                c.0.try_wait().expect("wait").is_none(),
                "{name} ended early"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (dir, sides)
}

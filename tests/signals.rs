//! Every command stops on SIGINT with exit 130 and on SIGTERM with exit 143 (the shell's
//! 128 + signal number), after its cleanup: serve prints its statistics, probe finishes its
//! capture file, connect writes its report, and a connect whose stream runs closes it so that
//! its peer ends at once. Runs the built binary on 127.0.0.1 (no root, no fixed ports: the
//! server binds port 0 and says which it got) and signals it by PID.
//! `connect --tcp` needs root; its signal tests are in `lab_connect.rs`.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_punchraw");
/// Bound on every wait for a line, a start or an exit. Generous for a loaded CI machine;
/// each is left as soon as the thing waited for happens.
const WAIT: Duration = Duration::from_secs(20);

/// A running punchraw whose stderr is read line by line. Killed on drop if still running,
/// so a failed assertion leaves no process behind.
struct Proc {
    child: Child,
    lines: Receiver<String>,
    stderr: String,
}

/// The lines of `from`, read on a thread of their own.
fn lines_of(from: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

impl Proc {
    fn start(args: &[&str]) -> Proc {
        Proc::start_with(args, Stdio::null(), Stdio::null())
    }

    fn start_with(args: &[&str], stdin: Stdio, stdout: Stdio) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start punchraw");
        let lines = lines_of(child.stderr.take().expect("stderr piped"));
        Proc {
            child,
            lines,
            stderr: String::new(),
        }
    }

    /// Reads stderr until a line contains `needle` and returns that line.
    fn wait_for(&mut self, needle: &str) -> String {
        let end = Instant::now() + WAIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push_str(&line);
                    self.stderr.push('\n');
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {needle:?} within {WAIT:?}; stderr so far:\n{}",
                        self.stderr
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "exited ({:?}) before {needle:?}; stderr:\n{}",
                    self.child.try_wait(),
                    self.stderr
                ),
            }
        }
    }

    fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        kill(pid, sig).expect("kill");
    }

    /// Waits for the exit and the rest of stderr; the exit code (None if killed by a signal)
    /// and the whole of stderr.
    fn finish(&mut self) -> (Option<i32>, String) {
        let end = Instant::now() + WAIT;
        // stderr closes when the process exits (nothing else holds it).
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push_str(&line);
                    self.stderr.push('\n');
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "still running {WAIT:?} after the signal; stderr:\n{}",
                        self.stderr
                    )
                }
            }
        }
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return (st.code(), self.stderr.clone());
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "did not exit after closing stderr; stderr:\n{}",
            self.stderr
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A temporary directory, removed on drop.
struct Dir(PathBuf);
impl Dir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("punchraw-sig-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        Dir(p)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `punchraw serve` on 127.0.0.1 with an OS-chosen port, and that address once it serves.
fn serve() -> (Proc, SocketAddr) {
    let mut p = Proc::start(&["serve", "--listen", "127.0.0.1", "--port", "0"]);
    let line = p.wait_for("serving STUN over UDP and TCP on ");
    let addr = line
        .rsplit("on ")
        .next()
        .and_then(|l| l.split(", ").next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (p, addr)
}

/// The code and message a command ends with after `sig`.
fn expected(sig: Signal) -> (i32, &'static str) {
    match sig {
        Signal::SIGINT => (130, "punchraw: interrupted (SIGINT)"),
        Signal::SIGTERM => (143, "punchraw: interrupted (SIGTERM)"),
        _ => unreachable!("only SIGINT and SIGTERM stop punchraw in order"),
    }
}

/// Its exit code and last stderr line are the signal's.
fn assert_interrupted(code: Option<i32>, stderr: &str, sig: Signal) {
    let (want, line) = expected(sig);
    assert_eq!(code, Some(want), "exit code after {sig}; stderr:\n{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some(line),
        "last line after {sig}; stderr:\n{stderr}"
    );
}

fn serve_stops(sig: Signal) {
    let (mut srv, addr) = serve();
    // One Binding request (RFC 8489 section 6: type 0x0001, no attributes, the magic
    // cookie, a transaction id), so the statistics have something to count.
    let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
    c.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(b"sigtest-txid");
    c.send_to(&req, addr).expect("send");
    let mut buf = [0u8; 512];
    let (n, _) = c.recv_from(&mut buf).expect("the server answers");
    assert_eq!(&buf[..2], &[0x01, 0x01], "not a Binding success");
    assert_eq!(&buf[8..20], b"sigtest-txid", "{:?}", &buf[..n]);

    srv.signal(sig);
    let (code, err) = srv.finish();
    assert_interrupted(code, &err, sig);
    assert!(
        err.contains("punchraw: stopped; udp: 1 requests (1 ok"),
        "no statistics; stderr:\n{err}"
    );
}

#[test]
fn serve_exits_130_on_sigint_after_its_statistics() {
    serve_stops(Signal::SIGINT)
}

#[test]
fn serve_exits_143_on_sigterm_after_its_statistics() {
    serve_stops(Signal::SIGTERM)
}

fn probe_stops(sig: Signal) {
    let (_srv, addr) = serve();
    let dir = Dir::new(&format!("probe-{}", expected(sig).0));
    let pcap = dir.file("probe.pcap");
    let mut probe = Proc::start(&[
        "probe",
        "--server",
        &addr.to_string(),
        "--lifetime",
        "--lifetime-max",
        "60",
        "--capture",
        pcap.to_str().expect("utf-8 path"),
    ]);
    // On loopback no binding expires, so the search would go on for a minute: the signal
    // comes in the middle of it.
    probe.wait_for("binding still open after 1 s");
    probe.signal(sig);
    let (code, err) = probe.finish();
    assert_interrupted(code, &err, sig);
    assert!(!err.contains("did not finish"), "{err}");

    // The capture is complete: every record whole, as many as the probe says it wrote.
    let said: usize = err
        .lines()
        .find_map(|l| l.strip_prefix("punchraw: capture: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no capture line; stderr:\n{err}"));
    let bytes = std::fs::read(&pcap).expect("read the capture");
    let mut reader = pcap_file::pcap::PcapReader::new(&bytes[..]).expect("a pcap header");
    let mut records = 0;
    while let Some(r) = reader.next_packet() {
        r.unwrap_or_else(|e| panic!("record {records} is broken: {e}"));
        records += 1;
    }
    assert!(records > 0, "empty capture");
    assert_eq!(records, said, "records in the file vs the capture line");
    if let Ok(out) = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .stdout(Stdio::null())
        .output()
    {
        assert!(
            out.status.success(),
            "tshark -r: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn probe_exits_130_on_sigint_with_its_capture_complete() {
    probe_stops(Signal::SIGINT)
}

#[test]
fn probe_exits_143_on_sigterm_with_its_capture_complete() {
    probe_stops(Signal::SIGTERM)
}

fn connect_stops(sig: Signal) {
    let (_srv, addr) = serve();
    let dir = Dir::new(&format!("connect-{}", expected(sig).0));
    let report = dir.file("report.json");
    let session = format!("sig-{}-{}", std::process::id(), expected(sig).0);
    let mut conn = Proc::start(&[
        "connect",
        "--server",
        &addr.to_string(),
        "--session",
        &session,
        "--secret",
        "s",
        "--report",
        report.to_str().expect("utf-8 path"),
    ]);
    // Nobody else comes to the session.
    conn.wait_for("waiting for the peer");
    conn.signal(sig);
    let (code, err) = conn.finish();
    assert_interrupted(code, &err, sig);
    let r: Value = serde_json::from_slice(&std::fs::read(&report).expect("the report"))
        .unwrap_or_else(|e| panic!("report is not JSON: {e}"));
    assert_eq!(r["connected"], Value::Bool(false), "{r}");
    assert_eq!(r["transport"], "udp", "{r}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("interrupted ({sig})")),
        "report error {error:?}"
    );
}

#[test]
fn connect_exits_130_on_sigint_with_its_report() {
    connect_stops(Signal::SIGINT)
}

#[test]
fn connect_exits_143_on_sigterm_with_its_report() {
    connect_stops(Signal::SIGTERM)
}

/// Two connects meet on 127.0.0.1 and their stream carries a line each way, inputs left
/// open; then one gets `sig`. It exits with the signal's code, and its peer, told by the
/// close, ends at once with the stream failure code (9) instead of waiting out the QUIC idle
/// timeout (30 s, beyond `WAIT`).
fn connect_stream_stops(sig: Signal) {
    let (_srv, addr) = serve();
    let session = format!("sig-stream-{}-{}", std::process::id(), expected(sig).0);
    let args = [
        "connect",
        "--server",
        &addr.to_string(),
        "--session",
        &session,
        "--secret",
        "s",
    ];
    let start = || Proc::start_with(&args, Stdio::piped(), Stdio::piped());
    let (mut a, mut b) = (start(), start());
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for (p, line) in [(&mut a, "from a\n"), (&mut b, "from b\n")] {
        p.wait_for("connected to");
        let mut stdin = p.child.stdin.take().expect("stdin piped");
        stdin.write_all(line.as_bytes()).expect("write stdin");
        stdin.flush().expect("flush stdin");
        // Kept open: the stream would otherwise end by itself.
        inputs.push(stdin);
        outputs.push(lines_of(p.child.stdout.take().expect("stdout piped")));
    }
    for (out, want) in outputs.iter().zip(["from b", "from a"]) {
        match out.recv_timeout(WAIT) {
            Ok(line) => assert_eq!(line, want),
            Err(e) => panic!(
                "no {want:?} through the stream ({e}); stderr:\n{}\n{}",
                a.stderr, b.stderr
            ),
        }
    }

    a.signal(sig);
    let (code, err) = a.finish();
    assert_interrupted(code, &err, sig);
    let (code, err) = b.finish();
    assert_eq!(code, Some(9), "the peer's exit code; stderr:\n{err}");
    assert!(
        err.lines()
            .last()
            .is_some_and(|l| l.ends_with("closed the connection: interrupted")),
        "the peer's last line; stderr:\n{err}"
    );
    drop(inputs);
}

#[test]
fn connect_stream_exits_130_on_sigint_and_its_peer_ends_at_once() {
    connect_stream_stops(Signal::SIGINT)
}

#[test]
fn connect_stream_exits_143_on_sigterm_and_its_peer_ends_at_once() {
    connect_stream_stops(Signal::SIGTERM)
}

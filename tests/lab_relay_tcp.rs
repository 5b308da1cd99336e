//! `connect --relay turn://USER:PASS@HOST:PORT?transport=tcp|tls`: the TURN client reaches
//! its server over TCP or TLS (RFC 8656 section 3.1) while the relayed leg stays UDP. Two
//! random-port symmetric NATs (no hole opens) connect relayed through `serve --relay` and
//! through coturn, 1 MiB each way checked by hash; the TCP connection dying mid-stream is
//! the relay dying (exit 9). Needs root; skipped otherwise unless PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{ChildGuard, Lab, LabOptions, Node};
use common::pair::*;
use common::relay::{count, endless_pair, kill_under, random_pair, Ended, Serve};
use std::process::Stdio;
use std::time::Duration;

/// `serve --relay --relay-user relayuser:relaypass`, its stderr kept for the statistics.
fn serve(lab: &Lab) -> Serve {
    Serve::start_with(lab, &["--relay-user", "relayuser:relaypass"])
}

/// Both peers ended well, relayed, with the data intact.
fn assert_relayed(p: &Pair, what: &str) {
    for (n, s) in [("A", &p.a), ("B", &p.b)] {
        assert_eq!(s.code, Some(0), "{n}: {what}");
        let r = &s.report;
        assert_eq!(r["connected"], true, "{n}: {r:#}");
        assert_eq!(r["path"], "relay", "{n}: {r:#}");
        assert!(r["relay"].is_string(), "{n}: {r:#}");
        assert_eq!(r["bytes_sent"], 1 << 20, "{n}: {r:#}");
        assert!(s.stderr.contains("through the relay"), "{n}: {what}");
    }
    assert!(p.data_ok, "data differs: {what}");
}

/// `?transport=tcp` through `serve --relay` on its primary port: each peer's allocation is
/// made on a TCP connection of its own (the server's TCP statistics count them), and each
/// is freed by its client.
#[test]
fn random_symmetric_pair_connects_through_serve_relay_over_tcp() {
    over_tcp_through_serve(random_pair());
}

/// The same with 40 ms one way on each NAT's uplink: QUIC's congestion control paces the
/// stream over the TCP legs (relayed data the writer cannot take is dropped, not queued
/// without bound).
#[test]
fn random_symmetric_pair_connects_through_serve_relay_over_tcp_at_40_ms() {
    over_tcp_through_serve(Lab::up_with(
        LabOptions::new("symmetric-random")
            .kind_b("symmetric-random")
            .delay_ms(40),
    ));
}

fn over_tcp_through_serve(lab: Option<Lab>) {
    let Some(lab) = lab else {
        return;
    };
    let serve = serve(&lab);
    let relay = "turn://relayuser:relaypass@203.0.113.1:3478?transport=tcp";
    let p = pair(
        &lab,
        0,
        "right",
        1 << 20,
        &["--punch-budget", "2", "--relay", relay],
    );
    let log = serve.stop();
    let what = format!(
        "stderr of A:\n{}\nstderr of B:\n{}\nserve:\n{log}",
        p.a.stderr, p.b.stderr
    );
    assert_relayed(&p, &what);
    for (n, s) in [("A", &p.a), ("B", &p.b)] {
        assert!(s.stderr.contains("over TCP"), "{n}: {what}");
    }
    assert!(count(&log, "tcp: ", "connections") >= 2, "{log}");
    assert_eq!(count(&log, "relay: ", "made"), 2, "{log}");
    assert_eq!(count(&log, "relay: ", "active"), 0, "{log}");
    assert_eq!(count(&log, "relay: ", "freed by the client"), 2, "{log}");
}

/// Drops UDP to `port` in the server's namespace: the TURN server there is reachable over
/// TCP only. The rule goes with the lab's namespace.
fn block_udp_to(lab: &Lab, port: u16) {
    let rules = format!(
        "add table inet relaytest\n\
         add chain inet relaytest input {{ type filter hook input priority 0; }}\n\
         add rule inet relaytest input udp dport {port} drop\n"
    );
    lab.nft(Node::Srv, &rules);
}

/// coturn's arguments: a relay on 203.0.113.1:`port` (UDP and TCP) with one long-term user.
fn coturn_args(port: &str) -> Vec<&str> {
    vec![
        "-L",
        "203.0.113.1",
        "--listening-port",
        port,
        "--relay-ip",
        "203.0.113.1",
        "--min-port",
        "41000",
        "--max-port",
        "41999",
        "--lt-cred-mech",
        "--user",
        "relayuser:relaypass",
        "--realm",
        "lab",
    ]
}

fn have_coturn() -> bool {
    if common::lab::find_program("turnserver").is_some() {
        return true;
    }
    if std::env::var("PUNCHRAW_REQUIRE_LAB").as_deref() == Ok("1") {
        panic!("turnserver (coturn) not found (and PUNCHRAW_REQUIRE_LAB=1)");
    }
    eprintln!("skipped: turnserver (coturn) not found");
    false
}

/// `?transport=tcp` through coturn, with UDP to coturn's port dropped: only the TCP
/// connection can carry the allocation.
#[test]
fn random_symmetric_pair_connects_through_coturn_over_tcp() {
    if !have_coturn() {
        return;
    }
    let Some(lab) = random_pair() else {
        return;
    };
    let _serve = common::punchraw_serve_5780(&lab);
    let (_coturn, _dir) = common::coturn(&lab, &coturn_args("3480"));
    block_udp_to(&lab, 3480);
    let relay = "turn://relayuser:relaypass@203.0.113.1:3480?transport=tcp";
    let p = pair(
        &lab,
        0,
        "right",
        1 << 20,
        &["--punch-budget", "2", "--relay", relay],
    );
    let what = format!("stderr of A:\n{}\nstderr of B:\n{}", p.a.stderr, p.b.stderr);
    assert_relayed(&p, &what);
}

/// The relay dies (SIGKILL) while a stream runs through allocations made over TCP: the
/// connections end, and with them the allocations (RFC 8656 section 3.1), so both peers end
/// soon with exit 9 naming the relay -- not after QUIC's idle timeout.
#[test]
fn tcp_relay_dying_mid_stream_is_exit_9() {
    let Some(lab) = random_pair() else {
        return;
    };
    let mut serve = serve(&lab);
    let relay = "turn://relayuser:relaypass@203.0.113.1:3478?transport=tcp";
    let (_dir, sides) = endless_pair(&lab, "tcpdies", &["--relay", relay]);
    for Ended {
        name,
        code,
        stderr,
        took,
    } in kill_under(&mut serve, sides)
    {
        assert_eq!(code, Some(9), "{name}: {stderr}");
        assert!(
            stderr.contains("the relay 203.0.113.1:3478 stopped relaying")
                && stderr.contains("the allocation ended with the connection"),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert!(
            took < Duration::from_secs(5),
            "{name} took {took:?}: {stderr}"
        );
    }
}

/// RFC 4648 base64, for the PEM files the test writes (rcgen is built without its PEM
/// feature).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A self-signed certificate for `name` written to `dir`: (certificate, key) paths.
fn self_signed(dir: &std::path::Path, tag: &str, name: &str) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
    let cert = dir.join(format!("{tag}.crt"));
    let key = dir.join(format!("{tag}.key"));
    std::fs::write(&cert, pem("CERTIFICATE", ck.cert.der())).expect("write certificate");
    std::fs::write(&key, pem("PRIVATE KEY", &ck.key_pair.serialize_der())).expect("write key");
    let s = |p: std::path::PathBuf| p.to_str().expect("UTF-8 path").to_string();
    (s(cert), s(key))
}

/// coturn with TLS on 203.0.113.1:5349 (and UDP/TCP on 3480), `cert` and `key` its own.
fn coturn_tls(lab: &Lab, dir: &std::path::Path, cert: &str, key: &str) -> ChildGuard {
    let conf = dir.join("turnserver.conf");
    std::fs::write(&conf, "").expect("write empty coturn config");
    let child = lab
        .cmd(Node::Srv, "turnserver")
        .arg("-c")
        .arg(&conf)
        .args(coturn_args("3480"))
        .args([
            "--tls-listening-port",
            "5349",
            "--cert",
            cert,
            "--pkey",
            key,
        ])
        .args(["--no-cli", "--no-dtls", "--log-file", "stdout", "--pidfile"])
        .arg(dir.join("turnserver.pid"))
        .stdout(Stdio::from(
            std::fs::File::create(dir.join("coturn.log")).expect("coturn log"),
        ))
        .stderr(Stdio::null())
        .spawn()
        .expect("start coturn turnserver");
    std::thread::sleep(Duration::from_millis(800));
    ChildGuard(child)
}

/// `?transport=tls` through coturn, trusting its self-signed certificate with --relay-ca.
#[test]
fn random_symmetric_pair_connects_through_coturn_over_tls() {
    if !have_coturn() {
        return;
    }
    let Some(lab) = random_pair() else {
        return;
    };
    let dir = common::tempdir::Dir::new(&format!("{}-tls", lab.name()));
    let (cert, key) = self_signed(&dir.path, "relay", "203.0.113.1");
    let _serve = common::punchraw_serve_5780(&lab);
    let _coturn = coturn_tls(&lab, &dir.path, &cert, &key);
    let relay = "turn://relayuser:relaypass@203.0.113.1:5349?transport=tls";
    let p = pair(
        &lab,
        0,
        "right",
        1 << 20,
        &["--punch-budget", "2", "--relay", relay, "--relay-ca", &cert],
    );
    let coturn = std::fs::read_to_string(dir.path.join("coturn.log")).unwrap_or_default();
    let what = format!(
        "stderr of A:\n{}\nstderr of B:\n{}\ncoturn:\n{coturn}",
        p.a.stderr, p.b.stderr
    );
    assert_relayed(&p, &what);
    for (n, s) in [("A", &p.a), ("B", &p.b)] {
        assert!(s.stderr.contains("over TLS"), "{n}: {what}");
    }
}

/// A certificate that does not chain to --relay-ca, or that does not name HOST, is not the
/// relay's: no allocation is made (said), and connect goes on without a relay.
#[test]
fn a_relay_certificate_not_trusted_or_for_another_name_is_refused() {
    if !have_coturn() {
        return;
    }
    let Some(lab) = random_pair() else {
        return;
    };
    let dir = common::tempdir::Dir::new(&format!("{}-badtls", lab.name()));
    let (cert, key) = self_signed(&dir.path, "relay", "203.0.113.9");
    let (other, _) = self_signed(&dir.path, "other", "203.0.113.1");
    let _serve = common::punchraw_serve_5780(&lab);
    let _coturn = coturn_tls(&lab, &dir.path, &cert, &key);
    let relay = "turn://relayuser:relaypass@203.0.113.1:5349?transport=tls";
    std::fs::write(dir.path.join("a.in"), b"x").expect("write");
    let cases = [
        (&other, "invalid peer certificate"),
        (&cert, "not valid for name \"203.0.113.1\""),
    ];
    for (i, (ca, says)) in cases.into_iter().enumerate() {
        let out = connect_cmd(
            &lab,
            Node::A,
            &dir.path,
            "a",
            &format!("{}-badtls{i}", lab.name()),
            "right",
            &["--timeout", "3", "--relay", relay, "--relay-ca", ca],
        )
        .output()
        .expect("run connect");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                "relay: cannot reach 203.0.113.1:5349 over TLS (the TLS handshake failed"
            ) && stderr.contains(says)
                && stderr.contains("going on without"),
            "{says}: {stderr}"
        );
        // No peer comes.
        assert_eq!(out.status.code(), Some(5), "{says}: {stderr}");
    }
}

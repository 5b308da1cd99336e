//! The sample captures in captures/ (recorded in the lab by tools/record-captures.sh) open
//! in tshark without a warning and dissect as STUN. Skipped without tshark unless
//! PUNCHRAW_REQUIRE_LAB=1.

use std::path::Path;
use std::process::Command;

fn tshark_fields(pcap: &Path, fields: &[&str]) -> Option<(String, String)> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).args(["-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    match cmd.output() {
        Ok(o) => {
            assert!(
                o.status.success(),
                "tshark failed on {}: {o:?}",
                pcap.display()
            );
            Some((
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ))
        }
        Err(e) => {
            assert!(
                std::env::var_os("PUNCHRAW_REQUIRE_LAB").is_none(),
                "tshark is required (apt-get install tshark): {e}"
            );
            eprintln!("skipped: tshark not available ({e})");
            None
        }
    }
}

#[test]
fn sample_captures_dissect_as_stun_without_warnings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("captures");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("captures/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("pcap") {
            continue;
        }
        seen += 1;
        let Some((out, err)) = tshark_fields(&path, &["stun.type"]) else {
            return;
        };
        let warnings: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("Running as user") && !l.trim().is_empty())
            .collect();
        assert!(
            warnings.is_empty(),
            "{}: tshark warned: {warnings:?}",
            path.display()
        );
        let stun = out.lines().filter(|l| l.starts_with("0x0")).count();
        assert!(stun >= 5, "{}: only {stun} STUN packets", path.display());
    }
    assert!(
        seen >= 3,
        "expected the sample captures in {}",
        dir.display()
    );
}

/// The TCP punch capture shows the simultaneous open: our SYN, the peer's SYN or SYN-ACK.
#[test]
fn tcp_punch_capture_shows_the_handshake() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("captures/tcp-punch-a.pcap");
    let Some((out, _)) = tshark_fields(&path, &["tcp.flags.syn", "tcp.flags.ack", "ip.src"]) else {
        return;
    };
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    let syn = |r: &Vec<&str>| r.first().is_some_and(|f| *f == "1" || *f == "True");
    let ack = |r: &Vec<&str>| r.get(1).is_some_and(|f| *f == "1" || *f == "True");
    let syns = rows.iter().filter(|r| syn(r) && !ack(r)).count();
    let synacks = rows.iter().filter(|r| syn(r) && ack(r)).count();
    assert!(
        syns >= 1 && synacks >= 1,
        "{syns} SYNs, {synacks} SYN-ACKs:\n{out}"
    );
}

//! The load generator against `punchraw serve` (the library's server, on 127.0.0.1) for about
//! a second: it must see answers and every answer must match a request it sent.

use punchraw::core::server::ServerConfig;
use punchraw::driver::serve;
use punchraw::os::signals::Shutdown;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

fn json_field(out: &str, key: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {out}"))
}

#[test]
fn loadgen_gets_matched_answers_from_punchraw_serve() {
    let shutdown = Shutdown::manual();
    let cfg = ServerConfig {
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        alt_ip: None,
        port: 0,
        alt_port: 0,
        software: None,
        per_source_limit: None,
        seed: 0,
    };
    let h = serve::spawn(cfg, shutdown.clone()).expect("server starts on loopback");
    let target = h.endpoints()[0].1;
    let out = Command::new(env!("CARGO_BIN_EXE_punchraw-loadgen"))
        .args(["--target", &target.to_string()])
        .args([
            "--sockets",
            "2",
            "--window",
            "16",
            "--duration",
            "1",
            "--json",
        ])
        .output()
        .expect("loadgen runs");
    shutdown.trigger();
    let stats = h.join();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(json_field(&stdout, "responses_per_s") > 0.0, "{stdout}");
    assert_eq!(json_field(&stdout, "unmatched"), 0.0, "{stdout}");
    assert_eq!(json_field(&stdout, "errors"), 0.0, "{stdout}");
    let sent = json_field(&stdout, "requests_sent");
    let answered = json_field(&stdout, "responses") + json_field(&stdout, "late");
    assert!(answered <= sent, "{stdout}");
    assert!(
        stats.udp.success as f64 >= answered,
        "server answered {} but loadgen matched {answered}",
        stats.udp.success
    );
}

#[test]
fn waiting_sessions_are_bounded_and_freed() {
    let out = Command::new(env!("CARGO_BIN_EXE_punchraw-rdv-capacity"))
        .args(["--sessions", "10000", "--json"])
        .output()
        .expect("capacity tool runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(json_field(&stdout, "held_after_expiry"), 0.0, "{stdout}");
    // Generous bound: a waiting session must stay in the low kilobytes.
    assert!(
        json_field(&stdout, "bytes_per_waiting_session") < 4096.0,
        "{stdout}"
    );
}

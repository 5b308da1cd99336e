//! `punchraw-rdv-capacity`: what a session waiting for its second peer costs the in-memory
//! rendezvous. Registers `--sessions` (default 100,000) lone peers through the real message
//! path (signed `register` datagrams into [`Rendezvous::handle`]), reports the growth of this
//! process's resident memory per session, then lets them expire and checks that every session
//! is gone and that a second round of registrations reuses the freed memory.

use clap::Parser;
use punchraw::core::rendezvous::{
    derive_rendezvous_key, Msg, NatInfo, Rendezvous, RendezvousConfig,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "punchraw-rdv-capacity", about)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    sessions: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Resident set size in bytes (VmRSS in /proc/self/status).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Signed registrations, prepared before measuring so only the registry's state is counted.
fn registrations(n: usize, round: u32) -> Vec<(SocketAddr, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let session = format!("capacity-{round}-{i:08}");
            let key = derive_rendezvous_key(b"benchmark secret", &session);
            // A realistic peer: one public endpoint, two local addresses.
            let ip = Ipv4Addr::from(0x0a00_0000 | i as u32);
            let src = SocketAddr::new(IpAddr::V4(ip), 40000 + (i % 20000) as u16);
            let msg = Msg::Register {
                session,
                peer: format!("{:016x}", (u64::from(round) << 40) | i as u64),
                seq: 1,
                key: Some(punchraw::core::hex::encode(&key)),
                locals: vec![
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20)), 50000),
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(172, 17, 0, 1)), 50000),
                ],
                nat: NatInfo::unknown(),
                tcp: None,
                mapped: None,
                relayed: None,
                rtt_ms: 20,
                udp_blocked: false,
                pairing: None,
                mac: String::new(),
            };
            (src, msg.encode_signed(&key))
        })
        .collect()
}

fn main() -> ExitCode {
    let args = Args::parse();
    let n = args.sessions.max(1);
    let cfg = RendezvousConfig {
        max_sessions: n,
        ..RendezvousConfig::default()
    };
    let idle = cfg.peer_idle;
    let mut rdv = Rendezvous::new(cfg);
    let t0 = Instant::now();

    let msgs = registrations(n, 1);
    let before = rss();
    let mut answered = 0usize;
    for (src, m) in &msgs {
        answered += usize::from(!rdv.handle(t0, *src, m).is_empty());
    }
    let after = rss();
    let held = rdv.sessions();
    drop(msgs);
    let per_session = after.saturating_sub(before) as f64 / n as f64;

    // Nobody re-registers: every peer is idle after `peer_idle` and its session is freed.
    let _ = rdv.expire(t0 + idle + Duration::from_secs(1));
    let after_expiry = rdv.sessions();

    // The freed memory is reused: a second round of as many sessions grows RSS by far less.
    let msgs = registrations(n, 2);
    let before2 = rss();
    let t1 = t0 + idle + Duration::from_secs(2);
    for (src, m) in &msgs {
        let _ = rdv.handle(t1, *src, m);
    }
    let after2 = rss();
    let held2 = rdv.sessions();
    let regrowth = after2.saturating_sub(before2) as f64 / n as f64;
    let _ = rdv.expire(t1 + idle + Duration::from_secs(1));
    let after_expiry2 = rdv.sessions();

    let ok = held == n
        && answered == n
        && after_expiry == 0
        && held2 == n
        && after_expiry2 == 0
        && regrowth <= per_session / 2.0 + 16.0;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "sessions": n,
                "held": held,
                "rss_growth_bytes": after.saturating_sub(before),
                "bytes_per_waiting_session": per_session.round(),
                "held_after_expiry": after_expiry,
                "second_round_bytes_per_session": regrowth.round(),
                "ok": ok,
            })
        );
    } else {
        println!("waiting sessions     {held} of {n} registered");
        println!(
            "RSS growth           {:.1} MiB, {per_session:.0} bytes per waiting session",
            after.saturating_sub(before) as f64 / (1 << 20) as f64
        );
        println!("after expiry         {after_expiry} sessions held");
        println!(
            "second round         {held2} sessions, {regrowth:.0} bytes per session of new RSS (freed memory reused)"
        );
        println!("result               {}", if ok { "ok" } else { "FAILED" });
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

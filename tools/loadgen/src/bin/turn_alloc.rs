//! `punchraw-turn-alloc`: makes and holds many TURN allocations (RFC 8656) on one server --
//! `punchraw serve --relay`, coturn, any TURN server -- so that a benchmark can read what an
//! allocation costs the server (tools/bench-relay.sh reads its resident memory while they are
//! held), then frees them all with a Refresh of lifetime 0 (section 7) and counts the answers.
//!
//! Every allocation is a 5-tuple of its own, so each has a UDP socket of its own; `--window`
//! of them are being set up at once, each driven by the project's sans-IO TURN client
//! (`core::turn::Client`: the 401 and nonce exchange, retransmissions). Held allocations are
//! not refreshed: keep `--hold` under the server's default lifetime (600 s).

use clap::Parser;
use punchraw::core::turn::{Client, Event, TurnConfig};
use punchraw::core::Machine;
use punchraw::os::poll::readable;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "punchraw-turn-alloc", about)]
struct Args {
    /// The TURN server, IP:PORT (UDP).
    #[arg(long)]
    server: SocketAddr,
    /// Long-term credentials, USER:PASS.
    #[arg(long)]
    user: String,
    /// Allocations to make and hold.
    #[arg(long, default_value_t = 10_000)]
    allocations: usize,
    /// Allocations being set up (or freed) at once.
    #[arg(long, default_value_t = 200)]
    window: usize,
    /// Seconds to hold the allocations before freeing them.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// Created (empty) once every allocation is made or has failed: the moment to measure.
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

struct Slot {
    sock: UdpSocket,
    client: Client,
}

/// Drives `slots` until each reports one of `done` (by the predicate) or fails; returns how
/// many ended well. Input, timeouts and transmits in the order `core::Machine` documents.
fn drive(slots: &mut [Slot], done: impl Fn(&Event) -> bool, failed: &mut Vec<String>) -> usize {
    let mut open: Vec<usize> = (0..slots.len()).collect();
    let mut good = 0;
    let mut buf = vec![0u8; 2048];
    while !open.is_empty() {
        let now = Instant::now();
        for &i in &open {
            let s = &mut slots[i];
            while let Some(t) = s.client.poll_transmit() {
                let _ = s.sock.send_to(&t.payload, t.dst);
            }
        }
        let wake = open
            .iter()
            .filter_map(|&i| slots[i].client.poll_timeout())
            .min()
            .map_or(Duration::from_millis(10), |t| {
                t.saturating_duration_since(now)
            })
            .min(Duration::from_millis(10));
        let fds: Vec<_> = open.iter().map(|&i| slots[i].sock.as_fd()).collect();
        let ready = readable(&fds, wake).unwrap_or_default();
        let now = Instant::now();
        let mut still = Vec::with_capacity(open.len());
        for (k, &i) in open.iter().enumerate() {
            let s = &mut slots[i];
            if ready.get(k).copied().unwrap_or(false) {
                while let Ok((n, from)) = s.sock.recv_from(&mut buf) {
                    s.client.handle_input(now, 0, from, &buf[..n]);
                }
            }
            if s.client.poll_timeout().is_some_and(|t| t <= now) {
                s.client.handle_timeout(now);
            }
            let mut end = None;
            while let Some(e) = s.client.poll_event() {
                if done(&e) {
                    end = Some(true);
                } else if let Event::Failed(err) = e {
                    failed.push(err.to_string());
                    end = Some(false);
                }
            }
            if s.client.is_done() && end.is_none() {
                end = Some(false);
            }
            match end {
                Some(ok) => good += usize::from(ok),
                None => still.push(i),
            }
        }
        // Whatever the last turn queued (a Refresh, a repeat) goes out before the next wait.
        for &i in &still {
            let s = &mut slots[i];
            while let Some(t) = s.client.poll_transmit() {
                let _ = s.sock.send_to(&t.payload, t.dst);
            }
        }
        open = still;
    }
    good
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some((user, pass)) = args.user.split_once(':') else {
        eprintln!("--user must be USER:PASS");
        return ExitCode::from(2);
    };
    let window = args.window.max(1);
    punchraw::os::privileges::raise_file_limit(args.allocations as u64 + 256);
    let bind: SocketAddr = if args.server.is_ipv4() {
        "0.0.0.0:0".parse().expect("an address")
    } else {
        "[::]:0".parse().expect("an address")
    };
    let t0 = Instant::now();
    let mut held: Vec<Slot> = Vec::with_capacity(args.allocations);
    let mut failed = Vec::new();
    let mut made = 0;
    while made < args.allocations {
        let n = window.min(args.allocations - made);
        let mut batch = Vec::with_capacity(n);
        for k in 0..n {
            let sock = match UdpSocket::bind(bind).and_then(|s| {
                s.set_nonblocking(true)?;
                Ok(s)
            }) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("socket {}: {e} (descriptor limit?)", made + k);
                    return ExitCode::from(1);
                }
            };
            let mut cfg = TurnConfig::new(args.server, user, pass, (made + k) as u64);
            cfg.lifetime = Some(Duration::from_secs(600));
            let client = Client::new(cfg, Instant::now());
            batch.push(Slot { sock, client });
        }
        drive(
            &mut batch,
            |e| matches!(e, Event::Allocated { .. }),
            &mut failed,
        );
        held.extend(batch.into_iter().filter(|s| s.client.is_allocated()));
        made += n;
    }
    let setup = t0.elapsed();
    let allocated = held.len();
    if let Some(f) = &args.ready_file {
        let _ = std::fs::write(f, b"");
    }
    std::thread::sleep(Duration::from_secs_f64(args.hold.max(0.0)));

    let t1 = Instant::now();
    let mut freed = 0;
    for chunk in held.chunks_mut(window) {
        let now = Instant::now();
        for s in chunk.iter_mut() {
            s.client.close(now);
        }
        freed += drive(chunk, |e| matches!(e, Event::Closed), &mut Vec::new());
    }
    let teardown = t1.elapsed();
    let rate = allocated as f64 / setup.as_secs_f64().max(1e-9);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "allocations": args.allocations,
                "allocated": allocated,
                "failed": failed.len(),
                "setup_s": setup.as_secs_f64(),
                "allocations_per_s": rate,
                "freed": freed,
                "teardown_s": teardown.as_secs_f64(),
            })
        );
    } else {
        println!(
            "{allocated} of {} allocations in {:.2} s ({rate:.0}/s), {} failed; {freed} freed in {:.2} s",
            args.allocations,
            setup.as_secs_f64(),
            failed.len(),
            teardown.as_secs_f64()
        );
    }
    if let Some(first) = failed.first() {
        eprintln!("first failure: {first}");
    }
    if allocated == args.allocations {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

//! `punchraw-loadgen`: drives a STUN server with Binding requests and measures how many it
//! answers per second.
//!
//! N UDP sockets, one thread each; every socket keeps W requests in flight. Each request has
//! a transaction ID naming its socket, its window slot and a sequence number, so every
//! response is matched to exactly one request (or counted as unmatched). A request not
//! answered within `--timeout-ms` is given up (counted lost) and its slot sends a new one.
//! The run is bounded by `--duration` and, optionally, `--max-requests`; afterwards the
//! sockets wait at most one timeout for the requests still in flight.

use clap::Parser;
use punchraw::os::mmsg::{RecvBatch, SendBatch};
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
const MAX_DURATION_S: f64 = 3600.0;
const MAX_SOCKETS: usize = 256;
const MAX_WINDOW: usize = 4096;

#[derive(Parser, Debug, Clone)]
#[command(name = "punchraw-loadgen", version, about)]
struct Args {
    /// The STUN server, IP:PORT.
    #[arg(long)]
    target: SocketAddr,
    /// UDP sockets, one thread each.
    #[arg(long, default_value_t = 2)]
    sockets: usize,
    /// Requests in flight per socket.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Seconds to send for (at most 3600).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Stop sending after this many requests over all sockets.
    #[arg(long)]
    max_requests: Option<u64>,
    /// A request unanswered for this long is lost and its slot sends a new one.
    #[arg(long, default_value_t = 200)]
    timeout_ms: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Latency histogram in microseconds: exact below 1024 us, then 32 steps per power of two
/// (about 3 % resolution). Fixed size, so recording never allocates.
struct Hist {
    counts: Vec<u64>,
}

const HIST_LINEAR: u64 = 1024;
const HIST_SUB: u32 = 32;

impl Hist {
    fn new() -> Self {
        Hist {
            counts: vec![0; HIST_LINEAR as usize + 64 * HIST_SUB as usize],
        }
    }

    fn bucket(us: u64) -> usize {
        if us < HIST_LINEAR {
            return us as usize;
        }
        let msb = 63 - us.leading_zeros();
        let sub = (us >> (msb - 5)) & u64::from(HIST_SUB - 1);
        HIST_LINEAR as usize + ((msb - 10) * HIST_SUB) as usize + sub as usize
    }

    /// The lower bound of bucket `i`.
    fn value(i: usize) -> u64 {
        if (i as u64) < HIST_LINEAR {
            return i as u64;
        }
        let j = i - HIST_LINEAR as usize;
        let msb = j as u32 / HIST_SUB + 10;
        let sub = (j as u32 % HIST_SUB) as u64;
        (1u64 << msb) + (sub << (msb - 5))
    }

    fn record(&mut self, d: Duration) {
        let b = Self::bucket(d.as_micros().min(u128::from(u64::MAX >> 1)) as u64);
        let last = self.counts.len() - 1;
        self.counts[b.min(last)] += 1;
    }

    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
    }

    fn quantile(&self, q: f64) -> Option<u64> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(Self::value(i));
            }
        }
        None
    }
}

#[derive(Default)]
struct Tally {
    sent: u64,
    /// Answered in time, in the measuring window.
    responses: u64,
    /// Answered in time after the window closed (while draining).
    drained: u64,
    /// Answered after the request had been given up.
    late: u64,
    /// Error responses (also counted as responses when matched).
    errors: u64,
    /// Datagrams that matched no request this run sent.
    unmatched: u64,
    timeouts: u64,
    send_failures: u64,
}

#[derive(Clone, Copy)]
struct Slot {
    /// Sequence number of the request in flight; 0 when none.
    seq: u64,
    sent_at: Instant,
}

fn request(buf: &mut Vec<u8>, sock: u16, slot: u16, seq: u64) {
    buf.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    buf.extend_from_slice(&0u16.to_be_bytes());
    buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    buf.extend_from_slice(&sock.to_be_bytes());
    buf.extend_from_slice(&slot.to_be_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
}

/// (class-and-method, socket, slot, seq) of a STUN response, or None for anything else.
fn parse_response(d: &[u8]) -> Option<(u16, u16, u16, u64)> {
    if d.len() < 20 || u32::from_be_bytes(d[4..8].try_into().ok()?) != MAGIC_COOKIE {
        return None;
    }
    let typ = u16::from_be_bytes([d[0], d[1]]);
    let sock = u16::from_be_bytes([d[8], d[9]]);
    let slot = u16::from_be_bytes([d[10], d[11]]);
    let seq = u64::from_be_bytes(d[12..20].try_into().ok()?);
    Some((typ, sock, slot, seq))
}

/// Requests still allowed by `--max-requests`; takes up to `want`.
fn take_budget(budget: &AtomicU64, want: u64) -> u64 {
    let mut cur = budget.load(Ordering::Relaxed);
    loop {
        let take = cur.min(want);
        if take == 0 {
            return 0;
        }
        match budget.compare_exchange_weak(cur, cur - take, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return take,
            Err(now) => cur = now,
        }
    }
}

fn run_socket(
    idx: u16,
    args: &Args,
    start: Instant,
    end: Instant,
    budget: &AtomicU64,
) -> std::io::Result<(Tally, Hist)> {
    let bind: SocketAddr = if args.target.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(args.target)?;
    sock.set_read_timeout(Some(Duration::from_millis(5)))?;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let w = args.window;
    let mut slots = vec![
        Slot {
            seq: 0,
            sent_at: start
        };
        w
    ];
    let mut next_seq = 1u64;
    let (mut tally, mut hist) = (Tally::default(), Hist::new());
    let mut rx = RecvBatch::new(64, 2048);
    let mut tx = SendBatch::new(64);
    let target = args.target;
    // Slots that want a request sent; filled by responses and timeouts.
    let mut idle: Vec<usize> = (0..w).collect();
    let mut last_scan = Instant::now();
    let mut sending = true;

    loop {
        let now = Instant::now();
        if sending && now >= end {
            sending = false;
        }
        if sending && !idle.is_empty() {
            let granted = take_budget(budget, idle.len() as u64) as usize;
            if granted == 0 {
                sending = false;
            }
            for slot in idle.drain(..granted.min(idle.len())) {
                let Some(buf) = tx.next_buf() else {
                    flush(&mut tx, &sock, &mut tally);
                    // The batch was just emptied.
                    let buf = tx.next_buf().expect("empty batch has room");
                    request(buf, idx, slot as u16, next_seq);
                    tx.commit(target);
                    slots[slot] = Slot {
                        seq: next_seq,
                        sent_at: now,
                    };
                    next_seq += 1;
                    continue;
                };
                request(buf, idx, slot as u16, next_seq);
                tx.commit(target);
                slots[slot] = Slot {
                    seq: next_seq,
                    sent_at: now,
                };
                next_seq += 1;
            }
            flush(&mut tx, &sock, &mut tally);
        }
        if !sending && slots.iter().all(|s| s.seq == 0) {
            break;
        }
        if !sending && now >= end + timeout {
            // Still unanswered one timeout after the end: lost.
            tally.timeouts += slots.iter().filter(|s| s.seq != 0).count() as u64;
            break;
        }
        match rx.recv(&sock) {
            Ok(n) => {
                let now = Instant::now();
                for i in 0..n {
                    let (d, _, _) = rx.get(i);
                    let Some((typ, s, slot, seq)) = parse_response(d) else {
                        tally.unmatched += 1;
                        continue;
                    };
                    let slot = usize::from(slot);
                    if s != idx || slot >= w || seq == 0 || seq >= next_seq {
                        tally.unmatched += 1;
                        continue;
                    }
                    if typ != BINDING_SUCCESS && typ != BINDING_ERROR {
                        tally.unmatched += 1;
                        continue;
                    }
                    if slots[slot].seq != seq {
                        // A request we sent but gave up on (or a duplicate answer).
                        tally.late += 1;
                        continue;
                    }
                    if typ == BINDING_ERROR {
                        tally.errors += 1;
                    }
                    hist.record(now - slots[slot].sent_at);
                    if now <= end {
                        tally.responses += 1;
                    } else {
                        tally.drained += 1;
                    }
                    slots[slot].seq = 0;
                    idle.push(slot);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            // E.g. ECONNREFUSED from an ICMP port unreachable: nobody listens (yet).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        if now.duration_since(last_scan) >= timeout / 4 {
            last_scan = now;
            for (i, s) in slots.iter_mut().enumerate() {
                if s.seq != 0 && now.duration_since(s.sent_at) >= timeout {
                    tally.timeouts += 1;
                    s.seq = 0;
                    idle.push(i);
                }
            }
        }
        if !sending {
            idle.clear();
        }
    }
    Ok((tally, hist))
}

fn flush(tx: &mut SendBatch, sock: &UdpSocket, tally: &mut Tally) {
    let n = tx.len() as u64;
    let (sent, failed, _) = tx.flush(sock);
    tally.sent += sent as u64;
    tally.send_failures += failed as u64;
    debug_assert_eq!(sent as u64 + failed as u64, n);
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if !(args.duration > 0.0 && args.duration <= MAX_DURATION_S) {
        eprintln!("punchraw-loadgen: --duration must be in (0, {MAX_DURATION_S}]");
        return ExitCode::from(2);
    }
    if args.sockets == 0
        || args.sockets > MAX_SOCKETS
        || args.window == 0
        || args.window > MAX_WINDOW
    {
        eprintln!(
            "punchraw-loadgen: --sockets must be 1..={MAX_SOCKETS} and --window 1..={MAX_WINDOW}"
        );
        return ExitCode::from(2);
    }
    args.timeout_ms = args.timeout_ms.clamp(1, 10_000);
    let budget = Arc::new(AtomicU64::new(args.max_requests.unwrap_or(u64::MAX)));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let workers: Vec<_> = (0..args.sockets)
        .map(|i| {
            let (args, budget) = (args.clone(), Arc::clone(&budget));
            thread::spawn(move || run_socket(i as u16, &args, start, end, &budget))
        })
        .collect();
    let (mut t, mut hist) = (Tally::default(), Hist::new());
    for w in workers {
        match w.join() {
            Ok(Ok((x, h))) => {
                t.sent += x.sent;
                t.responses += x.responses;
                t.drained += x.drained;
                t.late += x.late;
                t.errors += x.errors;
                t.unmatched += x.unmatched;
                t.timeouts += x.timeouts;
                t.send_failures += x.send_failures;
                hist.merge(&h);
            }
            Ok(Err(e)) => {
                eprintln!("punchraw-loadgen: socket error: {e}");
                return ExitCode::from(1);
            }
            Err(_) => {
                eprintln!("punchraw-loadgen: a socket thread panicked");
                return ExitCode::from(1);
            }
        }
    }
    // The window actually used: with --max-requests the senders may stop early.
    let window = args.duration;
    let rate = t.responses as f64 / window;
    let loss = if t.sent == 0 {
        0.0
    } else {
        t.timeouts as f64 / t.sent as f64
    };
    let (p50, p99) = (hist.quantile(0.50), hist.quantile(0.99));
    if args.json {
        let v = serde_json::json!({
            "target": args.target.to_string(),
            "sockets": args.sockets,
            "window": args.window,
            "duration_s": args.duration,
            "requests_sent": t.sent,
            "responses": t.responses + t.drained,
            "responses_per_s": rate.round(),
            "late": t.late,
            "errors": t.errors,
            "unmatched": t.unmatched,
            "lost": t.timeouts,
            "loss": loss,
            "send_failures": t.send_failures,
            "p50_us": p50,
            "p99_us": p99,
        });
        println!("{v}");
    } else {
        let us = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} us"));
        println!("target           {}", args.target);
        println!("sockets x window {} x {}", args.sockets, args.window);
        println!("duration         {:.1} s", args.duration);
        println!("requests sent    {}", t.sent);
        println!(
            "responses        {} ({} error responses)",
            t.responses + t.drained,
            t.errors
        );
        println!("responses/s      {rate:.0}");
        println!(
            "loss             {:.3} % ({} lost, {} answered late)",
            loss * 100.0,
            t.timeouts,
            t.late
        );
        println!("unmatched        {}", t.unmatched);
        println!("latency          p50 {}, p99 {}", us(p50), us(p99));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_monotonic_and_close() {
        let mut last = 0;
        for us in [0u64, 1, 500, 1023, 1024, 1500, 4096, 100_000, 10_000_000] {
            let b = Hist::bucket(us);
            assert!(b >= last);
            last = b;
            let v = Hist::value(b);
            assert!(v <= us && us - v <= us / 30 + 1, "{us} -> {v}");
        }
    }

    #[test]
    fn requests_parse_back() {
        let mut v = Vec::new();
        request(&mut v, 3, 7, 99);
        assert_eq!(v.len(), 20);
        v[0..2].copy_from_slice(&BINDING_SUCCESS.to_be_bytes());
        assert_eq!(parse_response(&v), Some((BINDING_SUCCESS, 3, 7, 99)));
    }
}

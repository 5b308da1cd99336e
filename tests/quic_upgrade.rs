//! Relay first, then direct (`transport::quic::Path::RelayFirst`), between threads: the
//! stream starts on two stand-in relay links, a direct path of two loopback UDP sockets is
//! handed over while data flows, and every byte arrives once and in order; a direct path
//! that never answers is given up for the relay again without losing a byte. No root.

use punchraw::os::signals::Shutdown;
use punchraw::transport::quic::upgrade::{DirectPath, PathChange, Upgrade};
use punchraw::transport::quic::{run_stream_on, Identity, Path, RelayLink, Role};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(131) ^ seed ^ (i >> 11) as u8)
        .collect()
}

/// Input that trickles: `chunk` bytes, then a pause, so the stream is still running when
/// the paths change.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    chunk: usize,
    pause: Duration,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at >= self.data.len() {
            return Ok(0);
        }
        thread::sleep(self.pause);
        let n = buf.len().min(self.chunk).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

type Queue = Arc<Mutex<Option<mpsc::Sender<(SocketAddr, Vec<u8>)>>>>;

/// Two stand-in allocations, counting the datagrams they carry; emptying `gone`'s queues
/// ends both (each side's receive queue closes, as when the TURN server is gone).
fn links(
    a: SocketAddr,
    b: SocketAddr,
    relayed: Arc<AtomicU64>,
    gone: &Mutex<Vec<Queue>>,
) -> (RelayLink, RelayLink) {
    let (to_a, from_b) = mpsc::channel(4096);
    let (to_b, from_a) = mpsc::channel(4096);
    let make = |me: SocketAddr, peer: SocketAddr, tx: mpsc::Sender<(SocketAddr, Vec<u8>)>| {
        let relayed = relayed.clone();
        let tx: Queue = Arc::new(Mutex::new(Some(tx)));
        gone.lock().unwrap().push(tx.clone());
        Box::new(move |dst: SocketAddr, d: &[u8]| {
            relayed.fetch_add(1, Ordering::Relaxed);
            if let (true, Some(tx)) = (dst == peer, tx.lock().unwrap().as_ref()) {
                let _ = tx.try_send((me, d.to_vec()));
            }
        })
    };
    let la = RelayLink {
        local: a,
        send: make(a, b, to_b),
        recv: from_b,
    };
    let lb = RelayLink {
        local: b,
        send: make(b, a, to_a),
        recv: from_a,
    };
    (la, lb)
}

type Changes = Arc<Mutex<Vec<(Instant, PathChange)>>>;

fn upgrade(changes: &Changes) -> Arc<Upgrade> {
    let c = changes.clone();
    Upgrade::new(
        Duration::from_millis(5),
        Box::new(move |ch| c.lock().unwrap().push((Instant::now(), ch))),
    )
}

struct Run {
    changes: [Changes; 2],
    relayed: Arc<AtomicU64>,
    relayed_at_switch: u64,
}

/// 2 MiB each way, trickling; `direct` makes the two direct paths, handed over after
/// `after`; with `relay_gone`, the relay goes away 300 ms later.
fn run(after: Duration, relay_gone: bool, direct: impl FnOnce() -> [DirectPath; 2]) -> Run {
    let a: SocketAddr = "203.0.113.1:50000".parse().unwrap();
    let b: SocketAddr = "203.0.113.1:50002".parse().unwrap();
    let relayed = Arc::new(AtomicU64::new(0));
    let queues = Mutex::new(Vec::new());
    let (la, lb) = links(a, b, relayed.clone(), &queues);
    let changes: [Changes; 2] = Default::default();
    let ups = [upgrade(&changes[0]), upgrade(&changes[1])];
    let (ia, ib) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (pin_a, pin_b) = (ib.fingerprint(), ia.fingerprint());
    let len = 2 << 20;
    let (da, db) = (data(len, 1), data(len, 2));
    let (oa, ob) = (Sink::default(), Sink::default());
    let side = |path: Path, peer, role, me: Identity, pin, input: Vec<u8>, out: Sink| {
        thread::spawn(move || {
            let input = Trickle {
                data: input,
                at: 0,
                chunk: 64 << 10,
                pause: Duration::from_millis(40),
            };
            run_stream_on(
                path,
                peer,
                role,
                &me,
                pin,
                input,
                out,
                Duration::from_secs(1),
                Duration::from_secs(10),
                &Shutdown::manual(),
            )
        })
    };
    let pa = Path::RelayFirst(la, ups[0].clone());
    let pb = Path::RelayFirst(lb, ups[1].clone());
    let ta = side(pa, b, Role::Client, ia, pin_a, da.clone(), oa.clone());
    let tb = side(pb, a, Role::Server, ib, pin_b, db.clone(), ob.clone());
    thread::sleep(after);
    let relayed_at_switch = relayed.load(Ordering::Relaxed);
    let [pa, pb] = direct();
    ups[0].install(pa);
    ups[1].install(pb);
    if relay_gone {
        thread::sleep(Duration::from_millis(300));
        for q in queues.lock().unwrap().iter() {
            q.lock().unwrap().take();
        }
    }
    // Both ends are told: one side's failure is often what ended the other.
    let (ra, rb) = match (ta.join().unwrap(), tb.join().unwrap()) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => panic!("A's stream: {a:?}\nB's stream: {b:?}"),
    };
    assert_eq!((ra.sent, ra.received), (len as u64, len as u64));
    assert_eq!((rb.sent, rb.received), (len as u64, len as u64));
    let sha = |v: &[u8]| -> [u8; 32] { Sha256::digest(v).into() };
    assert_eq!(sha(&oa.0.lock().unwrap()), sha(&db), "B to A intact");
    assert_eq!(sha(&ob.0.lock().unwrap()), sha(&da), "A to B intact");
    Run {
        changes,
        relayed,
        relayed_at_switch,
    }
}

fn loopback() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Two loopback sockets, each the other's direct path.
fn loopback_paths() -> [DirectPath; 2] {
    let (sa, sb) = (loopback(), loopback());
    let (a, b) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
    [
        DirectPath {
            socket: sa,
            remote: b,
        },
        DirectPath {
            socket: sb,
            remote: a,
        },
    ]
}

#[test]
fn the_stream_moves_to_the_direct_path_while_data_flows() {
    let r = run(Duration::from_millis(400), false, loopback_paths);
    assert!(r.relayed_at_switch > 100, "the stream started on the relay");
    for c in &r.changes {
        let c = c.lock().unwrap();
        assert!(
            matches!(c.as_slice(), [(_, PathChange::Direct { .. })]),
            "one change, to direct: {c:?}"
        );
    }
    // After the switch the relay carries at most the datagrams already on their way.
    let after = r.relayed.load(Ordering::Relaxed) - r.relayed_at_switch;
    assert!(
        after < r.relayed_at_switch,
        "relayed {after} datagrams after the switch"
    );
}

#[test]
fn a_direct_path_that_never_answers_is_given_up_for_the_relay() {
    // Each side's "peer" is a socket nobody reads: our probes go unanswered.
    let holes = [loopback(), loopback()];
    let r = run(Duration::from_millis(200), false, || {
        let [ha, hb] = [&holes[0], &holes[1]].map(|h| h.local_addr().unwrap());
        [
            DirectPath {
                socket: loopback(),
                remote: ha,
            },
            DirectPath {
                socket: loopback(),
                remote: hb,
            },
        ]
    });
    for c in &r.changes {
        let c = c.lock().unwrap();
        match c.as_slice() {
            [(t0, PathChange::Direct { .. }), (t1, PathChange::Relay { silent })] => {
                assert!(*silent >= Duration::from_millis(1000), "{silent:?}");
                assert!(*t1 - *t0 >= Duration::from_millis(1000));
            }
            other => panic!("to direct, then back to the relay: {other:?}"),
        }
    }
}

/// The relay going away (its queues close, as when the TURN server is gone) under a stream
/// that moved to the direct path: the stream goes on there to its end.
#[test]
fn the_relay_going_away_under_a_direct_stream_costs_nothing() {
    let r = run(Duration::from_millis(300), true, loopback_paths);
    for c in &r.changes {
        assert_eq!(c.lock().unwrap().len(), 1, "direct, and no change after");
    }
}

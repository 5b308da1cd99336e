//! QUIC through the relayed socket (`transport::quic::Path::Relayed`), between threads: two
//! links whose sends land in each other's queue stand in for two TURN allocations, each
//! handing up what it received as coming from the other's relayed address. 1 MiB each way
//! arrives intact.

use punchraw::os::signals::Shutdown;
use punchraw::transport::quic::{run_stream_on, Identity, Path, RelayLink, Role};
use sha2::{Digest, Sha256};
use std::io::{self, Cursor, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
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

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Queue ends held for as long as the test runs: an allocation's receive queue stays open
/// when the peer's side ends (a TURN server does not close it), while a closed one tells
/// the socket that the allocation is gone and ends its stream at once.
type Held = [mpsc::Sender<(SocketAddr, Vec<u8>)>; 2];

/// Two links: what A sends to B's relayed address arrives at B from A's, and back. Every
/// `drop_every`-th datagram is lost (0: none).
fn links(a: SocketAddr, b: SocketAddr, drop_every: u64) -> (RelayLink, RelayLink, Held) {
    let (to_a, from_b) = mpsc::channel(4096);
    let (to_b, from_a) = mpsc::channel(4096);
    let held = [to_a.clone(), to_b.clone()];
    let sent = Arc::new(AtomicU64::new(0));
    let make = |me: SocketAddr, peer: SocketAddr, tx: mpsc::Sender<(SocketAddr, Vec<u8>)>| {
        let sent = sent.clone();
        Box::new(move |dst: SocketAddr, d: &[u8]| {
            let n = sent.fetch_add(1, Ordering::Relaxed) + 1;
            if dst == peer && !(drop_every > 0 && n % drop_every == 0) {
                let _ = tx.try_send((me, d.to_vec()));
            }
        })
    };
    (
        RelayLink {
            local: a,
            send: make(a, b, to_b),
            recv: from_b,
        },
        RelayLink {
            local: b,
            send: make(b, a, to_a),
            recv: from_a,
        },
        held,
    )
}

fn run(drop_every: u64) {
    let a: SocketAddr = "203.0.113.1:50000".parse().unwrap();
    let b: SocketAddr = "203.0.113.1:50002".parse().unwrap();
    let (la, lb, _held) = links(a, b, drop_every);
    let (ia, ib) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (pin_a, pin_b) = (ib.fingerprint(), ia.fingerprint());
    let (da, db) = (data(1 << 20, 1), data(1 << 20, 2));
    let (oa, ob) = (Sink::default(), Sink::default());
    let side = |link: RelayLink, peer, role, me: Identity, pin, input: Vec<u8>, out: Sink| {
        thread::spawn(move || {
            run_stream_on(
                Path::Relayed(link),
                peer,
                role,
                &me,
                pin,
                Cursor::new(input),
                out,
                Duration::from_secs(1),
                Duration::from_secs(10),
                &Shutdown::manual(),
            )
        })
    };
    let ta = side(la, b, Role::Client, ia, pin_a, da.clone(), oa.clone());
    let tb = side(lb, a, Role::Server, ib, pin_b, db.clone(), ob.clone());
    // Both ends are told: one side's failure is often what ended the other.
    let (ra, rb) = match (ta.join().unwrap(), tb.join().unwrap()) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => panic!("A's stream: {a:?}\nB's stream: {b:?}"),
    };
    assert_eq!((ra.sent, ra.received), (1 << 20, 1 << 20));
    assert_eq!((rb.sent, rb.received), (1 << 20, 1 << 20));
    let sha = |v: &[u8]| -> [u8; 32] { Sha256::digest(v).into() };
    assert_eq!(sha(&oa.0.lock().unwrap()), sha(&db), "B to A intact");
    assert_eq!(sha(&ob.0.lock().unwrap()), sha(&da), "A to B intact");
}

#[test]
fn a_stream_runs_between_two_relayed_addresses() {
    run(0);
}

#[test]
fn a_stream_through_a_lossy_relay_arrives_intact() {
    run(20);
}

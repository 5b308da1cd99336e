//! QUIC stream over a handed-over UDP socket, between threads on loopback: data integrity in
//! both directions, half-close, certificate pinning on both sides, strangers refused, a stop
//! request ending setup or transfer with the peer told why.

use punchraw::error::StreamError;
use punchraw::os::signals::Shutdown;
use punchraw::transport::quic::{run_stream, Identity, Role, StreamStats};
use sha2::{Digest, Sha256};
use std::io::{self, Cursor, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const KEEPALIVE: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(5);
/// Failure tests make the server wait out its whole timeout, so theirs is short.
const SHORT_TIMEOUT: Duration = Duration::from_secs(1);
/// Setup through a lossy path may need several handshake retransmissions (as `connect`).
const LOSSY_TIMEOUT: Duration = Duration::from_secs(10);

fn socket() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
    let addr = s.local_addr().unwrap();
    (s, addr)
}

/// Deterministic, incompressible-looking bytes (xorshift64*), different per seed.
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

#[derive(Clone, Default)]
struct Sink {
    buf: Arc<Mutex<Vec<u8>>>,
    /// Holds the first write back, so the other side finishes first.
    delay: Option<Duration>,
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if let Some(d) = self.delay.take() {
            thread::sleep(d);
        }
        self.buf.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.buf.lock().unwrap())
    }
}

struct Side {
    socket: UdpSocket,
    peer: SocketAddr,
    role: Role,
    me: Identity,
    pin: [u8; 32],
    input: Vec<u8>,
    out: Sink,
    timeout: Duration,
}

fn spawn(mut side: Side) -> thread::JoinHandle<Result<StreamStats, StreamError>> {
    let input = Cursor::new(std::mem::take(&mut side.input));
    spawn_with(side, input, Shutdown::manual())
}

/// As `spawn`, reading `input` instead of `side.input`, until `stop` is requested.
fn spawn_with(
    side: Side,
    input: impl Read + Send + 'static,
    stop: Shutdown,
) -> thread::JoinHandle<Result<StreamStats, StreamError>> {
    thread::spawn(move || {
        run_stream(
            side.socket,
            side.peer,
            side.role,
            &side.me,
            side.pin,
            input,
            side.out,
            KEEPALIVE,
            side.timeout,
            &stop,
        )
    })
}

/// Nobody asks these to stop.
fn never() -> Shutdown {
    Shutdown::manual()
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// What `run_stream` returned and what its output received.
type Outcome = (Result<StreamStats, StreamError>, Vec<u8>);

/// Client and server with correct pins and the given payloads; returns both results and
/// what each side received.
fn exchange(
    client_data: Vec<u8>,
    server_data: Vec<u8>,
    client_delay: Option<Duration>,
) -> (Outcome, Outcome) {
    let (cs, ca) = socket();
    let (ss, sa) = socket();
    let (ci, si) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (cpin, spin) = (si.fingerprint(), ci.fingerprint());
    let (cout, sout) = (
        Sink {
            delay: client_delay,
            ..Sink::default()
        },
        Sink::default(),
    );
    // The client goes first: its Initial waits in the server socket's buffer, as it may when
    // the server is still busy punching.
    let client = spawn(Side {
        socket: cs,
        peer: sa,
        role: Role::Client,
        me: ci,
        pin: cpin,
        input: client_data,
        out: cout.clone(),
        timeout: TIMEOUT,
    });
    thread::sleep(Duration::from_millis(150));
    let server = spawn(Side {
        socket: ss,
        peer: ca,
        role: Role::Server,
        me: si,
        pin: spin,
        input: server_data,
        out: sout.clone(),
        timeout: TIMEOUT,
    });
    let c = client.join().unwrap();
    let s = server.join().unwrap();
    ((c, cout.take()), (s, sout.take()))
}

#[test]
fn one_mebibyte_each_way() {
    const LEN: usize = 1 << 20;
    let (a, b) = (data(LEN, 1), data(LEN, 2));
    let (ha, hb) = (sha(&a), sha(&b));
    let started = Instant::now();
    let ((c, c_got), (s, s_got)) = exchange(a, b, None);
    let (c, s) = (c.expect("client"), s.expect("server"));
    let both = StreamStats {
        sent: LEN as u64,
        received: LEN as u64,
    };
    assert_eq!(c, both);
    assert_eq!(s, both);
    assert_eq!(sha(&c_got), hb, "client received the server's data");
    assert_eq!(sha(&s_got), ha, "server received the client's data");
    eprintln!("1 MiB each way in {:?}", started.elapsed());
}

#[test]
fn one_side_sends_nothing() {
    const LEN: usize = 100 * 1024;
    for (client_len, server_len) in [(0, LEN), (LEN, 0), (0, 0)] {
        let (a, b) = (data(client_len, 3), data(server_len, 4));
        let ((c, c_got), (s, s_got)) = exchange(a.clone(), b.clone(), None);
        let (c, s) = (c.expect("client"), s.expect("server"));
        assert_eq!((c.sent, c.received), (client_len as u64, server_len as u64));
        assert_eq!((s.sent, s.received), (server_len as u64, client_len as u64));
        assert!(
            c_got == b && s_got == a,
            "data of {client_len}/{server_len}"
        );
    }
}

#[test]
fn slow_output_still_gets_everything_after_the_peer_closed() {
    // The server is done long before the client has written what it received; the server's
    // close must not cut the client's output short.
    const LEN: usize = 512 * 1024;
    let b = data(LEN, 5);
    let ((c, c_got), (s, _)) = exchange(Vec::new(), b.clone(), Some(Duration::from_millis(500)));
    assert_eq!(c.expect("client").received, LEN as u64);
    assert_eq!(s.expect("server").sent, LEN as u64);
    assert!(c_got == b);
}

/// Runs a pair where `wrong_on` pins a certificate that is not the peer's.
fn wrong_pin(wrong_on: Role) -> (StreamError, StreamError) {
    let (cs, ca) = socket();
    let (ss, sa) = socket();
    let (ci, si) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let other = Identity::generate().unwrap().fingerprint();
    let (mut cpin, mut spin) = (si.fingerprint(), ci.fingerprint());
    match wrong_on {
        Role::Client => cpin = other,
        Role::Server => spin = other,
    }
    let server = spawn(Side {
        socket: ss,
        peer: ca,
        role: Role::Server,
        me: si,
        pin: spin,
        input: data(1000, 6),
        out: Sink::default(),
        timeout: SHORT_TIMEOUT,
    });
    let client = spawn(Side {
        socket: cs,
        peer: sa,
        role: Role::Client,
        me: ci,
        pin: cpin,
        input: data(1000, 7),
        out: Sink::default(),
        timeout: SHORT_TIMEOUT,
    });
    let c = client.join().unwrap().expect_err("client must fail");
    let s = server.join().unwrap().expect_err("server must fail");
    (c, s)
}

#[test]
fn wrong_pin_on_client() {
    let (c, s) = wrong_pin(Role::Client);
    assert!(
        c.to_string().contains("peer authentication failed"),
        "client: {c}"
    );
    assert!(
        matches!(c, StreamError::PeerAuthFailed { .. }),
        "client: {c:?}"
    );
    assert!(
        matches!(s, StreamError::RejectedByPeer { .. }),
        "server: {s}"
    );
    eprintln!("client: {c}\nserver: {s}");
}

#[test]
fn wrong_pin_on_server() {
    let (c, s) = wrong_pin(Role::Server);
    assert!(
        s.to_string().contains("peer authentication failed"),
        "server: {s}"
    );
    assert!(
        matches!(s, StreamError::PeerAuthFailed { .. }),
        "server: {s:?}"
    );
    assert!(
        matches!(c, StreamError::RejectedByPeer { .. }),
        "client: {c}"
    );
    eprintln!("client: {c}\nserver: {s}");
}

#[test]
fn strangers_are_refused_and_the_real_client_gets_through() {
    let (cs, ca) = socket();
    let (ss, sa) = socket();
    let (ci, si) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let server_fp = si.fingerprint();
    let server_data = data(50_000, 8);
    let sout = Sink::default();
    let server = spawn(Side {
        socket: ss,
        peer: ca,
        role: Role::Server,
        me: si,
        pin: ci.fingerprint(),
        input: server_data.clone(),
        out: sout.clone(),
        timeout: TIMEOUT,
    });
    let stranger = |socket: UdpSocket| {
        run_stream(
            socket,
            sa,
            Role::Client,
            &Identity::generate().unwrap(),
            server_fp,
            Cursor::new(b"let me in".to_vec()),
            Sink::default(),
            KEEPALIVE,
            TIMEOUT,
            &never(),
        )
        .expect_err("a stranger must be refused")
    };
    // From another address: refused before any handshake.
    let e = stranger(socket().0);
    assert!(matches!(e, StreamError::Refused { .. }), "{e}");
    // From the peer's own address but with another certificate: refused by the pin.
    let e = stranger(cs.try_clone().unwrap());
    assert!(matches!(e, StreamError::RejectedByPeer { .. }), "{e}");

    let cout = Sink::default();
    let c = run_stream(
        cs,
        sa,
        Role::Client,
        &ci,
        server_fp,
        Cursor::new(b"it's me".to_vec()),
        cout.clone(),
        KEEPALIVE,
        TIMEOUT,
        &never(),
    )
    .expect("the real client");
    let s = server.join().unwrap().expect("server");
    assert_eq!(c.received, server_data.len() as u64);
    assert_eq!(s.received, 7);
    assert_eq!(cout.take(), server_data);
    assert_eq!(sout.take(), b"it's me");
}

#[test]
fn timeouts_say_what_was_missing() {
    let quick = Duration::from_secs(1);
    // Nobody runs QUIC behind the client's peer address.
    let (_silent, silent_addr) = socket();
    let (cs, _) = socket();
    let me = Identity::generate().unwrap();
    let e = run_stream(
        cs,
        silent_addr,
        Role::Client,
        &me,
        [0; 32],
        io::empty(),
        io::sink(),
        KEEPALIVE,
        quick,
        &never(),
    )
    .expect_err("no server");
    assert!(
        e.to_string().contains(&format!(
            "QUIC handshake with {silent_addr} timed out after 1 s"
        )),
        "{e}"
    );

    // Only a stranger comes to the server: its timeout names that address.
    let (ss, sa) = socket();
    let (_, absent_peer) = socket();
    let server = spawn(Side {
        socket: ss,
        peer: absent_peer,
        role: Role::Server,
        me: Identity::generate().unwrap(),
        pin: [0; 32],
        input: Vec::new(),
        out: Sink::default(),
        timeout: quick,
    });
    let (stranger, stranger_addr) = socket();
    let refused = run_stream(
        stranger,
        sa,
        Role::Client,
        &me,
        [0; 32],
        io::empty(),
        io::sink(),
        KEEPALIVE,
        quick,
        &never(),
    )
    .expect_err("refused");
    assert!(matches!(refused, StreamError::Refused { .. }), "{refused}");
    let e = server.join().unwrap().expect_err("server times out");
    assert!(
        matches!(e, StreamError::HandshakeTimeout { .. })
            && e.to_string().contains(&stranger_addr.to_string()),
        "{e}"
    );
}

/// A userspace stand-in for a path through two lossy NATs: forwards datagrams between a
/// client and a server and drops each one at either of two hops with `loss_pct` percent,
/// independently, in both directions and for every kind of packet (ACKs included).
struct LossyRelay {
    /// The address the client sends to (its "peer").
    for_client: SocketAddr,
    /// The address the server sees the client at (its "peer").
    for_server: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl LossyRelay {
    fn start(client: SocketAddr, server: SocketAddr, loss_pct: u64, seed: u64) -> Self {
        Self::start_delayed(client, server, loss_pct, seed, Duration::ZERO)
    }

    /// As `start`, holding every datagram `one_way` before it goes on (in order).
    fn start_delayed(
        client: SocketAddr,
        server: SocketAddr,
        loss_pct: u64,
        seed: u64,
        one_way: Duration,
    ) -> Self {
        let (to_client, for_client) = socket();
        let (to_server, for_server) = socket();
        let stop = Arc::new(AtomicBool::new(false));
        let forward = |from: &UdpSocket, to: &UdpSocket, dest: SocketAddr, seed: u64| {
            let (from, to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
            from.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let stop = stop.clone();
            let (held_tx, held_rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let sender = thread::spawn(move || {
                for (due, datagram) in held_rx {
                    thread::sleep(due.saturating_duration_since(Instant::now()));
                    let _ = to.send_to(&datagram, dest);
                }
            });
            let receiver = thread::spawn(move || {
                let mut x = seed | 1;
                let mut hop_drops = || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % 100 < loss_pct
                };
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, _)) = from.recv_from(&mut buf) else {
                        continue;
                    };
                    // Two NATs on the way, each dropping on its own.
                    let dropped = hop_drops() | hop_drops();
                    if !dropped {
                        let _ = held_tx.send((Instant::now() + one_way, buf[..n].to_vec()));
                    }
                }
                // Dropping `held_tx` ends the sender.
            });
            [receiver, sender]
        };
        let threads = [
            forward(&to_client, &to_server, server, seed),
            forward(&to_server, &to_client, client, seed.wrapping_add(1)),
        ]
        .into_iter()
        .flatten()
        .collect();
        LossyRelay {
            for_client,
            for_server,
            stop,
            threads,
        }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A client sending `a` and a server sending `b`, through the relay `start` makes between
/// their addresses; returns it (still running) and each side's result and what it received.
fn through_relay(
    a: Vec<u8>,
    b: Vec<u8>,
    start: impl FnOnce(SocketAddr, SocketAddr) -> LossyRelay,
) -> (LossyRelay, Outcome, Outcome) {
    let (cs, ca) = socket();
    let (ss, sa) = socket();
    let relay = start(ca, sa);
    let (ci, si) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (cpin, spin) = (si.fingerprint(), ci.fingerprint());
    let (cout, sout) = (Sink::default(), Sink::default());
    let side = |socket, peer, role, me, pin, input, out: &Sink| Side {
        socket,
        peer,
        role,
        me,
        pin,
        input,
        out: out.clone(),
        timeout: LOSSY_TIMEOUT,
    };
    let client = spawn(side(cs, relay.for_client, Role::Client, ci, cpin, a, &cout));
    let server = spawn(side(ss, relay.for_server, Role::Server, si, spin, b, &sout));
    let c = client.join().unwrap();
    let s = server.join().unwrap();
    (relay, (c, cout.take()), (s, sout.take()))
}

#[test]
fn one_mebibyte_each_way_through_20_percent_loss_at_two_hops() {
    // About 36% of the packets are lost in each direction, ACKs included, as between two
    // hosts behind NATs that drop 20% each (the NAT lab's --loss 20).
    const LEN: usize = 1 << 20;
    for try_no in 0..3u64 {
        let (a, b) = (data(LEN, 10 + try_no), data(LEN, 20 + try_no));
        let started = Instant::now();
        let (relay, (c, cout), (s, sout)) = through_relay(a.clone(), b.clone(), |ca, sa| {
            LossyRelay::start(ca, sa, 20, 0x5eed + try_no)
        });
        let took = started.elapsed();
        drop(relay);
        eprintln!("try {try_no}: 1 MiB each way through ~36% loss per direction in {took:?}");
        let (c, s) = (
            c.unwrap_or_else(|e| panic!("try {try_no}: client: {e}")),
            s.unwrap_or_else(|e| panic!("try {try_no}: server: {e}")),
        );
        assert_eq!(
            (c.sent, c.received),
            (LEN as u64, LEN as u64),
            "try {try_no}"
        );
        assert_eq!(
            (s.sent, s.received),
            (LEN as u64, LEN as u64),
            "try {try_no}"
        );
        assert!(cout == b, "try {try_no}: client received the server's data");
        assert!(sout == a, "try {try_no}: server received the client's data");
        // How long it took is printed, not asserted: on a loaded 2-core CI machine the same
        // transfer took 31 s where it takes 3 s alone. Speed belongs in a benchmark.
    }
}

/// A long path with loss (10% at each of two hops, so about 19% per direction, 160 ms RTT)
/// leaves many holes in what the receiver holds; quinn's ordered reassembly refuses more
/// than 1,024 pieces and closed the connection ("too many gaps in stream buffer"): here, and
/// in every lab run of 32 MiB with 5% loss at each NAT. Read unordered and put in order by
/// punchraw, the stream arrives whole.
#[test]
fn thirty_two_mebibytes_through_loss_on_a_long_path_arrive_whole() {
    const LEN: usize = 32 << 20;
    let a = data(LEN, 77);
    let started = Instant::now();
    let (relay, (c, cout), (s, sout)) = through_relay(a.clone(), Vec::new(), |ca, sa| {
        LossyRelay::start_delayed(ca, sa, 10, 0x10ad, Duration::from_millis(80))
    });
    let (c, s) = (c.expect("client"), s.expect("server"));
    eprintln!(
        "32 MiB through ~19% loss at 160 ms RTT in {:?}",
        started.elapsed()
    );
    drop(relay);
    assert_eq!((c.sent, s.received), (LEN as u64, LEN as u64));
    assert!(sout == a, "the server received the client's data in order");
    assert!(cout.is_empty());
}

/// An input that stays open, like a pipe whose writer never closes it: yields what is sent to
/// it and ends only when the sender is dropped.
struct OpenPipe(mpsc::Receiver<Vec<u8>>);

impl Read for OpenPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.recv() {
            Ok(chunk) => {
                // The tests send chunks far smaller than the reader's buffer.
                buf[..chunk.len()].copy_from_slice(&chunk);
                Ok(chunk.len())
            }
            Err(_) => Ok(0),
        }
    }
}

/// Generous: on loopback the stop takes well under a second (one poll plus 3 PTO).
const STOP_BOUND: Duration = Duration::from_secs(10);

/// Joins `h`, failing the test if it is still running after `bound`.
fn join_within<T>(h: thread::JoinHandle<T>, bound: Duration, what: &str) -> T {
    let end = Instant::now() + bound;
    while !h.is_finished() {
        assert!(
            Instant::now() < end,
            "{what} still running {bound:?} after the stop"
        );
        thread::sleep(Duration::from_millis(10));
    }
    h.join().expect("no panic")
}

/// Waits until `sink` holds at least `n` bytes.
fn wait_for_bytes(sink: &Sink, n: usize, what: &str) {
    let end = Instant::now() + TIMEOUT * 2;
    while sink.buf.lock().unwrap().len() < n {
        assert!(Instant::now() < end, "{what} received nothing");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Both sides' inputs stay open, so the transfer would run forever; `stopping` is asked to
/// stop once data flows both ways.
fn stop_mid_transfer(stopping: Role) {
    let (cs, ca) = socket();
    let (ss, sa) = socket();
    let (ci, si) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (cpin, spin) = (si.fingerprint(), ci.fingerprint());
    let (cout, sout) = (Sink::default(), Sink::default());
    let stop = Shutdown::manual();
    // The stopping side sends without end; the other a greeting, then nothing, input open.
    let (greet, pipe) = mpsc::channel();
    greet.send(b"hello".to_vec()).unwrap();
    let (c_in, s_in): (Box<dyn Read + Send>, Box<dyn Read + Send>) = match stopping {
        Role::Client => (Box::new(io::repeat(b'x')), Box::new(OpenPipe(pipe))),
        Role::Server => (Box::new(OpenPipe(pipe)), Box::new(io::repeat(b'x'))),
    };
    let stop_of = |role: Role| {
        if role == stopping {
            stop.clone()
        } else {
            never()
        }
    };
    let client = spawn_with(
        Side {
            socket: cs,
            peer: sa,
            role: Role::Client,
            me: ci,
            pin: cpin,
            input: Vec::new(),
            out: cout.clone(),
            timeout: TIMEOUT,
        },
        c_in,
        stop_of(Role::Client),
    );
    let server = spawn_with(
        Side {
            socket: ss,
            peer: ca,
            role: Role::Server,
            me: si,
            pin: spin,
            input: Vec::new(),
            out: sout.clone(),
            timeout: TIMEOUT,
        },
        s_in,
        stop_of(Role::Server),
    );
    wait_for_bytes(&cout, 5, "the client");
    wait_for_bytes(&sout, 5, "the server");
    stop.trigger();
    let (stopped, other) = match stopping {
        Role::Client => (client, server),
        Role::Server => (server, client),
    };
    let e = join_within(stopped, STOP_BOUND, "the stopped side").expect_err("stopped");
    assert!(matches!(e, StreamError::Interrupted), "stopped side: {e}");
    let e = join_within(other, STOP_BOUND, "its peer").expect_err("the peer was stopped");
    assert!(
        matches!(&e, StreamError::ClosedByPeer { reason, .. } if reason == "interrupted"),
        "the peer: {e:?}"
    );
    eprintln!("{stopping:?} stopped; its peer: {e}");
    // The open pipe's writer is dropped only now, so the input never ended before.
    drop(greet);
}

#[test]
fn a_stopped_client_ends_the_transfer_and_tells_the_server() {
    stop_mid_transfer(Role::Client)
}

#[test]
fn a_stopped_server_ends_the_transfer_and_tells_the_client() {
    stop_mid_transfer(Role::Server)
}

#[test]
fn a_stop_during_setup_ends_the_wait() {
    // Nobody is at the peer address: without the stop, each side would wait out the timeout.
    for role in [Role::Client, Role::Server] {
        let (s, _) = socket();
        let (_absent, absent_addr) = socket();
        let stop = Shutdown::manual();
        let h = spawn_with(
            Side {
                socket: s,
                peer: absent_addr,
                role,
                me: Identity::generate().unwrap(),
                pin: [0; 32],
                input: Vec::new(),
                out: Sink::default(),
                timeout: Duration::from_secs(60),
            },
            io::empty(),
            stop.clone(),
        );
        thread::sleep(Duration::from_millis(300));
        stop.trigger();
        let e = join_within(h, STOP_BOUND, &format!("the {role:?}")).expect_err("stopped");
        assert!(matches!(e, StreamError::Interrupted), "{role:?}: {e}");
    }
}

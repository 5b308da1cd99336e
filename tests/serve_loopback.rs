//! `punchraw serve` over real sockets on loopback: 127.0.0.1 and 127.0.0.2 (both on `lo` on
//! Linux) stand in for the two addresses of an RFC 5780 server.

use punchraw::core::server::{EndpointId, ServerConfig};
use punchraw::core::stun::{
    attr_type, Attribute, Class, Encoder, Message, MessageType, TransactionId,
};
use punchraw::driver::serve::{self, ServeStats, ServerHandle, MAX_TCP_CONNECTIONS};
use punchraw::os::signals::Shutdown;
use rand::Rng;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const IP1: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const IP2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn start(alternate: bool) -> (ServerHandle, Shutdown) {
    let shutdown = Shutdown::manual();
    let cfg = ServerConfig {
        ip: IP1,
        alt_ip: alternate.then_some(IP2),
        port: 0,
        alt_port: 0,
        software: Some("punchraw-test".into()),
        per_source_limit: None,
        seed: 0,
    };
    let h = serve::spawn(cfg, shutdown.clone()).expect("server starts on loopback");
    (h, shutdown)
}

/// Triggers shutdown and checks that every thread is gone within 2 s.
fn stop(h: ServerHandle, shutdown: &Shutdown) -> ServeStats {
    let t0 = Instant::now();
    shutdown.trigger();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(h.join()).unwrap());
    let stats = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("join() returns within 2 s of shutdown");
    assert_eq!(stats.thread_panics, 0, "{stats}");
    eprintln!("stopped in {:?}: {stats}", t0.elapsed());
    stats
}

fn request(attrs: &[Attribute<'_>]) -> (Vec<u8>, TransactionId) {
    let tid = TransactionId::random(&mut rand::rng());
    let mut v = Vec::new();
    let mut e = Encoder::new(&mut v, MessageType::BINDING_REQUEST, tid);
    for a in attrs {
        e.push(a);
    }
    e.fingerprint();
    (v, tid)
}

fn client(ip: IpAddr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    s
}

/// Sends until a response with this transaction ID arrives (UDP may drop), for up to `within`.
fn exchange(
    sock: &UdpSocket,
    to: SocketAddr,
    attrs: &[Attribute<'_>],
    within: Duration,
) -> (Vec<u8>, SocketAddr) {
    let (req, tid) = request(attrs);
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        sock.send_to(&req, to).unwrap();
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if Message::parse(&buf[..n]).is_ok_and(|m| m.transaction_id() == tid) {
                        return (buf[..n].to_vec(), from);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
    panic!("no answer from {to} within {within:?}");
}

fn addr_attr(m: &Message<'_>, typ: u16) -> Option<SocketAddr> {
    match m.get(typ)? {
        Ok(Attribute::XorMappedAddress(a))
        | Ok(Attribute::MappedAddress(a))
        | Ok(Attribute::ResponseOrigin(a))
        | Ok(Attribute::OtherAddress(a)) => Some(a),
        other => panic!("0x{typ:04x}: {other:?}"),
    }
}

fn error_code(m: &Message<'_>) -> Option<u16> {
    match m.get(attr_type::ERROR_CODE)? {
        Ok(Attribute::ErrorCode(e)) => Some(e.code),
        other => panic!("ERROR-CODE: {other:?}"),
    }
}

#[test]
fn ephemeral_ports_are_reported_and_distinct() {
    let (h, sd) = start(true);
    let e = h.endpoints().to_vec();
    assert_eq!(e.len(), 4);
    let (p, a) = (h.config().port, h.config().alt_port);
    assert!(p != 0 && a != 0 && p != a, "{p} {a}");
    assert_eq!(e[0], (EndpointId(0), SocketAddr::new(IP1, p)));
    assert_eq!(e[1], (EndpointId(1), SocketAddr::new(IP1, a)));
    assert_eq!(e[2], (EndpointId(2), SocketAddr::new(IP2, p)));
    assert_eq!(e[3], (EndpointId(3), SocketAddr::new(IP2, a)));
    stop(h, &sd);
}

#[test]
fn udp_binding_on_every_endpoint() {
    let (h, sd) = start(true);
    let c = client(IP1);
    let me = c.local_addr().unwrap();
    for &(_, addr) in h.endpoints() {
        let (resp, from) = exchange(&c, addr, &[], Duration::from_secs(2));
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
        assert_eq!(from, addr, "answered from the socket asked");
        assert_eq!(addr_attr(&m, attr_type::XOR_MAPPED_ADDRESS), Some(me));
        assert_eq!(addr_attr(&m, attr_type::MAPPED_ADDRESS), Some(me));
        assert_eq!(addr_attr(&m, attr_type::RESPONSE_ORIGIN), Some(addr));
        // Always the alternate endpoint (what coturn's client expects).
        let other = h.addr(EndpointId(3)).unwrap();
        assert_eq!(addr_attr(&m, attr_type::OTHER_ADDRESS), Some(other));
    }
    let stats = stop(h, &sd);
    assert!(stats.udp.success >= 4, "{stats}");
}

#[test]
fn change_request_is_answered_from_the_right_socket() {
    let (h, sd) = start(true);
    let c = client(IP1);
    for &(id, addr) in h.endpoints() {
        for (ip, port) in [(false, true), (true, false), (true, true)] {
            let change = Attribute::ChangeRequest {
                change_ip: ip,
                change_port: port,
            };
            let (resp, from) = exchange(&c, addr, &[change], Duration::from_secs(2));
            let want = h
                .addr(EndpointId(id.0 ^ (u8::from(ip) << 1) ^ u8::from(port)))
                .unwrap();
            assert_eq!(from, want, "{addr} change ip {ip} port {port}");
            let m = Message::parse(&resp).unwrap();
            assert_eq!(addr_attr(&m, attr_type::RESPONSE_ORIGIN), Some(want));
        }
    }
    stop(h, &sd);
}

#[test]
fn change_request_without_alternate_is_refused() {
    let (h, sd) = start(false);
    assert_eq!(h.endpoints().len(), 1);
    let c = client(IP1);
    let change = Attribute::ChangeRequest {
        change_ip: true,
        change_port: false,
    };
    let (resp, from) = exchange(&c, h.endpoints()[0].1, &[change], Duration::from_secs(2));
    assert_eq!(from, h.endpoints()[0].1);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(error_code(&m), Some(420));
    stop(h, &sd);
}

#[test]
fn response_port_sends_to_the_other_port_of_the_same_ip() {
    let (h, sd) = start(true);
    let asker = client(IP1);
    let target = client(IP1);
    target
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (req, tid) = request(&[Attribute::ResponsePort(target.local_addr().unwrap().port())]);
    asker.send_to(&req, h.endpoints()[0].1).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = target
        .recv_from(&mut buf)
        .expect("the RESPONSE-PORT socket gets the answer");
    assert_eq!(from, h.endpoints()[0].1);
    let m = Message::parse(&buf[..n]).unwrap();
    assert_eq!(m.transaction_id(), tid);
    assert_eq!(
        addr_attr(&m, attr_type::XOR_MAPPED_ADDRESS),
        Some(asker.local_addr().unwrap())
    );
    stop(h, &sd);
}

fn read_msg(s: &mut TcpStream) -> Vec<u8> {
    let mut v = vec![0u8; 20];
    s.read_exact(&mut v).unwrap();
    let len = Message::frame_len(&v).unwrap();
    v.resize(len, 0);
    s.read_exact(&mut v[20..]).unwrap();
    v
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

#[test]
fn tcp_binding_on_every_endpoint_two_messages_per_connection() {
    let (h, sd) = start(true);
    for &(_, addr) in h.endpoints() {
        let mut s = tcp(addr);
        let me = s.local_addr().unwrap();
        let (r1, t1) = request(&[]);
        let (r2, t2) = request(&[]);
        // Both in one write, the second split: framing must not depend on segment boundaries.
        let both = [r1, r2].concat();
        s.write_all(&both[..30]).unwrap();
        thread::sleep(Duration::from_millis(20));
        s.write_all(&both[30..]).unwrap();
        for tid in [t1, t2] {
            let resp = read_msg(&mut s);
            let m = Message::parse(&resp).unwrap();
            assert_eq!(m.transaction_id(), tid);
            assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
            assert_eq!(addr_attr(&m, attr_type::XOR_MAPPED_ADDRESS), Some(me));
            assert_eq!(addr_attr(&m, attr_type::RESPONSE_ORIGIN), Some(addr));
        }
        // CHANGE-REQUEST cannot be honoured on a connection: 420 on the same connection.
        let (r3, t3) = request(&[Attribute::ChangeRequest {
            change_ip: true,
            change_port: true,
        }]);
        s.write_all(&r3).unwrap();
        let resp = read_msg(&mut s);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.transaction_id(), t3);
        assert_eq!(m.message_type().class, Class::Error);
        assert_eq!(error_code(&m), Some(420));
    }
    let stats = stop(h, &sd);
    assert_eq!(stats.tcp_accepted, 4, "{stats}");
    assert_eq!(stats.tcp.success, 8, "{stats}");
}

fn assert_closed_soon(s: &mut TcpStream) {
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("server answered junk with {n} bytes"),
        Err(e) => panic!("connection not closed after {:?}: {e}", t0.elapsed()),
    }
}

#[test]
fn tcp_junk_and_oversized_frames_close_the_connection() {
    let (h, sd) = start(false);
    let addr = h.endpoints()[0].1;

    let mut s = tcp(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_closed_soon(&mut s);

    let mut s = tcp(addr);
    let (mut big, _) = request(&[]);
    big[2..4].copy_from_slice(&8000u16.to_be_bytes());
    s.write_all(&big).unwrap();
    assert_closed_soon(&mut s);

    // A good message first is still answered before junk closes the connection.
    let mut s = tcp(addr);
    let (good, tid) = request(&[]);
    s.write_all(&[good, vec![0xff; 8]].concat()).unwrap();
    let m = read_msg(&mut s);
    assert_eq!(Message::parse(&m).unwrap().transaction_id(), tid);
    assert_closed_soon(&mut s);

    let stats = stop(h, &sd);
    assert_eq!(stats.tcp_closed_junk, 3, "{stats}");
}

#[test]
fn tcp_connections_beyond_the_limit_are_closed() {
    let (h, sd) = start(false);
    let addr = h.endpoints()[0].1;
    let mut open = Vec::new();
    for _ in 0..MAX_TCP_CONNECTIONS {
        let mut s = tcp(addr);
        // An answer proves the server accepted it and holds a slot for it.
        let (r, tid) = request(&[]);
        s.write_all(&r).unwrap();
        assert_eq!(
            Message::parse(&read_msg(&mut s)).unwrap().transaction_id(),
            tid
        );
        open.push(s);
    }
    let mut extra = tcp(addr);
    let (r, _) = request(&[]);
    let _ = extra.write_all(&r);
    assert_closed_soon(&mut extra);
    assert_eq!(h.stats().tcp_rejected, 1);

    // Freeing a slot lets the next connection in.
    drop(open.pop());
    let t0 = Instant::now();
    while h.stats().tcp_active as usize >= MAX_TCP_CONNECTIONS {
        assert!(t0.elapsed() < Duration::from_secs(2), "slot not freed");
        thread::sleep(Duration::from_millis(10));
    }
    let mut s = tcp(addr);
    let (r, tid) = request(&[]);
    s.write_all(&r).unwrap();
    assert_eq!(
        Message::parse(&read_msg(&mut s)).unwrap().transaction_id(),
        tid
    );
    stop(h, &sd);
}

#[test]
fn survives_a_flood_of_malformed_datagrams() {
    let (h, sd) = start(true);
    let targets: Vec<SocketAddr> = h.endpoints().iter().map(|e| e.1).collect();
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let targets = targets.clone();
            thread::spawn(move || {
                let s = UdpSocket::bind((IP1, 0)).unwrap();
                let mut rng = rand::rng();
                let mut buf = [0u8; 1500];
                for _ in 0..5000 {
                    let n = rng.random_range(0..buf.len());
                    rng.fill(&mut buf[..n]);
                    if n >= 4 && rng.random_bool(0.5) {
                        // STUN-looking header with a length that does not match.
                        buf[0] &= 0x3f;
                        let wrong = (n as u16).wrapping_sub(20).wrapping_add(4);
                        buf[2..4].copy_from_slice(&wrong.to_be_bytes());
                    }
                    if Message::parse(&buf[..n]).is_ok() {
                        buf[0] |= 0x80;
                    }
                    let to = targets[rng.random_range(0..targets.len())];
                    // The kernel may refuse momentarily when its queue is full; that is fine.
                    let _ = s.send_to(&buf[..n], to);
                }
            })
        })
        .collect();
    for f in flooders {
        f.join().unwrap();
    }
    let c = client(IP1);
    let t0 = Instant::now();
    let (resp, from) = exchange(&c, targets[0], &[], Duration::from_secs(1));
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(from, targets[0]);
    assert_eq!(
        Message::parse(&resp).unwrap().message_type(),
        MessageType::BINDING_SUCCESS
    );
    let stats = stop(h, &sd);
    assert!(stats.udp.malformed > 1000, "{stats}");
    assert!(stats.udp.success >= 1, "{stats}");
}

#[test]
fn shutdown_with_idle_connections_is_prompt() {
    let (h, sd) = start(true);
    // An idle TCP connection and a silent UDP socket must not hold shutdown up.
    let _idle = tcp(h.endpoints()[3].1);
    thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    stop(h, &sd);
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn stop_without_touching_the_shared_flag() {
    let (h, sd) = start(false);
    h.stop();
    let stats = h.join();
    assert!(!sd.requested());
    assert_eq!(stats.thread_panics, 0);
}

// ---- the built binary ----

/// Kills the child if a test fails before it exits on its own.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Proc {
    fn wait_for(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "punchraw did not exit within {within:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        self.0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }
}

fn punchraw(args: &[&str]) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_punchraw"))
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("punchraw runs"),
    )
}

/// A port free for both UDP and TCP on `ip` right now.
fn free_port(ip: IpAddr) -> u16 {
    loop {
        let u = UdpSocket::bind((ip, 0)).unwrap();
        let p = u.local_addr().unwrap().port();
        if TcpListener::bind((ip, p)).is_ok() {
            return p;
        }
    }
}

#[test]
fn binary_serves_and_exits_143_on_sigterm() {
    let port = free_port(IP1);
    let mut p = punchraw(&[
        "serve",
        "--listen",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ]);
    let server = SocketAddr::new(IP1, port);
    let c = client(IP1);
    let (resp, from) = exchange(&c, server, &[], Duration::from_secs(10));
    assert_eq!(from, server);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(
        addr_attr(&m, attr_type::XOR_MAPPED_ADDRESS),
        Some(c.local_addr().unwrap())
    );
    assert_eq!(
        m.get(attr_type::SOFTWARE),
        Some(Ok(Attribute::Software("punchraw")))
    );
    let mut s = tcp(server);
    let (r, tid) = request(&[]);
    s.write_all(&r).unwrap();
    assert_eq!(
        Message::parse(&read_msg(&mut s)).unwrap().transaction_id(),
        tid
    );

    let pid = libc::pid_t::try_from(p.0.id()).unwrap();
    // SAFETY: plain syscall on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let st = p.wait_for(Duration::from_secs(5));
    let err = p.stderr();
    // 128 + SIGTERM, like every command stopped by a signal.
    assert_eq!(st.code(), Some(143), "{st:?}\n{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(
        err.contains("behaviour discovery (RFC 5780) is off: give --alternate IP2 to enable it"),
        "{err}"
    );
    assert!(err.contains("stopped"), "{err}");
}

#[test]
fn binary_with_alternate_honours_change_request() {
    let (port, alt) = loop {
        let (p, a) = (free_port(IP1), free_port(IP1));
        let free =
            |ip, port| UdpSocket::bind((ip, port)).is_ok() && TcpListener::bind((ip, port)).is_ok();
        if p != a && free(IP2, p) && free(IP2, a) {
            break (p, a);
        }
    };
    let (ps, alts) = (port.to_string(), alt.to_string());
    let mut p = punchraw(&[
        "serve",
        "--listen",
        "127.0.0.1",
        "--alternate",
        "127.0.0.2",
        "--port",
        &ps,
        "--alt-port",
        &alts,
    ]);
    let c = client(IP1);
    exchange(&c, SocketAddr::new(IP1, port), &[], Duration::from_secs(10));
    let change = Attribute::ChangeRequest {
        change_ip: true,
        change_port: true,
    };
    let (resp, from) = exchange(
        &c,
        SocketAddr::new(IP1, port),
        &[change],
        Duration::from_secs(2),
    );
    assert_eq!(from, SocketAddr::new(IP2, alt));
    let m = Message::parse(&resp).unwrap();
    assert_eq!(
        addr_attr(&m, attr_type::OTHER_ADDRESS),
        Some(SocketAddr::new(IP2, alt))
    );

    let pid = libc::pid_t::try_from(p.0.id()).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let st = p.wait_for(Duration::from_secs(5));
    let err = p.stderr();
    assert_eq!(st.code(), Some(130), "{st:?}\n{err}");
    assert!(!err.contains("is off"), "{err}");
}

#[test]
fn binary_fails_on_a_port_in_use() {
    // Held over UDP.
    let held = UdpSocket::bind((IP1, 0)).unwrap();
    let port = held.local_addr().unwrap().port();
    let mut p = punchraw(&[
        "serve",
        "--listen",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ]);
    let st = p.wait_for(Duration::from_secs(5));
    let err = p.stderr();
    assert!(!st.success(), "{err}");
    assert_eq!(st.code(), Some(4), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");

    // Held over TCP only.
    let held = TcpListener::bind((IP1, 0)).unwrap();
    let port = held.local_addr().unwrap().port();
    if UdpSocket::bind((IP1, port)).is_err() {
        return; // someone else has the UDP port; the UDP case above covered it
    }
    let mut p = punchraw(&[
        "serve",
        "--listen",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ]);
    let st = p.wait_for(Duration::from_secs(5));
    let err = p.stderr();
    assert_eq!(st.code(), Some(4), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[test]
fn tcp_idle_connection_is_closed() {
    let (h, sd) = start(false);
    let mut s = tcp(h.endpoints()[0].1);
    s.set_read_timeout(Some(serve::TCP_IDLE_TIMEOUT + Duration::from_secs(2)))
        .unwrap();
    let t0 = Instant::now();
    assert_closed_soon(&mut s);
    let idle = t0.elapsed();
    assert!(
        idle + Duration::from_millis(500) >= serve::TCP_IDLE_TIMEOUT,
        "closed after {idle:?}"
    );
    let stats = stop(h, &sd);
    assert_eq!(stats.tcp_closed_idle, 1, "{stats}");
}

/// The TCP probe's and the TCP punch's primitive: Binding over TCP from one shared local port
/// to every endpoint in turn (SO_REUSEADDR/SO_REUSEPORT), each answer naming that port.
#[test]
fn tcp_bindings_from_one_shared_local_port() {
    use punchraw::driver::tcp_stun;
    let (h, shutdown) = start(true);
    // A listener on the port as well, as the punch keeps one: the connections still bind.
    let listener = tcp_stun::shared_port_socket(SocketAddr::new(IP1, 0)).expect("bind");
    listener.listen(8).expect("listen");
    let local = listener
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet");
    for &(_, ep) in h.endpoints() {
        let b = tcp_stun::binding(local, ep, &[], Duration::from_secs(2)).expect("binding");
        assert_eq!(b.local, local);
        assert_eq!(b.mapped, local, "no NAT on loopback");
        assert_eq!(b.other, h.addr(EndpointId(3)));
    }
    // Nothing listening: a clear connection error, not a hang.
    let closed = SocketAddr::new(IP1, free_port(IP1));
    let e = tcp_stun::binding(SocketAddr::new(IP1, 0), closed, &[], Duration::from_secs(2))
        .expect_err("nothing listens there");
    assert!(e.unreachable(), "{e}");
    stop(h, &shutdown);
}

/// The TCP prediction's side-by-side form: one request per endpoint from one shared port,
/// every answer in the order of the endpoints given and naming that port; an endpoint where
/// nothing listens fails alone, as a connection error.
#[test]
fn tcp_bindings_side_by_side_answer_in_order() {
    use punchraw::driver::tcp_stun;
    let (h, shutdown) = start(true);
    let listener = tcp_stun::shared_port_socket(SocketAddr::new(IP1, 0)).expect("bind");
    listener.listen(8).expect("listen");
    let local = listener
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet");
    let closed = SocketAddr::new(IP1, free_port(IP1));
    let mut eps: Vec<SocketAddr> = h.endpoints().iter().map(|&(_, ep)| ep).collect();
    eps.insert(1, closed);
    let got = tcp_stun::bindings_in_order(local, &eps, Duration::from_secs(2));
    assert_eq!(got.len(), eps.len());
    for (ep, r) in eps.iter().zip(&got) {
        if *ep == closed {
            let e = r.as_ref().expect_err("nothing listens there");
            assert!(e.unreachable(), "{e}");
            continue;
        }
        let b = r.as_ref().unwrap_or_else(|e| panic!("{ep}: {e}"));
        assert_eq!((b.server, b.local, b.mapped), (*ep, local, local));
    }
    stop(h, &shutdown);
}

fn connect_back_origin(m: &Message<'_>) -> Option<SocketAddr> {
    match m.get(attr_type::CONNECT_BACK_ORIGIN)? {
        Ok(Attribute::ConnectBackOrigin(a)) => Some(a),
        other => panic!("CONNECT-BACK-ORIGIN: {other:?}"),
    }
}

/// CONNECT-BACK: the server answers on the connection, names the endpoint it will connect
/// from, and a SYN from exactly that address and port reaches the client's port, where a
/// listener (sharing the port with the connection, as the probe's watcher would see it)
/// accepts it.
#[test]
fn tcp_connect_back_comes_from_the_promised_endpoint() {
    use punchraw::driver::tcp_stun;
    let (h, sd) = start(true);
    let primary = h.addr(EndpointId::PRIMARY).unwrap();
    for (change_ip, change_port, want) in [
        (false, true, EndpointId(1)),
        (true, true, EndpointId(3)),
        (true, false, EndpointId(2)),
    ] {
        // A fresh port each time: the last connection's TIME_WAIT holds its 4-tuple.
        let listener = tcp_stun::shared_port_socket(SocketAddr::new(IP1, 0)).expect("bind");
        listener.listen(8).expect("listen");
        let listener: TcpListener = listener.into();
        let local = listener.local_addr().unwrap();
        let origin = h.addr(want).unwrap();
        let sock = tcp_stun::shared_port_socket(local).expect("bind the shared port");
        sock.connect(&primary.into()).expect("connect");
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let (req, tid) = request(&[Attribute::ConnectBack {
            change_ip,
            change_port,
        }]);
        s.write_all(&req).unwrap();
        let resp = read_msg(&mut s);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.transaction_id(), tid);
        assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
        assert_eq!(addr_attr(&m, attr_type::XOR_MAPPED_ADDRESS), Some(local));
        assert_eq!(connect_back_origin(&m), Some(origin), "{m:?}");
        let (tx, rx) = mpsc::channel();
        let l = listener.try_clone().unwrap();
        thread::spawn(move || tx.send(l.accept().map(|(_, from)| from)));
        let from = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("the connect-back arrives within 2 s")
            .expect("accept");
        assert_eq!(from, origin, "SYN from the promised endpoint");
    }
    let stats = stop(h, &sd);
    assert_eq!(stats.tcp_connect_backs, 3, "{stats}");
}

/// Where CONNECT-BACK cannot be honoured the answer makes no promise: over UDP, and on a
/// server without an alternate address.
#[test]
fn connect_back_is_not_promised_over_udp_or_without_alternate() {
    let (h, sd) = start(true);
    let c = client(IP1);
    let cb = Attribute::ConnectBack {
        change_ip: true,
        change_port: true,
    };
    let to = h.addr(EndpointId::PRIMARY).unwrap();
    let (resp, _) = exchange(&c, to, std::slice::from_ref(&cb), Duration::from_secs(2));
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
    assert_eq!(connect_back_origin(&m), None);
    stop(h, &sd);

    let (req, _) = request(&[cb]);
    let (h, sd) = start(false);
    let mut s = tcp(h.addr(EndpointId::PRIMARY).unwrap());
    s.write_all(&req).unwrap();
    let resp = read_msg(&mut s);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
    assert_eq!(connect_back_origin(&m), None);
    let stats = stop(h, &sd);
    assert_eq!(stats.tcp_connect_backs, 0, "{stats}");
}

/// The listeners share their port with SO_REUSEPORT (for CONNECT-BACK), yet a server does
/// not start on a TCP port that another process's SO_REUSEPORT listener (another punchraw
/// serve, say) holds: it would silently share that listener's connections.
#[test]
fn tcp_port_held_by_a_reuseport_listener_is_refused() {
    use punchraw::driver::tcp_stun;
    let held = tcp_stun::shared_port_socket(SocketAddr::new(IP1, 0)).expect("bind");
    held.listen(8).expect("listen");
    let port = held.local_addr().unwrap().as_socket().unwrap().port();
    if UdpSocket::bind((IP1, port)).is_err() {
        return; // the UDP port is taken by someone else; that would fail first
    }
    let cfg = ServerConfig {
        ip: IP1,
        alt_ip: None,
        port,
        alt_port: 0,
        software: None,
        per_source_limit: None,
        seed: 0,
    };
    match serve::spawn(cfg, Shutdown::manual()) {
        Ok(h) => {
            h.stop();
            h.join();
            panic!("the server joined a foreign SO_REUSEPORT listener on port {port}");
        }
        Err(e) => assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}"),
    }
}

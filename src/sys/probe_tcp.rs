//! `punchraw probe`'s TCP half: makes the connections the TCP classifier
//! ([`crate::classify::tcp`]) needs, watches for the server's unsolicited SYNs, and hands the
//! observations over. Nothing here fails the probe: what cannot be measured ends up as a
//! reason in the report.
//!
//! Order, all on one thread and back to back (a lab NAT answers each in well under a
//! millisecond, and a sequential NAT's shared counter must see our allocation connections
//! one after another):
//!
//! 1. the AF_PACKET watcher, when CAP_NET_RAW allows it, so it already queues what comes;
//! 2. tests I-III of RFC 5780 section 4.3 over TCP from one local port L, which stays bound
//!    (SO_REUSEADDR/SO_REUSEPORT) for the whole run so nobody else gets it;
//! 3. the allocation connections, each from a fresh port;
//! 4. the two CONNECT-BACK connections, each from a fresh port and held open while the SYN
//!    is awaited (a NAT may drop a closed connection's mapping, RFC 5382 section 5), for
//!    about four round trips plus 300 ms.
//!
//! The SYN that arrives is answered by this host's kernel with a RST (nothing listens on the
//! port); that is fine, the capture saw it first.

use crate::classify::tcp::{classify, SynTest, TcpAnswer, TcpObservations, TcpReport};
use crate::classify::DEFAULT_ALLOC_SOCKETS;
use crate::stun::{attr_type, Attribute, Class, Encoder, Message, MessageType, TransactionId};
use crate::sys::capture::Capture;
use crate::sys::packet::Watcher;
use crate::sys::privileges::{self, CAP_NET_RAW};
use crate::sys::signals::Shutdown;
use crate::sys::tcp_stun::{self, shared_port_socket};
use crate::wire::{Seen, Segment};
use crate::Error;
use socket2::Socket;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest wait for one TCP Binding: room for one SYN retransmission (1 s, RFC 6298).
const BINDING_TIMEOUT: Duration = Duration::from_millis(2500);
/// The unsolicited SYN must arrive within this plus [`SYN_WAIT_RTTS`] measured round trips
/// of the CONNECT-BACK answer; it leaves the server right after that answer.
const SYN_WAIT_BASE: Duration = Duration::from_millis(300);
const SYN_WAIT_RTTS: u32 = 4;
/// Longest STUN response read; a Binding success is under 200 bytes.
const MAX_RESPONSE: usize = 2048;

/// Runs the TCP tests against `server` from `local_ip`. `hint` is the alternate endpoint the
/// UDP tests learned (so the watcher can be opened before the first connection).
pub fn classify_tcp(
    server: SocketAddr,
    local_ip: IpAddr,
    hint: Option<SocketAddr>,
    mut capture: Option<&mut Capture>,
    shutdown: &Shutdown,
) -> Result<TcpReport, Error> {
    let mut hosts = vec![server.ip()];
    hosts.extend(hint.map(|h| h.ip()).filter(|ip| *ip != server.ip()));
    let mut watcher = open_watcher(&hosts);

    // L stays bound (not listening) for the whole run, so the OS gives its port to nobody
    // else between the three mapping tests.
    let any = SocketAddr::new(local_ip, 0);
    let hold = shared_port_socket(any).map_err(|e| Error::io("cannot open a TCP socket", e))?;
    let local = hold
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| Error::io("getsockname", io::Error::other("not an inet socket")))?;

    let first = tcp_stun::binding(local, server, &[], BINDING_TIMEOUT);
    let mut o = TcpObservations {
        server,
        local,
        primary: Err(String::new()),
        rtt: None,
        alt_ip: None,
        alt_both: None,
        allocation: Vec::new(),
        filter_port: SynTest::Unknown(String::new()),
        filter_both: SynTest::Unknown(String::new()),
    };
    let base = match first {
        Ok(b) => b,
        Err(e) => {
            o.primary = Err(e.to_string());
            drain(&watcher, capture.as_deref_mut(), |_| {})?;
            return Ok(classify(&o));
        }
    };
    o.primary = Ok(TcpAnswer {
        mapped: base.mapped,
        other: base.other,
    });
    o.rtt = Some(base.rtt);
    tracing::info!(mapped = %base.mapped, rtt_ms = base.rtt.as_secs_f64() * 1000.0, "server answered over TCP");
    if let Some(other) = base.other {
        if !hosts.contains(&other.ip()) {
            // The UDP answer named no (or another) alternate: watch the one TCP named.
            drain(&watcher, capture.as_deref_mut(), |_| {})?;
            hosts.push(other.ip());
            watcher = open_watcher(&hosts);
        }
    }
    let stop = || {
        if shutdown.requested() {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    };

    // RFC 5780 section 4.3 tests II and III, from L.
    if let Some(other) = base.other {
        let alt_ip = SocketAddr::new(other.ip(), server.port());
        let m2 = tcp_stun::binding(local, alt_ip, &[], BINDING_TIMEOUT);
        let went = m2.is_ok();
        o.alt_ip = Some(m2.map(|b| b.mapped).map_err(|e| e.to_string()));
        stop()?;
        if went {
            o.alt_both = Some(
                tcp_stun::binding(local, other, &[], BINDING_TIMEOUT)
                    .map(|b| b.mapped)
                    .map_err(|e| e.to_string()),
            );
        }
    }
    drop(hold);
    drain(&watcher, capture.as_deref_mut(), |_| {})?;
    stop()?;

    // Allocation: fresh ports, one right after the other.
    for _ in 0..DEFAULT_ALLOC_SOCKETS {
        let b = tcp_stun::binding(any, server, &[], BINDING_TIMEOUT).ok();
        o.allocation
            .push(b.map(|b| (b.local.port(), b.mapped.port())));
    }
    drain(&watcher, capture.as_deref_mut(), |_| {})?;
    stop()?;

    // Filtering.
    // Without an alternate address no privilege would help, so that reason comes first.
    match (&watcher, base.other) {
        (_, None) => {
            let why = "the server has no RFC 5780 alternate address, so there is no other endpoint it could connect back from".to_string();
            o.filter_port = SynTest::Unknown(why.clone());
            o.filter_both = SynTest::Unknown(why);
        }
        (Err(why), Some(_)) => {
            o.filter_port = SynTest::Unknown(why.clone());
            o.filter_both = SynTest::Unknown(why.clone());
        }
        (Ok(w), Some(_)) => {
            let wait = SYN_WAIT_BASE + base.rtt * SYN_WAIT_RTTS;
            let [port, both] = connect_back_tests(w, any, server, wait, capture, shutdown)?;
            o.filter_port = port;
            o.filter_both = both;
        }
    }
    Ok(classify(&o))
}

fn open_watcher(hosts: &[IpAddr]) -> Result<Watcher, String> {
    if !privileges::has(CAP_NET_RAW) {
        return Err("watching for the server's SYN needs CAP_NET_RAW (an AF_PACKET socket); run as root or grant it with `setcap cap_net_raw+ep` on the binary".into());
    }
    Watcher::open(hosts).map_err(|e| {
        format!("cannot open the AF_PACKET socket that watches for the server's SYN: {e}")
    })
}

/// Reads every queued packet: into the capture, and what it is to `each`.
fn drain(
    watcher: &Result<Watcher, String>,
    mut capture: Option<&mut Capture>,
    mut each: impl FnMut(&crate::sys::packet::Packet),
) -> Result<(), Error> {
    let Ok(w) = watcher else {
        return Ok(());
    };
    loop {
        match w.recv() {
            Ok(Some(p)) => {
                if let Some(c) = capture.as_deref_mut() {
                    c.ip(&p.data, p.at)?;
                }
                each(&p);
            }
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "AF_PACKET receive failed");
                return Ok(());
            }
        }
    }
}

/// One CONNECT-BACK connection: open while its SYN is awaited.
struct Back {
    local: SocketAddr,
    stream: TcpStream,
    tid: TransactionId,
    result: Option<SynTest>,
    origin: Option<SocketAddr>,
}

/// RFC 5780 section 4.4 tests III (change port) and II (change IP and port) with a SYN: two
/// connections from fresh ports, both asked at once and awaited together.
fn connect_back_tests(
    w: &Watcher,
    any: SocketAddr,
    server: SocketAddr,
    wait: Duration,
    mut capture: Option<&mut Capture>,
    shutdown: &Shutdown,
) -> Result<[SynTest; 2], Error> {
    let flags = [(false, true), (true, true)];
    let mut backs: [Result<Back, String>; 2] =
        flags.map(|(ip, port)| ask_connect_back(any, server, ip, port));
    for b in backs.iter_mut() {
        let Ok(back) = b else { continue };
        if let Err(why) = read_promise(back, server) {
            back.result = Some(SynTest::Unknown(why));
        }
    }
    let deadline = Instant::now() + wait;
    loop {
        let mut seen: Vec<(SocketAddr, SocketAddr)> = Vec::new();
        loop {
            match w.recv() {
                Ok(Some(p)) => {
                    if let Some(c) = capture.as_deref_mut() {
                        c.ip(&p.data, p.at)?;
                    }
                    if let Some(Seen::Tcp {
                        src,
                        dst,
                        segment: Segment::Syn,
                        ..
                    }) = p.seen
                    {
                        if !p.outgoing {
                            seen.push((src, dst));
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "AF_PACKET receive failed");
                    break;
                }
            }
        }
        for b in backs.iter_mut().flatten() {
            if b.result.is_some() {
                continue;
            }
            let Some(origin) = b.origin else { continue };
            // After the NAT the SYN is addressed to our own port (and, without a NAT, to our
            // own address too).
            if seen
                .iter()
                .any(|&(src, dst)| src == origin && dst.port() == b.local.port())
            {
                tracing::info!(%origin, local = %b.local, "unsolicited SYN arrived");
                b.result = Some(SynTest::Watched {
                    origin,
                    arrived: true,
                });
            }
        }
        if shutdown.requested() {
            return Err(Error::Interrupted);
        }
        let open = backs.iter().flatten().any(|b| b.result.is_none());
        let now = Instant::now();
        if !open || now >= deadline {
            break;
        }
        let _ = w.wait((deadline - now).min(Duration::from_millis(50)));
    }
    Ok(backs.map(|b| match b {
        Err(why) => SynTest::Unknown(why),
        Ok(Back {
            result: Some(r), ..
        }) => r,
        Ok(Back {
            origin: Some(origin),
            ..
        }) => SynTest::Watched {
            origin,
            arrived: false,
        },
        // read_promise sets one of the two; kept total rather than trusted.
        Ok(_) => SynTest::Unknown("the CONNECT-BACK answer was not read".into()),
    }))
}

/// Connects from a fresh port and sends the Binding request with CONNECT-BACK.
fn ask_connect_back(
    any: SocketAddr,
    server: SocketAddr,
    change_ip: bool,
    change_port: bool,
) -> Result<Back, String> {
    let sock: Socket =
        shared_port_socket(any).map_err(|e| format!("cannot open a TCP socket: {e}"))?;
    sock.connect_timeout(&server.into(), BINDING_TIMEOUT)
        .map_err(|e| format!("cannot connect to {server} over TCP for the filtering test: {e}"))?;
    let local = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(any);
    let mut stream: TcpStream = sock.into();
    let _ = stream.set_nodelay(true);
    let tid = TransactionId::new_random();
    let mut req = Vec::with_capacity(40);
    {
        let mut e = Encoder::new(&mut req, MessageType::BINDING_REQUEST, tid);
        e.push(&Attribute::ConnectBack {
            change_ip,
            change_port,
        });
        e.fingerprint();
    }
    stream
        .set_write_timeout(Some(BINDING_TIMEOUT))
        .and_then(|()| stream.write_all(&req))
        .map_err(|e| format!("cannot send the CONNECT-BACK request to {server}: {e}"))?;
    Ok(Back {
        local,
        stream,
        tid,
        result: None,
        origin: None,
    })
}

/// Reads the answer to a CONNECT-BACK request and notes where the SYN will come from.
fn read_promise(b: &mut Back, server: SocketAddr) -> Result<(), String> {
    let started = Instant::now();
    let mut buf = vec![0u8; MAX_RESPONSE];
    let mut have = 0;
    let garbage = || {
        format!("{server} answered the CONNECT-BACK request with something that is not a STUN Binding response")
    };
    let len = loop {
        match Message::frame_len(&buf[..have]) {
            Some(n) if n > MAX_RESPONSE => return Err(garbage()),
            Some(n) if have >= n => break n,
            None if have >= 4 => return Err(garbage()),
            _ => {}
        }
        let left = BINDING_TIMEOUT
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!(
                    "no answer to the CONNECT-BACK request from {server} within {} ms",
                    BINDING_TIMEOUT.as_millis()
                )
            })?;
        b.stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match b.stream.read(&mut buf[have..]) {
            Ok(0) => {
                return Err(format!(
                    "{server} closed the connection instead of answering the CONNECT-BACK request"
                ))
            }
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                return Err(format!(
                    "reading the CONNECT-BACK answer from {server}: {e}"
                ))
            }
        }
    };
    let msg = Message::parse(&buf[..len]).map_err(|_| garbage())?;
    if msg.transaction_id() != b.tid {
        return Err(garbage());
    }
    match msg.message_type().class {
        Class::Success => {}
        Class::Error => {
            let code = match msg.get(attr_type::ERROR_CODE) {
                Some(Ok(Attribute::ErrorCode(e))) => e.code,
                _ => 0,
            };
            return Err(format!(
                "{server} refused the CONNECT-BACK request with error {code}"
            ));
        }
        _ => return Err(garbage()),
    }
    match msg.get(attr_type::CONNECT_BACK_ORIGIN) {
        Some(Ok(Attribute::ConnectBackOrigin(origin))) => {
            b.origin = Some(origin);
            Ok(())
        }
        _ => Err(format!("{server} does not offer CONNECT-BACK (punchraw's TCP filtering test: not a punchraw server, an older one, or one without --alternate), so TCP filtering cannot be measured")),
    }
}

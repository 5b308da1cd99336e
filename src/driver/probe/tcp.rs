//! `punchraw probe`'s TCP half: makes the connections the TCP classifier
//! ([`crate::core::classify::tcp`]) needs, watches for the server's unsolicited SYNs, and hands the
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

use crate::core::classify::tcp::{classify, SynTest, TcpAnswer, TcpObservations, TcpReport};
use crate::core::classify::DEFAULT_ALLOC_SOCKETS;
use crate::core::stun::{attr_type, Attribute, Message};
use crate::core::wire::{Seen, Segment};
use crate::driver::tcp_stun::{self, shared_port_socket};
use crate::os::capture::Capture;
use crate::os::packet::Watcher;
use crate::os::privileges::{self, CAP_NET_RAW};
use crate::os::signals::Shutdown;
use crate::Error;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest wait for one TCP Binding: room for one SYN retransmission (1 s, RFC 6298).
const BINDING_TIMEOUT: Duration = Duration::from_millis(2500);
/// The unsolicited SYN must arrive within this plus [`SYN_WAIT_RTTS`] measured round trips
/// of the CONNECT-BACK answer; it leaves the server right after that answer.
const SYN_WAIT_BASE: Duration = Duration::from_millis(300);
const SYN_WAIT_RTTS: u32 = 4;

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
            drain(&watcher, capture.as_deref_mut())?;
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
            drain(&watcher, capture.as_deref_mut())?;
            hosts.push(other.ip());
            watcher = open_watcher(&hosts);
        }
    }
    let stop = || {
        if shutdown.requested() {
            Err(shutdown.interrupted())
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
    drain(&watcher, capture.as_deref_mut())?;
    stop()?;

    // Allocation: fresh ports, one right after the other.
    for _ in 0..DEFAULT_ALLOC_SOCKETS {
        let b = tcp_stun::binding(any, server, &[], BINDING_TIMEOUT).ok();
        o.allocation
            .push(b.map(|b| (b.local.port(), b.mapped.port())));
    }
    drain(&watcher, capture.as_deref_mut())?;
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

/// Reads every packet the watcher (if there is one) has queued into the capture.
fn drain(watcher: &Result<Watcher, String>, capture: Option<&mut Capture>) -> Result<(), Error> {
    match watcher {
        Ok(w) => read_queued(w, capture, |_| {}),
        Err(_) => Ok(()),
    }
}

/// Reads every queued packet: into the capture, and what it is to `each`.
fn read_queued(
    w: &Watcher,
    mut capture: Option<&mut Capture>,
    mut each: impl FnMut(&crate::os::packet::Packet),
) -> Result<(), Error> {
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
    /// Kept open: a NAT may drop a closed connection's mapping (RFC 5382 section 5).
    _stream: TcpStream,
    /// Where the server promised the SYN will come from.
    origin: SocketAddr,
    arrived: bool,
}

/// RFC 5780 section 4.4 tests III (change port) and II (change IP and port) with a SYN: two
/// connections from fresh ports, asked one after the other and awaited together.
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
    let deadline = Instant::now() + wait;
    loop {
        let mut seen: Vec<(SocketAddr, SocketAddr)> = Vec::new();
        read_queued(w, capture.as_deref_mut(), |p| {
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
        })?;
        for b in backs.iter_mut().flatten().filter(|b| !b.arrived) {
            // After the NAT the SYN is addressed to our own port (and, without a NAT, to our
            // own address too).
            if seen
                .iter()
                .any(|&(src, dst)| src == b.origin && dst.port() == b.local.port())
            {
                tracing::info!(origin = %b.origin, local = %b.local, "unsolicited SYN arrived");
                b.arrived = true;
            }
        }
        if shutdown.requested() {
            return Err(shutdown.interrupted());
        }
        let open = backs.iter().flatten().any(|b| !b.arrived);
        let now = Instant::now();
        if !open || now >= deadline {
            break;
        }
        let _ = w.wait((deadline - now).min(Duration::from_millis(50)));
    }
    Ok(backs.map(|b| match b {
        Err(why) => SynTest::Unknown(why),
        Ok(b) => SynTest::Watched {
            origin: b.origin,
            arrived: b.arrived,
        },
    }))
}

/// A Binding request with CONNECT-BACK from a fresh port, the connection kept open, and
/// where the answer says the SYN will come from.
fn ask_connect_back(
    any: SocketAddr,
    server: SocketAddr,
    change_ip: bool,
    change_port: bool,
) -> Result<Back, String> {
    let ask = Attribute::ConnectBack {
        change_ip,
        change_port,
    };
    let (b, stream) =
        tcp_stun::exchange(any, server, &[ask], BINDING_TIMEOUT).map_err(|e| match e {
            tcp_stun::TcpStunError::ErrorResponse { code, .. } => {
                format!("{server} refused the CONNECT-BACK request with error {code}")
            }
            e => format!("the CONNECT-BACK request failed: {e}"),
        })?;
    let origin = Message::parse(&b.response)
        .ok()
        .and_then(|m| match m.get(attr_type::CONNECT_BACK_ORIGIN) {
            Some(Ok(Attribute::ConnectBackOrigin(origin))) => Some(origin),
            _ => None,
        })
        .ok_or_else(|| format!("{server} does not offer CONNECT-BACK (punchraw's TCP filtering test: not a punchraw server, an older one, or one without --alternate), so TCP filtering cannot be measured"))?;
    Ok(Back {
        local: b.local,
        _stream: stream,
        origin,
        arrived: false,
    })
}

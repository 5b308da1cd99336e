//! The socket that registers with the server and (for UDP) punches: the peer is told the
//! endpoint the server sees it from, and behind a sequential NAT predicts from it.

use super::{Classified, ConnectConfig};
use crate::core::classify::{counter_ahead, Allocation};
use crate::core::stun::{Encoder, Message, MessageType, TransactionId};
use crate::driver::Status;
use crate::os::udp::{bind_fresh, bind_ipv6_any, ipv6_host_addresses};
use crate::Error;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Fresh sockets tried before a stale mapping is accepted as it is.
const TRIES: usize = 3;
/// How far past the classification's samples the rendezvous flow's port may be, in flows
/// of the NAT's counter (others' flows in between included).
const AHEAD: i32 = 64;

/// Copies of the Binding request that opens the rendezvous flow ahead of the TCP prediction:
/// one lost on its way to the NAT must not leave the opening to the first register.
const OPENING_COPIES: usize = 2;

/// `first`: a socket bound earlier (non-blocking, nothing sent yet; its port may already be
/// asked to be mapped), the first to try. `since`: a later punch attempt's last registered
/// port, where our counter was last seen: any port past it is new (others' flows may have
/// moved the counter any distance since, over a whole window), one behind it an old mapping.
/// With `--tcp` also the transaction of the Binding request that opened the rendezvous flow
/// ([`opened_after`] checks its answer).
pub(super) fn open_main(
    cfg: &ConnectConfig,
    status: &Status,
    c: &Classified,
    mut first: Option<(UdpSocket, SocketAddr)>,
    since: Option<u16>,
) -> Result<(UdpSocket, Vec<SocketAddr>, Option<TransactionId>), Error> {
    let (samples, ahead) = match since {
        Some(port) => (vec![port], i32::from(i16::MAX)),
        None => (c.samples.clone(), AHEAD),
    };
    for attempt in 1..=TRIES {
        let (main, main_local) = match first.take() {
            Some((s, local)) => (s, vec![local]),
            None => {
                let (s, l) = bind_fresh(c.local_ip, 1)?;
                (s.into_iter().next().expect("one socket"), l)
            }
        };
        if cfg.tcp {
            // The rendezvous socket is a new flow through our NAT. A NAT with a port counter
            // shared by all flows would move it by one when the first register goes out,
            // after the TCP prediction; a Binding request now opens that flow first, so the
            // prediction counts it. Its port is no punch's target (the peer predicts our TCP
            // port), so the answer is not waited for here, only checked once the prediction
            // is made ([`opened_after`]).
            let (tid, req) = binding_request();
            for _ in 0..OPENING_COPIES {
                let _ = main.send_to(&req, cfg.server);
            }
            return Ok((main, main_local, Some(tid)));
        }
        let delta = match (c.nat.allocation, c.nat.delta) {
            (Allocation::Sequential, Some(d)) if !c.samples.is_empty() => d,
            _ => return Ok((main, main_local, None)),
        };
        // Behind a port counter the peer predicts from this flow's port, so it must be the
        // counter's next one. The OS may hand out a local port that an earlier run used
        // toward the same server while the NAT still holds that mapping (Linux keeps it
        // 30 s unreplied, 2 min replied): the port the server sees is then an old one.
        // Asking the server (this opens the flow the register will use, so the count of
        // flows is the same) shows it; a fresh socket gets a new mapping.
        match mapped_port(&main, cfg.server, c.rtt) {
            Some(port) if !counter_ahead(port, &samples, delta, ahead) && attempt < TRIES => {
                status.say(format!(
                    "our NAT mapped the rendezvous socket to port {port}, not just past its counter ({samples:?}): an old mapping of a reused local port, or others' flows moved the counter far; trying a fresh socket"
                ));
            }
            _ => return Ok((main, main_local, None)),
        }
    }
    unreachable!("the last try returns")
}

/// Whether the rendezvous flow, which `opening` (from [`open_main`]) should have opened
/// before the TCP prediction, opened only after it: then it took the port the prediction
/// (`ports`, a counter of step `delta` that TCP and UDP may share) gives the punch. Seen in
/// the lab at 5% loss before the NAT: the opening request lost, the first register opened
/// the flow and shifted our side of a sequential pair's lockstep by one, so nothing crossed.
/// Without the opening's answer on `main` (non-blocking) the server is asked where the flow
/// sits on the counter.
pub(super) fn opened_after(
    main: &UdpSocket,
    server: SocketAddr,
    opening: TransactionId,
    rtt: Duration,
    ports: &[u16],
    delta: i32,
) -> bool {
    let mut buf = [0u8; 1500];
    let mut answered = false;
    while let Ok((n, from)) = main.recv_from(&mut buf) {
        answered |= from == server
            && Message::parse(&buf[..n]).is_ok_and(|m| m.transaction_id() == opening);
    }
    if answered {
        return false;
    }
    mapped_port(main, server, rtt).is_some_and(|port| counter_ahead(port, ports, delta, AHEAD))
}

/// The port our NAT gives a new flow now, from a fresh socket (for a busy counter's range,
/// re-measured while we wait); `None` without an answer.
pub(super) fn fresh_mapped_port(c: &Classified, server: SocketAddr) -> Option<u16> {
    let (socks, _) = bind_fresh(c.local_ip, 1).ok()?;
    mapped_port(socks.first()?, server, c.rtt)
}

fn binding_request() -> (TransactionId, Vec<u8>) {
    let tid = TransactionId::random(&mut rand::rng());
    let mut req = Vec::new();
    Encoder::new(&mut req, MessageType::BINDING_REQUEST, tid).fingerprint();
    (tid, req)
}

/// The server's view of `sock`'s port: two tries, each given two RTTs; `None` when no
/// answer came (the register's own retries then take over).
fn mapped_port(sock: &UdpSocket, server: SocketAddr, rtt: Duration) -> Option<u16> {
    // bind_fresh makes sockets non-blocking; the read timeout needs a blocking one.
    sock.set_nonblocking(false).ok()?;
    let port = ask_port(sock, server, rtt);
    sock.set_nonblocking(true).ok()?;
    port
}

fn ask_port(sock: &UdpSocket, server: SocketAddr, rtt: Duration) -> Option<u16> {
    let wait = (rtt * 2).max(Duration::from_millis(50));
    let mut buf = [0u8; 1500];
    for _ in 0..2 {
        let (tid, req) = binding_request();
        sock.send_to(&req, server).ok()?;
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
                break;
            }
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                break;
            };
            if from != server {
                continue;
            }
            if let Ok(m) = Message::parse(&buf[..n]) {
                if m.transaction_id() == tid {
                    return m.mapped_address().map(|a| a.port());
                }
            }
        }
    }
    None
}

/// The IPv6 punch socket beside the IPv4 one, and the addresses the peer reaches it at.
pub(super) struct Ipv6Side {
    /// UDP: the socket that punches.
    pub udp: Option<UdpSocket>,
    /// TCP: a socket holding the punch port (SO_REUSEPORT, not listening) until the punch's
    /// own sockets bind beside it.
    pub tcp_hold: Option<socket2::Socket>,
    /// This host's IPv6 addresses with the socket's port, offered among our locals.
    pub candidates: Vec<SocketAddr>,
}

/// With `connect` to an IPv4 server (not `-4`, no IPv4 `--bind`): a UDP socket, or with
/// `--tcp` a TCP port, on every IPv6 address of this host, if it has one another host may
/// reach. Those addresses are usually global and behind a stateful firewall, not a NAT: the
/// peer tries them with the port it sees in the candidate, and our packets toward its own
/// open our firewall (RFC 6092 sections 3.2.3 and 3.3.3). At most `room` candidates (the
/// register's limit on locals).
pub(super) fn open_ipv6(cfg: &ConnectConfig, status: &Status, room: usize) -> Option<Ipv6Side> {
    if !cfg.ipv6 || cfg.server.is_ipv6() || room == 0 {
        return None;
    }
    let ips = ipv6_host_addresses();
    if ips.is_empty() {
        return None;
    }
    let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);
    let (udp, tcp_hold, port) = if cfg.tcp {
        let held = crate::driver::tcp_stun::shared_port_socket(any).and_then(|s| {
            let port = s.local_addr()?.as_socket().map_or(0, |a| a.port());
            Ok((s, port))
        });
        match held {
            Ok((s, port)) => (None, Some(s), port),
            Err(e) => {
                status.say(format!("IPv6 left out: cannot bind a TCP port: {e}"));
                return None;
            }
        }
    } else {
        match bind_ipv6_any() {
            Ok((s, port)) => (Some(s), None, port),
            Err(e) => {
                status.say(format!("IPv6 left out: {}", e.chain()));
                return None;
            }
        }
    };
    let candidates: Vec<SocketAddr> = ips
        .into_iter()
        .take(room)
        .map(|ip| SocketAddr::new(IpAddr::V6(ip), port))
        .collect();
    let shown: Vec<String> = candidates.iter().map(ToString::to_string).collect();
    status.say(format!(
        "IPv6: offering {} beside IPv4 (-4 leaves it out)",
        shown.join(", ")
    ));
    Some(Ipv6Side {
        udp,
        tcp_hold,
        candidates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stun::Attribute;
    use std::net::Ipv4Addr;

    /// A STUN server on loopback that reports every Binding request's source as port
    /// `reports` (where a NAT would have mapped it), ignoring the first `lose` requests
    /// (lost on their way to the NAT). It answers until `main` has been silent a while.
    fn server(reports: u16, lose: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the server");
        sock.set_read_timeout(Some(Duration::from_millis(600)))
            .expect("timeout");
        let addr = sock.local_addr().expect("address");
        let h = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            let mut seen = 0;
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                seen += 1;
                let Ok(m) = Message::parse(&buf[..n]) else {
                    continue;
                };
                if seen <= lose {
                    continue;
                }
                let mut out = Vec::new();
                let mapped = SocketAddr::new(from.ip(), reports);
                Encoder::new(&mut out, MessageType::BINDING_SUCCESS, m.transaction_id())
                    .push(&Attribute::XorMappedAddress(mapped))
                    .fingerprint();
                let _ = sock.send_to(&out, from);
            }
        });
        (addr, h)
    }

    fn main_socket() -> UdpSocket {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind main");
        s.set_nonblocking(true).expect("non-blocking");
        s
    }

    const RTT: Duration = Duration::from_millis(20);
    /// The TCP prediction's samples: a counter of step 1 that predicts 20020 next.
    const SAMPLES: [u16; 4] = [20016, 20017, 20018, 20019];

    #[test]
    fn an_answered_opening_keeps_the_prediction() {
        let (srv, h) = server(20020, 0);
        let main = main_socket();
        let (tid, req) = binding_request();
        main.send_to(&req, srv).expect("send");
        std::thread::sleep(RTT * 5);
        assert!(!opened_after(&main, srv, tid, RTT, &SAMPLES, 1));
        drop(main);
        h.join().expect("server");
    }

    /// The opening request lost before the NAT: the flow opened later, on the port the
    /// prediction gives the punch, so the prediction must be made again; had it opened
    /// before the prediction (its port behind the samples), only its answer was lost.
    #[test]
    fn a_lost_opening_is_found_on_the_counter() {
        for (reports, after) in [(20020, true), (20015, false)] {
            let (srv, h) = server(reports, 1);
            let main = main_socket();
            let (tid, req) = binding_request();
            main.send_to(&req, srv).expect("send");
            std::thread::sleep(RTT * 5);
            assert_eq!(
                opened_after(&main, srv, tid, RTT, &SAMPLES, 1),
                after,
                "the flow's port {reports}"
            );
            drop(main);
            h.join().expect("server");
        }
    }
}

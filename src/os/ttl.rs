//! Finding the TTL for low-TTL priming: large enough for a SYN to pass our own NAT (which then
//! holds the mapping), too small to reach the peer's NAT (which might answer it with RST or
//! ICMP and so wipe that mapping again; RFC 5382 REQ-4 asks NATs not to, many do).
//!
//! Measured like traceroute: UDP datagrams toward the peer's public address with TTL 1, 2, ...
//! from one socket, each to the port traceroute would use for that TTL, ICMP errors read from
//! the socket's error queue (IP_RECVERR, ip(7)). Each is a new flow through our NAT, which is
//! why `connect` measures only behind a NAT that maps endpoint-independently (where new flows
//! move no port counter). Hops that answer time-exceeded from private addresses are on our
//! side of the NAT.

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn};
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Hops probed at most.
const MAX_HOPS: u8 = 8;
/// Time for the answers, at most. A hop that stays silent (a NAT dropping the probe) never
/// answers however long we wait, so the wait scales with the round trip to the server, the
/// best estimate of the distance to the peer we have: [`wait_for`].
const MAX_WAIT: Duration = Duration::from_millis(400);
const MIN_WAIT: Duration = Duration::from_millis(60);

/// Waiting for ICMP answers: four round trips to the server plus a margin, within bounds.
pub fn wait_for(server_rtt: Duration) -> Duration {
    (server_rtt * 4 + Duration::from_millis(40)).clamp(MIN_WAIT, MAX_WAIT)
}
/// Traceroute's customary first port; any closed port would do.
const PROBE_PORT: u16 = 33434;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Time exceeded, from this router.
    Router(Ipv4Addr),
    /// The datagram got to the peer's address (ICMP unreachable from it).
    Reached,
    /// No answer.
    Silent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priming {
    pub ttl: Option<u32>,
    pub hops: Vec<Hop>,
    /// Hops up to and including our outermost NAT.
    pub own: usize,
    /// Hops to the peer's NAT, when it was within reach of the probe.
    pub far: Option<usize>,
}

impl Priming {
    pub fn explain(&self) -> String {
        match (self.ttl, self.far) {
            (Some(t), Some(f)) => format!(
                "low-TTL priming: first SYNs with TTL {t} (our NAT is {} hop(s) away, the peer's NAT {f})",
                self.own
            ),
            (Some(t), None) => format!(
                "low-TTL priming: first SYNs with TTL {t} (our NAT is {} hop(s) away, the peer's NAT more than {MAX_HOPS})",
                self.own
            ),
            (None, _) if self.own == 0 => "low-TTL priming off: no NAT of ours answered with time-exceeded, so no TTL is known to open it".to_string(),
            (None, f) => format!(
                "low-TTL priming off: no TTL passes our NAT ({} hop(s) away) without reaching the peer's ({} hop(s)); first SYNs go out with the normal TTL",
                self.own,
                f.map_or_else(|| "?".to_string(), |f| f.to_string())
            ),
        }
    }
}

/// The decision from what each TTL met (index 0 is TTL 1).
pub fn decide(hops: &[Hop]) -> Priming {
    let own = hops
        .iter()
        .take_while(|h| matches!(h, Hop::Router(a) if inside(*a)))
        .count();
    let far = hops
        .iter()
        .position(|h| !matches!(h, Hop::Router(_)))
        .map(|i| i + 1);
    let pass = own + 1;
    let ttl = match far {
        _ if own == 0 => None,
        Some(f) if pass >= f => None,
        _ => Some(pass as u32),
    };
    Priming {
        ttl,
        hops: hops.to_vec(),
        own,
        far,
    }
}

/// Addresses that are not globally routed, so a router answering from one is inside a NAT
/// (RFC 1918, RFC 6598 shared address space, link-local).
fn inside(a: Ipv4Addr) -> bool {
    a.is_private() || a.is_link_local() || (a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64)
}

/// Measures the hops toward `peer` from `local`. Any failure means "no priming".
pub fn priming_ttl(local: IpAddr, peer: IpAddr, wait: Duration) -> Priming {
    let hops = match (local, peer) {
        (IpAddr::V4(l), IpAddr::V4(p)) => trace(l, p, wait).unwrap_or_else(|e| {
            tracing::debug!("TTL measurement failed: {e}");
            Vec::new()
        }),
        _ => Vec::new(),
    };
    decide(&hops)
}

fn trace(local: Ipv4Addr, peer: Ipv4Addr, wait: Duration) -> std::io::Result<Vec<Hop>> {
    let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V4(local), 0))?;
    setsockopt(&sock, sockopt::Ipv4RecvErr, &true).map_err(std::io::Error::from)?;
    sock.set_nonblocking(true)?;
    // The TTL is in the destination port, as traceroute does: a router may quote only the
    // IP header and 8 bytes (RFC 792), which leaves no payload to read it from.
    let dst = |ttl: u8| SocketAddr::new(IpAddr::V4(peer), PROBE_PORT + u16::from(ttl) - 1);
    let send = |ttl: u8| -> std::io::Result<()> {
        sock.set_ttl(u32::from(ttl))?;
        // With IP_RECVERR an earlier probe's ICMP error is reported by the next send (which
        // then sends nothing); the error itself stays in the queue, so just send again.
        let mut tries = 0;
        while let Err(e) = sock.send_to(&[ttl], dst(ttl)) {
            tries += 1;
            if tries > 3 || e.kind() == std::io::ErrorKind::PermissionDenied {
                return Err(e);
            }
        }
        Ok(())
    };
    for ttl in 1..=MAX_HOPS {
        send(ttl)?;
    }
    let mut hops = vec![Hop::Silent; usize::from(MAX_HOPS)];
    let started = Instant::now();
    let deadline = started + wait;
    // Routers rate-limit ICMP, and one that must first resolve our address may drop the
    // error of the first probe (seen in the lab); the still-silent hops get a second probe
    // halfway through.
    let mut resent = false;
    let mut answered = 0;
    while Instant::now() < deadline && answered < hops.len() {
        if !resent && started.elapsed() >= wait / 2 {
            resent = true;
            for (i, h) in hops.iter().enumerate() {
                if *h == Hop::Silent {
                    // What the first round found still counts if this fails.
                    let _ = send(i as u8 + 1);
                }
            }
        }
        let mut payload = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut payload)];
        let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in);
        let msg = match recvmsg::<SockaddrIn>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_ERRQUEUE,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut what = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::Ipv4RecvErr(err, from) = c {
                    if err.ee_origin != libc::SO_EE_ORIGIN_ICMP {
                        continue;
                    }
                    let from = from.map(|a| Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)));
                    // ICMP type 11: time exceeded (RFC 792).
                    what = Some(match (err.ee_type, from) {
                        (11, Some(a)) => Hop::Router(a),
                        _ => Hop::Reached,
                    });
                }
            }
        }
        // ip(7): on the error queue, msg_name is the original destination.
        let ttl = msg
            .address
            .map(|a| a.port())
            .and_then(|p| p.checked_sub(PROBE_PORT - 1))
            .and_then(|t| u8::try_from(t).ok())
            .unwrap_or(0);
        if let (Some(w), Some(slot)) = (what, hops.get_mut(usize::from(ttl).wrapping_sub(1))) {
            if *slot == Hop::Silent {
                answered += 1;
            }
            *slot = w;
        }
    }
    Ok(hops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: [u8; 4]) -> Hop {
        Hop::Router(Ipv4Addr::from(a))
    }

    #[test]
    fn adjacent_nats_leave_no_priming_ttl() {
        // Our NAT answers TTL 1 from its LAN side; TTL 2 is already at the peer's NAT.
        let p = decide(&[r([10, 0, 1, 1]), Hop::Reached, Hop::Reached]);
        assert_eq!((p.own, p.far, p.ttl), (1, Some(2), None));
        assert!(p.explain().contains("off"));
    }

    #[test]
    fn a_router_between_gives_the_ttl_past_our_nat() {
        let p = decide(&[
            r([192, 168, 1, 1]),
            r([100, 64, 0, 1]),
            r([203, 0, 113, 77]),
            r([198, 51, 100, 1]),
            Hop::Silent,
        ]);
        assert_eq!((p.own, p.far, p.ttl), (2, Some(5), Some(3)));
        let p = decide(&[r([10, 0, 0, 1]), r([203, 0, 113, 1]), r([203, 0, 113, 2])]);
        assert_eq!(p.ttl, Some(2));
        assert_eq!(p.far, None);
    }

    #[test]
    fn the_wait_follows_the_round_trip_within_bounds() {
        assert_eq!(wait_for(Duration::ZERO), MIN_WAIT);
        assert_eq!(
            wait_for(Duration::from_millis(30)),
            Duration::from_millis(160)
        );
        assert_eq!(wait_for(Duration::from_secs(1)), MAX_WAIT);
    }

    #[test]
    fn no_nat_of_ours_answering_means_no_priming() {
        assert_eq!(decide(&[]).ttl, None);
        assert_eq!(decide(&[Hop::Silent, Hop::Reached]).ttl, None);
        assert_eq!(decide(&[r([203, 0, 113, 1]), Hop::Reached]).ttl, None);
    }
}

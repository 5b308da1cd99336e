//! Measuring the hops toward the peer for low-TTL priming; the decision from what each hop
//! answered is [`crate::core::punch::priming`]'s.
//!
//! Measured like traceroute: UDP datagrams toward the peer's public address with TTL 1, 2, ...
//! from one socket, each to the port traceroute would use for that TTL, ICMP errors read from
//! the socket's error queue (IP_RECVERR, ip(7)). Each is a new flow through our NAT, which is
//! why `connect` measures only behind a NAT that maps endpoint-independently (where new flows
//! move no port counter). Hops that answer time-exceeded from private addresses are on our
//! side of the NAT.

use crate::core::punch::priming::{decide, settled, Hop, Priming, MAX_HOPS, PROBE_PORT};
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn};
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

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
    while Instant::now() < deadline && answered < hops.len() && !settled(&hops) {
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
                    what = Some(Hop::from_icmp(err.ee_type, from, peer));
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

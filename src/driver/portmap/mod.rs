//! Asking the router for port mappings: PCP and NAT-PMP through the sans-IO
//! `core::portmap::client::PortMapper` over a UDP socket to the default gateway, UPnP IGD
//! through [`upnp`]. `probe` checks each with a short-lived mapping and deletes it.

pub mod upnp;

use crate::core::portmap::client::{Event, PortMapConfig, PortMapper};
use crate::core::portmap::{Offer, Protocol, Via};
use crate::core::Machine;
use crate::os::poll;
use crate::os::route::default_gateway;
use crate::os::signals::Shutdown;
use crate::os::udp::{bind_fresh, route_source};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// How long the probe waits for SSDP answers.
const UPNP_WAIT: Duration = Duration::from_secs(2);
/// The lifetime the probe's test mapping asks for (it is deleted at once anyway; a router
/// may raise it to its minimum, RFC 6887 section 15 suggests 120 s).
const PROBE_LIFETIME: Duration = Duration::from_secs(120);

/// Sends what `m` queued and feeds it what arrives, until `until(m)` or it is done.
/// `shutdown`, when given, stops the loop (the caller then deletes what was mapped).
pub(crate) fn run(
    m: &mut PortMapper,
    sock: &UdpSocket,
    shutdown: Option<&Shutdown>,
    mut on_event: impl FnMut(&mut PortMapper, Event),
) -> bool {
    let mut buf = [0u8; 1100];
    // A router without a PCP/NAT-PMP server answers each request with an ICMP port
    // unreachable, which a connected socket reports as ECONNREFUSED. Until the router has
    // answered once, that ends our retransmissions (RFC 6886 section 3.1's schedule would send
    // several): each would draw another ICMP error, and Linux allows only a burst of six per
    // destination, then one per second (icmp_ratelimit) -- the budget the TTL measurement
    // before a TCP punch needs for the time-exceeded answers of that same router. The
    // machine learns of the refusal too: it settles the protocols with that reason at once.
    // UPnP's unicast search (`upnp::discover`) may draw one more refusal from that router:
    // two of the six, well within the burst.
    let mut answered = false;
    let mut refused = false;
    loop {
        let now = Instant::now();
        if m.poll_timeout().is_some_and(|t| t <= now) {
            m.handle_timeout(now);
        }
        while let Some(t) = m.poll_transmit() {
            if refused && !answered {
                continue;
            }
            if sock.peer_addr().is_err() {
                let _ = sock.connect(t.dst);
            }
            match sock.send_to(&t.payload, t.dst) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    refused = true;
                    m.handle_refused();
                }
                Err(e) => {
                    tracing::debug!(dst = %t.dst, error = %e, "port-mapping request not sent")
                }
                Ok(_) => {}
            }
        }
        while let Some(ev) = m.poll_event() {
            on_event(m, ev);
        }
        if m.is_done() {
            return true;
        }
        if shutdown.is_some_and(|s| s.requested()) {
            return false;
        }
        let wait = m
            .poll_timeout()
            .map_or(Duration::from_millis(200), |t| {
                t.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(200));
        match poll::readable(&[sock.as_fd()], wait) {
            Ok(r) if r[0] => loop {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        answered = true;
                        m.handle_input(Instant::now(), 0, from, &buf[..n]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        tracing::debug!("port-mapping server refused (ICMP port unreachable)");
                        refused = true;
                        m.handle_refused();
                    }
                    Err(_) => break,
                }
            },
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "poll");
                return false;
            }
        }
    }
}

/// One protocol's check: the mapping granted (external, lifetime), whether the delete was
/// confirmed, or why there was none.
struct Check {
    granted: Option<(SocketAddr, u64)>,
    deleted: bool,
    reason: Option<String>,
}

fn check_one(gw: IpAddr, client: IpAddr, via: Via, shutdown: &Shutdown) -> Check {
    let (socks, locals) = match bind_fresh(client, 1) {
        Ok(s) => s,
        Err(e) => {
            return Check {
                granted: None,
                deleted: false,
                reason: Some(e.to_string()),
            }
        }
    };
    let cfg = PortMapConfig {
        pcp: via == Via::Pcp,
        nat_pmp: via == Via::NatPmp,
        lifetime: PROBE_LIFETIME,
        seed: rand::random(),
        ..PortMapConfig::new(gw, client, Protocol::Udp, locals[0].port())
    };
    let mut m = PortMapper::new(cfg, Instant::now());
    let mut c = Check {
        granted: None,
        deleted: false,
        reason: None,
    };
    let finished = run(&mut m, &socks[0], Some(shutdown), |m, ev| match ev {
        Event::Mapped(map) => {
            if c.granted.is_none() {
                c.granted = Some((map.external, map.lifetime.as_secs()));
                m.delete(Instant::now());
            }
        }
        Event::Unavailable(r) => {
            c.reason = match via {
                Via::Pcp => r.pcp,
                _ => r.nat_pmp,
            }
        }
        Event::Deleted { confirmed } => c.deleted = confirmed,
        Event::Lost { reason } => c.reason = Some(reason),
        Event::RouterRestarted { .. } => {}
    });
    if !finished {
        // Interrupted: delete whatever may have been granted, without the signal's check.
        m.delete(Instant::now());
        run(&mut m, &socks[0], None, |_, ev| {
            if let Event::Deleted { confirmed } = ev {
                c.deleted = confirmed;
            }
        });
    }
    c
}

/// What the router offers: each of PCP, NAT-PMP and UPnP IGD tried with a test mapping of
/// a fresh UDP port, deleted at once. `bind` is the address to ask from (default: ours
/// toward the gateway).
pub fn probe(bind: Option<IpAddr>, shutdown: &Shutdown) -> Offer {
    let mut offer = Offer::default();
    let Some(gw) = default_gateway() else {
        for k in ["pcp", "nat_pmp", "upnp"] {
            offer.reasons.insert(
                k.into(),
                "no IPv4 default route, so no router to ask".into(),
            );
        }
        return offer;
    };
    let client = match bind {
        Some(ip) => ip,
        None => match route_source(SocketAddr::new(IpAddr::V4(gw), 5351)) {
            Ok(ip) => ip,
            Err(e) => {
                for k in ["pcp", "nat_pmp", "upnp"] {
                    offer.reasons.insert(k.into(), e.to_string());
                }
                return offer;
            }
        },
    };
    let IpAddr::V4(client4) = client else {
        for k in ["pcp", "nat_pmp", "upnp"] {
            offer.reasons.insert(
                k.into(),
                format!("{client} is not IPv4, the gateway {gw} is"),
            );
        }
        return offer;
    };
    // UPnP's discovery waits for SSDP answers: it runs beside the other two.
    let upnp = std::thread::spawn(move || {
        let hold = UdpSocket::bind(SocketAddrV4::new(client4, 0))
            .map_err(|e| format!("cannot bind a UDP port to map: {e}"))?;
        let port = hold
            .local_addr()
            .map_err(|e| format!("getsockname: {e}"))?
            .port();
        let r = upnp::probe(client4, gw, SocketAddrV4::new(client4, port), UPNP_WAIT);
        drop(hold);
        r
    });
    let mut first: Option<(SocketAddr, u64)> = None;
    for via in [Via::Pcp, Via::NatPmp] {
        let c = check_one(IpAddr::V4(gw), client, via, shutdown);
        let ok = c.granted.is_some();
        match via {
            Via::Pcp => offer.pcp = ok,
            _ => offer.nat_pmp = ok,
        }
        if let Some(why) = c.reason {
            offer.reasons.insert(via.name().into(), why);
        }
        if ok && !c.deleted {
            offer.reasons.insert(
                format!("{}_delete", via.name()),
                "the router did not confirm the delete of the test mapping; it expires by itself"
                    .into(),
            );
        }
        first = first.or(c.granted);
    }
    match upnp.join() {
        Ok(Ok((external, lease_s, deleted))) => {
            offer.upnp = true;
            first = first.or(Some((external, u64::from(lease_s))));
            if let Err(e) = deleted {
                offer.reasons.insert("upnp_delete".into(), e);
            }
        }
        Ok(Err(why)) => {
            offer.reasons.insert("upnp".into(), why);
        }
        Err(_) => {
            offer
                .reasons
                .insert("upnp".into(), "the UPnP check failed unexpectedly".into());
        }
    }
    if let Some((external, lifetime)) = first {
        offer.external = Some(external.to_string());
        offer.lifetime_s = Some(lifetime);
    }
    offer
}

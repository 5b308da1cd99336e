//! Our NAT's next TCP port, predicted from TCP Binding requests to the server made from the
//! one local port every punch connection will use (RFC 5382 REQ-1: a NAT that maps that port
//! endpoint-independently shows the same external port to every server endpoint).

use crate::core::classify::{Allocation, Behavior};
use crate::core::punch::tcp::{self as plan_tcp, Prediction};
use crate::core::rendezvous::NatInfo;
use crate::driver::kebab;
use crate::driver::tcp_stun;
use crate::Error;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Time for one TCP Binding exchange with the server while predicting: room for two lost
/// SYNs or SYN-ACKs (the kernel repeats after 1 s and 3 s, RFC 6298 section 2) and the round
/// trip, since a failed Binding to the primary endpoint ends connect (a lab pair at 3% loss
/// lost two in a row within 3 s).
const BINDING_TIMEOUT: Duration = Duration::from_millis(4500);

/// What the connections to the server showed about our NAT's TCP mapping.
#[derive(Debug, Clone)]
pub struct TcpPrep {
    /// Our address and the local port every punch connection uses.
    pub local: SocketAddr,
    /// Our NAT's TCP behaviour and where our next connection from `local` should appear.
    pub prediction: Prediction,
    /// (server endpoint, where it saw us), in the order the connections were made.
    pub samples: Vec<(SocketAddr, SocketAddr)>,
}

impl TcpPrep {
    /// One status line: the ports the server saw, the mapping and allocation concluded, and
    /// the predicted port (or that there is none).
    pub fn describe(&self) -> String {
        let ports: Vec<String> = self
            .samples
            .iter()
            .map(|(_, m)| m.port().to_string())
            .collect();
        let n = &self.prediction.nat;
        let mut s = format!(
            "TCP from port {}: the server saw ports {} -> mapping {}, allocation {}",
            self.local.port(),
            ports.join(", "),
            kebab(&n.mapping),
            kebab(&n.allocation)
        );
        if let Some(d) = n.delta {
            s.push_str(&format!(" (delta {d})"));
        }
        if self.prediction.port != 0 {
            s.push_str(&format!(
                "; our next TCP port predicted: {}",
                self.prediction.port
            ));
        } else {
            s.push_str("; our next TCP port cannot be predicted");
        }
        s
    }
}

/// The server endpoints in the order RFC 5780 section 4.3 tests the mapping (primary, then
/// other address, then other address and port), with the other port of the primary address
/// first: that step tells port-dependent from address-dependent mapping.
fn endpoints(server: SocketAddr, other: Option<SocketAddr>) -> Vec<SocketAddr> {
    let mut v = vec![server];
    if let Some(o) = other {
        for e in [
            SocketAddr::new(server.ip(), o.port()),
            SocketAddr::new(o.ip(), server.port()),
            o,
        ] {
            if !v.contains(&e) {
                v.push(e);
            }
        }
    }
    v
}

/// A fresh local TCP port held by a bound (not listening, not connecting) socket that
/// shares it, so that nobody else gets it before the punch's connections use it.
pub struct Reserved {
    _sock: socket2::Socket,
    /// Our address and the reserved port.
    pub local: SocketAddr,
}

impl Reserved {
    /// Binds a fresh port on `ip` (the OS picks it) and holds it.
    pub fn new(ip: IpAddr) -> Result<Self, Error> {
        tcp_stun::shared_port_socket(SocketAddr::new(ip, 0))
            .and_then(|s| {
                let a = s.local_addr()?.as_socket();
                a.map(|local| Reserved { _sock: s, local })
                    .ok_or_else(|| std::io::Error::other("not an IP socket"))
            })
            .map_err(|e| Error::io("cannot reserve a local TCP port for the punch", e))
    }
}

/// Connects from one fresh local port to each server endpoint and predicts where our next
/// connection from that port will appear. `udp` (from the UDP classification) stands in when
/// the server has no alternate endpoints to compare with.
pub fn prepare(
    server: SocketAddr,
    local_ip: IpAddr,
    other: Option<SocketAddr>,
    udp: NatInfo,
) -> Result<TcpPrep, Error> {
    prepare_from(Reserved::new(local_ip)?, server, other, udp)
}

/// [`prepare`] from a port reserved earlier (its router mapping asked for meanwhile).
pub fn prepare_from(
    reserved: Reserved,
    server: SocketAddr,
    other: Option<SocketAddr>,
    udp: NatInfo,
) -> Result<TcpPrep, Error> {
    let eps = endpoints(server, other);
    let local = reserved.local;
    let samples = sample(reserved, &eps)?;
    Ok(from_samples(local, samples, udp))
}

/// Where the server's endpoints `eps` (the primary first) saw TCP connections from
/// `reserved`'s port: at least the primary's answer, or the error that it failed.
pub fn sample(
    reserved: Reserved,
    eps: &[SocketAddr],
) -> Result<Vec<(SocketAddr, SocketAddr)>, Error> {
    // Every connection leaves from the reserved port; their SYNs go side by side in `eps`'s
    // order, so that a sequential NAT numbers them in that order while the whole takes two
    // round trips (handshake, Binding) rather than two per endpoint.
    let opening = tcp_stun::open_in_order(reserved.local, eps);
    sample_opened(reserved, eps, opening)
}

/// [`sample`], its connections already opened ([`tcp_stun::open_in_order`] from
/// `reserved`'s port to `eps`): the exchanges and their answers.
pub fn sample_opened(
    reserved: Reserved,
    eps: &[SocketAddr],
    opening: tcp_stun::Opening,
) -> Result<Vec<(SocketAddr, SocketAddr)>, Error> {
    let Some(&server) = eps.first() else {
        return Ok(Vec::new());
    };
    let mut results = opening.finish(BINDING_TIMEOUT).into_iter();
    drop(reserved);
    let first = results
        .next()
        .unwrap_or(Err(tcp_stun::TcpStunError::Garbage { server }))
        .map_err(|e| {
            let reason = e.to_string();
            if e.unreachable() {
                Error::TcpServerUnreachable { server, reason }
            } else {
                Error::TcpServerBroken { server, reason }
            }
        })?;
    let mut samples = vec![(server, first.mapped)];
    for (ep, r) in eps[1..].iter().zip(results) {
        match r {
            Ok(b) => samples.push((*ep, b.mapped)),
            // The other endpoints only sharpen the prediction.
            Err(e) => tracing::warn!("TCP Binding to {ep} failed: {e}"),
        }
    }
    Ok(samples)
}

/// The prediction from `samples` (see [`sample`]; at least one) of connections from
/// `local`; `udp` stands in for what one sample cannot tell.
pub fn from_samples(
    local: SocketAddr,
    samples: Vec<(SocketAddr, SocketAddr)>,
    udp: NatInfo,
) -> TcpPrep {
    let ports: Vec<u16> = samples.iter().map(|(_, m)| m.port()).collect();
    let by_endpoint: Vec<(SocketAddr, u16)> = samples.iter().map(|(s, m)| (*s, m.port())).collect();
    let prediction = if let Some(p) = plan_tcp::address_dependent::predict(&by_endpoint, &udp) {
        p
    } else if ports.len() >= 2 {
        let direction = udp
            .delta
            .filter(|_| udp.allocation == Allocation::Sequential);
        plan_tcp::predict_counting(local.port(), &ports, direction)
    } else {
        // One sample says nothing about mapping; assume TCP maps as UDP does (Linux NATs
        // treat both alike).
        let seen = ports.first().copied().unwrap_or(0);
        let port = match (udp.mapping, udp.delta) {
            (Behavior::EndpointIndependent, _) => seen,
            (_, Some(d)) if udp.allocation == Allocation::Sequential => {
                u16::try_from(i32::from(seen) + d).unwrap_or(0)
            }
            _ => 0,
        };
        Prediction { nat: udp, port }
    };
    TcpPrep {
        local,
        prediction,
        samples,
    }
}

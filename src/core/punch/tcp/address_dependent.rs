//! Address-dependent TCP mapping (RFC 4787 section 4.1, RFC 5382 REQ-1's second-best case)
//! read off the samples of [`super::predict`]: the server's endpoints on one IP all saw us
//! at one port, its other IP at another. Only the endpoints tell it from a counter: from
//! the ports alone, `a a b b` looks like a disturbed counter or random ports, and the
//! mapping was reported as address-and-port-dependent.
//!
//! Such a NAT gives the peer's address, a new one, a port of its own, and keeps it for every
//! port of the peer. Which port is known only when the NAT counts: the UDP classification's
//! step repeated from one server IP's port to the next predicts the peer's.

use super::Prediction;
use crate::core::classify::{Allocation, Behavior};
use crate::core::rendezvous::NatInfo;
use std::net::{IpAddr, SocketAddr};

/// The prediction when `samples` (server endpoint, the port it saw, in the order made) show
/// an address-dependent mapping; `None` when they do not (or cannot tell: every IP asked
/// once). `udp` is the UDP classification, whose counter step (when it saw one) is the only
/// evidence of a counter two server IPs can give.
pub fn predict(samples: &[(SocketAddr, u16)], udp: &NatInfo) -> Option<Prediction> {
    let mut by_ip: Vec<(IpAddr, Vec<u16>)> = Vec::new();
    for (ep, port) in samples {
        match by_ip.iter_mut().find(|(ip, _)| *ip == ep.ip()) {
            Some((_, ports)) => ports.push(*port),
            None => by_ip.push((ep.ip(), vec![*port])),
        }
    }
    let one_per_ip = by_ip.iter().all(|(_, p)| p.iter().all(|&x| x == p[0]));
    let repeated = by_ip.iter().any(|(_, p)| p.len() >= 2);
    let per_ip: Vec<u16> = by_ip.iter().map(|(_, p)| p[0]).collect();
    let differ = per_ip.iter().any(|&p| p != per_ip[0]);
    if by_ip.len() < 2 || !one_per_ip || !repeated || !differ {
        return None;
    }
    let mut nat = NatInfo {
        mapping: Behavior::AddressDependent,
        ..NatInfo::unknown()
    };
    let step = udp
        .delta
        .filter(|_| udp.allocation == Allocation::Sequential);
    let steps_fit = |d: i32| {
        per_ip
            .windows(2)
            .all(|w| i32::from(w[1]) - i32::from(w[0]) == d)
    };
    if let Some(d) = step.filter(|&d| steps_fit(d)) {
        nat.allocation = Allocation::Sequential;
        nat.delta = Some(d);
        let next = i32::from(*per_ip.last()?) + d;
        let port = u16::try_from(next).unwrap_or(0);
        return Some(Prediction { nat, port });
    }
    if udp.allocation == Allocation::Random {
        nat.allocation = Allocation::Random;
        nat.range = udp.range;
    }
    Some(Prediction { nat, port: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, ip], port))
    }

    fn udp(allocation: Allocation, delta: Option<i32>) -> NatInfo {
        NatInfo {
            mapping: Behavior::AddressDependent,
            allocation,
            delta,
            range: Some([29585, 33643]),
            ..NatInfo::unknown()
        }
    }

    #[test]
    fn one_port_per_server_ip_is_address_dependent() {
        // The lab's address-dependent kind: a hashed port per remote IP.
        let s = [
            (ep(1, 3478), 31945),
            (ep(1, 3479), 31945),
            (ep(2, 3478), 30003),
            (ep(2, 3479), 30003),
        ];
        let p = predict(&s, &udp(Allocation::Random, None)).expect("address-dependent");
        assert_eq!(p.nat.mapping, Behavior::AddressDependent);
        assert_eq!((p.nat.allocation, p.port), (Allocation::Random, 0));
        assert_eq!(p.nat.range, Some([29585, 33643]));
        // A counting one: the peer's IP, the next new one, gets the next port.
        let s = [
            (ep(1, 3478), 20010),
            (ep(1, 3479), 20010),
            (ep(2, 3478), 20011),
        ];
        let p = predict(&s, &udp(Allocation::Sequential, Some(1))).expect("address-dependent");
        assert_eq!(
            (p.nat.allocation, p.nat.delta),
            (Allocation::Sequential, Some(1))
        );
        assert_eq!(p.port, 20012);
        // Steps the UDP counter does not explain: no prediction.
        let p = predict(&s, &udp(Allocation::Sequential, Some(2))).expect("address-dependent");
        assert_eq!((p.nat.allocation, p.port), (Allocation::Unknown, 0));
    }

    #[test]
    fn other_mappings_are_not_taken_for_it() {
        let any = udp(Allocation::Random, None);
        // Endpoint-independent: one port everywhere.
        let eim = [
            (ep(1, 3478), 5000),
            (ep(1, 3479), 5000),
            (ep(2, 3478), 5000),
        ];
        assert_eq!(predict(&eim, &any), None);
        // A counter per destination: each endpoint a new port.
        let apdm = [
            (ep(1, 3478), 5000),
            (ep(1, 3479), 5001),
            (ep(2, 3478), 5002),
        ];
        assert_eq!(predict(&apdm, &any), None);
        // Each IP asked once: nothing tells it from a per-destination mapping.
        let once = [(ep(1, 3478), 5000), (ep(2, 3478), 6000)];
        assert_eq!(predict(&once, &any), None);
        // One server IP only.
        let one = [(ep(1, 3478), 5000), (ep(1, 3479), 5000)];
        assert_eq!(predict(&one, &any), None);
        assert_eq!(predict(&[], &any), None);
    }
}

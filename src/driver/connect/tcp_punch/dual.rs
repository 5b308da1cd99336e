//! A second TCP punch beside the one to the peer's public IPv4 endpoint, both at once, the
//! first connection to authenticate carrying the stream:
//! - over IPv6: a host behind an IPv4 NAT usually has a global IPv6 address behind a stateful
//!   firewall (RFC 6092), which a simultaneous open passes as a port-preserving,
//!   endpoint-independent NAT would;
//! - to the peer's LAN address, when the peer has the same public IPv4 address as we do (one
//!   NAT, or one carrier NAT, in front of both): a packet to our own NAT's public address
//!   comes back only from a NAT that hairpins (RFC 4787 REQ-9, which many lack), while the LAN
//!   between us translates nothing. Under a shared carrier NAT the LAN address may be another
//!   home's: that lane then fails (the peer's certificate is pinned) and the public one goes on.

use super::{Connection, PunchEnd, PunchSetup};
use crate::core::punch::tcp::Plan;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// A punch of one family, on either engine.
pub(super) type Lane<'a, T = Connection> = Pin<Box<dyn Future<Output = Result<T, PunchEnd>> + 'a>>;

/// The IPv6 punch that goes with `v4`: from our IPv6 punch port (`local`, the unspecified
/// address and the port our candidates carry) to the first of the peer's IPv6 candidates,
/// directly (nothing translates the ports), on kernel sockets (the raw engine crafts IPv4
/// only), without low-TTL priming. `None` when the peer offered no IPv6 address.
pub fn ipv6_setup(v4: &PunchSetup, local: SocketAddr, peer: &[SocketAddr]) -> Option<PunchSetup> {
    let to = peer.iter().find(|a| a.is_ipv6())?;
    Some(direct_setup(v4, local, *to))
}

/// The punch from `local` straight to `to` that goes with `main`: nothing translates the
/// ports between them, so on kernel sockets and without priming.
pub fn direct_setup(main: &PunchSetup, local: SocketAddr, to: SocketAddr) -> PunchSetup {
    PunchSetup {
        plan: Plan::Direct,
        local,
        peer_ip: to.ip(),
        also_from: main
            .also_from
            .filter(|_| main.local == local)
            .map(|_| main.peer_ip),
        peer_port: to.port(),
        peer_ports: [to.port(), to.port()],
        window: main.window,
        rate: main.rate,
        sweep_sockets: main.sweep_sockets,
        budget: main.budget,
        start: main.start,
        prime_ttl: None,
        keepalive: main.keepalive,
        tls: main.tls.clone(),
        rtt: main.rtt,
        first_syn_copies: 1,
        raw: None,
        commitment: main.commitment.clone(),
    }
}

/// The first of two punches to connect; when neither does, the first one's end explains
/// (an interruption wins).
pub(super) async fn first_connected<T>(
    mut a: Lane<'_, T>,
    mut b: Lane<'_, T>,
) -> Result<T, PunchEnd> {
    let (mut end_a, mut end_b) = (None, None);
    while end_a.is_none() || end_b.is_none() {
        tokio::select! {
            r = &mut a, if end_a.is_none() => match r {
                Ok(c) => return Ok(c),
                Err(e) => end_a = Some(e),
            },
            r = &mut b, if end_b.is_none() => match r {
                Ok(c) => return Ok(c),
                Err(e) => end_b = Some(e),
            },
        }
    }
    match (end_a, end_b) {
        (_, Some(PunchEnd::Interrupted)) => Err(PunchEnd::Interrupted),
        (Some(e), _) => Err(e),
        (None, _) => unreachable!("the loop ends when both have"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lane(after_ms: u64, r: Result<u32, PunchEnd>) -> Lane<'static, u32> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            r
        })
    }

    fn exhausted(attempts: u64) -> PunchEnd {
        PunchEnd::Exhausted {
            attempts,
            refused: 0,
            came_up: 0,
            seen: Box::default(),
            auth: None,
        }
    }

    #[tokio::test]
    async fn the_first_connection_wins_and_a_failure_waits_for_the_other() {
        // The IPv4 punch fails first; the IPv6 one connects later and is kept.
        let r = first_connected(lane(10, Err(exhausted(1))), lane(50, Ok(6))).await;
        assert_eq!(r.ok(), Some(6));
        // Whichever connects first, the other is not waited for.
        let r = first_connected(lane(10, Ok(4)), lane(10_000, Ok(6))).await;
        assert_eq!(r.ok(), Some(4));
        // Neither: the first one's end explains (the IPv4 punch's counts).
        let r = first_connected(lane(50, Err(exhausted(4))), lane(10, Err(exhausted(6)))).await;
        assert!(matches!(r, Err(PunchEnd::Exhausted { attempts: 4, .. })));
        // Ctrl-C during either is an interruption.
        let r = first_connected(
            lane(50, Err(exhausted(4))),
            lane(10, Err(PunchEnd::Interrupted)),
        )
        .await;
        assert!(matches!(r, Err(PunchEnd::Interrupted)));
    }
}

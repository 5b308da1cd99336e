//! `connect`'s own look at our NAT before the rendezvous: the quick classification
//! ([`crate::core::classify::ClassifierConfig::quick`]) reduced to what the rendezvous and the
//! punch start from.

use super::ConnectConfig;
use crate::core::classify::{ClassifierConfig, LegacyType};
use crate::core::rendezvous::NatInfo;
use crate::driver::kebab;
use crate::driver::probe::classify_udp;
use crate::driver::tcp_stun::{exchange, TcpBinding};
use crate::driver::Status;
use crate::os::capture::Capture;
use crate::os::signals::Shutdown;
use crate::Error;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Our NAT as the quick classification saw it: what the rendezvous and the punch start from.
pub(super) struct Classified {
    pub(super) nat: NatInfo,
    pub(super) local_ip: IpAddr,
    /// The server's RFC 5780 alternate endpoint, when it has one.
    pub(super) other_address: Option<SocketAddr>,
    /// Round trip to the server.
    pub(super) rtt: Duration,
    /// The allocation probes' mapped ports, in probe order.
    pub(super) samples: Vec<u16>,
    /// How fast a busy counter's search range moves, ports per second.
    pub(super) range_drift: Option<f64>,
}

/// The server answers STUN over TCP but nothing over UDP: UDP is blocked on our path
/// (issue #12). The connection that answered carries the rendezvous on.
pub(super) struct UdpBlocked {
    pub(super) stream: TcpStream,
    pub(super) binding: TcpBinding,
}

/// The wait for the server's STUN answer over TCP once UDP stayed silent.
const TCP_CHECK: Duration = Duration::from_secs(3);

/// Our NAT, or `Err(UdpBlocked)` when only TCP reaches the server.
pub(super) fn classify(
    cfg: &ConnectConfig,
    status: &Status,
    started: Instant,
    shutdown: &Shutdown,
    capture: Option<&mut Capture>,
) -> Result<Result<Classified, UdpBlocked>, Error> {
    status.say(format!("classifying the NAT toward {} ...", cfg.server));
    let udp = classify_udp(
        ClassifierConfig::quick(cfg.server),
        cfg.bind,
        capture,
        shutdown,
        |_| {},
    )?;
    if udp.legacy_type == LegacyType::Blocked {
        if shutdown.requested() {
            return Err(shutdown.interrupted());
        }
        let any = match (cfg.bind, cfg.server) {
            (Some(ip), _) => ip,
            (None, SocketAddr::V4(_)) => IpAddr::from([0u8; 4]),
            (None, SocketAddr::V6(_)) => IpAddr::from([0u16; 8]),
        };
        return match exchange(SocketAddr::new(any, 0), cfg.server, &[], TCP_CHECK) {
            Ok((binding, stream)) => {
                status.say(format!(
                    "UDP to {} is blocked (no answer), but TCP answers (we are {} over TCP); the rendezvous runs over TCP and the stream goes through the relay",
                    cfg.server, binding.mapped
                ));
                Ok(Err(UdpBlocked { stream, binding }))
            }
            Err(e) => {
                status.say(format!(
                    "no answer from {} over UDP, nor over TCP ({e})",
                    cfg.server
                ));
                Err(Error::ServerUnreachable {
                    server: cfg.server,
                    waited_ms: started.elapsed().as_millis() as u64,
                })
            }
        };
    }
    let nat = NatInfo {
        mapping: udp.mapping,
        filtering: udp.filtering,
        allocation: udp.allocation,
        delta: udp.delta,
        range: udp.search_range,
    };
    let mut line = format!(
        "NAT: mapping {}, filtering {}, allocation {}",
        kebab(&nat.mapping),
        kebab(&nat.filtering),
        kebab(&nat.allocation)
    );
    if let Some(d) = nat.delta {
        line.push_str(&format!(" (delta {d})"));
    }
    status.say(line);
    // What a wrong prediction is traced back to.
    tracing::info!(
        samples = ?udp.allocation_samples,
        spread = ?udp.delta_spread,
        search = ?udp.search_range,
        "allocation probes' mapped ports, in probe order"
    );
    Ok(Ok(Classified {
        nat,
        local_ip: udp.local.ip(),
        other_address: udp.other_address,
        rtt: Duration::from_secs_f64(udp.rtt_ms.unwrap_or(50.0) / 1000.0),
        range_drift: udp.range_drift(),
        samples: udp.allocation_samples,
    }))
}

//! `connect`'s own look at our NAT before the rendezvous: the quick classification
//! ([`crate::core::classify::ClassifierConfig::quick`]) reduced to what the rendezvous and the
//! punch start from.

use super::ConnectConfig;
use crate::core::classify::{ClassifierConfig, LegacyType};
use crate::core::rendezvous::NatInfo;
use crate::driver::kebab;
use crate::driver::probe::classify_udp;
use crate::driver::Status;
use crate::os::capture::Capture;
use crate::os::signals::Shutdown;
use crate::Error;
use std::net::{IpAddr, SocketAddr};
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

pub(super) fn classify(
    cfg: &ConnectConfig,
    status: &Status,
    started: Instant,
    shutdown: &Shutdown,
    capture: Option<&mut Capture>,
) -> Result<Classified, Error> {
    status.say(format!("classifying the NAT toward {} ...", cfg.server));
    let udp = classify_udp(
        ClassifierConfig::quick(cfg.server),
        cfg.bind,
        capture,
        shutdown,
        |_| {},
    )?;
    if udp.legacy_type == LegacyType::Blocked {
        return Err(Error::ServerUnreachable {
            server: cfg.server,
            waited_ms: started.elapsed().as_millis() as u64,
        });
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
    Ok(Classified {
        nat,
        local_ip: udp.local.ip(),
        other_address: udp.other_address,
        rtt: Duration::from_secs_f64(udp.rtt_ms.unwrap_or(50.0) / 1000.0),
        range_drift: udp.range_drift(),
        samples: udp.allocation_samples,
    })
}

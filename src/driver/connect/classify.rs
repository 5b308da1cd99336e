//! `connect`'s own look at our NAT before the rendezvous: the quick classification
//! ([`crate::core::classify::ClassifierConfig::quick`]) reduced to what the rendezvous and the
//! punch start from.

use super::tcp_punch::{prepare_from, Reserved, TcpPrep};
use super::ConnectConfig;
use crate::core::classify::{Behavior, ClassifierConfig, Event, LegacyType};
use crate::core::rendezvous::NatInfo;
use crate::driver::kebab;
use crate::driver::probe::classify_udp;
use crate::driver::tcp_stun::{exchange, TcpBinding};
use crate::driver::Status;
use crate::os::capture::Capture;
use crate::os::signals::Shutdown;
use crate::Error;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// With `--tcp`: the TCP prediction, begun beside the UDP classification once the server's
/// first answer shows a NAT that kept our port. Such a NAT allocates no counter that the two
/// measurements' flows could move for each other, and its TCP mapping is checked by the
/// prediction itself (every server endpoint must see one port: endpoint-independent), so the
/// prediction stays as true as one made after the classification, two round trips sooner.
/// Anything else (a translated port, a TCP mapping that depends on the endpoint, a server
/// without an alternate endpoint to compare with) waits for the classification, as the
/// allocation tests of a sequential NAT, one counter for TCP and UDP in many, need.
pub(super) struct EarlyTcp {
    server: SocketAddr,
    reserved: Option<Reserved>,
    running: Option<JoinHandle<Result<TcpPrep, Error>>>,
}

impl EarlyTcp {
    /// `reserved`: the punch port reserved at the start (`None` without `--tcp`).
    pub(super) fn new(server: SocketAddr, reserved: Option<Reserved>) -> Self {
        EarlyTcp {
            server,
            reserved,
            running: None,
        }
    }

    /// The server's first answer: socket `local` appeared as `mapped`; `other` is the
    /// server's alternate endpoint.
    fn answered(&mut self, local: SocketAddr, mapped: SocketAddr, other: Option<SocketAddr>) {
        let kept_port = mapped.port() == local.port();
        let same_ip = self.reserved.as_ref().map(|r| r.local.ip()) == Some(local.ip());
        let (Some(other), true, true) = (other, kept_port, same_ip) else {
            return;
        };
        let Some(reserved) = self.reserved.take() else {
            return;
        };
        let server = self.server;
        // What stands in for the UDP classification only matters with a single sample,
        // which `finish` does not keep.
        let guess = NatInfo {
            mapping: Behavior::EndpointIndependent,
            ..NatInfo::unknown()
        };
        let spawned = std::thread::Builder::new()
            .name("tcp-predict".into())
            .spawn(move || prepare_from(reserved, server, Some(other), guess));
        match spawned {
            Ok(h) => self.running = Some(h),
            Err(e) => tracing::debug!("cannot start the early TCP prediction: {e}"),
        }
    }

    /// The port still reserved (when no prediction began), and the prediction when it
    /// began and showed an endpoint-independent TCP mapping. Waits for it to end.
    pub(super) fn finish(self) -> (Option<Reserved>, Option<TcpPrep>) {
        let prep = self.running.and_then(|h| match h.join() {
            Ok(Ok(prep)) => Some(prep),
            Ok(Err(e)) => {
                tracing::debug!("early TCP prediction failed ({e}); predicting again");
                None
            }
            Err(_) => None,
        });
        let kept = prep.filter(|p| {
            let eim =
                p.samples.len() >= 2 && p.prediction.nat.mapping == Behavior::EndpointIndependent;
            if !eim {
                tracing::info!(
                    "{}; predicting again after the classification",
                    p.describe()
                );
            }
            eim
        });
        (self.reserved, kept)
    }
}

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
    tcp: &mut EarlyTcp,
) -> Result<Result<Classified, UdpBlocked>, Error> {
    status.say(format!("classifying the NAT toward {} ...", cfg.server));
    let udp = classify_udp(
        ClassifierConfig::quick(cfg.server),
        cfg.bind,
        capture,
        shutdown,
        |ev| {
            if let Event::ServerAnswered {
                local,
                mapped,
                other,
                ..
            } = ev
            {
                tcp.answered(local, mapped, other);
            }
        },
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

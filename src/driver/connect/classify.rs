//! `connect`'s own look at our NAT before the rendezvous: the quick classification
//! ([`crate::core::classify::ClassifierConfig::quick`]) reduced to what the rendezvous and the
//! punch start from.

use super::tcp_punch::{from_samples, sample_opened, Reserved, TcpPrep};
use super::ConnectConfig;
use crate::core::classify::{ClassifierConfig, Event, LegacyType};
use crate::core::rendezvous::NatInfo;
use crate::driver::kebab;
use crate::driver::probe::classify_udp;
use crate::driver::tcp_stun::{exchange, open_in_order, TcpBinding};
use crate::driver::Status;
use crate::os::capture::Capture;
use crate::os::signals::Shutdown;
use crate::Error;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// With `--tcp`: the TCP prediction, begun with the UDP classification, from a port of its
/// own toward the server's primary endpoint only (its alternate one is known a round trip
/// later). It is kept only if the server's first UDP answer and this TCP answer both show a
/// NAT that kept our port: such a NAT allocates no counter that the two measurements' flows
/// could move for each other, and it keeps the port for the punch's connections too,
/// whichever way it maps. Anything else (a translated port on either) is predicted after the
/// classification from the port reserved at the start (whose router mapping was asked for
/// meanwhile), toward every server endpoint, as before: a sequential NAT, one counter for TCP
/// and UDP in many, then shows its allocation to the prediction undisturbed (this early
/// connection came before the classification's allocation burst, which follows the first
/// answer).
pub(super) struct EarlyTcp {
    /// Whether the server's first UDP answer showed our port kept (`None`: no answer yet).
    udp_kept: Option<bool>,
    running: Option<(SocketAddr, JoinHandle<Result<Samples, Error>>)>,
}

type Samples = Vec<(SocketAddr, SocketAddr)>;

impl EarlyTcp {
    /// Starts the TCP Binding to `server` from a fresh port on `ip` (`None`: no early
    /// prediction, as without `--tcp`).
    pub(super) fn start(server: SocketAddr, ip: Option<IpAddr>) -> Self {
        let reserved = ip.and_then(|ip| {
            Reserved::new(ip)
                .map_err(|e| tracing::debug!("no early TCP prediction: {e}"))
                .ok()
        });
        let running = reserved.and_then(|r| {
            let local = r.local;
            // The SYN leaves from this thread, ahead of every UDP probe: from a thread of
            // its own it could reach a sequential NAT inside the classification's allocation
            // burst or between its late probes on a short path, and be taken for another
            // host's flow (the counter would not read quiet; connect then waits for the
            // router and predicts again).
            let opening = open_in_order(local, &[server]);
            std::thread::Builder::new()
                .name("tcp-predict".into())
                .spawn(move || sample_opened(r, &[server], opening))
                .map(|h| (local, h))
                .map_err(|e| tracing::debug!("cannot start the early TCP prediction: {e}"))
                .ok()
        });
        EarlyTcp {
            udp_kept: None,
            running,
        }
    }

    /// The server's first UDP answer: socket `local` appeared as `mapped`.
    fn answered(&mut self, local: SocketAddr, mapped: SocketAddr) {
        self.udp_kept = Some(mapped.port() == local.port());
    }

    /// The prediction, when both answers kept our port and it predicts that port (`udp`
    /// from the classification decides what one sample cannot). Waits for the TCP answer;
    /// `None` means: predict again.
    pub(super) fn finish(self, udp: NatInfo) -> Option<TcpPrep> {
        let (local, h) = self.running?;
        let samples = match h.join() {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!("early TCP Binding failed ({e}); predicting again");
                return None;
            }
            Err(_) => return None,
        };
        let prep = from_samples(local, samples, udp);
        let kept = self.udp_kept == Some(true) && prep.prediction.port == local.port();
        if !kept {
            tracing::info!("{}; predicting again", prep.describe());
        }
        kept.then_some(prep)
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
    /// A sequential counter no other host's flow moved: the samples stepped by exactly its
    /// delta (`delta_spread` `[0, 0]`) and the late probes, an interval apart, saw no other
    /// flow either (`other_flows_per_s` 0).
    pub(super) quiet_counter: bool,
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
            if let Event::ServerAnswered { local, mapped, .. } = ev {
                tcp.answered(local, mapped);
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
        quiet_counter: udp.delta_spread == Some([0, 0]) && udp.other_flows_per_s == Some(0.0),
        samples: udp.allocation_samples,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn the_early_tcp_syn_has_left_when_it_starts() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let to = server.local_addr().unwrap();
        let early = EarlyTcp::start(to, Some(to.ip()));
        // Loopback completes the handshake within connect(): the connection is already
        // queued, so the UDP classification started next comes after its SYN at any NAT.
        let (conn, _) = server
            .accept()
            .expect("the early TCP SYN was sent before start returned");
        drop(conn);
        assert!(early.running.is_some());
    }
}

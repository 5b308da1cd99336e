//! Relay first, then direct (UDP): when both peers hold allocations, the stream starts
//! through the relay at once and the punch goes on beside it; the punched path takes the
//! stream over as soon as it opens, and a direct path that stops answering hands it back
//! to the relay (see `transport::quic::upgrade`). The peer's first byte then waits for
//! neither the punch's budget nor a failed sweep.

use super::relay::Relay;
use super::stream::{done, run_quic, FirstByte, RelayPeer};
use super::udp_punch::{punch_udp, Attempt, Attempted};
use super::{ConnectConfig, ConnectReport, Me};
use crate::core::rendezvous::client::Introduction;
use crate::driver::Status;
use crate::os::capture::Capture;
use crate::os::signals::Shutdown;
use crate::transport::quic::upgrade::{DirectPath, PathChange, Upgrade};
use crate::transport::quic::{Identity, Path, RelayLink, Role};
use crate::Error;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The relayed path the stream can start on now.
pub(super) struct Ready {
    link: RelayLink,
    peer_relayed: SocketAddr,
    peer_fp: [u8; 32],
}

/// Both sides hold allocations and the peer's relayed offer verifies: the stream may start
/// on the relay. Both peers see both offers, so both decide alike.
pub(super) fn ready(relay: Option<&Relay>, peer: &RelayPeer) -> Option<Ready> {
    let relay = relay?;
    let offer = peer.offer.as_ref()?;
    let (peer_relayed, peer_fp) =
        crate::core::turn::offer::verify_offer(&peer.key, &peer.peer_id, offer)?;
    let link = relay.link(peer_relayed)?;
    Some(Ready {
        link,
        peer_relayed,
        peer_fp,
    })
}

/// What the path did, for the report.
#[derive(Default)]
struct PathLog {
    direct_at: Option<Instant>,
    direct: Option<(SocketAddr, SocketAddr)>,
}

/// Runs the stream on `via` while punching on `main`.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    cfg: &ConnectConfig,
    status: &Status,
    started: Instant,
    deadline: Instant,
    report: &mut ConnectReport,
    intro: Introduction,
    main: UdpSocket,
    me: Me,
    capture: Option<Capture>,
    shutdown: &Shutdown,
    relay: &Relay,
    via: Ready,
    identity: &Identity,
    controlling: bool,
) -> Result<(), Error> {
    let log = Arc::new(Mutex::new(PathLog::default()));
    let up = {
        let (log, status) = (log.clone(), status.clone());
        Upgrade::new(
            crate::core::rendezvous::peer_rtt(me.classified.rtt, intro.peer.rtt_ms),
            Box::new(move |change| match change {
                PathChange::Direct { remote } => {
                    lock(&log).direct_at.get_or_insert_with(Instant::now);
                    status.say(format!(
                        "path: direct to {remote} after {} ms; the relay stays as a fallback",
                        started.elapsed().as_millis()
                    ));
                }
                PathChange::Relay { silent } => {
                    status.say(format!(
                        "path: the direct path has not answered for {} ms; back through the relay",
                        silent.as_millis()
                    ));
                }
            }),
        )
    };
    report.local = Some(via.link.local);
    report.peer = Some(via.peer_relayed);
    report.connected = true;
    report.path = Some("relay");
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report.now_connected();
    status.say(format!(
        "relay first: the stream starts through the relay {} (our relayed address {}, the peer's {}) while the punch goes on",
        relay.server, via.link.local, via.peer_relayed
    ));
    let role = if controlling {
        Role::Client
    } else {
        Role::Server
    };
    // Ends the punch when the stream ends first (a short stream, or a failure).
    let punch_stop = Shutdown::manual();
    let mut punch_report = ConnectReport::default();
    // The outcome waits for the punch: the path it leaves the stream on is the final one.
    let outcome = report.outcome.clone();
    let connected_ms = report.elapsed_ms;
    let mut first = FirstByte::new(cfg)?;
    let stats = std::thread::scope(|scope| {
        let punching = scope.spawn(|| {
            let (mut me, mut capture) = (me, capture);
            // One attempt with the whole budget: the stream already runs on the relay.
            let at = Attempt {
                number: 1,
                first_start: intro.start,
                may_retry: false,
            };
            let r = match punch_udp(
                cfg,
                status,
                deadline,
                &mut punch_report,
                &intro,
                main,
                &mut me,
                &mut capture,
                &punch_stop,
                at,
            ) {
                Ok(Attempted::Punched(p)) => Ok(p),
                Ok(Attempted::Missed(e, _)) | Err(e) => Err(e),
            };
            let path = if r.is_ok() { "direct" } else { "relay" };
            if let (Some(o), false) = (&outcome, matches!(r, Err(Error::Interrupted { .. }))) {
                o.send(
                    "success",
                    punch_report.strategy,
                    Some(path),
                    Some(connected_ms),
                );
            }
            match r {
                Ok(p) => {
                    lock(&log).direct = Some((p.local, p.remote));
                    up.install(DirectPath {
                        socket: p.socket,
                        remote: p.remote,
                    });
                }
                Err(Error::Interrupted { .. }) => {}
                Err(e) => status.say(format!(
                    "no direct path ({e}); the stream stays on the relay"
                )),
            }
        });
        let stats = run_quic(
            Path::RelayFirst(via.link, up.clone()),
            via.peer_relayed,
            role,
            identity,
            via.peer_fp,
            cfg,
            shutdown,
            first.writer(),
        );
        punch_stop.trigger();
        let _ = punching.join();
        stats
    });
    first.report(report, started);
    report.strategy = punch_report.strategy;
    report.probes_sent = punch_report.probes_sent;
    report.punch_attempts = punch_report.punch_attempts;
    let l = lock(&log);
    if let Some(at) = l.direct_at {
        report.time_to_direct_ms = Some(at.saturating_duration_since(started).as_millis() as u64);
        report.time_to_punched_ms = report.time_to_direct_ms;
    }
    if let (Some((local, remote)), true) = (l.direct, up.is_direct()) {
        report.path = Some("direct");
        report.local = Some(local);
        report.peer = Some(remote);
    }
    let stats = stats.map_err(|e| super::stream::relay_lost(relay, e))?;
    done(report, status, stats, started);
    Ok(())
}

fn lock(log: &Mutex<PathLog>) -> std::sync::MutexGuard<'_, PathLog> {
    match log.lock() {
        Ok(l) => l,
        Err(p) => p.into_inner(),
    }
}

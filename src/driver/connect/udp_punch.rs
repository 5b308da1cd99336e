//! The UDP punch: from the agreed start, every candidate of both families, until a pair
//! works both ways.

use super::announce::{announce_udp_punch, finish_capture};
use super::stream::UdpPunched;
use super::{ConnectConfig, ConnectReport, Me};
use crate::core::punch::explain::{explain_failure, explain_lockstep_failure};
use crate::core::punch::{Event as PunchEvent, Failure, Punch, PunchConfig, Strategy};
use crate::core::rendezvous::client::Introduction;
use crate::core::Machine;
use crate::driver::udp::{drive, flush};
use crate::driver::Status;
use crate::os::capture::Capture;
use crate::os::signals::Shutdown;
use crate::os::udp::bind_fresh;
use crate::Error;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

/// Punches from the agreed start until a pair works both ways, the budget ends, or the
/// peer's packets fail authentication.
#[allow(clippy::too_many_arguments)]
pub(super) fn punch_udp(
    cfg: &ConnectConfig,
    status: &Status,
    deadline: Instant,
    report: &mut ConnectReport,
    intro: Introduction,
    main: UdpSocket,
    me: Me,
    mut capture: Option<Capture>,
    shutdown: &Shutdown,
) -> Result<UdpPunched, Error> {
    let nat = me.classified.nat;
    let my_locals = me.locals();
    main.set_nonblocking(true)
        .map_err(|e| Error::io("socket option", e))?;
    let mut pcfg = PunchConfig {
        my_id: me.my_id,
        my_nat: nat,
        my_public: intro.me,
        my_locals,
        my_mapped: me.mapped,
        peer: intro.peer.clone(),
        key: me.key,
        fingerprint: me.fingerprint,
        budget: cfg.punch_budget,
        rate: cfg.rate,
        window: cfg.window,
        sweep_sockets: cfg.sweep_sockets,
        seed: rand::random(),
    };
    let strategy = pcfg.strategy();
    report.strategy = Some(strategy);
    // The punch must end before the overall timeout.
    let left = deadline.saturating_duration_since(intro.start);
    pcfg.budget = pcfg.budget.min(left.max(Duration::from_secs(1)));
    announce_udp_punch(status, cfg, &pcfg, &intro);
    let mut sockets = vec![main];
    let mut locals = me.main_local;
    if pcfg.sockets_needed() > 1 {
        let (more, more_locals) = bind_fresh(me.classified.local_ip, pcfg.sockets_needed() - 1)?;
        sockets.extend(more);
        locals.extend(more_locals);
    }
    if let (Some(k), Some(v6)) = (pcfg.other_family_socket(), me.ipv6) {
        if let Some(socket) = v6.udp {
            debug_assert_eq!(k, sockets.len(), "the IPv6 socket follows the IPv4 ones");
            sockets.push(socket);
            locals.push(v6.candidates[0]);
        }
    }
    let controlling = pcfg.my_id > pcfg.peer.id;
    let mut punch = Punch::new(pcfg, intro.start);
    let mut outcome = None;
    status.say("punching ...");
    drive(
        &mut punch,
        &sockets,
        &locals,
        capture.as_mut(),
        shutdown,
        |p| {
            while let Some(ev) = p.poll_event() {
                match ev {
                    PunchEvent::Progress { probes } => {
                        status.say(format!("sweep: {probes} probes sent"))
                    }
                    PunchEvent::Connected { .. } | PunchEvent::Failed(_) => outcome = Some(ev),
                    PunchEvent::Started { .. } => {}
                }
            }
            outcome.is_none()
        },
    )?;
    report.probes_sent = punch.probes;
    let (socket, remote, peer_fp) = match outcome {
        Some(PunchEvent::Connected {
            socket,
            remote,
            peer_fingerprint,
            ..
        }) => (socket, remote, peer_fingerprint),
        Some(PunchEvent::Failed(Failure::AuthFailed { rejected })) => {
            return Err(Error::AuthFailed { rejected });
        }
        _ => {
            return Err(Error::PunchFailed {
                strategy: strategy.as_str(),
                probes: punch.probes,
                explanation: match punch.lockstep() {
                    Some(l) => explain_lockstep_failure(&l),
                    None => explain_failure(&nat, &intro.peer.nat, strategy),
                },
            })
        }
    };
    // The other family's path (IPv6 beside IPv4) is probed directly, whatever socket 0 did.
    let strategy = if remote.is_ipv4() == intro.me.is_ipv4() {
        strategy
    } else {
        status.say(format!("the {remote} path came first: over IPv6"));
        report.strategy = Some(Strategy::Direct);
        Strategy::Direct
    };
    // The last answer and the nominations still go out on the chosen socket.
    flush(&mut punch, &sockets, &locals, capture.as_mut())?;
    finish_capture(capture, status)?;
    let local = locals[socket];
    let chosen = sockets.swap_remove(socket);
    drop(sockets);
    chosen
        .set_nonblocking(false)
        .map_err(|e| Error::io("socket option", e))?;
    Ok(UdpPunched {
        socket: chosen,
        local,
        remote,
        peer_fp,
        controlling,
        strategy,
    })
}

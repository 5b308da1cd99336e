//! The UDP punch: from the agreed start, every candidate of both families, until a pair
//! works both ways.

use super::announce::{announce_udp_punch, finish_capture};
use super::stream::UdpPunched;
use super::{ConnectConfig, ConnectReport, Me};
use crate::core::punch::explain::{explain_failure, explain_lockstep_failure};
use crate::core::punch::lockstep::{Lockstep, Retry, ATTEMPTS};
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

/// How a UDP punch attempt ended, when no error ended the run.
pub(super) enum Attempted {
    /// A pair works both ways.
    Punched(UdpPunched),
    /// The lockstep's window did not meet in its time and the plan holds another attempt
    /// ([`Retry`], whose window time also bounds the wait for the peer's next registration);
    /// the error is what the run ends with should that registration fail.
    Missed(Error, Retry),
}

/// Which attempt of the punch this is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attempt {
    /// From 1.
    pub number: u32,
    /// The first attempt's agreed start: the punch budget counts from it.
    pub first_start: Instant,
    /// Whether a window that did not meet may be given up for another ([`Retry`]); not
    /// while the stream already runs on the relay.
    pub may_retry: bool,
}

/// One attempt of the punch ([`Attempt`]): punches from the agreed start until a pair works
/// both ways, the budget ends, or the peer's packets fail authentication. Takes our IPv6
/// socket: a later attempt is IPv4 only, as only two sequential IPv4 NATs make one.
#[allow(clippy::too_many_arguments)]
pub(super) fn punch_udp(
    cfg: &ConnectConfig,
    status: &Status,
    deadline: Instant,
    report: &mut ConnectReport,
    intro: &Introduction,
    main: UdpSocket,
    me: &mut Me,
    capture: &mut Option<Capture>,
    shutdown: &Shutdown,
    at: Attempt,
) -> Result<Attempted, Error> {
    let (attempt, first_start) = (at.number, at.first_start);
    let nat = me.classified.nat;
    let my_locals = me.locals();
    main.set_nonblocking(true)
        .map_err(|e| Error::io("socket option", e))?;
    let mut pcfg = PunchConfig {
        my_id: me.my_id.clone(),
        my_nat: nat,
        my_public: intro.me,
        my_locals,
        my_mapped: me.mapped,
        peer: intro.peer.clone(),
        key: me.key,
        fingerprint: me.fingerprint,
        budget: cfg.punch_budget,
        rate: cfg.rate,
        window: Retry::window(cfg.window, attempt),
        sweep_sockets: cfg.sweep_sockets,
        seed: rand::random(),
    };
    let strategy = pcfg.strategy();
    report.strategy = Some(strategy);
    report.punch_attempts = Some(attempt);
    // The punch must end before the overall timeout; its budget counts from the first
    // attempt's start, and an attempt that leaves room for another gives its window up early.
    let since_first = intro.start.saturating_duration_since(first_start);
    let budget = pcfg
        .budget
        .min(deadline.saturating_duration_since(first_start));
    let peer_rtt = crate::core::rendezvous::peer_rtt(me.classified.rtt, intro.peer.rtt_ms);
    let retry = Lockstep::new(&pcfg)
        .filter(|_| at.may_retry)
        .and_then(|_| Retry::plan(attempt, since_first, budget, peer_rtt));
    pcfg.budget = match retry {
        Some(r) => r.window_time,
        None => budget
            .saturating_sub(since_first)
            .max(Duration::from_secs(1)),
    };
    announce_udp_punch(status, cfg, &pcfg, intro);
    if let Some(r) = retry {
        status.say(format!(
            "a window that has not met in {} ms is given up for another from fresh registrations (attempt {attempt} of at most {ATTEMPTS})",
            r.window_time.as_millis()
        ));
    }
    let mut sockets = vec![main];
    let mut locals = me.main_local.clone();
    if pcfg.sockets_needed() > 1 {
        let (more, more_locals) = bind_fresh(me.classified.local_ip, pcfg.sockets_needed() - 1)?;
        sockets.extend(more);
        locals.extend(more_locals);
    }
    if let (Some(k), Some(v6)) = (pcfg.other_family_socket(), me.ipv6.take()) {
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
    report.probes_sent += punch.probes;
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
            let mut explanation = match punch.lockstep() {
                Some(l) => explain_lockstep_failure(&l),
                None => explain_failure(&nat, &intro.peer.nat, strategy),
            };
            if attempt > 1 {
                explanation.push_str(&format!(
                    " ({attempt} windows missed, each after fresh registrations, the later ones wider)"
                ));
            }
            let failed = Error::PunchFailed {
                strategy: strategy.as_str(),
                probes: report.probes_sent,
                explanation,
            };
            return match retry {
                Some(r) if !shutdown.requested() => Ok(Attempted::Missed(failed, r)),
                _ => Err(failed),
            };
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
    finish_capture(capture.take(), status)?;
    let local = locals[socket];
    let chosen = sockets.swap_remove(socket);
    drop(sockets);
    chosen
        .set_nonblocking(false)
        .map_err(|e| Error::io("socket option", e))?;
    Ok(Attempted::Punched(UdpPunched {
        socket: chosen,
        local,
        remote,
        peer_fp,
        controlling,
        strategy,
    }))
}

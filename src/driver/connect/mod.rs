//! `punchraw connect`: quick classification, rendezvous, the punch at the agreed moment, then
//! a QUIC stream carrying stdin/stdout over the punched socket.

mod announce;
mod blocked;
mod classify;
mod io;
mod main_socket;
mod outcome;
mod pairing;
mod portmap;
mod relay;
mod relay_first;
mod rendezvous;
mod report;
mod stream;
mod tcp_connect;
pub mod tcp_punch;
mod udp_punch;

use crate::core::punch::explain::{describe_plan, explain_tcp_failure};
use crate::core::punch::{derive_key, tcp, Strategy};
use crate::core::rendezvous::client::{ClientConfig, Introduction, RELAY_SYNC};
use crate::core::rendezvous::retry_session;
use crate::core::rendezvous::{NatInfo, RelayOffer, TcpOffer, MAX_LOCALS};
use crate::driver::kebab;
use crate::driver::Status;
use crate::os::capture::Capture;
use crate::os::signals::Shutdown;
use crate::transport::quic::{Identity, Role};
use crate::transport::tls::TlsSide;
use crate::Error;
use announce::finish_capture;
use classify::{classify, Classified};
use rendezvous::{hex_id, rendezvous, TcpOfferState};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use stream::stream_udp;
use tcp_connect::{connect_tcp, TcpStart};
use udp_punch::{punch_udp, Attempt, Attempted};

/// What one `punchraw connect` does, built by the command line's parser (also for
/// `api::Connect`): where to meet the peer, how to punch, where the stream's bytes go.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// The rendezvous server (`--server`); also the STUN server the NAT is classified
    /// against.
    pub server: SocketAddr,
    /// The session name both peers give; the server introduces the two peers of a session.
    /// Empty with `pairing`, which supplies it.
    pub session: String,
    /// The shared secret that keys the punch MACs and pins the certificates; `None`: the
    /// session name is the key (with a warning).
    pub secret: Option<String>,
    /// Bounds the wait for the peer plus the punch.
    pub timeout: Duration,
    /// Write the JSON [`ConnectReport`] to this file (`--report`), on success and failure.
    pub report: Option<PathBuf>,
    /// Write every packet sent and received to this pcap file (`--capture`).
    pub capture: Option<PathBuf>,
    /// Local IP to use (`--bind`); `None`: the one the OS routes to the server from.
    pub bind: Option<IpAddr>,
    /// Offer and try IPv6 host addresses beside the IPv4 path (not `-4`).
    pub ipv6: bool,
    /// Keep-alive interval on the established stream (`--keepalive`), well under NAT UDP
    /// timeouts.
    pub keepalive: Duration,
    /// Most punch probes per second (`--rate`): the sweep's pace and the cap on all punch
    /// traffic.
    pub rate: u32,
    /// Ports past the peer's last seen port to try when predicting a sequential NAT
    /// (`--window`); both peers should give the same value.
    pub window: u16,
    /// Extra sockets (over TCP, connections from fresh ports) the side behind a random-port
    /// NAT opens in a birthday sweep (`--sweep-sockets`).
    pub sweep_sockets: usize,
    /// Time allowed for the punch itself, from the agreed start.
    pub punch_budget: Duration,
    /// Punch TCP instead of UDP (`--tcp`).
    pub tcp: bool,
    /// TTL of the first SYN of each TCP attempt.
    pub prime_ttl: PrimeTtl,
    /// Start the punch this long after the agreed moment (`--start-delay-ms`, for tests that
    /// need one side's packets to arrive first).
    pub start_delay: Duration,
    /// Who sends the TCP punch's SYNs (`--syn-engine`).
    pub syn_engine: tcp_punch::SynEngine,
    /// Ask the router to map the punch port (`--port-mapping auto`).
    pub port_mapping: bool,
    /// The lifetime to ask for (renewed at half of what is granted).
    pub port_mapping_lifetime: Duration,
    /// The TURN relay to fall back to when no hole opens (`--relay`).
    pub relay: RelayMode,
    /// `--code`: pair with a short code first; `session` and `secret` then come from it.
    pub pairing: Option<Pairing>,
    /// Tell the rendezvous server what the connect came to (not `--no-report-outcome`).
    pub report_outcome: bool,
    /// Where the stream's bytes come from and go to.
    pub io: StreamIo,
    /// Told when the stream's path is open.
    pub on_connected: Option<OnConnected>,
    /// Stops the connect when triggered. `None`: SIGINT and SIGTERM do (the command line);
    /// an embedder gives its own and leaves its process's signals alone.
    pub shutdown: Option<Shutdown>,
}

pub use io::{OnConnected, StreamIo};
pub use pairing::Pairing;
pub use report::ConnectReport;

pub use crate::core::punch::priming::PrimeTtl;
pub use relay::{RelayMode, RelayTransport};

/// `punchraw connect`: [`run_report`] without the report, the result as an exit code
/// (success once the stream ended cleanly).
pub fn run(cfg: ConnectConfig, status: &Status) -> Result<ExitCode, Error> {
    let (_, result) = run_report(cfg, status);
    result.map(|()| ExitCode::SUCCESS)
}

/// [`run`], returning the report (also written to `cfg.report` when given) beside the result.
pub fn run_report(cfg: ConnectConfig, status: &Status) -> (ConnectReport, Result<(), Error>) {
    let started = Instant::now();
    let mut report = ConnectReport {
        transport: if cfg.tcp { "tcp" } else { "udp" },
        on_connected: cfg.on_connected.clone(),
        ..ConnectReport::default()
    };
    // Created now, while we may still write where root may: `--tcp` gives up root before
    // the report is written, and a bad path is better told before the punch than after.
    let report_file = match cfg.report.as_ref().map(std::fs::File::create).transpose() {
        Ok(f) => f,
        Err(e) => {
            let path = cfg.report.as_deref().unwrap_or(std::path::Path::new(""));
            let e = Error::io(format!("cannot write report {}", path.display()), e);
            return (report, Err(e));
        }
    };
    let mut result = connect(&cfg, status, started, &mut report);
    // Whoever waited for the connection hears, by this going away, that none is coming.
    report.on_connected = None;
    // Whatever was not said on the way (a failure, mostly) is said now.
    if let Some(o) = &report.outcome {
        match &result {
            Ok(()) => o.send_success(&report, report.path),
            Err(e) => o.send(e.outcome_reason(), report.strategy, None, None),
        }
    }
    if !report.connected {
        report.elapsed_ms = started.elapsed().as_millis() as u64;
    }
    if let Err(e) = &result {
        report.error = Some(e.chain());
    }
    if let (Some(mut file), Some(path)) = (report_file, &cfg.report) {
        let written = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::io("serialising the report", e.into()))
            .and_then(|json| {
                std::io::Write::write_all(&mut file, (json + "\n").as_bytes())
                    .map_err(|e| Error::io(format!("cannot write report {}", path.display()), e))
            });
        if let (Err(e), Ok(())) = (written, &result) {
            result = Err(e);
        }
    }
    (report, result)
}

/// Who we are in this run, settled before the rendezvous.
struct Me {
    classified: Classified,
    /// Addresses of the rendezvous socket on our interfaces.
    main_local: Vec<SocketAddr>,
    /// With `--tcp`: the request that opened the rendezvous flow before the TCP prediction.
    opening: Option<crate::core::stun::TransactionId>,
    my_id: String,
    /// The punch key (never sent; the rendezvous key is derived apart from it).
    key: [u8; 32],
    fingerprint: [u8; 32],
    /// Our UDP punch port as our router maps it.
    mapped: Option<SocketAddr>,
    secret: String,
    ipv6: Option<main_socket::Ipv6Side>,
}

impl Me {
    /// What the peer learns as our locals: the rendezvous socket's, then our IPv6 ones.
    fn locals(&self) -> Vec<SocketAddr> {
        let v6 = self.ipv6.iter().flat_map(|s| s.candidates.iter());
        self.main_local.iter().chain(v6).copied().collect()
    }
}

fn connect(
    cfg: &ConnectConfig,
    status: &Status,
    started: Instant,
    report: &mut ConnectReport,
) -> Result<(), Error> {
    let shutdown = match &cfg.shutdown {
        Some(s) => s.clone(),
        None => Shutdown::install().map_err(|e| Error::io("cannot install signal handlers", e))?,
    };
    let paired;
    let cfg = match cfg.pairing {
        Some(how) => {
            let (session, secret) = pairing::pair(cfg, status, &shutdown, how)?;
            paired = ConnectConfig {
                session,
                secret: Some(secret),
                pairing: None,
                ..cfg.clone()
            };
            &paired
        }
        None => cfg,
    };
    if cfg.tcp {
        tcp_punch::check_privileges(cfg.syn_engine)?;
    }
    let secret = rendezvous::secret(cfg, status);
    let key = derive_key(secret.as_bytes(), &cfg.session);
    let mut capture = cfg.capture.as_deref().map(Capture::create).transpose()?;
    // The UDP mapping and the relay allocation are asked for while the NAT is classified.
    let (pre_bound, early) = portmap::udp_early(cfg, status)?;
    let (reserved, tcp_early) = portmap::tcp_early(cfg, status)?;
    let deadline = started + cfg.timeout;
    // Freed when dropped, on every way out of here.
    let relay = relay::begin(cfg, status, &secret, deadline);
    let ip = reserved.as_ref().map(|r| r.local.ip());
    let mut early_tcp = classify::EarlyTcp::start(cfg.server, ip);
    let classified = classify(
        cfg,
        status,
        started,
        &shutdown,
        capture.as_mut(),
        &mut early_tcp,
    )?;
    let mut classified = match classified {
        Ok(c) => c,
        Err(b) => {
            return blocked::connect(cfg, status, started, report, b, relay, secret, &shutdown)
        }
    };
    let classified_at = Instant::now();
    let identity = Identity::generate()?;
    let pre_local = pre_bound.as_ref().map(|b| b.1);
    // Held until we return, whichever way: dropping it deletes the mapping.
    // A quiet counter spares no wait here: the UDP prediction is not redone while we wait
    // for the peer at the rendezvous, so other hosts' flows meanwhile (a first peer may
    // wait long) can carry the counter past it, where the mapping would still reach us (the
    // lab: sequential NATs with 5 other flows a second, a first peer kept 2 s).
    let patience = portmap::Patience::for_nat(&classified.nat, false, classified_at);
    let (mut _mapping, mut mapped) =
        portmap::finish(early, status, &shutdown, &mut report.port_mapping, patience)?;
    // A busy counter moved on while the router was asked: its range starts from here.
    let c = &mut classified;
    if let (Some(range), Some(drift)) = (c.nat.range, c.range_drift) {
        let moved = crate::core::classify::drift_range(range, drift, classified_at.elapsed());
        c.nat.range = Some(moved);
    }
    let (main, main_local, opening) =
        main_socket::open_main(cfg, status, &classified, pre_bound, None)?;
    // A fresh socket replaced the one mapped (a stale NAT mapping of its port): its port is
    // mapped in turn -- when the router mapped the first one. One that offered no mapping
    // would not now either, and asking again costs up to SSDP's 2 s, in which a busy port
    // counter moves beyond what the punch's prediction absorbs (seen in the lab: a sequential
    // pair with other subscribers' flows, at 40 ms).
    if pre_local.is_some_and(|l| l != main_local[0]) && _mapping.is_some() {
        drop(_mapping.take());
        (_mapping, mapped) = portmap::for_connect(
            cfg,
            crate::core::portmap::Protocol::Udp,
            main_local[0],
            status,
            &shutdown,
            &mut report.port_mapping,
            portmap::Patience::for_nat(&classified.nat, false, Instant::now()),
        )?;
    }
    let ipv6 = main_socket::open_ipv6(cfg, status, MAX_LOCALS - main_local.len());
    let me = Me {
        ipv6,
        mapped,
        secret,
        classified,
        main_local,
        opening,
        my_id: hex_id(),
        key,
        fingerprint: identity.fingerprint(),
    };
    let (relay, refused) = relay::settled(relay, cfg, status, &|| shutdown.requested())?;
    let predicted = early_tcp.finish(me.classified.nat);
    let mut tcp_mapping = portmap::TcpMapping {
        reserved,
        predicted,
        early: tcp_early,
        ..portmap::TcpMapping::default()
    };
    let met = meet(
        cfg,
        status,
        &shutdown,
        deadline,
        &main,
        &me,
        &mut tcp_mapping,
        relay.as_ref(),
    );
    report.relay = relay.as_ref().and_then(|r| r.relayed());
    if tcp_mapping.report.is_some() {
        report.port_mapping = tcp_mapping.report.take();
    }
    let (intro, tcp_prep, registered) = met?;
    if cfg.report_outcome {
        report.outcome = Some(std::sync::Arc::new(outcome::OutcomeTo {
            server: cfg.server,
            session: cfg.session.clone(),
            peer_id: me.my_id.clone(),
            key: crate::core::rendezvous::derive_rendezvous_key(me.secret.as_bytes(), &cfg.session),
            nat: me.classified.nat,
            peer_nat: intro.peer.nat,
            transport: report.transport,
            sent: Default::default(),
        }));
    }
    let signer = me.offer_key();
    // The socket the rendezvous ran on, for `relay_offers` once `main` went to the punch.
    let rdv_sock = main
        .try_clone()
        .map_err(|e| Error::io("cannot duplicate the rendezvous socket", e))?;
    let peer = stream::RelayPeer {
        offer: intro.peer.relayed.clone(),
        peer_id: intro.peer.id.clone(),
        key: me.key,
        controlling: me.my_id > intro.peer.id,
    };
    // Both sides hold allocations: the stream starts on the relay while the UDP punch goes on.
    let relay_first = (!cfg.tcp && !intro.peer.udp_blocked)
        .then(|| relay_first::ready(relay.as_ref(), &peer))
        .flatten();
    let controlling = peer.controlling;
    // What a later lockstep attempt registers with (`meet_again`).
    let again = registered.0.clone();
    // No hole opened: through the relay, when both sides hold allocations.
    let relayed = |failed: Error, report: &mut ConnectReport| {
        let r = relay.as_ref();
        let failed = relay::no_direct_path(r, refused, failed);
        let mut peer = peer;
        if let (Some(r), false) = (r, registered.0.relay_hold) {
            // The introduction did not wait for the offers (`--tcp`): ours may not have
            // reached the peer, nor the peer's us. Both sides falling back come here.
            let latest = relay_offers(
                &rdv_sock, registered, &signer, r, deadline, &shutdown, status,
            );
            peer.offer = latest.or(peer.offer);
            report.relay = r.relayed();
        }
        stream::stream_relayed(
            cfg, status, started, report, r, peer, &identity, &shutdown, failed,
        )
    };
    if intro.peer.udp_blocked {
        return relayed(blocked::peer_blocked(status), report);
    }
    if let Some(prep) = tcp_prep {
        // The rendezvous socket stays open until the end: it keeps our UDP mapping toward
        // the server, which nothing needs any more, but closing it costs nothing either.
        let peer_rtt = crate::core::rendezvous::peer_rtt(me.classified.rtt, intro.peer.rtt_ms);
        let start = TcpStart {
            intro,
            prep,
            // The relayed stream, should the punch fail, shows the peer the same
            // certificate that our relayed offer named.
            identity: identity.duplicate(),
            key: me.key,
            my_id: me.my_id,
            peer_rtt,
            my_mapped: tcp_mapping.mapped,
            ipv6: me.ipv6,
        };
        return match connect_tcp(cfg, status, started, report, start, capture, &shutdown) {
            Err(failed @ Error::PunchFailed { .. }) => relayed(failed, report),
            r => r,
        };
    }
    if let (Some(via), Some(r)) = (relay_first, relay.as_ref()) {
        return relay_first::run(
            cfg,
            status,
            started,
            deadline,
            report,
            intro,
            main,
            me,
            capture,
            &shutdown,
            r,
            via,
            &identity,
            controlling,
        );
    }
    let (mut me, mut intro, mut main, mut capture) = (me, intro, main, capture);
    let first_start = intro.start;
    let mut attempt = 1;
    let punched = loop {
        let at = Attempt {
            number: attempt,
            first_start,
            may_retry: true,
        };
        let (failed, retry) = match punch_udp(
            cfg,
            status,
            deadline,
            report,
            &intro,
            main,
            &mut me,
            &mut capture,
            &shutdown,
            at,
        ) {
            Ok(Attempted::Punched(p)) => break p,
            Ok(Attempted::Missed(failed, retry)) => (failed, retry),
            Err(failed @ Error::PunchFailed { .. }) => return relayed(failed, report),
            Err(e) => return Err(e),
        };
        attempt += 1;
        let (wait, since) = (retry.window_time, intro.me.port());
        match meet_again(
            cfg, status, &shutdown, deadline, &mut me, &again, attempt, wait, since,
        ) {
            Ok((m, i)) => (main, intro) = (m, i),
            Err(e @ Error::Interrupted { .. }) => return Err(e),
            Err(e) => {
                status.say(format!("no fresh window: {e}"));
                return relayed(failed, report);
            }
        }
    };
    stream_udp(cfg, status, started, report, punched, &identity, &shutdown)
}

/// After a lockstep window that did not meet ([`crate::core::punch::lockstep::Retry`]): a
/// fresh socket registers in the attempt's session ([`retry_session`]) and waits at most
/// `wait` for the peer's fresh registration, which shows where both port counters are now.
/// `since`: our last registered port (a new flow's port past it is fresh, see
/// [`main_socket::open_main`]).
#[allow(clippy::too_many_arguments)]
fn meet_again(
    cfg: &ConnectConfig,
    status: &Status,
    shutdown: &Shutdown,
    deadline: Instant,
    me: &mut Me,
    registered: &ClientConfig,
    attempt: u32,
    wait: Duration,
    since: u16,
) -> Result<(UdpSocket, Introduction), Error> {
    let (main, main_local, _) =
        main_socket::open_main(cfg, status, &me.classified, None, Some(since))?;
    me.main_local = main_local;
    // A router's mapping was of the first socket's port (and with one the punch aims there,
    // never in a lockstep).
    me.mapped = None;
    let session = retry_session(&cfg.session, attempt);
    status.say(format!(
        "the window did not meet: registering again from a fresh socket (session \"{session}\"), where both port counters are now"
    ));
    let client = ClientConfig {
        session,
        locals: me.locals(),
        tcp: None,
        mapped: None,
        relayed: None,
        relay_hold: false,
        deadline: deadline.min(Instant::now() + wait),
        ..registered.clone()
    };
    let (intro, _) = rendezvous(&main, client, 0, None, None, None, shutdown, status)?;
    Ok((main, intro))
}

/// Makes the first TCP offer (with `--tcp`) and meets the peer at the rendezvous; returns
/// the introduction, with `--tcp` the TCP prediction as last refreshed, and what we
/// registered with (for [`relay_offers`]).
#[allow(clippy::too_many_arguments)]
fn meet(
    cfg: &ConnectConfig,
    status: &Status,
    shutdown: &Shutdown,
    deadline: Instant,
    main: &UdpSocket,
    me: &Me,
    mapping: &mut portmap::TcpMapping,
    relay: Option<&relay::Relay>,
) -> Result<(Introduction, Option<tcp_punch::TcpPrep>, Registered), Error> {
    let c = &me.classified;
    // Once the router maps the punch port, the prediction keeps that port.
    let pinned = std::cell::OnceCell::new();
    let with_offer = |prep: tcp_punch::TcpPrep| {
        let offer = tcp::make_offer(
            &me.key,
            &me.my_id,
            prep.local.port(),
            &prep.prediction,
            &me.fingerprint,
        );
        (prep, offer)
    };
    let predict_tcp = || -> Result<(tcp_punch::TcpPrep, TcpOffer), Error> {
        if let Some(held) = pinned.get() {
            return Ok(Clone::clone(held));
        }
        let prep = tcp_punch::prepare(cfg.server, c.local_ip, c.other_address, c.nat)?;
        Ok(with_offer(prep))
    };
    let mut first_offer = None;
    let mut tcp = if cfg.tcp {
        // The prediction made beside the classification, or one from the port reserved
        // at the start, whose router mapping was asked for while the NAT was classified.
        let reserved = mapping.reserved.take();
        let predicted = mapping.predicted.take();
        let early_local = reserved.as_ref().map(|r| r.local);
        if predicted.is_none() {
            status.say(format!(
                "predicting our NAT's TCP ports toward {} ...",
                cfg.server
            ));
        }
        let mut beside = "";
        let (prep, offer) = match (predicted, reserved) {
            (Some(p), _) if p.local.ip() == c.local_ip => {
                beside = " (measured beside the UDP classification)";
                with_offer(p)
            }
            (_, Some(r)) if r.local.ip() == c.local_ip => with_offer(tcp_punch::prepare_from(
                r,
                cfg.server,
                c.other_address,
                c.nat,
            )?),
            _ => predict_tcp()?,
        };
        status.say(format!("{}{beside}", prep.describe()));
        // Endpoint-independent: what the router settled since it was asked, nothing of
        // SSDP's wait. A request not made early (another local address) gets a round trip
        // to the server (the router is nearer) for PCP or NAT-PMP; not so the prediction made
        // beside the classification, which such a NAT allows only when it kept our port:
        // the punch needs no mapping then, and that round trip delayed it by as much.
        // The early request maps the reserved port; a prediction from another one (another
        // local address, or beside the classification) asks for its own mapping.
        let early = match mapping.early.take() {
            Some(e) if early_local != Some(prep.local) => {
                if let Some(l) = early_local {
                    status.say(format!(
                            "port mapping of TCP port {} no longer wanted: the punch uses port {}; anything granted is deleted at exit",
                            l.port(),
                            prep.local.port()
                        ));
                }
                mapping.set_aside = Some(e.set_aside());
                None
            }
            e => e,
        };
        let extra = if early.is_some() || !beside.is_empty() {
            Duration::ZERO
        } else {
            me.classified.rtt
        };
        let ports: Vec<u16> = prep.samples.iter().map(|(_, m)| m.port()).collect();
        // The TCP offer is redone while we wait for the peer (`OFFER_REFRESH`); the UDP
        // late probes say whether other hosts' flows move the counter over time.
        let quiet = me.classified.quiet_counter
            && portmap::steps_exactly(&ports, prep.prediction.nat.delta);
        let patience =
            portmap::Patience::for_nat(&prep.prediction.nat, quiet, Instant::now() + extra);
        let (keeper, mapped) = match early {
            Some(started) => portmap::finish(
                Some(started),
                status,
                shutdown,
                &mut mapping.report,
                patience,
            )?,
            None => portmap::for_connect(
                cfg,
                crate::core::portmap::Protocol::Tcp,
                prep.local,
                status,
                shutdown,
                &mut mapping.report,
                patience,
            )?,
        };
        let (prep, offer) = if mapped.is_some() {
            let _ = pinned.set((prep.clone(), offer.clone()));
            (prep, offer)
        } else if cfg.port_mapping && matches!(patience, portmap::Patience::Full) {
            // The wait for the router aged the prediction (a counter moves on with other
            // hosts' flows): a fresh one.
            let (prep, offer) = predict_tcp()?;
            tracing::info!("{}", prep.describe());
            (prep, offer)
        } else {
            (prep, offer)
        };
        let ports: Vec<u16> = prep.samples.iter().map(|(_, m)| m.port()).collect();
        let (prep, offer) = match (me.opening, prep.prediction.nat.delta) {
            (Some(opening), Some(d))
                if mapped.is_none()
                    && prep.prediction.nat.allocation
                        == crate::core::classify::Allocation::Sequential
                    && main_socket::opened_after(main, cfg.server, opening, c.rtt, &ports, d) =>
            {
                status.say("our rendezvous flow opened after the TCP prediction and took the port it predicted (the request meant to open it first was lost); predicting again");
                let (prep, offer) = predict_tcp()?;
                status.say(prep.describe());
                (prep, offer)
            }
            _ => (prep, offer),
        };
        (mapping.keeper, mapping.mapped) = (keeper, mapped);
        first_offer = Some(offer);
        Some(TcpOfferState {
            prep,
            redo: &predict_tcp,
        })
    } else {
        None
    };
    let client = ClientConfig {
        server: cfg.server,
        session: cfg.session.clone(),
        secret: me.secret.clone().into_bytes(),
        peer_id: me.my_id.clone(),
        locals: me.locals(),
        nat: c.nat,
        tcp: first_offer,
        mapped: me.mapped.or(mapping.mapped),
        relayed: relay
            .and_then(|r| r.relayed())
            .map(|a| crate::core::turn::offer::make_offer(&me.key, &me.my_id, a, &me.fingerprint)),
        rtt: c.rtt,
        deadline,
        timeout: cfg.timeout,
        start_delay: cfg.start_delay,
        range_drift: c.range_drift,
        udp_blocked: false,
        // With `--tcp` the stream starts on the punched connection, never on the relay: the
        // offers are exchanged only should the punch fail (`relay_offers`).
        relay_hold: !cfg.tcp,
    };
    let resync = client.clone();
    let measure = || main_socket::fresh_mapped_port(c, cfg.server);
    let counter = c
        .range_drift
        .is_some()
        .then_some(&measure as &dyn Fn() -> Option<u16>);
    let signer = me.offer_key();
    let offer = |session_exists: bool| relay_state(relay, &signer, session_exists);
    let offer = relay.map(|_| &offer as &dyn Fn(bool) -> rendezvous::RelayState);
    let (intro, seq) = rendezvous(
        main,
        client,
        0,
        tcp.as_mut(),
        counter,
        offer,
        shutdown,
        status,
    )?;
    if let Some(r) = relay {
        // Introduced: the session exists, so an allocation refused for want of it is tried
        // again now rather than after its retry interval (the introduction no longer waits
        // for it with `--tcp`).
        r.poll_state(true);
    }
    // A peer whose UDP is blocked offers nothing to punch, TCP or UDP (its `tcp` is empty
    // whatever it was given): both sides go through the relay, which does not care.
    if intro.peer.tcp.is_some() != cfg.tcp && !intro.peer.udp_blocked {
        return Err(Error::TransportMismatch {
            peer_tcp: intro.peer.tcp.is_some(),
        });
    }
    Ok((intro, tcp.map(|t| t.prep), (resync, seq)))
}

/// What the first rendezvous registered with, and the number of its last register: where
/// [`relay_offers`] goes on from.
type Registered = (ClientConfig, u64);

/// What signs our relayed offer: the punch key, our peer id, our certificate's fingerprint.
#[derive(Clone)]
struct OfferKey {
    key: [u8; 32],
    my_id: String,
    fingerprint: [u8; 32],
}

impl Me {
    fn offer_key(&self) -> OfferKey {
        OfferKey {
            key: self.key,
            my_id: self.my_id.clone(),
            fingerprint: self.fingerprint,
        }
    }
}

/// Our relayed offer as it stands (see [`rendezvous::RelayState`]).
fn relay_state(
    relay: Option<&relay::Relay>,
    k: &OfferKey,
    session_exists: bool,
) -> rendezvous::RelayState {
    match relay.map(|r| r.poll_state(session_exists)) {
        Some(relay::State::Allocated(a)) => rendezvous::RelayState::Offer(
            crate::core::turn::offer::make_offer(&k.key, &k.my_id, a, &k.fingerprint),
        ),
        Some(relay::State::Allocating { .. }) => rendezvous::RelayState::Pending,
        _ => rendezvous::RelayState::GivenUp,
    }
}

/// The peer's latest relayed offer, after an introduction that did not wait for the offers
/// (`--tcp`): registers again from `main`, now until our offer went out and the peer's came
/// back, as the UDP punch's introduction waits ([`RELAY_SYNC`] at most). The peer, falling
/// back too, does the same.
#[allow(clippy::too_many_arguments)]
fn relay_offers(
    main: &UdpSocket,
    (mut client, seq): Registered,
    signer: &OfferKey,
    relay: &relay::Relay,
    deadline: Instant,
    shutdown: &Shutdown,
    status: &Status,
) -> Option<RelayOffer> {
    status.say("relay: exchanging relayed addresses with the peer through the rendezvous ...");
    client.relay_hold = true;
    client.relayed = None;
    // The rendezvous itself fails at its deadline; the hold ends sooner.
    client.deadline = deadline.min(Instant::now() + RELAY_SYNC * 2);
    let offer = |session_exists: bool| relay_state(Some(relay), signer, session_exists);
    match rendezvous(
        main,
        client,
        seq,
        None,
        None,
        Some(&offer),
        shutdown,
        status,
    ) {
        Ok((intro, _)) => intro.peer.relayed,
        Err(e) => {
            tracing::info!("no relayed offers exchanged: {e}");
            None
        }
    }
}

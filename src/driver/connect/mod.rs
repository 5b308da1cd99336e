//! `punchraw connect`: quick classification, rendezvous, the punch at the agreed moment, then
//! a QUIC stream carrying stdin/stdout over the punched socket.

pub mod tcp_punch;

use crate::core::classify::{Allocation, LegacyType};
use crate::core::punch::{
    derive_key, tcp, Event as PunchEvent, Failure, Punch, PunchConfig, Strategy,
};
use crate::core::rendezvous::{
    derive_rendezvous_key, hex, ErrorCode, Msg, NatInfo, PeerData, TcpOffer,
};
use crate::core::stun::{Encoder, MessageType, TransactionId};
use crate::core::Machine;
use crate::driver::kebab;
use crate::driver::probe::classify_udp;
use crate::driver::udp::{drive, flush};
use crate::os::capture::Capture;
use crate::os::signals::Shutdown;
use crate::os::udp::bind_fresh;
use crate::transport::quic::{self, Identity, Role};
use crate::transport::tls::TlsSide;
use crate::Error;
use anyhow::Context;
use serde::Serialize;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ConnectConfig {
    pub server: SocketAddr,
    pub session: String,
    pub secret: Option<String>,
    /// Bounds the wait for the peer plus the punch.
    pub timeout: Duration,
    pub report: Option<PathBuf>,
    pub capture: Option<PathBuf>,
    pub quiet: bool,
    pub bind: Option<IpAddr>,
    pub keepalive: Duration,
    pub rate: u32,
    pub window: u16,
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
}

pub use crate::core::punch::priming::PrimeTtl;

/// The `--report` object; its shape is a contract.
#[derive(Debug, Serialize)]
pub struct ConnectReport {
    pub connected: bool,
    pub transport: &'static str,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub strategy: Option<Strategy>,
    pub elapsed_ms: u64,
    pub probes_sent: u64,
    pub error: Option<String>,
    /// Bytes carried by the stream, once it ran.
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

struct Status {
    quiet: bool,
}

impl Status {
    fn say(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("punchraw: {}", msg.as_ref());
        }
    }
}

fn nat_info(u: &crate::core::classify::UdpReport) -> NatInfo {
    NatInfo {
        mapping: u.mapping,
        filtering: u.filtering,
        allocation: u.allocation,
        delta: u.delta,
    }
}

/// What the rendezvous gave us.
struct Introduction {
    me: SocketAddr,
    peer: PeerData,
    start: Instant,
}

/// While waiting for the peer, the TCP prediction is redone this often: it ages (a sequential
/// NAT's counter moves with other traffic of this host, conntrack forgets the connections it
/// was made from), and a re-register replaces what the server tells the peer.
const OFFER_REFRESH: Duration = Duration::from_secs(20);

/// Our TCP offer while the rendezvous runs, and how to make it anew.
struct TcpOfferState<'a> {
    prep: tcp_punch::TcpPrep,
    offer: TcpOffer,
    made: Instant,
    redo: &'a dyn Fn() -> Result<(tcp_punch::TcpPrep, TcpOffer), Error>,
}

impl TcpOfferState<'_> {
    fn refresh(&mut self, now: Instant, status: &Status) {
        self.made = now;
        match (self.redo)() {
            Ok((prep, offer)) => {
                tracing::info!("{}", prep.describe());
                self.prep = prep;
                self.offer = offer;
            }
            // The old prediction is still the best there is.
            Err(e) => status.say(format!("warning: cannot refresh the TCP prediction: {e}")),
        }
    }
}

/// How long `registry-unavailable` answers are retried before giving up.
const REGISTRY_GRACE: Duration = Duration::from_millis(1500);

/// Registers from `sock` until the server introduces the peer, it refuses, or time runs out.
#[allow(clippy::too_many_arguments)]
fn rendezvous(
    sock: &UdpSocket,
    cfg: &ConnectConfig,
    my_id: &str,
    locals: &[SocketAddr],
    nat: NatInfo,
    mut tcp: Option<&mut TcpOfferState<'_>>,
    rtt: Duration,
    secret: &[u8],
    deadline: Instant,
    shutdown: &Shutdown,
    status: &Status,
) -> Result<Introduction, Error> {
    // Registers are signed with the session's rendezvous key; the key itself goes out only
    // when the server says the session does not exist yet (we create it, trust on first use).
    let rkey = derive_rendezvous_key(secret, &cfg.session);
    let mut seq = 0u64;
    let mut send_key = false;
    let mut register = |send_key: bool, tcp: Option<&TcpOffer>| {
        seq += 1;
        Msg::Register {
            session: cfg.session.clone(),
            peer: my_id.to_string(),
            seq,
            key: send_key.then(|| hex(&rkey)),
            locals: locals.to_vec(),
            nat,
            tcp: tcp.cloned(),
            rtt_ms: rtt.as_millis().min(u128::from(u32::MAX)) as u32,
            mac: String::new(),
        }
        .encode_signed(&rkey)
    };
    let mut buf = [0u8; 2048];
    let mut next_send = Instant::now();
    let mut last_answer = Instant::now();
    let mut said_waiting = false;
    let mut rejected = 0u32;
    // When the server's registry is down: since when (a failover may take a moment).
    let mut registry_down: Option<Instant> = None;
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| Error::io("socket option", e))?;
    sock.set_nonblocking(false)
        .map_err(|e| Error::io("socket option", e))?;
    loop {
        let now = Instant::now();
        if shutdown.requested() {
            return Err(shutdown.interrupted());
        }
        if now >= deadline {
            return Err(if rejected > 0 {
                Error::WrongSecretPeer {
                    session: cfg.session.clone(),
                    rejected,
                    waited_s: cfg.timeout.as_secs(),
                }
            } else {
                Error::PeerNeverCame {
                    session: cfg.session.clone(),
                    waited_s: cfg.timeout.as_secs(),
                }
            });
        }
        if now.duration_since(last_answer) > Duration::from_secs(5) {
            return Err(Error::ServerUnreachable {
                server: cfg.server,
                waited_ms: 5000,
            });
        }
        if now >= next_send {
            // Re-registering also keeps our NAT binding toward the server (and so the
            // endpoint the peer will be told) alive.
            if let Some(t) = tcp.as_deref_mut() {
                if said_waiting && now.duration_since(t.made) >= OFFER_REFRESH {
                    t.refresh(now, status);
                }
            }
            let offer = tcp.as_deref().map(|t| &t.offer);
            let _ = sock.send_to(&register(send_key, offer), cfg.server);
            next_send = now + Duration::from_millis(300);
        }
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => continue,
        };
        if from != cfg.server {
            // The peer may already be punching; it retransmits, so nothing is lost.
            continue;
        }
        let Some(msg) = Msg::decode(&buf[..n]) else {
            continue;
        };
        last_answer = Instant::now();
        if !matches!(
            msg,
            Msg::Error {
                code: ErrorCode::RegistryUnavailable,
                ..
            }
        ) {
            registry_down = None;
        }
        if let Msg::Waiting { rejected: r, .. } = msg {
            if r > rejected {
                status.say(format!(
                    "a peer tried to join session {:?} with another secret ({r} so far); still waiting for one with this secret",
                    cfg.session
                ));
                rejected = r;
            }
        }
        match msg {
            Msg::Waiting { .. } if said_waiting => send_key = false,
            Msg::Waiting { wait_left_ms, .. } => {
                send_key = false;
                status.say(format!(
                    "waiting for the peer in session {:?} (server holds it {} s more)",
                    cfg.session,
                    wait_left_ms / 1000
                ));
                said_waiting = true;
            }
            Msg::Peer {
                you,
                peer,
                start_in_ms,
            } => {
                return Ok(Introduction {
                    me: you,
                    peer,
                    start: Instant::now()
                        + Duration::from_millis(start_in_ms.min(10_000))
                        + cfg.start_delay,
                })
            }
            Msg::Error {
                code: ErrorCode::UnknownSession,
                ..
            } => {
                // First here (or the server forgot the session): create it at once.
                send_key = true;
                next_send = Instant::now();
            }
            Msg::Error {
                code: ErrorCode::RegistryUnavailable,
                ..
            } if registry_down.get_or_insert(last_answer).elapsed() < REGISTRY_GRACE => {}
            Msg::Error { code, message } => {
                return Err(match code {
                    ErrorCode::Unauthorized => Error::SessionKeyMismatch {
                        session: cfg.session.clone(),
                    },
                    ErrorCode::RegistryUnavailable => {
                        Error::RegistryUnavailable { server: cfg.server }
                    }
                    ErrorCode::SessionFull => Error::SessionTaken {
                        session: cfg.session.clone(),
                    },
                    ErrorCode::PeerTimeout => Error::PeerNeverCame {
                        session: cfg.session.clone(),
                        waited_s: cfg.timeout.as_secs(),
                    },
                    _ => Error::Rendezvous(message),
                })
            }
            _ => {}
        }
    }
}

fn hex_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub fn run(cfg: ConnectConfig) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let status = Status { quiet: cfg.quiet };
    // Created now, while we may still write where root may: `--tcp` gives up root before
    // the report is written, and a bad path is better told before the punch than after.
    let report_file = cfg
        .report
        .as_ref()
        .map(|path| {
            std::fs::File::create(path)
                .with_context(|| format!("cannot write report {}", path.display()))
        })
        .transpose()?;
    let mut report = ConnectReport {
        connected: false,
        transport: if cfg.tcp { "tcp" } else { "udp" },
        local: None,
        peer: None,
        strategy: None,
        elapsed_ms: 0,
        probes_sent: 0,
        error: None,
        bytes_sent: 0,
        bytes_received: 0,
    };
    let result = connect(&cfg, &status, started, &mut report);
    report.elapsed_ms = report.elapsed_ms.max(if report.connected {
        report.elapsed_ms
    } else {
        started.elapsed().as_millis() as u64
    });
    if let Err(e) = &result {
        report.error = Some(format!("{e:#}"));
    }
    if let (Some(mut file), Some(path)) = (report_file, &cfg.report) {
        let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
        std::io::Write::write_all(&mut file, (json + "\n").as_bytes())
            .with_context(|| format!("cannot write report {}", path.display()))?;
    }
    result.map(|()| ExitCode::SUCCESS)
}

fn connect(
    cfg: &ConnectConfig,
    status: &Status,
    started: Instant,
    report: &mut ConnectReport,
) -> anyhow::Result<()> {
    let shutdown = Shutdown::install().context("cannot install signal handlers")?;
    if cfg.tcp {
        tcp_punch::check_privileges()?;
    }
    let secret = match &cfg.secret {
        Some(s) => s.clone(),
        None => {
            status.say(
                "warning: no --secret; the session name is the key, so anyone who knows it can pose as the peer",
            );
            cfg.session.clone()
        }
    };
    let key = derive_key(secret.as_bytes(), &cfg.session);
    let mut capture = cfg.capture.as_deref().map(Capture::create).transpose()?;

    status.say(format!("classifying the NAT toward {} ...", cfg.server));
    let udp = classify_udp(
        cfg.server,
        cfg.bind,
        None,
        capture.as_mut(),
        &shutdown,
        |_| {},
    )?;
    if udp.legacy_type == LegacyType::Blocked {
        return Err(Error::ServerUnreachable {
            server: cfg.server,
            waited_ms: started.elapsed().as_millis() as u64,
        }
        .into());
    }
    let nat = nat_info(&udp);
    status.say(format!(
        "NAT: mapping {}, filtering {}, allocation {}",
        kebab(&nat.mapping),
        kebab(&nat.filtering),
        kebab(&nat.allocation)
    ));
    let identity = Identity::generate()?;
    let local_ip = udp.local.ip();
    let (main, main_local) = bind_fresh(local_ip, 1)?;
    let main = main.into_iter().next().expect("one socket");
    if cfg.tcp {
        // The rendezvous socket is a new flow through our NAT. A NAT with a port counter
        // shared by all flows would move it by one when the first register goes out, after
        // the TCP prediction below; a Binding request now opens that flow first, so the
        // prediction counts it.
        let mut req = Vec::new();
        Encoder::new(
            &mut req,
            MessageType::BINDING_REQUEST,
            TransactionId::random(&mut rand::rng()),
        )
        .fingerprint();
        let _ = main.send_to(&req, cfg.server);
    }
    let my_id = hex_id();
    let deadline = started + cfg.timeout;
    let rtt = Duration::from_secs_f64(udp.rtt_ms.unwrap_or(50.0) / 1000.0);
    let fingerprint = identity.fingerprint();
    let predict_tcp = || -> Result<(tcp_punch::TcpPrep, TcpOffer), Error> {
        let prep = tcp_punch::prepare(cfg.server, local_ip, udp.other_address, nat)?;
        let offer = tcp::make_offer(
            &key,
            &my_id,
            prep.local.port(),
            &prep.prediction,
            &fingerprint,
        );
        Ok((prep, offer))
    };
    let mut tcp = if cfg.tcp {
        status.say(format!(
            "predicting our NAT's TCP ports toward {} ...",
            cfg.server
        ));
        let (prep, offer) = predict_tcp()?;
        status.say(prep.describe());
        Some(TcpOfferState {
            prep,
            offer,
            made: Instant::now(),
            redo: &predict_tcp,
        })
    } else {
        None
    };
    let intro = rendezvous(
        &main,
        cfg,
        &my_id,
        &main_local,
        nat,
        tcp.as_mut(),
        rtt,
        secret.as_bytes(),
        deadline,
        &shutdown,
        status,
    )?;
    if intro.peer.tcp.is_some() != cfg.tcp {
        return Err(Error::TransportMismatch {
            peer_tcp: intro.peer.tcp.is_some(),
        }
        .into());
    }
    if let Some(TcpOfferState { prep, .. }) = tcp {
        // The rendezvous socket stays open until the end: it keeps our UDP mapping toward
        // the server, which nothing needs any more, but closing it costs nothing either.
        return connect_tcp(
            cfg,
            status,
            started,
            report,
            TcpStart {
                intro,
                prep,
                identity,
                key,
                my_id,
                rtt,
            },
            capture,
            &shutdown,
        );
    }
    main.set_nonblocking(true).context("socket option")?;

    let mut pcfg = PunchConfig {
        my_id,
        my_nat: nat,
        my_public: intro.me,
        my_locals: main_local.clone(),
        peer: intro.peer.clone(),
        key,
        fingerprint: identity.fingerprint(),
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
    status.say(format!(
        "peer {} (NAT mapping {}, allocation {}); strategy {}",
        intro.peer.public,
        kebab(&intro.peer.nat.mapping),
        kebab(&intro.peer.nat.allocation),
        strategy.as_str()
    ));
    if strategy == Strategy::Sweep {
        let me_random = pcfg.i_spray();
        status.say(format!(
            "birthday sweep: {} for {} s at {} probes/s with {} mappings; expected success probability {:.1}%{}",
            if me_random {
                "opening many mappings toward the peer"
            } else {
                "probing random ports of the peer"
            },
            pcfg.budget.as_secs(),
            cfg.rate,
            cfg.sweep_sockets,
            100.0 * pcfg.sweep_success_probability(),
            if nat.allocation == Allocation::Random && intro.peer.nat.allocation == Allocation::Random {
                " (both sides random: neither can be reached by a sweep)"
            } else {
                ""
            }
        ));
    }
    let mut sockets = vec![main];
    let mut locals = main_local;
    if pcfg.sockets_needed() > 1 {
        let (more, more_locals) = bind_fresh(local_ip, pcfg.sockets_needed() - 1)?;
        sockets.extend(more);
        locals.extend(more_locals);
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
        &shutdown,
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
            return Err(Error::AuthFailed { rejected }.into());
        }
        _ => {
            return Err(Error::PunchFailed {
                strategy: strategy.as_str(),
                probes: punch.probes,
                explanation: explain_failure(&nat, &intro.peer.nat, strategy),
            }
            .into())
        }
    };
    // The last answer and the nominations still go out on the chosen socket.
    flush(&mut punch, &sockets, &locals, capture.as_mut())?;
    if let Some(c) = capture.take() {
        let (path, n) = c.finish()?;
        status.say(format!(
            "capture: {n} packets written to {}",
            path.display()
        ));
    }
    let local = locals[socket];
    let chosen = sockets.swap_remove(socket);
    drop(sockets);
    chosen.set_nonblocking(false).context("socket option")?;
    report.local = Some(local);
    report.peer = Some(remote);
    report.connected = true;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    status.say(format!(
        "connected to {remote} via {} in {} ms ({} probes); starting the encrypted stream",
        strategy.as_str(),
        report.elapsed_ms,
        report.probes_sent
    ));
    let role = if controlling {
        Role::Client
    } else {
        Role::Server
    };
    let stats = quic::run_stream(
        chosen,
        remote,
        role,
        &identity,
        peer_fp,
        std::io::stdin(),
        std::io::stdout(),
        cfg.keepalive,
        Duration::from_secs(10),
        &shutdown,
    )
    .map_err(|e| match e {
        crate::error::StreamError::Interrupted => shutdown.interrupted(),
        e => e.into(),
    })?;
    done(report, status, stats);
    Ok(())
}

fn done(report: &mut ConnectReport, status: &Status, stats: quic::StreamStats) {
    report.bytes_sent = stats.sent;
    report.bytes_received = stats.received;
    status.say(format!(
        "done: {} bytes sent, {} bytes received",
        stats.sent, stats.received
    ));
}

/// What the TCP punch starts from.
struct TcpStart {
    intro: Introduction,
    prep: tcp_punch::TcpPrep,
    identity: Identity,
    key: [u8; 32],
    my_id: String,
    /// Round trip to the server, the scale of the hop measurement's wait.
    rtt: Duration,
}

fn connect_tcp(
    cfg: &ConnectConfig,
    status: &Status,
    started: Instant,
    report: &mut ConnectReport,
    t: TcpStart,
    mut capture: Option<Capture>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let TcpStart {
        intro,
        prep,
        identity,
        key,
        my_id,
        rtt,
    } = t;
    let offer = intro
        .peer
        .tcp
        .as_ref()
        .expect("checked by the caller: the peer punches TCP");
    // The offer is MACed under the punch key, which the relaying server never has: a failed
    // check means another secret (or a server that altered the offer).
    let peer_fp = tcp::verify_offer(&key, &intro.peer.id, offer).ok_or(Error::OfferAuthFailed)?;
    let me = prep.prediction.nat;
    let them = offer.nat;
    let plan = tcp::plan(&me, &them);
    let strategy = tcp::strategy(&me, &them);
    report.strategy = Some(strategy);
    let peer_ip = intro.peer.public.ip();
    let deadline = started + cfg.timeout;
    let left = deadline.saturating_duration_since(intro.start);
    let budget = cfg.punch_budget.min(left.max(Duration::from_secs(1)));
    status.say(format!(
        "peer {peer_ip}: TCP mapping {}, allocation {}, next port {}; strategy {} ({})",
        kebab(&them.mapping),
        kebab(&them.allocation),
        if offer.port == 0 {
            "unpredictable".to_string()
        } else {
            offer.port.to_string()
        },
        strategy.as_str(),
        describe_plan(plan, cfg)
    ));
    if strategy == Strategy::Sweep {
        let probes = u64::from(cfg.rate) * budget.as_secs().max(1);
        status.say(format!(
            "birthday sweep over TCP: for {} s at {} attempts/s against {} mappings; expected success probability {:.1}%{}",
            budget.as_secs(),
            cfg.rate,
            cfg.sweep_sockets,
            100.0 * tcp::sweep_success_probability(cfg.sweep_sockets, probes),
            if matches!(plan, tcp::Plan::Window { .. }) {
                " (neither NAT can be found by a sweep: both are symmetric with random ports)"
            } else {
                ""
            }
        ));
    }
    let (prime_ttl, line) = tcp_punch::priming(cfg.prime_ttl, &me, prep.local.ip(), peer_ip, rtt);
    status.say(line);
    let (watcher, rules) = tcp_punch::arm(peer_ip, prime_ttl.is_some())?;
    status.say(format!(
        "nft table inet {} drops this host's RSTs to {peer_ip} until the punch ends",
        rules.table()
    ));
    let role = if my_id > intro.peer.id {
        Role::Client
    } else {
        Role::Server
    };
    let setup = tcp_punch::PunchSetup {
        plan,
        local: prep.local,
        peer_ip,
        peer_port: offer.port,
        window: cfg.window,
        rate: cfg.rate,
        sweep_sockets: cfg.sweep_sockets,
        budget,
        start: intro.start.max(Instant::now()),
        prime_ttl,
        keepalive: cfg.keepalive,
        tls: std::sync::Arc::new(TlsSide::new(
            role,
            identity,
            peer_fp,
            tcp_punch::TLS_TIMEOUT,
        )),
    };
    status.say("punching TCP ...");
    let outcome = tcp_punch::punch(&setup, watcher, capture.as_mut(), shutdown, &mut |line| {
        status.say(line)
    });
    if let Err(e) = rules.remove() {
        status.say(format!("warning: {e}"));
    }
    if let Some(c) = capture.take() {
        let (path, n) = c.finish()?;
        status.say(format!(
            "capture: {n} packets written to {}",
            path.display()
        ));
    }
    let punched = match outcome {
        Ok(p) => p,
        Err(tcp_punch::PunchEnd::Interrupted) => return Err(shutdown.interrupted().into()),
        Err(tcp_punch::PunchEnd::Setup(e)) => return Err(e.into()),
        Err(tcp_punch::PunchEnd::Exhausted {
            attempts,
            refused,
            came_up,
            seen,
            auth,
        }) => {
            report.probes_sent = attempts;
            if let Some(e) = auth {
                return Err(Error::Stream(*e).into());
            }
            return Err(Error::PunchFailed {
                strategy: strategy.as_str(),
                probes: attempts,
                explanation: explain_tcp_failure(&me, &them, strategy, refused, came_up, &seen),
            }
            .into());
        }
    };
    report.probes_sent = punched.conn.attempts;
    report.local = Some(punched.conn.local);
    report.peer = Some(punched.conn.remote);
    report.connected = true;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    status.say(format!(
        "connected to {} via {} in {} ms ({} connection attempt(s)); TLS authenticated, starting the stream",
        punched.conn.remote,
        strategy.as_str(),
        report.elapsed_ms,
        punched.conn.attempts
    ));
    let stats = tcp_punch::transfer(punched, std::io::stdin(), std::io::stdout(), shutdown)?;
    done(report, status, stats);
    Ok(())
}

fn describe_plan(plan: tcp::Plan, cfg: &ConnectConfig) -> String {
    match plan {
        tcp::Plan::Direct => "one simultaneous open at the peer's port".into(),
        tcp::Plan::Window { delta } => format!(
            "simultaneous opens at the predicted port and the next {} by step {delta}",
            cfg.window
        ),
        tcp::Plan::Probe => "probing random ports of the peer from our one port".into(),
        tcp::Plan::Spray => format!(
            "{} connections from fresh ports toward the peer's one port",
            cfg.sweep_sockets
        ),
    }
}

fn explain_tcp_failure(
    me: &NatInfo,
    peer: &NatInfo,
    s: Strategy,
    refused: u64,
    came_up: u64,
    seen: &tcp_punch::WatchCounts,
) -> String {
    let mut why = if came_up > 0 {
        format!("{came_up} TCP connection(s) came up but none completed the authenticated TLS setup (see the lines above)")
    } else if !tcp::predictable(me) && !tcp::predictable(peer) {
        "neither NAT maps TCP endpoint-independently or allocates its ports predictably (both are symmetric with random ports): no port of either side can be predicted or found by a sweep; a relay is needed".to_string()
    } else if let Some(h) = seen.hostile() {
        h
    } else {
        match s {
            Strategy::Direct => "no SYN got through: a firewall may block TCP between the peers, or a NAT changed its mapping".into(),
            Strategy::Predict => "the predicted ports were wrong: other connections through the sequential NAT moved its counter; try a larger --window".into(),
            Strategy::Sweep => "the sweep found no open port pair within the budget; try a longer --punch-budget or more --sweep-sockets".into(),
        }
    };
    why.push_str(&format!(
        " (seen: {} SYN-ACK, {} SYN from the peer, {} RST, {} ICMP unreachable; {refused} attempts refused)",
        seen.synack_in, seen.syn_in, seen.rst_in, seen.icmp_unreachable
    ));
    why
}

fn explain_failure(me: &NatInfo, peer: &NatInfo, s: Strategy) -> String {
    if me.allocation == Allocation::Random
        && peer.allocation == Allocation::Random
        && me.mapping != crate::core::classify::Behavior::EndpointIndependent
        && peer.mapping != crate::core::classify::Behavior::EndpointIndependent
    {
        return "both NATs are symmetric with random ports: neither side's port can be predicted or reached by a sweep within the budget; a relay is needed (or a longer --punch-budget and more --sweep-sockets for a small chance)".into();
    }
    match s {
        Strategy::Direct => "no punch packet got through: a firewall may block UDP between the peers, or one side's NAT changed its mapping".into(),
        Strategy::Predict => "the predicted ports were wrong: other traffic through the sequential NAT moved its counter; try a larger --window".into(),
        Strategy::Sweep => "the sweep found no open port pair within the budget; try a longer --punch-budget or more --sweep-sockets".into(),
    }
}

//! `connect --tcp` after the rendezvous: the peer's offer verified into a plan, the punch
//! armed (priming, the nft table) and run from the agreed start, then the TLS stream.

use super::*;
use crate::os::nft::PunchRules;

/// What the TCP punch starts from.
pub(super) struct TcpStart {
    pub(super) intro: Introduction,
    pub(super) prep: tcp_punch::TcpPrep,
    pub(super) identity: Identity,
    pub(super) key: [u8; 32],
    pub(super) my_id: String,
    /// Round trip to the peer as estimated before the punch
    /// ([`crate::core::rendezvous::peer_rtt`]): the scale of the hop measurement's wait and
    /// the raw engine's pace.
    pub(super) peer_rtt: Duration,
    /// Our TCP punch port as our router maps it.
    pub(super) my_mapped: Option<SocketAddr>,
    /// Our IPv6 TCP punch port, held, and the candidates the peer was offered.
    pub(super) ipv6: Option<main_socket::Ipv6Side>,
}

/// The TCP punch both sides agreed on, from our prediction and the peer's verified offer.
struct TcpPlan {
    me: NatInfo,
    them: NatInfo,
    plan: tcp::Plan,
    strategy: Strategy,
    peer_ip: IpAddr,
    /// The port the peer's next connection is predicted at (0: unpredictable).
    peer_port: u16,
    /// Where the peer's NAT draws random ports (its block, when it has one).
    peer_ports: [u16; 2],
    peer_fp: [u8; 32],
    budget: Duration,
}

pub(super) fn connect_tcp(
    cfg: &ConnectConfig,
    status: &Status,
    started: Instant,
    report: &mut ConnectReport,
    t: TcpStart,
    capture: Option<Capture>,
    shutdown: &Shutdown,
) -> Result<(), Error> {
    let plan = plan_tcp(cfg, status, started + cfg.timeout, &t)?;
    report.strategy = Some(plan.strategy);
    let registered_v4 = t.intro.me.is_ipv4();
    let (punched, removal) = punch_tcp(cfg, status, report, &plan, t, capture, shutdown)?;
    // The other family's path (IPv6 beside IPv4) is direct, whatever the IPv4 plan was.
    let strategy = if punched.conn.remote.is_ipv4() != registered_v4 {
        status.say(format!(
            "the {} path came first: over IPv6",
            punched.conn.remote
        ));
        report.strategy = Some(Strategy::Direct);
        Strategy::Direct
    } else {
        plan.strategy
    };
    let streamed = stream::stream_tcp(cfg, status, started, report, punched, strategy, shutdown);
    removal.finish(status);
    streamed
}

/// The punch's nft table, removed by a thread of its own beside the stream: the `nft` run
/// takes 10-20 ms (its commit waits for the kernel), which the connection waited for on its
/// way to the stream. Until then the table drops only our RSTs and ICMP errors to the peer,
/// which a connection that is up has no use for.
struct Removal(Option<std::thread::JoinHandle<Result<(), Error>>>);

impl Removal {
    fn start(rules: PunchRules) -> Self {
        // Should the thread not start, the rules go with the closure, and their drop removes
        // them here and now.
        let spawned = std::thread::Builder::new()
            .name("nft-remove".into())
            .spawn(move || rules.remove());
        Removal(spawned.ok())
    }

    /// Waits for the removal and says if it failed.
    fn finish(mut self, status: &Status) {
        match self.0.take().map(|h| h.join()) {
            Some(Ok(Err(e))) => status.say(format!("warning: {e}")),
            Some(Err(_)) => status.say("warning: removing the punch's nft table failed unexpectedly; the next `punchraw connect --tcp` removes it"),
            Some(Ok(Ok(()))) | None => {}
        }
    }
}

/// Verifies the peer's offer and settles what each side does; says so.
fn plan_tcp(
    cfg: &ConnectConfig,
    status: &Status,
    deadline: Instant,
    t: &TcpStart,
) -> Result<TcpPlan, Error> {
    let offer = t
        .intro
        .peer
        .tcp
        .as_ref()
        .expect("checked by the caller: the peer punches TCP");
    // The offer is MACed under the punch key, which the relaying server never has: a failed
    // check means another secret (or a server that altered the offer).
    let peer_fp =
        tcp::verify_offer(&t.key, &t.intro.peer.id, offer).ok_or(Error::OfferAuthFailed)?;
    let me = t.prep.prediction.nat;
    let them = offer.nat;
    let peer_mapped = t.intro.peer.mapped;
    let strategy = tcp::strategy_mapped(&me, &them, t.my_mapped.is_some() || peer_mapped.is_some());
    let (plan, peer_ip, peer_port) = if strategy == Strategy::Mapped {
        tcp::mapped_plan(peer_mapped, t.intro.peer.public.ip())
    } else {
        let controlling = t.my_id > t.intro.peer.id;
        (
            tcp::plan_in_pair(&me, &them, controlling),
            t.intro.peer.public.ip(),
            offer.port,
        )
    };
    let left = deadline.saturating_duration_since(t.intro.start);
    let budget = cfg.punch_budget.min(left.max(Duration::from_secs(1)));
    let (plan, two_sided) = tcp::two_sided_or_none(plan, &me, &them, cfg.rate, budget);
    if strategy == Strategy::Mapped {
        status.say(match peer_mapped {
            Some(m) => format!("peer {peer_ip}: its router maps its TCP punch port at {m}; strategy mapped: connecting there"),
            None => format!("peer {peer_ip}: strategy mapped: our router maps our TCP punch port, so the peer connects to it and we only accept"),
        });
    } else {
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
            describe_plan(plan, cfg.window, cfg.sweep_sockets)
        ));
    }
    if let (Some(p), tcp::Plan::Window { .. }) = (two_sided, plan) {
        status.say(format!("no sweep over TCP: both NATs are symmetric with random ports over ranges too wide for a two-sided sweep ({:.2}% in the budget), so neither can be found; only luck connects", 100.0 * p));
    } else if strategy == Strategy::Sweep && matches!(plan, tcp::Plan::Window { .. }) {
        // A sweep's odds need one side that can be found; this window has none to offer.
        status.say("no birthday sweep over TCP: both NATs are symmetric with random ports, so neither can be found by one; the window connects only by luck");
    } else if let (Some(p), tcp::Plan::TwoSided) = (two_sided, plan) {
        let [lo, hi] = crate::core::punch::random_ports(&them);
        status.say(format!(
            "two-sided sweep over TCP: both NATs draw random ports, so both sides connect from fresh ports to random ports of the other ({lo}-{hi} of theirs) at {} attempts/s for {} s; expected success probability {:.1}%",
            cfg.rate,
            budget.as_secs(),
            100.0 * p
        ));
    } else if let (
        Strategy::Sweep,
        tcp::Plan::SprayAtCounter { .. } | tcp::Plan::ProbeFromCounter,
    ) = (strategy, plan)
    {
        let (sprayer, counter_port) = if matches!(plan, tcp::Plan::ProbeFromCounter) {
            (&them, t.prep.prediction.port)
        } else {
            (&me, offer.port)
        };
        let aimed = tcp::counter_targets(counter_port, 1, cfg.window).len();
        let attempts = f64::from(cfg.rate) * budget.as_secs_f64();
        // What the budget allows at the rate, when that is fewer than --sweep-sockets.
        let per_port = tcp::counter_sweep_per_port(attempts, aimed, cfg.sweep_sockets) as u64;
        status.say(format!(
            "sweep at a port counter over TCP: the random side aims {per_port} fresh-port connections at each of the counter's next {aimed} ports, the counter side keeps {} probes of random ports open; expected success probability {:.1}%",
            tcp::counter_flows(cfg.window),
            100.0
                * tcp::counter_sweep_success_probability(
                    attempts,
                    aimed,
                    cfg.sweep_sockets,
                    tcp::counter_flows(cfg.window),
                    crate::core::punch::random_ports(sprayer),
                ),
        ));
    } else if strategy == Strategy::Sweep {
        let probes = u64::from(cfg.rate) * budget.as_secs().max(1);
        status.say(format!(
            "birthday sweep over TCP: for {} s at {} attempts/s against {} mappings; expected success probability {:.1}%",
            budget.as_secs(),
            cfg.rate,
            cfg.sweep_sockets,
            100.0
                * tcp::sweep_success_probability(
                    cfg.sweep_sockets,
                    probes,
                    // The mappings are the random (spraying) side's.
                    crate::core::punch::random_ports(if tcp::predictable(&me) {
                        &them
                    } else {
                        &me
                    }),
                ),
        ));
    }
    Ok(TcpPlan {
        me,
        them,
        plan,
        strategy,
        peer_ip,
        peer_port,
        peer_ports: crate::core::punch::random_ports(&them),
        peer_fp,
        budget,
    })
}

/// Arms the RST drop, punches from the agreed start, and takes the rules down again.
fn punch_tcp(
    cfg: &ConnectConfig,
    status: &Status,
    report: &mut ConnectReport,
    p: &TcpPlan,
    t: TcpStart,
    mut capture: Option<Capture>,
    shutdown: &Shutdown,
) -> Result<(tcp_punch::Punched, Removal), Error> {
    let TcpStart {
        intro,
        prep,
        identity,
        my_id,
        peer_rtt,
        ipv6,
        ..
    } = t;
    let peer_ip = p.peer_ip;
    // Our IPv6 punch port, when the peer offered an IPv6 address too; the port is let go
    // here, as privileges are dropped, so the punch's own sockets can bind it.
    let v6_local = ipv6.and_then(|s| {
        drop(s.tcp_hold);
        let port = s.candidates.first()?.port();
        let peer = intro.peer.locals.iter().find(|a| a.is_ipv6())?;
        status.say(format!(
            "IPv6: punching TCP to {peer} from port {port} directly, beside IPv4; the first connection to authenticate is kept"
        ));
        Some(SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port))
    });
    let v6_peer = v6_local.and_then(|_| intro.peer.locals.iter().find(|a| a.is_ipv6()));
    let lan_peer = v6_peer
        .is_none()
        .then(|| tcp::lan_peer(intro.me, &intro.peer))
        .flatten();
    if let Some(to) = lan_peer {
        status.say(format!(
            "the peer has our public address {} (one NAT in front of both of us): punching TCP to its LAN address {to} directly, beside the public path, which only a hairpinning NAT passes",
            intro.me.ip()
        ));
    }
    let peers: Vec<IpAddr> = std::iter::once(peer_ip)
        .chain(v6_peer.map(SocketAddr::ip))
        .chain(lan_peer.map(|a| a.ip()))
        .collect();
    let (prime_ttl, line) = if p.strategy == Strategy::Mapped {
        // A SYN that dies on the way only delays the connection to a mapping by the
        // kernel's 1 s retransmission: nothing needs opening in our NAT.
        (
            None,
            "no low-TTL priming: the path goes through a port mapping".into(),
        )
    } else {
        tcp_punch::priming(
            cfg.prime_ttl,
            &p.me,
            prep.local.ip(),
            peer_ip,
            peer_rtt,
            intro.start,
        )
    };
    status.say(line);
    let (watcher, rules, raw) = tcp_punch::arm(&peers, prime_ttl.is_some(), cfg.syn_engine)?;
    let shown: Vec<String> = peers.iter().map(ToString::to_string).collect();
    status.say(format!(
        "nft table inet {} drops this host's RSTs to {} until the punch ends",
        rules.table(),
        shown.join(" and ")
    ));
    // The peer that came last plays the client (see `Msg::Peer`'s `joined_second`); an
    // older server leaves it to the ids, which the two sides order alike.
    let client = intro.joined_second.unwrap_or_else(|| my_id > intro.peer.id);
    let role = if client { Role::Client } else { Role::Server };
    let setup = tcp_punch::PunchSetup {
        plan: p.plan,
        local: prep.local,
        peer_ip,
        also_from: lan_peer.map(|a| a.ip()),
        peer_port: p.peer_port,
        peer_ports: p.peer_ports,
        window: cfg.window,
        rate: cfg.rate,
        sweep_sockets: cfg.sweep_sockets,
        budget: p.budget,
        start: intro.start.max(Instant::now()),
        prime_ttl,
        keepalive: cfg.keepalive,
        tls: std::sync::Arc::new(TlsSide::new(
            role,
            identity,
            p.peer_fp,
            tcp_punch::TLS_TIMEOUT,
        )),
        rtt: peer_rtt,
        first_syn_copies: tcp::first_syn_copies(&p.me),
        raw,
        commitment: Default::default(),
    };
    let also = v6_local
        .and_then(|l| tcp_punch::ipv6_setup(&setup, l, &intro.peer.locals))
        .or_else(|| lan_peer.map(|to| tcp_punch::direct_setup(&setup, prep.local, to)));
    status.say("punching TCP ...");
    let outcome = tcp_punch::punch(
        &setup,
        also.as_ref(),
        watcher,
        capture.as_mut(),
        shutdown,
        &mut |line| status.say(line),
    );
    let removal = Removal::start(rules);
    if let Err(e) = finish_capture(capture, status) {
        removal.finish(status);
        return Err(e);
    }
    let end = match outcome {
        Ok(punched) => return Ok((punched, removal)),
        Err(end) => {
            removal.finish(status);
            end
        }
    };
    match end {
        tcp_punch::PunchEnd::Interrupted => Err(shutdown.interrupted()),
        tcp_punch::PunchEnd::Setup(e) => Err(e),
        tcp_punch::PunchEnd::Exhausted {
            attempts,
            refused,
            came_up,
            seen,
            auth,
        } => {
            report.probes_sent = attempts;
            if let Some(e) = auth {
                return Err(Error::Stream(*e));
            }
            Err(Error::PunchFailed {
                strategy: p.strategy.as_str(),
                probes: attempts,
                explanation: explain_tcp_failure(
                    &p.me, &p.them, p.strategy, refused, came_up, &seen,
                ),
            })
        }
    }
}

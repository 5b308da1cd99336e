//! The port mapping `connect` holds for its punch port (`--port-mapping auto`): asked for
//! before the rendezvous, so the registration can offer it; kept by a thread of its own
//! (renewed at half its lifetime, re-requested after a router restart, both decided by
//! `core::portmap::client::PortMapper`; a UPnP lease re-added at half its length) and
//! deleted when the [`Keeper`] is dropped, which `connect` does on every way out: success,
//! error, and after SIGINT or SIGTERM, whose handlers only set a flag the loops poll.
//!
//! PCP, then NAT-PMP (RFC 6887 section 9's order) on a socket of their own: both map the
//! port named in the request, for the sender's address. UPnP IGD is discovered meanwhile
//! (SSDP waits for answers) and asked only when neither of the two granted. A router that
//! offers nothing or refuses costs the SSDP wait, about 2 s (a quarter of a second when it refuses
//! SSDP too, `upnp::discover`), and connect goes on without.
//!
//! That wait is paid only where the mapping is what makes us reachable: behind a NAT that maps
//! endpoint-independently the punch itself opens the way, and a mapping only spares a sweep
//! against a peer whose ports cannot be predicted; behind a sequential counter that no other
//! host's flow moved while we measured it, the TCP punch's prediction (redone while we wait
//! for the peer) finds our port as surely. A busy or random counter is where the mapping
//! counts, and so is UDP's prediction, which is not redone while we wait. There connect takes
//! what the router has
//! settled by the end of the classification ([`Patience::Until`]) and goes on; a grant that
//! comes later is held and deleted on exit like any other.
//!
//! Facts from the lab (miniupnpd 2.3.1 with nftables, Linux 6.18):
//! - A mapping is a `dnat` rule in `inet miniupnpd`'s `prerouting_miniupnpd` chain and an
//!   accept in its `miniupnpd` chain (forward hook), the same for UPnP, NAT-PMP and PCP MAP;
//!   `postrouting_miniupnpd` stays empty, so our own new flows keep leaving from the NAT's
//!   random ports (`masquerade fully-random` in the lab). Hence the peer sends to the
//!   mapping and we only answer (see `core::punch`'s module note on the conntrack clash).
//! - miniupnpd grants the internal port as the external one when it is free, and the
//!   lifetime asked for (NAT-PMP, PCP) or the lease (UPnP); a delete (lifetime 0,
//!   `DeletePortMapping`) removes both rules at once, which `tests/lab_portmap.rs` checks
//!   after every way out.

use crate::core::classify::{Allocation, Behavior};
use crate::core::portmap::client::{Event, PortMapConfig, PortMapper};
use crate::core::portmap::{Protocol, Via};
use crate::core::rendezvous::NatInfo;
use crate::driver::portmap::{run as drive, upnp};
use crate::driver::Status;
use crate::os::route::default_gateway;
use crate::os::signals::Shutdown;
use crate::os::udp::{bind_fresh, route_source};
use crate::Error;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long SSDP discovery waits for the IGD to answer.
const UPNP_WAIT: Duration = Duration::from_secs(2);
/// Bound on one UPnP SOAP exchange (a router that accepted the TCP connection and went
/// silent must not hold connect, nor its exit).
const UPNP_EXCHANGE: Duration = Duration::from_secs(4);
/// Bound on the wait for the first answer: PCP and NAT-PMP give up within 2 s, UPnP's
/// discovery within `UPNP_WAIT` and its mapping within a few of its exchanges.
const FIRST_ANSWER: Duration = Duration::from_secs(12);
const DESCRIPTION: &str = "punchraw connect";

/// `connect --report`'s `port_mapping`: the mapping held, or why there is none.
#[derive(Debug, Clone, Serialize)]
pub struct MappingReport {
    pub via: Option<Via>,
    pub protocol: Protocol,
    /// Where peers reach us, `ip:port`.
    pub external: Option<SocketAddr>,
    /// Granted lifetime; 0 for a permanent UPnP lease (deleted on exit all the same).
    pub lifetime_s: Option<u64>,
    /// Why each protocol tried gave no mapping (`pcp`, `nat_pmp`, `upnp`).
    pub reasons: BTreeMap<String, String>,
}

impl MappingReport {
    fn none(protocol: Protocol, reasons: BTreeMap<String, String>) -> Self {
        MappingReport {
            via: None,
            protocol,
            external: None,
            lifetime_s: None,
            reasons,
        }
    }

    /// The status line.
    pub fn describe(&self) -> String {
        match (self.via, self.external) {
            (Some(via), Some(ext)) => format!(
                "port mapping: {via} maps {} {ext} to our punch port, {}; the peer is told to send there",
                self.protocol,
                match self.lifetime_s {
                    Some(0) => "as a permanent lease (deleted when we exit)".to_string(),
                    Some(s) => format!("for {s} s (renewed at half that)"),
                    None => "lifetime unknown".to_string(),
                }
            ),
            _ => {
                // Protocols with the same reason are named together.
                let mut by_reason: Vec<(Vec<&str>, &str)> = Vec::new();
                for (k, v) in &self.reasons {
                    match by_reason.iter_mut().find(|(_, r)| r == v) {
                        Some((ks, _)) => ks.push(k),
                        None => by_reason.push((vec![k], v)),
                    }
                }
                let why: Vec<String> = by_reason
                    .iter()
                    .map(|(ks, v)| format!("{}: {v}", ks.join(", ")))
                    .collect();
                format!(
                    "port mapping: none for {} ({}); going on without",
                    self.protocol,
                    if why.is_empty() {
                        "no router offered one".to_string()
                    } else {
                        why.join("; ")
                    }
                )
            }
        }
    }
}

/// The thread that holds the mapping; dropping it deletes the mapping (and waits for the
/// router's answer, a few seconds at most).
pub(super) struct Keeper {
    stop: Shutdown,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long connect waits for the router's first outcome.
#[derive(Debug, Clone, Copy)]
pub(super) enum Patience {
    /// Until the router settles (within [`FIRST_ANSWER`]): our NAT needs the mapping.
    Full,
    /// Until this moment only: the punch reaches us without a mapping, for the reason given
    /// (see the module notes).
    Until(Instant, Unneeded),
}

/// Why the punch reaches us without a router mapping, as measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unneeded {
    /// Our NAT maps endpoint-independently: the punch opens the way itself.
    EndpointIndependent,
    /// Our NAT allocates ports in sequence and no other host's flow moved the counter while
    /// we measured: the peer's prediction of our port holds as a mapping would.
    QuietCounter,
}

impl Patience {
    /// The patience for a NAT just measured as `nat`; `quiet`: a sequential counter's
    /// samples stepped by exactly its delta (no other host's flow between them). Full
    /// unless the punch reaches us anyway, then until `until`. A busy or random counter
    /// is where a mapping is what makes us reachable, worth SSDP's wait.
    pub(super) fn for_nat(nat: &NatInfo, quiet: bool, until: Instant) -> Self {
        if nat.mapping == Behavior::EndpointIndependent {
            Patience::Until(until, Unneeded::EndpointIndependent)
        } else if nat.allocation == Allocation::Sequential && nat.delta.is_some() && quiet {
            Patience::Until(until, Unneeded::QuietCounter)
        } else {
            Patience::Full
        }
    }
}

impl Unneeded {
    fn explain(self, protocol: Protocol) -> String {
        match self {
            Unneeded::EndpointIndependent => format!(
                "our NAT maps {protocol} endpoint-independently, so the punch reaches us \
                 without a mapping"
            ),
            Unneeded::QuietCounter => format!(
                "our NAT allocates {protocol} ports in sequence and no other host's flow moved \
                 its counter while we measured, so the peer's prediction reaches us without a \
                 mapping"
            ),
        }
    }
}

/// Whether successive mapped `ports` stepped by exactly `delta` each time (a sequential
/// counter no other flow moved between them); false with fewer than two.
pub(super) fn steps_exactly(ports: &[u16], delta: Option<i32>) -> bool {
    let Some(d) = delta else { return false };
    ports.len() >= 2
        && ports
            .windows(2)
            .all(|w| i32::from(w[1].wrapping_sub(w[0]) as i16) == d)
}

/// A request under way: the keeper (already asking) and where its first outcome comes.
pub(super) struct Pending {
    /// Before `keeper`: fields drop in order, so the line comes before the delete.
    unsettled: Unsettled,
    keeper: Keeper,
    rx: mpsc::Receiver<MappingReport>,
    protocol: Protocol,
    /// The go-ahead for UPnP's unicast search of the gateway, given only where the wait is
    /// paid in full; see [`wait`].
    unicast_search: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Says that the mapping is being deleted when a [`Pending`] is dropped before [`wait`] took
/// it: connect stopped (a signal during the classification, which runs while the router is
/// asked) and the user has read "asking the router ..." but no outcome.
struct Unsettled(Option<(Status, Protocol)>);

impl Drop for Unsettled {
    fn drop(&mut self) {
        if let Some((status, protocol)) = self.0.take() {
            status.say(format!(
                "port mapping: stopped while asking the router for one for {protocol}; \
                 deleting anything it granted"
            ));
        }
    }
}

/// A mapping asked for, or settled at once (no gateway to ask).
pub(super) enum Started {
    Pending(Pending),
    Done(Option<Keeper>, MappingReport),
}

impl Started {
    /// A request no longer wanted (the punch uses another port), silenced so that it can be
    /// kept to the end, when dropping it deletes anything granted: dropping it at once waits
    /// for the router's answers (SSDP's 2 s when nothing answers), which cost the punch those
    /// 2 s.
    pub(super) fn set_aside(mut self) -> Self {
        if let Started::Pending(p) = &mut self {
            p.unsettled.0 = None;
        }
        self
    }
}

fn all_reasons(why: &str) -> BTreeMap<String, String> {
    ["pcp", "nat_pmp", "upnp"]
        .into_iter()
        .map(|k| (k.to_string(), why.to_string()))
        .collect()
}

/// Starts asking for a mapping of `local`'s port; [`wait`] for the outcome.
fn begin(
    protocol: Protocol,
    lifetime: Duration,
    local: SocketAddr,
    status: &Status,
) -> Result<Started, Error> {
    let none = |why: String| {
        Ok(Started::Done(
            None,
            MappingReport::none(protocol, all_reasons(&why)),
        ))
    };
    if local.ip().is_loopback() {
        // A server on this host: no router lies between, and none could map this address.
        return none(format!("{} is a loopback address", local.ip()));
    }
    let Some(gw) = default_gateway() else {
        return none("no IPv4 default route, so no router to ask".into());
    };
    let IpAddr::V4(client) = local.ip() else {
        return none(format!("{} is not IPv4, the gateway {gw} is", local.ip()));
    };
    status.say(format!(
        "asking the router {gw} for a port mapping of {protocol} port {} (PCP, NAT-PMP, UPnP IGD) ...",
        local.port()
    ));
    let stop = Shutdown::manual();
    let (tx, rx) = mpsc::channel();
    let (unicast_search, go) = tokio::sync::oneshot::channel();
    let thread = {
        let (stop, status) = (stop.clone(), status.clone());
        std::thread::Builder::new()
            .name("port-mapping".into())
            .spawn(move || {
                let ask = Ask {
                    gw,
                    client,
                    protocol,
                    port: local.port(),
                    lifetime,
                };
                keep(&ask, go, &stop, tx, &status)
            })
            .map_err(|e| Error::io("cannot start the port-mapping thread", e))?
    };
    Ok(Started::Pending(Pending {
        unsettled: Unsettled(Some((status.clone(), protocol))),
        keeper: Keeper {
            stop,
            thread: Some(thread),
        },
        rx,
        protocol,
        unicast_search: Some(unicast_search),
    }))
}

/// The outcome of [`begin`]. `Err` only when `shutdown` came meanwhile (whatever was
/// granted is deleted first).
fn wait(
    started: Started,
    status: &Status,
    shutdown: &Shutdown,
    patience: Patience,
) -> Result<(Option<Keeper>, MappingReport), Error> {
    let mut p = match started {
        Started::Done(k, r) => return Ok((k, r)),
        Started::Pending(p) => p,
    };
    p.unsettled.0 = None;
    let none = |why: String| MappingReport::none(p.protocol, all_reasons(&why));
    let asked = Instant::now();
    let until = asked + FIRST_ANSWER;
    // The unicast search may draw an ICMP port unreachable from the router, one more from
    // its per-destination budget (a burst of six on Linux, then one a second) that the TTL
    // measurement before a TCP punch needs for that router's time-exceeded answers -- and a
    // CI run lost the measurement to it. That measurement is made only behind a NAT that
    // maps endpoint-independently (`priming::choose`), which is never `Full`: so the
    // search goes only where it can shorten a wait, never where the measurement follows.
    if matches!(patience, Patience::Full) {
        if let Some(go) = p.unicast_search.take() {
            let _ = go.send(());
        }
    }
    if let Patience::Until(t, unneeded) = patience {
        if let Some(r) = settled_by(&p, t) {
            let keeper = r.via.is_some().then_some(p.keeper);
            return Ok((keeper, r));
        }
        let why = format!(
            "not waited for: {}, and the router had not settled one by the end of the \
             classification",
            unneeded.explain(p.protocol)
        );
        // The keeper stays: should a grant still come, dropping it deletes it.
        return Ok((Some(p.keeper), none(why)));
    }
    loop {
        if shutdown.requested() {
            // Said either way: a mapping may exist on the router by now, and the user should
            // read that it is being removed.
            match p.rx.try_recv() {
                Ok(r) => status.say(r.describe()),
                Err(_) => status.say(format!(
                    "port mapping: interrupted before the router settled one for {}; \
                     deleting anything it grants",
                    p.protocol
                )),
            }
            drop(p.keeper);
            return Err(shutdown.interrupted());
        }
        match p.rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => {
                let keeper = r.via.is_some().then_some(p.keeper);
                return Ok((keeper, r));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Ok((
                    None,
                    none("the port-mapping thread ended unexpectedly".into()),
                ));
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= until => {
                let why = format!(
                    "the router did not settle a mapping within {} s",
                    FIRST_ANSWER.as_secs()
                );
                // The keeper stays: should a grant still come, dropping it deletes it.
                return Ok((Some(p.keeper), none(why)));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// The router's first outcome if it comes by `t` (at once if `t` has passed).
fn settled_by(p: &Pending, t: Instant) -> Option<MappingReport> {
    let left = t.saturating_duration_since(Instant::now());
    p.rx.recv_timeout(left).ok()
}

/// What to map, and where to ask.
struct Ask {
    gw: Ipv4Addr,
    client: Ipv4Addr,
    protocol: Protocol,
    port: u16,
    lifetime: Duration,
}

/// The thread: PCP / NAT-PMP, else UPnP; holds what it got until `stop`, then deletes it.
/// The first outcome goes to `tx`.
/// `unicast_search`: the go-ahead for UPnP's unicast search (dropped: none).
fn keep(
    ask: &Ask,
    unicast_search: tokio::sync::oneshot::Receiver<()>,
    stop: &Shutdown,
    tx: mpsc::Sender<MappingReport>,
    status: &Status,
) {
    let &Ask {
        gw,
        client,
        protocol,
        port,
        ..
    } = ask;
    let discovery = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the UPnP client: {e}"))?;
        let unicast = async move { unicast_search.await.ok().map(|()| gw) };
        rt.block_on(upnp::discover(client, unicast, UPNP_WAIT))
    });
    let mut reasons = BTreeMap::new();
    let mut tx = Some(tx);
    if pcp_or_natpmp(ask, stop, &mut tx, &mut reasons, status) {
        return;
    }
    let gateway = match discovery.join() {
        Ok(Ok(g)) => g,
        Ok(Err(why)) => {
            reasons.insert("upnp".into(), why);
            send(&mut tx, MappingReport::none(protocol, reasons));
            return;
        }
        Err(_) => {
            reasons.insert(
                "upnp".into(),
                "the UPnP discovery failed unexpectedly".into(),
            );
            send(&mut tx, MappingReport::none(protocol, reasons));
            return;
        }
    };
    if stop.requested() {
        return;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            reasons.insert("upnp".into(), format!("cannot start the UPnP client: {e}"));
            send(&mut tx, MappingReport::none(protocol, reasons));
            return;
        }
    };
    let local = SocketAddrV4::new(client, port);
    let lease = u32::try_from(ask.lifetime.as_secs()).unwrap_or(u32::MAX);
    let mapped = rt.block_on(async {
        tokio::time::timeout(
            UPNP_EXCHANGE * 2,
            upnp::map(
                &gateway,
                protocol,
                local,
                lease,
                DESCRIPTION,
                rand::random(),
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the UPnP IGD at {} stopped answering",
                gateway.addr
            ))
        })
    });
    let m = match mapped {
        Ok(m) => m,
        Err(why) => {
            reasons.insert("upnp".into(), why);
            send(&mut tx, MappingReport::none(protocol, reasons));
            return;
        }
    };
    send(
        &mut tx,
        MappingReport {
            via: Some(Via::Upnp),
            protocol,
            external: Some(m.external),
            lifetime_s: Some(u64::from(m.lease_s)),
            reasons,
        },
    );
    // A permanent lease needs no renewal, only the delete.
    let every = (m.lease_s > 0)
        .then(|| Duration::from_secs(u64::from(m.lease_s) / 2).max(Duration::from_secs(1)));
    let mut next = every.map(|e| Instant::now() + e);
    while !stop.requested() {
        std::thread::sleep(Duration::from_millis(100));
        if let (Some(at), Some(e)) = (next, every) {
            if Instant::now() >= at {
                next = Some(at + e);
                let r = rt.block_on(async {
                    tokio::time::timeout(UPNP_EXCHANGE, upnp::renew(&m, local, DESCRIPTION))
                        .await
                        .unwrap_or_else(|_| Err("the router did not answer".into()))
                });
                if let Err(why) = r {
                    status.say(format!("port mapping: renewal failed: {why}"));
                }
            }
        }
    }
    let r = rt.block_on(async {
        tokio::time::timeout(UPNP_EXCHANGE, upnp::unmap(&m))
            .await
            .unwrap_or_else(|_| Err("the router did not answer".into()))
    });
    match r {
        Ok(()) => tracing::debug!("UPnP mapping deleted"),
        Err(why) => status.say(format!(
            "warning: the UPnP mapping {} was not deleted ({why}){}",
            m.external,
            if m.lease_s > 0 {
                "; it expires by itself"
            } else {
                ""
            }
        )),
    }
}

fn send(tx: &mut Option<mpsc::Sender<MappingReport>>, r: MappingReport) {
    if let Some(tx) = tx.take() {
        let _ = tx.send(r);
    }
}

/// PCP, then NAT-PMP. True when one granted (it was then held until `stop` and deleted)
/// or `stop` came; false with the reasons in `reasons` when neither granted.
fn pcp_or_natpmp(
    ask: &Ask,
    stop: &Shutdown,
    tx: &mut Option<mpsc::Sender<MappingReport>>,
    reasons: &mut BTreeMap<String, String>,
    status: &Status,
) -> bool {
    let &Ask {
        gw,
        client,
        protocol,
        port,
        lifetime,
    } = ask;
    let sock = match bind_fresh(IpAddr::V4(client), 1) {
        Ok((mut s, _)) => s.remove(0),
        Err(e) => {
            for k in ["pcp", "nat_pmp"] {
                reasons.insert(k.into(), e.to_string());
            }
            return false;
        }
    };
    let cfg = PortMapConfig {
        lifetime,
        seed: rand::random(),
        ..PortMapConfig::new(IpAddr::V4(gw), IpAddr::V4(client), protocol, port)
    };
    let mut m = PortMapper::new(cfg, Instant::now());
    let mut granted = false;
    let finished = drive(&mut m, &sock, Some(stop), |_, ev| match ev {
        Event::Mapped(map) => {
            if !granted {
                granted = true;
                send(
                    tx,
                    MappingReport {
                        via: Some(map.via),
                        protocol,
                        external: Some(map.external),
                        lifetime_s: Some(map.lifetime.as_secs()),
                        reasons: reasons.clone(),
                    },
                );
            } else {
                tracing::debug!(external = %map.external, lifetime = ?map.lifetime, "port mapping renewed");
            }
        }
        Event::Unavailable(r) => {
            for (k, why) in [("pcp", r.pcp), ("nat_pmp", r.nat_pmp)] {
                if let Some(why) = why {
                    reasons.insert(k.into(), why);
                }
            }
        }
        Event::RouterRestarted { via } => status.say(format!(
            "port mapping: the router restarted and forgot it; asking {via} again"
        )),
        Event::Lost { reason } => status.say(format!("port mapping lost: {reason}")),
        Event::Deleted { .. } => {}
    });
    if finished {
        // Unavailable (on to UPnP), or lost after a grant (nothing left to delete).
        return granted;
    }
    m.delete(Instant::now());
    drive(&mut m, &sock, None, |_, ev| {
        if let Event::Deleted { confirmed } = ev {
            // Without a grant the delete only covers an answer that may have been lost: no
            // mapping we know of is left behind.
            if !confirmed && granted {
                status.say("warning: the router did not confirm the delete of our port mapping; it expires by itself");
            }
        }
    });
    true
}

/// `connect`'s step: with `--port-mapping auto`, a mapping of `local` (the punch socket),
/// said on a status line and put in the report. Returns the keeper to hold until exit and
/// the endpoint to offer the peer.
pub(super) fn for_connect(
    cfg: &super::ConnectConfig,
    protocol: Protocol,
    local: SocketAddr,
    status: &Status,
    shutdown: &Shutdown,
    report: &mut Option<MappingReport>,
    patience: Patience,
) -> Result<(Option<Keeper>, Option<SocketAddr>), Error> {
    if !cfg.port_mapping {
        return Ok((None, None));
    }
    let started = begin(protocol, cfg.port_mapping_lifetime, local, status)?;
    finish(Some(started), status, shutdown, report, patience)
}

/// The outcome of [`udp_early`]'s request (`None`: off), said and put in the report.
pub(super) fn finish(
    early: Option<Started>,
    status: &Status,
    shutdown: &Shutdown,
    report: &mut Option<MappingReport>,
    patience: Patience,
) -> Result<(Option<Keeper>, Option<SocketAddr>), Error> {
    let Some(started) = early else {
        return Ok((None, None));
    };
    let (keeper, r) = wait(started, status, shutdown, patience)?;
    status.say(r.describe());
    let mapped = r.external;
    *report = Some(r);
    Ok((keeper, mapped))
}

/// With `--tcp`: the punch port, reserved at the start, and the router's mapping of it,
/// asked for meanwhile. Dropping it deletes the mapping.
#[derive(Default)]
pub(super) struct TcpMapping {
    pub reserved: Option<super::tcp_punch::Reserved>,
    /// The prediction made from `reserved`'s port beside the classification, if any.
    pub predicted: Option<super::tcp_punch::TcpPrep>,
    pub early: Option<Started>,
    /// `early`, when the punch uses another port: dropped with the rest at the end.
    pub set_aside: Option<Started>,
    pub keeper: Option<Keeper>,
    pub mapped: Option<SocketAddr>,
    pub report: Option<MappingReport>,
}

/// A socket bound (nothing sent yet) and its address.
pub(super) type Bound = (UdpSocket, SocketAddr);

/// connect's UDP punch socket, bound before the classification so that its mapping is
/// asked for meanwhile, and settled ([`finish`]) before the socket's first packet: the wait
/// (up to SSDP's 2 s when no router answers) must not fall between that packet, which
/// opens the flow whose port the peer is told, and the registration, or a port counter
/// moved by other hosts' flows leaves the prediction behind. `(None, None)` with `--port-mapping off`, with
/// `--tcp` (its port is chosen later) or when the route to the server is unknown yet (the
/// classification then says why).
pub(super) fn udp_early(
    cfg: &super::ConnectConfig,
    status: &Status,
) -> Result<(Option<Bound>, Option<Started>), Error> {
    if !cfg.port_mapping || cfg.tcp {
        return Ok((None, None));
    }
    let Some(ip) = source_ip(cfg) else {
        return Ok((None, None));
    };
    let (mut socks, locals) = bind_fresh(ip, 1)?;
    let started = begin(Protocol::Udp, cfg.port_mapping_lifetime, locals[0], status)?;
    Ok((Some((socks.remove(0), locals[0])), Some(started)))
}

/// With `--tcp`, [`udp_early`]'s counterpart: the TCP punch port, reserved before the
/// classification, and its mapping asked for meanwhile (with `--port-mapping auto`). Nothing
/// is sent from the port yet, so the prediction that follows the classification still sees
/// its first connections; a router slow to answer (SSDP) is waited for while the NAT is
/// classified instead of after.
pub(super) fn tcp_early(
    cfg: &super::ConnectConfig,
    status: &Status,
) -> Result<(Option<super::tcp_punch::Reserved>, Option<Started>), Error> {
    let Some(ip) = source_ip(cfg).filter(|_| cfg.tcp) else {
        return Ok((None, None));
    };
    let reserved = super::tcp_punch::Reserved::new(ip)?;
    let started = cfg
        .port_mapping
        .then(|| {
            begin(
                Protocol::Tcp,
                cfg.port_mapping_lifetime,
                reserved.local,
                status,
            )
        })
        .transpose()?;
    Ok((Some(reserved), started))
}

/// The local address toward the server: `--bind`, or the route's source.
fn source_ip(cfg: &super::ConnectConfig) -> Option<IpAddr> {
    cfg.bind.or_else(|| route_source(cfg.server).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_names_the_mapping_or_every_reason() {
        let granted = MappingReport {
            via: Some(Via::NatPmp),
            protocol: Protocol::Udp,
            external: Some("11.0.113.10:4000".parse().unwrap()),
            lifetime_s: Some(600),
            reasons: all_reasons("PCP MAP refused"),
        };
        let line = granted.describe();
        for part in ["NAT-PMP", "UDP 11.0.113.10:4000", "600 s"] {
            assert!(line.contains(part), "{line}");
        }
        let permanent = MappingReport {
            lifetime_s: Some(0),
            ..granted
        };
        assert!(permanent.describe().contains("permanent"));
        let mut reasons = all_reasons("no answer");
        reasons.insert("upnp".into(), "refused (606)".into());
        let line = MappingReport::none(Protocol::Tcp, reasons).describe();
        for part in [
            "none for TCP",
            // Protocols with one reason are named together, the reason said once.
            "nat_pmp, pcp: no answer",
            "upnp: refused (606)",
            "going on without",
        ] {
            assert!(line.contains(part), "{line}");
        }
        assert_eq!(line.matches("no answer").count(), 1, "{line}");
    }

    #[test]
    fn the_router_is_waited_for_only_where_the_punch_needs_its_mapping() {
        let now = Instant::now();
        let nat = |mapping, allocation, delta| NatInfo {
            mapping,
            filtering: Behavior::AddressAndPortDependent,
            allocation,
            delta,
            range: None,
        };
        let cone = nat(Behavior::EndpointIndependent, Allocation::Preserving, None);
        let seq = nat(
            Behavior::AddressAndPortDependent,
            Allocation::Sequential,
            Some(1),
        );
        let random = nat(Behavior::AddressAndPortDependent, Allocation::Random, None);
        assert!(matches!(
            Patience::for_nat(&cone, false, now),
            Patience::Until(_, Unneeded::EndpointIndependent)
        ));
        assert!(matches!(
            Patience::for_nat(&seq, true, now),
            Patience::Until(_, Unneeded::QuietCounter)
        ));
        // Other hosts' flows moved the counter between our samples, or it is random: the
        // mapping is what makes us reachable.
        assert!(matches!(
            Patience::for_nat(&seq, false, now),
            Patience::Full
        ));
        assert!(matches!(
            Patience::for_nat(&random, true, now),
            Patience::Full
        ));
        // TCP's samples: exact steps, including across the end of the port range.
        assert!(steps_exactly(&[20017, 20018, 20019], Some(1)));
        assert!(steps_exactly(&[65535, 0], Some(1)));
        assert!(steps_exactly(&[3000, 2998], Some(-2)));
        assert!(!steps_exactly(&[20017, 20019, 20020], Some(1)));
        assert!(!steps_exactly(&[20017], Some(1)));
        assert!(!steps_exactly(&[20017, 20018], None));
    }
}

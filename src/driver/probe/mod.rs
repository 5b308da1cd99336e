//! `punchraw probe`: binds the fresh UDP sockets the classifier asks for and drives it with
//! real time and real datagrams, then runs the TCP tests ([`tcp`]).

pub mod tcp;

use crate::core::classify::{Classifier, ClassifierConfig, Event, TcpReport, UdpReport};
use crate::core::portmap::Offer;
use crate::core::Machine;
use crate::driver::udp::drive;
use crate::driver::Status;
use crate::os::capture::Capture;
use crate::os::signals::Shutdown;
use crate::os::udp::{bind_fresh, route_source};
use crate::Error;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What `punchraw probe` does: which servers, which tests, where packets are recorded.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// The server's address on each family to probe, one per family, IPv4 first: the IPv4
    /// one fills the report's top-level `udp` and `tcp`, the IPv6 one its `ipv6`.
    pub servers: Vec<SocketAddr>,
    /// The caller prints the report as JSON (`--json`); the "probing the NAT toward ..." line
    /// is then left out.
    pub json: bool,
    /// Run the TCP tests after the UDP ones (off with `--no-tcp`).
    pub tcp: bool,
    /// Also search the UDP binding lifetime, up to this long (`--lifetime`, bounded by
    /// `--lifetime-max`); `None` skips the search.
    pub lifetime_max: Option<Duration>,
    /// Local IP to probe from; used for its own family, the route decides for the other.
    pub bind: Option<IpAddr>,
    /// Write every packet the probe sends and receives to this pcap file (`--capture`).
    pub capture: Option<PathBuf>,
    /// Ask the router for a test mapping (PCP, NAT-PMP, UPnP IGD) and delete it.
    pub port_mapping: bool,
    /// Stops the probe when triggered; `None`: SIGINT and SIGTERM do (the command line).
    pub shutdown: Option<Shutdown>,
}

/// The `--json` object. Field names and order are a contract with users' scripts.
#[derive(Debug, Serialize)]
pub struct ProbeReport {
    /// The IPv4 server when IPv4 was probed, else the IPv6 one.
    pub server: SocketAddr,
    /// Wall-clock time the whole probe took, every family and test included, in
    /// milliseconds.
    pub elapsed_ms: u64,
    /// IPv4; `null` when IPv4 was not probed (`-6`, or a name with only an IPv6 address).
    pub udp: Option<UdpReport>,
    /// IPv4; `null` with `--no-tcp` or when IPv4 was not probed.
    pub tcp: Option<TcpReport>,
    /// What the router offers to map ports on request; `null` with `--no-port-mapping`.
    pub port_mapping: Option<Offer>,
    /// The same tests over IPv6; `null` when IPv6 was not probed.
    pub ipv6: Option<FamilyReport>,
}

/// One family's results, the keys of the top-level IPv4 ones.
#[derive(Debug, Serialize)]
pub struct FamilyReport {
    /// The UDP classification of this family.
    pub udp: UdpReport,
    /// `null` with `--no-tcp`.
    pub tcp: Option<TcpReport>,
}

impl ProbeReport {
    /// Every family probed, IPv4 first, with its name.
    pub fn families(&self) -> Vec<(&'static str, &UdpReport, Option<&TcpReport>)> {
        let mut out = Vec::new();
        if let Some(u) = &self.udp {
            out.push(("IPv4", u, self.tcp.as_ref()));
        }
        if let Some(f) = &self.ipv6 {
            out.push(("IPv6", &f.udp, f.tcp.as_ref()));
        }
        out
    }
}

/// The local address probing `server` would use: `bind` when it is of the server's family,
/// else the one the OS routes from. An error means this host cannot reach that family.
pub fn source_for(server: SocketAddr, bind: Option<IpAddr>) -> Result<IpAddr, Error> {
    match bind {
        Some(ip) if ip.is_ipv4() == server.is_ipv4() => Ok(ip),
        _ => route_source(server),
    }
}

/// Runs the UDP classification against `server` and returns the report.
pub fn classify_udp(
    mut cfg: ClassifierConfig,
    bind: Option<IpAddr>,
    capture: Option<&mut Capture>,
    shutdown: &Shutdown,
    mut on_event: impl FnMut(Event),
) -> Result<UdpReport, Error> {
    let local_ip = match bind {
        Some(ip) => ip,
        None => route_source(cfg.server)?,
    };
    cfg.seed = rand::random();
    let (sockets, locals) = bind_fresh(local_ip, cfg.sockets_needed())?;
    let mut c = Classifier::new(cfg, locals.clone(), Instant::now());
    drive(&mut c, &sockets, &locals, capture, shutdown, |c| {
        while let Some(ev) = c.poll_event() {
            on_event(ev);
        }
        true
    })
    .map_err(|e| match e {
        // Stopped on purpose: the signal is the whole story, and main maps it to 130/143.
        Error::Interrupted { .. } => e,
        e => Error::context("the classification did not finish", e),
    })?;
    Ok(c.report()
        .cloned()
        .expect("drive returns when the classifier is done"))
}

/// `punchraw probe`: for each family, the UDP classification, then the TCP one, each
/// packet in the capture. Returns the report for the caller to print; a blocked server is a
/// report too (the CLI prints it, then exits 3). A later family this host has no route for
/// is left out with a status line (the caller checks that a lone family is reachable).
pub fn run(cfg: ProbeConfig, status: &Status) -> Result<ProbeReport, Error> {
    let shutdown = match &cfg.shutdown {
        Some(s) => s.clone(),
        None => Shutdown::install().map_err(|e| Error::io("cannot install signal handlers", e))?,
    };
    let mut capture = cfg.capture.as_deref().map(Capture::create).transpose()?;
    let started = Instant::now();
    // Families one after the other, never interleaved: each one's allocation tests must see
    // consecutive ports, and a firewall's conntrack is shared by both.
    let mut results = Vec::new();
    let mut failed = None;
    for (i, &server) in cfg.servers.iter().enumerate() {
        let local_ip = match source_for(server, cfg.bind) {
            Ok(ip) => ip,
            Err(e) if i > 0 => {
                status.say(format!("not probing {server}: {e}"));
                continue;
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        // The router's port mapping is asked about once, beside the first family's TCP half.
        match probe_family(
            &cfg,
            server,
            local_ip,
            i == 0 && cfg.port_mapping,
            capture.as_mut(),
            &shutdown,
            status,
        ) {
            Ok(r) => results.push((server, r)),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    // Finished on every path, an interrupt included, so the file is complete either way.
    let captured = capture.map(Capture::finish).transpose();
    let say_captured = |captured: &Option<(PathBuf, u64)>| {
        if let Some((path, n)) = captured {
            status.say(format!(
                "capture: {n} packets written to {}",
                path.display()
            ));
        }
    };
    if let Some(e) = failed {
        if let Ok(c) = &captured {
            say_captured(c);
        }
        return Err(e);
    }
    let captured = captured?;
    let mut report = ProbeReport {
        server: cfg.servers[0],
        elapsed_ms: 0,
        udp: None,
        tcp: None,
        port_mapping: None,
        ipv6: None,
    };
    for (server, (udp, tcp, pm)) in results {
        report.port_mapping = report.port_mapping.or(pm);
        if server.is_ipv4() {
            report.udp = Some(udp);
            report.tcp = tcp;
        } else {
            report.ipv6 = Some(FamilyReport { udp, tcp });
        }
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    say_captured(&captured);
    Ok(report)
}

/// One family's tests against `server` from `local_ip`.
fn probe_family(
    cfg: &ProbeConfig,
    server: SocketAddr,
    local_ip: IpAddr,
    port_mapping: bool,
    mut capture: Option<&mut Capture>,
    shutdown: &Shutdown,
    status: &Status,
) -> Result<(UdpReport, Option<TcpReport>, Option<Offer>), Error> {
    if !cfg.json {
        status.say(format!("probing the NAT toward {server} ..."));
    }
    if let Some(max) = cfg.lifetime_max {
        status.say(format!(
            "binding lifetime search: up to {} s (stops at the first expired binding)",
            max.as_secs()
        ));
    }
    let udp = classify_udp(
        ClassifierConfig {
            lifetime_max: cfg.lifetime_max,
            ..ClassifierConfig::new(server)
        },
        Some(local_ip),
        capture.as_deref_mut(),
        shutdown,
        |ev| match ev {
            Event::ServerAnswered { mapped, rtt, .. } => {
                tracing::info!(%mapped, rtt_ms = rtt.as_secs_f64() * 1000.0, "server answered")
            }
            Event::LifetimeAlive { after } => status.say(format!(
                "  binding still open after {} s",
                after.as_secs_f64()
            )),
            Event::LifetimeExpired { after } => {
                status.say(format!("  binding gone after {} s", after.as_secs_f64()))
            }
        },
    )?;
    // After UDP, not interleaved with it: a sequential NAT's one counter serves both, and the
    // allocation tests of each must see consecutive ports.
    //
    // Beside the TCP half, not the UDP one: a router that takes the test mapping's port
    // from the NAT's own UDP pool would disturb the allocation burst, and the SSDP wait
    // of UPnP discovery is then hidden behind the TCP tests instead of added to them.
    let port_mapping = port_mapping.then(|| {
        let (bind, shutdown) = (cfg.bind, shutdown.clone());
        std::thread::spawn(move || crate::driver::portmap::probe(bind, &shutdown))
    });
    let tcp = cfg
        .tcp
        .then(|| {
            crate::driver::probe::tcp::classify_tcp(
                server,
                udp.local.ip(),
                udp.other_address,
                capture,
                shutdown,
            )
        })
        .transpose();
    // Joined on every path: the thread deletes its test mapping before it ends.
    let port_mapping = port_mapping.map(|t| t.join().unwrap_or_default());
    let tcp = tcp?;
    if shutdown.requested() {
        return Err(shutdown.interrupted());
    }
    Ok((udp, tcp, port_mapping))
}

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

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub server: SocketAddr,
    pub json: bool,
    pub tcp: bool,
    pub lifetime_max: Option<Duration>,
    pub bind: Option<IpAddr>,
    pub capture: Option<PathBuf>,
    /// Ask the router for a test mapping (PCP, NAT-PMP, UPnP IGD) and delete it.
    pub port_mapping: bool,
}

/// The `--json` object. Field names and order are a contract with users' scripts.
#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub server: SocketAddr,
    pub elapsed_ms: u64,
    pub udp: UdpReport,
    /// `null` with `--no-tcp`.
    pub tcp: Option<TcpReport>,
    /// What the router offers to map ports on request; `null` with `--no-port-mapping`.
    pub port_mapping: Option<Offer>,
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

/// `punchraw probe`: the UDP classification, then the TCP one, each packet in the capture.
/// Returns the report for the caller to print; a blocked server is a report too (the CLI
/// prints it, then exits 3).
pub fn run(cfg: ProbeConfig, status: &Status) -> Result<ProbeReport, Error> {
    let shutdown =
        Shutdown::install().map_err(|e| Error::io("cannot install signal handlers", e))?;
    let mut capture = cfg.capture.as_deref().map(Capture::create).transpose()?;
    let started = Instant::now();
    if !cfg.json {
        status.say(format!("probing the NAT toward {} ...", cfg.server));
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
            ..ClassifierConfig::new(cfg.server)
        },
        cfg.bind,
        capture.as_mut(),
        &shutdown,
        |ev| match ev {
            Event::ServerAnswered { mapped, rtt } => {
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
    );
    // After UDP, not interleaved with it: a sequential NAT's one counter serves both, and the
    // allocation tests of each must see consecutive ports.
    let tests = udp.and_then(|udp| {
        // Beside the TCP half, not the UDP one: a router that takes the test mapping's port
        // from the NAT's own UDP pool would disturb the allocation burst, and the SSDP wait
        // of UPnP discovery is then hidden behind the TCP tests instead of added to them.
        let port_mapping = cfg.port_mapping.then(|| {
            let (bind, shutdown) = (cfg.bind, shutdown.clone());
            std::thread::spawn(move || crate::driver::portmap::probe(bind, &shutdown))
        });
        let tcp = cfg
            .tcp
            .then(|| {
                crate::driver::probe::tcp::classify_tcp(
                    cfg.server,
                    udp.local.ip(),
                    udp.other_address,
                    capture.as_mut(),
                    &shutdown,
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
    });
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
    let (udp, tcp, port_mapping) = match tests {
        Ok(t) => t,
        Err(e) => {
            if let Ok(c) = &captured {
                say_captured(c);
            }
            return Err(e);
        }
    };
    let captured = captured?;
    let report = ProbeReport {
        server: cfg.server,
        elapsed_ms: started.elapsed().as_millis() as u64,
        udp,
        tcp,
        port_mapping,
    };
    say_captured(&captured);
    Ok(report)
}

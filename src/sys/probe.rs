//! `punchraw probe`: binds the fresh UDP sockets the classifier asks for and drives it with
//! real time and real datagrams.

use crate::classify::{Classifier, ClassifierConfig, Event, LegacyType, UdpReport};
use crate::sys::capture::Capture;
use crate::sys::signals::Shutdown;
use crate::sys::udp::{bind_fresh, drive, route_source};
use crate::Error;
use anyhow::Context;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub server: SocketAddr,
    pub json: bool,
    pub tcp: bool,
    pub lifetime_max: Option<Duration>,
    pub bind: Option<IpAddr>,
    pub capture: Option<PathBuf>,
}

/// The `--json` object. Field names and order are a contract with users' scripts.
#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub server: SocketAddr,
    pub elapsed_ms: u64,
    pub udp: UdpReport,
}

/// Runs the UDP classification against `server` and returns the report.
pub fn classify_udp(
    server: SocketAddr,
    bind: Option<IpAddr>,
    lifetime_max: Option<Duration>,
    capture: Option<&mut Capture>,
    shutdown: &Shutdown,
    mut on_event: impl FnMut(Event),
) -> anyhow::Result<UdpReport> {
    let local_ip = match bind {
        Some(ip) => ip,
        None => route_source(server)?,
    };
    let mut cfg = ClassifierConfig::new(server);
    cfg.lifetime_max = lifetime_max;
    let (sockets, locals) = bind_fresh(local_ip, cfg.sockets_needed())?;
    let mut c = Classifier::new(cfg, locals.clone(), Instant::now());
    drive(&mut c, &sockets, &locals, capture, shutdown, |c| {
        while let Some(ev) = c.poll_event() {
            on_event(ev);
        }
        true
    })
    .map_err(|e| e.context("the classification did not finish"))?;
    Ok(c.report()
        .cloned()
        .expect("drive returns when the classifier is done"))
}

pub fn run(cfg: ProbeConfig) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::install().context("cannot install signal handlers")?;
    let mut capture = cfg.capture.as_deref().map(Capture::create).transpose()?;
    let started = Instant::now();
    if !cfg.json {
        eprintln!("probing the NAT toward {} ...", cfg.server);
    }
    if let Some(max) = cfg.lifetime_max {
        eprintln!(
            "binding lifetime search: up to {} s (stops at the first expired binding)",
            max.as_secs()
        );
    }
    let udp = classify_udp(
        cfg.server,
        cfg.bind,
        cfg.lifetime_max,
        capture.as_mut(),
        &shutdown,
        |ev| match ev {
            Event::ServerAnswered { mapped, rtt } => {
                tracing::info!(%mapped, rtt_ms = rtt.as_secs_f64() * 1000.0, "server answered")
            }
            Event::LifetimeAlive { after } => {
                eprintln!("  binding still open after {} s", after.as_secs_f64())
            }
            Event::LifetimeExpired { after } => {
                eprintln!("  binding gone after {} s", after.as_secs_f64())
            }
        },
    );
    let captured = capture.map(Capture::finish).transpose()?;
    let udp = udp?;
    let report = ProbeReport {
        server: cfg.server,
        elapsed_ms: started.elapsed().as_millis() as u64,
        udp,
    };
    if cfg.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("serialising the report")?
        );
    } else {
        print!("{}", render(&report, cfg.tcp));
    }
    if let Some((path, n)) = captured {
        eprintln!("capture: {n} packets written to {}", path.display());
    }
    if report.udp.legacy_type == LegacyType::Blocked {
        return Err(Error::ServerUnreachable {
            server: cfg.server,
            waited_ms: report.elapsed_ms,
        }
        .into());
    }
    Ok(ExitCode::SUCCESS)
}

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

fn kebab<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The human-readable table and verdict.
pub fn render(r: &ProbeReport, tcp_requested: bool) -> String {
    use std::fmt::Write;
    let u = &r.udp;
    let mut s = String::new();
    let rtt = u
        .rtt_ms
        .map_or(String::new(), |ms| format!(", RTT {ms} ms"));
    let _ = writeln!(
        s,
        "NAT probe against {}{rtt} -- {} ms",
        r.server, r.elapsed_ms
    );
    let _ = writeln!(s);
    let row = |s: &mut String, k: &str, v: String| {
        let _ = writeln!(s, "  {k:<18} {v}");
    };
    let _ = writeln!(s, "  UDP");
    row(&mut s, "local address", u.local.to_string());
    row(
        &mut s,
        "mapped address",
        u.mapped.map_or("none".into(), |m| m.to_string()),
    );
    row(
        &mut s,
        "behind NAT",
        yes_no(u.mapped.map(|_| u.behind_nat)).into(),
    );
    row(&mut s, "mapping", kebab(&u.mapping));
    row(&mut s, "filtering", kebab(&u.filtering));
    let alloc = match u.delta {
        Some(d) => format!("{} (delta {d})", kebab(&u.allocation)),
        None => kebab(&u.allocation),
    };
    row(&mut s, "port allocation", alloc);
    row(&mut s, "hairpinning", yes_no(u.hairpinning).into());
    if let Some(l) = u.lifetime {
        let v = match l.max_s {
            Some(max) => format!("between {} s and {} s", l.min_s, max),
            None => format!("more than {} s (search bound)", l.min_s),
        };
        row(&mut s, "binding lifetime", v);
    }
    row(&mut s, "RFC 3489 type", kebab(&u.legacy_type));
    if tcp_requested {
        row(
            &mut s,
            "TCP",
            "not probed yet (use --no-tcp to silence this line)".into(),
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Verdict: {}", u.verdict());
    if !u.reasons.is_empty() {
        let _ = writeln!(s);
        for (k, why) in &u.reasons {
            let _ = writeln!(s, "  {k} unknown: {why}");
        }
    }
    s
}

//! `punchraw probe`: binds the fresh UDP sockets the classifier asks for and drives it with
//! real time and real datagrams, then runs the TCP tests ([`tcp`]).

pub mod tcp;

use crate::core::classify::{
    Classifier, ClassifierConfig, Event, LegacyType, TcpReport, UdpReport,
};
use crate::core::Machine;
use crate::driver::kebab;
use crate::driver::udp::drive;
use crate::os::capture::Capture;
use crate::os::signals::Shutdown;
use crate::os::udp::{bind_fresh, route_source};
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
    /// `null` with `--no-tcp`.
    pub tcp: Option<TcpReport>,
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
    cfg.seed = rand::random();
    cfg.lifetime_max = lifetime_max;
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
        Error::Interrupted { .. } => anyhow::Error::new(e),
        e => anyhow::Error::new(e).context("the classification did not finish"),
    })?;
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
    // After UDP, not interleaved with it: a sequential NAT's one counter serves both, and the
    // allocation tests of each must see consecutive ports.
    let tests = udp.and_then(|udp| {
        let tcp = if cfg.tcp {
            Some(crate::driver::probe::tcp::classify_tcp(
                cfg.server,
                udp.local.ip(),
                udp.other_address,
                capture.as_mut(),
                &shutdown,
            )?)
        } else {
            None
        };
        Ok((udp, tcp))
    });
    // Finished on every path, an interrupt included, so the file is complete either way.
    let captured = capture.map(Capture::finish).transpose();
    let say_captured = |captured: &Option<(PathBuf, u64)>| {
        if let Some((path, n)) = captured {
            eprintln!("capture: {n} packets written to {}", path.display());
        }
    };
    let (udp, tcp) = match tests {
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
    };
    if cfg.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("serialising the report")?
        );
    } else {
        print!("{}", render(&report));
    }
    say_captured(&captured);
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

/// The human-readable table and verdicts.
pub fn render(r: &ProbeReport) -> String {
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
    let _ = writeln!(s);
    if let Some(t) = &r.tcp {
        let _ = writeln!(s, "  TCP");
        row(&mut s, "local address", t.local.to_string());
        row(
            &mut s,
            "mapped address",
            t.mapped.map_or("none".into(), |m| m.to_string()),
        );
        row(
            &mut s,
            "behind NAT",
            yes_no(t.mapped.map(|_| t.behind_nat)).into(),
        );
        row(&mut s, "mapping", kebab(&t.mapping));
        row(&mut s, "filtering", kebab(&t.filtering));
        let alloc = match t.delta {
            Some(d) => format!("{} (delta {d})", kebab(&t.allocation)),
            None => kebab(&t.allocation),
        };
        row(&mut s, "port allocation", alloc);
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "Verdict (UDP): {}", u.verdict());
    if let Some(t) = &r.tcp {
        let _ = writeln!(s, "Verdict (TCP): {}", t.verdict());
    }
    let tcp_reasons = r.tcp.iter().flat_map(|t| t.reasons.iter());
    if !u.reasons.is_empty() || r.tcp.as_ref().is_some_and(|t| !t.reasons.is_empty()) {
        let _ = writeln!(s);
        for (k, why) in &u.reasons {
            let _ = writeln!(s, "  {k} unknown: {why}");
        }
        for (k, why) in tcp_reasons {
            let _ = writeln!(s, "  tcp {k} unknown: {why}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::classify::{Allocation, Behavior};
    use std::collections::BTreeMap;

    fn report(tcp: bool) -> ProbeReport {
        let local: SocketAddr = "10.0.1.2:40000".parse().unwrap();
        let mapped: SocketAddr = "203.0.113.10:40000".parse().unwrap();
        let udp = UdpReport {
            local,
            mapped: Some(mapped),
            behind_nat: true,
            mapping: Behavior::EndpointIndependent,
            filtering: Behavior::AddressAndPortDependent,
            allocation: Allocation::Preserving,
            delta: None,
            hairpinning: Some(false),
            legacy_type: LegacyType::PortRestrictedCone,
            rtt_ms: Some(0.5),
            other_address: None,
            allocation_samples: vec![40001, 40002],
            lifetime: None,
            reasons: BTreeMap::new(),
        };
        let tcp = tcp.then(|| TcpReport {
            local,
            mapped: Some(mapped),
            behind_nat: true,
            mapping: Behavior::EndpointIndependent,
            filtering: Behavior::Unknown,
            allocation: Allocation::Preserving,
            delta: None,
            rtt_ms: Some(1.0),
            other_address: None,
            allocation_samples: vec![40003, 40004],
            reasons: BTreeMap::from([("filtering", "needs CAP_NET_RAW".to_string())]),
        });
        ProbeReport {
            server: "203.0.113.1:3478".parse().unwrap(),
            elapsed_ms: 700,
            udp,
            tcp,
        }
    }

    #[test]
    fn table_has_a_tcp_section_verdict_and_reasons_when_probed() {
        let t = render(&report(true));
        assert!(t.contains("  TCP\n"), "{t}");
        assert!(t.contains("Verdict (UDP): "), "{t}");
        assert!(
            t.contains("Verdict (TCP): Endpoint-independent TCP mapping"),
            "{t}"
        );
        assert!(
            t.contains("  tcp filtering unknown: needs CAP_NET_RAW"),
            "{t}"
        );
        let t = render(&report(false));
        assert!(!t.contains("TCP"), "{t}");
    }

    #[test]
    fn json_keeps_its_keys_in_order_with_tcp_last() {
        for tcp in [true, false] {
            let j = serde_json::to_string(&report(tcp)).unwrap();
            let at = |k: &str| j.find(&format!("\"{k}\":")).unwrap();
            assert!(at("server") < at("elapsed_ms"), "{j}");
            assert!(at("elapsed_ms") < at("udp"), "{j}");
            assert!(at("udp") < at("tcp"), "{j}");
            if !tcp {
                assert!(j.ends_with(",\"tcp\":null}"), "{j}");
            }
        }
    }
}

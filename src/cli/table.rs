//! The probe's table: what `punchraw probe` prints without `--json`.

use crate::driver::kebab;
use crate::driver::probe::ProbeReport;

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
    use crate::core::classify::{LegacyType, TcpReport, UdpReport};
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

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

//! The probe's table: what `punchraw probe` prints without `--json`.

use crate::core::classify::{disturbance, Allocation, Behavior, TcpReport, UdpReport};
use crate::driver::kebab;
use crate::driver::probe::ProbeReport;
use std::net::SocketAddr;

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

fn row(s: &mut String, k: &str, v: String) {
    use std::fmt::Write;
    let _ = writeln!(s, "  {k:<18} {v}");
}

/// The rows UDP and TCP have in common.
struct Nat {
    local: SocketAddr,
    mapped: Option<SocketAddr>,
    behind_nat: bool,
    mapping: Behavior,
    filtering: Behavior,
    allocation: Allocation,
    delta: Option<i32>,
    port_range: Option<[u16; 2]>,
    delta_spread: Option<[u16; 2]>,
}

impl Nat {
    fn from_udp(u: &UdpReport) -> Self {
        Nat {
            local: u.local,
            mapped: u.mapped,
            behind_nat: u.behind_nat,
            mapping: u.mapping,
            filtering: u.filtering,
            allocation: u.allocation,
            delta: u.delta,
            port_range: u.port_range,
            delta_spread: u.delta_spread,
        }
    }

    fn from_tcp(t: &TcpReport) -> Self {
        Nat {
            local: t.local,
            mapped: t.mapped,
            behind_nat: t.behind_nat,
            mapping: t.mapping,
            filtering: t.filtering,
            allocation: t.allocation,
            delta: t.delta,
            port_range: t.port_range,
            delta_spread: t.delta_spread,
        }
    }
}

fn nat_rows(s: &mut String, n: &Nat) {
    row(s, "local address", n.local.to_string());
    row(
        s,
        "mapped address",
        n.mapped.map_or("none".into(), |m| m.to_string()),
    );
    row(
        s,
        "behind NAT",
        yes_no(n.mapped.map(|_| n.behind_nat)).into(),
    );
    row(s, "mapping", kebab(&n.mapping));
    row(s, "filtering", kebab(&n.filtering));
    let alloc = match n.delta {
        Some(d) => format!(
            "{} (delta {d}{})",
            kebab(&n.allocation),
            disturbance(n.delta_spread)
        ),
        None => kebab(&n.allocation),
    };
    row(s, "port allocation", alloc);
    if let Some([lo, hi]) = n.port_range {
        row(s, "port range", format!("{lo}-{hi} (seen)"));
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
    let _ = writeln!(s, "  UDP");
    nat_rows(&mut s, &Nat::from_udp(u));
    if let Some(r) = u.other_flows_per_s {
        row(&mut s, "others' new flows", format!("{r} a second (timed)"));
    }
    if let Some([lo, hi]) = u.search_range {
        row(
            &mut s,
            "search range",
            format!("{lo}-{hi} (for a peer's sweep)"),
        );
    }
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
        nat_rows(&mut s, &Nat::from_tcp(t));
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
            port_range: None,
            delta_spread: None,
            other_flows_per_s: None,
            search_range: None,
            busy_step: None,
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
            port_range: None,
            delta_spread: None,
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

    /// A sequential counter others' flows moved: the allocation row and the verdict say by
    /// how much; an undisturbed one reads as before.
    #[test]
    fn allocation_row_names_the_disturbance() {
        let mut r = report(true);
        r.udp.mapping = Behavior::AddressAndPortDependent;
        r.udp.allocation = Allocation::Sequential;
        r.udp.delta = Some(1);
        r.udp.delta_spread = Some([0, 3]);
        let t = render(&r);
        assert!(
            t.contains(
                "  port allocation    sequential (delta 1, disturbed by up to 3 other flows between samples)\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("(step 1, disturbed by up to 3 other flows between samples)"),
            "{t}"
        );
        r.udp.delta_spread = Some([0, 0]);
        let t = render(&r);
        assert!(
            t.contains("  port allocation    sequential (delta 1)\n"),
            "{t}"
        );
    }
}

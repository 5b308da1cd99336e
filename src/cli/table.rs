//! The probe's table: what `punchraw probe` prints without `--json`.

use crate::core::classify::{disturbance, Allocation, Behavior, TcpReport, UdpReport};
use crate::core::portmap::Offer;
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

/// What the router's port mapping changes for a peer that wants to reach us.
fn port_mapping_verdict(pm: &Offer, u: &UdpReport) -> String {
    if !pm.any() {
        return "your router maps no ports on request: hole punching alone decides".into();
    }
    let nat = if u.mapping == Behavior::EndpointIndependent {
        "without a punch"
    } else {
        "although your NAT is symmetric"
    };
    format!(
        "your router maps ports on request ({}): peers can reach you {nat}",
        pm.names()
    )
}

/// The human-readable table and verdicts. IPv4 reads as it always did; IPv6, when probed,
/// has sections and verdicts of its own, named so.
pub fn render(r: &ProbeReport) -> String {
    use std::fmt::Write;
    let families = r.families();
    let mut s = String::new();
    let rtt = families
        .first()
        .and_then(|(_, u, _)| u.rtt_ms)
        .map_or(String::new(), |ms| format!(", RTT {ms} ms"));
    let _ = writeln!(
        s,
        "NAT probe against {}{rtt} -- {} ms",
        r.server, r.elapsed_ms
    );
    let _ = writeln!(s);
    let tag = |family: &str| {
        if family == "IPv4" {
            String::new()
        } else {
            format!(" ({family})")
        }
    };
    for &(family, u, t) in &families {
        let _ = writeln!(s, "  UDP{}", tag(family));
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
        if let Some(t) = t {
            let _ = writeln!(s, "  TCP{}", tag(family));
            nat_rows(&mut s, &Nat::from_tcp(t));
            let _ = writeln!(s);
        }
    }
    if let Some(pm) = &r.port_mapping {
        let _ = writeln!(s, "  Port mapping (the router, on request)");
        let offered = |b: bool, k: &str| {
            if b {
                "yes".to_string()
            } else {
                format!("no ({})", pm.reasons.get(k).map_or("not offered", |s| s))
            }
        };
        row(&mut s, "PCP", offered(pm.pcp, "pcp"));
        row(&mut s, "NAT-PMP", offered(pm.nat_pmp, "nat_pmp"));
        row(&mut s, "UPnP IGD", offered(pm.upnp, "upnp"));
        if let Some(ext) = &pm.external {
            let life = match pm.lifetime_s {
                Some(0) => " (permanent lease)".to_string(),
                Some(l) => format!(" (lifetime {l} s)"),
                None => String::new(),
            };
            row(&mut s, "test mapping", format!("{ext}{life}, deleted"));
        }
        let _ = writeln!(s);
    }
    let vtag = |family: &str| {
        if family == "IPv4" {
            String::new()
        } else {
            format!(", {family}")
        }
    };
    for &(family, u, t) in &families {
        let _ = writeln!(s, "Verdict (UDP{}): {}", vtag(family), u.verdict());
        if let Some(t) = t {
            let _ = writeln!(s, "Verdict (TCP{}): {}", vtag(family), t.verdict());
        }
    }
    if let (Some(pm), Some((_, u, _))) = (&r.port_mapping, families.first()) {
        let _ = writeln!(s, "Verdict (port mapping): {}", port_mapping_verdict(pm, u));
    }
    let any_reasons = families
        .iter()
        .any(|(_, u, t)| !u.reasons.is_empty() || t.is_some_and(|t| !t.reasons.is_empty()));
    if any_reasons {
        let _ = writeln!(s);
        for &(family, u, t) in &families {
            let pre = if family == "IPv4" { "" } else { "ipv6 " };
            for (k, why) in &u.reasons {
                let _ = writeln!(s, "  {pre}{k} unknown: {why}");
            }
            for (k, why) in t.iter().flat_map(|t| t.reasons.iter()) {
                let _ = writeln!(s, "  {pre}tcp {k} unknown: {why}");
            }
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
            udp: Some(udp),
            tcp,
            port_mapping: None,
            ipv6: None,
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
            assert!(at("tcp") < at("port_mapping"), "{j}");
            assert!(at("port_mapping") < at("ipv6"), "{j}");
            if !tcp {
                assert!(
                    j.ends_with(",\"tcp\":null,\"port_mapping\":null,\"ipv6\":null}"),
                    "{j}"
                );
            }
        }
    }

    /// The `port_mapping` object's keys, exactly, and what the table and verdict say.
    #[test]
    fn port_mapping_json_and_verdict() {
        let mut r = report(false);
        r.udp.as_mut().unwrap().mapping = Behavior::AddressAndPortDependent;
        let mut pm = Offer {
            pcp: true,
            nat_pmp: true,
            external: Some("11.0.113.10:40000".into()),
            lifetime_s: Some(120),
            ..Offer::default()
        };
        pm.reasons
            .insert("upnp".into(), "no UPnP IGD answered".into());
        r.port_mapping = Some(pm);
        let j = serde_json::to_string(&r).unwrap();
        assert!(
            j.ends_with(
                ",\"port_mapping\":{\"upnp\":false,\"nat_pmp\":true,\"pcp\":true,\"external\":\"11.0.113.10:40000\",\"lifetime_s\":120,\"reasons\":{\"upnp\":\"no UPnP IGD answered\"}},\"ipv6\":null}"
            ),
            "{j}"
        );
        let t = render(&r);
        assert!(
            t.contains("  UPnP IGD           no (no UPnP IGD answered)\n"),
            "{t}"
        );
        assert!(
            t.contains("Verdict (port mapping): your router maps ports on request (PCP, NAT-PMP): peers can reach you although your NAT is symmetric"),
            "{t}"
        );
    }

    /// The IPv6 family: its own sections, verdicts and reasons, after IPv4's, and in the
    /// JSON the keys of the top-level ones under `ipv6`.
    #[test]
    fn ipv6_has_its_own_sections_verdicts_and_json_object() {
        let mut r = report(true);
        let v4 = report(true);
        let mut u6 = v4.udp.unwrap();
        u6.local = "[2001:db8:1::2]:40000".parse().unwrap();
        u6.mapped = Some(u6.local);
        u6.behind_nat = false;
        u6.reasons
            .insert("hairpinning", "no hairpin without a NAT".into());
        r.ipv6 = Some(crate::driver::probe::FamilyReport { udp: u6, tcp: None });
        let t = render(&r);
        let at = |k: &str| t.find(k).unwrap_or_else(|| panic!("{k} in {t}"));
        assert!(at("  UDP\n") < at("  TCP\n"), "{t}");
        assert!(at("  TCP\n") < at("  UDP (IPv6)\n"), "{t}");
        assert!(!t.contains("TCP (IPv6)"), "{t}");
        assert!(at("Verdict (UDP): ") < at("Verdict (UDP, IPv6): "), "{t}");
        assert!(t.contains("  ipv6 hairpinning unknown: no hairpin"), "{t}");
        let j: serde_json::Value = serde_json::to_value(&r).unwrap();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        assert_eq!(keys(&j["ipv6"]), ["tcp", "udp"]);
        assert_eq!(keys(&j["ipv6"]["udp"]), keys(&j["udp"]));
        assert_eq!(j["ipv6"]["tcp"], serde_json::Value::Null);
        assert_eq!(j["ipv6"]["udp"]["behind_nat"], false);
        // IPv6 alone: the top-level IPv4 keys are null, the table has IPv6 only.
        r.udp = None;
        r.tcp = None;
        let t = render(&r);
        assert!(
            !t.contains("  UDP\n") && t.contains("  UDP (IPv6)\n"),
            "{t}"
        );
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains(",\"udp\":null,\"tcp\":null,"), "{j}");
    }

    /// A sequential counter others' flows moved: the allocation row and the verdict say by
    /// how much; an undisturbed one reads as before.
    #[test]
    fn allocation_row_names_the_disturbance() {
        let mut r = report(true);
        let u = r.udp.as_mut().unwrap();
        u.mapping = Behavior::AddressAndPortDependent;
        u.allocation = Allocation::Sequential;
        u.delta = Some(1);
        u.delta_spread = Some([0, 3]);
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
        r.udp.as_mut().unwrap().delta_spread = Some([0, 0]);
        let t = render(&r);
        assert!(
            t.contains("  port allocation    sequential (delta 1)\n"),
            "{t}"
        );
    }
}

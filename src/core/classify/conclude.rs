//! From the answers to the verdict: the RFC 5780 section 4.3 and 4.4 reasoning that turns
//! what each test saw into mapping, filtering, allocation and lifetime, and the RFC 3489
//! name for the combination.

use super::report::{
    port_range, secs, unreachable_reasons, Allocation, Behavior, LegacyType, LifetimeRange,
    UdpReport,
};
use super::{Classifier, Kind, Outcome, SOCK_A, SOCK_ALLOC0};
use std::collections::BTreeMap;
use std::net::SocketAddr;

impl Classifier {
    pub(super) fn answered(
        &self,
        kind: Kind,
    ) -> Option<(SocketAddr, Option<SocketAddr>, Option<SocketAddr>)> {
        match self.outcome(kind) {
            Some(Outcome::Answered {
                from,
                mapped,
                other,
                ..
            }) => Some((*from, *mapped, *other)),
            _ => None,
        }
    }

    pub(super) fn conclude(&self) -> UdpReport {
        let mut reasons = BTreeMap::new();
        let local = self.locals[SOCK_A];
        let server = self.cfg.server;
        let Some((_, Some(mapped), other)) = self.answered(Kind::Base) else {
            let why = match self.outcome(Kind::Base) {
                Some(Outcome::Rejected(code)) => {
                    format!("the server rejected a plain Binding request with error {code}")
                }
                _ => format!("no answer from {server} over UDP"),
            };
            let reasons = unreachable_reasons(
                &[
                    "mapping",
                    "filtering",
                    "allocation",
                    "hairpinning",
                    "mapped",
                ],
                &why,
            );
            return UdpReport {
                local,
                mapped: None,
                behind_nat: false,
                mapping: Behavior::Unknown,
                filtering: Behavior::Unknown,
                allocation: Allocation::Unknown,
                delta: None,
                hairpinning: None,
                legacy_type: LegacyType::Blocked,
                rtt_ms: None,
                other_address: None,
                allocation_samples: Vec::new(),
                port_range: None,
                lifetime: None,
                reasons,
            };
        };
        let behind_nat = mapped != local;

        let mapping = self.mapping(mapped, other, behind_nat, &mut reasons);
        let filtering = self.filtering(other, &mut reasons);
        let (allocation, delta, samples) = self.allocation(&mut reasons);
        let hairpinning = match self.outcome(Kind::Hairpin) {
            Some(Outcome::Answered { .. }) => Some(true),
            Some(Outcome::TimedOut) => Some(false),
            None if self.cfg.quick => {
                reasons.insert(
                    "hairpinning",
                    "not tested: the quick classification before a punch skips it".into(),
                );
                None
            }
            _ => {
                reasons.insert("hairpinning", "the hairpin test did not finish".into());
                None
            }
        };
        let legacy_type = legacy(behind_nat, mapping, filtering);
        UdpReport {
            local,
            mapped: Some(mapped),
            behind_nat,
            mapping,
            filtering,
            allocation,
            delta,
            hairpinning,
            legacy_type,
            rtt_ms: self.srtt.map(|d| (d.as_secs_f64() * 1e5).round() / 100.0),
            other_address: other,
            port_range: port_range(allocation, &samples),
            allocation_samples: samples,
            lifetime: self.lifetime_result(&mut reasons),
            reasons,
        }
    }

    pub(super) fn mapping(
        &self,
        mapped: SocketAddr,
        other: Option<SocketAddr>,
        behind_nat: bool,
        reasons: &mut BTreeMap<&'static str, String>,
    ) -> Behavior {
        if other.is_none() {
            // Without a second server address no two destinations differ in IP.
            let why = if behind_nat {
                "the server has no RFC 5780 alternate address (no OTHER-ADDRESS), so mapping cannot be compared across destinations"
            } else {
                "the server has no RFC 5780 alternate address; there is no NAT, but a firewall's behaviour cannot be measured"
            };
            if !behind_nat {
                return Behavior::EndpointIndependent;
            }
            reasons.insert("mapping", why.into());
            return Behavior::Unknown;
        }
        match self.answered(Kind::MapAltIp) {
            Some((_, Some(m2), _)) if m2 == mapped => Behavior::EndpointIndependent,
            Some((_, Some(m2), _)) => match self.answered(Kind::MapAltBoth) {
                Some((_, Some(m3), _)) if m3 == m2 => Behavior::AddressDependent,
                Some((_, Some(_), _)) => Behavior::AddressAndPortDependent,
                _ => {
                    reasons.insert(
                        "mapping",
                        "the server's alternate address and port did not answer".into(),
                    );
                    Behavior::Unknown
                }
            },
            _ => {
                reasons.insert(
                    "mapping",
                    "the server's alternate address did not answer".into(),
                );
                Behavior::Unknown
            }
        }
    }

    pub(super) fn filtering(
        &self,
        other: Option<SocketAddr>,
        reasons: &mut BTreeMap<&'static str, String>,
    ) -> Behavior {
        let server = self.cfg.server;
        // Only an answer that really came from the changed address counts; a server that
        // ignores CHANGE-REQUEST would otherwise make every NAT look like a full cone.
        let changed_both =
            |from: SocketAddr| from.ip() != server.ip() && from.port() != server.port();
        let changed_port =
            |from: SocketAddr| from.ip() == server.ip() && from.port() != server.port();
        let b = self.outcome(Kind::FilterIpPort);
        let c = self.outcome(Kind::FilterPort);
        match (b, c) {
            (Some(Outcome::Answered { from, .. }), _) if changed_both(*from) => {
                Behavior::EndpointIndependent
            }
            (Some(Outcome::TimedOut), Some(Outcome::Answered { from, .. }))
                if changed_port(*from) =>
            {
                Behavior::AddressDependent
            }
            (Some(Outcome::TimedOut), Some(Outcome::TimedOut)) if other.is_some() => {
                Behavior::AddressAndPortDependent
            }
            (Some(Outcome::Rejected(code)), _) | (_, Some(Outcome::Rejected(code))) => {
                reasons.insert(
                    "filtering",
                    format!("the server refused CHANGE-REQUEST (error {code}): it has no RFC 5780 alternate address"),
                );
                Behavior::Unknown
            }
            (Some(Outcome::TimedOut), Some(Outcome::TimedOut)) => {
                reasons.insert(
                    "filtering",
                    "the server has no RFC 5780 alternate address and did not answer CHANGE-REQUEST".into(),
                );
                Behavior::Unknown
            }
            _ => {
                reasons.insert(
                    "filtering",
                    "the server answered CHANGE-REQUEST from an unchanged address".into(),
                );
                Behavior::Unknown
            }
        }
    }

    pub(super) fn allocation(
        &self,
        reasons: &mut BTreeMap<&'static str, String>,
    ) -> (Allocation, Option<i32>, Vec<u16>) {
        let samples: Vec<(usize, u16, u16)> = (0..self.cfg.alloc_sockets)
            .filter_map(|i| match self.answered(Kind::Alloc(i)) {
                Some((_, Some(m), _)) => Some((i, self.locals[SOCK_ALLOC0 + i].port(), m.port())),
                _ => None,
            })
            .collect();
        let ports: Vec<u16> = samples.iter().map(|s| s.2).collect();
        let (alloc, delta) = classify_allocation(&samples);
        if alloc == Allocation::Unknown {
            reasons.insert(
                "allocation",
                format!(
                    "only {} of {} allocation probes were answered",
                    samples.len(),
                    self.cfg.alloc_sockets
                ),
            );
        }
        (alloc, delta, ports)
    }

    pub(super) fn lifetime_result(
        &self,
        reasons: &mut BTreeMap<&'static str, String>,
    ) -> Option<LifetimeRange> {
        if self.lifetime_points.is_empty() {
            return None;
        }
        if let Some(code) = self.lifetime_unsupported {
            let why = if code == 0 {
                "the server ignores RESPONSE-PORT (RFC 5780), which the lifetime test needs"
                    .to_string()
            } else {
                format!("the server refused RESPONSE-PORT (error {code}), which the lifetime test needs")
            };
            reasons.insert("lifetime", why);
            return None;
        }
        let alive = (0..self.lifetime_points.len())
            .filter(|&i| self.lifetime_state[i] == Some(true))
            .map(|i| self.lifetime_points[i])
            .max();
        let dead = (0..self.lifetime_points.len())
            .filter(|&i| {
                self.lifetime_state[i] == Some(false)
                    && matches!(
                        self.outcome(Kind::LifetimeCheck(i)),
                        Some(Outcome::TimedOut)
                    )
            })
            .map(|i| self.lifetime_points[i])
            .filter(|d| alive.is_none_or(|a| *d > a))
            .min();
        Some(LifetimeRange {
            min_s: alive.map_or(0.0, secs),
            max_s: dead.map(secs),
        })
    }
}

/// Port allocation from `(probe index, local port, external port)` samples taken in the
/// order the mappings were created.
pub fn classify_allocation(samples: &[(usize, u16, u16)]) -> (Allocation, Option<i32>) {
    if samples.len() < 2 {
        return (Allocation::Unknown, None);
    }
    if samples.iter().all(|&(_, l, m)| l == m) {
        return (Allocation::Preserving, None);
    }
    // Steps per probe index, modulo the 16-bit port space so a wrap still counts as a step.
    let mut steps = Vec::new();
    for w in samples.windows(2) {
        let (i0, _, p0) = w[0];
        let (i1, _, p1) = w[1];
        let diff = i32::from(p1.wrapping_sub(p0) as i16);
        let gap = (i1 - i0) as i32;
        if diff % gap != 0 {
            steps.push(0);
        } else {
            steps.push(diff / gap);
        }
    }
    let mut best = (0, 0usize);
    for &s in &steps {
        let n = steps.iter().filter(|&&x| x == s).count();
        if n > best.1 {
            best = (s, n);
        }
    }
    let (d, n) = best;
    // Another host behind the same NAT may take a port between two of ours, so one step in
    // four may be off; a tiny constant step can hardly be chance with random allocation.
    if d != 0 && d.abs() <= 100 && n * 4 >= steps.len() * 3 {
        (Allocation::Sequential, Some(d))
    } else {
        (Allocation::Random, None)
    }
}

pub(super) fn legacy(behind_nat: bool, mapping: Behavior, filtering: Behavior) -> LegacyType {
    use Behavior::*;
    match (behind_nat, mapping, filtering) {
        (_, AddressDependent | AddressAndPortDependent, _) => LegacyType::Symmetric,
        (false, _, EndpointIndependent) => LegacyType::OpenInternet,
        (true, EndpointIndependent, EndpointIndependent) => LegacyType::FullCone,
        // RFC 3489 calls a NAT-less filtering host a "symmetric UDP firewall"; what matters
        // for punching is its filtering, which the cone names say.
        (_, EndpointIndependent, AddressDependent) => LegacyType::RestrictedCone,
        (_, EndpointIndependent, AddressAndPortDependent) => LegacyType::PortRestrictedCone,
        _ => LegacyType::Unknown,
    }
}

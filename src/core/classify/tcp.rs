//! The TCP NAT classifier, sans-IO: what a set of TCP observations says about the NAT, in
//! RFC 5382's terms (which reuse RFC 4787's mapping and filtering vocabulary for TCP).
//!
//! Unlike UDP there is nothing to retransmit or time here (the kernel's TCP does that), so the
//! classifier is a pure function of what the driver ([`crate::driver::probe::tcp`]) saw:
//!
//! - mapping (RFC 5780 section 4.3 tests I-III, over TCP): connections from one local port L
//!   (shared with SO_REUSEADDR/SO_REUSEPORT) to the server's primary endpoint, its alternate
//!   IP, and its alternate IP and port, each answering with the mapped address it saw;
//! - allocation: the mapped ports of several fresh connections to the primary endpoint, made
//!   back to back, in order;
//! - filtering (RFC 5780 section 4.4 tests II and III, with a SYN instead of a datagram): two
//!   fresh connections to the primary endpoint, each asking with CONNECT-BACK for an
//!   unsolicited SYN to its mapped address, from the alternate IP and port and from the
//!   alternate port only, and whether that SYN reached the local port.
//!
//! The filtering tests use ports of their own, not L: after the mapping tests L's mapping has
//! sent to the alternate IP, so an address-dependent filter would let the change-IP SYN in and
//! the NAT would look endpoint-independent.

pub mod plan;

pub use plan::TcpProbe;

use super::conclude::compare_mappings;
use super::fit_allocation;
use super::report::{
    block_sentence, nat_verdict, port_range, unreachable_reasons, Allocation, Behavior, Proto,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// What one STUN Binding over TCP answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpAnswer {
    /// The connection's external address as the server saw it (XOR-MAPPED-ADDRESS, or
    /// MAPPED-ADDRESS).
    pub mapped: SocketAddr,
    /// OTHER-ADDRESS, the server's alternate endpoint.
    pub other: Option<SocketAddr>,
}

/// What became of one CONNECT-BACK's unsolicited SYN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SynTest {
    /// The server promised a SYN from `origin` (CONNECT-BACK-ORIGIN); `arrived` says whether
    /// one reached the local port within the wait.
    Watched {
        /// Where the server said the SYN will come from (CONNECT-BACK-ORIGIN).
        origin: SocketAddr,
        /// Whether a SYN from `origin` reached the local port within the wait.
        arrived: bool,
    },
    /// The test could not be made or watched, and why (no CAP_NET_RAW, a server without
    /// CONNECT-BACK, a failed connection, ...).
    Unknown(String),
}

/// Everything the driver saw. An `Err` or `Unknown` carries the reason, which ends up in the
/// report's `reasons`.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpObservations {
    /// The server's primary endpoint.
    pub server: SocketAddr,
    /// L, the local address of the mapping tests.
    pub local: SocketAddr,
    /// Test I: L to the primary endpoint.
    pub primary: Result<TcpAnswer, String>,
    /// Connect plus Binding of test I.
    pub rtt: Option<Duration>,
    /// Test II: L to the alternate IP and primary port; `None` when not made.
    pub alt_ip: Option<Result<SocketAddr, String>>,
    /// Test III: L to the alternate IP and port; `None` when not made.
    pub alt_both: Option<Result<SocketAddr, String>>,
    /// L to the primary IP and the alternate port, made only when test III matched test II
    /// (see `compare_mappings`); `None` when not made.
    pub alt_port: Option<Result<SocketAddr, String>>,
    /// Fresh connections to the primary endpoint in the order they were made: (local port,
    /// mapped port), `None` for one that failed.
    pub allocation: Vec<Option<(u16, u16)>>,
    /// CONNECT-BACK from the alternate port only (RFC 5780 section 4.4 test III).
    pub filter_port: SynTest,
    /// CONNECT-BACK from the alternate IP and port (test II).
    pub filter_both: SynTest,
}

/// The `tcp` object of `probe --json`: the keys of `udp` that mean the same for TCP, with the
/// same names and value shapes. Field names and order are a contract.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcpReport {
    /// L, the local address the mapping tests connected from.
    pub local: SocketAddr,
    /// L's external address as the server saw it in test I; `None` when test I failed.
    pub mapped: Option<SocketAddr>,
    /// Whether `mapped` differs from `local`: some NAT rewrote the address or port.
    pub behind_nat: bool,
    /// Mapping behaviour for TCP (RFC 5382, in RFC 4787 terms), from RFC 5780 section 4.3 tests
    /// I-III over TCP.
    pub mapping: Behavior,
    /// Filtering behaviour for TCP (RFC 5382), from whether the CONNECT-BACK SYNs from the
    /// alternate port, and from the alternate IP and port, reached us.
    pub filtering: Behavior,
    /// How the NAT picks the external port of each new connection, from the allocation
    /// connections.
    pub allocation: Allocation,
    /// For `sequential` allocation: the counter's step, in ports per new connection (negative when
    /// it counts down); `None` otherwise.
    pub delta: Option<i32>,
    /// Connect plus Binding to the primary endpoint.
    pub rtt_ms: Option<f64>,
    /// The server's RFC 5780 alternate endpoint (OTHER-ADDRESS of test I), when it has one.
    pub other_address: Option<SocketAddr>,
    /// External ports of the allocation test, in the order the connections were made.
    pub allocation_samples: Vec<u16>,
    /// For every field reported `unknown`/`null`: why.
    pub reasons: BTreeMap<&'static str, String>,
    /// `[lowest, highest]` external port the allocation test saw, for `random` and
    /// `sequential` allocation (`null` otherwise), as in the UDP report.
    pub port_range: Option<[u16; 2]>,
    /// For `sequential` allocation, `[fewest, most]` flows of others between two
    /// consecutive allocation connections, as in the UDP report; `null` otherwise.
    pub delta_spread: Option<[u16; 2]>,
}

/// Classifies the NAT's TCP behaviour from what the driver saw.
pub fn classify(o: &TcpObservations) -> TcpReport {
    let mut reasons = BTreeMap::new();
    let base = match &o.primary {
        Ok(a) => *a,
        Err(why) => {
            let reasons =
                unreachable_reasons(&["mapped", "mapping", "filtering", "allocation"], why);
            return TcpReport {
                local: o.local,
                mapped: None,
                behind_nat: false,
                mapping: Behavior::Unknown,
                filtering: Behavior::Unknown,
                allocation: Allocation::Unknown,
                delta: None,
                rtt_ms: None,
                other_address: None,
                allocation_samples: Vec::new(),
                port_range: None,
                delta_spread: None,
                reasons,
            };
        }
    };
    let behind_nat = base.mapped != o.local;
    let mapping = mapping(o, base, behind_nat, &mut reasons);
    let filtering = filtering(o, &mut reasons);
    let samples: Vec<(usize, u16, u16)> = o
        .allocation
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|(l, m)| (i, l, m)))
        .collect();
    let fit = fit_allocation(&samples);
    let (allocation, delta) = (fit.allocation, fit.delta);
    if allocation == Allocation::Unknown {
        reasons.insert(
            "allocation",
            format!(
                "only {} of {} allocation connections were answered",
                samples.len(),
                o.allocation.len()
            ),
        );
    }
    TcpReport {
        local: o.local,
        mapped: Some(base.mapped),
        behind_nat,
        mapping,
        filtering,
        allocation,
        delta,
        rtt_ms: o.rtt.map(|d| (d.as_secs_f64() * 1e5).round() / 100.0),
        other_address: base.other,
        allocation_samples: samples.iter().map(|s| s.2).collect(),
        port_range: port_range(allocation, &samples.iter().map(|s| s.2).collect::<Vec<_>>()),
        delta_spread: fit.spread,
        reasons,
    }
}

fn mapping(
    o: &TcpObservations,
    base: TcpAnswer,
    behind_nat: bool,
    reasons: &mut BTreeMap<&'static str, String>,
) -> Behavior {
    if base.other.is_none() {
        if !behind_nat {
            // No translation at all: nothing can depend on the destination.
            return Behavior::EndpointIndependent;
        }
        reasons.insert(
            "mapping",
            "the server has no RFC 5780 alternate address (no OTHER-ADDRESS), so the TCP mapping cannot be compared across destinations".into(),
        );
        return Behavior::Unknown;
    }
    let failed = |what: &str, r: &Option<Result<SocketAddr, String>>| match r {
        Some(Err(why)) => format!("the server's {what} did not answer over TCP: {why}"),
        _ => format!("the test toward the server's {what} was not made"),
    };
    let ok =
        |r: &Option<Result<SocketAddr, String>>| r.as_ref().and_then(|r| r.as_ref().ok().copied());
    match compare_mappings(base.mapped, ok(&o.alt_ip), ok(&o.alt_both), ok(&o.alt_port)) {
        Some(b) => b,
        None => {
            let why = match &o.alt_ip {
                Some(Ok(_)) => failed("alternate address and port", &o.alt_both),
                r => failed("alternate address", r),
            };
            reasons.insert("mapping", why);
            Behavior::Unknown
        }
    }
}

fn filtering(o: &TcpObservations, reasons: &mut BTreeMap<&'static str, String>) -> Behavior {
    let server = o.server;
    // Only a SYN promised from the changed endpoint counts: a server that connected back from
    // the primary endpoint would make every NAT look endpoint-independent.
    let both_changed = |a: SocketAddr| a.ip() != server.ip() && a.port() != server.port();
    let port_changed = |a: SocketAddr| a.ip() == server.ip() && a.port() != server.port();
    use SynTest::*;
    let why = match (&o.filter_both, &o.filter_port) {
        (
            Watched {
                origin,
                arrived: true,
            },
            _,
        ) if both_changed(*origin) => return Behavior::EndpointIndependent,
        (
            Watched {
                origin: ob,
                arrived: false,
            },
            Watched {
                origin: op,
                arrived,
            },
        ) if both_changed(*ob) && port_changed(*op) => {
            return if *arrived {
                Behavior::AddressDependent
            } else {
                Behavior::AddressAndPortDependent
            };
        }
        (Unknown(why), _) | (_, Unknown(why)) => why.clone(),
        _ => "the server promised its SYN from an unchanged address or port, so it is not the test that was asked for".to_string(),
    };
    reasons.insert("filtering", why);
    Behavior::Unknown
}

impl TcpReport {
    /// What this NAT means for TCP hole punching, in one or two plain sentences.
    pub fn verdict(&self) -> String {
        if self.mapped.is_none() {
            return "TCP to the server failed, so nothing is known about TCP through this NAT (see reasons).".into();
        }
        nat_verdict(
            Proto::Tcp,
            self.behind_nat,
            self.mapping,
            self.filtering,
            self.allocation,
            self.delta,
            self.delta_spread,
        ) + &block_sentence(self.allocation, self.port_range, &self.allocation_samples)
    }
}

#[cfg(test)]
mod tests;

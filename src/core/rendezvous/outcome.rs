//! What a connect came to, as both peers report it to the rendezvous server afterwards
//! ([`super::Msg::Outcome`], issue #15), and its reduction to the bounded label values the
//! server counts by: whatever a peer writes into a report, the server keeps at most one
//! counter per combination of known values, so its memory is bounded.

use super::NatInfo;
use crate::core::classify::{Allocation, Behavior};
use serde::{Deserialize, Serialize};

/// One peer's account of a connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    /// `success`, or why it failed: one of [`RESULTS`] (`crate::Error::outcome_reason`).
    pub result: String,
    /// The punch strategy (`direct`, `predict`, `sweep`, `mapped`), when one was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// The stream's final path (`direct`, `relay`), when a stream ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `udp` or `tcp`.
    pub transport: String,
    /// Our NAT and the peer's, as the quick classifications saw them.
    pub nat: NatInfo,
    /// The other peer's NAT, as its registration announced it.
    pub peer_nat: NatInfo,
    /// From the start of the connect until the stream's path was open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_connected_ms: Option<u64>,
}

/// The values of the `result` label: success and the failure reasons, in the order of the
/// exit codes they stand for; anything else a peer sends counts as `other`.
pub const RESULTS: &[&str] = &[
    "success",
    "server-unreachable",
    "local-setup",
    "peer-never-came",
    "session-taken",
    "auth-failed",
    "punch-failed",
    "stream-failed",
    "interrupted",
    "other",
];
const STRATEGIES: &[&str] = &["direct", "predict", "sweep", "mapped"];
const PATHS: &[&str] = &["direct", "relay"];
const TRANSPORTS: &[&str] = &["udp", "tcp"];

/// An outcome as counted: every value from a fixed set (`none` where the report had none,
/// `other` where it had something unknown), the two NAT classes in sorted order so that a
/// pair is one pair whichever side reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutcomeLabels {
    /// One of [`RESULTS`], `other` for anything else.
    pub result: &'static str,
    /// `direct`, `predict`, `sweep` or `mapped`; `none` when no strategy was chosen, `other`
    /// for anything else.
    pub strategy: &'static str,
    /// `direct` or `relay`; `none` when no stream ran, `other` for anything else.
    pub path: &'static str,
    /// `udp` or `tcp` (`other` otherwise).
    pub transport: &'static str,
    /// The smaller of the two peers' [`nat_class`]es, compared as strings.
    pub nat_a: &'static str,
    /// The larger of the two peers' [`nat_class`]es, so `(nat_a, nat_b)` is the same pair from
    /// either side.
    pub nat_b: &'static str,
}

impl Outcome {
    /// This report reduced to the labels the server counts it under: unknown values become
    /// `other`, absent ones `none`, and the two NATs their sorted [`nat_class`]es.
    pub fn labels(&self) -> OutcomeLabels {
        let (a, b) = (nat_class(&self.nat), nat_class(&self.peer_nat));
        OutcomeLabels {
            result: known(RESULTS, Some(&self.result)),
            strategy: known(STRATEGIES, self.strategy.as_deref()),
            path: known(PATHS, self.path.as_deref()),
            transport: known(TRANSPORTS, Some(&self.transport)),
            nat_a: a.min(b),
            nat_b: a.max(b),
        }
    }

    /// Short enough to fit a rendezvous message, whatever the peer put in.
    pub(super) fn valid(&self) -> bool {
        [
            Some(&self.result),
            self.strategy.as_ref(),
            self.path.as_ref(),
        ]
        .into_iter()
        .flatten()
        .chain([&self.transport])
        .all(|s| s.len() <= 32)
    }
}

fn known(set: &[&'static str], v: Option<&str>) -> &'static str {
    match v {
        None => "none",
        Some(v) => set.iter().find(|s| **s == v).copied().unwrap_or("other"),
    }
}

/// The class a NAT is counted under: the RFC 3489 name for a cone, and for a symmetric NAT
/// (mapping depends on the destination) how it allocates ports, which is what decides a
/// punch through it.
pub fn nat_class(n: &NatInfo) -> &'static str {
    match (n.mapping, n.filtering) {
        (Behavior::Unknown, _) => "unknown",
        (Behavior::EndpointIndependent, Behavior::EndpointIndependent) => "full-cone",
        (Behavior::EndpointIndependent, Behavior::AddressDependent) => "restricted-cone",
        (Behavior::EndpointIndependent, Behavior::AddressAndPortDependent) => {
            "port-restricted-cone"
        }
        (Behavior::EndpointIndependent, _) => "cone",
        _ => match n.allocation {
            Allocation::Sequential => "symmetric-sequential",
            Allocation::Preserving => "symmetric-preserving",
            Allocation::Random => "symmetric-random",
            _ => "symmetric",
        },
    }
}

/// A rendezvous server's counters (`punchraw serve --metrics`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RendezvousStats {
    /// Sessions a first peer created.
    pub sessions_created: u64,
    /// Sessions whose two peers were introduced to each other.
    pub introductions: u64,
    /// Lone peers told that nobody came ([`super::ErrorCode::PeerTimeout`]).
    pub peer_timeouts: u64,
    /// Outcomes counted, one per session (the first authenticated report).
    pub outcomes: std::collections::BTreeMap<OutcomeLabels, u64>,
    /// Outcome reports not counted: no such session (any more), a MAC that does not
    /// verify, a sender that is not a member, or the session's outcome already counted.
    pub outcomes_ignored: u64,
}

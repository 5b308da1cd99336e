//! What the classifier concludes, in the vocabulary of RFC 4787/5780 and, for comparison with
//! older tools, RFC 3489. Serialised names are a contract (`probe --json`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// RFC 4787 section 4.1 (mapping) and 5 (filtering) behaviours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behavior {
    /// Mapping: one external address and port for every destination (RFC 4787 section 4.1).
    /// Filtering: once the mapping exists, any remote endpoint may send to it.
    EndpointIndependent,
    /// Mapping: a new external port for each destination IP address. Filtering: only IPs the
    /// internal endpoint has sent to may send in, from any port.
    AddressDependent,
    /// Mapping: a new external port for each destination IP and port. Filtering: only the exact
    /// remote IPs and ports the internal endpoint has sent to may send in.
    AddressAndPortDependent,
    /// Not measured, or the tests disagreed; the report's `reasons` says why.
    Unknown,
}

/// How the NAT picks the external port of a new mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allocation {
    /// External port equals the local port (RFC 4787 section 4.2.1 port preservation).
    Preserving,
    /// Each new mapping takes the previous one's port plus a constant `delta`, once more for
    /// each flow of other hosts the NAT mapped in between (`delta_spread`).
    Sequential,
    /// No usable pattern: the external ports look drawn at random (RFC 4787 section 4.2.1 port
    /// randomisation), or come from a counter others move too fast to predict. A peer sweeps
    /// `search_range` instead of predicting.
    Random,
    /// Too few allocation samples were answered to tell; the report's `reasons` says why.
    Unknown,
}

/// RFC 3489 section 5 names, kept because many tools and people still speak them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LegacyType {
    /// No NAT (the mapped address is the local one) and no filtering of unsolicited traffic.
    OpenInternet,
    /// A NAT with endpoint-independent mapping and endpoint-independent filtering.
    FullCone,
    /// Endpoint-independent mapping with address-dependent filtering (also a NAT-less host that
    /// filters by address, RFC 3489's "symmetric UDP firewall").
    RestrictedCone,
    /// Endpoint-independent mapping with address-and-port-dependent filtering.
    PortRestrictedCone,
    /// Address-dependent or address-and-port-dependent mapping: each destination gets its own
    /// external port, whatever the filtering.
    Symmetric,
    /// The server never answered test I over UDP (or rejected it), so nothing could be measured;
    /// UDP is likely blocked.
    Blocked,
    /// Not an RFC 3489 type: mapping or filtering could not be measured (for example the
    /// server has no alternate address), so no honest legacy name exists.
    Unknown,
}

/// The binding lifetime as found by the search: alive after `min_s`, gone after `max_s`
/// (`None` when it outlived the search bound).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LifetimeRange {
    /// Longest idle time, in seconds, after which a binding was still alive (0 if none was).
    pub min_s: f64,
    /// Shortest idle time, in seconds, after which a binding was gone, longer than `min_s`; `None`
    /// when every binding outlived the search bound.
    pub max_s: Option<f64>,
}

/// What the UDP classifier concluded, in RFC 4787/5780 terms: the `udp` object of `probe --json`.
/// Field names and value shapes are a contract.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UdpReport {
    /// Local address of socket A, from which the mapping tests were sent.
    pub local: SocketAddr,
    /// Socket A's external address as the server saw it in test I (XOR-MAPPED-ADDRESS); `None`
    /// when the server did not answer.
    pub mapped: Option<SocketAddr>,
    /// Whether `mapped` differs from `local`: some NAT rewrote the address or port.
    pub behind_nat: bool,
    /// Mapping behaviour (RFC 4787 section 4.1), from RFC 5780 section 4.3 tests I-III.
    pub mapping: Behavior,
    /// Filtering behaviour (RFC 4787 section 5), from RFC 5780 section 4.4 tests II and III
    /// (answers requested from the alternate IP and port, and from the alternate port).
    pub filtering: Behavior,
    /// How the NAT picks the external port of each new mapping, from the allocation burst.
    pub allocation: Allocation,
    /// For `sequential` allocation: the counter's step, in ports per new mapping (negative when it
    /// counts down); `None` otherwise.
    pub delta: Option<i32>,
    /// Whether a datagram from another local socket to `mapped` was delivered back through the NAT
    /// (RFC 5780 section 4.5); `None` when not tested or not finished.
    pub hairpinning: Option<bool>,
    /// The RFC 3489 name of this mapping and filtering combination.
    pub legacy_type: LegacyType,
    /// Round-trip time to the server's primary endpoint (first answer without retransmission).
    pub rtt_ms: Option<f64>,
    /// The server's RFC 5780 alternate endpoint, when it has one.
    pub other_address: Option<SocketAddr>,
    /// External ports the allocation test saw, in the order the mappings were created.
    pub allocation_samples: Vec<u16>,
    /// Present only when the lifetime search ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<LifetimeRange>,
    /// For every field reported `unknown`/`null`: why.
    pub reasons: BTreeMap<&'static str, String>,
    /// `[lowest, highest]` external port the allocation test saw, for `random` and
    /// `sequential` allocation (`null` otherwise): the range a sweep has to cover.
    pub port_range: Option<[u16; 2]>,
    /// For `sequential` allocation, `[fewest, most]` flows of other hosts that took a port
    /// of the NAT's counter between two consecutive allocation samples (`[0, 0]`: the steps
    /// were exactly `delta`); `null` otherwise.
    pub delta_spread: Option<[u16; 2]>,
    /// For a port counter: new flows of other hosts it maps a second, from two late probes
    /// an interval apart; `null` when not measured.
    pub other_flows_per_s: Option<f64>,
    /// The ports a peer's sweep should search for this NAT's next mapping (`null`: all of
    /// 1024-65535, or no search needed): a port block, or where a busy counter moves.
    pub search_range: Option<[u16; 2]>,
    /// The step of a counter reported `random` because it is too busy: with
    /// `other_flows_per_s` it says how fast `search_range` moves (not in the JSON).
    #[serde(skip)]
    pub busy_step: Option<i32>,
}

impl UdpReport {
    /// Ports per second by which a busy counter's `search_range` moves; `None` unless the
    /// counter is reported `random` for its rate.
    pub fn range_drift(&self) -> Option<f64> {
        Some(self.other_flows_per_s? * f64::from(self.busy_step?))
    }

    /// What this NAT means for hole punching, in one or two plain sentences.
    pub fn verdict(&self) -> String {
        if self.legacy_type == LegacyType::Blocked {
            return "UDP to the server is blocked: no UDP hole punching is possible from here; a relay or TCP is needed.".into();
        }
        let mut v = nat_verdict(
            Proto::Udp,
            self.behind_nat,
            self.mapping,
            self.filtering,
            self.allocation,
            self.delta,
            self.delta_spread,
        );
        v.push_str(&block_sentence(
            self.allocation,
            self.port_range,
            &self.allocation_samples,
        ));
        v.push_str(&busy_sentence(
            self.allocation,
            self.other_flows_per_s,
            self.search_range,
        ));
        if self.hairpinning == Some(true) {
            v.push_str(
                " Hairpinning works, so peers behind the same NAT can use your mapped address.",
            );
        } else if self.hairpinning == Some(false) && self.behind_nat {
            v.push_str(" No hairpinning: peers behind the same NAT must use local addresses.");
        }
        v
    }
}

/// The range the allocation samples span, where the allocation leaves one to search.
pub(crate) fn port_range(allocation: Allocation, samples: &[u16]) -> Option<[u16; 2]> {
    if !matches!(allocation, Allocation::Random | Allocation::Sequential) {
        return None;
    }
    Some([*samples.iter().min()?, *samples.iter().max()?])
}

/// The sentence that names a port block, when random samples cluster in one. Five ports
/// drawn uniformly from the 64,512 non-privileged ones all land within 1/16 of that space
/// with probability about 5 x (1/16)^4 < 1e-4, so a span that narrow is a block the NAT
/// confines this host to (carrier-grade NATs assign per-subscriber blocks, RFC 6888
/// section 5), not chance.
pub(crate) fn block_sentence(
    allocation: Allocation,
    range: Option<[u16; 2]>,
    samples: &[u16],
) -> String {
    match range {
        Some([lo, hi]) if is_block(allocation, range, samples.len()) => {
            format!(
                " The random ports all fall within {lo}-{hi}: a port block like those carrier-grade NATs give each subscriber, so peers need to search only that range."
            )
        }
        _ => String::new(),
    }
}

/// The sentence for a port counter too busy to predict ([`super::busy`]).
pub(crate) fn busy_sentence(
    allocation: Allocation,
    per_s: Option<f64>,
    search: Option<[u16; 2]>,
) -> String {
    match (allocation, per_s) {
        (Allocation::Random, Some(r)) => {
            let range = search.map_or(String::new(), |[lo, hi]| {
                format!(", so peers search where it moves, {lo}-{hi}")
            });
            format!(
                " The ports come from a counter that other hosts move by about {r:.0} new flows a second: too fast to predict a port a few round trips ahead{range}."
            )
        }
        _ => String::new(),
    }
}

/// Whether random samples cluster in a block (see [`block_sentence`] for why 1/16).
fn is_block(allocation: Allocation, range: Option<[u16; 2]>, n: usize) -> bool {
    const PORT_SPACE: u32 = 65536 - 1024;
    matches!(range, Some([lo, hi])
        if allocation == Allocation::Random && n >= 4 && u32::from(hi - lo) < PORT_SPACE / 16)
}

/// Spans narrower than this are no port block: carrier-grade NATs hand out blocks of 64
/// ports and more (RFC 7422 section 5 and the blocks of deployed CGNs), and distinct random
/// draws from such a block rarely crowd so close.
const MIN_BLOCK_SPAN: u32 = 64;
/// How far past a too-dense cluster its NAT's next mappings are searched: as far as a
/// counter moves while the peer's sweep opens its mappings (256 by default), either way.
const DENSE_REACH: u32 = 256;

/// The ports a peer should search for this NAT's random mappings: `None` (the whole
/// non-privileged range) unless the samples cluster in a block. The `n` samples are taken
/// as uniform in the block; the block then extends past the extreme samples by about one
/// gap between neighbouring samples, `span / (n - 1)`, on each side. A cluster denser than
/// any block (distinct ports nearly side by side) is a port counter whose order was lost
/// (a CI run saw one at 5% loss, its counter read as random within 14 ports): its next
/// mappings lie beyond the cluster, so the search reaches `DENSE_REACH` ports past it.
pub fn search_range(allocation: Allocation, range: Option<[u16; 2]>, n: usize) -> Option<[u16; 2]> {
    if !is_block(allocation, range, n) {
        return None;
    }
    let [lo, hi] = range?;
    let span = u32::from(hi - lo) + 1;
    let pad = if span < MIN_BLOCK_SPAN {
        DENSE_REACH
    } else {
        u32::from(hi - lo) / (n as u32 - 1) + 1
    };
    let lo = u32::from(lo).saturating_sub(pad).max(1024);
    let hi = (u32::from(hi) + pad).min(65535);
    Some([lo as u16, hi as u16])
}

/// The reasons of a report whose first exchange with the server failed: every value that
/// needed it is unknown for the same reason.
pub(crate) fn unreachable_reasons(
    keys: &[&'static str],
    why: &str,
) -> BTreeMap<&'static str, String> {
    keys.iter().map(|&k| (k, why.to_string())).collect()
}

/// Which transport a verdict speaks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    Udp,
    Tcp,
}

/// The verdict on one transport's NAT behaviour, the same reasoning for UDP (RFC 4787) and
/// TCP (RFC 5382): what the mapping and filtering mean for hole punching.
pub(crate) fn nat_verdict(
    proto: Proto,
    behind_nat: bool,
    mapping: Behavior,
    filtering: Behavior,
    allocation: Allocation,
    delta: Option<i32>,
    spread: Option<[u16; 2]>,
) -> String {
    use Behavior::*;
    let (name, punch, sweep, open) = match proto {
        Proto::Udp => (
            "UDP",
            "punching",
            "a birthday sweep",
            "a simultaneous punch",
        ),
        Proto::Tcp => (
            "TCP",
            "TCP punching",
            "a sweep of SYNs",
            "a TCP simultaneous open",
        ),
    };
    match (behind_nat, mapping, filtering) {
        (false, _, EndpointIndependent) => {
            format!("No NAT and no {name} filtering: peers can reach you directly.")
        }
        (false, _, Unknown) => {
            format!("No NAT; whether unsolicited {name} is filtered is unknown (see reasons).")
        }
        (false, _, _) => {
            format!("No NAT, but unsolicited {name} is filtered: {open} gets through.")
        }
        (true, EndpointIndependent, EndpointIndependent) => format!(
            "Endpoint-independent {name} mapping and filtering (full cone): anyone who learns your mapped address can reach you while the mapping lasts; {punch} always works."
        ),
        (true, EndpointIndependent, _) => format!(
            "Endpoint-independent {name} mapping: the address the server saw is the one peers must use, so {punch} works with any peer whose NAT is not symmetric, and with a symmetric peer when its ports can be predicted or swept."
        ),
        (true, m @ (AddressDependent | AddressAndPortDependent), _) => {
            let base = if m == AddressDependent {
                "address-dependent mapping): each peer address gets its own external port."
            } else {
                "address-and-port-dependent mapping): every new destination gets its own external port."
            };
            let how = match allocation {
                Allocation::Sequential => format!(
                    " Ports are allocated sequentially (step {}{}), so peers can predict your next port: {punch} works by prediction.",
                    delta.unwrap_or(1),
                    disturbance(spread)
                ),
                Allocation::Preserving => {
                    format!(" Ports are preserved, so peers can predict them: {punch} works by prediction.")
                }
                Allocation::Random => format!(
                    " Ports are random: {punch} needs {sweep} against a peer with endpoint-independent mapping, and fails against another random symmetric NAT."
                ),
                Allocation::Unknown => String::new(),
            };
            format!("Symmetric for {name} ({base}{how}")
        }
        (true, Unknown, _) => {
            format!("Behind a NAT whose {name} mapping could not be measured (see reasons).")
        }
    }
}

/// How far others' flows moved a sequential counter between samples, for the verdict and
/// the table; empty for an undisturbed counter.
pub fn disturbance(spread: Option<[u16; 2]>) -> String {
    match spread {
        Some([_, most]) if most > 0 => {
            let flows = if most == 1 { "flow" } else { "flows" };
            format!(", disturbed by up to {most} other {flows} between samples")
        }
        _ => String::new(),
    }
}

pub(crate) fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

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
    /// The ports the late allocation probes got.
    fn late_ports(&self) -> Vec<u16> {
        (0..super::busy::LATE_SOCKETS)
            .filter_map(|i| self.answered(Kind::Late(i)).and_then(|a| a.1))
            .map(|m| m.port())
            .collect()
    }

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
                delta_spread: None,
                other_flows_per_s: None,
                search_range: None,
                busy_step: None,
                lifetime: None,
                reasons,
            };
        };
        let behind_nat = mapped != local;

        let mapping = self.mapping(mapped, other, behind_nat, &mut reasons);
        let filtering = self.filtering(other, &mut reasons);
        let (mut fit, samples) = self.allocation(&mut reasons);
        let busy = self.busy(&fit, &samples, &mut reasons);
        let mut seen = port_range(fit.allocation, &samples);
        let mut busy_step = None;
        let search = match (busy, fit.delta, seen) {
            (Some(b), Some(d), Some(range)) if b.too_busy => {
                busy_step = Some(d);
                fit.allocation = Allocation::Random;
                fit.delta = None;
                fit.spread = None;
                seen = Some(
                    self.late_ports()
                        .into_iter()
                        .fold(range, |[lo, hi], p| [lo.min(p), hi.max(p)]),
                );
                seen.map(|r| super::busy_range(r, d, b.per_s, super::BUSY_AHEAD))
            }
            _ => super::search_range(fit.allocation, seen, samples.len()),
        };
        let (allocation, delta) = (fit.allocation, fit.delta);
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
            port_range: seen,
            delta_spread: fit.spread,
            other_flows_per_s: busy.map(|b| b.per_s),
            search_range: search,
            busy_step,
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
        let mapped_by = |k| self.answered(k).and_then(|a| a.1);
        // A's tests disagreed, and the same tests from a fresh socket, spaced apart, kept one
        // port: the NAT is endpoint-independent and gave one of A's flows a port of its own
        // (see `Classifier::recheck_if_inconsistent`). The punch runs from yet another socket.
        let recheck: Vec<_> = (0..3).filter_map(|i| mapped_by(Kind::Recheck(i))).collect();
        if recheck.len() == 3 && recheck.iter().all(|&r| r == recheck[0]) {
            return Behavior::EndpointIndependent;
        }
        let m2 = mapped_by(Kind::MapAltIp);
        let m3 = mapped_by(Kind::MapAltBoth);
        match compare_mappings(mapped, m2, m3, mapped_by(Kind::MapAltPort)) {
            Some(b) => b,
            None => {
                let why = if m2.is_none() {
                    "the server's alternate address did not answer"
                } else {
                    "the server's alternate address and port did not answer"
                };
                reasons.insert("mapping", why.into());
                Behavior::Unknown
            }
        }
    }

    pub(super) fn allocation(
        &self,
        reasons: &mut BTreeMap<&'static str, String>,
    ) -> (AllocationFit, Vec<u16>) {
        let samples = self.alloc_samples();
        let ports: Vec<u16> = samples.iter().map(|s| s.2).collect();
        let fit = self.alloc_fit(&samples);
        if fit.allocation == Allocation::Unknown {
            reasons.insert(
                "allocation",
                format!(
                    "only {} of {} allocation probes were answered",
                    samples.len(),
                    self.cfg.alloc_sockets
                ),
            );
        }
        (fit, ports)
    }

    /// [`fit_allocation`] of the burst's `samples`, or, where they fit nothing, what they fit
    /// once loss before the NAT is allowed for ([`fit_despite_loss`]).
    pub(super) fn alloc_fit(&self, samples: &[(usize, u16, u16)]) -> AllocationFit {
        let fit = fit_allocation(samples);
        if fit.allocation != Allocation::Random {
            return fit;
        }
        let first_copy: Vec<usize> = (0..self.cfg.alloc_sockets)
            .filter(|&i| self.first_copy_answered(Kind::Alloc(i)))
            .collect();
        fit_despite_loss(samples, &first_copy).unwrap_or(fit)
    }

    /// Whether the test was answered for its first copy, so the NAT mapped it when that left.
    pub(super) fn first_copy_answered(&self, kind: Kind) -> bool {
        matches!(
            self.outcome(kind),
            Some(Outcome::Answered {
                first_copy: true,
                ..
            })
        )
    }

    /// `(probe index, local port, external port)` of every answered allocation probe.
    pub(super) fn alloc_samples(&self) -> Vec<(usize, u16, u16)> {
        (0..self.cfg.alloc_sockets)
            .filter_map(|i| match self.answered(Kind::Alloc(i)) {
                Some((_, Some(m), _)) => Some((i, self.locals[SOCK_ALLOC0 + i].port(), m.port())),
                _ => None,
            })
            .collect()
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

/// Most flows of other hosts between two consecutive allocation samples through which a
/// counter is still called `sequential`. It is what the punch can cover: between two counting
/// NATs its window tolerates a quarter of `--window` unforeseen flows on each side
/// (`punch::lockstep::tolerance`, 6 at the default window of 24). The probe's samples are
/// taken in one burst, within about an RTT, and the peer aims at our next port seconds later,
/// so others' flows between two samples are a lower bound on what lands before the window: a
/// NAT busier than this within a burst is swept, not predicted. Klinec and Matyas (2014) found
/// prediction through such a NAT feasible up to about 35 new flows per second, which is a few
/// flows per punch round trip, the same order.
///
/// The bound also keeps chance out: a uniform allocator gives `k` consecutive steps that all
/// fit one counter of step `|d| <= 100` with at most 6 extras with probability about
/// `200 * (7 / S)^k` over `S` ports: below 1e-13 for the 4 steps of 5 samples over the 64,512
/// non-privileged ports, and about 5e-6 within a carrier-grade NAT's 512-port block.
pub const MAX_EXTRA_FLOWS: u16 = 6;

/// Largest counter step believed; a larger constant step is as likely a coincidence.
const MAX_DELTA: i32 = 100;

/// What the allocation samples say, with the disturbance the counter model needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocationFit {
    /// The allocation pattern the samples fit.
    pub allocation: Allocation,
    /// For `sequential`: the counter's step, in ports per new mapping (negative for a counter that
    /// counts down); `None` otherwise.
    pub delta: Option<i32>,
    /// For `sequential`: the fewest and most flows of other hosts that took a port between
    /// two of our consecutive samples, `[0, 0]` for an undisturbed counter; `None` otherwise.
    pub spread: Option<[u16; 2]>,
}

/// Port allocation from `(probe index, local port, external port)` samples taken in the
/// order the mappings were created.
pub fn classify_allocation(samples: &[(usize, u16, u16)]) -> (Allocation, Option<i32>) {
    let f = fit_allocation(samples);
    (f.allocation, f.delta)
}

/// [`classify_allocation`] with the disturbance it saw. A counter shared by every flow of
/// the NAT advances by `delta` for each new mapping, ours and other hosts' alike, so the step
/// between our samples `i0 < i1` is `delta * (i1 - i0 + extra)` with `extra >= 0` flows of
/// others in between: others take ports and never give them back, so a step can only grow.
/// Steps are taken modulo the 16-bit port space, so a counter that wraps still steps.
pub fn fit_allocation(samples: &[(usize, u16, u16)]) -> AllocationFit {
    let fit = |allocation, delta, spread| AllocationFit {
        allocation,
        delta,
        spread,
    };
    // Samples must come in probe order; anything else says nothing (and must not panic).
    if samples.len() < 2 || samples.windows(2).any(|w| w[1].0 <= w[0].0) {
        return fit(Allocation::Unknown, None, None);
    }
    // All kept, or all but one of four or more: a NAT that preserves ports must pick another
    // when the local port's external twin is taken (by a flow of another host, or by one of
    // this probe's own mappings toward another destination), and from consecutive local
    // ports the kept ones look like a counter of step 1 as well.
    let kept = samples.iter().filter(|&&(_, l, m)| l == m).count();
    if kept == samples.len() || (samples.len() >= 4 && kept + 1 == samples.len()) {
        return fit(Allocation::Preserving, None, None);
    }
    let steps = steps_of(samples);
    if let Some((d, extras)) = counter_fit(&steps) {
        return fit(Allocation::Sequential, Some(d), Some(spread(&extras)));
    }
    // Samples that are no counter's at all: a local port the OS handed out again while the
    // NAT still held its mapping from an earlier run toward the same server (30 s unreplied,
    // 2 min replied on Linux) comes back with that old port. One is left out of five or six
    // samples, two of seven or more, so that at least four samples (three steps), or five
    // when two are left out, still fit one counter and chance stays as unlikely as above.
    //
    // Three of seven are left out only under stricter terms, since three stale samples are
    // what repeated runs through a narrow local port range give (lab: two runs in ten, 400
    // ports): the other four must be an undisturbed counter (every step exactly `delta`),
    // each left-out port must lie behind it, as a mapping made before it does, and the three
    // must be no counter of their own. A NAT that counts per destination (RFC 6056
    // algorithms 3 and 4) gives exactly that to the probes toward the server's other
    // endpoint (every second one), and toward a new peer it is as good as random. A uniform
    // allocator passes with probability about 35 * 200 / S^3 / 8 over `S` ports, below 1e-5
    // even within a 512-port block.
    let n = samples.len();
    let singles = (0..n).filter(|_| n >= 5).map(|a| vec![a]);
    let pairs = (0..n)
        .flat_map(|a| (a + 1..n).map(move |b| vec![a, b]))
        .filter(|_| n >= 7);
    let triples = (0..n)
        .flat_map(|a| (a + 1..n).flat_map(move |b| (b + 1..n).map(move |c| vec![a, b, c])))
        .filter(|_| n >= 7);
    for skip in singles.chain(pairs).chain(triples) {
        let rest: Vec<(usize, u16, u16)> = samples
            .iter()
            .enumerate()
            .filter(|(i, _)| !skip.contains(i))
            // A stale mapping took no port of the counter: the probes after it are one flow
            // earlier in the counter's sequence.
            .map(|(i, &(idx, l, m))| (idx - skip.iter().filter(|&&x| x < i).count(), l, m))
            .collect();
        let Some((d, extras)) = counter_fit(&steps_of(&rest)) else {
            continue;
        };
        if skip.len() < 3 || stale_behind(samples, &skip, rest[0].2, d, &extras) {
            return fit(Allocation::Sequential, Some(d), Some(spread(&extras)));
        }
    }
    // Three steps in four equal the modal step; the fourth may be anything, a wrap of the
    // NAT's port pool or a burst of others' flows (left out of the spread). With two samples
    // one exact small step is as far as the evidence goes.
    let mut best = (0, 0usize);
    for &(diff, gap) in &steps {
        let s = if diff % gap == 0 { diff / gap } else { 0 };
        let n = steps
            .iter()
            .filter(|&&(x, g)| x % g == 0 && x / g == s)
            .count();
        if n > best.1 {
            best = (s, n);
        }
    }
    let (d, n) = best;
    if d != 0 && d.abs() <= MAX_DELTA && n * 4 >= steps.len() * 3 {
        let extras: Vec<u16> = steps.iter().filter_map(|&s| extra(s, d)).collect();
        return fit(Allocation::Sequential, Some(d), Some(spread(&extras)));
    }
    fit(Allocation::Random, None, None)
}

/// The stricter terms on which [`fit_allocation`] leaves three samples (`skip`) out: the
/// rest, from `first` on, is a counter of step `d` that needed no `extras`, every left-out
/// port lies behind `first`, and the left-out ones are no counter of their own.
fn stale_behind(
    samples: &[(usize, u16, u16)],
    skip: &[usize],
    first: u16,
    d: i32,
    extras: &[u16],
) -> bool {
    let behind = |&i: &usize| i32::from(first.wrapping_sub(samples[i].2) as i16) * d > 0;
    // One flow apart at least: others' flows are the extras.
    let left_out: Vec<(usize, u16, u16)> = skip
        .iter()
        .enumerate()
        .map(|(k, &i)| (k, samples[i].1, samples[i].2))
        .collect();
    extras.iter().all(|&e| e == 0)
        && skip.iter().all(behind)
        && counter_fit(&steps_of(&left_out)).is_none()
}

/// [`fit_allocation`] for samples taken through loss on the way to the NAT: a probe whose
/// first copy was lost there was mapped when a later copy got through, after probes sent
/// later, so it takes a port out of order (the lab's NATs drop in their forward chain, before
/// translation; so does a congested Wi-Fi link before any NAT). Only the probes answered for
/// their first copy (`first_copy`, probe indices) are known to have been mapped in probe
/// order; each probe between two of them may have taken its port there or later, so the
/// step between them spans from one flow (only the later sample's own) to the probe gap plus
/// the usual extras. The others must lie ahead of the counter where their first copy left
/// it. At least four such samples (three steps), as where [`fit_allocation`] leaves samples
/// out, keep chance as unlikely as [`MAX_EXTRA_FLOWS`] says.
fn fit_despite_loss(samples: &[(usize, u16, u16)], first_copy: &[usize]) -> Option<AllocationFit> {
    let (sure, late): (Vec<_>, Vec<_>) = samples.iter().partition(|s| first_copy.contains(&s.0));
    if sure.len() < 4 {
        return None;
    }
    let sure: Vec<(usize, u16, u16)> = sure.into_iter().copied().collect();
    let (d, extras) = counter_fit_with(&steps_of(&sure), extra_despite_loss)?;
    let ahead = late.iter().all(|&&(i, _, port)| {
        sure.iter().rev().find(|s| s.0 < i).is_none_or(|before| {
            let diff = i32::from(port.wrapping_sub(before.2) as i16);
            diff % d == 0 && diff / d >= 1
        })
    });
    ahead.then(|| AllocationFit {
        allocation: Allocation::Sequential,
        delta: Some(d),
        spread: Some(spread(&extras)),
    })
}

/// [`extra`] where each of the `gap - 1` probes in between may have taken its port later:
/// the step covers at least the sample's own flow, and its extras are what the whole gap
/// does not explain.
fn extra_despite_loss((diff, gap): (i32, i32), d: i32) -> Option<u16> {
    if diff % d != 0 || diff / d < 1 {
        return None;
    }
    u16::try_from((diff / d - gap).max(0))
        .ok()
        .filter(|&e| e <= MAX_EXTRA_FLOWS)
}

/// (port difference, probe-index gap) per consecutive pair of samples.
fn steps_of(samples: &[(usize, u16, u16)]) -> Vec<(i32, i32)> {
    samples
        .windows(2)
        .map(|w| {
            let diff = i32::from(w[1].2.wrapping_sub(w[0].2) as i16);
            (diff, i32::try_from(w[1].0 - w[0].0).unwrap_or(i32::MAX))
        })
        .collect()
}

/// Every step fits one `delta` with at most MAX_EXTRA_FLOWS extras. Of the `delta`s that fit,
/// the one that needs the fewest extras in all is the counter's: an undisturbed step shows it
/// exactly, and others' flows are the exception at a rate the punch can predict through. A
/// step smaller than `delta` fits no counter of that `delta`, since a step only grows. One
/// step alone could be chance (see MAX_EXTRA_FLOWS).
fn counter_fit(steps: &[(i32, i32)]) -> Option<(i32, Vec<u16>)> {
    counter_fit_with(steps, extra)
}

/// [`counter_fit`] with the extras of each step counted by `extra`.
fn counter_fit_with(
    steps: &[(i32, i32)],
    extra: fn((i32, i32), i32) -> Option<u16>,
) -> Option<(i32, Vec<u16>)> {
    if steps.len() < 2 {
        return None;
    }
    let mut found: Option<(u32, i32, Vec<u16>)> = None;
    for d in (1..=MAX_DELTA).flat_map(|d| [d, -d]) {
        let extras: Vec<u16> = steps.iter().filter_map(|&s| extra(s, d)).collect();
        if extras.len() < steps.len() {
            continue;
        }
        let total: u32 = extras.iter().map(|&e| u32::from(e)).sum();
        if found.as_ref().is_none_or(|f| total < f.0) {
            found = Some((total, d, extras));
        }
    }
    found.map(|(_, d, extras)| (d, extras))
}

/// Flows of others in a step of `diff` ports over `gap` of our probes, for a counter of step
/// `d`: `None` when the step is no such counter's within [`MAX_EXTRA_FLOWS`].
fn extra((diff, gap): (i32, i32), d: i32) -> Option<u16> {
    if diff % d != 0 {
        return None;
    }
    let e = diff / d - gap;
    u16::try_from(e).ok().filter(|&e| e <= MAX_EXTRA_FLOWS)
}

fn spread(extras: &[u16]) -> [u16; 2] {
    [
        extras.iter().copied().min().unwrap_or(0),
        extras.iter().copied().max().unwrap_or(0),
    ]
}

/// RFC 5780 section 4.3's mapping verdict from one local endpoint's mappings toward the
/// server's primary endpoint (`base`), the alternate IP (test II), the alternate IP and port
/// (test III) and the primary IP with the alternate port (`alt_port`, a second port test).
/// `None` when the tests made cannot decide (test II unanswered, or test II differed and
/// neither test III nor `alt_port` answered).
///
/// Test III asks whether the port matters once the address has changed; `alt_port` asks the
/// same toward the primary IP. When test III is silent (a NAT that maps by a hash of the
/// addresses drops a flow whose tuple an older flow holds: seen once in the lab, against
/// coturn) a kept port there still decides: address-dependent.
///
/// A random allocator can draw the same port for two mappings by chance (1 in the size of
/// its range, a CGN's port block being small), so a single equality is not trusted where a
/// second test can contradict it: a port change alone that moved the mapping (test III
/// against II, or `alt_port` against `base`) is port dependence, whatever else matched.
pub(crate) fn compare_mappings(
    base: SocketAddr,
    alt_ip: Option<SocketAddr>,
    alt_both: Option<SocketAddr>,
    alt_port: Option<SocketAddr>,
) -> Option<Behavior> {
    let m2 = alt_ip?;
    if alt_both.is_some_and(|m3| m3 != m2) || alt_port.is_some_and(|m4| m4 != base) {
        return Some(Behavior::AddressAndPortDependent);
    }
    if m2 == base {
        return Some(Behavior::EndpointIndependent);
    }
    alt_both.or(alt_port).map(|_| Behavior::AddressDependent)
}

/// Whether socket A's mapping tests (test I `base`, II, III and the optional second port
/// test) disagree in a way no consistent NAT explains: neither one port throughout
/// (endpoint-independent), nor tests II and III sharing a port other than the base while the
/// port test kept the base (address-dependent), nor a new port every time (address- and
/// port-dependent).
pub(super) fn mappings_inconsistent(
    base: SocketAddr,
    m2: SocketAddr,
    m3: SocketAddr,
    m4: Option<SocketAddr>,
) -> bool {
    let all: Vec<SocketAddr> = [Some(base), Some(m2), Some(m3), m4]
        .into_iter()
        .flatten()
        .collect();
    let mut distinct = all.clone();
    distinct.sort();
    distinct.dedup();
    let independent = distinct.len() == 1;
    let address = m2 == m3 && m2 != base && m4.is_none_or(|m| m == base);
    let address_and_port = distinct.len() == all.len();
    !(independent || address || address_and_port)
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

/// Whether `port`, the mapping of a new flow through a NAT whose counter gave `samples`
/// (in probe order) with step `delta`, comes after them on the counter: ahead of all but
/// about a third of them, three of seven (which may themselves be stale), by at most `ahead`
/// flows. A mapping that is not is stale: the OS reused a local port whose old mapping toward the same server
/// the NAT still holds, so the port is an old one and a peer predicting from it misses.
pub fn counter_ahead(port: u16, samples: &[u16], delta: i32, ahead: i32) -> bool {
    if delta == 0 || samples.is_empty() {
        return true;
    }
    // A sample's own port: the OS gave us a local port of the classification itself, whose
    // mapping the NAT still holds.
    if samples.contains(&port) {
        return false;
    }
    let behind = samples
        .iter()
        .filter(|&&s| {
            let flows = i32::from(port.wrapping_sub(s) as i16) / delta;
            !(1..=ahead).contains(&flows)
        })
        .count();
    // About as many stale samples as the allocation fit leaves out (one in five, three in
    // seven).
    let n = samples.len();
    let stale = (n.saturating_sub(1) / 3).max(if n >= 7 { 3 } else { 0 });
    behind <= stale && behind < n
}

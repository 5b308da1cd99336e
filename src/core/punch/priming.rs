//! Low-TTL priming of TCP punch attempts: the first SYN of an attempt goes out with a TTL
//! large enough to pass our own NAT (which then holds the mapping) and too small to reach the
//! peer's NAT, which might answer it with RST or ICMP and so wipe that mapping again (RFC
//! 5382 REQ-4 asks NATs to stay silent; many do not). This module decides, from what each hop
//! answered (`crate::os::ttl` measures it) and from `--prime-ttl`; it measures nothing.

use crate::core::classify::Behavior;
use crate::core::rendezvous::NatInfo;
use std::net::Ipv4Addr;
use std::time::Duration;

/// `--prime-ttl`: low-TTL priming of TCP attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimeTtl {
    /// Measured toward the peer at the start of the punch.
    Auto,
    /// No priming: every SYN goes out with the normal TTL.
    Off,
    /// First SYNs with this TTL, without measuring.
    Fixed(u8),
}

/// What to do about priming before anything is measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Decided: the TTL (or none) and the line that says why.
    Decided(Option<u32>, String),
    /// Measure the hops toward the peer (waiting [`wait_for`] for answers), then [`decide`].
    Measure,
}

/// `--prime-ttl` resolved for a NAT of ours that behaves as `mine`.
pub fn choose(choice: PrimeTtl, mine: &NatInfo) -> Choice {
    match choice {
        PrimeTtl::Off => Choice::Decided(None, "low-TTL priming off (--prime-ttl off)".into()),
        PrimeTtl::Fixed(t) => Choice::Decided(
            Some(u32::from(t)),
            format!("low-TTL priming: first SYNs with TTL {t} (--prime-ttl)"),
        ),
        // The measurement is one new UDP flow through our NAT; a NAT that allocates per
        // flow would move its counter and spoil the prediction already sent to the peer.
        PrimeTtl::Auto if mine.mapping != Behavior::EndpointIndependent => Choice::Decided(
            None,
            "low-TTL priming off: measuring the hops would move our NAT's port counter (set --prime-ttl N to force it)".into(),
        ),
        PrimeTtl::Auto => Choice::Measure,
    }
}

/// Hops probed at most.
pub const MAX_HOPS: u8 = 8;
/// Time for the answers, at most. A hop that stays silent (a NAT dropping the probe) never
/// answers however long we wait, so the wait scales with the estimated round trip to the
/// peer (`crate::core::rendezvous::peer_rtt`): [`wait_for`].
const MAX_WAIT: Duration = Duration::from_millis(400);
const MIN_WAIT: Duration = Duration::from_millis(60);

/// Waiting for ICMP answers: one round trip to the peer plus a margin, within bounds. Every
/// hop that matters lies before the peer, so its answer is due within that; what stays
/// silent longer is a hop that never answers (the peer's NAT dropping the probe), and
/// [`settled`] ends the wait early when the answers already decide.
pub fn wait_for(peer_rtt: Duration) -> Duration {
    (peer_rtt + Duration::from_millis(40)).clamp(MIN_WAIT, MAX_WAIT)
}

/// [`wait_for`], bounded by when our first SYN must be out (but 60 ms at least), `to_start`
/// being the time left until the agreed start of the punch. The peer's first SYN leaves
/// at the start whatever we measure and reaches our NAT one one-way delay to the peer later
/// (half `peer_rtt`), where it must find the mapping our first SYN opened; half of that
/// delay is kept as margin for the estimate. A SYN of ours sent up to then cannot reach the
/// peer's NAT before the peer's own SYN opened it, the very thing priming guards against.
/// What has not answered by then is taken as silent: without priming, unless the answers so
/// far settle it.
pub fn wait_within(peer_rtt: Duration, to_start: Duration) -> Duration {
    wait_for(peer_rtt).min((to_start + peer_rtt / 4).max(MIN_WAIT))
}

/// Whether what the silent hops may still answer can no longer spoil [`decide`]'s answer:
/// a router past our NATs (a public address) answered, with only our routers or silent hops
/// before it -- the TTL that dies there passes our NATs whatever those say later -- or the
/// peer was reached with nothing silent before it (no TTL fits). Hops beyond never count.
pub fn settled(hops: &[Hop]) -> bool {
    match hops.iter().position(|h| !ours(h)) {
        Some(i) => matches!(hops[i], Hop::Router(_)) || !hops[..i].contains(&Hop::Silent),
        None => false,
    }
}

/// A hop that may be on our side of the path: one of our routers (see [`inside`]), or one
/// that stayed silent.
fn ours(h: &Hop) -> bool {
    *h == Hop::Silent || matches!(h, Hop::Router(a) if inside(*a))
}

/// Traceroute's customary first port; any closed port would do.
pub const PROBE_PORT: u16 = 33434;

/// What one TTL of the measurement met: a UDP datagram toward the peer's address (port
/// [`PROBE_PORT`] + TTL - 1) whose TTL runs out at that hop, or does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Time exceeded, from this router.
    Router(Ipv4Addr),
    /// The datagram got to the peer's address (ICMP unreachable from it, or time exceeded
    /// from it: see [`Hop::from_icmp`]).
    Reached,
    /// No answer.
    Silent,
}

impl Hop {
    /// What an ICMP error of `icmp_type` from `from` says about the probe toward `peer`.
    /// Time exceeded (type 11, RFC 792) comes from a router on the way -- unless it comes
    /// from the peer's own address: a NAT that forwards unsolicited datagrams inward (a
    /// "DMZ host", a port forward) sends it when the TTL runs out there, and a SYN dying at
    /// the peer's NAT is what priming must avoid. Anything else (port unreachable, and
    /// whatever a router in between may send) is taken as the peer's: no TTL past it.
    pub fn from_icmp(icmp_type: u8, from: Option<Ipv4Addr>, peer: Ipv4Addr) -> Hop {
        match (icmp_type, from) {
            (11, Some(a)) if a != peer => Hop::Router(a),
            _ => Hop::Reached,
        }
    }
}

/// The priming decision and the hops it rests on, from [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priming {
    /// TTL of each attempt's first SYN: that of the first router past our NATs; `None` for no
    /// priming (no such router answered before the peer's NAT or the silence).
    pub ttl: Option<u32>,
    /// What each TTL met; index 0 is TTL 1.
    pub hops: Vec<Hop>,
    /// Hops up to and including our outermost NAT (at most, where some stayed silent).
    pub own: usize,
    /// Hops to the peer's NAT, when it was within reach of the probe.
    pub far: Option<usize>,
}

impl Priming {
    /// The line that tells the user what priming does and why.
    pub fn explain(&self) -> String {
        let silent: Vec<String> = self
            .hops
            .iter()
            .take(self.own)
            .enumerate()
            .filter(|(_, h)| **h == Hop::Silent)
            .map(|(i, _)| (i + 1).to_string())
            .collect();
        let ours = if silent.is_empty() || self.ttl.is_none() {
            format!("our NAT is {} hop(s) away", self.own)
        } else {
            format!(
                "our NAT within {} hop(s), where hop {} stayed silent (rate-limited ICMP?)",
                self.own,
                silent.join(", ")
            )
        };
        match (self.ttl, self.far) {
            (Some(t), Some(f)) => format!(
                "low-TTL priming: first SYNs with TTL {t} ({ours}, the peer's NAT {f})"
            ),
            (Some(t), None) => format!(
                "low-TTL priming: first SYNs with TTL {t} ({ours}, the peer's NAT more than {MAX_HOPS})"
            ),
            (None, _) if self.own == 0 => "low-TTL priming off: no NAT of ours answered with time-exceeded, so no TTL is known to open it".to_string(),
            // The wait ends when our first SYN must leave; a router past a long access link
            // may answer only after that, and a NAT that drops the probe never does.
            (None, Some(f)) if self.hops.get(f - 1) == Some(&Hop::Silent) => format!(
                "low-TTL priming off: our NAT is {} hop(s) away and hop {f} did not answer before our first SYN had to leave (the peer's NAT dropping the probe, or a router too far to hear from in time); first SYNs go out with the normal TTL",
                self.own
            ),
            (None, f) => format!(
                "low-TTL priming off: no TTL passes our NAT ({} hop(s) away) without reaching the peer's ({} hop(s)); first SYNs go out with the normal TTL",
                self.own,
                f.map_or_else(|| "?".to_string(), |f| f.to_string())
            ),
        }
    }
}

/// The decision from what each TTL met (index 0 is TTL 1): the TTL of the first router
/// past our NATs (one answering from a public address), when only our routers or silent
/// hops come before it. A silent hop there is one of ours that keeps its time-exceeded to
/// itself -- most often one that rate-limits ICMP (Linux by default: about one a second per
/// destination after a short burst; the port-mapping requests before a punch, which a router
/// without PCP answers with port-unreachable, spend some of it). The probes go to the
/// peer's address, so whatever lies before an answering router is on the way to it, not
/// the peer. The router that answered is no NAT of the peer's either
/// (a NAT takes datagrams for its own address in; it does not forward them), so a SYN
/// dying there has passed our NATs without reaching the peer's. The one way this misleads:
/// a NAT of ours answering from its public address after a silent hop; the first SYN then
/// dies in it and opens nothing (Linux drops it before translating), costing that SYN only,
/// as no priming would have cost the punch.
pub fn decide(hops: &[Hop]) -> Priming {
    let past = hops.iter().position(|h| !ours(h));
    let ttl = match past {
        Some(i) if i > 0 && matches!(hops[i], Hop::Router(_)) => Some(i as u32 + 1),
        _ => None,
    };
    let own = match ttl {
        Some(t) => t as usize - 1,
        None => hops
            .iter()
            .take_while(|h| matches!(h, Hop::Router(a) if inside(*a)))
            .count(),
    };
    let far = hops
        .iter()
        .enumerate()
        // With a TTL, the peer lies past the router that gives it; without, the first hop
        // we cannot see past is as far as the explanation may claim.
        .skip(if ttl.is_some() { past.unwrap_or(0) } else { 0 })
        .find(|(_, h)| !matches!(h, Hop::Router(_)))
        .map(|(i, _)| i + 1);
    Priming {
        ttl,
        hops: hops.to_vec(),
        own,
        far,
    }
}

/// Addresses that are not globally routed, so a router answering from one is inside a NAT
/// (RFC 1918, RFC 6598 shared address space, link-local).
fn inside(a: Ipv4Addr) -> bool {
    a.is_private() || a.is_link_local() || (a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: [u8; 4]) -> Hop {
        Hop::Router(Ipv4Addr::from(a))
    }

    #[test]
    fn only_auto_behind_an_endpoint_independent_nat_measures() {
        let mut nat = NatInfo::unknown();
        assert!(matches!(
            choose(PrimeTtl::Auto, &nat),
            Choice::Decided(None, ref why) if why.contains("port counter")
        ));
        nat.mapping = Behavior::EndpointIndependent;
        assert_eq!(choose(PrimeTtl::Auto, &nat), Choice::Measure);
        assert!(matches!(
            choose(PrimeTtl::Fixed(3), &nat),
            Choice::Decided(Some(3), _)
        ));
        assert!(matches!(
            choose(PrimeTtl::Off, &nat),
            Choice::Decided(None, _)
        ));
    }

    #[test]
    fn the_wait_ends_before_the_peers_first_syn_reaches_our_nat() {
        let rtt = Duration::from_millis(160);
        assert_eq!(wait_for(rtt), Duration::from_millis(200));
        // 70 ms to the start, and 40 ms of the peer's SYN's way to our NAT.
        let left = Duration::from_millis(70);
        assert_eq!(wait_within(rtt, left), Duration::from_millis(110));
        assert_eq!(wait_within(rtt, Duration::from_secs(1)), wait_for(rtt));
        // The start passed already: the hops nearest us still get their moment.
        assert_eq!(
            wait_within(Duration::from_millis(40), Duration::ZERO),
            MIN_WAIT
        );
    }

    #[test]
    fn adjacent_nats_leave_no_priming_ttl() {
        // Our NAT answers TTL 1 from its LAN side; TTL 2 is already at the peer's NAT.
        let p = decide(&[r([10, 0, 1, 1]), Hop::Reached, Hop::Reached]);
        assert_eq!((p.own, p.far, p.ttl), (1, Some(2), None));
        assert!(p.explain().contains("off"));
        assert!(p
            .explain()
            .contains("without reaching the peer's (2 hop(s))"));
        // Silent past our NAT: not claimed as the peer's NAT (a router behind a long
        // uplink answers after the first SYN must leave).
        let p = decide(&[r([10, 0, 1, 1]), Hop::Silent, Hop::Silent]);
        assert_eq!((p.own, p.far, p.ttl), (1, Some(2), None));
        let why = p.explain();
        assert!(
            why.contains("hop 2 did not answer") && !why.contains("the peer's (2"),
            "{why}"
        );
    }

    #[test]
    fn a_router_between_gives_the_ttl_past_our_nat() {
        let p = decide(&[
            r([192, 168, 1, 1]),
            r([100, 64, 0, 1]),
            r([203, 0, 113, 77]),
            r([198, 51, 100, 1]),
            Hop::Silent,
        ]);
        assert_eq!((p.own, p.far, p.ttl), (2, Some(5), Some(3)));
        let p = decide(&[r([10, 0, 0, 1]), r([203, 0, 113, 1]), r([203, 0, 113, 2])]);
        assert_eq!(p.ttl, Some(2));
        assert_eq!(p.far, None);
    }

    #[test]
    fn the_wait_follows_the_round_trip_within_bounds() {
        assert_eq!(wait_for(Duration::ZERO), MIN_WAIT);
        assert_eq!(
            wait_for(Duration::from_millis(60)),
            Duration::from_millis(100)
        );
        assert_eq!(wait_for(Duration::from_secs(1)), MAX_WAIT);
    }

    /// The wait ends once the answers decide: our routers, then one hop past them.
    #[test]
    fn the_first_hop_past_our_nats_settles_the_decision() {
        let (own, cgn, public) = (r([10, 0, 1, 1]), r([100, 64, 0, 1]), r([203, 0, 113, 9]));
        let s = Hop::Silent;
        for (hops, done) in [
            (vec![own, public, s, s], true),
            (vec![own, cgn, public, s], true),
            (vec![own, Hop::Reached, s], true),
            // The first hop already public: no NAT of ours answers, nothing to prime.
            (vec![public, s], true),
            // A silent hop of ours (rate-limited ICMP) before the first public router.
            (vec![own, s, public], true),
            (vec![s, public, s], true),
            (vec![s, own, public], true),
            (vec![own, cgn, s], false),
            // The silent hop might still turn out a public router, which a TTL would fit.
            (vec![own, s, Hop::Reached], false),
            (vec![own, own], false),
        ] {
            assert_eq!(settled(&hops), done, "{hops:?}");
            if done {
                // Whatever the silent hops say later (ours before the hop that answered,
                // the peer's past it), the decision stays.
                let answered = hops.iter().rposition(|h| *h != s).unwrap_or(0);
                let mut later = hops.clone();
                for (i, h) in later.iter_mut().enumerate().filter(|(_, h)| **h == s) {
                    *h = if i < answered { own } else { Hop::Reached };
                }
                assert_eq!(decide(&later).ttl, decide(&hops).ttl, "{hops:?}");
            }
        }
    }

    /// Our NAT rate-limits its ICMP (seen in the lab: repeated punches, each after
    /// port-mapping requests the NAT answered with port-unreachable, left TTL 1 silent in
    /// one run of eight; without priming, two NATs that answer SYNs with RST then reset each
    /// other's SYNs for the whole punch). The first public router past it still gives the
    /// TTL: everything before it is on our side of the path.
    #[test]
    fn a_silent_nat_of_ours_before_a_public_router_still_gives_the_ttl() {
        let public = r([203, 0, 113, 21]);
        let p = decide(&[Hop::Silent, public, Hop::Silent, Hop::Silent]);
        assert_eq!((p.own, p.far, p.ttl), (1, Some(3), Some(2)), "{p:?}");
        let why = p.explain();
        assert!(
            why.contains("TTL 2") && why.contains("hop 1 stayed silent"),
            "{why}"
        );
        let p = decide(&[r([10, 0, 1, 1]), Hop::Silent, public, Hop::Reached]);
        assert_eq!((p.own, p.far, p.ttl), (2, Some(4), Some(3)), "{p:?}");
        // Silence alone, or the peer right behind it, still gives none.
        assert_eq!(decide(&[Hop::Silent, Hop::Silent]).ttl, None);
        assert_eq!(decide(&[Hop::Silent, Hop::Reached]).ttl, None);
        assert_eq!(
            decide(&[r([10, 0, 1, 1]), Hop::Silent, Hop::Silent]).ttl,
            None
        );
        // Without a TTL, the peer is claimed no further than the first hop not seen past.
        let p = decide(&[r([10, 0, 1, 1]), Hop::Silent, Hop::Reached]);
        assert_eq!((p.own, p.far, p.ttl), (1, Some(2), None), "{p:?}");
    }

    #[test]
    fn time_exceeded_from_the_peers_address_is_the_peer() {
        let peer = Ipv4Addr::new(203, 0, 113, 20);
        let router = Ipv4Addr::new(203, 0, 113, 21);
        assert_eq!(Hop::from_icmp(11, Some(router), peer), Hop::Router(router));
        assert_eq!(Hop::from_icmp(11, Some(peer), peer), Hop::Reached);
        assert_eq!(Hop::from_icmp(3, Some(peer), peer), Hop::Reached);
        assert_eq!(Hop::from_icmp(11, None, peer), Hop::Reached);
        // Our NAT, then the peer's NAT forwarding the probe inward until its TTL ran out:
        // no TTL dies before the peer's NAT.
        let own = Hop::from_icmp(11, Some(Ipv4Addr::new(10, 0, 1, 1)), peer);
        let far = Hop::from_icmp(11, Some(peer), peer);
        assert_eq!(decide(&[own, far, Hop::Silent]).ttl, None);
    }

    #[test]
    fn no_nat_of_ours_answering_means_no_priming() {
        assert_eq!(decide(&[]).ttl, None);
        assert_eq!(decide(&[Hop::Silent, Hop::Reached]).ttl, None);
        assert_eq!(decide(&[r([203, 0, 113, 1]), Hop::Reached]).ttl, None);
    }
}

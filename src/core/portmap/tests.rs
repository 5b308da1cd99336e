use super::client::{Event, PortMapConfig, PortMapper};
use super::natpmp::{self, ResultCode as PmpResult};
use super::pcp::{self, ResultCode as PcpResult};
use super::{Protocol, Via};
use crate::core::Machine;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const WAN: Ipv4Addr = Ipv4Addr::new(11, 22, 33, 44);

fn gw() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(GW), 5351)
}

fn cfg(pcp: bool, nat_pmp: bool) -> PortMapConfig {
    PortMapConfig {
        pcp,
        nat_pmp,
        lifetime: Duration::from_secs(120),
        seed: 7,
        ..PortMapConfig::new(IpAddr::V4(GW), IpAddr::V4(ME), Protocol::Udp, 40000)
    }
}

/// Runs timeouts for `d` from `now`, returning every datagram sent (with its time).
fn run_until(m: &mut PortMapper, now: &mut Instant, d: Duration) -> Vec<(Instant, Vec<u8>)> {
    let until = *now + d;
    let mut sent = Vec::new();
    loop {
        while let Some(t) = m.poll_transmit() {
            assert_eq!(t.dst, gw());
            sent.push((*now, t.payload));
        }
        match m.poll_timeout() {
            Some(t) if t <= until => {
                *now = t.max(*now);
                m.handle_timeout(*now);
            }
            _ => break,
        }
    }
    *now = until.max(*now);
    sent
}

fn events(m: &mut PortMapper) -> Vec<Event> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

fn pcp_answer(req: &[u8], result: PcpResult, lifetime_s: u32, epoch: u32, port: u16) -> Vec<u8> {
    let r = pcp::Request::decode(req).expect("a PCP request");
    let pcp::Opcode::Map(mut map) = r.op else {
        panic!("not MAP")
    };
    map.external_port = port;
    map.external_ip = IpAddr::V4(WAN);
    pcp::Response {
        version: 2,
        result,
        lifetime_s,
        epoch,
        op: Some(pcp::Opcode::Map(map)),
        opcode: 1,
    }
    .encode()
}

fn pmp_map_answer(req: &[u8], result: PmpResult, port: u16, epoch: u32) -> Vec<u8> {
    let Some(natpmp::Request::Map {
        protocol,
        internal_port,
        lifetime_s,
        ..
    }) = natpmp::Request::decode(req)
    else {
        panic!("not a NAT-PMP map request: {req:?}")
    };
    natpmp::Response::Map {
        protocol,
        result,
        epoch,
        internal_port,
        external_port: if lifetime_s == 0 { 0 } else { port },
        lifetime_s,
    }
    .encode()
}

#[test]
fn natpmp_wire_format() {
    let req = natpmp::Request::Map {
        protocol: Protocol::Tcp,
        internal_port: 0x1234,
        suggested_external: 0x5678,
        lifetime_s: 3600,
    };
    let b = req.encode();
    assert_eq!(b, [0, 2, 0, 0, 0x12, 0x34, 0x56, 0x78, 0, 0, 0x0e, 0x10]);
    assert_eq!(natpmp::Request::decode(&b), Some(req));
    assert_eq!(natpmp::Request::ExternalAddress.encode(), [0, 0]);
    // RFC 6886 section 3.2: the external address answer.
    let a = [0, 128, 0, 0, 0, 0, 1, 0, 11, 22, 33, 44];
    assert_eq!(
        natpmp::Response::decode(&a),
        Some(natpmp::Response::ExternalAddress {
            result: PmpResult::Success,
            epoch: 256,
            external: WAN
        })
    );
    // Section 3.5: an 8-byte "unsupported version" answer to a request it cannot read.
    let e = [0, 129, 0, 1, 0, 0, 0, 9];
    assert_eq!(
        natpmp::Response::decode(&e),
        Some(natpmp::Response::Error {
            opcode: 1,
            result: PmpResult::UnsupportedVersion,
            epoch: 9
        })
    );
    // A success too short for its fields, a request, another version: not an answer.
    assert_eq!(natpmp::Response::decode(&[0, 129, 0, 0, 0, 0, 0, 9]), None);
    assert_eq!(natpmp::Response::decode(&[0, 1, 0, 0, 0, 0, 0, 9]), None);
    assert_eq!(natpmp::Response::decode(&[2, 129, 0, 0]), None);
}

#[test]
fn pcp_wire_format() {
    let req = pcp::Request {
        lifetime_s: 7200,
        client: IpAddr::V4(ME),
        op: pcp::Opcode::Map(pcp::Map {
            nonce: [1; 12],
            protocol: Protocol::Udp,
            internal_port: 40000,
            external_port: 40001,
            external_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }),
    };
    let b = req.encode();
    assert_eq!(b.len(), 60);
    assert_eq!(&b[..4], &[2, 1, 0, 0]);
    assert_eq!(&b[4..8], &7200u32.to_be_bytes());
    // Section 5: the IPv4-mapped client address.
    assert_eq!(
        &b[8..24],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 1, 2]
    );
    assert_eq!(b[36], 17);
    assert_eq!(&b[56..60], &[0, 0, 0, 0]);
    assert_eq!(&b[52..56], &[0, 0, 0xff, 0xff]);
    assert_eq!(pcp::Request::decode(&b), Some(req.clone()));
    let ans = pcp_answer(&b, PcpResult::Success, 600, 5, 40001);
    let r = pcp::Response::decode(&ans).unwrap();
    assert_eq!((r.version, r.lifetime_s, r.epoch), (2, 600, 5));
    assert_eq!(ans[1], 0x81);
    // Not a multiple of 4, too short, a request, or NAT-PMP: not a PCP answer.
    assert_eq!(pcp::Response::decode(&ans[..59]), None);
    assert_eq!(pcp::Response::decode(&ans[..20]), None);
    assert_eq!(pcp::Response::decode(&b), None);
    assert_eq!(pcp::Response::decode(&[0, 129, 0, 1, 0, 0, 0, 9]), None);
    // An error that echoes only the header decodes, without its opcode's fields.
    let mut hdr = ans[..24].to_vec();
    hdr[3] = 8;
    let r = pcp::Response::decode(&hdr).unwrap();
    assert_eq!((r.result, r.op), (PcpResult::NoResources, None));
}

#[test]
fn pcp_maps_renews_at_half_lifetime_and_deletes() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = PortMapper::new(cfg(true, true), t0);
    let sent = run_until(&mut m, &mut now, Duration::ZERO);
    assert_eq!(sent.len(), 1);
    let req = pcp::Request::decode(&sent[0].1).unwrap();
    assert_eq!(req.lifetime_s, 120);
    let pcp::Opcode::Map(first) = req.op.clone() else {
        panic!()
    };
    assert_eq!(first.external_port, 40000, "suggests the internal port");
    now += Duration::from_millis(3);
    m.handle_input(
        now,
        0,
        gw(),
        &pcp_answer(&sent[0].1, PcpResult::Success, 120, 1000, 50123),
    );
    let ev = events(&mut m);
    let [Event::Mapped(mapping)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(mapping.via, Via::Pcp);
    assert_eq!(mapping.external, SocketAddr::new(IpAddr::V4(WAN), 50123));
    assert_eq!(m.poll_timeout(), Some(now + Duration::from_secs(60)));
    // The renewal: same nonce, suggests the port we hold.
    let renew = run_until(&mut m, &mut now, Duration::from_secs(60));
    assert_eq!(renew.len(), 1);
    let r = pcp::Request::decode(&renew[0].1).unwrap();
    let pcp::Opcode::Map(again) = r.op else {
        panic!()
    };
    assert_eq!((again.nonce, again.external_port), (first.nonce, 50123));
    m.handle_input(
        now,
        0,
        gw(),
        &pcp_answer(&renew[0].1, PcpResult::Success, 120, 1060, 50123),
    );
    assert!(matches!(&events(&mut m)[..], [Event::Mapped(_)]));
    // Delete: lifetime 0, same nonce.
    m.delete(now);
    let del = run_until(&mut m, &mut now, Duration::ZERO);
    let r = pcp::Request::decode(&del[0].1).unwrap();
    assert_eq!(r.lifetime_s, 0);
    let pcp::Opcode::Map(d) = r.op else { panic!() };
    assert_eq!(d.nonce, first.nonce);
    m.handle_input(
        now,
        0,
        gw(),
        &pcp_answer(&del[0].1, PcpResult::Success, 0, 1060, 0),
    );
    assert_eq!(events(&mut m), [Event::Deleted { confirmed: true }]);
    assert!(m.is_done());
}

#[test]
fn natpmp_gateway_answering_pcp_with_unsupported_version_gets_natpmp() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = PortMapper::new(cfg(true, true), t0);
    run_until(&mut m, &mut now, Duration::ZERO);
    // RFC 6887 section 9 / RFC 6886 section 3.5: a NAT-PMP-only gateway's answer.
    m.handle_input(now, 0, gw(), &[0, 129, 0, 1, 0, 0, 0, 50]);
    let sent = run_until(&mut m, &mut now, Duration::ZERO);
    assert_eq!(sent[0].1, [0, 0], "asks for the external address");
    let ext = natpmp::Response::ExternalAddress {
        result: PmpResult::Success,
        epoch: 50,
        external: WAN,
    };
    m.handle_input(now, 0, gw(), &ext.encode());
    let sent = run_until(&mut m, &mut now, Duration::ZERO);
    m.handle_input(
        now,
        0,
        gw(),
        &pmp_map_answer(&sent[0].1, PmpResult::Success, 40000, 50),
    );
    let ev = events(&mut m);
    let [Event::Mapped(mapping)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(mapping.via, Via::NatPmp);
    assert_eq!(mapping.external, SocketAddr::new(IpAddr::V4(WAN), 40000));
    assert!(m.reasons().pcp.as_deref().unwrap().contains("NAT-PMP"));
    m.delete(now);
    let del = run_until(&mut m, &mut now, Duration::ZERO);
    assert_eq!(
        natpmp::Request::decode(&del[0].1),
        Some(natpmp::Request::Map {
            protocol: Protocol::Udp,
            internal_port: 40000,
            suggested_external: 0,
            lifetime_s: 0
        })
    );
}

#[test]
fn silent_gateway_retransmits_at_250ms_doubling_then_gives_up() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = PortMapper::new(cfg(true, true), t0);
    let sent = run_until(&mut m, &mut now, Duration::from_secs(5));
    let at: Vec<u64> = sent
        .iter()
        .map(|(t, _)| (*t - t0).as_millis() as u64)
        .collect();
    assert_eq!(at, [0, 250, 750, 1000, 1250, 1750]);
    assert!(sent[..3].iter().all(|(_, p)| p[0] == 2));
    assert!(sent[3..].iter().all(|(_, p)| p[..] == [0, 0]));
    let ev = events(&mut m);
    let [Event::Unavailable(r)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert!(r.pcp.as_deref().unwrap().starts_with("no PCP answer"));
    assert!(r
        .nat_pmp
        .as_deref()
        .unwrap()
        .starts_with("no NAT-PMP answer"));
    assert!(m.is_done());
}

#[test]
fn refusals_by_both_are_reasons() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = PortMapper::new(cfg(true, true), t0);
    let sent = run_until(&mut m, &mut now, Duration::ZERO);
    m.handle_input(
        now,
        0,
        gw(),
        &pcp_answer(&sent[0].1, PcpResult::NotAuthorized, 30, 1, 0),
    );
    let sent = run_until(&mut m, &mut now, Duration::ZERO);
    let refuse = natpmp::Response::ExternalAddress {
        result: PmpResult::NotAuthorized,
        epoch: 1,
        external: Ipv4Addr::UNSPECIFIED,
    };
    assert_eq!(sent[0].1, [0, 0]);
    m.handle_input(now, 0, gw(), &refuse.encode());
    let ev = events(&mut m);
    let [Event::Unavailable(r)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert!(r.pcp.as_deref().unwrap().contains("NOT_AUTHORIZED"));
    assert!(r.nat_pmp.as_deref().unwrap().contains("not authorized"));
}

#[test]
fn strangers_and_other_nonces_are_ignored() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = PortMapper::new(cfg(true, false), t0);
    let sent = run_until(&mut m, &mut now, Duration::ZERO);
    let good = pcp_answer(&sent[0].1, PcpResult::Success, 120, 1, 40000);
    let stranger = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 9)), 5351);
    m.handle_input(now, 0, stranger, &good);
    let mut other = good.clone();
    other[24] ^= 1;
    m.handle_input(now, 0, gw(), &other);
    assert!(events(&mut m).is_empty());
    m.handle_input(now, 0, gw(), &good);
    assert!(matches!(&events(&mut m)[..], [Event::Mapped(_)]));
}

#[test]
fn announce_with_earlier_epoch_remaps_after_jitter() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = PortMapper::new(cfg(true, false), t0);
    let sent = run_until(&mut m, &mut now, Duration::ZERO);
    m.handle_input(
        now,
        0,
        gw(),
        &pcp_answer(&sent[0].1, PcpResult::Success, 120, 5000, 40000),
    );
    events(&mut m);
    now += Duration::from_secs(10);
    // An ANNOUNCE with an epoch that went on with time: no restart.
    let announce = |epoch| {
        pcp::Response {
            version: 2,
            result: PcpResult::Success,
            lifetime_s: 0,
            epoch,
            op: Some(pcp::Opcode::Announce),
            opcode: 0,
        }
        .encode()
    };
    m.handle_input(now, 0, gw(), &announce(5010));
    assert!(events(&mut m).is_empty());
    now += Duration::from_secs(5);
    m.handle_input(now, 0, gw(), &announce(3));
    assert_eq!(events(&mut m), [Event::RouterRestarted { via: Via::Pcp }]);
    let due = m.poll_timeout().unwrap();
    assert!(due <= now + Duration::from_secs(5));
    let wait = due - now;
    let sent = run_until(&mut m, &mut now, wait);
    let r = pcp::Request::decode(&sent[0].1).unwrap();
    let pcp::Opcode::Map(map) = r.op else {
        panic!()
    };
    assert_eq!(map.external_port, 40000, "asks for the port it held");
    m.handle_input(
        now,
        0,
        gw(),
        &pcp_answer(&sent[0].1, PcpResult::Success, 120, 5, 40000),
    );
    assert!(matches!(&events(&mut m)[..], [Event::Mapped(_)]));
}

#[test]
fn natpmp_renewal_showing_a_restart_says_so_and_keeps_the_mapping() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = PortMapper::new(cfg(false, true), t0);
    let sent = run_until(&mut m, &mut now, Duration::ZERO);
    assert_eq!(sent[0].1, [0, 0]);
    let ext = |epoch| natpmp::Response::ExternalAddress {
        result: PmpResult::Success,
        epoch,
        external: WAN,
    };
    m.handle_input(now, 0, gw(), &ext(100).encode());
    let sent = run_until(&mut m, &mut now, Duration::ZERO);
    m.handle_input(
        now,
        0,
        gw(),
        &pmp_map_answer(&sent[0].1, PmpResult::Success, 40000, 100),
    );
    events(&mut m);
    let renew = run_until(&mut m, &mut now, Duration::from_secs(60));
    // Epoch 30 after 60 s of ours, from 100: the router restarted (RFC 6886 section 3.6).
    m.handle_input(
        now,
        0,
        gw(),
        &pmp_map_answer(&renew[0].1, PmpResult::Success, 40000, 30),
    );
    let ev = events(&mut m);
    assert!(
        matches!(
            &ev[..],
            [
                Event::RouterRestarted { via: Via::NatPmp },
                Event::Mapped(_)
            ]
        ),
        "{ev:?}"
    );
}

#[test]
fn unanswered_renewal_loses_the_mapping_at_expiry() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = PortMapper::new(cfg(true, false), t0);
    let sent = run_until(&mut m, &mut now, Duration::ZERO);
    m.handle_input(
        now,
        0,
        gw(),
        &pcp_answer(&sent[0].1, PcpResult::Success, 120, 1, 40000),
    );
    events(&mut m);
    let renew = run_until(&mut m, &mut now, Duration::from_secs(200));
    assert!(renew.len() > 3);
    let ev = events(&mut m);
    assert!(matches!(&ev[..], [Event::Lost { .. }]), "{ev:?}");
    assert_eq!(now - t0, Duration::from_secs(200));
    assert!(m.is_done());
}

#[test]
fn delete_before_the_grant_is_heard_still_deletes() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = PortMapper::new(cfg(true, true), t0);
    run_until(&mut m, &mut now, Duration::ZERO);
    m.delete(now);
    let del = run_until(&mut m, &mut now, Duration::ZERO);
    assert_eq!(pcp::Request::decode(&del[0].1).unwrap().lifetime_s, 0);
    run_until(&mut m, &mut now, Duration::from_secs(2));
    assert_eq!(events(&mut m), [Event::Deleted { confirmed: false }]);
}

proptest! {
    #[test]
    fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = natpmp::Response::decode(&b);
        let _ = natpmp::Request::decode(&b);
        let _ = pcp::Response::decode(&b);
        let _ = pcp::Request::decode(&b);
    }

    #[test]
    fn machine_never_panics(
        inputs in proptest::collection::vec(
            (0u16..3000, proptest::collection::vec(any::<u8>(), 0..80), any::<bool>()), 0..20),
        del in any::<bool>(),
    ) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut m = PortMapper::new(cfg(true, true), t0);
        for (adv, data, pcp_like) in inputs {
            now += Duration::from_millis(u64::from(adv));
            m.handle_timeout(now);
            let mut data = data;
            if pcp_like && data.len() >= 2 {
                data[0] = 2;
                data[1] |= 0x80;
                data.truncate(data.len() / 4 * 4);
            } else if !data.is_empty() {
                data[0] = 0;
            }
            m.handle_input(now, 0, gw(), &data);
            while m.poll_transmit().is_some() {}
            while m.poll_event().is_some() {}
        }
        if del { m.delete(now); }
        let end = now + Duration::from_secs(20_000);
        while let Some(t) = m.poll_timeout() {
            prop_assert!(t <= end);
            now = t.max(now);
            m.handle_timeout(now);
            while m.poll_transmit().is_some() {}
            while m.poll_event().is_some() {}
        }
    }
}

mod upnp_plan {
    use super::super::upnp::{UpnpAsk, UpnpPlan, UpnpRefusal};

    #[test]
    fn first_asks_for_the_internal_port() {
        let mut p = UpnpPlan::new(40000, 60, true, 1);
        assert_eq!(
            p.first(),
            Some(UpnpAsk {
                any: false,
                external_port: 40000,
                lease_s: 60
            })
        );
        // Taken: a v2 router picks another port.
        assert!(
            p.next(&UpnpRefusal::from_code(718, "Conflict"))
                .unwrap()
                .any
        );
    }

    #[test]
    fn wildcard_refused_retries_with_the_internal_port() {
        let mut p = UpnpPlan::new(40000, 60, false, 1);
        p.first();
        let a = p.next(&UpnpRefusal::from_code(
            716,
            "WildCardNotPermittedInExtPort",
        ));
        assert_eq!(a.unwrap().external_port, 40000);
    }

    #[test]
    fn only_permanent_leases_asks_with_lease_zero_once() {
        let mut p = UpnpPlan::new(40000, 60, false, 1);
        p.first();
        let a = p
            .next(&UpnpRefusal::from_code(725, "OnlyPermanentLeasesSupported"))
            .unwrap();
        assert_eq!((a.external_port, a.lease_s), (40000, 0));
        assert!(p.permanent());
        assert_eq!(p.next(&UpnpRefusal::OnlyPermanentLeases), None);
    }

    #[test]
    fn low_port_refused_or_conflict_asks_for_a_random_high_port() {
        let mut p = UpnpPlan::new(80, 60, false, 1);
        p.first();
        let a = p
            .next(&UpnpRefusal::from_code(606, "Action not authorized"))
            .unwrap();
        assert!(a.external_port >= 1024);
        let b = p
            .next(&UpnpRefusal::from_code(718, "ConflictInMappingEntry"))
            .unwrap();
        assert!(b.external_port >= 1024);
        // A high port refused as not authorized: the router means it.
        assert_eq!(p.next(&UpnpRefusal::NotAuthorized), None);
    }

    #[test]
    fn no_v2_falls_back_to_add_port_mapping_and_gives_up_in_bounded_tries() {
        let mut p = UpnpPlan::new(40000, 60, true, 1);
        p.first();
        assert!(p.next(&UpnpRefusal::PortInUse).unwrap().any);
        let a = p
            .next(&UpnpRefusal::from_code(401, "Invalid Action"))
            .unwrap();
        assert!(!a.any);
        let mut n = 0;
        while p.next(&UpnpRefusal::PortInUse).is_some() {
            n += 1;
        }
        assert!(n < 6);
        assert_eq!(p.next(&UpnpRefusal::SamePortRequired), None);
    }
}

/// A router with nothing on port 5351 answers with ICMP port unreachable: the first refusal
/// settles PCP and NAT-PMP (one port for both) at once, with no retransmission and no
/// "no answer" after waiting out the schedule.
#[test]
fn icmp_refusal_settles_both_at_once_with_the_reason() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = PortMapper::new(cfg(true, true), t0);
    let sent = run_until(&mut m, &mut now, Duration::from_millis(10));
    assert_eq!(sent.len(), 1);
    m.handle_refused();
    let later = run_until(&mut m, &mut now, Duration::from_secs(5));
    assert!(later.is_empty(), "{later:?}");
    let ev = events(&mut m);
    let [Event::Unavailable(r)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(
        r.pcp.as_deref(),
        Some("refused: the router answered with ICMP port unreachable (no PCP server)")
    );
    assert_eq!(
        r.nat_pmp.as_deref(),
        Some("refused: the router answered with ICMP port unreachable (no NAT-PMP server)")
    );
    assert!(m.is_done());

    // NAT-PMP alone (probe's check), refused on its external-address request.
    let mut m = PortMapper::new(cfg(false, true), t0);
    let mut now = t0;
    run_until(&mut m, &mut now, Duration::ZERO);
    m.handle_refused();
    let ev = events(&mut m);
    let [Event::Unavailable(r)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(r.pcp, None);
    assert!(r.nat_pmp.as_deref().unwrap().contains("no NAT-PMP server"));
}

/// A refusal during a renewal does not drop the mapping (the router's daemon may be
/// restarting); one during the delete ends it unconfirmed.
#[test]
fn icmp_refusal_of_a_renewal_keeps_trying_and_of_a_delete_ends_it() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = PortMapper::new(cfg(true, false), t0);
    let sent = run_until(&mut m, &mut now, Duration::ZERO);
    m.handle_input(
        now,
        0,
        gw(),
        &pcp_answer(&sent[0].1, PcpResult::Success, 120, 1, 40000),
    );
    events(&mut m);
    let renew = run_until(&mut m, &mut now, Duration::from_secs(60));
    assert_eq!(renew.len(), 1);
    m.handle_refused();
    assert!(events(&mut m).is_empty());
    assert!(m.mapping().is_some());
    assert!(!run_until(&mut m, &mut now, Duration::from_secs(2)).is_empty());
    m.delete(now);
    run_until(&mut m, &mut now, Duration::ZERO);
    m.handle_refused();
    assert_eq!(events(&mut m), [Event::Deleted { confirmed: false }]);
    assert!(m.is_done());
}

/// The answer to a renewal that arrives after the delete was sent is not the delete's
/// confirmation (that one has lifetime 0): taking it so let punchraw exit before the router
/// had removed the mapping.
#[test]
fn a_late_renewal_answer_does_not_confirm_the_delete() {
    for pcp in [true, false] {
        let t0 = Instant::now();
        let mut now = t0;
        let mut m = PortMapper::new(cfg(pcp, !pcp), t0);
        let mut sent = run_until(&mut m, &mut now, Duration::ZERO);
        if !pcp {
            let ext = natpmp::Response::ExternalAddress {
                result: PmpResult::Success,
                epoch: 1,
                external: WAN,
            };
            m.handle_input(now, 0, gw(), &ext.encode());
            sent = run_until(&mut m, &mut now, Duration::ZERO);
        }
        let answer = |req: &[u8]| {
            if pcp {
                let lifetime = pcp::Request::decode(req).unwrap().lifetime_s;
                pcp_answer(req, PcpResult::Success, lifetime, 1, 40000)
            } else {
                pmp_map_answer(req, PmpResult::Success, 40000, 1)
            }
        };
        m.handle_input(now, 0, gw(), &answer(&sent[0].1));
        events(&mut m);
        let renew = run_until(&mut m, &mut now, Duration::from_secs(60));
        assert_eq!(renew.len(), 1, "pcp {pcp}");
        m.delete(now);
        let del = run_until(&mut m, &mut now, Duration::ZERO);
        m.handle_input(now, 0, gw(), &answer(&renew[0].1));
        assert!(events(&mut m).is_empty(), "pcp {pcp}");
        m.handle_input(now, 0, gw(), &answer(&del[0].1));
        let ev = events(&mut m);
        assert_eq!(ev, [Event::Deleted { confirmed: true }], "pcp {pcp}");
    }
}

//! Feeds arbitrary datagrams to the PCP / NAT-PMP client machine (`core::portmap::client`)
//! as if from the gateway or a stranger, interleaved with its timeouts over advancing
//! virtual time, with a delete at a point the input picks. A datagram is also fed with its
//! first bytes set to a PCP answer's (version 2, R bit) or to NAT-PMP's (version 0), so the
//! fuzzer reaches both decoders' success paths quickly.
//!
//! Checks: no panic; every transmit goes to the gateway's port 5351 and decodes as one of
//! our requests for our internal port; after the delete the machine ends within its budget
//! and is inert.
//!
//! Input: one configuration byte (bit 0: PCP on, bit 1: NAT-PMP on, bit 2: TCP), then
//! records `[source: u8][advance: u8][len: u8][len bytes]`; source bit 0 set is a stranger,
//! bits 1-2 pick raw / PCP-shaped / NAT-PMP-shaped, bit 7 deletes before this record.

#![no_main]

use libfuzzer_sys::fuzz_target;
use punchraw::core::portmap::client::{PortMapConfig, PortMapper};
use punchraw::core::portmap::{natpmp, pcp, Protocol};
use punchraw::core::Machine;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Some((&conf, mut rest)) = data.split_first() else {
        return;
    };
    let gw = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1));
    let protocol = if conf & 4 != 0 {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    let cfg = PortMapConfig {
        pcp: conf & 1 != 0,
        nat_pmp: conf & 2 != 0,
        lifetime: Duration::from_secs(60),
        seed: u64::from(conf),
        ..PortMapConfig::new(gw, IpAddr::V4(Ipv4Addr::new(10, 0, 1, 2)), protocol, 4000)
    };
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = PortMapper::new(cfg, t0);
    let gateway = SocketAddr::new(gw, 5351);
    let stranger = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 9)), 5351);
    let mut deleted_at = None;
    let turn = |m: &mut PortMapper, now: Instant| {
        if m.poll_timeout().is_some_and(|t| t <= now) {
            m.handle_timeout(now);
        }
        while let Some(t) = m.poll_transmit() {
            assert_eq!(t.dst, gateway);
            let ours = match pcp::Request::decode(&t.payload) {
                Some(pcp::Request {
                    op: pcp::Opcode::Map(map),
                    ..
                }) => map.internal_port == 4000 && map.protocol == protocol,
                Some(_) => false,
                None => match natpmp::Request::decode(&t.payload) {
                    Some(natpmp::Request::ExternalAddress) => true,
                    Some(natpmp::Request::Map {
                        protocol: p,
                        internal_port,
                        ..
                    }) => internal_port == 4000 && p == protocol,
                    None => false,
                },
            };
            assert!(ours, "not our request: {:?}", t.payload);
        }
        while m.poll_event().is_some() {}
    };
    while rest.len() >= 3 {
        let (src, advance) = (rest[0], rest[1]);
        let len = usize::from(rest[2]).min(rest.len() - 3);
        let mut datagram = rest[3..3 + len].to_vec();
        rest = &rest[3 + len..];
        now += Duration::from_millis(u64::from(advance) * 20);
        turn(&mut m, now);
        if src & 0x80 != 0 && deleted_at.is_none() {
            m.delete(now);
            deleted_at = Some(now);
            turn(&mut m, now);
        }
        match (src >> 1) & 3 {
            1 if datagram.len() >= 2 => {
                datagram[0] = 2;
                datagram[1] |= 0x80;
            }
            2 if !datagram.is_empty() => datagram[0] = 0,
            _ => {}
        }
        let from = if src & 1 != 0 { stranger } else { gateway };
        m.handle_input(now, 0, from, &datagram);
        turn(&mut m, now);
    }
    if deleted_at.is_none() {
        m.delete(now);
        deleted_at = Some(now);
    }
    let end = deleted_at.unwrap() + Duration::from_secs(2);
    loop {
        turn(&mut m, now);
        match m.poll_timeout() {
            Some(t) => {
                assert!(t <= end, "still busy after the delete's budget");
                now = t.max(now);
            }
            None => break,
        }
    }
    assert!(m.is_done());
});

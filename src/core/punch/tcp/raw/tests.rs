use super::*;
use crate::core::classify::{Allocation, Behavior};
use crate::core::punch::tcp::{counter_flows, first_syn_copies, plan, two_sided_or_none, Plan};
use crate::core::rendezvous::NatInfo;
use crate::sim::tcp_wire::{KernelHost, RawHost, WireWorld, WIRE_HOSTS, WIRE_PUBLIC};

const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const P: u16 = 40000;

fn config(plan: Plan, peer_port: u16) -> RawConfig {
    RawConfig {
        punch: TcpPunchConfig {
            plan,
            peer_ip: IpAddr::V4(PEER),
            peer_port,
            local_port: P,
            window: 4,
            rate: 500,
            sweep_sockets: 8,
            budget: Duration::from_secs(10),
            peer_ports: [1024, 65535],
            seed: 7,
        },
        local_ip: ME,
        rtt: Duration::from_millis(100),
        prime_ttl: None,
        ttl: 64,
        mss: 1460,
        wscale: 7,
        window: 64240,
        first_copies: 1,
        syn_data: Vec::new(),
    }
}

fn drain(e: &mut RawPunch) -> Vec<Crafted> {
    std::iter::from_fn(|| e.poll_transmit()).collect()
}

fn peer(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(PEER, port)
}

fn tcp(src: SocketAddrV4, segment: Segment, seq: u32, ack: u32, options: TcpOptions) -> Seen {
    Seen::Tcp {
        src: SocketAddr::V4(src),
        dst: SocketAddr::V4(SocketAddrV4::new(ME, P)),
        segment,
        seq,
        ack,
        ttl: 50,
        window: 29200,
        options,
    }
}

/// Runs `e` from `t0` for `d`, returning every segment with its send time.
fn run(e: &mut RawPunch, t0: Instant, d: Duration) -> Vec<(Duration, Crafted)> {
    let mut now = t0;
    let mut out = Vec::new();
    while now < t0 + d {
        e.handle_timeout(now);
        out.extend(drain(e).into_iter().map(|c| (now - t0, c)));
        let next = e.poll_timeout().expect("a timeout while the budget lasts");
        assert!(
            next > now || e.planner().expired(now),
            "busy loop at {now:?}"
        );
        if next <= now {
            break;
        }
        now = next;
    }
    out
}

#[test]
fn every_syn_has_one_isn_and_one_set_of_options_from_the_punch_port() {
    let t0 = Instant::now();
    let mut e = RawPunch::new(config(Plan::Window { delta: 1 }, 20000), t0).expect("raw");
    let sent = run(&mut e, t0, Duration::from_secs(3));
    let targets: HashSet<u16> = sent.iter().map(|(_, c)| c.dst.port()).collect();
    assert_eq!(targets.len(), 4 + 1 + 1, "the window, ahead and behind");
    for (_, c) in &sent {
        assert_eq!(
            (c.src, c.flags, c.seq, c.ack),
            (e.local(), Flags::Syn, e.isn(), 0)
        );
        let o = c.options;
        assert_eq!(
            (o.mss, o.wscale, o.sack_permitted),
            (Some(1460), Some(7), true)
        );
        assert_eq!(o.timestamps.map(|t| t.1), Some(0));
        assert_eq!(c.window, 64240);
    }
    // The timestamp clock runs at 1 kHz from one base, in even values (os::tcp_repair).
    let first = sent[0].1.options.timestamps.unwrap().0;
    for (at, c) in &sent {
        let ts = c.options.timestamps.unwrap().0;
        assert_eq!(ts % 2, 0);
        let d = ts.wrapping_sub(first);
        assert!(d.abs_diff(at.as_millis() as u32) <= 1, "{d} at {at:?}");
    }
}

#[test]
fn syns_are_repeated_by_the_round_trip_and_primed_only_first() {
    let t0 = Instant::now();
    let mut e = RawPunch::new(config(Plan::Direct, 20000), t0).expect("raw");
    let at: Vec<u64> = run(&mut e, t0, Duration::from_secs(4))
        .iter()
        .map(|(t, _)| t.as_millis() as u64)
        .collect();
    // 100 ms, doubling, at most 1 s: not the kernel's 1 s, 2 s, 4 s.
    assert_eq!(&at[..7], &[0, 100, 300, 700, 1500, 2500, 3500]);

    let mut cfg = config(Plan::Direct, 20000);
    cfg.prime_ttl = Some(2);
    let mut e = RawPunch::new(cfg, t0).expect("raw");
    let sent = run(&mut e, t0, Duration::from_secs(1));
    let seen: Vec<(u64, u8)> = sent
        .iter()
        .map(|(t, c)| (t.as_millis() as u64, c.ttl))
        .collect();
    assert_eq!(&seen[..4], &[(0, 2), (50, 64), (150, 64), (350, 64)]);
}

#[test]
fn a_first_syn_goes_out_in_copies_and_its_repeats_alone() {
    let t0 = Instant::now();
    let mut cfg = config(Plan::Direct, 20000);
    cfg.first_copies = 2;
    let mut e = RawPunch::new(cfg, t0).expect("raw");
    let sent = run(&mut e, t0, Duration::from_millis(350));
    let at: Vec<u64> = sent.iter().map(|(t, _)| t.as_millis() as u64).collect();
    assert_eq!(at, [0, 0, 100, 300]);
    assert_eq!(sent[0].1, sent[1].1, "the copy is the same segment");
    assert_eq!(e.syns, 4);
}

#[test]
fn repeats_hold_the_rate() {
    let t0 = Instant::now();
    let mut cfg = config(Plan::Window { delta: 1 }, 20000);
    cfg.punch.window = 200;
    cfg.punch.rate = 100;
    cfg.rtt = Duration::ZERO;
    let mut e = RawPunch::new(cfg, t0).expect("raw");
    let sent = run(&mut e, t0, Duration::from_secs(6));
    for s in 0..5 {
        let n = sent.iter().filter(|(t, _)| t.as_secs() == s).count();
        assert!((99..=101).contains(&n), "second {s}: {n} SYNs");
    }
}

#[test]
fn the_peers_syn_is_answered_in_the_same_call_and_established_once() {
    let t0 = Instant::now();
    let mut e = RawPunch::new(config(Plan::Direct, 20000), t0).expect("raw");
    e.handle_timeout(t0);
    drain(&mut e);
    let theirs = TcpOptions {
        mss: Some(1400),
        wscale: None,
        sack_permitted: true,
        timestamps: Some((555, 0)),
    };
    let now = t0 + Duration::from_millis(40);
    e.handle_seen(now, &tcp(peer(20000), Segment::Syn, 1000, 0, theirs));
    let out = drain(&mut e);
    assert_eq!(out.len(), 1);
    let sa = out[0];
    assert_eq!(
        (sa.flags, sa.seq, sa.ack, sa.dst),
        (Flags::SynAck, e.isn(), 1001, peer(20000))
    );
    // No window scale unless the SYN offered it (RFC 7323 section 2.2).
    assert_eq!(sa.options.wscale, None);
    assert!(sa.options.sack_permitted);
    let ts = sa.options.timestamps.expect("timestamps offered");
    assert_eq!(ts.1, 555);
    let est = e.poll_established().expect("established");
    assert_eq!(
        (est.local, est.remote, est.snd_nxt, est.rcv_nxt),
        (e.local(), peer(20000), e.isn().wrapping_add(1), 1001)
    );
    assert_eq!(
        (est.ours, est.theirs, est.peer_window),
        (sa.options, theirs, 29200)
    );
    assert!(e.poll_established().is_none());
    // The peer repeats its SYN: the same SYN-ACK again, nothing new established; and no
    // more SYNs of ours on that 4-tuple.
    e.handle_seen(now, &tcp(peer(20000), Segment::Syn, 1000, 0, theirs));
    assert_eq!(
        drain(&mut e).iter().map(|c| c.flags).collect::<Vec<_>>(),
        [Flags::SynAck]
    );
    assert!(e.poll_established().is_none());
    // The peer's ACK shows our SYN-ACK arrived: nothing more goes out.
    e.handle_seen(
        now,
        &tcp(
            peer(20000),
            Segment::Other,
            1001,
            e.isn().wrapping_add(1),
            theirs,
        ),
    );
    assert_eq!(e.poll_confirmed(), Some(peer(20000)));
    assert!(run(&mut e, now, Duration::from_secs(3)).is_empty());
}

#[test]
fn a_syn_ack_to_the_peers_syn_is_repeated_until_the_peer_shows_it_arrived() {
    let t0 = Instant::now();
    let mut e = RawPunch::new(config(Plan::Direct, 20000), t0).expect("raw");
    e.handle_timeout(t0);
    drain(&mut e);
    let o = TcpOptions {
        timestamps: Some((555, 0)),
        ..TcpOptions::default()
    };
    e.handle_seen(t0, &tcp(peer(20000), Segment::Syn, 1000, 0, o));
    let first = drain(&mut e);
    let est = e.poll_established().expect("established");
    assert!(est.awaiting_peer, "the socket must wait for the peer");
    // Unanswered: repeated after the round trip (100 ms), doubling, each one unchanged (the
    // socket's timestamp clock continues from the first one's TSval).
    let out = run(&mut e, t0, Duration::from_millis(750));
    let times: Vec<u128> = out.iter().map(|(t, _)| t.as_millis()).collect();
    assert_eq!(times, [100, 300, 700], "{out:?}");
    assert!(out.iter().all(|(_, c)| *c == first[0]));
    // Neither a SYN nor a RST nor something that does not acknowledge our SYN shows the
    // peer has it.
    let now = t0 + Duration::from_millis(750);
    let isn1 = e.isn().wrapping_add(1);
    e.handle_seen(now, &tcp(peer(20000), Segment::Rst, 0, isn1, o));
    e.handle_seen(now, &tcp(peer(20000), Segment::Other, 1001, 5, o));
    e.handle_seen(now, &tcp(peer(20001), Segment::Other, 1001, isn1, o));
    assert_eq!(e.poll_confirmed(), None);
    // Its own SYN-ACK to our SYN does: it is established too.
    e.handle_seen(now, &tcp(peer(20000), Segment::SynAck, 1000, isn1, o));
    assert_eq!(e.poll_confirmed(), Some(peer(20000)));
    assert_eq!(e.poll_confirmed(), None);
    assert!(e.poll_established().is_none());
    assert!(run(&mut e, now, Duration::from_secs(3))
        .iter()
        .all(|(_, c)| c.flags != Flags::SynAck));
}

#[test]
fn a_syn_ack_of_our_isn_establishes_and_others_are_ignored() {
    let t0 = Instant::now();
    let mut e = RawPunch::new(config(Plan::Window { delta: 1 }, 20000), t0).expect("raw");
    e.handle_timeout(t0);
    let o = TcpOptions::default();
    e.handle_seen(t0, &tcp(peer(20001), Segment::SynAck, 9, 12345, o));
    assert!(e.poll_established().is_none());
    // From a port we did not try: still our ISN, so it is our handshake on that 4-tuple.
    e.handle_seen(
        t0,
        &tcp(peer(20002), Segment::SynAck, 9, e.isn().wrapping_add(1), o),
    );
    let est = e.poll_established().expect("established");
    assert_eq!((est.remote, est.rcv_nxt), (peer(20002), 10));
    // The handshake's ACK goes out in the same call.
    let acks: Vec<Crafted> = drain(&mut e)
        .into_iter()
        .filter(|c| c.flags != Flags::Syn)
        .collect();
    assert_eq!(acks.len(), 1);
    let a = acks[0];
    assert_eq!(
        (a.flags, a.seq, a.ack, a.dst),
        (Flags::Ack, e.isn().wrapping_add(1), 10, peer(20002))
    );
    // The peer repeats its SYN-ACK: our ACK was lost, and the same ACK goes again (a peer
    // that answered our SYN waits for it before its first byte). Another SYN-ACK on that
    // 4-tuple is not the handshake's.
    let isn1 = e.isn().wrapping_add(1);
    e.handle_seen(t0, &tcp(peer(20002), Segment::SynAck, 9, isn1, o));
    assert_eq!(drain(&mut e), [a]);
    e.handle_seen(t0, &tcp(peer(20002), Segment::SynAck, 77, isn1, o));
    assert!(drain(&mut e).is_empty() && e.poll_established().is_none());
    // Another peer address, or another local port: not ours.
    let mut s = tcp(peer(20003), Segment::Syn, 1, 0, o);
    if let Seen::Tcp { dst, .. } = &mut s {
        *dst = SocketAddr::V4(SocketAddrV4::new(ME, P + 1));
    }
    e.handle_seen(t0, &s);
    e.handle_seen(
        t0,
        &tcp(
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 20003),
            Segment::Syn,
            1,
            0,
            o,
        ),
    );
    assert!(drain(&mut e).is_empty() && e.poll_established().is_none());
}

/// The peer's SYN-ACK echoes the timestamp of the SYN it answers: the round trip from that
/// SYN, however many went before it; the shortest sample is kept, and a SYN's empty echo or
/// a value not of our clock is none.
#[test]
fn a_timestamp_echo_measures_the_round_trip_from_the_syn_it_answers() {
    let t0 = Instant::now();
    let mut e = RawPunch::new(config(Plan::Window { delta: 1 }, 20000), t0).expect("raw");
    let ms = Duration::from_millis;
    let sent = run(&mut e, t0, ms(400));
    let (at, syn) = sent
        .iter()
        .rev()
        .find(|(_, c)| c.flags == Flags::Syn)
        .expect("a SYN");
    let (tsval, _) = syn.options.timestamps.expect("timestamps");
    let echo = |v: u32| TcpOptions {
        timestamps: Some((5, v)),
        ..TcpOptions::default()
    };
    let isn1 = e.isn().wrapping_add(1);
    e.handle_seen(t0, &tcp(peer(20001), Segment::Syn, 1, 0, echo(0)));
    assert_eq!(e.rtt_sample(), None);
    e.handle_seen(
        t0,
        &tcp(
            peer(20001),
            Segment::Other,
            1,
            0,
            echo(tsval.wrapping_add(999_999)),
        ),
    );
    assert_eq!(e.rtt_sample(), None);
    e.handle_seen(
        t0 + *at + ms(90),
        &tcp(peer(20000), Segment::SynAck, 9, isn1, echo(tsval)),
    );
    // The clock ticks in even milliseconds.
    let r = e.rtt_sample().expect("a sample");
    assert!(r >= ms(88) && r <= ms(92), "{r:?}");
    e.handle_seen(
        t0 + *at + ms(300),
        &tcp(peer(20000), Segment::Other, 10, isn1, echo(tsval)),
    );
    assert_eq!(e.rtt_sample(), Some(r), "the shortest is kept");
}

#[test]
fn rst_and_router_icmp_fail_the_attempt_peer_icmp_does_not() {
    let t0 = Instant::now();
    let mut e = RawPunch::new(config(Plan::Direct, 20000), t0).expect("raw");
    e.handle_timeout(t0);
    drain(&mut e);
    let o = TcpOptions::default();
    // A RST that does not acknowledge our SYN is not about it.
    e.handle_seen(t0, &tcp(peer(20000), Segment::Rst, 0, 99, o));
    assert_eq!(e.planner().refused, 0);
    e.handle_seen(
        t0,
        &tcp(peer(20000), Segment::Rst, 0, e.isn().wrapping_add(1), o),
    );
    assert_eq!(e.planner().refused, 1);
    // No repeat of the refused attempt until the planner's pause, then a new one.
    e.handle_timeout(t0 + Duration::from_millis(70));
    assert!(drain(&mut e).is_empty());
    e.handle_timeout(t0 + Duration::from_millis(300));
    assert_eq!(drain(&mut e).len(), 1);
    assert_eq!(e.planner().attempts, 2);

    let icmp = |from: Ipv4Addr| Seen::IcmpTcp {
        from: IpAddr::V4(from),
        to: IpAddr::V4(ME),
        kind: IcmpKind::Unreachable(3),
        quoted_src: SocketAddr::V4(SocketAddrV4::new(ME, P)),
        quoted_dst: SocketAddr::V4(peer(20000)),
    };
    let now = t0 + Duration::from_millis(310);
    e.handle_seen(now, &icmp(PEER));
    assert_eq!(e.planner().unreachable, 0);
    e.handle_seen(now, &icmp(Ipv4Addr::new(192, 0, 2, 254)));
    assert_eq!(e.planner().unreachable, 1);
}

#[test]
fn spraying_and_ipv6_are_left_to_the_kernel_engine() {
    let t0 = Instant::now();
    assert!(RawPunch::new(config(Plan::Spray, 20000), t0).is_none());
    let mut c = config(Plan::Direct, 20000);
    c.punch.peer_ip = "2001:db8::1".parse().unwrap();
    assert!(RawPunch::new(c, t0).is_none());
}

#[test]
fn nothing_is_sent_after_the_budget_and_no_timeout_spins() {
    let t0 = Instant::now();
    let mut cfg = config(Plan::Direct, 20000);
    cfg.punch.budget = Duration::from_millis(500);
    let mut e = RawPunch::new(cfg, t0).expect("raw");
    let sent = run(&mut e, t0, Duration::from_secs(2));
    assert!(sent.iter().all(|(t, _)| *t < Duration::from_millis(500)));
    let end = t0 + Duration::from_secs(2);
    e.handle_timeout(end);
    assert!(drain(&mut e).is_empty());
}

// --- Simulated: two hosts through strict NATs (src/sim/tcp_wire.rs) ---

fn cone() -> NatInfo {
    NatInfo {
        mapping: Behavior::EndpointIndependent,
        filtering: Behavior::AddressAndPortDependent,
        allocation: Allocation::Preserving,
        delta: None,
        range: None,
    }
}

fn symmetric(allocation: Allocation) -> NatInfo {
    NatInfo {
        mapping: Behavior::AddressAndPortDependent,
        filtering: Behavior::AddressAndPortDependent,
        allocation,
        delta: (allocation == Allocation::Sequential).then_some(1),
        range: None,
    }
}

const PORTS: [u16; 2] = [40000, 41000];

/// Side `i`'s punch toward the other, from the predictions both NATs give.
fn side(world: &mut WireWorld, i: usize, seed: u64) -> (TcpPunchConfig, [NatInfo; 2]) {
    let me = world.nats[i].nat.observe(PORTS[i]);
    let them = world.nats[1 - i].nat.observe(PORTS[1 - i]);
    let cfg = TcpPunchConfig {
        plan: plan(&me.nat, &them.nat),
        peer_ip: IpAddr::V4(WIRE_PUBLIC[1 - i]),
        peer_port: them.port,
        local_port: PORTS[i],
        window: 24,
        rate: 2000,
        sweep_sockets: 256,
        budget: Duration::from_secs(12),
        peer_ports: [1024, 65535],
        seed,
    };
    (cfg, [me.nat, them.nat])
}

fn raw_host(
    cfg: TcpPunchConfig,
    i: usize,
    first_copies: u8,
    rtt: Duration,
    prime: Option<u8>,
    t0: Instant,
) -> RawHost {
    RawHost::new(
        RawPunch::new(
            RawConfig {
                punch: cfg,
                local_ip: WIRE_HOSTS[i],
                rtt,
                prime_ttl: prime,
                ttl: 64,
                mss: 1460,
                wscale: 7,
                window: 64240,
                first_copies,
                syn_data: Vec::new(),
            },
            t0,
        )
        .expect("the raw engine takes this plan"),
    )
}

/// Both sides on one connection: each one's remote is the other's NAT mapping of it, and
/// each one's next sequence number is what the other expects.
fn assert_one_connection(world: &WireWorld, [a, b]: &[Established; 2]) {
    assert_eq!(*a.remote.ip(), WIRE_PUBLIC[1]);
    assert_eq!(*b.remote.ip(), WIRE_PUBLIC[0]);
    assert_eq!(
        world.nats[0].external(a.local.port(), a.remote),
        Some(b.remote.port())
    );
    assert_eq!(
        world.nats[1].external(b.local.port(), b.remote),
        Some(a.remote.port())
    );
    assert_eq!((a.snd_nxt, a.rcv_nxt), (b.rcv_nxt, b.snd_nxt));
    assert_eq!(
        world.nats[0].invalid + world.nats[1].invalid,
        0,
        "strict tracking dropped segments"
    );
}

/// Observation connections move a per-flow counter, so the worlds are built fresh per case.
fn world(kinds: [NatInfo; 2], latency_ms: u64, routers: u8) -> WireWorld {
    WireWorld::new(kinds, Duration::from_millis(latency_ms), routers, 11)
}

#[test]
fn sim_raw_cones_meet_on_one_4_tuple_with_one_sequence_space() {
    for (latency, prime, routers) in [(0, None, 0), (40, None, 0), (40, Some(2), 1)] {
        let mut w = world([cone(), cone()], latency, routers);
        let t0 = w.now;
        let rtt = Duration::from_millis(4 * latency);
        let (ca, _) = side(&mut w, 0, 1);
        let (cb, _) = side(&mut w, 1, 2);
        assert_eq!(ca.plan, Plan::Direct);
        let mut a = raw_host(ca, 0, 1, rtt, prime, t0);
        let mut b = raw_host(
            cb,
            1,
            1,
            rtt,
            prime,
            t0 + Duration::from_millis(latency / 2),
        );
        let r = w.run([&mut a, &mut b], t0 + Duration::from_secs(12));
        let r = r.unwrap_or_else(|| panic!("no connection at {latency} ms, priming {prime:?}"));
        assert_one_connection(&w, &r);
        assert_eq!(r[0].local.port(), PORTS[0]);
        // Within a few round trips, not the kernel's 1 s repeat.
        let took = w.now - t0;
        assert!(
            took <= rtt * 2 + Duration::from_millis(100),
            "{took:?} at {latency} ms"
        );
        // Every SYN either side sent had that side's one ISN.
        for (i, host) in [&a.engine, &b.engine].into_iter().enumerate() {
            assert!(w.sent[i]
                .iter()
                .all(|c| c.seq == host.isn() || c.flags == Flags::Ack));
        }
    }
}

#[test]
fn sim_raw_and_kernel_engines_meet() {
    let mut w = world([cone(), cone()], 20, 0);
    let t0 = w.now;
    let (ca, _) = side(&mut w, 0, 3);
    let (cb, _) = side(&mut w, 1, 4);
    let mut a = raw_host(ca, 0, 1, Duration::from_millis(80), None, t0);
    let mut b = KernelHost::new(cb, WIRE_HOSTS[1], None, t0 + Duration::from_millis(15));
    let r = w.run([&mut a, &mut b], t0 + Duration::from_secs(12));
    assert_one_connection(&w, &r.expect("raw and kernel connect"));
}

#[test]
fn sim_raw_cone_and_sequential_meet_through_the_prediction_window() {
    for disturbance in [0, 3] {
        let mut w = world([cone(), symmetric(Allocation::Sequential)], 20, 0);
        let t0 = w.now;
        let (ca, _) = side(&mut w, 0, 5);
        let (cb, _) = side(&mut w, 1, 6);
        assert!(
            matches!(ca.plan, Plan::Window { delta: 1 }),
            "{:?}",
            ca.plan
        );
        assert_eq!(cb.plan, Plan::Direct);
        // Other hosts' flows take the counter's next ports before the punch.
        for k in 0..disturbance {
            w.nats[1]
                .nat
                .map(50000 + k, SocketAddr::from(([192, 0, 2, 7], 80)));
        }
        let rtt = Duration::from_millis(80);
        let mut a = raw_host(ca, 0, 1, rtt, None, t0);
        let mut b = raw_host(cb, 1, 1, rtt, None, t0 + Duration::from_millis(5));
        let r = w
            .run([&mut a, &mut b], t0 + Duration::from_secs(12))
            .unwrap_or_else(|| panic!("no connection with {disturbance} other flows"));
        assert_one_connection(&w, &r);
        assert_eq!(r[0].remote.port(), 20003 + disturbance);
        // The whole window from one port, one ISN: one raw socket, no descriptor per port.
        let targets: HashSet<u16> = w.sent[0].iter().map(|c| c.dst.port()).collect();
        assert!(targets.len() > 1);
        assert!(w.sent[0].iter().all(|c| c.src.port() == PORTS[0]));
    }
}

#[test]
fn sim_raw_probe_finds_a_kernel_spray_of_a_random_nat() {
    let mut w = world([cone(), symmetric(Allocation::Random)], 10, 0);
    let t0 = w.now;
    let (ca, _) = side(&mut w, 0, 7);
    let (cb, _) = side(&mut w, 1, 8);
    assert_eq!((ca.plan, cb.plan), (Plan::Probe, Plan::Spray));
    let mut a = raw_host(ca, 0, 1, Duration::from_millis(40), None, t0);
    let mut b = KernelHost::new(cb, WIRE_HOSTS[1], None, t0);
    let r = w
        .run([&mut a, &mut b], t0 + Duration::from_secs(12))
        .expect("the sweep finds a mapping");
    assert_one_connection(&w, &r);
    assert!(
        a.engine.syns > 10,
        "found only after some probes ({})",
        a.engine.syns
    );
}

/// B's SYNs are lost; A's SYN reaches B, whose SYN-ACK is lost beyond B's NAT (A starts
/// 60 ms after B, 40 ms apart). `early`: B plays the TLS client and speaks at once
/// ([`RawHost::early`]). The world, B's host and what the run came to.
fn lost_syn_ack(early: bool) -> (WireWorld, RawHost, Option<[Established; 2]>) {
    let latency = 40;
    let mut w = world([cone(), cone()], latency, 0);
    w.lose = vec![(1, Flags::Syn), (1, Flags::Syn), (1, Flags::SynAck)];
    let t0 = w.now;
    let rtt = Duration::from_millis(2 * latency);
    let (ca, _) = side(&mut w, 0, 9);
    let (cb, _) = side(&mut w, 1, 10);
    let mut a = raw_host(ca, 0, 1, rtt, None, t0 + Duration::from_millis(60));
    let mut b = raw_host(cb, 1, 1, rtt, None, t0);
    if early {
        b = b.early();
    }
    let r = w.run([&mut a, &mut b], t0 + Duration::from_secs(12));
    assert!(w.lose.is_empty(), "a segment to lose was never sent");
    (w, b, r)
}

#[test]
fn sim_raw_a_lost_syn_ack_is_repeated_through_the_nats_that_drop_the_peers_syns() {
    // From then on B's NAT drops A's repeated SYNs (reply SYN in SYN_RECV), so only B's own
    // repeats can finish the handshake.
    let (w, b, r) = lost_syn_ack(false);
    assert!(
        w.nats[1].out_of_state > 0,
        "B's NAT never dropped A's repeated SYN"
    );
    assert_one_connection(&w, &r.expect("B's repeated SYN-ACK finishes the handshake"));
    assert!(b.engine.synacks >= 2);
}

#[test]
fn sim_raw_a_lost_handshake_ack_is_sent_again_when_the_peer_repeats_its_syn_ack() {
    // B's SYNs are lost; A's SYN reaches B, which answers it and waits for A to show it has
    // the SYN-ACK. A's ACK and its socket's window probe are lost: only B's repeated SYN-ACK
    // can bring A's ACK again.
    let latency = 40;
    let mut w = world([cone(), cone()], latency, 0);
    w.lose = vec![
        (1, Flags::Syn),
        (1, Flags::Syn),
        (0, Flags::Ack),
        (0, Flags::Ack),
    ];
    let t0 = w.now;
    let rtt = Duration::from_millis(2 * latency);
    let (ca, _) = side(&mut w, 0, 9);
    let (cb, _) = side(&mut w, 1, 10);
    let mut a = raw_host(ca, 0, 1, rtt, None, t0 + Duration::from_millis(60));
    let mut b = raw_host(cb, 1, 1, rtt, None, t0);
    let r = w.run([&mut a, &mut b], t0 + Duration::from_secs(12));
    assert!(w.lose.is_empty(), "a segment to lose was never sent");
    assert_one_connection(&w, &r.expect("A's repeated ACK confirms B's SYN-ACK"));
    assert!(b.engine.synacks >= 2);
}

#[test]
fn sim_raw_sequential_nats_meet_when_a_first_syn_is_lost_before_the_nat() {
    // A's first SYN never reaches A's NAT, so that attempt's port goes to the next attempt's
    // SYN, and so on: with one copy of each first SYN every attempt leaves from the port B
    // predicted for the one before, and the lockstep windows never meet.
    let mut w = world(
        [
            symmetric(Allocation::Sequential),
            symmetric(Allocation::Sequential),
        ],
        20,
        0,
    );
    w.lose_before_nat = vec![(0, Flags::Syn)];
    let t0 = w.now;
    let (ca, [me_a, _]) = side(&mut w, 0, 11);
    let (cb, [me_b, _]) = side(&mut w, 1, 12);
    assert!(matches!(ca.plan, Plan::Window { .. }), "{:?}", ca.plan);
    let rtt = Duration::from_millis(80);
    let mut a = raw_host(ca, 0, first_syn_copies(&me_a), rtt, None, t0);
    let mut b = raw_host(cb, 1, first_syn_copies(&me_b), rtt, None, t0);
    let r = w
        .run([&mut a, &mut b], t0 + Duration::from_secs(12))
        .expect("the second copy takes the lost SYN's port");
    assert!(w.lose_before_nat.is_empty(), "no SYN was lost");
    assert_one_connection(&w, &r);
}

/// A carrier-grade NAT's random ports within one block of 512, as the lab's
/// cgn-block-random draws them.
fn random_block() -> NatInfo {
    NatInfo {
        range: Some([20000, 20511]),
        ..symmetric(Allocation::Random)
    }
}

/// A random NAT against a sequential symmetric one (a carrier-grade block against a home
/// router that counts): the random side's fresh-port connections aim at the counter's next
/// ports, the counter side's raw engine keeps half a window of probes of the block open.
/// Before, the random side aimed a window from one port and the counter side, with no port
/// of ours to predict, made no attempt at all.
#[test]
fn sim_a_random_block_and_a_port_counter_meet_by_a_sweep_at_the_counter() {
    let mut met = 0;
    for seed in 0..10u64 {
        let mut w = WireWorld::new(
            [random_block(), symmetric(Allocation::Sequential)],
            Duration::from_millis(20),
            0,
            seed,
        );
        let t0 = w.now;
        // The classifications connect makes: UDP's many samples tell a block of random
        // ports (three TCP samples in 512 ports can look like a counter by chance).
        let counter = w.nats[1].nat.observe(PORTS[1]);
        let (mut ca, _) = side(&mut w, 0, 100 + seed);
        let (mut cb, _) = side(&mut w, 1, 200 + seed);
        ca.plan = plan(&random_block(), &counter.nat);
        cb.plan = plan(&counter.nat, &random_block());
        assert!(
            matches!(ca.plan, Plan::SprayAtCounter { delta: 1 }),
            "{:?}",
            ca.plan
        );
        assert_eq!(cb.plan, Plan::ProbeFromCounter);
        (ca.peer_port, cb.peer_port) = (counter.port, 0);
        cb.peer_ports = crate::core::punch::random_ports(&random_block());
        ca.sweep_sockets = 64;
        (ca.rate, cb.rate) = (500, 500);
        let mut a = KernelHost::new(ca, WIRE_HOSTS[0], None, t0);
        let mut b = raw_host(cb, 1, 1, Duration::from_millis(80), None, t0);
        if let Some(r) = w.run([&mut a, &mut b], t0 + Duration::from_secs(12)) {
            assert_one_connection(&w, &r);
            met += 1;
        }
        // The counter side's probes are few and from its one port.
        let probed: HashSet<u16> = w.sent[1].iter().map(|c| c.dst.port()).collect();
        assert!(probed.len() <= counter_flows(24), "{}", probed.len());
        assert!(w.sent[1].iter().all(|c| c.src.port() == PORTS[1]));
    }
    assert!(met >= 6, "met in {met} of 10 worlds");
}

/// Two carrier-grade blocks over TCP: neither side can be found, so both connect from fresh
/// ports to random ports of the other's block (kernel sockets on both sides) until two
/// attempts are each other's reverse. Before, neither side made an attempt.
#[test]
fn sim_two_random_blocks_meet_by_a_two_sided_sweep() {
    let mut met = 0;
    for seed in 0..10u64 {
        let mut w = WireWorld::new(
            [random_block(), random_block()],
            Duration::from_millis(20),
            0,
            seed,
        );
        let t0 = w.now;
        let (mut ca, _) = side(&mut w, 0, 300 + seed);
        let (mut cb, _) = side(&mut w, 1, 400 + seed);
        for c in [&mut ca, &mut cb] {
            let budget = c.budget;
            (c.plan, _) = two_sided_or_none(
                plan(&random_block(), &random_block()),
                &random_block(),
                &random_block(),
                200,
                budget,
            );
            assert_eq!(c.plan, Plan::TwoSided);
            (c.rate, c.peer_port, c.peer_ports) = (200, 0, [20000, 20511]);
        }
        let mut a = KernelHost::new(ca, WIRE_HOSTS[0], None, t0);
        let mut b = KernelHost::new(cb, WIRE_HOSTS[1], None, t0 + Duration::from_millis(7));
        if let Some(r) = w.run([&mut a, &mut b], t0 + Duration::from_secs(12)) {
            assert_one_connection(&w, &r);
            met += 1;
        }
    }
    assert!(met >= 9, "met in {met} of 10 worlds");
}

mod early;
mod syn_data;

use super::*;

#[test]
fn the_window_is_the_larger_of_bbrs_and_cubics() {
    let now = Instant::now();
    let mut c = Arc::new(BbrBesideConfig::default()).build(now, 1200);
    let mut bbr = Arc::new(BbrConfig::default()).build(now, 1200);
    let mut cubic = Arc::new(CubicConfig::default()).build(now, 1200);
    assert_eq!(c.window(), bbr.window().max(cubic.window()));
    assert_eq!(
        c.initial_window(),
        bbr.initial_window().max(cubic.initial_window())
    );
    // Loss reaches both: CUBIC's window shrinks with it and BBR's does not, so a lossy path
    // runs on BBR's.
    for i in 0..5 {
        let t = now + std::time::Duration::from_millis(10 * i);
        for x in [&mut c, &mut bbr, &mut cubic] {
            x.on_sent(t, 1200, i);
            x.on_congestion_event(t, t, false, 1200);
        }
    }
    assert!(cubic.window() < bbr.window(), "the premise: CUBIC shrank");
    assert_eq!(c.window(), bbr.window());
    c.on_mtu_update(1452);
    bbr.on_mtu_update(1452);
    cubic.on_mtu_update(1452);
    assert_eq!(c.window(), bbr.window().max(cubic.window()));
}

/// A stream over loopback with punchraw's transport configuration: the sender's congestion
/// window, sampled through the first 150 ms of the transfer, never sits at four packets.
/// quinn's BBR alone enters PROBE_RTT at its first acknowledgement and holds the window at
/// four packets for 200 ms (on a path this short its 0.75 x BDP target is below that floor).
#[test]
fn a_new_connection_is_not_held_at_four_packets() {
    use crate::transport::pin::{Identity, PinVerifier};
    use std::time::Duration;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let pin = |who: &Identity| Arc::new(PinVerifier::new(who.fingerprint(), provider.clone()));
    let pace = super::super::pace::Pace::new();
    let server = super::super::server_config(&b, pin(&a), provider.clone(), Duration::ZERO, &pace)
        .expect("server config");
    let client = super::super::client_config(&a, pin(&b), provider.clone(), Duration::ZERO, &pace)
        .expect("client config");
    let samples = runtime.block_on(async move {
        let loopback = "127.0.0.1:0".parse().unwrap();
        let srv = quinn::Endpoint::server(server, loopback).expect("server endpoint");
        let addr = srv.local_addr().unwrap();
        let sink = tokio::spawn(async move {
            let conn = srv.accept().await.unwrap().await.unwrap();
            let mut recv = conn.accept_uni().await.unwrap();
            while recv.read_chunk(usize::MAX, false).await.unwrap().is_some() {}
            conn
        });
        let mut cli = quinn::Endpoint::client(loopback).expect("client endpoint");
        cli.set_default_client_config(client);
        let conn = cli.connect(addr, "test.punchraw").unwrap().await.unwrap();
        let mut send = conn.open_uni().await.unwrap();
        let block = bytes::Bytes::from(vec![0u8; 1 << 20]);
        let writer = tokio::spawn(async move {
            for _ in 0..512 {
                if send.write_chunk(block.clone()).await.is_err() {
                    return;
                }
            }
            let _ = send.finish();
        });
        // Sampled from the first acknowledgement on: before it there is no window to hold.
        while conn.stats().path.sent_packets < 20 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let mut samples = Vec::new();
        let start = tokio::time::Instant::now();
        while start.elapsed() < Duration::from_millis(150) {
            let path = conn.stats().path;
            samples.push((path.cwnd, u64::from(path.current_mtu)));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        writer.abort();
        conn.close(0u32.into(), b"");
        sink.abort();
        samples
    });
    assert!(samples.len() > 10, "too few samples: {samples:?}");
    for (cwnd, mtu) in &samples {
        assert!(
            *cwnd > 4 * mtu,
            "window held at {cwnd} bytes ({mtu}-byte packets): {samples:?}"
        );
    }
}

/// A controller whose window never shrinks, as quinn's BBR behaves once its per-packet
/// bandwidth estimate has jumped (see [`Delivery`]).
struct Runaway;

impl Controller for Runaway {
    fn on_congestion_event(&mut self, _: Instant, _: Instant, _: bool, _: u64) {}
    fn on_mtu_update(&mut self, _: u16) {}
    fn window(&self) -> u64 {
        200_000_000
    }
    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Runaway)
    }
    fn initial_window(&self) -> u64 {
        14_720
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

use std::time::Duration;

const PACKET: u64 = 1250;

/// A link of 12.5 MB/s (one 1,250-byte packet per 100 us) with a round trip of 1 ms, kept
/// full for `for_ms`; the receiver acknowledges every second packet at once, except that
/// every 20 ms it holds its acknowledgements back for 4 ms and then sends them together (a
/// receiver that was not scheduled), all read by the sender at one instant. Feeds `d`.
fn full_link_with_held_back_acks(d: &mut Delivery, start: Instant, for_ms: u64) {
    feed_link(d, start, for_ms, true, false, true);
}

/// [`full_link_with_held_back_acks`], the stalls only if `held_back`; every acknowledgement
/// reported `app_limited` and `capped` (the bound held BBR's window) or not.
fn feed_link(
    d: &mut Delivery,
    start: Instant,
    for_ms: u64,
    held_back: bool,
    app_limited: bool,
    capped: bool,
) {
    let rtt = Duration::from_millis(1);
    let gap = Duration::from_micros(100);
    let packets = for_ms * 10;
    for pair in 0..packets / 2 {
        let sent = start + gap * (pair as u32 * 2 + 1);
        let mut acked = sent + rtt;
        let since_start = acked.duration_since(start);
        let in_period = since_start.as_micros() % 20_000;
        if held_back && in_period < 4_000 {
            // Held until the end of the stall.
            acked += Duration::from_micros(4_000 - in_period as u64);
        }
        d.on_ack(sent - gap, PACKET, rtt, rtt);
        d.on_ack(sent, PACKET, rtt, rtt);
        d.on_end_acks(acked, app_limited, capped);
    }
}

/// The rate stops counting as growing only over rounds in which the sender had data for its
/// whole window and the bound held it back: a stream that trickles at first, or a BBR that holds
/// itself at four packets, keeps the startup gain for when the bound matters.
#[test]
fn only_rounds_with_data_to_send_end_the_growth() {
    let start = Instant::now();
    let mut d = Delivery::default();
    let bdp = 12_500_000 * 7 / 1000;
    let ms = Duration::from_millis;
    // Out of data, then held back by BBR's own window: neither says the path is full.
    feed_link(&mut d, start, 30, false, true, true);
    feed_link(&mut d, start + ms(30), 30, false, false, false);
    assert!(d.rounds_flat < GROWTH_ROUNDS);
    assert_eq!(u128::from(d.cap()), bdp * STARTUP_GAIN / 1000);
    feed_link(&mut d, start + ms(60), 30, false, false, true);
    assert_eq!(d.rounds_flat, GROWTH_ROUNDS);
    assert_eq!(u128::from(d.cap()), bdp * CAP_GAIN / 1000);
}

/// It counts as probing (for `Pace::probing`) only while the rate may still grow and the
/// sender has data to send.
#[test]
fn it_probes_while_the_rate_may_grow_with_data_to_send() {
    let start = Instant::now();
    let ms = Duration::from_millis;
    let mut d = Delivery::default();
    feed_link(&mut d, start, 30, false, true, true);
    assert!(!d.probing, "out of data");
    feed_link(&mut d, start + ms(30), 30, false, false, false);
    assert!(d.probing, "the rate may still grow");
    feed_link(&mut d, start + ms(60), 30, false, false, true);
    assert!(!d.probing, "the pipe is full");
}

#[test]
fn the_delivery_rate_is_the_links_through_held_back_acknowledgements() {
    let mut d = Delivery::default();
    assert_eq!(d.cap(), 0, "no sample, no cap");
    full_link_with_held_back_acks(&mut d, Instant::now(), 1_000);
    let link = 12_500_000;
    // Within the marks' spacing of the link's rate; quinn's BBR took single packets over
    // microseconds and saw up to several times the link.
    assert!(
        d.rate() >= link * 9 / 10 && d.rate() <= link * 11 / 10,
        "{} B/s on a {link} B/s link",
        d.rate()
    );
    let bdp = link * 7 / 1000; // the link's rate over the smallest RTT and the allowance
    assert!(d.cap() >= 2 * bdp * 9 / 10 && d.cap() <= 2 * bdp * 11 / 10);
    assert!(d.marks.len() < 4_000, "marks are pruned: {}", d.marks.len());
}

/// On a rate-limited link the window quinn's BBR asks for can be 100 times the path's; the
/// composite's stays within twice the measured bandwidth-delay product (or CUBIC's).
#[test]
fn a_runaway_bbr_window_is_held_to_twice_the_measured_bdp() {
    let now = Instant::now();
    let cubic = Arc::new(CubicConfig::default()).build(now, 1200);
    let mut c = BbrBeside::new(Box::new(Runaway), cubic, None);
    assert_eq!(
        c.window(),
        c.cubic.window().max(14_720),
        "before any sample"
    );
    full_link_with_held_back_acks(&mut c.delivery, now, 1_000);
    let bound = 2 * 12_500_000 * 7 / 1000 * 11 / 10;
    assert!(
        c.window() <= bound.max(c.cubic.window()),
        "window {} with the measured path allowing {bound}",
        c.window()
    );
    assert_eq!(c.metrics().congestion_window, c.window());
}

/// Random loss is not congestion: on a 160 ms path losing every fifth packet, where CUBIC
/// collapses, the bounded BBR window still grows from its first packets to a 10 MB window
/// within 25 round trips, as the rate that arrives grows with it.
#[test]
fn the_bound_grows_with_the_rate_on_a_lossy_long_path() {
    let start = Instant::now();
    let cubic = Arc::new(CubicConfig::default()).build(start, 1200);
    let mut c = BbrBeside::new(Box::new(Runaway), cubic, None);
    let rtt = Duration::from_millis(160);
    let mut rounds = 0;
    let mut packet = 0u64;
    while c.window() < 10_000_000 {
        assert!(
            rounds < 25,
            "window {} after {rounds} round trips",
            c.window()
        );
        let round_start = start + rtt * rounds;
        let n = (c.window() / PACKET).max(1);
        for j in 0..n {
            let sent = round_start + rtt * j as u32 / n as u32;
            packet += 1;
            c.on_sent(sent, PACKET, packet);
            if packet % 5 == 0 {
                c.on_congestion_event(sent + rtt, sent, false, PACKET);
                continue;
            }
            c.delivery.on_ack(sent, PACKET, rtt, rtt);
            c.delivery.on_end_acks(sent + rtt, false, true);
        }
        rounds += 1;
    }
    assert!(c.cubic.window() < 100_000, "the premise: CUBIC collapsed");
}

/// A round whose rate did not grow and which lost half its bytes ends the growth at once (a
/// queue overflowing under the startup gain), with BBR's window never capped; a tenth lost,
/// as random loss does, leaves the growth to the full-pipe test.
#[test]
fn a_round_that_overflows_a_queue_ends_the_growth_at_once() {
    for (lost_per_ms, ends) in [(12_500, true), (1_389, false)] {
        let start = Instant::now();
        let mut d = Delivery::default();
        // The rate found and flat, BBR's own window below the bound: no round counts.
        feed_link(&mut d, start, 30, false, false, false);
        assert_eq!(d.rounds_flat, 0);
        for ms in 30..33 {
            d.lost_in_round += lost_per_ms;
            feed_link(
                &mut d,
                start + Duration::from_millis(ms),
                1,
                false,
                false,
                false,
            );
        }
        assert_eq!(
            d.rounds_flat >= GROWTH_ROUNDS,
            ends,
            "{lost_per_ms} bytes lost per ms"
        );
        assert_eq!(d.cycle_start.is_some(), ends);
    }
}

/// The pacing gain: the startup gain while the rate grows, then BBR's cycle, a phase per
/// smallest RTT and allowance, starting with the drain.
#[test]
fn the_pacing_gain_drains_after_startup_then_cycles() {
    let start = Instant::now();
    let mut d = Delivery::default();
    feed_link(&mut d, start, 30, false, false, false);
    assert_eq!(d.pacing_gain(start), STARTUP_GAIN);
    feed_link(
        &mut d,
        start + Duration::from_millis(30),
        30,
        false,
        false,
        true,
    );
    let Some(cycle) = d.cycle_start else {
        panic!("the growth ended");
    };
    let phase = Duration::from_millis(1) + ACK_ALLOWANCE;
    let gains: Vec<u128> = (0..9).map(|i| d.pacing_gain(cycle + phase * i)).collect();
    assert_eq!(
        gains,
        [750, 1_000, 1_000, 1_000, 1_000, 1_000, 1_000, 1_250, 750]
    );
}

/// A sender that ran short of data shows its own rate: after a second at the link's rate,
/// three seconds of a packet every 10 ms leave the estimate (and so the pacing) at the link's
/// rate if reported app-limited, and let it fall otherwise.
#[test]
fn a_trickle_does_not_lower_the_estimate() {
    let link = 12_500_000;
    for app_limited in [true, false] {
        let start = Instant::now();
        let mut d = Delivery::default();
        full_link_with_held_back_acks(&mut d, start, 1_000);
        let rtt = Duration::from_millis(1);
        for i in 0..300u32 {
            let sent = start + Duration::from_secs(1) + Duration::from_millis(10) * i;
            d.on_ack(sent, PACKET, rtt, rtt);
            d.on_end_acks(sent + rtt, app_limited, false);
        }
        assert_eq!(
            d.rate() >= link * 9 / 10,
            app_limited,
            "app-limited {app_limited}: {} B/s",
            d.rate()
        );
    }
}

/// Before the rate is known the pacing floor is CUBIC's initial window per round trip, not
/// quinn's BBR's (240 KB), which on a 10 Mbit/s line with an 80 ms round trip is twice the
/// line.
#[test]
fn the_pacing_floor_is_ten_packets_per_round_trip() {
    let now = Instant::now();
    let c = Arc::new(BbrBesideConfig::default()).build(now, 1200);
    let Ok(c) = c.into_any().downcast::<BbrBeside>() else {
        panic!("the factory builds a BbrBeside");
    };
    let mut c = *c;
    let rtt = Duration::from_millis(80);
    // A packet per round trip: a rate far below any floor.
    for i in 0..5 {
        c.delivery.on_ack(now + rtt * i, 1_000, rtt, rtt);
        c.delivery.on_end_acks(now + rtt * (i + 1), false, false);
    }
    let floor = c.cubic.initial_window() * 1_000 / 80;
    assert!(c.delivery.rate() > 0 && c.delivery.rate() < floor / 3);
    assert_eq!(c.pacing_rate(now + rtt * 5), floor);
    assert!(floor < 1_250_000 / 4, "well under a 10 Mbit/s line");
}

/// A relay-first stream moved to the direct path (or back): the controller starts over as on
/// a new connection, unpaced until the new path's acknowledgements bring an estimate, and
/// the loss of a packet sent on the old path does not count against the new one.
#[test]
fn a_path_change_starts_the_controller_over() {
    let now = Instant::now();
    let pace = Pace::new();
    let mut c = BbrBeside::build(now, 1200, Some(&pace));
    let slot = c
        .pacing
        .clone()
        .expect("a paced socket's controller has a slot");
    full_link_with_held_back_acks(&mut c.delivery, now, 1_000);
    let t = now + Duration::from_secs(1);
    c.on_end_acks(t, 0, false, None);
    assert!(c.delivery.rate() > 0 && slot.load(Ordering::Relaxed) > 0);
    c.on_sent(t, 1200, 1);
    c.on_congestion_event(t, t, false, 1200);
    assert!(c.cubic.window() < c.cubic.initial_window(), "the premise");

    pace.path_changed();
    let t2 = t + Duration::from_millis(1);
    c.on_sent(t2, 1200, 2);
    assert_eq!(c.delivery.rate(), 0, "the old path's rate is forgotten");
    assert_eq!(
        slot.load(Ordering::Relaxed),
        0,
        "unpaced until a new estimate"
    );
    assert_eq!(c.window(), c.initial_window());
    // Lost on the relay, declared after the switch.
    c.on_congestion_event(t2, t, false, 100_000);
    assert_eq!(c.cubic.window(), c.cubic.initial_window());
    assert_eq!(c.delivery.lost_in_round, 0);
    // Lost on the new path: counts.
    c.on_congestion_event(t2, t2, false, 1200);
    assert!(c.cubic.window() < c.cubic.initial_window());
    // Without a further change nothing starts over.
    c.on_sent(t2, 1200, 3);
    assert!(c.cubic.window() < c.cubic.initial_window());
}

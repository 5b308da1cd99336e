//! The TLS client's first flight right behind our SYN-ACK ([`RawPunch::sending_early`]).

use super::*;

/// Our first SYN is out and the peer's SYN (TSval 555) on port 20000 answered; returns our
/// SYN-ACK and the socket to make.
fn answered(e: &mut RawPunch, t0: Instant) -> (Crafted, Established) {
    e.handle_timeout(t0);
    drain(e);
    let o = TcpOptions {
        timestamps: Some((555, 0)),
        ..TcpOptions::default()
    };
    e.handle_seen(t0, &tcp(peer(20000), Segment::Syn, 1000, 0, o));
    let synack = drain(e)[0];
    assert_eq!(synack.flags, Flags::SynAck);
    let est = e.poll_established().expect("established");
    assert!(est.awaiting_peer);
    (synack, est)
}

#[test]
fn an_early_speaking_socket_has_our_syn_repeated_instead_of_the_syn_ack() {
    let t0 = Instant::now();
    let mut e = RawPunch::new(config(Plan::Direct, 20000), t0).expect("raw");
    let (synack, est) = answered(&mut e, t0);
    e.sending_early(est.remote);
    // Paced as the SYN-ACK would be; our ISN, nothing acknowledged, the SYN-ACK's options
    // with its TSval (the socket's clock continues from it) and no echo.
    let out = run(&mut e, t0, Duration::from_millis(750));
    let times: Vec<u128> = out.iter().map(|(t, _)| t.as_millis()).collect();
    assert_eq!(times, [100, 300, 700], "{out:?}");
    let (tsval, _) = synack.options.timestamps.expect("timestamps");
    for (_, c) in &out {
        assert_eq!(
            (c.flags, c.seq, c.ack, c.dst),
            (Flags::Syn, e.isn(), 0, peer(20000))
        );
        assert_eq!(c.options.timestamps, Some((tsval, 0)));
        assert_eq!(
            (c.options.mss, c.options.wscale),
            (synack.options.mss, synack.options.wscale)
        );
    }
    // The peer's SYN-ACK to one of those: confirmed, and its socket is younger than our
    // first data, which goes again.
    let now = t0 + Duration::from_millis(750);
    let isn1 = e.isn().wrapping_add(1);
    e.handle_seen(
        now,
        &tcp(
            peer(20000),
            Segment::SynAck,
            1000,
            isn1,
            TcpOptions::default(),
        ),
    );
    assert_eq!(e.poll_confirmed(), Some(peer(20000)));
    assert_eq!(e.poll_data_again(), Some(peer(20000)));
    assert_eq!(e.poll_data_again(), None);
    assert!(run(&mut e, now, Duration::from_secs(3)).is_empty());
}

#[test]
fn only_a_confirmation_that_may_have_missed_our_data_asks_for_it_again() {
    let o = TcpOptions::default();
    // (speaking early, the peer's confirmation, whether our data goes again)
    for (early, segment, again) in [
        // Its SYN-ACK to our first SYN: it made its socket then, before our data came.
        (true, Segment::SynAck, false),
        // Its ACK of our SYN-ACK: its socket came with that, maybe after our data.
        (true, Segment::Other, true),
        // A silent socket sends its first data after the confirmation anyway.
        (false, Segment::Other, false),
        (false, Segment::SynAck, false),
    ] {
        let t0 = Instant::now();
        let mut e = RawPunch::new(config(Plan::Direct, 20000), t0).expect("raw");
        let (_, est) = answered(&mut e, t0);
        if early {
            e.sending_early(est.remote);
        }
        let isn1 = e.isn().wrapping_add(1);
        e.handle_seen(t0, &tcp(peer(20000), segment, 1001, isn1, o));
        assert_eq!(e.poll_confirmed(), Some(peer(20000)));
        assert_eq!(e.poll_data_again().is_some(), again, "{early} {segment:?}");
    }
}

#[test]
fn sim_raw_cones_meet_when_the_tls_client_speaks_early() {
    for latency in [0, 40] {
        let mut w = world([cone(), cone()], latency, 0);
        let t0 = w.now;
        let rtt = Duration::from_millis(2 * latency);
        let (ca, _) = side(&mut w, 0, 9);
        let (cb, _) = side(&mut w, 1, 10);
        let mut a = raw_host(ca, 0, 1, rtt, None, t0);
        let mut b = raw_host(cb, 1, 1, rtt, None, t0).early();
        let r = w.run([&mut a, &mut b], t0 + Duration::from_secs(12));
        assert_one_connection(&w, &r.expect("connected"));
    }
}

#[test]
fn sim_raw_an_early_first_flight_survives_a_lost_syn_ack_by_our_syn_again() {
    // B plays the TLS client: its first data right behind the SYN-ACK takes B's NAT to
    // ESTABLISHED, where it drops B's repeated SYN-ACKs (original SYN-ACK there is invalid).
    // B's repeated SYN passes (ignored there) and A answers it as a SYN of a simultaneous
    // open.
    let (_, b, r) = lost_syn_ack(true);
    let [ea, eb] = r.expect("B's SYN again finishes the handshake");
    assert_eq!((ea.snd_nxt, ea.rcv_nxt), (eb.rcv_nxt, eb.snd_nxt));
    assert_eq!(b.engine.synacks, 1, "no SYN-ACK repeated into B's NAT");
}

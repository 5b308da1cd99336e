//! The TLS client's hello in our SYNs ([`RawConfig::syn_data`]), and the peer's taken from
//! its SYN.

use super::*;

const HELLO: &[u8] = b"client hello";

fn with_hello(plan: Plan, peer_port: u16) -> RawConfig {
    RawConfig {
        syn_data: HELLO.to_vec(),
        ..config(plan, peer_port)
    }
}

/// The engine for `cfg` with its first SYN out.
fn sent_first(cfg: RawConfig, t0: Instant) -> RawPunch {
    let mut e = RawPunch::new(cfg, t0).expect("raw");
    e.handle_timeout(t0);
    drain(&mut e);
    e
}

fn len() -> u32 {
    HELLO.len() as u32
}

#[test]
fn full_ttl_syns_to_the_predicted_port_carry_the_hello_and_no_others() {
    let t0 = Instant::now();
    let mut cfg = with_hello(Plan::Window { delta: 1 }, 20000);
    cfg.prime_ttl = Some(2);
    let mut e = RawPunch::new(cfg, t0).expect("raw");
    assert_eq!(e.syn_data(), HELLO);
    let sent = run(&mut e, t0, Duration::from_secs(2));
    let to_predicted: Vec<(u8, bool)> = sent
        .iter()
        .filter(|(_, c)| c.dst.port() == 20000)
        .map(|(_, c)| (c.ttl, c.data))
        .collect();
    // The primed first SYN dies on the way: no hello; every full-TTL one carries it.
    assert_eq!(to_predicted[0], (2, false));
    assert!(to_predicted.len() > 2);
    assert!(to_predicted[1..]
        .iter()
        .all(|&(ttl, data)| ttl == 64 && data));
    assert!(sent
        .iter()
        .filter(|(_, c)| c.dst.port() != 20000)
        .all(|(_, c)| !c.data));
    // Nothing to carry: no SYN is marked.
    let mut e = RawPunch::new(config(Plan::Direct, 20000), t0).expect("raw");
    assert!(run(&mut e, t0, Duration::from_secs(1))
        .iter()
        .all(|(_, c)| !c.data));
}

#[test]
fn a_syn_ack_that_takes_the_hello_puts_the_socket_past_it() {
    let t0 = Instant::now();
    let mut e = sent_first(with_hello(Plan::Direct, 20000), t0);
    let past = e.isn().wrapping_add(1).wrapping_add(len());
    let o = TcpOptions::default();
    e.handle_seen(t0, &tcp(peer(20000), Segment::SynAck, 7000, past, o));
    let third = drain(&mut e);
    assert_eq!(
        third
            .iter()
            .map(|c| (c.flags, c.seq, c.ack))
            .collect::<Vec<_>>(),
        [(Flags::Ack, past, 7001)]
    );
    let est = e.poll_established().expect("established");
    assert_eq!((est.snd_nxt, est.first_flight), (past, Some(true)));
    // The peer repeats its SYN-ACK: our third segment again.
    e.handle_seen(t0, &tcp(peer(20000), Segment::SynAck, 7000, past, o));
    assert_eq!(drain(&mut e).len(), 1);

    // A peer that ignores data in a SYN (Linux does, RFC 9293 allows it) acknowledges the
    // SYN alone: the socket starts before the hello and sends it.
    let mut e = sent_first(with_hello(Plan::Direct, 20000), t0);
    let after_syn = e.isn().wrapping_add(1);
    e.handle_seen(t0, &tcp(peer(20000), Segment::SynAck, 7000, after_syn, o));
    let est = e.poll_established().expect("established");
    assert_eq!((est.snd_nxt, est.first_flight), (after_syn, Some(false)));
}

#[test]
fn only_the_4_tuple_our_hello_went_to_accepts_an_ack_past_it() {
    let t0 = Instant::now();
    let mut e = RawPunch::new(with_hello(Plan::Window { delta: 1 }, 20000), t0).expect("raw");
    run(&mut e, t0, Duration::from_millis(50));
    let past = e.isn().wrapping_add(1).wrapping_add(len());
    let o = TcpOptions::default();
    // Port 20001 got SYNs without the hello: an ACK past it acknowledges nothing we sent.
    e.handle_seen(t0, &tcp(peer(20001), Segment::SynAck, 7000, past, o));
    e.handle_seen(t0, &tcp(peer(20001), Segment::Rst, 0, past, o));
    assert!(e.poll_established().is_none());
    assert_eq!(e.planner().refused, 0);
    // On the predicted port, a RST acknowledging the SYN and its data refuses the attempt.
    e.handle_seen(t0, &tcp(peer(20000), Segment::Rst, 0, past, o));
    assert_eq!(e.planner().refused, 1);
}

#[test]
fn the_peers_syn_answered_on_the_hellos_4_tuple_leaves_the_hello_to_the_socket() {
    let t0 = Instant::now();
    let mut e = sent_first(with_hello(Plan::Direct, 20000), t0);
    e.handle_seen(
        t0,
        &tcp(peer(20000), Segment::Syn, 1000, 0, TcpOptions::default()),
    );
    let est = e.poll_established().expect("established");
    // Whether the peer took our hello is not known yet: the socket sends it.
    assert_eq!(
        (est.snd_nxt, est.first_flight),
        (e.isn().wrapping_add(1), Some(false))
    );
    // Elsewhere our SYNs carried nothing.
    e.handle_seen(
        t0,
        &tcp(peer(20005), Segment::Syn, 1000, 0, TcpOptions::default()),
    );
    assert_eq!(
        e.poll_established().expect("established").first_flight,
        None
    );
}

#[test]
fn the_data_of_the_peers_syn_is_taken_and_acknowledged_again_on_its_repeat() {
    let t0 = Instant::now();
    let mut e = sent_first(config(Plan::Direct, 20000), t0);
    let syn = tcp(peer(20000), Segment::Syn, 1000, 0, TcpOptions::default());
    e.handle_seen_with(t0, &syn, b"their hello");
    let sa = drain(&mut e);
    assert_eq!(
        sa.iter().map(|c| (c.flags, c.ack)).collect::<Vec<_>>(),
        [(Flags::SynAck, 1001 + 11)]
    );
    let est = e.poll_established().expect("established");
    assert_eq!(
        (est.rcv_nxt, est.received.as_slice(), est.awaiting_peer),
        (1012, &b"their hello"[..], true)
    );
    // Our SYN-ACK was lost: the peer's repeat (with or without the data) gets the same ack.
    e.handle_seen(t0, &syn);
    assert_eq!(drain(&mut e)[0].ack, 1012);
    // Unconfirmed, our SYN-ACK is repeated with it too, after three round trips (the
    // estimate, 100 ms): this socket answers the hello at once, and a repeat that crosses the
    // peer's late confirmation would put the NATs' tracking back to before our answer.
    let later = run(&mut e, t0, Duration::from_millis(350));
    let repeats: Vec<u128> = later
        .iter()
        .filter(|(_, c)| c.flags == Flags::SynAck && c.ack == 1012)
        .map(|(at, _)| at.as_millis())
        .collect();
    assert_eq!(repeats, [300]);
}

/// Every SYN has one sequence number, so a RST to an earlier one fails the attempt while a
/// later one, with the hello, is still on its way to a peer that may take it. Whatever comes
/// back on that 4-tuple before the repeat belongs to the session whose hello went out.
#[test]
fn the_hello_stays_ours_after_its_attempt_was_refused() {
    let t0 = Instant::now();
    let past = |e: &RawPunch| e.isn().wrapping_add(1).wrapping_add(len());
    let o = TcpOptions::default();
    let refused = |t0| {
        let mut e = sent_first(with_hello(Plan::Direct, 20000), t0);
        let rst = tcp(peer(20000), Segment::Rst, 0, past(&e), o);
        e.handle_seen(t0, &rst);
        assert_eq!(e.planner().refused, 1);
        e
    };
    // The peer's SYN before our repeat: the socket sends the same hello.
    let mut e = refused(t0);
    e.handle_seen(t0, &tcp(peer(20000), Segment::Syn, 1000, 0, o));
    let est = e.poll_established().expect("established");
    assert_eq!(
        (est.snd_nxt, est.first_flight),
        (e.isn().wrapping_add(1), Some(false))
    );
    // The peer's SYN-ACK that took the hello: the socket is past it.
    let mut e = refused(t0);
    let ack = past(&e);
    e.handle_seen(t0, &tcp(peer(20000), Segment::SynAck, 7000, ack, o));
    let est = e.poll_established().expect("established");
    assert_eq!((est.snd_nxt, est.first_flight), (ack, Some(true)));
}

/// The peer's SYN-ACK was lost between our NAT and us, and the peer spoke right behind it:
/// only its data gets through (the NATs' tracking drops the repeats of both SYN and SYN-ACK),
/// acknowledging our SYN. The handshake finishes from it: the data starts the peer's stream,
/// goes to the socket, and is acknowledged at once. A pure ACK names no ISN, and what does
/// not acknowledge our SYN is not ours; once finished, the 4-tuple is the socket's.
#[test]
fn the_peers_data_finishes_the_handshake_when_its_syn_ack_was_lost() {
    let t0 = Instant::now();
    let flight = b"server flight";
    let flight_end = 7001 + flight.len() as u32;
    let o = TcpOptions {
        timestamps: Some((5000, 0)),
        ..TcpOptions::default()
    };
    let data = |seq, ack| tcp(peer(20000), Segment::Other, seq, ack, o);

    let mut e = sent_first(with_hello(Plan::Direct, 20000), t0);
    let past = e.isn().wrapping_add(1).wrapping_add(len());
    e.handle_seen(t0, &data(7001, past));
    e.handle_seen_with(t0, &data(7001, past.wrapping_add(9)), flight);
    e.handle_seen_with(t0, &data(7001, 12345), flight);
    assert!(drain(&mut e).is_empty() && e.poll_established().is_none());
    e.handle_seen_with(t0, &data(7001, past), flight);
    let est = e.poll_established().expect("established from the data");
    assert_eq!(
        (est.remote, est.snd_nxt, est.rcv_nxt, est.first_flight),
        (peer(20000), past, flight_end, Some(true))
    );
    assert_eq!(est.received, flight);
    assert!(!est.awaiting_peer, "nothing to wait for: the peer is up");
    assert_eq!(est.theirs.timestamps, Some((5000, 0)));
    assert_eq!(est.ours.timestamps.map(|t| t.1), Some(5000));
    let sent: Vec<_> = drain(&mut e)
        .iter()
        .map(|c| (c.flags, c.seq, c.ack, c.dst))
        .collect();
    assert_eq!(sent, [(Flags::Ack, past, flight_end, peer(20000))]);
    // Its repeat is the socket's now.
    e.handle_seen_with(t0, &data(7001, past), flight);
    assert!(drain(&mut e).is_empty() && e.poll_established().is_none());
    // Until the peer acknowledges what our socket sends next, our NAT may be dropping it (its
    // SYN-ACK never reached our NAT, which is then in SYN_SENT): the peer's repeated SYN is
    // answered, acknowledging the SYN alone, and our first data is due again right behind.
    assert!(e.awaiting_ack_of_data(peer(20000)));
    e.handle_seen(t0, &tcp(peer(20000), Segment::Syn, 6999, 0, o));
    assert!(drain(&mut e).is_empty(), "not the ISN the data named");
    e.handle_seen(t0, &tcp(peer(20000), Segment::Syn, 7000, 0, o));
    let sent: Vec<_> = drain(&mut e)
        .iter()
        .map(|c| (c.flags, c.seq, c.ack, c.data))
        .collect();
    // With the hello the peer took: the peer's NAT resyncs from it (see `on_syn`).
    assert_eq!(sent, [(Flags::SynAck, e.isn(), 7001, true)]);
    assert_eq!(e.poll_data_again(), Some(peer(20000)));
    // The peer's challenge ACK acknowledges no more than before; its ACK of our data does.
    e.handle_seen(t0, &data(flight_end, past));
    assert!(e.awaiting_ack_of_data(peer(20000)) && e.poll_confirmed().is_none());
    e.handle_seen(t0, &data(flight_end, past.wrapping_add(40)));
    assert!(!e.awaiting_ack_of_data(peer(20000)));
    assert_eq!(e.poll_confirmed(), Some(peer(20000)));

    // A peer that did not take the hello acknowledges the SYN alone: the socket starts
    // before the hello and sends it.
    let mut e = sent_first(with_hello(Plan::Direct, 20000), t0);
    let after_syn = e.isn().wrapping_add(1);
    e.handle_seen_with(t0, &data(7001, after_syn), flight);
    let est = e.poll_established().expect("established from the data");
    assert_eq!(
        (est.snd_nxt, est.rcv_nxt, est.first_flight),
        (after_syn, flight_end, Some(false))
    );
    drain(&mut e);
    e.handle_seen(t0, &tcp(peer(20000), Segment::Syn, 7000, 0, o));
    let synack = drain(&mut e);
    assert_eq!(synack.len(), 1);
    assert!(!synack[0].data, "a hello the peer did not take stays out");
}

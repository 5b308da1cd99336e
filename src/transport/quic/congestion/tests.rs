use super::*;

#[test]
fn the_window_is_the_larger_of_bbrs_and_cubics() {
    let now = Instant::now();
    let mut c = Arc::new(BbrBesideConfig).build(now, 1200);
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
    let server = super::super::server_config(&b, pin(&a), provider.clone(), Duration::ZERO)
        .expect("server config");
    let client = super::super::client_config(&a, pin(&b), provider.clone(), Duration::ZERO)
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

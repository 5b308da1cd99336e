//! The client against the real server machine ([`Rendezvous`]) on a virtual clock: a tiny
//! network that delivers every datagram after a fixed one-way delay, and drops the ones a
//! test chooses.

use super::*;
use crate::core::classify::{Allocation, Behavior};
use crate::core::rendezvous::{
    Change, MemoryRegistry, Out, Registry, RegistryError, Rendezvous, RendezvousConfig, Session,
};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), 3478);
/// One way, every link; the clients' configured RTT is twice this.
const DELAY: Duration = Duration::from_millis(20);
const SESSION: &str = "lab";

fn addr(n: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, n)), 40_000)
}

fn id(n: u8) -> String {
    format!("{:016x}", 0xabc0 + u64::from(n))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn nat() -> NatInfo {
    NatInfo {
        mapping: Behavior::EndpointIndependent,
        filtering: Behavior::AddressAndPortDependent,
        allocation: Allocation::Preserving,
        delta: None,
        range: None,
    }
}

/// A well-formed offer whose predicted port tells the versions apart.
fn offer(port: u16) -> TcpOffer {
    TcpOffer {
        local_port: 5000,
        port,
        nat: nat(),
        fp: "ab".repeat(32),
        mac: "cd".repeat(32),
    }
}

struct Peer {
    addr: SocketAddr,
    client: Client,
    events: Vec<(Instant, ClientEvent)>,
    /// Registers as they left, decoded.
    sent: Vec<(Instant, Msg)>,
    /// What reached the client from the server, decoded.
    received: Vec<(Instant, Msg)>,
    /// The next port a refreshed offer predicts.
    next_offer_port: u16,
}

impl Peer {
    fn introduction(&self) -> Option<(Instant, &Introduction)> {
        self.events.iter().find_map(|(t, e)| match e {
            ClientEvent::Introduced(i) => Some((*t, &**i)),
            _ => None,
        })
    }

    fn failure(&self) -> Option<(Instant, &Error)> {
        self.events.iter().find_map(|(t, e)| match e {
            ClientEvent::Failed(err) => Some((*t, err)),
            _ => None,
        })
    }

    fn refreshes(&self) -> Vec<Instant> {
        self.events
            .iter()
            .filter(|(_, e)| matches!(e, ClientEvent::RefreshTcpOffer))
            .map(|(t, _)| *t)
            .collect()
    }

    /// The `key` member of every register sent, in order.
    fn keys_sent(&self) -> Vec<bool> {
        self.sent
            .iter()
            .map(|(_, m)| matches!(m, Msg::Register { key: Some(_), .. }))
            .collect()
    }

    fn errors_received(&self, code: ErrorCode) -> Vec<Instant> {
        self.received
            .iter()
            .filter(|(_, m)| matches!(m, Msg::Error { code: c, .. } if *c == code))
            .map(|(t, _)| *t)
            .collect()
    }
}

type DropRule = Box<dyn FnMut(SocketAddr, SocketAddr, &Msg) -> bool>;

struct Net {
    t0: Instant,
    now: Instant,
    server: Rendezvous,
    peers: Vec<Peer>,
    /// Datagrams on their way: when they arrive, from, to, bytes.
    flight: Vec<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
    drop: DropRule,
    dropped: Vec<(Instant, SocketAddr, Msg)>,
    next_expire: Instant,
}

impl Net {
    fn new() -> Self {
        Self::with_server(|| Rendezvous::new(RendezvousConfig::default()))
    }

    fn with_server(make: impl FnOnce() -> Rendezvous) -> Self {
        let server = make();
        // After the registry's creation: its clock must not start later than ours.
        let t0 = Instant::now();
        Net {
            t0,
            now: t0,
            server,
            peers: Vec::new(),
            flight: Vec::new(),
            drop: Box::new(|_, _, _| false),
            dropped: Vec::new(),
            next_expire: t0,
        }
    }

    fn at(&self, d: Duration) -> Instant {
        self.t0 + d
    }

    fn config(&self, n: u8, secret: &str, timeout: Duration) -> ClientConfig {
        ClientConfig {
            server: SERVER,
            session: SESSION.into(),
            secret: secret.as_bytes().to_vec(),
            peer_id: id(n),
            locals: vec![SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)),
                40_000,
            )],
            nat: nat(),
            tcp: None,
            mapped: None,
            relayed: None,
            rtt: 2 * DELAY,
            deadline: self.now + timeout,
            timeout,
            start_delay: Duration::ZERO,
            range_drift: None,
            udp_blocked: false,
            relay_hold: true,
        }
    }

    /// Starts peer `n` now; returns its index.
    fn join(&mut self, n: u8, cfg: ClientConfig) -> usize {
        let next_offer_port = cfg.tcp.as_ref().map_or(0, |o| o.port + 1);
        self.peers.push(Peer {
            addr: addr(n),
            client: Client::new(cfg, self.now),
            events: Vec::new(),
            sent: Vec::new(),
            received: Vec::new(),
            next_offer_port,
        });
        self.step();
        self.peers.len() - 1
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        let msg = Msg::decode(&bytes).expect("both sides send valid messages");
        if (self.drop)(from, to, &msg) {
            self.dropped.push((self.now, to, msg));
        } else {
            self.flight.push((self.now + DELAY, from, to, bytes));
        }
    }

    fn next_event(&self) -> Instant {
        let flight = self.flight.iter().map(|f| f.0);
        let timers = self.peers.iter().filter_map(|p| p.client.poll_timeout());
        flight.chain(timers).fold(self.next_expire, Instant::min)
    }

    fn run_until(&mut self, end: Instant) {
        for _ in 0..1_000_000 {
            let next = self.next_event();
            if next > end {
                self.now = end;
                return;
            }
            self.now = next.max(self.now);
            self.step();
        }
        panic!("the simulation does not advance");
    }

    fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Everything due at `now`, in the order a driver does it.
    fn step(&mut self) {
        let now = self.now;
        let (due, later) = std::mem::take(&mut self.flight)
            .into_iter()
            .partition::<Vec<_>, _>(|f| f.0 <= now);
        self.flight = later;
        for (_, from, to, bytes) in due {
            if to == SERVER {
                for (dst, b) in self.server.handle(now, from, &bytes) {
                    self.send(SERVER, dst, b);
                }
            } else if let Some(p) = self.peers.iter_mut().find(|p| p.addr == to) {
                let msg = Msg::decode(&bytes).expect("valid");
                p.received.push((now, msg));
                p.client.handle_input(now, 0, from, &bytes);
            }
        }
        if now >= self.next_expire {
            for (dst, b) in self.server.expire(now) {
                self.send(SERVER, dst, b);
            }
            self.next_expire = now + ms(100);
        }
        let mut out = Vec::new();
        let t0 = self.t0;
        for p in &mut self.peers {
            if p.client.poll_timeout().is_some_and(|t| t <= now) {
                p.client.handle_timeout(now);
            }
            while let Some(ev) = p.client.poll_event() {
                if matches!(ev, ClientEvent::RefreshTcpOffer) {
                    p.client.set_tcp_offer(offer(p.next_offer_port));
                    p.next_offer_port += 1;
                }
                if matches!(ev, ClientEvent::MeasureCounter) {
                    // A counter that others move 100 ports a second from 20000.
                    let port = 20_000 + (now - t0).as_millis() / 10;
                    p.client.counter_measured(now, port as u16);
                }
                p.events.push((now, ev));
            }
            while let Some(t) = p.client.poll_transmit() {
                assert_eq!(t.dst, SERVER);
                let b = t.payload;
                p.sent.push((now, Msg::decode(&b).expect("valid register")));
                out.push((p.addr, b));
            }
        }
        for (from, b) in out {
            self.send(from, SERVER, b);
        }
    }
}

fn is_peer_msg(m: &Msg) -> bool {
    matches!(m, Msg::Peer { .. })
}

#[test]
fn two_peers_are_introduced_with_the_same_start() {
    let mut net = Net::new();
    let a = net.join(1, net.config(1, "s3cret", Duration::from_secs(30)));
    net.run_for(ms(1000));
    let b = net.join(2, net.config(2, "s3cret", Duration::from_secs(30)));
    net.run_for(ms(1000));

    let (ta, ia) = net.peers[a].introduction().expect("a introduced");
    let (tb, ib) = net.peers[b].introduction().expect("b introduced");
    assert_eq!(ia.peer.id, id(2));
    assert_eq!(ia.peer.public, addr(2));
    assert_eq!(ia.me, addr(1));
    assert_eq!(ib.peer.id, id(1));
    assert_eq!(ib.me, addr(2));
    // The server's clock counts whole milliseconds: both starts agree to within that.
    let gap = ia.start.max(ib.start) - ia.start.min(ib.start);
    assert!(gap <= ms(2), "starts {gap:?} apart");
    assert!(
        ia.start > ta && ib.start > tb,
        "the start lies ahead of both"
    );
    // A was told once that it waits; B never waited.
    let waits: Vec<_> = net.peers[a]
        .events
        .iter()
        .filter(|(_, e)| matches!(e, ClientEvent::Waiting { .. }))
        .collect();
    assert_eq!(waits.len(), 1);
    assert!(matches!(
        waits[0].1,
        ClientEvent::Waiting { wait_left_ms } if wait_left_ms == 60_000
    ));
    // Trust on first use: the first register of each side goes without the key, the server
    // answers unknown-session only to A (the session's creator), and A's key goes out once.
    assert_eq!(net.peers[a].keys_sent()[..3], [false, true, false]);
    assert!(!net.peers[b].keys_sent().contains(&true));
    // Re-registered every 300 ms while waiting (the one after unknown-session at once).
    let sent: Vec<_> = net.peers[a].sent.iter().map(|(t, _)| *t - net.t0).collect();
    assert_eq!(sent[..4], [ms(0), ms(40), ms(340), ms(640)]);
    // Done: no more timers, no more registers.
    assert!(net.peers[a].client.poll_timeout().is_none());
    let before = net.peers[a].sent.len();
    net.run_for(ms(2000));
    assert_eq!(net.peers[a].sent.len(), before);
}

/// A registry that can be switched off, like a Redis the server cannot reach.
struct Flaky {
    inner: MemoryRegistry,
    down: Arc<Mutex<bool>>,
}

impl Registry for Flaky {
    fn transact(
        &mut self,
        now: Instant,
        name: &str,
        f: &mut dyn FnMut(u64, Option<Session>) -> (Change, Out),
    ) -> Result<Out, RegistryError> {
        if *self.down.lock().unwrap() {
            return Err(RegistryError::Unavailable(
                "switched off by the test".into(),
            ));
        }
        self.inner.transact(now, name, f)
    }

    fn sweep(&mut self, now: Instant, f: &mut dyn FnMut(u64, &Session) -> (Change, Out)) -> Out {
        if *self.down.lock().unwrap() {
            return Vec::new();
        }
        self.inner.sweep(now, f)
    }

    fn sessions(&self) -> Option<usize> {
        self.inner.sessions()
    }
}

fn flaky_net() -> (Net, Arc<Mutex<bool>>) {
    let down = Arc::new(Mutex::new(false));
    let d = down.clone();
    let net = Net::with_server(move || {
        Rendezvous::with_registry(
            RendezvousConfig::default(),
            Box::new(Flaky {
                inner: MemoryRegistry::new(),
                down: d,
            }),
        )
    });
    (net, down)
}

#[test]
fn registry_outages_within_the_grace_are_ridden_out() {
    let (mut net, down) = flaky_net();
    let a = net.join(1, net.config(1, "s3cret", Duration::from_secs(30)));
    net.run_for(ms(500));
    // Two outages of 1.2 s each, 2.4 s in all: only a grace that restarts once the registry
    // answered again covers both.
    for _ in 0..2 {
        *down.lock().unwrap() = true;
        net.run_for(ms(1200));
        *down.lock().unwrap() = false;
        net.run_for(ms(600));
    }
    let b = net.join(2, net.config(2, "s3cret", Duration::from_secs(30)));
    net.run_for(ms(1000));

    let unavailable = net.peers[a].errors_received(ErrorCode::RegistryUnavailable);
    assert!(unavailable.len() >= 6, "outages seen: {unavailable:?}");
    assert!(
        net.peers[a].failure().is_none(),
        "{:?}",
        net.peers[a].failure()
    );
    assert_eq!(net.peers[a].introduction().unwrap().1.peer.id, id(2));
    assert_eq!(net.peers[b].introduction().unwrap().1.peer.id, id(1));
}

#[test]
fn a_registry_down_past_the_grace_fails() {
    let (mut net, down) = flaky_net();
    let a = net.join(1, net.config(1, "s3cret", Duration::from_secs(30)));
    net.run_for(ms(500));
    *down.lock().unwrap() = true;
    net.run_for(ms(5000));

    let first = net.peers[a].errors_received(ErrorCode::RegistryUnavailable)[0];
    let (t, err) = net.peers[a].failure().expect("a gave up");
    assert!(
        matches!(err, Error::RegistryUnavailable { server } if *server == SERVER),
        "{err}"
    );
    assert_eq!(err.exit_code(), 3);
    // The first answer at or past the grace ends it (answers come every 300 ms).
    let after = t - first;
    assert!(
        after >= REGISTRY_GRACE && after < REGISTRY_GRACE + ms(300),
        "{after:?}"
    );
}

#[test]
fn a_forgotten_session_is_created_again_with_the_key() {
    let mut net = Net::new();
    let a = net.join(1, net.config(1, "s3cret", Duration::from_secs(30)));
    net.run_for(ms(1000));
    // The server restarts and loses every session.
    let forgot = net.now;
    net.server = Rendezvous::new(RendezvousConfig::default());
    net.run_for(ms(1000));

    let peer = &net.peers[a];
    let unknown: Vec<_> = peer.errors_received(ErrorCode::UnknownSession);
    assert_eq!(unknown.len(), 2, "once at creation, once after the restart");
    // The register right after the second unknown-session carries the key again, and the
    // session exists once more (A waits in it) before B even comes.
    let resent = peer
        .sent
        .iter()
        .find(|(t, m)| *t >= unknown[1] && matches!(m, Msg::Register { key: Some(_), .. }))
        .expect("key handed over again");
    assert_eq!(resent.0, unknown[1], "at once");
    assert!(peer
        .received
        .iter()
        .any(|(t, m)| *t > forgot && matches!(m, Msg::Waiting { .. })));
    // Only that one register after the restart carried the key.
    let keys_after: usize = peer
        .sent
        .iter()
        .filter(|(t, m)| *t > forgot && matches!(m, Msg::Register { key: Some(_), .. }))
        .count();
    assert_eq!(keys_after, 1);

    let b = net.join(2, net.config(2, "s3cret", Duration::from_secs(30)));
    net.run_for(ms(1000));
    assert!(
        !net.peers[b].keys_sent().contains(&true),
        "B found the session"
    );
    assert_eq!(net.peers[a].introduction().unwrap().1.peer.id, id(2));
    assert_eq!(net.peers[b].introduction().unwrap().1.peer.id, id(1));
}

#[test]
fn a_peer_with_another_secret_is_rejected_and_counted() {
    let mut net = Net::new();
    let a = net.join(1, net.config(1, "right", Duration::from_secs(10)));
    net.run_for(ms(1000));
    let b = net.join(2, net.config(2, "wrong", Duration::from_secs(10)));
    net.run_for(ms(10_000));

    let (_, err) = net.peers[b].failure().expect("b refused");
    assert!(
        matches!(err, Error::SessionKeyMismatch { session } if session == SESSION),
        "{err}"
    );
    assert_eq!(err.exit_code(), 7);

    let stranger: Vec<_> = net.peers[a]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            ClientEvent::StrangerRejected { count } => Some(*count),
            _ => None,
        })
        .collect();
    assert_eq!(stranger, [1], "said once, when the count grew");
    let (t, err) = net.peers[a].failure().expect("a timed out");
    assert_eq!(t, net.at(Duration::from_secs(10)), "at the deadline");
    assert!(
        matches!(
            err,
            Error::WrongSecretPeer { session, rejected: 1, waited_s: 10 } if session == SESSION
        ),
        "{err}"
    );
    assert_eq!(err.exit_code(), 7);
    assert!(net.peers[a].introduction().is_none());
}

#[test]
fn a_lost_introduction_comes_with_the_next_register() {
    let mut net = Net::new();
    let mut lost = 0;
    net.drop = Box::new(move |_, to, m| {
        let drop = to == addr(1) && is_peer_msg(m) && lost == 0;
        lost += usize::from(drop);
        drop
    });
    let a = net.join(1, net.config(1, "s3cret", Duration::from_secs(30)));
    net.run_for(ms(1000));
    let b = net.join(2, net.config(2, "s3cret", Duration::from_secs(30)));
    net.run_for(ms(1000));

    assert_eq!(net.dropped.len(), 1);
    let lost_at = net.dropped[0].0;
    let (ta, ia) = net.peers[a].introduction().expect("a introduced after all");
    assert_eq!(ia.peer.id, id(2));
    // By the next re-register's answer: at most 300 ms and a round trip later.
    assert!(
        ta > lost_at && ta <= lost_at + REGISTER_EVERY + 2 * DELAY,
        "{:?}",
        ta - lost_at
    );
    assert!(net.peers[b].introduction().is_some());
}

#[test]
fn a_waiting_tcp_peer_refreshes_its_offer_and_the_peer_gets_the_new_one() {
    let mut net = Net::new();
    let mut cfg = net.config(1, "s3cret", Duration::from_secs(60));
    cfg.tcp = Some(offer(6000));
    let a = net.join(1, cfg);
    net.run_for(Duration::from_secs(25));
    let refreshes = net.peers[a].refreshes();
    assert_eq!(refreshes.len(), 1, "{refreshes:?}");
    // The first register due 20 s or more after the offer was made.
    let after = refreshes[0] - net.t0;
    assert!(
        after >= OFFER_REFRESH && after < OFFER_REFRESH + REGISTER_EVERY,
        "{after:?}"
    );
    // The register that went out at that moment already carried the new offer.
    let sent_then = net.peers[a]
        .sent
        .iter()
        .find(|(t, _)| *t == refreshes[0])
        .expect("a register went out");
    assert!(matches!(&sent_then.1, Msg::Register { tcp: Some(o), .. } if o.port == 6001));

    let mut cfg = net.config(2, "s3cret", Duration::from_secs(60));
    cfg.tcp = Some(offer(7000));
    let b = net.join(2, cfg);
    net.run_for(ms(1000));
    let ib = net.peers[b].introduction().expect("b introduced").1;
    assert_eq!(ib.peer.tcp, Some(offer(6001)), "the refreshed offer");
    let ia = net.peers[a].introduction().expect("a introduced").1;
    assert_eq!(ia.peer.tcp, Some(offer(7000)));
    // B never waited, so it never refreshed.
    assert!(net.peers[b].refreshes().is_empty());
}

#[test]
fn a_udp_peer_never_asks_for_an_offer() {
    let mut net = Net::new();
    let a = net.join(1, net.config(1, "s3cret", Duration::from_secs(60)));
    net.run_for(Duration::from_secs(45));
    assert!(net.peers[a].refreshes().is_empty());
}

#[test]
fn a_silent_server_is_unreachable_after_five_seconds() {
    let mut net = Net::new();
    let a = net.join(1, net.config(1, "s3cret", Duration::from_secs(30)));
    net.run_for(ms(2000));
    // From now on nothing reaches the server.
    net.drop = Box::new(|_, to, _| to == SERVER);
    net.run_for(ms(10_000));

    let last_answer = net.peers[a].received.last().expect("answers came").0;
    let (t, err) = net.peers[a].failure().expect("a gave up");
    assert_eq!(t - last_answer, SERVER_SILENCE);
    assert!(
        matches!(err, Error::ServerUnreachable { server, waited_ms: 5000 } if *server == SERVER),
        "{err}"
    );
    assert_eq!(err.exit_code(), 3);
    // It kept registering all along the silence.
    let during = net.peers[a]
        .sent
        .iter()
        .filter(|(s, _)| *s > last_answer && *s < t)
        .count();
    assert!(during >= 16, "{during} registers");
}

#[test]
fn nobody_coming_ends_at_the_deadline() {
    let mut net = Net::new();
    let a = net.join(1, net.config(1, "s3cret", Duration::from_secs(3)));
    net.run_for(ms(5000));
    let (t, err) = net.peers[a].failure().expect("a gave up");
    assert_eq!(t, net.at(Duration::from_secs(3)));
    assert!(
        matches!(err, Error::PeerNeverCame { session, waited_s: 3 } if session == SESSION),
        "{err}"
    );
    assert_eq!(err.exit_code(), 5);
    // 0, 40 (with the key), then every 300 ms up to the deadline.
    assert_eq!(net.peers[a].sent.len(), 11);
}

#[test]
fn the_server_giving_up_on_the_peer_is_the_same_failure() {
    let mut net = Net::with_server(|| {
        Rendezvous::new(RendezvousConfig {
            wait_timeout: Duration::from_secs(2),
            ..Default::default()
        })
    });
    let a = net.join(1, net.config(1, "s3cret", Duration::from_secs(30)));
    net.run_for(ms(5000));
    let (t, err) = net.peers[a].failure().expect("a gave up");
    assert!(t < net.at(Duration::from_secs(3)));
    assert!(
        matches!(err, Error::PeerNeverCame { waited_s: 30, .. }),
        "{err}"
    );
}

#[test]
fn a_third_peer_finds_the_session_taken() {
    let mut net = Net::new();
    net.join(1, net.config(1, "s3cret", Duration::from_secs(30)));
    net.join(2, net.config(2, "s3cret", Duration::from_secs(30)));
    net.run_for(ms(500));
    let c = net.join(3, net.config(3, "s3cret", Duration::from_secs(30)));
    net.run_for(ms(500));
    let (_, err) = net.peers[c].failure().expect("c refused");
    assert!(matches!(err, Error::SessionTaken { .. }), "{err}");
    assert_eq!(err.exit_code(), 6);
}

#[test]
fn strangers_and_junk_are_ignored() {
    let mut c = Client::new(
        Net::new().config(1, "s3cret", Duration::from_secs(30)),
        Instant::now(),
    );
    let now = Instant::now();
    let refusal = Msg::Error {
        code: ErrorCode::SessionFull,
        message: "full".into(),
    }
    .encode();
    // The same refusal from anyone but the server, and junk from the server, change nothing.
    c.handle_input(now, 0, addr(9), &refusal);
    c.handle_input(now, 0, SERVER, b"PRV1{not json");
    c.handle_input(now, 0, SERVER, &[0u8; 20]);
    assert!(c.poll_event().is_none());
    assert!(!c.is_done());
    c.handle_input(now, 0, SERVER, &refusal);
    assert!(matches!(
        c.poll_event(),
        Some(ClientEvent::Failed(Error::SessionTaken { .. }))
    ));
}

/// A busy counter's search range moves with it while we wait (#10): the waiting side
/// measures its counter anew every second and extrapolates in between, so the peer who
/// comes 10 s later is told where the counter is then, not where the probe saw it.
#[test]
fn a_drifting_search_range_is_moved_on_while_waiting() {
    let mut net = Net::new();
    let mut cfg = net.config(1, "s3cret", Duration::from_secs(60));
    cfg.nat.range = Some([20_000, 20_200]);
    cfg.range_drift = Some(100.0);
    let a = net.join(1, cfg);
    net.run_for(Duration::from_secs(10));
    let measures = net.peers[a]
        .events
        .iter()
        .filter(|(_, e)| matches!(e, ClientEvent::MeasureCounter))
        .count();
    assert!((8..=10).contains(&measures), "{measures}");
    let b = net.join(2, net.config(2, "s3cret", Duration::from_secs(60)));
    net.run_for(ms(1000));
    let ib = net.peers[b].introduction().expect("b introduced").1;
    let [lo, hi] = ib.peer.nat.range.expect("a range");
    // The counter is near 21000 then; the range reaches two seconds of drift past it.
    assert!((20_950..=21_050).contains(&lo), "{lo}-{hi}");
    assert_eq!(hi - lo, 200, "{lo}-{hi}");
    let first = &net.peers[a].sent[0].1;
    assert!(matches!(first, Msg::Register { nat, .. } if nat.range == Some([20_000, 20_200])));
}

/// Without a drift nothing is measured and the range stays the probe's.
#[test]
fn a_steady_range_is_left_alone() {
    let mut net = Net::new();
    let mut cfg = net.config(1, "s3cret", Duration::from_secs(60));
    cfg.nat.range = Some([20_000, 20_511]);
    let a = net.join(1, cfg);
    net.run_for(Duration::from_secs(5));
    assert!(!net.peers[a]
        .events
        .iter()
        .any(|(_, e)| matches!(e, ClientEvent::MeasureCounter)));
    assert!(net.peers[a].sent.iter().all(
        |(_, m)| matches!(m, Msg::Register { nat, .. } if nat.range == Some([20_000, 20_511]))
    ));
}

fn relay_offer(n: u8) -> crate::core::rendezvous::RelayOffer {
    crate::core::rendezvous::RelayOffer {
        addr: SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)),
            50_000 + u16::from(n),
        ),
        fp: "ab".repeat(32),
        mac: "cd".repeat(32),
    }
}

/// Both peers' allocations need the session, so they come after the match (here 1.5 s
/// into the run): the introductions wait for them and carry both offers.
#[test]
fn allocations_made_after_the_match_still_reach_both_introductions() {
    let mut net = Net::new();
    let a = net.join(1, net.config(1, "s3cret", Duration::from_secs(30)));
    net.peers[a].client.relay_pending();
    net.run_for(ms(300));
    let b = net.join(2, net.config(2, "s3cret", Duration::from_secs(30)));
    net.peers[b].client.relay_pending();
    net.run_for(ms(1200));
    assert!(net.peers[a].introduction().is_none(), "held for the offers");
    assert!(net.peers[b].introduction().is_none(), "held for the offers");
    let t = net.now;
    net.peers[a].client.set_relayed(t, relay_offer(1));
    net.run_for(ms(100));
    let t = net.now;
    net.peers[b].client.set_relayed(t, relay_offer(2));
    net.run_for(ms(1000));
    let (ta, ia) = net.peers[a].introduction().expect("a introduced");
    let (tb, ib) = net.peers[b].introduction().expect("b introduced");
    assert_eq!(ia.peer.relayed, Some(relay_offer(2)));
    assert_eq!(ib.peer.relayed, Some(relay_offer(1)));
    // The last offer goes out at once, and the held side asks again within round trips
    // (20 ms each way here), not at the usual 300 ms pace.
    for (n, at) in [("a", ta), ("b", tb)] {
        let after = at - t;
        assert!(
            after <= ms(200),
            "{n} introduced {after:?} after the last offer"
        );
    }
}

/// `connect --tcp`: the introduction comes at the match although both allocations are
/// still pending; should the punch fail, each side registers again from a new client that
/// holds, and the offers meet.
#[test]
fn without_the_relay_hold_the_introduction_comes_at_once_and_a_second_round_brings_the_offers() {
    let mut net = Net::new();
    let mut cfgs = Vec::new();
    for n in [1, 2] {
        let mut cfg = net.config(n, "s3cret", Duration::from_secs(30));
        cfg.relay_hold = false;
        let i = net.join(n, cfg.clone());
        net.peers[i].client.relay_pending();
        cfgs.push((i, n, cfg));
        net.run_for(ms(300));
    }
    for &(i, _, _) in &cfgs {
        let (t, intro) = net.peers[i]
            .introduction()
            .expect("introduced at the match");
        assert!(t - net.t0 < ms(400), "{:?}", t - net.t0);
        assert_eq!(intro.peer.relayed, None);
    }
    // The punch failed: a held round, each side with its offer by now.
    let t = net.now;
    for (i, n, mut cfg) in cfgs.clone() {
        cfg.relay_hold = true;
        cfg.relayed = Some(relay_offer(n));
        let seq = net.peers[i].client.last_seq();
        net.peers[i].client = Client::new(cfg, t).continuing(seq);
        net.peers[i].events.clear();
        net.peers[i].client.set_relayed(t, relay_offer(n));
    }
    net.run_for(ms(500));
    for (i, n, _) in cfgs {
        let (_, intro) = net.peers[i].introduction().expect("introduced again");
        assert_eq!(intro.peer.relayed, Some(relay_offer(3 - n)), "peer {n}");
    }
}

/// A peer without a relay never offers one: the other waits [`RELAY_SYNC`], then goes on.
#[test]
fn a_peer_without_a_relay_delays_the_introduction_by_the_sync_at_most() {
    let mut net = Net::new();
    let mut cfg = net.config(1, "s3cret", Duration::from_secs(30));
    cfg.relayed = Some(relay_offer(1));
    let a = net.join(1, cfg);
    net.run_for(ms(300));
    let b = net.join(2, net.config(2, "s3cret", Duration::from_secs(30)));
    net.run_for(Duration::from_secs(5));
    let (tb, ib) = net.peers[b].introduction().expect("b introduced");
    assert_eq!(ib.peer.relayed, Some(relay_offer(1)));
    assert!(tb - net.t0 < ms(400), "b has no relay and does not wait");
    let (ta, ia) = net.peers[a].introduction().expect("a introduced");
    assert_eq!(ia.peer.relayed, None);
    let waited = ta - net.t0;
    assert!(
        waited >= RELAY_SYNC && waited < RELAY_SYNC + ms(500),
        "{waited:?}"
    );
}

mod pairing;

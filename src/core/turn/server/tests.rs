//! The TURN server machine against our own TURN client machine, in-process on a virtual
//! clock: a small network that carries client transmits to the server, server transmits to
//! clients, and datagrams to outside peers (two clients of this server relay to each other
//! inside the machine, which the network checks).

use super::*;
use crate::core::stun::{ChannelData, Class, Message, Method};
use crate::core::turn::{Client, Event, TurnConfig, TurnError};
use crate::core::Machine;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

mod raw;
mod session;

pub(super) const USER: &str = "alice";
pub(super) const PASS: &str = "wonderland";

pub(super) fn relay_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1))
}
pub(super) fn server_addr() -> SocketAddr {
    SocketAddr::new(relay_ip(), 3478)
}
pub(super) fn client_addr(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 10 + i], 40000 + u16::from(i)))
}
pub(super) fn config() -> TurnServerConfig {
    let mut c = TurnServerConfig::new(
        relay_ip(),
        (50000, 50009),
        vec![(USER.into(), PASS.into()), ("bob".into(), "builder".into())],
    );
    c.secret = [7; 32];
    c.seed = 1;
    c
}

/// What crossed the virtual wire, by kind.
#[derive(Default, Debug)]
struct Wire {
    data_indications: u32,
    channel_data_to_clients: u32,
    /// Datagrams relayed to addresses that are not relay ports: (from port, to, bytes).
    outside: Vec<(u16, SocketAddr, Vec<u8>)>,
}

struct Net {
    t: Instant,
    srv: TurnServer,
    clients: Vec<(SocketAddr, Client, Vec<Event>)>,
    open: BTreeSet<u16>,
    /// Ports the "OS" refuses once with `InUse`.
    in_use: BTreeSet<u16>,
    wire: Wire,
}

impl Net {
    fn new(cfg: TurnServerConfig) -> Net {
        let t = Instant::now();
        Net {
            t,
            srv: TurnServer::new(cfg, t).expect("valid config"),
            clients: Vec::new(),
            open: BTreeSet::new(),
            in_use: BTreeSet::new(),
            wire: Wire::default(),
        }
    }

    /// Adds a client of `user` at `client_addr(i)`; returns its index.
    fn client(&mut self, i: u8, user: &str, pass: &str) -> usize {
        let mut cfg = TurnConfig::new(server_addr(), user, pass, u64::from(i) + 10);
        cfg.max_transmits = 2;
        self.clients
            .push((client_addr(i), Client::new(cfg, self.t), Vec::new()));
        self.clients.len() - 1
    }

    /// Moves everything until nothing moves, then runs timers at the current time.
    fn run(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            for (addr, c, evs) in &mut self.clients {
                if c.poll_timeout().is_some_and(|d| d <= self.t) {
                    c.handle_timeout(self.t);
                }
                while let Some(tx) = c.poll_transmit() {
                    assert_eq!(tx.dst, server_addr());
                    let id = ClientId {
                        via: Via::Udp,
                        addr: *addr,
                    };
                    self.srv.handle_client(self.t, id, &tx.payload);
                    moved = true;
                }
                evs.extend(std::iter::from_fn(|| c.poll_event()));
            }
            if self.srv.poll_timeout().is_some_and(|d| d <= self.t) {
                self.srv.handle_timeout(self.t);
            }
            while let Some(ev) = self.srv.poll_event() {
                moved = true;
                match ev {
                    RelayEvent::Open { port } => {
                        assert!((50000..=50009).contains(&port) || port >= 1024);
                        if self.in_use.remove(&port) {
                            self.srv.relay_opened(self.t, port, Err(OpenError::InUse));
                        } else {
                            assert!(self.open.insert(port), "port {port} opened twice");
                            self.srv.relay_opened(self.t, port, Ok(()));
                        }
                    }
                    RelayEvent::Close { port } => {
                        assert!(self.open.remove(&port), "closing {port} never opened")
                    }
                    RelayEvent::Lookup { session } => panic!("no session credentials: {session}"),
                }
            }
            while let Some(tx) = self.srv.poll_transmit() {
                moved = true;
                match tx.from {
                    Source::Primary(via) => {
                        assert_eq!(via, Via::Udp);
                        if ChannelData::is_channel_data(&tx.payload) {
                            self.wire.channel_data_to_clients += 1;
                        } else if Message::parse(&tx.payload).is_ok_and(|m| {
                            m.message_type().method == Method::Data
                                && m.message_type().class == Class::Indication
                        }) {
                            self.wire.data_indications += 1;
                        }
                        if let Some((_, c, _)) =
                            self.clients.iter_mut().find(|(a, _, _)| *a == tx.to)
                        {
                            c.handle_input(self.t, 0, server_addr(), &tx.payload);
                        }
                    }
                    Source::Relay(port) => {
                        assert!(self.open.contains(&port), "sent from closed port {port}");
                        // Between two of its own relayed ports the machine hands data over
                        // itself; a round through the network costs the server a send and a
                        // read per datagram.
                        assert!(
                            !(tx.to.ip() == relay_ip() && self.open.contains(&tx.to.port())),
                            "relayed to its own port {} through the network",
                            tx.to.port()
                        );
                        self.wire.outside.push((port, tx.to, tx.payload));
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the network never settled");
    }

    fn advance(&mut self, d: Duration) {
        self.t += d;
        self.run();
    }

    fn c(&mut self, i: usize) -> &mut Client {
        &mut self.clients[i].1
    }

    fn events(&mut self, i: usize) -> Vec<Event> {
        std::mem::take(&mut self.clients[i].2)
    }

    fn relayed(&self, i: usize) -> SocketAddr {
        self.clients[i].1.relayed().expect("allocated")
    }

    fn data(&mut self, i: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let evs = self.events(i);
        evs.into_iter()
            .filter_map(|e| match e {
                Event::Data { peer, bytes } => Some((peer, bytes)),
                _ => None,
            })
            .collect()
    }
}

fn allocated_pair() -> Net {
    let mut n = Net::new(config());
    n.client(0, USER, PASS);
    n.client(1, "bob", "builder");
    n.run();
    for i in 0..2 {
        let ev = n.events(i);
        let [Event::Allocated {
            relayed,
            mapped,
            lifetime,
        }] = ev[..]
        else {
            panic!("client {i}: {ev:?}");
        };
        assert_eq!(relayed.ip(), relay_ip());
        assert!((50000..=50009).contains(&relayed.port()));
        assert_eq!(mapped, Some(client_addr(i as u8)));
        assert_eq!(lifetime, DEFAULT_LIFETIME);
    }
    assert_ne!(n.relayed(0), n.relayed(1));
    assert_eq!(n.srv.active(), 2);
    assert_eq!(n.srv.stats().allocations_made, 2);
    assert_eq!(n.srv.stats().refusals.get(401), 2, "one 401 each");
    n
}

#[test]
fn permission_then_indications_then_channels_both_ways() {
    let mut n = allocated_pair();
    let (ra, rb) = (n.relayed(0), n.relayed(1));
    let t = n.t;

    // A sends before B permits A: A's permission is made, the datagram leaves A's relay
    // port, and B's relay port drops it.
    n.c(0).send_to(t, rb, b"too early").unwrap();
    n.run();
    assert!(n.data(1).is_empty());
    assert_eq!(n.srv.stats().dropped_no_permission, 1);
    assert_eq!(n.srv.stats().datagrams_to_peers, 1);

    n.c(1).create_permission(t, ra.ip());
    n.run();
    assert!(n.c(1).has_permission(ra.ip()));
    n.c(0).send_to(t, rb, b"hello b").unwrap();
    n.c(1).send_to(t, ra, b"hello a").unwrap();
    n.run();
    assert_eq!(n.data(1), [(ra, b"hello b".to_vec())]);
    assert_eq!(n.data(0), [(rb, b"hello a".to_vec())]);
    assert_eq!(n.wire.data_indications, 2);
    assert_eq!(n.wire.channel_data_to_clients, 0);

    // Channels: ChannelData both ways, on the wire too.
    let ca = n.c(0).bind_channel(t, rb).unwrap();
    let cb = n.c(1).bind_channel(t, ra).unwrap();
    n.run();
    assert_eq!(n.c(0).channel(rb), Some(ca));
    assert_eq!(n.c(1).channel(ra), Some(cb));
    for i in 0..20u8 {
        n.c(0).send_to(t, rb, &[i; 1200]).unwrap();
        n.c(1).send_to(t, ra, &[i; 300]).unwrap();
    }
    n.run();
    let at_b = n.data(1);
    let at_a = n.data(0);
    assert_eq!(at_b.len(), 20);
    assert_eq!(at_a.len(), 20);
    assert!(at_b
        .iter()
        .enumerate()
        .all(|(i, (p, b))| *p == ra && *b == vec![i as u8; 1200]));
    assert!(at_a
        .iter()
        .enumerate()
        .all(|(i, (p, b))| *p == rb && *b == vec![i as u8; 300]));
    assert_eq!(n.wire.channel_data_to_clients, 40);
    assert_eq!(n.wire.data_indications, 2);
    let s = n.srv.stats();
    assert_eq!(s.channels_bound, 2);
    assert_eq!(s.bytes_to_clients, 7 + 7 + 20 * 1500);
    assert_eq!(s.datagrams_to_clients, 42);
}

#[test]
fn refresh_keeps_and_lifetime_zero_frees() {
    let mut n = allocated_pair();
    let (ra, rb) = (n.relayed(0), n.relayed(1));
    let t = n.t;
    n.c(0).bind_channel(t, rb).unwrap();
    n.c(1).bind_channel(t, ra).unwrap();
    n.run();
    n.events(0);
    n.events(1);
    // Past the 540 s refresh (and the permission and channel refreshes on the way), before
    // the 600 s end: everything still relays.
    for _ in 0..19 {
        n.advance(Duration::from_secs(30));
    }
    for i in 0..2 {
        let ev = n.events(i);
        assert!(
            ev.iter().any(|e| matches!(e, Event::Refreshed { .. })),
            "client {i}: {ev:?}"
        );
        assert!(!ev.iter().any(|e| matches!(e, Event::Failed(_))), "{ev:?}");
    }
    assert_eq!(n.srv.active(), 2);
    let t = n.t;
    n.c(0).send_to(t, rb, b"still here").unwrap();
    n.run();
    assert_eq!(n.data(1), [(ra, b"still here".to_vec())]);

    let port = ra.port();
    n.c(0).close(t);
    n.run();
    assert_eq!(n.events(0), [Event::Closed]);
    assert_eq!(n.srv.active(), 1);
    assert!(!n.open.contains(&port), "the relay socket is closed");
    assert_eq!(n.srv.stats().allocations_freed, 1);
    // B's data toward the freed address goes nowhere.
    n.c(1).send_to(t, ra, b"anyone?").unwrap();
    n.run();
    assert!(n.data(0).is_empty());
}

#[test]
fn unrefreshed_allocation_expires_and_its_socket_closes() {
    let mut n = allocated_pair();
    // Client 0 is gone (never driven again): only client 1 refreshes.
    let gone = n.clients.remove(0);
    let port = gone.1.relayed().unwrap().port();
    for _ in 0..21 {
        n.advance(Duration::from_secs(30));
    }
    assert_eq!(n.srv.active(), 1);
    assert!(!n.open.contains(&port));
    assert_eq!(n.srv.stats().allocations_expired, 1);
    assert_eq!(
        n.srv.relayed(ClientId {
            via: Via::Udp,
            addr: gone.0
        }),
        None
    );
}

#[test]
fn wrong_password_is_401_typed() {
    let mut n = Net::new(config());
    n.client(0, USER, "not-it");
    n.run();
    assert_eq!(
        n.events(0),
        [Event::Failed(TurnError::Unauthorized {
            username: USER.into(),
            realm: "punchraw".into()
        })]
    );
    assert_eq!(n.srv.active(), 0);
    assert!(n.open.is_empty());
    assert_eq!(n.srv.stats().refusals.get(401), 2);
}

#[test]
fn user_quota_is_486_and_exhausted_ports_508() {
    let mut cfg = config();
    cfg.user_quota = 1;
    cfg.ports = (50000, 50001);
    let mut n = Net::new(cfg);
    n.client(0, USER, PASS);
    n.run();
    n.client(1, USER, PASS);
    n.run();
    assert_eq!(n.events(1), [Event::Failed(TurnError::AllocationQuota)]);
    n.client(2, "bob", "builder");
    n.run();
    n.client(3, "bob", "builder");
    n.run();
    assert!(matches!(n.events(2)[..], [Event::Allocated { .. }]));
    assert_eq!(n.events(3), [Event::Failed(TurnError::AllocationQuota)]);
    // Quota per user 2 with two ports: the third allocation finds no port.
    let mut cfg = config();
    cfg.ports = (50000, 50001);
    let mut n = Net::new(cfg);
    for i in 0..3 {
        n.client(i, USER, PASS);
        n.run();
    }
    assert_eq!(
        n.events(2),
        [Event::Failed(TurnError::InsufficientCapacity)]
    );
    assert_eq!(n.srv.stats().refusals.get(508), 1);
    // A total cap.
    let mut cfg = config();
    cfg.max_allocations = 1;
    let mut n = Net::new(cfg);
    n.client(0, USER, PASS);
    n.client(1, "bob", "builder");
    n.run();
    let failed = (0..2)
        .map(|i| n.events(i))
        .filter(|e| e == &[Event::Failed(TurnError::InsufficientCapacity)])
        .count();
    assert_eq!(failed, 1);
}

#[test]
fn port_in_use_is_skipped() {
    let mut n = Net::new(config());
    n.in_use = (50000..=50009).filter(|p| p % 2 == 0).collect();
    n.client(0, USER, PASS);
    n.run();
    assert!(matches!(n.events(0)[..], [Event::Allocated { .. }]));
    assert_eq!(n.relayed(0).port() % 2, 1, "landed on a port the OS gave");
    assert_eq!(n.open.len(), 1);
}

#[test]
fn stale_nonce_is_438_then_retried() {
    let mut n = Net::new(config());
    n.client(0, USER, PASS);
    n.run();
    n.events(0);
    // Past the nonce's 600 s (the allocation refreshes itself at 540 s with the old nonce,
    // still valid); a permission at 700 s carries a stale one.
    for _ in 0..24 {
        n.advance(Duration::from_secs(30));
    }
    let t = n.t;
    n.c(0)
        .create_permission(t, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    n.run();
    let ev = n.events(0);
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::PermissionCreated { .. })),
        "{ev:?}"
    );
    assert!(n.srv.stats().refusals.get(438) >= 1);
}

#[test]
fn peer_without_permission_gets_nothing_relayed_either_way() {
    let mut n = allocated_pair();
    let ra = n.relayed(0);
    let stranger = SocketAddr::from(([192, 0, 2, 50], 7000));
    let t = n.t;
    n.srv.handle_peer(t, ra.port(), stranger, b"let me in");
    n.run();
    assert!(n.data(0).is_empty());
    assert_eq!(n.srv.stats().dropped_no_permission, 1);
    n.c(0).create_permission(t, stranger.ip());
    n.run();
    n.srv.handle_peer(t, ra.port(), stranger, b"now?");
    n.run();
    assert_eq!(n.data(0), [(stranger, b"now?".to_vec())]);
    n.c(0).send_to(t, stranger, b"yes").unwrap();
    n.run();
    assert_eq!(n.wire.outside, [(ra.port(), stranger, b"yes".to_vec())]);
    // Another port of the same IP is the same permission (RFC 8656 section 9).
    let other = SocketAddr::new(stranger.ip(), 7001);
    n.srv.handle_peer(t, ra.port(), other, b"sibling");
    n.run();
    assert_eq!(n.data(0), [(other, b"sibling".to_vec())]);
    // After 300 s without refresh... the client refreshes at 240 s, so drop the client's
    // interest by jumping the server's clock only.
    let late = t + Duration::from_secs(301);
    n.srv.handle_peer(late, ra.port(), stranger, b"expired");
    assert!(n.srv.poll_transmit().is_none());
}

#[test]
fn byte_bound_drops_beyond_it() {
    let mut cfg = config();
    cfg.max_bytes = Some(1000);
    let mut n = Net::new(cfg);
    n.client(0, USER, PASS);
    n.run();
    let stranger = SocketAddr::from(([192, 0, 2, 50], 7000));
    let t = n.t;
    n.c(0).create_permission(t, stranger.ip());
    n.run();
    for _ in 0..3 {
        n.c(0).send_to(t, stranger, &[1; 400]).unwrap();
    }
    n.run();
    assert_eq!(n.wire.outside.len(), 2);
    assert_eq!(n.srv.stats().dropped_over_bytes, 1);
}

#[test]
fn shutdown_closes_every_relay_socket() {
    let mut n = allocated_pair();
    n.srv.shutdown();
    n.run();
    assert!(n.open.is_empty());
    assert_eq!(n.srv.active(), 0);
    assert_eq!(n.srv.stats().allocations_closed, 2);
}

//! A TURN client (`core::turn::Client`) driven over a UDP socket inside a lab namespace, for
//! the tests that run it against coturn (`turn_coturn.rs`) and against `punchraw serve
//! --relay` (`turn_serve.rs`).

use punchraw::core::stun::{attr_type, Attribute, ChannelData, Class, Message, Method};
use punchraw::core::turn::{Client, Event, TurnConfig};
use punchraw::core::Machine;
use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A UDP socket bound inside namespace `ns`: a helper thread enters it (setns affects only
/// the calling thread), binds, and ends; the socket keeps its namespace.
pub fn udp_socket_in(ns: String) -> UdpSocket {
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("open the lab netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind a UDP socket in the lab");
        s.set_nonblocking(true).expect("nonblocking");
        s
    })
    .join()
    .expect("socket thread")
}

/// What crossed one side's socket, by kind, as the test checks the wire forms.
#[derive(Default, Debug)]
pub struct Wire {
    pub sent_send_indications: u32,
    pub sent_channel_data: u32,
    pub recv_data_indications: u32,
    pub recv_channel_data: u32,
    pub recv_438: u32,
}

/// One TURN client and its socket.
pub struct Side {
    pub name: &'static str,
    pub sock: UdpSocket,
    pub client: Client,
    pub events: Vec<Event>,
    pub wire: Wire,
}

impl Side {
    /// A client of `user` on `server`, its RFC 8489 timers shortened for the lab.
    pub fn new(
        name: &'static str,
        sock: UdpSocket,
        server: SocketAddr,
        (user, password): (&str, &str),
        seed: u64,
        t: Instant,
    ) -> Side {
        let mut cfg = TurnConfig::new(server, user, password, seed);
        cfg.rto = Duration::from_millis(200);
        cfg.software = Some("punchraw test".into());
        Side {
            name,
            sock,
            client: Client::new(cfg, t),
            events: Vec::new(),
            wire: Wire::default(),
        }
    }

    /// One turn of the `Machine` loop at time `t`: input, timeout, transmits, events.
    pub fn pump(&mut self, t: Instant) {
        let mut buf = vec![0u8; 65_536];
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let b = &buf[..n];
                    if ChannelData::is_channel_data(b) {
                        self.wire.recv_channel_data += 1;
                    } else if let Ok(m) = Message::parse(b) {
                        let mt = m.message_type();
                        if mt.method == Method::Data && mt.class == Class::Indication {
                            self.wire.recv_data_indications += 1;
                        }
                        if let Some(Ok(Attribute::ErrorCode(e))) = m.get(attr_type::ERROR_CODE) {
                            if e.code == 438 {
                                self.wire.recv_438 += 1;
                            }
                        }
                    }
                    self.client.handle_input(t, 0, from, b);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{}: recv: {e}", self.name),
            }
        }
        if self.client.poll_timeout().is_some_and(|d| d <= t) {
            self.client.handle_timeout(t);
        }
        self.flush();
        while let Some(ev) = self.client.poll_event() {
            self.events.push(ev);
        }
    }

    pub fn flush(&mut self) {
        while let Some(tx) = self.client.poll_transmit() {
            if ChannelData::is_channel_data(&tx.payload) {
                self.wire.sent_channel_data += 1;
            } else if Message::parse(&tx.payload)
                .is_ok_and(|m| m.message_type().method == Method::Send)
            {
                self.wire.sent_send_indications += 1;
            }
            self.sock
                .send_to(&tx.payload, tx.dst)
                .unwrap_or_else(|e| panic!("{}: send to {}: {e}", self.name, tx.dst));
        }
    }

    pub fn take(&mut self, f: impl Fn(&Event) -> bool) -> Option<Event> {
        let i = self.events.iter().position(f)?;
        Some(self.events.remove(i))
    }

    pub fn relayed(&self) -> SocketAddr {
        self.client.relayed().expect("allocated")
    }
}

/// The test's clock: real time plus a skip, so a refresh due in minutes can be made due now
/// (the machine only knows the instants it is given).
pub struct Clock {
    pub skip: Duration,
}

impl Clock {
    pub fn now(&self) -> Instant {
        Instant::now() + self.skip
    }
}

/// Pumps all sides until `done` holds, panicking with the events seen after `limit`.
pub fn run(
    sides: &mut [&mut Side],
    clock: &Clock,
    limit: Duration,
    what: &str,
    done: impl Fn(&mut [&mut Side]) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        for s in sides.iter_mut() {
            s.pump(clock.now());
        }
        if done(sides) {
            return;
        }
        if Instant::now() > deadline {
            let seen: Vec<_> = sides.iter().map(|s| (s.name, &s.events, &s.wire)).collect();
            panic!("{what}: not within {limit:?}; seen {seen:#?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Pumps both sides until each has an event that `seen` matches (a permission created, a
/// channel bound), then forgets their events.
pub fn await_both(a: &mut Side, b: &mut Side, clock: &Clock, what: &str, seen: fn(&Event) -> bool) {
    run(&mut [a, b], clock, Duration::from_secs(10), what, |s| {
        s.iter().all(|s| s.events.iter().any(seen))
    });
    a.events.clear();
    b.events.clear();
}

/// Sends `count` numbered datagrams each way and waits for all of them; returns nothing but
/// panics on loss, corruption or a wrong sender.
pub fn exchange(a: &mut Side, b: &mut Side, clock: &Clock, tag: &str, count: u32) {
    let (ra, rb) = (a.relayed(), b.relayed());
    let payload = |from: &str, i: u32| -> Vec<u8> {
        let mut p = format!("{tag} {from} #{i} ").into_bytes();
        p.resize(1200, (i % 251) as u8);
        p
    };
    for i in 0..count {
        a.client
            .send_to(clock.now(), rb, &payload("a", i))
            .expect("a sends");
        b.client
            .send_to(clock.now(), ra, &payload("b", i))
            .expect("b sends");
    }
    a.flush();
    b.flush();
    let got = |s: &mut Side, from: SocketAddr, who: &str| -> HashSet<u32> {
        let mut seen = HashSet::new();
        s.events.retain(|e| match e {
            Event::Data { peer, bytes } if *peer == from => {
                let i = (0..count)
                    .find(|&i| *bytes == payload(who, i))
                    .unwrap_or_else(|| panic!("{tag}: unexpected bytes from {who}"));
                seen.insert(i);
                false
            }
            _ => true,
        });
        seen
    };
    let mut at_b = HashSet::new();
    let mut at_a = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while at_a.len() < count as usize || at_b.len() < count as usize {
        a.pump(clock.now());
        b.pump(clock.now());
        at_b.extend(got(b, ra, "a"));
        at_a.extend(got(a, rb, "b"));
        assert!(
            Instant::now() < deadline,
            "{tag}: a got {} of {count}, b got {} of {count}; a {:?} b {:?}",
            at_a.len(),
            at_b.len(),
            a.wire,
            b.wire
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

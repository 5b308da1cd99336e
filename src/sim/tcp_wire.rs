//! TCP segment by segment between two hosts, each behind a [`SimTcpNat`] with strict
//! connection tracking: the world the raw SYN engine ([`RawPunch`]) is tested in, beside a
//! model of the kernel engine (one socket in SYN-SENT per attempt, [`KernelHost`]).
//!
//! Strict tracking, as Linux's with nf_conntrack_tcp_be_liberal=0 treats a handshake: each
//! direction of a tracked connection has the sequence number its first SYN (or SYN-ACK)
//! carried; a later SYN or SYN-ACK with another one, a SYN-ACK or ACK that does not acknowledge
//! the other direction's, or an ACK that does not follow its own, is invalid and dropped
//! ([`WireNat::invalid`] counts them). Segments carry no data; the last ACK of each side is
//! what shows the connection passes both NATs.
//!
//! Each tracked connection also has Linux's conntrack state as far as a handshake goes, with
//! the transitions of net/netfilter/nf_conntrack_proto_tcp.c's table: a segment the table
//! calls invalid is dropped ([`WireNat::out_of_state`] counts them), one it ignores passes
//! without a change. That is what makes a lost SYN-ACK hard to recover from: after our SYN-ACK
//! our NAT drops the peer's repeated SYNs (reply SYN in SYN_RECV), and after our ACK it drops
//! our repeated SYN-ACKs too (original SYN-ACK in ESTABLISHED).
//!
//! TTL: a segment leaves its host with its TTL; each NAT and each router between them forwards
//! it only with a TTL of 2 or more and takes one off, so a priming SYN with TTL 2 opens its own
//! NAT's mapping and dies at the first router.

use super::tcp::SimTcpNat;
use crate::core::punch::tcp::raw::RawPunch;
use crate::core::punch::tcp::{Action, TcpPunch, TcpPunchConfig};
use crate::core::rendezvous::NatInfo;
use crate::core::wire::craft::{Crafted, Established, Flags};
use crate::core::wire::{Seen, Segment, TcpOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

/// One tracked connection: its mapping, the ISN each direction showed, its state.
#[derive(Debug, Clone, Copy)]
struct Track {
    local: u16,
    ext: u16,
    inside: Option<u32>,
    outside: Option<u32>,
    state: Ct,
    /// Whether the first SYN came from our host (the "original" direction).
    orig_inside: bool,
}

/// Linux conntrack's TCP states, as far as a handshake goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ct {
    SynSent,
    SynSent2,
    SynRecv,
    Established,
    Close,
}

/// What the state table does with a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    To(Ct),
    Ignore,
    Invalid,
}

/// The state table (nf_conntrack_proto_tcp.c, tcp_conntracks) for the states above.
fn step(state: Ct, original: bool, flags: Flags) -> Step {
    use Ct::*;
    use Step::{Ignore, Invalid, To};
    match (original, flags, state) {
        (_, Flags::Rst, _) => To(Close),
        (true, Flags::Syn, SynSent | Close) => To(SynSent),
        (true, Flags::Syn, SynSent2) => To(SynSent2),
        (true, Flags::Syn, SynRecv | Established) => Ignore,
        (true, Flags::SynAck, SynRecv | SynSent2) => To(SynRecv),
        (true, Flags::SynAck, _) => Invalid,
        (true, Flags::Ack, SynRecv | Established) => To(Established),
        (true, Flags::Ack, Close) => To(Close),
        (true, Flags::Ack, _) => Invalid,
        (false, Flags::Syn, SynSent | SynSent2) => To(SynSent2),
        (false, Flags::Syn, _) => Invalid,
        (false, Flags::SynAck, SynSent | SynSent2) => To(SynRecv),
        (false, Flags::SynAck, _) => Ignore,
        (false, Flags::Ack, SynSent | SynSent2) => Ignore,
        (false, Flags::Ack, state) => To(state),
    }
}

/// Whether `s` fits what the tracking knows of its direction (`own`, learned here from a SYN)
/// and of the other (`other`).
fn fits(s: &Crafted, own: &mut Option<u32>, other: Option<u32>) -> bool {
    match s.flags {
        Flags::Syn | Flags::SynAck => {
            if own.is_some_and(|isn| isn != s.seq) {
                return false;
            }
            if s.flags == Flags::SynAck && other.map(|o| o.wrapping_add(1)) != Some(s.ack) {
                return false;
            }
            *own = Some(s.seq);
            true
        }
        // The ACK that ends a TCP_REPAIR socket's repair mode is a window probe one byte
        // before its next sequence number, i.e. at its ISN (os::tcp_repair); conntrack's
        // window accepts it.
        Flags::Ack => {
            own.is_some_and(|o| s.seq == o || s.seq == o.wrapping_add(1))
                && other.map(|o| o.wrapping_add(1)) == Some(s.ack)
        }
        Flags::Rst => own.map(|o| o.wrapping_add(1)) == Some(s.seq),
    }
}

/// A NAT at segment level.
pub struct WireNat {
    pub public: Ipv4Addr,
    pub host: Ipv4Addr,
    pub nat: SimTcpNat,
    tracks: Vec<Track>,
    /// Index of `tracks` by (local port, remote) and by (external port, remote).
    by_local: HashMap<(u16, SocketAddrV4), usize>,
    by_ext: HashMap<(u16, SocketAddrV4), usize>,
    /// Segments dropped as invalid by the strict tracking.
    pub invalid: u64,
    /// Segments dropped as invalid by the state table.
    pub out_of_state: u64,
    /// Unsolicited segments the filter dropped.
    pub filtered: u64,
}

impl WireNat {
    pub fn new(public: Ipv4Addr, host: Ipv4Addr, kind: NatInfo, seed: u64) -> Self {
        WireNat {
            public,
            host,
            nat: SimTcpNat::new(kind, seed),
            tracks: Vec::new(),
            by_local: HashMap::new(),
            by_ext: HashMap::new(),
            invalid: 0,
            out_of_state: 0,
            filtered: 0,
        }
    }

    /// The external port of our host's connection `local` -> `remote`, once tracked.
    pub fn external(&self, local: u16, remote: SocketAddrV4) -> Option<u16> {
        self.by_local
            .get(&(local, remote))
            .map(|&i| self.tracks[i].ext)
    }

    fn track(&mut self, local: u16, remote: SocketAddrV4, ext: u16, orig_inside: bool) -> usize {
        self.tracks.push(Track {
            local,
            ext,
            inside: None,
            outside: None,
            state: Ct::SynSent,
            orig_inside,
        });
        let i = self.tracks.len() - 1;
        self.by_local.insert((local, remote), i);
        self.by_ext.insert((ext, remote), i);
        i
    }

    /// Whether track `i` lets `s` through (from our host when `inside`), updating it.
    fn pass(&mut self, i: usize, s: &Crafted, inside: bool) -> bool {
        let t = &mut self.tracks[i];
        let original = t.orig_inside == inside;
        let to = match step(t.state, original, s.flags) {
            Step::Invalid => {
                self.out_of_state += 1;
                return false;
            }
            Step::Ignore => None,
            Step::To(to) => Some(to),
        };
        // A SYN reopening a closed connection starts it afresh (nf_conntrack deletes the
        // closed entry and tracks the SYN as new).
        if t.state == Ct::Close && to == Some(Ct::SynSent) {
            t.inside = None;
            t.outside = None;
        }
        let ok = if inside {
            fits(s, &mut t.inside, t.outside)
        } else {
            fits(s, &mut t.outside, t.inside)
        };
        if !ok {
            self.invalid += 1;
            return false;
        }
        if let Some(to) = to {
            t.state = to;
        }
        true
    }

    /// From the host to the Internet.
    fn outbound(&mut self, mut s: Crafted) -> Option<Crafted> {
        if s.ttl < 2 {
            return None;
        }
        let i = match self.by_local.get(&(s.src.port(), s.dst)) {
            Some(&i) => i,
            None if s.flags == Flags::Syn => {
                let ext = self.nat.map(s.src.port(), SocketAddr::V4(s.dst));
                self.track(s.src.port(), s.dst, ext, true)
            }
            None => {
                self.invalid += 1;
                return None;
            }
        };
        if !self.pass(i, &s, true) {
            return None;
        }
        let t = &self.tracks[i];
        s.src = SocketAddrV4::new(self.public, t.ext);
        s.ttl -= 1;
        Some(s)
    }

    /// From the Internet to the host.
    fn inbound(&mut self, mut s: Crafted) -> Option<Crafted> {
        if s.ttl < 2 || *s.dst.ip() != self.public {
            return None;
        }
        let port = s.dst.port();
        let i = match self.by_ext.get(&(port, s.src)) {
            Some(&i) => i,
            None => match self.nat.inbound(SocketAddr::V4(s.src), port) {
                Some(local) if s.flags == Flags::Syn => self.track(local, s.src, port, false),
                _ => {
                    self.filtered += 1;
                    return None;
                }
            },
        };
        if !self.pass(i, &s, false) {
            return None;
        }
        let t = &self.tracks[i];
        s.dst = SocketAddrV4::new(self.host, t.local);
        s.ttl -= 1;
        Some(s)
    }
}

/// A host in the world: segments in, segments out, handshakes finished.
pub trait WireHost {
    fn handle_segment(&mut self, now: Instant, s: &Crafted);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self) -> Option<Crafted>;
    fn poll_timeout(&self) -> Option<Instant>;
    /// Handshakes finished, and for each whether the peer's final ACK arrived on it.
    fn connections(&self) -> Vec<(Established, bool)>;
}

/// What the watcher would report for `s`.
pub fn seen(s: &Crafted) -> Seen {
    Seen::Tcp {
        src: SocketAddr::V4(s.src),
        dst: SocketAddr::V4(s.dst),
        segment: match s.flags {
            Flags::Syn => Segment::Syn,
            Flags::SynAck => Segment::SynAck,
            Flags::Rst => Segment::Rst,
            Flags::Ack => Segment::Other,
        },
        seq: s.seq,
        ack: s.ack,
        ttl: s.ttl,
        window: s.window,
        options: s.options,
    }
}

/// A host running the raw engine. Each [`Established`] becomes a socket that, leaving repair
/// mode, sends one ACK: a window probe at `snd_nxt - 1` (what `os::tcp_repair` does), unless
/// it is [`Established::awaiting_peer`]; such a socket sends its first segment (an ACK at
/// `snd_nxt`, standing for TLS's first record) once the engine confirms it, or, on a host that
/// plays the TLS client ([`RawHost::early`]), right behind our SYN-ACK, and again when the
/// engine asks for it ([`RawPunch::poll_data_again`]).
pub struct RawHost {
    pub engine: RawPunch,
    conns: Vec<(Established, bool)>,
    out: VecDeque<Crafted>,
    early: bool,
}

impl RawHost {
    pub fn new(engine: RawPunch) -> Self {
        RawHost {
            engine,
            conns: Vec::new(),
            out: VecDeque::new(),
            early: false,
        }
    }

    /// The TLS client's host: an answered socket speaks at once.
    pub fn early(mut self) -> Self {
        self.early = true;
        self
    }

    /// In the driver's order: the sockets (whose window probes go out as they are made),
    /// then the queued segments.
    fn drain(&mut self) {
        let mut speaking = Vec::new();
        while let Some(e) = self.engine.poll_established() {
            if !e.awaiting_peer {
                self.out.push_back(ack(&e, e.snd_nxt.wrapping_sub(1)));
            } else if self.early {
                self.engine.sending_early(e.remote);
                speaking.push(ack(&e, e.snd_nxt));
            }
            self.conns.push((e, false));
        }
        while let Some(c) = self.engine.poll_transmit() {
            self.out.push_back(c);
        }
        self.out.extend(speaking);
        let mut again = Vec::new();
        while let Some(remote) = self.engine.poll_confirmed() {
            if !self.early {
                again.push(remote);
            }
        }
        while let Some(remote) = self.engine.poll_data_again() {
            again.push(remote);
        }
        for remote in again {
            if let Some((e, _)) = self.conns.iter().find(|(e, _)| e.remote == remote) {
                self.out.push_back(ack(e, e.snd_nxt));
            }
        }
    }
}

/// An ACK of the socket `e` with sequence number `seq`.
fn ack(e: &Established, seq: u32) -> Crafted {
    Crafted {
        src: e.local,
        dst: e.remote,
        ttl: 64,
        seq,
        ack: e.rcv_nxt,
        flags: Flags::Ack,
        window: e.our_window,
        options: TcpOptions::default(),
        data: false,
    }
}

impl WireHost for RawHost {
    fn handle_segment(&mut self, now: Instant, s: &Crafted) {
        // The peer's ACK, or its SYN-ACK, shows the connection passes both NATs both ways.
        for (e, acked) in &mut self.conns {
            let ok = match s.flags {
                Flags::Ack => s.seq.wrapping_sub(e.rcv_nxt.wrapping_sub(1)) <= 1,
                Flags::SynAck => s.seq == e.rcv_nxt.wrapping_sub(1),
                _ => continue,
            };
            if e.remote == s.src && ok && s.ack == e.snd_nxt {
                *acked = true;
            }
        }
        let before = self.conns.len();
        self.engine.handle_seen(now, &seen(s));
        self.drain();
        if s.flags == Flags::SynAck {
            for (_, acked) in &mut self.conns[before..] {
                *acked = true;
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.engine.handle_timeout(now);
        self.drain();
    }

    fn poll_transmit(&mut self) -> Option<Crafted> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.engine.poll_timeout()
    }

    fn connections(&self) -> Vec<(Established, bool)> {
        self.conns.clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SynSent,
    SynReceived,
    Established { acked: bool },
}

#[derive(Debug, Clone, Copy)]
struct Sock {
    local: SocketAddrV4,
    remote: SocketAddrV4,
    isn: u32,
    rcv_nxt: u32,
    state: State,
    sent: u32,
    next: Instant,
}

/// A host running the kernel engine: a socket per attempt (the kernel's own ISN each, SYN
/// repeated after 1, 2, 4 ... s), a listener on the punch port unless spraying.
pub struct KernelHost {
    pub planner: TcpPunch,
    ip: Ipv4Addr,
    prime_ttl: Option<u8>,
    rng: StdRng,
    socks: Vec<Sock>,
    next_fresh: u16,
    out: VecDeque<Crafted>,
}

impl KernelHost {
    pub fn new(cfg: TcpPunchConfig, ip: Ipv4Addr, prime_ttl: Option<u8>, start: Instant) -> Self {
        KernelHost {
            rng: StdRng::seed_from_u64(cfg.seed ^ 0x6b65_726e),
            planner: TcpPunch::new(cfg, start),
            ip,
            prime_ttl,
            socks: Vec::new(),
            next_fresh: 45000,
            out: VecDeque::new(),
        }
    }

    fn segment(&mut self, i: usize, flags: Flags, ttl: u8) {
        let s = self.socks[i];
        self.out.push_back(Crafted {
            src: s.local,
            dst: s.remote,
            ttl,
            seq: if flags == Flags::Ack {
                s.isn.wrapping_add(1)
            } else {
                s.isn
            },
            ack: if flags == Flags::Syn { 0 } else { s.rcv_nxt },
            flags,
            window: 64240,
            data: false,
            options: TcpOptions::default(),
        });
    }
}

impl WireHost for KernelHost {
    fn handle_segment(&mut self, now: Instant, s: &Crafted) {
        let _ = now;
        let i = match self
            .socks
            .iter()
            .position(|k| k.local == s.dst && k.remote == s.src)
        {
            Some(i) => i,
            // The listener answers a SYN on the punch port.
            None if s.flags == Flags::Syn
                && !self.planner.plan().fresh_ports()
                && s.dst.port() == self.planner.local_port() =>
            {
                self.socks.push(Sock {
                    local: s.dst,
                    remote: s.src,
                    isn: self.rng.random(),
                    rcv_nxt: s.seq.wrapping_add(1),
                    state: State::SynReceived,
                    sent: 1,
                    next: now + Duration::from_secs(3600),
                });
                let i = self.socks.len() - 1;
                self.segment(i, Flags::SynAck, 64);
                return;
            }
            None => return,
        };
        let k = self.socks[i];
        let acks_us = s.ack == k.isn.wrapping_add(1);
        match (k.state, s.flags) {
            (State::SynSent, Flags::Syn) => {
                self.socks[i].rcv_nxt = s.seq.wrapping_add(1);
                self.socks[i].state = State::SynReceived;
                self.segment(i, Flags::SynAck, 64);
            }
            (State::SynSent | State::SynReceived, Flags::SynAck) if acks_us => {
                self.socks[i].rcv_nxt = s.seq.wrapping_add(1);
                self.socks[i].state = State::Established { acked: true };
                self.segment(i, Flags::Ack, 64);
            }
            // Linux takes no window probe (seq one before rcv_nxt) as the handshake's ACK.
            (State::SynReceived, Flags::Ack) if acks_us && s.seq == k.rcv_nxt => {
                self.socks[i].state = State::Established { acked: true };
            }
            (State::Established { .. }, Flags::Ack)
                if acks_us && s.seq.wrapping_sub(k.rcv_nxt.wrapping_sub(1)) <= 1 =>
            {
                self.socks[i].state = State::Established { acked: true };
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.planner.handle_timeout(now);
        while let Some(a) = self.planner.poll_action() {
            match a {
                Action::Connect { from_port, to, .. } => {
                    let SocketAddr::V4(to) = to else { continue };
                    let port = if from_port == 0 {
                        self.next_fresh += 1;
                        self.next_fresh
                    } else {
                        from_port
                    };
                    self.socks.push(Sock {
                        local: SocketAddrV4::new(self.ip, port),
                        remote: to,
                        isn: self.rng.random(),
                        rcv_nxt: 0,
                        state: State::SynSent,
                        sent: 1,
                        next: now + Duration::from_secs(1),
                    });
                    let i = self.socks.len() - 1;
                    self.segment(i, Flags::Syn, self.prime_ttl.unwrap_or(64));
                }
                Action::Abandon { .. } => {}
            }
        }
        for i in 0..self.socks.len() {
            let k = self.socks[i];
            if k.state == State::SynSent && k.next <= now && !self.planner.expired(now) {
                self.socks[i].sent += 1;
                self.socks[i].next = now + Duration::from_secs(1 << k.sent.min(6));
                self.segment(i, Flags::Syn, 64);
            }
        }
    }

    fn poll_transmit(&mut self) -> Option<Crafted> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let retx = self
            .socks
            .iter()
            .filter(|k| k.state == State::SynSent)
            .map(|k| k.next)
            .min();
        match (self.planner.poll_timeout(), retx) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn connections(&self) -> Vec<(Established, bool)> {
        self.socks
            .iter()
            .filter_map(|k| match k.state {
                State::Established { acked } => Some((
                    Established {
                        local: k.local,
                        remote: k.remote,
                        snd_nxt: k.isn.wrapping_add(1),
                        rcv_nxt: k.rcv_nxt,
                        ours: TcpOptions::default(),
                        theirs: TcpOptions::default(),
                        peer_window: 64240,
                        our_window: 64240,
                        awaiting_peer: false,
                        received: Vec::new(),
                        first_flight: None,
                    },
                    acked,
                )),
                _ => None,
            })
            .collect()
    }
}

/// Two hosts behind their NATs, `latency` apart one way, `routers` routers between the NATs.
pub struct WireWorld {
    pub now: Instant,
    pub nats: [WireNat; 2],
    pub latency: Duration,
    pub routers: u8,
    /// Segments on their way to side `.1`'s NAT.
    in_flight: Vec<(Instant, usize, Crafted)>,
    /// Every segment a host sent, by side, in order.
    pub sent: [Vec<Crafted>; 2],
    /// Segments to lose between the NATs: the next one with these flags that side's NAT sent
    /// on, per entry.
    pub lose: Vec<(usize, Flags)>,
    /// The same, for segments lost between a host and its NAT: the NAT never sees them, so
    /// they take no mapping.
    pub lose_before_nat: Vec<(usize, Flags)>,
}

pub const WIRE_HOSTS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 2, 2)];
pub const WIRE_PUBLIC: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(203, 0, 113, 1),
];

impl WireWorld {
    pub fn new(kinds: [NatInfo; 2], latency: Duration, routers: u8, seed: u64) -> Self {
        let nat = |i: usize| WireNat::new(WIRE_PUBLIC[i], WIRE_HOSTS[i], kinds[i], seed + i as u64);
        WireWorld {
            now: Instant::now(),
            nats: [nat(0), nat(1)],
            latency,
            routers,
            in_flight: Vec::new(),
            sent: [Vec::new(), Vec::new()],
            lose: Vec::new(),
            lose_before_nat: Vec::new(),
        }
    }

    fn send(&mut self, side: usize, s: Crafted) {
        self.sent[side].push(s);
        if let Some(k) = self
            .lose_before_nat
            .iter()
            .position(|&l| l == (side, s.flags))
        {
            self.lose_before_nat.remove(k);
            return;
        }
        let Some(mut s) = self.nats[side].outbound(s) else {
            return;
        };
        if let Some(k) = self.lose.iter().position(|&l| l == (side, s.flags)) {
            self.lose.remove(k);
            return;
        }
        for _ in 0..self.routers {
            if s.ttl < 2 {
                return;
            }
            s.ttl -= 1;
        }
        let to = WIRE_PUBLIC.iter().position(|p| p == s.dst.ip());
        if let Some(to) = to {
            self.in_flight.push((self.now + self.latency, to, s));
        }
    }

    fn flush(&mut self, side: usize, host: &mut dyn WireHost) {
        while let Some(s) = host.poll_transmit() {
            self.send(side, s);
        }
    }

    /// Runs both hosts until `until` or until both have a connection whose final ACK arrived;
    /// returns each side's first such connection.
    pub fn run(
        &mut self,
        hosts: [&mut dyn WireHost; 2],
        until: Instant,
    ) -> Option<[Established; 2]> {
        let [a, b] = hosts;
        let mut hosts: [&mut dyn WireHost; 2] = [a, b];
        loop {
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|f| f.0 <= now);
            self.in_flight = later;
            for (_, side, s) in due {
                if let Some(s) = self.nats[side].inbound(s) {
                    hosts[side].handle_segment(now, &s);
                    self.flush(side, &mut *hosts[side]);
                }
            }
            for (side, h) in hosts.iter_mut().enumerate() {
                h.handle_timeout(now);
                self.flush(side, &mut **h);
            }
            let done: Vec<Option<Established>> = hosts
                .iter()
                .map(|h| {
                    h.connections()
                        .into_iter()
                        .find(|(_, acked)| *acked)
                        .map(|(e, _)| e)
                })
                .collect();
            if let [Some(x), Some(y)] = done.as_slice() {
                return Some([x.clone(), y.clone()]);
            }
            // Segments sent without latency are delivered at once, in the next turn.
            let next = hosts
                .iter()
                .filter_map(|h| h.poll_timeout())
                .filter(|&t| t > now)
                .chain(self.in_flight.iter().map(|f| f.0))
                .min();
            let next = next.filter(|&t| t <= until)?;
            self.now = next;
        }
    }
}

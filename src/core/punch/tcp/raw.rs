//! The raw SYN engine of a TCP punch (`connect --tcp --syn-engine raw`), sans-IO: the attempts
//! [`TcpPunch`] plans, as crafted segments from one punch port instead of one kernel socket
//! each.
//!
//! Every SYN of the punch, whichever port of the peer it aims at, carries one initial sequence
//! number and one set of options (MSS, window scale, SACK-permitted, timestamps from one clock).
//! So whichever 4-tuple the peer's SYN or SYN-ACK arrives on, the handshake continues the
//! sequence space both NATs' connection tracking learned from our SYN on that 4-tuple, as
//! strict tracking (nf_conntrack_tcp_be_liberal=0) requires. The engine answers the peer's SYN
//! itself with a SYN-ACK (the simultaneous open of RFC 9293 section 3.5, figure 8, in which
//! each side acknowledges the other's SYN), within the call that reports it, and hands the
//! driver an [`Established`]: the state of the kernel socket (TCP_REPAIR) that carries the data.
//!
//! Timing is the engine's, not the kernel's: the first SYN of an attempt may go out with a low
//! TTL (priming, [`super::super::priming`]) and every later one with the full TTL; SYNs are
//! repeated after the measured round trip (doubling up to [`MAX_RTO`]) instead of the
//! kernel's 1 s initial RTO (RFC 6298 section 2.1), and repeats share the configured rate
//! with the planner's first SYNs.
//!
//! Attempts from fresh local ports ([`Plan::Spray`], [`Plan::SprayAtCounter`]) are not the raw engine's: each needs a
//! port of its own to open a mapping of its own in a random-allocating NAT, so a descriptor per
//! attempt is spent anyway, and a kernel socket's SYN already carries the sequence number its
//! own handshake continues. [`RawPunch::new`] declines those plans (and IPv6 peers); the driver
//! runs the kernel engine for them. A raw prober and a kernel sprayer meet as any pair does.
//!
//! Drive it in the order quinn-proto documents for its `Connection` (ARCHITECTURE.md):
//! 1. [`RawPunch::handle_seen`] for each packet the watcher saw (inbound);
//! 2. [`RawPunch::handle_timeout`] when [`RawPunch::poll_timeout`] has passed;
//! 3. [`RawPunch::poll_established`] until `None`, making the socket for each;
//! 4. [`RawPunch::poll_transmit`] until `None`, sending each segment on the raw socket;
//! 5. sleep until the next packet or `poll_timeout()`.
//!
//! Sockets before segments: the handshake's third segment is queued with its connection, and
//! the peer may send data as soon as it has it; data that reaches this host before the socket
//! exists is lost (the host's RST is dropped by the punch's nft rule) until the peer's
//! retransmission timeout. A SYN-ACK answering the peer's SYN is queued by step 1, so it goes
//! out in step 4 of the same turn: within one round trip of the SYN, as the punch needs.
//!
//! A SYN-ACK can be lost either way, and what brings the handshake back through two NATs
//! whose tracking saw part of it is in `raw/lost.rs`: the SYN-ACK repeated, our SYN repeated
//! by a socket that spoke early ([`RawPunch::sending_early`]), and the handshake finished from
//! the peer's data ([`RawPunch::awaiting_ack_of_data`]).
//!
//! The TLS client's hello goes sooner still: in the SYNs themselves ([`RawConfig::syn_data`];
//! RFC 9293 section 3.5 lets a SYN carry data, held by the receiver until the handshake is
//! done). Only full-TTL SYNs to the predicted port carry it: a primed one dies on the way, and
//! on the other ports of a sweep one hello would open several connections. A peer engine
//! takes the data of a SYN ([`RawPunch::handle_seen_with`]), acknowledges it in its SYN-ACK and
//! hands it to its socket's receive queue ([`Established::received`]); its TLS server then
//! answers at once (it speaks early like the client above), and the client has the server's
//! flight one round trip to the peer after its SYN instead of two. A peer that ignores the
//! data (Linux drops a SYN's data in a simultaneous open, net/ipv4/tcp_input.c) acknowledges
//! the SYN alone; our socket then starts before the hello ([`Established::first_flight`])
//! and sends it as data, as it does when we answered the peer's SYN before knowing. Every SYN
//! on that 4-tuple carries the same bytes, so the NATs' tracking keeps one sequence space:
//! conntrack counts a SYN's data in the sender's window, and a repeated SYN never lowers it.

#[cfg(doc)]
use super::Plan;
use super::{Action, AttemptError, TcpPunch, TcpPunchConfig};
use crate::core::wire::craft::{Crafted, Established, Flags};
use crate::core::wire::{IcmpKind, Seen, Segment, TcpOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

/// Shortest pause before a SYN is repeated: below it a round trip measured on a LAN would make
/// the repeats a flood that tells the peer nothing new.
pub const MIN_RTO: Duration = Duration::from_millis(25);
/// Longest pause between repeats: the kernel's initial RTO (RFC 6298 section 2.1), which the
/// engine never waits longer than.
pub const MAX_RTO: Duration = Duration::from_secs(1);

/// What the raw engine needs beyond the plan: our IPv4 address, the round trip toward the peer,
/// and the TTLs and TCP options of its segments.
#[derive(Debug, Clone)]
pub struct RawConfig {
    /// The plan; its `local_port` is the punch port P every SYN comes from.
    pub punch: TcpPunchConfig,
    /// Our IPv4 address, the source of every crafted segment.
    pub local_ip: Ipv4Addr,
    /// The round trip toward the peer as best known (the driver: twice ours to the server).
    pub rtt: Duration,
    /// TTL of each attempt's first SYN (low-TTL priming); `None`: the full TTL.
    pub prime_ttl: Option<u8>,
    /// The full TTL.
    pub ttl: u8,
    /// The MSS our SYN and SYN-ACK announce (RFC 9293 section 3.7.1).
    pub mss: u16,
    /// Our window scale shift (RFC 7323 section 2.3).
    pub wscale: u8,
    /// Copies of each attempt's first SYN, sent back to back
    /// ([`super::first_syn_copies`]); at least one.
    pub first_copies: u8,
    /// The window our SYN and SYN-ACK advertise (never scaled in a SYN, RFC 7323 section 2.2).
    pub window: u16,
    /// Our first flight (the TLS client's ClientHello), carried by every full-TTL SYN to the
    /// predicted port: a peer that takes it answers with its SYN-ACK, a round trip sooner
    /// than after a handshake. Empty: SYNs carry nothing. See the module documentation.
    pub syn_data: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Attempt {
    to: SocketAddrV4,
    /// SYNs sent so far.
    sent: u32,
    /// When to send the next.
    next: Instant,
    /// Its SYNs carry [`RawConfig::syn_data`].
    data: bool,
}

/// How a 4-tuple's handshake finished, for repeating our SYN-ACK.
#[derive(Debug, Clone, Copy)]
struct Done {
    /// The peer's ISN, when we answered its SYN (a repeated SYN gets the same SYN-ACK again).
    answered: Option<u32>,
    /// Bytes of data from the peer's SYN that our SYN-ACK acknowledged.
    taken: u32,
    /// Our SYN-ACK's options. A repeat carries them unchanged, its TSval too: the socket's clock
    /// continues from that TSval, and a later one would run ahead of it (RFC 7323 section 5).
    options: TcpOptions,
    /// Until the peer shows it has our SYN-ACK: SYN-ACKs sent, and when to send the next.
    unconfirmed: Option<(u32, Instant)>,
    /// The handshake's third segment, when the peer's SYN-ACK finished it: sent again when
    /// the peer repeats that SYN-ACK, which says our ACK was lost. The repaired socket would
    /// answer it only with a rate-limited challenge ACK (RFC 5961 section 4), and a peer
    /// that waits for it before its first byte (as ours does) would wait in vain.
    third: Option<Crafted>,
    /// Our socket on this answered 4-tuple sent data before the peer confirmed
    /// ([`RawPunch::sending_early`]): our SYN is repeated instead of the SYN-ACK.
    early: bool,
    /// When the peer's data finished the handshake (`finish_from_data`).
    from_data: Option<FromData>,
}

/// The engine. See the module documentation for the order of calls.
#[derive(Debug)]
pub struct RawPunch {
    planner: TcpPunch,
    cfg: RawConfig,
    peer: Ipv4Addr,
    local: SocketAddrV4,
    isn: u32,
    /// The timestamp clock (RFC 7323 section 5.4): this value at the start, 1 ms per tick.
    ts_base: u32,
    start: Instant,
    /// Live attempts by planner id, and the id of the live attempt per target.
    attempts: BTreeMap<u64, Attempt>,
    by_target: HashMap<SocketAddrV4, u64>,
    /// 4-tuples (by the peer's end) whose handshake finished.
    done: HashMap<SocketAddrV4, Done>,
    /// 4-tuples given up on after their connection failed: never tried again (their
    /// connection tracking entry has a history a new handshake would not match).
    dead: HashSet<SocketAddrV4>,
    /// Targets a SYN of ours carried [`RawConfig::syn_data`] to, kept when their attempt ends:
    /// every SYN has the same sequence number, so a RST to an earlier one fails the attempt
    /// while a later one is still on its way, and the peer that takes that SYN's hello answers
    /// it. Our socket on that 4-tuple must then go on with the same TLS session; a fresh one's
    /// different key share leaves both ends unable to decrypt the other (seen in the lab
    /// between two NATs that answer early SYNs with RST, at 40 ms).
    carried_to: HashSet<SocketAddrV4>,
    /// The earliest moment a repeat may go out (the rate is shared with first SYNs).
    next_slot: Instant,
    transmits: VecDeque<Crafted>,
    established: VecDeque<Established>,
    confirmed: VecDeque<SocketAddrV4>,
    /// Early-speaking 4-tuples whose confirmation leaves our first data in doubt.
    data_again: VecDeque<SocketAddrV4>,
    /// The shortest round trip a timestamp echo showed ([`RawPunch::rtt_sample`]).
    rtt: Option<Duration>,
    /// SYNs sent (first ones and repeats), SYN-ACKs sent.
    pub syns: u64,
    /// SYN-ACKs sent, repeats included.
    pub synacks: u64,
}

impl RawPunch {
    /// `None` when the raw engine does not take this punch: a peer that is not IPv4, or the
    /// spraying side of a sweep (see the module documentation).
    pub fn new(cfg: RawConfig, start: Instant) -> Option<Self> {
        let IpAddr::V4(peer) = cfg.punch.peer_ip else {
            return None;
        };
        if cfg.punch.plan.fresh_ports() {
            return None;
        }
        // The sequence number and the timestamp clock come from the seeded generator, apart
        // from the planner's draws; unpredictable to others as RFC 6528 wants, given a
        // random seed.
        let mut rng = StdRng::seed_from_u64(cfg.punch.seed ^ 0x5eed_1517_0000_0001);
        let isn = rng.random();
        let ts_base = rng.random();
        let local = SocketAddrV4::new(cfg.local_ip, cfg.punch.local_port);
        Some(RawPunch {
            planner: TcpPunch::new(cfg.punch.clone(), start),
            peer,
            local,
            isn,
            ts_base,
            start,
            attempts: BTreeMap::new(),
            by_target: HashMap::new(),
            done: HashMap::new(),
            dead: HashSet::new(),
            carried_to: HashSet::new(),
            next_slot: start,
            transmits: VecDeque::new(),
            established: VecDeque::new(),
            confirmed: VecDeque::new(),
            data_again: VecDeque::new(),
            rtt: None,
            syns: 0,
            synacks: 0,
            cfg,
        })
    }

    /// The plan's scheduler (attempt and refusal counts, budget).
    pub fn planner(&self) -> &TcpPunch {
        &self.planner
    }

    /// Our initial sequence number, the same in every SYN.
    pub fn isn(&self) -> u32 {
        self.isn
    }

    /// The punch port P with our address: the source of every SYN.
    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }

    /// Our timestamp clock at `now` (1 ms ticks, RFC 7323 section 5.4), always even: Linux
    /// (since 6.7) reads an odd TCP_TIMESTAMP value as a request for microsecond timestamps
    /// and rounds it up (`os::tcp_repair`), so the TCP_REPAIR socket's clock continues these
    /// values exactly only when they are even. Rounding down keeps the clock monotonic.
    fn tsval(&self, now: Instant) -> u32 {
        let ms = now.saturating_duration_since(self.start).as_millis();
        self.ts_base.wrapping_add(ms as u32) & !1
    }

    /// What every SYN of ours carries; the timestamp is the clock's at `now`.
    fn syn_options(&self, now: Instant) -> TcpOptions {
        TcpOptions {
            mss: Some(self.cfg.mss),
            wscale: Some(self.cfg.wscale),
            sack_permitted: true,
            timestamps: Some((self.tsval(now), 0)),
        }
    }

    /// What our SYN-ACK to a SYN carrying `theirs` carries: window scale, SACK-permitted and
    /// timestamps only when the SYN offered them (RFC 7323 sections 2.2 and 3.2, RFC 2018
    /// section 2); MSS always (RFC 9293 section 3.7.1).
    fn synack_options(&self, now: Instant, theirs: &TcpOptions) -> TcpOptions {
        TcpOptions {
            mss: Some(self.cfg.mss),
            wscale: theirs.wscale.map(|_| self.cfg.wscale),
            sack_permitted: theirs.sack_permitted,
            timestamps: theirs.timestamps.map(|(v, _)| (self.tsval(now), v)),
        }
    }

    /// The pause before SYN number `sent + 1` of an attempt. A primed first SYN is followed
    /// after half a round trip (the peer's own priming SYN has opened its NAT by then, within
    /// the start's skew); after that, the round trip doubling, as RFC 6298 section 5.5 backs
    /// off, within [`MIN_RTO`] and [`MAX_RTO`].
    fn rto(&self, sent: u32) -> Duration {
        match (self.cfg.prime_ttl.is_some(), sent) {
            (true, 1) => (self.cfg.rtt / 2).clamp(MIN_RTO, MAX_RTO),
            (true, n) => self.backoff(n - 1),
            (false, n) => self.backoff(n),
        }
    }

    /// The pause after the `n`th unanswered segment: the round trip doubling (RFC 6298 section
    /// 5.5), within [`MIN_RTO`] and [`MAX_RTO`].
    fn backoff(&self, n: u32) -> Duration {
        let d = self.cfg.rtt.saturating_mul(1 << n.saturating_sub(1).min(6));
        d.clamp(MIN_RTO, MAX_RTO)
    }

    fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.cfg.punch.rate.max(1)))
    }

    fn send_syn(&mut self, now: Instant, id: u64) {
        let Some(a) = self.attempts.get(&id).copied() else {
            return;
        };
        let ttl = match self.cfg.prime_ttl {
            Some(t) if a.sent == 0 => t,
            _ => self.cfg.ttl,
        };
        // A priming SYN dies on the way: its data would reach nobody.
        let data = a.data && ttl == self.cfg.ttl;
        if data {
            self.carried_to.insert(a.to);
        }
        let syn = Crafted {
            src: self.local,
            dst: a.to,
            ttl,
            seq: self.isn,
            ack: 0,
            flags: Flags::Syn,
            window: self.cfg.window,
            options: self.syn_options(now),
            data,
        };
        // Identical copies: one 4-tuple, one sequence number, one tracking entry.
        let copies = if a.sent == 0 {
            u32::from(self.cfg.first_copies.max(1))
        } else {
            1
        };
        for _ in 0..copies {
            self.transmits.push_back(syn);
            self.syns += 1;
            self.next_slot = self.next_slot.max(now) + self.interval();
        }
        let sent = a.sent + 1;
        let next = now + self.rto(sent);
        self.attempts.insert(id, Attempt { sent, next, ..a });
    }

    /// Acts on the time `now`: the planner's new attempts get their first SYNs, unanswered SYNs
    /// are repeated in free slots of the rate (not past the budget), and SYN-ACKs the peer has not
    /// confirmed are repeated (past the budget too).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.planner.handle_timeout(now);
        self.take_actions(now);
        if self.planner.expired(now) {
            return;
        }
        // Repeats in the order they fell due, each in a free slot of the rate.
        let mut due: Vec<(Instant, u64)> = self
            .attempts
            .iter()
            .filter(|(_, a)| a.next <= now)
            .map(|(id, a)| (a.next, *id))
            .collect();
        due.sort();
        for (_, id) in due {
            if now < self.next_slot {
                break;
            }
            self.send_syn(now, id);
        }
        self.repeat_synacks(now);
    }

    /// The shortest round trip to the peer measured so far, from the timestamps its segments
    /// echoed (RFC 7323 section 4.1): every SYN of ours carries the clock's value when it
    /// left, so the echo names the very SYN answered, repeats or not (no ambiguity for Karn's
    /// rule). `None` until a segment of the peer's echoed one of ours.
    pub fn rtt_sample(&self) -> Option<Duration> {
        self.rtt
    }

    fn sample_rtt(&mut self, now: Instant, options: &TcpOptions) {
        // A SYN echoes nothing (TSecr 0); an echo from beyond a minute is no echo of ours.
        let Some((_, echo)) = options.timestamps.filter(|(_, e)| *e != 0) else {
            return;
        };
        let ms = self.tsval(now).wrapping_sub(echo);
        if ms < 60_000 {
            let r = Duration::from_millis(u64::from(ms));
            self.rtt = Some(self.rtt.map_or(r, |old| old.min(r)));
        }
    }

    fn take_actions(&mut self, now: Instant) {
        while let Some(a) = self.planner.poll_action() {
            match a {
                Action::Connect { id, to, .. } => {
                    let SocketAddr::V4(to) = to else { continue };
                    if self.dead.contains(&to) || self.done.contains_key(&to) {
                        continue;
                    }
                    if let Some(old) = self.by_target.insert(to, id) {
                        self.attempts.remove(&old);
                    }
                    let data =
                        !self.cfg.syn_data.is_empty() && to.port() == self.cfg.punch.peer_port;
                    self.attempts.insert(
                        id,
                        Attempt {
                            to,
                            sent: 0,
                            next: now,
                            data,
                        },
                    );
                    // First SYNs go out when the planner says: it paces them itself.
                    self.send_syn(now, id);
                }
                Action::Abandon { id } => self.forget(id),
            }
        }
    }

    fn forget(&mut self, id: u64) {
        if let Some(a) = self.attempts.remove(&id) {
            if self.by_target.get(&a.to) == Some(&id) {
                self.by_target.remove(&a.to);
            }
        }
    }

    /// The attempt at `to` failed: the planner decides about a repeat.
    fn fail(&mut self, now: Instant, to: SocketAddrV4, why: AttemptError) {
        if let Some(id) = self.by_target.remove(&to) {
            self.attempts.remove(&id);
            self.planner.handle_failure(now, id, why);
            self.take_actions(now);
        }
    }

    /// A packet the watcher saw coming in. Anything not between the peer and our punch port
    /// is ignored, as is what does not fit our handshake (a SYN-ACK or RST that does not
    /// acknowledge our ISN, RFC 9293 section 3.10.7.3).
    pub fn handle_seen(&mut self, now: Instant, seen: &Seen) {
        self.handle_seen_with(now, seen, &[]);
    }

    /// [`RawPunch::handle_seen`] for a segment that carried `payload`: the data of a peer's
    /// SYN is taken (our SYN-ACK acknowledges it, and [`Established::received`] hands it to
    /// the socket), as is data acknowledging our SYN on a 4-tuple whose SYN-ACK never came
    /// (`finish_from_data`); anything else's is the kernel socket's.
    pub fn handle_seen_with(&mut self, now: Instant, seen: &Seen, payload: &[u8]) {
        match *seen {
            Seen::Tcp {
                src: SocketAddr::V4(src),
                dst: SocketAddr::V4(dst),
                segment,
                seq,
                ack,
                window,
                options,
                ..
            } if *src.ip() == self.peer && dst == self.local => {
                if self.dead.contains(&src) {
                    return;
                }
                self.sample_rtt(now, &options);
                self.confirm(src, segment, ack);
                match segment {
                    Segment::Syn => self.on_syn(now, src, seq, window, options, payload),
                    Segment::SynAck if self.acks_syn(src, ack) => {
                        if let Some(d) = self.done.get(&src) {
                            if let Some(t) = d.third.filter(|t| t.ack == seq.wrapping_add(1)) {
                                self.transmits.push_back(t);
                            }
                            return;
                        }
                        let ours = TcpOptions {
                            timestamps: options.timestamps.map(|(v, _)| (self.tsval(now), v)),
                            ..self.syn_options(now)
                        };
                        // The handshake's third segment (RFC 9293 section 3.5, figure 7),
                        // queued with the connection (the driver sends it once the socket is
                        // made): the TCP_REPAIR socket's own first segment is a window probe
                        // one byte before it, which a kernel peer in SYN-RECEIVED does not
                        // take as the ACK of its SYN (it would wait for its SYN-ACK's
                        // retransmission, a second later).
                        // Past our SYN's data when the peer took it; scaled once both sides
                        // offered scaling (RFC 7323 section 2.2).
                        let scaled = options.wscale.is_some();
                        let third = self.bare_ack(src, ack, seq.wrapping_add(1), scaled, &ours);
                        self.transmits.push_back(third);
                        self.finish(src, seq, window, ours, options, None);
                        self.continue_at(ack);
                        if let Some(d) = self.done.get_mut(&src) {
                            d.third = Some(third);
                        }
                    }
                    Segment::Other
                        if !payload.is_empty()
                            && !self.done.contains_key(&src)
                            && self.acks_syn(src, ack) =>
                    {
                        self.finish_from_data(now, src, seq, ack, window, options, payload)
                    }
                    // Once the handshake finished, the kernel socket owns the 4-tuple.
                    Segment::Rst if self.acks_syn(src, ack) && !self.done.contains_key(&src) =>
                    {
                        self.fail(now, src, AttemptError::Refused)
                    }
                    _ => {}
                }
            }
            Seen::IcmpTcp {
                from,
                kind: IcmpKind::Unreachable(_),
                quoted_src: SocketAddr::V4(qs),
                quoted_dst: SocketAddr::V4(qd),
                ..
            // As with the kernel engine: an error from the peer's NAT is dropped on this host
            // (the nft rule), so the attempt stays for the peer's SYN; one from a router on the
            // way ends it, and the planner may repeat it.
            } if qs == self.local
                && *qd.ip() == self.peer
                && from != IpAddr::V4(self.peer)
                && !self.done.contains_key(&qd) =>
            {
                self.fail(now, qd, AttemptError::Unreachable)
            }
            _ => {}
        }
    }

    /// A segment that only acknowledges, to `dst`: our next byte `seq`, theirs `ack`, our
    /// window (`scaled`: in the unit our SYN's window scale announced) and the timestamps of
    /// `ours`.
    fn bare_ack(
        &self,
        dst: SocketAddrV4,
        seq: u32,
        ack: u32,
        scaled: bool,
        ours: &TcpOptions,
    ) -> Crafted {
        let shift = if scaled { self.cfg.wscale.min(14) } else { 0 };
        Crafted {
            src: self.local,
            dst,
            ttl: self.cfg.ttl,
            seq,
            ack,
            flags: Flags::Ack,
            window: self.cfg.window >> shift,
            options: TcpOptions {
                timestamps: ours.timestamps,
                ..TcpOptions::default()
            },
            data: false,
        }
    }

    /// The connection just finished continues at `ack`, the peer's acknowledgement of our
    /// SYN, which also tells whether the peer took the hello our SYN carried.
    fn continue_at(&mut self, ack: u32) {
        let took = ack != self.isn.wrapping_add(1);
        if let Some(e) = self.established.back_mut() {
            e.snd_nxt = ack;
            e.first_flight = e.first_flight.map(|_| took);
        }
    }

    /// Whether `ack`, in a SYN-ACK or RST from `src`, acknowledges our SYN: its sequence
    /// number alone, or with the data our SYNs to `src` carried (RFC 9293 section 3.10.7.3).
    fn acks_syn(&self, src: SocketAddrV4, ack: u32) -> bool {
        let after_syn = self.isn.wrapping_add(1);
        ack == after_syn
            || (self.carried(src) && ack == after_syn.wrapping_add(self.syn_data_len()))
    }

    /// Whether any SYN of ours to `src` carried [`RawConfig::syn_data`].
    fn carried(&self, src: SocketAddrV4) -> bool {
        self.carried_to.contains(&src)
    }

    fn syn_data_len(&self) -> u32 {
        u32::try_from(self.cfg.syn_data.len()).unwrap_or(0)
    }

    /// What SYNs marked [`Crafted::data`] carry after their header.
    pub fn syn_data(&self) -> &[u8] {
        &self.cfg.syn_data
    }

    fn on_syn(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        seq: u32,
        window: u16,
        theirs: TcpOptions,
        payload: &[u8],
    ) {
        if let Some(d) = self.done.get(&src).copied() {
            // The peer repeated its SYN: our SYN-ACK may have been lost. Anything else on a
            // finished 4-tuple is the kernel socket's.
            if d.answered == Some(seq) {
                self.synack(src, seq, d.taken, d.options);
            } else {
                self.answer_after_data(src, seq, &d);
            }
            return;
        }
        let ours = self.synack_options(now, &theirs);
        // Data in a SYN is the sender's first flight (ours carry the TLS ClientHello); taking
        // it saves the peer sending it again after the handshake.
        let taken = u32::try_from(payload.len()).unwrap_or(0);
        self.synack(src, seq, taken, ours);
        self.finish(src, seq, window, ours, theirs, Some(seq));
        // A socket that took the peer's hello answers it at once, so its repeats will be our
        // SYN (`syn_again`); one that crosses our SYN-ACK on a path slower than the estimate
        // makes the NATs' tracking resync from that SYN, as if our answer had never left. The
        // peer's confirmation is due a round trip after ours; three estimates leave room for
        // the jitter of a path whose round trip the estimate (its least) understates.
        let wait = if taken > 0 { 3 } else { 1 };
        let next = now + self.backoff(1) * wait;
        if let Some(d) = self.done.get_mut(&src) {
            d.unconfirmed = Some((1, next));
            d.taken = taken;
        }
        if let Some(e) = self.established.back_mut() {
            e.rcv_nxt = e.rcv_nxt.wrapping_add(taken);
            e.received = payload.to_vec();
        }
    }

    fn synack(&mut self, to: SocketAddrV4, their_isn: u32, taken: u32, options: TcpOptions) {
        self.transmits.push_back(Crafted {
            src: self.local,
            dst: to,
            ttl: self.cfg.ttl,
            seq: self.isn,
            ack: their_isn.wrapping_add(1).wrapping_add(taken),
            flags: Flags::SynAck,
            window: self.cfg.window,
            data: false,
            options,
        });
        self.synacks += 1;
    }

    fn finish(
        &mut self,
        remote: SocketAddrV4,
        their_isn: u32,
        peer_window: u16,
        ours: TcpOptions,
        theirs: TcpOptions,
        answered: Option<u32>,
    ) {
        // Whether the peer took our hello is known from its SYN-ACK only (the caller's).
        let carried = self.carried(remote);
        // No more SYNs on this 4-tuple; the planner keeps the attempt as live (it succeeded).
        if let Some(id) = self.by_target.remove(&remote) {
            self.attempts.remove(&id);
        }
        self.done.insert(
            remote,
            Done {
                answered,
                taken: 0,
                options: ours,
                unconfirmed: None,
                third: None,
                early: false,
                from_data: None,
            },
        );
        self.established.push_back(Established {
            local: self.local,
            remote,
            snd_nxt: self.isn.wrapping_add(1),
            rcv_nxt: their_isn.wrapping_add(1),
            ours,
            theirs,
            peer_window,
            our_window: self.cfg.window,
            awaiting_peer: answered.is_some(),
            received: Vec::new(),
            first_flight: carried.then_some(false),
        });
    }

    /// The connection on `remote` failed after its handshake (TLS, or the socket could not be
    /// made): that 4-tuple is not tried again.
    pub fn handle_closed(&mut self, remote: SocketAddrV4) {
        self.done.remove(&remote);
        self.dead.insert(remote);
    }

    /// The next segment to send on the raw socket, or `None` once the queue is drained.
    pub fn poll_transmit(&mut self) -> Option<Crafted> {
        self.transmits.pop_front()
    }

    /// The next finished handshake, for which the driver makes a TCP_REPAIR socket, or `None`.
    pub fn poll_established(&mut self) -> Option<Established> {
        self.established.pop_front()
    }

    /// A 4-tuple given out with [`Established::awaiting_peer`] whose peer has shown it has our
    /// SYN-ACK: its socket may send now; or one finished from the peer's data whose peer
    /// acknowledged our data ([`RawPunch::awaiting_ack_of_data`]).
    pub fn poll_confirmed(&mut self) -> Option<SocketAddrV4> {
        self.confirmed.pop_front()
    }

    /// A 4-tuple whose socket spoke early ([`RawPunch::sending_early`]) and whose peer has
    /// now confirmed in a way that says our first data may have come before its socket (or
    /// before the handshake was made again): that data is best sent again at once.
    pub fn poll_data_again(&mut self) -> Option<SocketAddrV4> {
        self.data_again.pop_front()
    }

    /// When [`RawPunch::handle_timeout`] is next due: the planner's next moment, the next SYN
    /// repeat within the budget, or the next SYN-ACK repeat.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let planner = self.planner.poll_timeout();
        // Past the budget nothing is repeated.
        let repeat = self
            .attempts
            .values()
            .map(|a| a.next)
            .min()
            .map(|t| t.max(self.next_slot))
            .filter(|&t| !self.planner.expired(t));
        // SYN-ACKs are repeated past the budget: their connection is up on our side, and the
        // driver bounds how long it waits for the peer.
        let synack = self
            .done
            .values()
            .filter_map(|d| d.unconfirmed)
            .map(|u| u.1)
            .min();
        [planner, repeat, synack].into_iter().flatten().min()
    }
}

mod lost;
use lost::FromData;

#[cfg(test)]
mod tests;

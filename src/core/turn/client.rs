//! The TURN client machine; see the module documentation of [`super`] for what it does.

use super::{
    Event, SendError, Transport, TurnConfig, TurnError, CHANNEL_MAX, CHANNEL_MIN, MAX_DATA,
};
use crate::core::stun::{
    Attribute, ChannelData, Class, Encoder, Message, MessageType, Method, TransactionId,
};
use crate::core::{Machine, Transmit};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

mod answers;

/// RFC 8489 section 6.2.1 Rm: after the last send, wait this many initial RTOs.
const RM: u32 = 16;
/// RFC 8489 section 6.2.2 Ti: the one wait for an answer over a reliable transport.
const STREAM_TIMEOUT: Duration = Duration::from_millis(39_500);
/// 438 answers in a row to one request before the server counts as broken.
const MAX_STALE: u32 = 3;
/// Datagrams held while their peer's permission is being created; the oldest go first.
const MAX_HELD: usize = 64;
/// Refresh an allocation this long before it ends (RFC 8656 section 8), or at half its
/// lifetime when that is shorter.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// RFC 8656 section 7.2: the lifetime a server grants when its answer lacks LIFETIME.
const DEFAULT_LIFETIME: u32 = 600;
/// RFC 8656 section 18.8: the protocol number of UDP in REQUESTED-TRANSPORT.
const UDP: u8 = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Allocating,
    Allocated,
    /// A Refresh with lifetime 0 is out.
    Closing,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Allocate,
    /// The LIFETIME asked for, in seconds; 0 frees the allocation.
    Refresh(u32),
    Permission(Vec<IpAddr>),
    ChannelBind(SocketAddr, u16),
}

impl Kind {
    fn method(&self) -> Method {
        match self {
            Kind::Allocate => Method::Allocate,
            Kind::Refresh(_) => Method::Refresh,
            Kind::Permission(_) => Method::CreatePermission,
            Kind::ChannelBind(..) => Method::ChannelBind,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Kind::Allocate => "Allocate",
            Kind::Refresh(_) => "Refresh",
            Kind::Permission(_) => "CreatePermission",
            Kind::ChannelBind(..) => "ChannelBind",
        }
    }
}

/// An outstanding request.
struct Txn {
    tid: TransactionId,
    kind: Kind,
    payload: Vec<u8>,
    /// Whether it carried our credentials (a 401 to it means they are wrong).
    authed: bool,
    sends: u32,
    /// The wait after the latest send (RFC 8489 section 6.2.1 doubles it each time).
    rto: Duration,
    /// The next retransmission, or after the last one the moment the request times out.
    next: Instant,
    started: Instant,
    /// 438 answers so far in this chain of retries.
    stale: u32,
}

/// The long-term credential state (RFC 8489 section 9.2) learned from the server's 401.
struct Auth {
    realm: String,
    nonce: Vec<u8>,
    key: [u8; 16],
}

#[derive(Default)]
struct Perm {
    installed: bool,
    pending: bool,
    refresh_at: Option<Instant>,
}

struct Chan {
    number: u16,
    bound: bool,
    pending: bool,
    refresh_at: Option<Instant>,
}

/// One TURN allocation; a [`Machine`] over the one socket (or stream) to the server.
pub struct Client {
    cfg: TurnConfig,
    rng: StdRng,
    state: State,
    auth: Option<Auth>,
    relayed: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    /// The lifetime to ask for in Refresh requests: the configured one, else the granted one.
    lifetime: u32,
    expires: Option<Instant>,
    refresh_at: Option<Instant>,
    /// The next Binding indication ([`TurnConfig::keepalive`]).
    keepalive_at: Option<Instant>,
    txns: Vec<Txn>,
    perms: BTreeMap<IpAddr, Perm>,
    chans: BTreeMap<SocketAddr, Chan>,
    by_number: BTreeMap<u16, SocketAddr>,
    next_channel: u16,
    held: VecDeque<(SocketAddr, Vec<u8>)>,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl Client {
    /// Starts allocating: the first Allocate is ready for [`Machine::poll_transmit`] at once.
    pub fn new(cfg: TurnConfig, now: Instant) -> Client {
        let lifetime = cfg.lifetime.map_or(DEFAULT_LIFETIME, |l| {
            l.as_secs().min(u64::from(u32::MAX)) as u32
        });
        let mut c = Client {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            state: State::Allocating,
            auth: None,
            relayed: None,
            mapped: None,
            lifetime,
            expires: None,
            refresh_at: None,
            keepalive_at: None,
            txns: Vec::new(),
            perms: BTreeMap::new(),
            chans: BTreeMap::new(),
            by_number: BTreeMap::new(),
            next_channel: CHANNEL_MIN,
            held: VecDeque::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        c.start(now, Kind::Allocate, 0);
        c
    }

    /// The configuration the client was made with.
    pub fn config(&self) -> &TurnConfig {
        &self.cfg
    }

    /// Our relayed transport address, once allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relayed
    }

    /// Our address as the server saw it (XOR-MAPPED-ADDRESS of the Allocate answer).
    pub fn mapped(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// Whether the allocation exists and is usable: allocated, and not closing, closed or lost.
    pub fn is_allocated(&self) -> bool {
        self.state == State::Allocated
    }

    /// When the allocation ends unless refreshed.
    pub fn expires(&self) -> Option<Instant> {
        self.expires
    }

    /// Whether a permission toward `peer` is installed (RFC 8656 section 9), by a successful
    /// CreatePermission or ChannelBind: only then does the server relay data from that IP.
    pub fn has_permission(&self, peer: IpAddr) -> bool {
        self.perms.get(&peer).is_some_and(|p| p.installed)
    }

    /// The channel bound to `peer`, once its ChannelBind succeeded.
    pub fn channel(&self, peer: SocketAddr) -> Option<u16> {
        self.chans.get(&peer).filter(|c| c.bound).map(|c| c.number)
    }

    /// Asks for a permission toward `peer` (RFC 8656 section 9; the port does not matter):
    /// at once when allocated, else right after the allocation. Kept refreshed until close.
    pub fn create_permission(&mut self, now: Instant, peer: IpAddr) {
        if matches!(self.state, State::Closing | State::Done) {
            return;
        }
        let p = self.perms.entry(peer).or_default();
        if p.installed || p.pending {
            return;
        }
        if self.state == State::Allocated {
            p.pending = true;
            self.start(now, Kind::Permission(vec![peer]), 0);
        }
    }

    /// Binds a channel to `peer` (RFC 8656 section 12), with a permission toward its address.
    /// Returns the channel number; data goes through it once [`Event::ChannelBound`] said so.
    /// `None` when closing or all 4096 channel numbers are taken.
    pub fn bind_channel(&mut self, now: Instant, peer: SocketAddr) -> Option<u16> {
        if matches!(self.state, State::Closing | State::Done) {
            return None;
        }
        if let Some(c) = self.chans.get(&peer) {
            return Some(c.number);
        }
        if self.next_channel > CHANNEL_MAX {
            return None;
        }
        let number = self.next_channel;
        self.next_channel += 1;
        self.by_number.insert(number, peer);
        let pending = self.state == State::Allocated;
        self.chans.insert(
            peer,
            Chan {
                number,
                bound: false,
                pending,
                refresh_at: None,
            },
        );
        self.create_permission(now, peer.ip());
        if pending {
            self.start(now, Kind::ChannelBind(peer, number), 0);
        }
        Some(number)
    }

    /// Sends `data` to `peer` through the relay: as ChannelData when a channel is bound,
    /// else in a Send indication once the peer's permission is installed (created here if
    /// there is none; until then the data waits, at most `MAX_HELD` datagrams).
    pub fn send_to(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        data: &[u8],
    ) -> Result<(), SendError> {
        if self.state != State::Allocated {
            return Err(SendError::NotAllocated);
        }
        if data.len() > MAX_DATA {
            return Err(SendError::TooLarge(data.len()));
        }
        if self.relayed.is_some_and(|r| r.is_ipv4() != peer.is_ipv4()) {
            return Err(SendError::FamilyMismatch);
        }
        if let Some(c) = self.chans.get(&peer).filter(|c| c.bound) {
            let mut payload = Vec::with_capacity(data.len() + 8);
            ChannelData::encode(
                c.number,
                data,
                self.cfg.transport == Transport::Stream,
                &mut payload,
            );
            self.transmit(payload);
            return Ok(());
        }
        if self.has_permission(peer.ip()) {
            self.send_indication(peer, data);
            return Ok(());
        }
        if self.held.len() == MAX_HELD {
            self.held.pop_front();
        }
        self.held.push_back((peer, data.to_vec()));
        self.create_permission(now, peer.ip());
        Ok(())
    }

    /// Frees the allocation with a Refresh of lifetime 0 (RFC 8656 section 8);
    /// [`Event::Closed`] follows its answer or its timeout. Before the first authenticated
    /// Allocate there is nothing to free and the client closes at once.
    pub fn close(&mut self, now: Instant) {
        match self.state {
            State::Closing | State::Done => {}
            State::Allocating if self.auth.is_none() => self.finish_closed(),
            State::Allocating | State::Allocated => {
                self.state = State::Closing;
                self.txns.clear();
                self.held.clear();
                self.start(now, Kind::Refresh(0), 0);
            }
        }
    }

    fn transmit(&mut self, payload: Vec<u8>) {
        self.out.push_back(Transmit {
            socket: self.cfg.socket,
            dst: self.cfg.server,
            payload,
        });
    }

    fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let tid = TransactionId::random(&mut self.rng);
        let mut payload = Vec::with_capacity(data.len() + 48);
        let mt = MessageType {
            method: Method::Send,
            class: Class::Indication,
        };
        Encoder::new(&mut payload, mt, tid)
            .push(&Attribute::XorPeerAddress(peer))
            .push(&Attribute::Data(data));
        self.transmit(payload);
    }

    fn encode(&self, kind: &Kind, tid: TransactionId) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        let mt = MessageType {
            method: kind.method(),
            class: Class::Request,
        };
        let mut e = Encoder::new(&mut out, mt, tid);
        match kind {
            Kind::Allocate => {
                e.push(&Attribute::RequestedTransport(UDP));
                if self.cfg.lifetime.is_some() {
                    e.push(&Attribute::Lifetime(self.lifetime));
                }
            }
            Kind::Refresh(l) => {
                e.push(&Attribute::Lifetime(*l));
            }
            Kind::Permission(peers) => {
                for ip in peers {
                    e.push(&Attribute::XorPeerAddress(SocketAddr::new(*ip, 0)));
                }
            }
            Kind::ChannelBind(peer, number) => {
                e.push(&Attribute::ChannelNumber(*number))
                    .push(&Attribute::XorPeerAddress(*peer));
            }
        }
        if let Some(s) = &self.cfg.software {
            e.push(&Attribute::Software(s));
        }
        if let Some(a) = &self.auth {
            e.push(&Attribute::Username(self.cfg.username.as_bytes()))
                .push(&Attribute::Realm(&a.realm))
                .push(&Attribute::Nonce(&a.nonce))
                .message_integrity(&a.key);
        }
        e.fingerprint();
        out
    }

    /// Sends a new request (a new transaction, also for a retry after 401 or 438).
    fn start(&mut self, now: Instant, kind: Kind, stale: u32) {
        let tid = TransactionId::random(&mut self.rng);
        let payload = self.encode(&kind, tid);
        let wait = match self.cfg.transport {
            Transport::Stream => STREAM_TIMEOUT,
            Transport::Udp if self.cfg.max_transmits <= 1 => self.cfg.rto * RM,
            Transport::Udp => self.cfg.rto,
        };
        self.transmit(payload.clone());
        self.txns.push(Txn {
            tid,
            authed: self.auth.is_some(),
            kind,
            payload,
            sends: 1,
            rto: self.cfg.rto,
            next: now + wait,
            started: now,
            stale,
        });
    }

    fn set_lifetime(&mut self, now: Instant, secs: u32) {
        let l = Duration::from_secs(u64::from(secs));
        self.expires = Some(now + l);
        self.refresh_at = Some(now + l - REFRESH_MARGIN.min(l / 2));
        if self.keepalive_at.is_none() && self.cfg.transport == Transport::Udp {
            self.keepalive_at = self.cfg.keepalive.map(|k| now + k);
        }
    }

    fn keepalive_due(&mut self, now: Instant) {
        let (Some(at), Some(every)) = (self.keepalive_at, self.cfg.keepalive) else {
            return;
        };
        if at <= now {
            self.keepalive_at = Some(now + every);
            let tid = TransactionId::random(&mut self.rng);
            let mut payload = Vec::with_capacity(28);
            let mt = MessageType {
                method: Method::Binding,
                class: Class::Indication,
            };
            Encoder::new(&mut payload, mt, tid).fingerprint();
            self.transmit(payload);
        }
    }

    fn die(&mut self, error: TurnError) {
        self.state = State::Done;
        self.txns.clear();
        self.held.clear();
        self.events.push_back(Event::Failed(error));
    }

    fn finish_closed(&mut self) {
        self.state = State::Done;
        self.txns.clear();
        self.held.clear();
        self.events.push_back(Event::Closed);
    }

    /// The permissions that `due` selects among those with no request in flight, now marked
    /// as having one.
    fn take_perms(&mut self, due: impl Fn(&Perm) -> bool) -> Vec<IpAddr> {
        self.perms
            .iter_mut()
            .filter(|(_, p)| !p.pending && due(p))
            .map(|(ip, p)| {
                p.pending = true;
                *ip
            })
            .collect()
    }

    /// The same for channel bindings: `(peer, channel number)`.
    fn take_chans(&mut self, due: impl Fn(&Chan) -> bool) -> Vec<(SocketAddr, u16)> {
        self.chans
            .iter_mut()
            .filter(|(_, c)| !c.pending && due(c))
            .map(|(peer, c)| {
                c.pending = true;
                (*peer, c.number)
            })
            .collect()
    }

    /// Requests what was asked for before the allocation existed.
    fn request_wanted(&mut self, now: Instant) {
        let ips = self.take_perms(|p| !p.installed);
        if !ips.is_empty() {
            self.start(now, Kind::Permission(ips), 0);
        }
        let chans = self.take_chans(|c| !c.bound);
        for (peer, number) in chans {
            self.start(now, Kind::ChannelBind(peer, number), 0);
        }
    }

    /// Sends the held datagrams whose peers now have a permission.
    fn release_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        for (peer, data) in held {
            if self.has_permission(peer.ip()) {
                self.send_indication(peer, &data);
            } else {
                self.held.push_back((peer, data));
            }
        }
    }

    fn retransmit(&mut self, now: Instant) {
        let mut timed_out = Vec::new();
        let mut resend = Vec::new();
        for t in self.txns.iter_mut().filter(|t| t.next <= now) {
            if self.cfg.transport == Transport::Udp && t.sends < self.cfg.max_transmits {
                t.sends += 1;
                t.rto *= 2;
                t.next = now
                    + if t.sends == self.cfg.max_transmits {
                        self.cfg.rto * RM
                    } else {
                        t.rto
                    };
                resend.push(t.payload.clone());
            } else {
                timed_out.push(t.tid);
            }
        }
        for p in resend {
            self.transmit(p);
        }
        for tid in timed_out {
            let Some(i) = self.txns.iter().position(|t| t.tid == tid) else {
                continue;
            };
            let t = self.txns.remove(i);
            let waited_ms = now.saturating_duration_since(t.started).as_millis() as u64;
            let error = TurnError::Timeout {
                request: t.kind.name(),
                waited_ms,
            };
            self.fail(now, t.kind, error);
        }
    }

    fn refresh_due(&mut self, now: Instant) {
        if self.expires.is_some_and(|e| e <= now) {
            self.die(TurnError::Expired);
            return;
        }
        if self.refresh_at.is_some_and(|t| t <= now) {
            self.refresh_at = None;
            self.start(now, Kind::Refresh(self.lifetime), 0);
        }
        let ips = self.take_perms(|p| p.installed && p.refresh_at.is_some_and(|t| t <= now));
        if !ips.is_empty() {
            self.start(now, Kind::Permission(ips), 0);
        }
        let chans = self.take_chans(|c| c.bound && c.refresh_at.is_some_and(|t| t <= now));
        for (peer, number) in chans {
            self.start(now, Kind::ChannelBind(peer, number), 0);
        }
    }
}

impl Machine for Client {
    type Event = Event;

    /// Datagrams (or stream frames) from anywhere but the server are ignored: everything
    /// relayed comes through the server.
    fn handle_input(&mut self, now: Instant, _socket: usize, from: SocketAddr, data: &[u8]) {
        if from != self.cfg.server || self.state == State::Done {
            return;
        }
        if ChannelData::is_channel_data(data) {
            if let Ok(cd) = ChannelData::parse(data) {
                if let Some(&peer) = self.by_number.get(&cd.channel) {
                    self.events.push_back(Event::Data {
                        peer,
                        bytes: cd.data.to_vec(),
                    });
                }
            }
            return;
        }
        let Ok(msg) = Message::parse(data) else {
            return;
        };
        let mt = msg.message_type();
        match mt.class {
            Class::Indication if mt.method == Method::Data => self.on_data_indication(&msg),
            Class::Success | Class::Error => self.on_response(now, &msg),
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Done {
            return;
        }
        self.retransmit(now);
        if self.state == State::Allocated {
            self.refresh_due(now);
            self.keepalive_due(now);
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Done {
            return None;
        }
        let txns = self.txns.iter().map(|t| t.next);
        let mut t = txns.min();
        if self.state == State::Allocated {
            let perms = self
                .perms
                .values()
                .filter(|p| p.installed && !p.pending)
                .filter_map(|p| p.refresh_at);
            let chans = self
                .chans
                .values()
                .filter(|c| c.bound && !c.pending)
                .filter_map(|c| c.refresh_at);
            let timers = [self.refresh_at, self.expires, self.keepalive_at]
                .into_iter()
                .flatten();
            t = t.into_iter().chain(timers).chain(perms).chain(chans).min();
        }
        t
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

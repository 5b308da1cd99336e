//! The rendezvous client, sans-IO: registers with the server until it introduces the peer,
//! refuses, or time runs out.
//!
//! # Call order
//!
//! Like quinn-proto's `Connection`, a [`Client`] never touches a socket or a clock; its
//! driver owns both and calls, in a loop:
//!
//! 1. [`Client::handle_timeout`] whenever [`Client::poll_timeout`] is at or before `now`
//!    (right after [`Client::new`] it is: the first register is due at once);
//! 2. [`Client::handle_input`] for every datagram received on the socket (from anyone: the
//!    client drops what does not come from the server);
//! 3. [`Client::poll_event`] until it returns `None`, answering
//!    [`ClientEvent::RefreshTcpOffer`] with [`Client::set_tcp_offer`] (or not at all, to keep
//!    the old offer when a new prediction fails) and [`ClientEvent::MeasureCounter`] with
//!    [`Client::counter_measured`], **before** step 4: the register that is due goes out
//!    with the offer and range current when it is polled;
//! 4. [`Client::poll_transmit`] until it returns `None`, sending each datagram to the server
//!    (it is a [`Machine`]: the one socket is number 0);
//! 5. waiting for a datagram no longer than until [`Client::poll_timeout`].
//!
//! [`ClientEvent::Introduced`] and [`ClientEvent::Failed`] end the rendezvous; after either,
//! the client is inert: no timeout, no transmits, input ignored.
//!
//! # Behaviour
//!
//! A register goes out every [`REGISTER_EVERY`]; it also keeps our NAT binding toward the
//! server (and so the endpoint the peer will be told) alive. Registers are signed with the
//! session's rendezvous key; the key itself goes out only after the server answered
//! `unknown-session` (we create the session, trust on first use: the first time, or when
//! the server forgot it), and stops again with the next `waiting`. `registry-unavailable`
//! answers are ridden out for [`REGISTRY_GRACE`] (a Redis failover may take a moment).
//! While waiting, a TCP offer is renewed every [`OFFER_REFRESH`]. [`SERVER_SILENCE`]
//! without any answer means the server is unreachable; the caller's deadline means the
//! peer never came, or (when the server counted registrations under another secret) that
//! only a peer with another secret did.

use super::{derive_rendezvous_key, ErrorCode, Msg, NatInfo, PeerData, RelayOffer, TcpOffer};
use crate::core::{Machine, Transmit};
use crate::Error;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How often the client re-registers while it waits.
pub const REGISTER_EVERY: Duration = Duration::from_millis(300);
/// No answer at all from the server for this long: it is unreachable (or UDP to it is
/// blocked).
pub const SERVER_SILENCE: Duration = Duration::from_secs(5);
/// How long `registry-unavailable` answers are retried before giving up.
pub const REGISTRY_GRACE: Duration = Duration::from_millis(1500);
/// While waiting for the peer, the TCP prediction is redone this often: it ages (a
/// sequential NAT's counter moves with other traffic of this host, conntrack forgets the
/// connections it was made from), and a re-register replaces what the server tells the peer.
pub const OFFER_REFRESH: Duration = Duration::from_secs(20);
/// How often a busy counter is measured anew while we wait ([`ClientEvent::MeasureCounter`]).
pub const COUNTER_REFRESH: Duration = Duration::from_secs(1);
/// A `start_in_ms` beyond this is not believed (a confused or hostile server would
/// otherwise park us for as long as it likes).
const MAX_START_IN: Duration = Duration::from_secs(10);
/// After the introduction, how long a peer with a relay keeps registering until both relayed
/// offers are known: the first peer's allocation needs the session, so it may come after the
/// match; each re-register after it is answered with the other peer's latest data.
pub const RELAY_SYNC: Duration = Duration::from_secs(3);
/// Registers while a pairing's confirmations are exchanged: both peers are there, so the
/// answers come at the server's round trip.
const PAIRING_EVERY: Duration = Duration::from_millis(20);
/// The shortest pause between registers while an introduction waits for relayed offers.
const HELD_EVERY_MIN: Duration = Duration::from_millis(20);

/// What a [`Client`] registers with, and the limits of its wait. Fixed for the run except
/// the TCP offer, the relayed offer and the search range, which the driver updates while the
/// client waits ([`Client::set_tcp_offer`], [`Client::set_relayed`],
/// [`Client::counter_measured`]).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Where registers go; datagrams from anywhere else are ignored.
    pub server: SocketAddr,
    /// The session name both peers give (1 to 128 bytes); the rendezvous key is derived from it.
    pub session: String,
    /// The shared secret; only the rendezvous key derived from it is ever sent.
    pub secret: Vec<u8>,
    /// Our per-run peer id, 16 hex digits (the driver draws it: no randomness here).
    pub peer_id: String,
    /// Addresses of our punching socket on our own interfaces.
    pub locals: Vec<SocketAddr>,
    /// Our NAT as the quick classification saw it, sent in every register.
    pub nat: NatInfo,
    /// Our TCP offer, when we punch TCP; renewed through [`ClientEvent::RefreshTcpOffer`].
    pub tcp: Option<TcpOffer>,
    /// Our punch port as our router maps it, offered to the peer.
    pub mapped: Option<SocketAddr>,
    /// Our relayed address on a TURN server, offered to the peer; see [`Client::set_relayed`].
    pub relayed: Option<RelayOffer>,
    /// Our round trip to the server, for the server's choice of the start time.
    pub rtt: Duration,
    /// When to give up waiting for the peer.
    pub deadline: Instant,
    /// The whole wait the user allowed (`--timeout`), as the errors report it.
    pub timeout: Duration,
    /// Added to the start the server gives (`--start-delay-ms`).
    pub start_delay: Duration,
    /// Ports per second by which `nat.range` moves while we wait: a port counter too busy to
    /// predict is searched where it is when the peer comes, not where the probe saw it.
    pub range_drift: Option<f64>,
    /// Our UDP to the server is blocked: we register over TCP and can only be relayed.
    pub udp_blocked: bool,
    /// Whether the introduction waits (at most [`RELAY_SYNC`]) for both relayed offers. A
    /// punch that starts on the relay needs them at once; one that only falls back to the
    /// relay after a failed punch (TCP) gets them then, from a second rendezvous, and starts
    /// sooner.
    pub relay_hold: bool,
}

/// What the rendezvous gave us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introduction {
    /// Our public endpoint as the server saw it.
    pub me: SocketAddr,
    /// The other peer as it registered: id, public endpoint, locals, NAT and its offers.
    pub peer: PeerData,
    /// The agreed moment to start punching, on the caller's clock.
    pub start: Instant,
    /// Whether our registration completed the pair ([`Msg::Peer`]'s `joined_second`);
    /// `None` from a server that does not say.
    pub joined_second: Option<bool>,
}

/// What the rendezvous [`Client`] tells its driver, through [`Client::poll_event`].
#[derive(Debug)]
pub enum ClientEvent {
    /// Registered; the peer is not there yet. Said once, at the first `waiting`.
    Waiting {
        /// How long the server still holds the session for the peer, in milliseconds.
        wait_left_ms: u64,
    },
    /// The server refused `count` registrations (in all so far) made with another secret;
    /// said each time the count grows.
    StrangerRejected {
        /// The server's total of refused registrations for this session so far.
        count: u32,
    },
    /// Our TCP offer is [`OFFER_REFRESH`] old: redo the prediction and hand the new offer to
    /// [`Client::set_tcp_offer`] before the next [`Client::poll_transmit`].
    RefreshTcpOffer,
    /// Our port counter is too busy to predict and its search range drifts: ask the server
    /// for a fresh socket's mapped port and hand it to [`Client::counter_measured`]. Every
    /// [`COUNTER_REFRESH`] while we wait: extrapolating the drift alone misses a counter that
    /// wraps around its NAT's pool, whose bounds nobody told us.
    MeasureCounter,
    /// The pairing's key, both confirmations matched (just before `Introduced`).
    Paired([u8; 32]),
    /// The server introduced the peer: punch toward it from [`Introduction::start`]. With a
    /// relay, held back (at most [`RELAY_SYNC`]) until both relayed offers are known; with a
    /// pairing, until both confirmations matched. Ends the rendezvous.
    Introduced(Box<Introduction>),
    /// The rendezvous failed: the server refused, fell silent for [`SERVER_SILENCE`], or the
    /// deadline passed without the peer; a pairing whose code did not match ends here too.
    Failed(Error),
}

/// The rendezvous client of one connect: registers with the server until it introduces the
/// peer, refuses, or time runs out. A [`Machine`] with one socket; see the module docs for the
/// call order.
pub struct Client {
    cfg: ClientConfig,
    key: [u8; 32],
    seq: u64,
    /// Whether registers carry the key (after `unknown-session`, until `waiting`).
    send_key: bool,
    next_send: Instant,
    /// A register is due; it is encoded when polled, with the offer current then.
    register_due: bool,
    last_answer: Instant,
    said_waiting: bool,
    /// Registrations with another secret, as the server last counted them.
    rejected: u32,
    /// When the server's registry went down (the first `registry-unavailable` of a run).
    registry_down: Option<Instant>,
    offer_made: Instant,
    /// When the client was made: the drift of `nat.range` counts from here.
    started: Instant,
    /// When the register that is due was scheduled.
    register_at: Instant,
    /// When the counter was last asked to be measured.
    measured: Instant,
    events: VecDeque<ClientEvent>,
    done: bool,
    /// Our allocation is under way ([`Client::relay_pending`]).
    relay_pending: bool,
    /// A register carrying our relayed offer went out.
    offer_sent: bool,
    /// The introduction held back while the relayed offers are exchanged, and until when.
    held: Option<(Introduction, Instant)>,
    /// Registers sent early while an introduction is held (their pace backs off).
    held_polls: u32,
    /// `connect --code`: the pairing exchange ([`Client::with_pairing`]).
    pairing: Option<Pairing>,
}

/// Our side of a pairing: the SPAKE2 state until the peer's message came, then the key and
/// our confirmation of it.
struct Pairing {
    pake: Option<crate::core::pairing::Pake>,
    msg: String,
    key: Option<[u8; 32]>,
    confirm: Option<String>,
}

/// Where a pairing stands after the peer's latest data.
enum Paired {
    /// Registers go on: our confirmation must reach the peer, or its own is not here yet.
    Pending,
    Done([u8; 32]),
    Wrong,
}

impl Client {
    /// Our NAT as the next register says it: a drifting search range moved on to now.
    fn nat_now(&self) -> NatInfo {
        let mut nat = self.cfg.nat;
        if let (Some(range), Some(drift)) = (nat.range, self.cfg.range_drift) {
            let elapsed = self.register_at.saturating_duration_since(self.started);
            nat.range = Some(crate::core::classify::drift_range(range, drift, elapsed));
        }
        nat
    }

    /// `now` starts the clocks: the first register is due at once, and the server has
    /// [`SERVER_SILENCE`] from now to answer. The TCP offer in `cfg` counts as made now.
    pub fn new(cfg: ClientConfig, now: Instant) -> Self {
        let key = derive_rendezvous_key(&cfg.secret, &cfg.session);
        Client {
            cfg,
            key,
            seq: 0,
            send_key: false,
            next_send: now,
            register_due: false,
            last_answer: now,
            said_waiting: false,
            rejected: 0,
            registry_down: None,
            offer_made: now,
            started: now,
            register_at: now,
            measured: now,
            events: VecDeque::new(),
            done: false,
            relay_pending: false,
            offer_sent: false,
            held: None,
            held_polls: 0,
            pairing: None,
        }
    }

    /// A client that takes over from an earlier one of this run whose last register was
    /// number `seq`: its registers go on from there, since the server ignores a lower one
    /// from the same peer as a replay.
    pub fn continuing(mut self, seq: u64) -> Self {
        self.seq = seq;
        self
    }

    /// The number of the last register sent (see [`Client::continuing`]).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// A pairing (`connect --code`): registers carry our SPAKE2 message `msg` (and then our
    /// confirmation); the introduction comes only once the peer's confirmation matched the
    /// key both derived, after [`ClientEvent::Paired`]; a mismatch is
    /// [`Error::WrongCode`]. The session key comes from the session name alone (a code has
    /// no secret the server may hold).
    pub fn with_pairing(mut self, pake: crate::core::pairing::Pake, msg: &[u8]) -> Self {
        self.pairing = Some(Pairing {
            pake: Some(pake),
            msg: crate::core::hex::encode(msg),
            key: None,
            confirm: None,
        });
        self
    }

    /// The pairing after the peer's data `peer`.
    fn pair(&mut self, peer: &super::PeerData) -> Paired {
        use crate::core::pairing::confirmation;
        let Some(p) = self.pairing.as_mut() else {
            return Paired::Pending;
        };
        // A peer that is not pairing, or whose message is no SPAKE2 message, did not type our
        // code either.
        let Some(theirs) = peer.pairing.as_ref() else {
            return Paired::Wrong;
        };
        let key = match (p.key, p.pake.take()) {
            (Some(k), _) => k,
            (None, Some(pake)) => {
                let Some(Ok(k)) = crate::core::hex::decode(&theirs.msg).map(|m| pake.finish(&m))
                else {
                    return Paired::Wrong;
                };
                p.key = Some(k);
                p.confirm = Some(crate::core::hex::encode(&confirmation(
                    &k,
                    &self.cfg.peer_id,
                )));
                k
            }
            (None, None) => return Paired::Wrong,
        };
        match theirs.confirm.as_deref().map(crate::core::hex::decode32) {
            None => Paired::Pending,
            Some(Some(c)) if c == confirmation(&key, &peer.id) => Paired::Done(key),
            Some(_) => Paired::Wrong,
        }
    }

    /// Our allocation is under way: an introduction waits (at most [`RELAY_SYNC`]) for
    /// our offer ([`Client::set_relayed`]) to reach the server and for the peer's.
    pub fn relay_pending(&mut self) {
        self.relay_pending = self.cfg.relayed.is_none();
    }

    /// Our allocation failed for good: the introduction no longer waits for it.
    pub fn relay_given_up(&mut self) {
        self.relay_pending = false;
    }

    /// Whether `intro` must wait for relayed offers: we have or expect one, and ours has not
    /// been sent or the peer's is missing.
    fn relay_unsettled(&self, intro: &Introduction) -> bool {
        let ours = self.relay_pending || self.cfg.relayed.is_some();
        self.cfg.relay_hold && ours && (!self.offer_sent || intro.peer.relayed.is_none())
    }

    /// The configuration as it stands now, with the offers and search range renewed since
    /// [`Client::new`].
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Whether the server has shown that our session exists (we waited in it, or met the
    /// peer there): an allocation with session credentials can be made now.
    pub fn session_exists(&self) -> bool {
        self.said_waiting || self.held.is_some()
    }

    /// The driver's answer to [`ClientEvent::MeasureCounter`]: the port `port` the counter
    /// gave a new flow at `now`. The search range starts there and reaches as far as the
    /// drift carries it in [`crate::core::classify::BUSY_AHEAD`], and drifts on from `now`.
    pub fn counter_measured(&mut self, now: Instant, port: u16) {
        if let Some(drift) = self.cfg.range_drift {
            let range = crate::core::classify::range_ahead(port, drift);
            self.cfg.nat.range = Some(range);
            self.started = now;
        }
    }

    /// The driver's answer to [`ClientEvent::RefreshTcpOffer`]: the offer the next
    /// registers carry.
    pub fn set_tcp_offer(&mut self, offer: TcpOffer) {
        self.cfg.tcp = Some(offer);
    }

    /// Our relayed address, once the allocation exists: the next registers carry it (an
    /// allocation with session credentials needs the session, so the first of two peers
    /// learns its relayed address only after its first registers).
    pub fn set_relayed(&mut self, now: Instant, relayed: RelayOffer) {
        self.cfg.relayed = Some(relayed);
        self.relay_pending = false;
        // The peer's introduction may be waiting for it: the next register goes at once.
        self.next_send = self.next_send.min(now);
    }

    /// The error for a server's refusal.
    fn refusal(&self, code: ErrorCode, message: String) -> Error {
        let session = self.cfg.session.clone();
        match code {
            ErrorCode::Unauthorized => Error::SessionKeyMismatch { session },
            ErrorCode::RegistryUnavailable => Error::RegistryUnavailable {
                server: self.cfg.server,
            },
            ErrorCode::SessionFull => Error::SessionTaken { session },
            ErrorCode::PeerTimeout => Error::PeerNeverCame {
                session,
                waited_s: self.cfg.timeout.as_secs(),
            },
            _ => Error::Rendezvous(message),
        }
    }

    fn finish(&mut self, ev: ClientEvent) {
        self.done = true;
        self.register_due = false;
        self.events.push_back(ev);
    }
}

impl Machine for Client {
    type Event = ClientEvent;

    /// `socket` is ignored: the client has one socket, number 0.
    fn handle_input(&mut self, now: Instant, _socket: usize, from: SocketAddr, data: &[u8]) {
        if self.done || from != self.cfg.server {
            // The peer may already be punching; it retransmits, so nothing is lost.
            return;
        }
        let Some(msg) = Msg::decode(data) else {
            return;
        };
        self.last_answer = now;
        if !matches!(
            msg,
            Msg::Error {
                code: ErrorCode::RegistryUnavailable,
                ..
            }
        ) {
            self.registry_down = None;
        }
        match msg {
            Msg::Waiting {
                wait_left_ms,
                rejected,
                ..
            } => {
                if rejected > self.rejected {
                    self.rejected = rejected;
                    self.events
                        .push_back(ClientEvent::StrangerRejected { count: rejected });
                }
                // The session exists (again): the key need not travel any more.
                self.send_key = false;
                if !self.said_waiting {
                    self.said_waiting = true;
                    self.events.push_back(ClientEvent::Waiting { wait_left_ms });
                }
            }
            Msg::Peer {
                you,
                peer,
                start_in_ms,
                joined_second,
            } => {
                if self.pairing.is_some() {
                    match self.pair(&peer) {
                        Paired::Pending => {
                            // Our confirmation goes out at once; the peer's comes with the
                            // answer to a later register.
                            self.next_send = self.next_send.min(now + PAIRING_EVERY);
                            return;
                        }
                        Paired::Wrong => {
                            let session = self.cfg.session.clone();
                            return self.finish(ClientEvent::Failed(Error::WrongCode { session }));
                        }
                        Paired::Done(key) => self.events.push_back(ClientEvent::Paired(key)),
                    }
                }
                let start = now
                    + Duration::from_millis(start_in_ms).min(MAX_START_IN)
                    + self.cfg.start_delay;
                let intro = Introduction {
                    me: you,
                    peer,
                    start,
                    joined_second,
                };
                let until = self.held.as_ref().map_or(now + RELAY_SYNC, |h| h.1);
                if self.relay_unsettled(&intro) && now < until {
                    // The registers go on; the next answers carry the peer's latest data.
                    // The missing offer usually follows within a round trip or two (an
                    // allocation finishing), so ask again after one round trip, backing off
                    // toward the usual pace: at REGISTER_EVERY the stream would start up to
                    // that much later than the relay allows.
                    let wait = self
                        .cfg
                        .rtt
                        .saturating_mul(1 << self.held_polls.min(8))
                        .clamp(HELD_EVERY_MIN, REGISTER_EVERY);
                    self.held_polls += 1;
                    self.next_send = self.next_send.min(now + wait);
                    self.held = Some((intro, until));
                    return;
                }
                self.finish(ClientEvent::Introduced(Box::new(intro)));
            }
            Msg::Error {
                code: ErrorCode::UnknownSession,
                ..
            } => {
                // First here (or the server forgot the session): create it at once.
                self.send_key = true;
                self.next_send = now;
            }
            Msg::Error {
                code: ErrorCode::RegistryUnavailable,
                ..
            } if now.saturating_duration_since(*self.registry_down.get_or_insert(now))
                < REGISTRY_GRACE => {}
            Msg::Error { code, message } => {
                let err = self.refusal(code, message);
                self.finish(ClientEvent::Failed(err));
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if self.held.as_ref().is_some_and(|h| now >= h.1) {
            // The peer (or our allocation) never completed the exchange: go without.
            let (intro, _) = self.held.take().expect("checked above");
            return self.finish(ClientEvent::Introduced(Box::new(intro)));
        }
        if now >= self.cfg.deadline {
            let err = if self.rejected > 0 {
                Error::WrongSecretPeer {
                    session: self.cfg.session.clone(),
                    rejected: self.rejected,
                    waited_s: self.cfg.timeout.as_secs(),
                }
            } else {
                Error::PeerNeverCame {
                    session: self.cfg.session.clone(),
                    waited_s: self.cfg.timeout.as_secs(),
                }
            };
            return self.finish(ClientEvent::Failed(err));
        }
        if now.saturating_duration_since(self.last_answer) >= SERVER_SILENCE {
            return self.finish(ClientEvent::Failed(Error::ServerUnreachable {
                server: self.cfg.server,
                waited_ms: SERVER_SILENCE.as_millis() as u64,
            }));
        }
        if now >= self.next_send {
            if self.cfg.tcp.is_some()
                && self.said_waiting
                && now.saturating_duration_since(self.offer_made) >= OFFER_REFRESH
            {
                // Counted from the request: a failed refresh is not retried at once.
                self.offer_made = now;
                self.events.push_back(ClientEvent::RefreshTcpOffer);
            }
            if self.cfg.range_drift.is_some()
                && self.said_waiting
                && now.saturating_duration_since(self.measured) >= COUNTER_REFRESH
            {
                self.measured = now;
                self.events.push_back(ClientEvent::MeasureCounter);
            }
            self.register_due = true;
            self.register_at = now;
            self.next_send = now + REGISTER_EVERY;
        }
    }

    /// The next register, signed, for the server.
    fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.done || !self.register_due {
            return None;
        }
        self.register_due = false;
        self.seq += 1;
        self.offer_sent |= self.cfg.relayed.is_some();
        let msg = Msg::Register {
            session: self.cfg.session.clone(),
            peer: self.cfg.peer_id.clone(),
            seq: self.seq,
            key: self.send_key.then(|| crate::core::hex::encode(&self.key)),
            locals: self.cfg.locals.clone(),
            nat: self.nat_now(),
            tcp: self.cfg.tcp.clone(),
            mapped: self.cfg.mapped,
            relayed: self.cfg.relayed.clone(),
            udp_blocked: self.cfg.udp_blocked,
            pairing: self.pairing.as_ref().map(|p| super::PairingData {
                msg: p.msg.clone(),
                confirm: p.confirm.clone(),
            }),
            rtt_ms: self.cfg.rtt.as_millis().min(u128::from(u32::MAX)) as u32,
            mac: String::new(),
        };
        Some(Transmit {
            socket: 0,
            dst: self.cfg.server,
            payload: msg.encode_signed(&self.key),
        })
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let held = self.held.as_ref().map(|h| h.1);
        let t = self
            .next_send
            .min(self.cfg.deadline)
            .min(self.last_answer + SERVER_SILENCE);
        Some(held.map_or(t, |h| h.min(t)))
    }

    fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests;

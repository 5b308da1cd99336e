//! The rendezvous server, sans-IO: authenticates each client message against its session's
//! key, introduces the two peers of a session with an agreed start, and expires what is idle.
//! Every answer to a message that did not authenticate is no larger than that message.

use super::outcome::RendezvousStats;
use super::registry::{Change, Member, MemoryRegistry, Out, Registry, RegistryError, Session};
use super::{verify_mac, ErrorCode, Msg, PeerData};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a register without a key for a session not created yet is kept, to be answered
/// when its creator's keyed register comes (see [`Rendezvous::held`]): the creator's
/// `unknown-session` round trip, on the slowest paths a few hundred milliseconds.
pub(super) const HOLD_FOR: Duration = Duration::from_secs(3);
/// Registers held at most; the oldest go first. At most `MAX_MESSAGE` bytes each.
const HOLD_MAX: usize = 1024;

/// A register that came before its session existed.
struct Held {
    at: Instant,
    session: String,
    src: SocketAddr,
    data: Vec<u8>,
}

/// How the rendezvous server holds sessions: its limits, timings and registry (from
/// `punchraw serve`'s options). The default is a 60 s wait, 5 s peer idle, 100,000 sessions,
/// a 50 ms start margin, a 20 s linger and the in-memory registry.
#[derive(Debug, Clone)]
pub struct RendezvousConfig {
    /// How long a lone peer waits before it is told the other never came.
    pub wait_timeout: Duration,
    /// A peer that has not re-registered for this long is gone.
    pub peer_idle: Duration,
    /// Sessions held at most; beyond, new sessions are refused with `server-busy` (in-memory
    /// registry; Redis is bounded by its own `maxmemory`).
    pub max_sessions: usize,
    /// How far ahead of the later peer's arrival the punch starts, on top of the slower
    /// peer's one-way delay and a quarter of its RTT (the one-way delays are estimated as
    /// half an RTT, which path asymmetry and jitter make wrong by a fraction of it). 50 ms:
    /// with 10 ms, peers that start within a few milliseconds of each other on a LAN-short
    /// path lost about one try in twenty of a full cone with a random symmetric NAT in the
    /// lab (cause not found; 50/50 with 50 ms, as with the former fixed 150 ms).
    pub start_margin: Duration,
    /// How long a matched session answers re-registrations (lost `peer` messages) before it
    /// is freed.
    pub linger: Duration,
    /// Where session state lives: `None` in this process's memory, or a `redis://HOST:PORT`
    /// URL (opened by `crate::driver::serve::registry`).
    pub registry: Option<String>,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        RendezvousConfig {
            wait_timeout: Duration::from_secs(60),
            peer_idle: Duration::from_secs(5),
            max_sessions: 100_000,
            start_margin: Duration::from_millis(50),
            linger: Duration::from_secs(20),
            registry: None,
        }
    }
}

/// The server side: authenticates messages and introduces the two peers of a session; the
/// state lives in a [`Registry`].
pub struct Rendezvous {
    cfg: RendezvousConfig,
    pub(super) registry: Box<dyn Registry>,
    /// Datagrams dropped unanswered because they were not a well-formed client message
    /// (junk, oversize, or a server-to-client type).
    pub dropped: u64,
    /// What happened to sessions, for `serve --metrics`.
    pub stats: RendezvousStats,
    /// Registers without a key that found no session. A client sends its key only when told
    /// `unknown-session` (docs/rendezvous.md), so the creator's first register is always
    /// refused, and a second peer whose first register arrives between the creator's first
    /// and its keyed one is refused too: without this it would learn of the session one
    /// round trip later than it could. Answered (as if they had just come) when their
    /// session is created, if their MAC verifies under its key.
    held: VecDeque<Held>,
}

/// What one transaction did to its session, counted once it has been applied (a registry
/// may run a transaction more than once).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    None,
    Created,
    Introduced,
    TimedOut,
    /// A register without a key found no session (answered `unknown-session`).
    Unknown,
}

impl Rendezvous {
    /// With the in-memory registry.
    pub fn new(cfg: RendezvousConfig) -> Self {
        Self::with_registry(cfg, Box::new(MemoryRegistry::new()))
    }

    /// With `registry` holding the sessions, e.g. the Redis registry shared by several servers.
    pub fn with_registry(cfg: RendezvousConfig, registry: Box<dyn Registry>) -> Self {
        Rendezvous {
            cfg,
            registry,
            dropped: 0,
            stats: RendezvousStats::default(),
            held: VecDeque::new(),
        }
    }

    /// Session `name`'s rendezvous key and the public addresses of its members, for the
    /// relay's session credentials (`None`: no such session, or the registry is down).
    pub fn session_info(
        &mut self,
        now: Instant,
        name: &str,
    ) -> Option<([u8; 32], Vec<SocketAddr>)> {
        let mut found = None;
        let _ = self.registry.transact(now, name, &mut |_, s| {
            found = s.map(|s| (s.key, s.members.iter().map(|m| m.data.public).collect()));
            (Change::Keep, Vec::new())
        });
        found
    }

    /// Sessions waiting for their second peer and sessions introduced, held now (in-memory
    /// registry; `None` when the registry cannot tell).
    pub fn waiting_and_matched(&self) -> Option<(usize, usize)> {
        self.registry.waiting_and_matched()
    }

    /// Sessions held (in-memory registry; 0 when the registry cannot tell).
    pub fn sessions(&self) -> usize {
        self.registry.sessions().unwrap_or(0)
    }

    /// Handles one datagram from `src`; returns the datagrams to send (to `src` and, when a
    /// session completes, to the other peer too). Any answer to a message that did not
    /// authenticate against an existing session is no larger than that message.
    pub fn handle(&mut self, now: Instant, src: SocketAddr, data: &[u8]) -> Out {
        let Some(msg) = Msg::decode(data) else {
            self.dropped += 1;
            return Vec::new();
        };
        let limit = data.len();
        let (name, result) = match msg {
            Msg::Register {
                session,
                peer,
                seq,
                key,
                locals,
                nat,
                tcp,
                mapped,
                relayed,
                udp_blocked,
                pairing,
                rtt_ms,
                ..
            } => {
                let rtt_ms = rtt_ms.min(10_000);
                let req = Req {
                    src,
                    data,
                    key: key.as_deref().and_then(crate::core::hex::decode32),
                    member: PeerData {
                        id: peer,
                        public: src,
                        locals,
                        nat,
                        tcp,
                        mapped,
                        relayed,
                        udp_blocked,
                        pairing,
                        rtt_ms: Some(rtt_ms),
                    },
                    seq,
                    rtt_ms,
                };
                let full = self
                    .registry
                    .sessions()
                    .is_some_and(|n| n >= self.cfg.max_sessions);
                let cfg = &self.cfg;
                let mut event = Event::None;
                let r = self.registry.transact(now, &session, &mut |now, s| {
                    let (change, out, e) = register(cfg, now, s, &req, full);
                    event = e;
                    (change, out)
                });
                if r.is_ok() {
                    self.count(event);
                }
                match (event, r) {
                    (Event::Unknown, r @ Ok(_)) => {
                        self.hold(now, &session, src, data);
                        (session, r)
                    }
                    (Event::Created, Ok(mut out)) => {
                        // The creator's key is what the session now holds.
                        if let Some(k) = req.key {
                            out.extend(self.release(now, &session, &k));
                        }
                        return out;
                    }
                    (_, r) => (session, r),
                }
            }
            Msg::Bye {
                session, peer, seq, ..
            } => {
                let cfg = &self.cfg;
                let r = self.registry.transact(now, &session, &mut |now, s| {
                    let Some(mut s) = s else {
                        return (Change::Keep, Vec::new());
                    };
                    if !verify_mac(&s.key, data) {
                        return (Change::Keep, Vec::new());
                    }
                    // Only the registered endpoint may remove its own entry, with a fresh seq.
                    s.members
                        .retain(|m| !(m.data.id == peer && m.data.public == src && seq > m.seq));
                    if s.members.is_empty() {
                        (Change::Delete, Vec::new())
                    } else {
                        let t = ttl(cfg, &s, now);
                        (Change::Put(s, t), Vec::new())
                    }
                });
                (session, r)
            }
            Msg::Outcome {
                session,
                peer,
                outcome,
                ..
            } => {
                let mut counted = false;
                let cfg = &self.cfg;
                let r = self.registry.transact(now, &session, &mut |now, s| {
                    counted = false;
                    let Some(mut s) = s else {
                        return (Change::Keep, Vec::new());
                    };
                    let member = s.members.iter().any(|m| m.data.id == peer);
                    if s.outcome_counted || !member || !verify_mac(&s.key, data) {
                        return (Change::Keep, Vec::new());
                    }
                    counted = true;
                    s.outcome_counted = true;
                    // Only the flag changes: the session keeps what time it had left.
                    let t = ttl(cfg, &s, now);
                    (Change::Put(s, t), Vec::new())
                });
                if r.is_ok() && counted {
                    *self.stats.outcomes.entry(outcome.labels()).or_default() += 1;
                } else {
                    self.stats.outcomes_ignored += 1;
                }
                // Never answered: an outcome that did not authenticate earns nothing, and one
                // that did needs nothing.
                return Vec::new();
            }
            _ => {
                self.dropped += 1;
                return Vec::new();
            }
        };
        match result {
            Ok(out) => out,
            Err(RegistryError::Unavailable(why)) => {
                tracing::debug!(session = %name, %why, "rendezvous registry unavailable");
                small_error(
                    ErrorCode::RegistryUnavailable,
                    "the rendezvous server's session registry is down; try again shortly",
                    limit,
                )
                .map(|b| vec![(src, b)])
                .unwrap_or_default()
            }
        }
    }

    /// Frees idle, timed-out and finished sessions; returns `peer-timeout` errors to send to
    /// lone peers whose wait ran out. Registries that expire by themselves (Redis TTLs) do
    /// nothing here; their lone peers hear `peer-timeout` on their next register.
    pub fn expire(&mut self, now: Instant) -> Out {
        let cfg = &self.cfg;
        let mut timeouts = 0;
        let out = self.registry.sweep(now, &mut |now, s| {
            let (change, out, event) = expire_session(cfg, now, s.clone());
            timeouts += u64::from(event == Event::TimedOut);
            (change, out)
        });
        self.stats.peer_timeouts += timeouts;
        out
    }

    /// Keeps a register that found no session ([`Rendezvous::held`]).
    fn hold(&mut self, now: Instant, session: &str, src: SocketAddr, data: &[u8]) {
        self.held
            .retain(|h| now.saturating_duration_since(h.at) < HOLD_FOR);
        if self.held.len() >= HOLD_MAX {
            self.held.pop_front();
        }
        self.held.push_back(Held {
            at: now,
            session: session.to_owned(),
            src,
            data: data.to_vec(),
        });
    }

    /// The answers to the registers held for `session`, just created under `key`: those
    /// whose MAC verifies are handled now (the creator's own is a replay by then, which
    /// earns nothing); the others are dropped unanswered, as they were answered once.
    fn release(&mut self, now: Instant, session: &str, key: &[u8; 32]) -> Out {
        let (mine, rest): (VecDeque<Held>, VecDeque<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.session == session);
        self.held = rest;
        let mut out = Vec::new();
        for h in mine {
            if now.saturating_duration_since(h.at) < HOLD_FOR && verify_mac(key, &h.data) {
                out.extend(self.handle(now, h.src, &h.data));
            }
        }
        out
    }

    fn count(&mut self, e: Event) {
        let st = &mut self.stats;
        match e {
            Event::None | Event::Unknown => {}
            Event::Created => st.sessions_created += 1,
            Event::Introduced => st.introductions += 1,
            Event::TimedOut => st.peer_timeouts += 1,
        }
    }
}

/// A register as the transaction sees it.
struct Req<'a> {
    src: SocketAddr,
    data: &'a [u8],
    key: Option<[u8; 32]>,
    member: PeerData,
    seq: u64,
    rtt_ms: u32,
}

/// Applies the expiry rules to `s` at `now`: idle peers leave, a lone peer's wait ends, a
/// matched session lingers then goes.
fn expire_session(cfg: &RendezvousConfig, now: u64, mut s: Session) -> (Change, Out, Event) {
    if let Some(at) = s.matched_at {
        return if now.saturating_sub(at) < ms(cfg.linger) {
            (Change::Keep, Vec::new(), Event::None)
        } else {
            (Change::Delete, Vec::new(), Event::None)
        };
    }
    let before = s.members.len();
    s.members
        .retain(|m| now.saturating_sub(m.last_seen) < ms(cfg.peer_idle));
    if let [m] = s.members.as_slice() {
        if now.saturating_sub(m.first_seen) >= ms(cfg.wait_timeout) {
            let msg = error(
                ErrorCode::PeerTimeout,
                &format!(
                    "the other peer did not come within {} s",
                    cfg.wait_timeout.as_secs()
                ),
            );
            return (Change::Delete, vec![(m.data.public, msg)], Event::TimedOut);
        }
    }
    if s.members.is_empty() {
        (Change::Delete, Vec::new(), Event::None)
    } else if s.members.len() != before {
        let t = ttl(cfg, &s, now);
        (Change::Put(s, t), Vec::new(), Event::None)
    } else {
        (Change::Keep, Vec::new(), Event::None)
    }
}

fn register(
    cfg: &RendezvousConfig,
    now: u64,
    stored: Option<Session>,
    req: &Req<'_>,
    full: bool,
) -> (Change, Out, Event) {
    let src = req.src;
    let refuse = |code, message: &str| -> (Change, Out, Event) {
        let out = small_error(code, message, req.data.len())
            .map(|b| vec![(src, b)])
            .unwrap_or_default();
        (Change::Keep, out, Event::None)
    };
    let mut event = Event::None;
    let mut s = match stored {
        Some(s) => {
            if !verify_mac(&s.key, req.data) || req.key.is_some_and(|k| k != s.key) {
                let (_, out, _) = refuse(
                    ErrorCode::Unauthorized,
                    "this session was created with another secret",
                );
                let t = ttl(cfg, &s, now);
                let s = Session {
                    rejected: s.rejected.saturating_add(1),
                    ..s
                };
                return (Change::Put(s, t), out, Event::None);
            }
            // Lazily apply the expiry rules, for registries without a sweep.
            match expire_session(cfg, now, s.clone()) {
                (Change::Delete, out, e) if s.matched_at.is_none() && !out.is_empty() => {
                    // The lone peer's wait is over.
                    return (Change::Delete, out, e);
                }
                (Change::Delete, _, _) => {
                    // A finished session's name used again: a new session.
                    event = Event::Created;
                    Session {
                        members: Vec::new(),
                        start_at: None,
                        matched_at: None,
                        outcome_counted: false,
                        completed_by: None,
                        ..s
                    }
                }
                (Change::Put(n, _), _, _) => n,
                (Change::Keep, _, _) => s,
            }
        }
        None => {
            let Some(key) = req.key else {
                let (change, out, _) =
                    refuse(ErrorCode::UnknownSession, "no such session; send the key");
                return (change, out, Event::Unknown);
            };
            if !verify_mac(&key, req.data) {
                return refuse(ErrorCode::Unauthorized, "the MAC does not match the key");
            }
            if full {
                return refuse(
                    ErrorCode::ServerBusy,
                    "the rendezvous server is full; try again later",
                );
            }
            event = Event::Created;
            Session {
                key,
                members: Vec::new(),
                start_at: None,
                matched_at: None,
                rejected: 0,
                outcome_counted: false,
                completed_by: None,
            }
        }
    };
    let mut offer_changed = false;
    if let Some(m) = s.members.iter_mut().find(|m| m.data.id == req.member.id) {
        if req.seq <= m.seq {
            // A replay (or a reordered duplicate): it may come from anywhere, so it must not
            // move the peer's endpoint, and it earns no answer.
            return (Change::Keep, Vec::new(), Event::None);
        }
        offer_changed = m.data.relayed != req.member.relayed;
        // A re-registration; the public endpoint may change if the NAT rebinds.
        m.last_seen = now;
        m.seq = req.seq;
        m.data = req.member.clone();
        m.rtt_ms = req.rtt_ms;
    } else if s.members.len() >= 2 {
        return refuse(
            ErrorCode::SessionFull,
            "this session already has two peers; pick another session name",
        );
    } else {
        s.members.push(Member {
            data: req.member.clone(),
            rtt_ms: req.rtt_ms,
            seq: req.seq,
            first_seen: now,
            last_seen: now,
        });
    }
    if s.members.len() < 2 {
        let waited = now.saturating_sub(s.members[0].first_seen);
        let msg = Msg::Waiting {
            you: src,
            wait_left_ms: ms(cfg.wait_timeout).saturating_sub(waited),
            rejected: s.rejected,
        };
        let t = ttl(cfg, &s, now);
        return (Change::Put(s, t), vec![(src, msg.encode())], event);
    }
    let first_match = s.matched_at.is_none();
    if first_match {
        event = Event::Introduced;
    }
    let start_at = *s.start_at.get_or_insert_with(|| {
        // Both peers should hear of each other before the start: the slower one-way delay
        // (half its RTT) plus what that estimate may be off by. Waiting longer only delays
        // the punch; a peer whose message is late or lost starts when it hears (start
        // times in the past mean now), and the other's first probes are repeated every
        // round, so a late start costs a round, never the punch.
        let slow = s
            .members
            .iter()
            .map(|m| u64::from(m.rtt_ms))
            .max()
            .unwrap_or_default();
        now + slow / 2 + slow / 4 + ms(cfg.start_margin)
    });
    s.matched_at.get_or_insert(now);
    if first_match {
        s.completed_by = Some(req.member.id.clone());
    }
    let mut out = Vec::new();
    for (i, m) in s.members.iter().enumerate() {
        let other = &s.members[1 - i];
        // Each peer starts when the message has reached it plus the time left.
        let start_in = start_at
            .saturating_sub(now)
            .saturating_sub(u64::from(m.rtt_ms) / 2);
        let msg = Msg::Peer {
            you: m.data.public,
            peer: other.data.clone(),
            start_in_ms: start_in,
            joined_second: s.completed_by.as_ref().map(|id| *id == m.data.id),
        };
        // The newcomer always hears; the other peer hears on the first match (its later
        // re-registrations get their own answer) and when the newcomer's relayed offer
        // changed: an introduction held for that offer then goes at once instead of at the
        // other's next register.
        if m.data.id == req.member.id || first_match || offer_changed {
            out.push((m.data.public, msg.encode()));
        }
    }
    let t = ttl(cfg, &s, now);
    (Change::Put(s, t), out, event)
}

/// How long a store may keep `s` unseen, from `now`: a matched session until its linger
/// ends, a waiting one until its last peer has been idle too long.
fn ttl(cfg: &RendezvousConfig, s: &Session, now: u64) -> u64 {
    let until = match s.matched_at {
        Some(at) => at + ms(cfg.linger),
        None => s.members.iter().map(|m| m.last_seen).max().unwrap_or(now) + ms(cfg.peer_idle),
    };
    until.saturating_sub(now).max(1)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    Msg::Error {
        code,
        message: message.to_string(),
    }
    .encode()
}

/// An `error` of at most `limit` bytes: the message is shortened (to nothing if need be);
/// `None` when even that does not fit. Used for every answer to a message that did not
/// authenticate, so the server never sends more than it received.
pub fn small_error(code: ErrorCode, message: &str, limit: usize) -> Option<Vec<u8>> {
    let mut text = message;
    loop {
        let b = error(code, text);
        if b.len() <= limit {
            return Some(b);
        }
        if text.is_empty() {
            return None;
        }
        let mut cut = text.len().saturating_sub(b.len() - limit);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text = &text[..cut];
    }
}

//! The rendezvous that introduces two peers, sans-IO. Wire format and fields are documented
//! in `docs/rendezvous.md`; this module is the reference.
//!
//! Messages travel over UDP to the server's primary STUN endpoint. Each is the 4-byte magic
//! `PRV1` followed by one JSON object, at most [`MAX_MESSAGE`] bytes in all. The magic's
//! first byte (0x50) has its top bits set to 01, so it can never be mistaken for STUN (RFC
//! 8489 section 6: STUN's top two bits are zero) and the server demultiplexes on it.

use crate::classify::{Allocation, Behavior};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const MAGIC: &[u8; 4] = b"PRV1";
/// Keeps every message inside one unfragmented datagram on any sane path.
pub const MAX_MESSAGE: usize = 1200;
const MAX_SESSION_NAME: usize = 128;
const MAX_LOCALS: usize = 8;

/// What a peer knows about its own NAT, from the quick classification at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatInfo {
    pub mapping: Behavior,
    pub filtering: Behavior,
    pub allocation: Allocation,
    pub delta: Option<i32>,
}

impl NatInfo {
    pub fn unknown() -> Self {
        NatInfo {
            mapping: Behavior::Unknown,
            filtering: Behavior::Unknown,
            allocation: Allocation::Unknown,
            delta: None,
        }
    }
}

/// A peer as the other side gets to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerData {
    /// Random per-run identifier, 16 hex digits.
    pub id: String,
    /// The endpoint the server saw the registration come from.
    pub public: SocketAddr,
    /// Addresses of the peer's punching socket on its own interfaces (for peers on one LAN).
    pub locals: Vec<SocketAddr>,
    pub nat: NatInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "kebab-case")]
pub enum Msg {
    /// Client to server; repeated every few hundred ms until the peer arrives, which also
    /// keeps the client's NAT binding toward the server open.
    Register {
        session: String,
        peer: String,
        locals: Vec<SocketAddr>,
        nat: NatInfo,
        /// The client's measured RTT to the server, for the start time.
        rtt_ms: u32,
    },
    /// Server to client: registered, the other peer is not there yet.
    Waiting {
        you: SocketAddr,
        wait_left_ms: u64,
    },
    /// Server to client: the other peer, and when to start punching (relative, because the
    /// two clocks are not synchronised).
    Peer {
        you: SocketAddr,
        peer: PeerData,
        start_in_ms: u64,
    },
    /// Client to server: leaving; frees the session early.
    Bye {
        session: String,
        peer: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// Two other peers already hold the session.
    SessionFull,
    /// The lone peer waited the server's limit and nobody came.
    PeerTimeout,
    /// The server holds as many sessions as it may.
    ServerBusy,
    BadRequest,
}

impl Msg {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        // Serialising these plain structs cannot fail.
        serde_json::to_writer(&mut v, self).expect("rendezvous message serialises");
        v
    }

    /// `None` for anything that is not a well-formed rendezvous message: junk is dropped, not
    /// answered.
    pub fn decode(data: &[u8]) -> Option<Msg> {
        if data.len() > MAX_MESSAGE || !data.starts_with(MAGIC) {
            return None;
        }
        let m: Msg = serde_json::from_slice(&data[4..]).ok()?;
        m.valid().then_some(m)
    }

    fn valid(&self) -> bool {
        match self {
            Msg::Register {
                session,
                peer,
                locals,
                ..
            } => valid_session(session) && valid_peer_id(peer) && locals.len() <= MAX_LOCALS,
            Msg::Bye { session, peer } => valid_session(session) && valid_peer_id(peer),
            Msg::Peer { peer, .. } => valid_peer_id(&peer.id) && peer.locals.len() <= MAX_LOCALS,
            _ => true,
        }
    }

    pub fn is_rendezvous(data: &[u8]) -> bool {
        data.starts_with(MAGIC)
    }
}

fn valid_session(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SESSION_NAME && !s.chars().any(char::is_control)
}

fn valid_peer_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Debug, Clone)]
pub struct RendezvousConfig {
    /// How long a lone peer waits before it is told the other never came.
    pub wait_timeout: Duration,
    /// A peer that has not re-registered for this long is gone.
    pub peer_idle: Duration,
    /// Sessions held at most; beyond, new sessions are refused with `server-busy`.
    pub max_sessions: usize,
    /// How far ahead of the later peer's arrival the punch starts, on top of the slower
    /// peer's one-way delay.
    pub start_margin: Duration,
    /// How long a matched session answers re-registrations (lost `peer` messages) before it
    /// is freed.
    pub linger: Duration,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        RendezvousConfig {
            wait_timeout: Duration::from_secs(60),
            peer_idle: Duration::from_secs(5),
            max_sessions: 100_000,
            start_margin: Duration::from_millis(150),
            linger: Duration::from_secs(20),
        }
    }
}

#[derive(Debug)]
struct Member {
    data: PeerData,
    rtt: Duration,
    first_seen: Instant,
    last_seen: Instant,
}

#[derive(Debug)]
struct Session {
    members: Vec<Member>,
    /// Set once both peers are there: the agreed start, in server time.
    start_at: Option<Instant>,
    matched_at: Option<Instant>,
}

/// The server side: sessions of up to two peers, bounded in number, expiring.
pub struct Rendezvous {
    cfg: RendezvousConfig,
    sessions: HashMap<String, Session>,
    pub dropped: u64,
}

impl Rendezvous {
    pub fn new(cfg: RendezvousConfig) -> Self {
        Rendezvous {
            cfg,
            sessions: HashMap::new(),
            dropped: 0,
        }
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Handles one datagram from `src`; returns the datagrams to send (to `src` and, when a
    /// session completes, to the other peer too).
    pub fn handle(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = self.expire(now);
        let Some(msg) = Msg::decode(data) else {
            self.dropped += 1;
            return out;
        };
        let answers = match msg {
            Msg::Register {
                session,
                peer,
                locals,
                nat,
                rtt_ms,
            } => {
                let data = PeerData {
                    id: peer,
                    public: src,
                    locals,
                    nat,
                };
                self.register(
                    now,
                    session,
                    data,
                    Duration::from_millis(u64::from(rtt_ms.min(10_000))),
                )
            }
            Msg::Bye { session, peer } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    // Only the registered endpoint may remove its own entry.
                    s.members
                        .retain(|m| !(m.data.id == peer && m.data.public == src));
                    if s.members.is_empty() {
                        self.sessions.remove(&session);
                    }
                }
                Vec::new()
            }
            _ => {
                self.dropped += 1;
                Vec::new()
            }
        };
        out.extend(answers);
        out
    }

    fn register(
        &mut self,
        now: Instant,
        name: String,
        data: PeerData,
        rtt: Duration,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let src = data.public;
        if !self.sessions.contains_key(&name) && self.sessions.len() >= self.cfg.max_sessions {
            return vec![(
                src,
                error(
                    ErrorCode::ServerBusy,
                    "the rendezvous server is full; try again later",
                ),
            )];
        }
        let s = self.sessions.entry(name).or_insert_with(|| Session {
            members: Vec::new(),
            start_at: None,
            matched_at: None,
        });
        if let Some(m) = s.members.iter_mut().find(|m| m.data.id == data.id) {
            // A re-registration; the public endpoint may change if the NAT rebinds.
            m.last_seen = now;
            m.data = data;
            m.rtt = rtt;
        } else if s.members.len() >= 2 {
            return vec![(
                src,
                error(
                    ErrorCode::SessionFull,
                    "this session already has two peers; pick another session name",
                ),
            )];
        } else {
            s.members.push(Member {
                data,
                rtt,
                first_seen: now,
                last_seen: now,
            });
        }
        let cfg = &self.cfg;
        if s.members.len() < 2 {
            let m = &s.members[0];
            let waited = now.saturating_duration_since(m.first_seen);
            let msg = Msg::Waiting {
                you: src,
                wait_left_ms: cfg.wait_timeout.saturating_sub(waited).as_millis() as u64,
            };
            return vec![(src, msg.encode())];
        }
        let start_at = *s.start_at.get_or_insert_with(|| {
            // Both peers must hear of each other before the start: the slower one-way delay
            // (half its RTT) plus a margin for a lost message and its retransmission.
            let slow = s.members.iter().map(|m| m.rtt).max().unwrap_or_default();
            now + slow / 2 + cfg.start_margin
        });
        s.matched_at.get_or_insert(now);
        let mut out = Vec::new();
        for (i, m) in s.members.iter().enumerate() {
            let other = &s.members[1 - i];
            // Each peer starts when the message has reached it plus the time left.
            let start_in = start_at
                .saturating_duration_since(now)
                .saturating_sub(m.rtt / 2);
            let msg = Msg::Peer {
                you: m.data.public,
                peer: other.data.clone(),
                start_in_ms: start_in.as_millis() as u64,
            };
            // The newcomer always hears; the other peer hears on the first match (its later
            // re-registrations get their own answer).
            if m.data.public == src || s.matched_at == Some(now) {
                out.push((m.data.public, msg.encode()));
            }
        }
        out
    }

    /// Frees idle, timed-out and finished sessions; returns `peer-timeout` errors to send to
    /// lone peers whose wait ran out.
    pub fn expire(&mut self, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
        let cfg = &self.cfg;
        let mut out = Vec::new();
        self.sessions.retain(|_, s| {
            if let Some(at) = s.matched_at {
                return now.saturating_duration_since(at) < cfg.linger;
            }
            s.members
                .retain(|m| now.saturating_duration_since(m.last_seen) < cfg.peer_idle);
            if let [m] = s.members.as_slice() {
                if now.saturating_duration_since(m.first_seen) >= cfg.wait_timeout {
                    out.push((
                        m.data.public,
                        error(
                            ErrorCode::PeerTimeout,
                            &format!(
                                "the other peer did not come within {} s",
                                cfg.wait_timeout.as_secs()
                            ),
                        ),
                    ));
                    return false;
                }
            }
            !s.members.is_empty()
        });
        out
    }
}

fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    Msg::Error {
        code,
        message: message.to_string(),
    }
    .encode()
}

#[cfg(test)]
mod tests;

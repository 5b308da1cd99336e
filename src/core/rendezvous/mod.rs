//! The rendezvous that introduces two peers, sans-IO. Wire format and fields are documented
//! in `docs/rendezvous.md`; this module is the reference.
//!
//! Messages travel over UDP to the server's primary STUN endpoint. Each is the 4-byte magic
//! `PRV1` followed by one JSON object, at most [`MAX_MESSAGE`] bytes in all. The magic's
//! first byte (0x50) has its top bits set to 01, so it can never be mistaken for STUN (RFC
//! 8489 section 6: STUN's top two bits are zero) and the server demultiplexes on it.
//!
//! Client messages are authenticated with a per-session key derived from the secret
//! ([`derive_rendezvous_key`]); the first registrant of a session hands the server that key
//! (never the secret), later messages must carry a valid MAC under it. Session state lives in
//! a [`Registry`]: [`MemoryRegistry`] here, a Redis one in `crate::driver::serve::registry`.
//! The client side is the sans-IO [`client::Client`].

pub mod client;

use crate::core::classify::{Allocation, Behavior};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const MAGIC: &[u8; 4] = b"PRV1";
/// Keeps every message inside one unfragmented datagram on any sane path.
pub const MAX_MESSAGE: usize = 1200;
const MAX_SESSION_NAME: usize = 128;
const MAX_LOCALS: usize = 8;
/// `,"mac":"` + 64 hex digits + `"}`: the fixed tail of every signed message.
const MAC_PREFIX: &[u8] = b",\"mac\":\"";
const MAC_TAIL_LEN: usize = MAC_PREFIX.len() + 64 + 2;

type HmacSha256 = Hmac<sha2::Sha256>;

/// The per-session rendezvous key: `HMAC-SHA256(secret, "punchraw v1 rendezvous\0" ||
/// session)`. Domain-separated from the punch key, so a server (or its Redis) that holds it
/// can neither learn the secret nor forge punch packets.
pub fn derive_rendezvous_key(secret: &[u8], session: &str) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"punchraw v1 rendezvous\0");
    mac.update(session.as_bytes());
    mac.finalize().into_bytes().into()
}

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
    /// Present when the peer punches TCP (`connect --tcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpOffer>,
}

/// What a peer tells the other for a TCP punch: where its next TCP connection will appear
/// and which certificate it will present. The server relays it unchanged; `mac` is keyed
/// from the secret (not from the rendezvous key the server holds), so a server cannot
/// substitute the fingerprint or redirect the punch. See `crate::core::punch::tcp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpOffer {
    /// The local port every punch connection (and the listener) uses; 0 when the peer opens
    /// connections from fresh ports (its NAT allocates randomly).
    pub local_port: u16,
    /// Predicted external port of the peer's next connection; 0 when unpredictable.
    pub port: u16,
    pub nat: NatInfo,
    /// SHA-256 of the certificate the peer's TLS will present (hex).
    pub fp: String,
    /// HMAC-SHA256 under the punch key (hex).
    pub mac: String,
}

impl TcpOffer {
    fn valid(&self) -> bool {
        unhex32(&self.fp).is_some() && unhex32(&self.mac).is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Msg {
    /// Client to server; repeated every few hundred ms until the peer arrives, which also
    /// keeps the client's NAT binding toward the server open.
    Register {
        session: String,
        peer: String,
        /// Strictly increasing per peer: a replayed register is stale.
        seq: u64,
        /// The session key (hex), sent only to create the session (trust on first use).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        locals: Vec<SocketAddr>,
        nat: NatInfo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tcp: Option<TcpOffer>,
        /// The client's measured RTT to the server, for the start time.
        rtt_ms: u32,
        /// HMAC-SHA256 under the session key; see [`Msg::encode_signed`].
        #[serde(default, skip_serializing_if = "String::is_empty")]
        mac: String,
    },
    /// Server to client: registered, the other peer is not there yet.
    Waiting {
        you: SocketAddr,
        wait_left_ms: u64,
        /// Registrations for this session refused because their MAC was made with another
        /// secret: the waiting peer learns that someone tried, without the stranger being able
        /// to end its wait.
        #[serde(default, skip_serializing_if = "is_zero")]
        rejected: u32,
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
        seq: u64,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        mac: String,
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
    /// The session does not exist and the register carried no `key` to create it.
    UnknownSession,
    /// The message's MAC does not verify under the session's key (another secret).
    Unauthorized,
    /// The server cannot reach its session registry (Redis).
    RegistryUnavailable,
}

impl Msg {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        // Serialising these plain structs cannot fail.
        serde_json::to_writer(&mut v, self).expect("rendezvous message serialises");
        v
    }

    /// Encodes a client message with its `mac`: the message is encoded without `mac` as
    /// `P` followed by `}`, and sent as `P,"mac":"<hex HMAC-SHA256(key, P)>"}`. The MAC
    /// covers the bytes as sent (magic included) up to the `,"mac":"` of the last member, so
    /// no JSON canonicalisation is needed on either side.
    pub fn encode_signed(&self, key: &[u8; 32]) -> Vec<u8> {
        let mut unsigned = self.clone();
        if let Msg::Register { mac, .. } | Msg::Bye { mac, .. } = &mut unsigned {
            mac.clear();
        }
        let mut v = unsigned.encode();
        debug_assert_eq!(v.last(), Some(&b'}'));
        v.pop();
        let tag = mac_of(key, &v);
        v.extend_from_slice(MAC_PREFIX);
        v.extend_from_slice(hex(&tag).as_bytes());
        v.extend_from_slice(b"\"}");
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
                key,
                mac,
                tcp,
                ..
            } => {
                valid_session(session)
                    && valid_peer_id(peer)
                    && locals.len() <= MAX_LOCALS
                    && tcp.as_ref().is_none_or(TcpOffer::valid)
                    && key.as_deref().is_none_or(|k| unhex32(k).is_some())
                    && unhex32(mac).is_some()
            }
            Msg::Bye {
                session, peer, mac, ..
            } => valid_session(session) && valid_peer_id(peer) && unhex32(mac).is_some(),
            Msg::Peer { peer, .. } => {
                valid_peer_id(&peer.id)
                    && peer.locals.len() <= MAX_LOCALS
                    && peer.tcp.as_ref().is_none_or(TcpOffer::valid)
            }
            _ => true,
        }
    }

    pub fn is_rendezvous(data: &[u8]) -> bool {
        data.starts_with(MAGIC)
    }
}

/// True when `data` (a decoded client message) ends in a `mac` member that verifies under
/// `key`. Constant time in the MAC comparison.
pub fn verify_mac(key: &[u8; 32], data: &[u8]) -> bool {
    let Some(cut) = data.len().checked_sub(MAC_TAIL_LEN) else {
        return false;
    };
    let (signed, tail) = data.split_at(cut);
    if !tail.starts_with(MAC_PREFIX) || !tail.ends_with(b"\"}") {
        return false;
    }
    let Some(tag) = std::str::from_utf8(&tail[MAC_PREFIX.len()..MAC_PREFIX.len() + 64])
        .ok()
        .and_then(unhex32)
    else {
        return false;
    };
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(signed);
    m.verify_slice(&tag).is_ok()
}

fn mac_of(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// 64 hex digits to 32 bytes.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
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
    /// Sessions held at most; beyond, new sessions are refused with `server-busy` (in-memory
    /// registry; Redis is bounded by its own `maxmemory`).
    pub max_sessions: usize,
    /// How far ahead of the later peer's arrival the punch starts, on top of the slower
    /// peer's one-way delay.
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
            start_margin: Duration::from_millis(150),
            linger: Duration::from_secs(20),
            registry: None,
        }
    }
}

/// One peer of a session. Times are milliseconds on the registry's clock (see
/// [`Registry::transact`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub data: PeerData,
    pub rtt_ms: u32,
    /// The last accepted `seq`.
    pub seq: u64,
    pub first_seen: u64,
    pub last_seen: u64,
}

/// A session's whole state: what the registry stores (in memory, or as one Redis value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The session key its creator supplied; later messages must carry a MAC under it. The
    /// secret itself never reaches the server.
    pub key: [u8; 32],
    pub members: Vec<Member>,
    /// Set once both peers are there: the agreed start, on the registry's clock.
    pub start_at: Option<u64>,
    pub matched_at: Option<u64>,
    /// Registrations refused for a MAC under another key (see [`Msg::Waiting`]).
    #[serde(default)]
    pub rejected: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What a transaction does to the stored session.
#[derive(Debug)]
pub enum Change {
    Keep,
    /// Store this state; the registry may forget it after `ttl_ms` (Redis `PX`).
    Put(Session, u64),
    Delete,
}

/// Datagrams to send: destination and bytes.
pub type Out = Vec<(SocketAddr, Vec<u8>)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    /// The backing store cannot be reached; the text says why (for the log).
    Unavailable(String),
}

/// Where sessions live. Implementations: [`MemoryRegistry`] (default) and the Redis one in
/// `crate::driver::serve::registry`, which lets several servers share sessions.
pub trait Registry: Send {
    /// Reads session `name`, lets `f` decide what becomes of it, and applies that atomically
    /// with respect to other servers. `f` gets the registry clock's "now" in milliseconds
    /// (one clock for every server sharing the registry) and may run more than once when a
    /// concurrent change forces a retry; its last answer is returned.
    fn transact(
        &mut self,
        now: Instant,
        name: &str,
        f: &mut dyn FnMut(u64, Option<Session>) -> (Change, Out),
    ) -> Result<Out, RegistryError>;

    /// Applies `f` to every stored session (for stores without their own expiry); returns
    /// what `f` wants sent. Stores with TTLs do nothing.
    fn sweep(&mut self, _now: Instant, _f: &mut dyn FnMut(u64, &Session) -> (Change, Out)) -> Out {
        Vec::new()
    }

    /// Sessions held, when the store knows it cheaply (bounds `--max-sessions`).
    fn sessions(&self) -> Option<usize>;
}

/// The in-memory registry: one process, no lock of its own.
pub struct MemoryRegistry {
    /// The registry clock's zero: set from the first `now` a caller passes (a second before
    /// it, so times never saturate at zero), since the core reads no clock of its own.
    epoch: Option<Instant>,
    map: HashMap<String, Session>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        MemoryRegistry {
            epoch: None,
            map: HashMap::new(),
        }
    }

    fn ms(&mut self, now: Instant) -> u64 {
        let epoch = *self
            .epoch
            .get_or_insert_with(|| now.checked_sub(Duration::from_secs(1)).unwrap_or(now));
        now.saturating_duration_since(epoch).as_millis() as u64
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry for MemoryRegistry {
    fn transact(
        &mut self,
        now: Instant,
        name: &str,
        f: &mut dyn FnMut(u64, Option<Session>) -> (Change, Out),
    ) -> Result<Out, RegistryError> {
        let now = self.ms(now);
        let (change, out) = f(now, self.map.get(name).cloned());
        match change {
            Change::Keep => {}
            // Expiry is the sweep's job here; the TTL is for stores that expire by themselves.
            Change::Put(s, _) => {
                self.map.insert(name.to_string(), s);
            }
            Change::Delete => {
                self.map.remove(name);
            }
        }
        Ok(out)
    }

    fn sweep(&mut self, now: Instant, f: &mut dyn FnMut(u64, &Session) -> (Change, Out)) -> Out {
        let now = self.ms(now);
        let mut out = Vec::new();
        self.map.retain(|_, s| {
            let (change, o) = f(now, s);
            out.extend(o);
            match change {
                Change::Keep => true,
                Change::Put(n, _) => {
                    *s = n;
                    true
                }
                Change::Delete => false,
            }
        });
        out
    }

    fn sessions(&self) -> Option<usize> {
        Some(self.map.len())
    }
}

/// The server side: authenticates messages and introduces the two peers of a session; the
/// state lives in a [`Registry`].
pub struct Rendezvous {
    cfg: RendezvousConfig,
    registry: Box<dyn Registry>,
    pub dropped: u64,
}

impl Rendezvous {
    /// With the in-memory registry.
    pub fn new(cfg: RendezvousConfig) -> Self {
        Self::with_registry(cfg, Box::new(MemoryRegistry::new()))
    }

    pub fn with_registry(cfg: RendezvousConfig, registry: Box<dyn Registry>) -> Self {
        Rendezvous {
            cfg,
            registry,
            dropped: 0,
        }
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
                rtt_ms,
                ..
            } => {
                let req = Req {
                    src,
                    data,
                    key: key.as_deref().and_then(unhex32),
                    member: PeerData {
                        id: peer,
                        public: src,
                        locals,
                        nat,
                        tcp,
                    },
                    seq,
                    rtt_ms: rtt_ms.min(10_000),
                };
                let full = self
                    .registry
                    .sessions()
                    .is_some_and(|n| n >= self.cfg.max_sessions);
                let cfg = &self.cfg;
                let r = self.registry.transact(now, &session, &mut |now, s| {
                    register(cfg, now, s, &req, full)
                });
                (session, r)
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
        self.registry
            .sweep(now, &mut |now, s| expire_session(cfg, now, s.clone()))
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
fn expire_session(cfg: &RendezvousConfig, now: u64, mut s: Session) -> (Change, Out) {
    if let Some(at) = s.matched_at {
        return if now.saturating_sub(at) < ms(cfg.linger) {
            (Change::Keep, Vec::new())
        } else {
            (Change::Delete, Vec::new())
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
            return (Change::Delete, vec![(m.data.public, msg)]);
        }
    }
    if s.members.is_empty() {
        (Change::Delete, Vec::new())
    } else if s.members.len() != before {
        let t = ttl(cfg, &s, now);
        (Change::Put(s, t), Vec::new())
    } else {
        (Change::Keep, Vec::new())
    }
}

fn register(
    cfg: &RendezvousConfig,
    now: u64,
    stored: Option<Session>,
    req: &Req<'_>,
    full: bool,
) -> (Change, Out) {
    let src = req.src;
    let refuse = |code, message: &str| -> (Change, Out) {
        let out = small_error(code, message, req.data.len())
            .map(|b| vec![(src, b)])
            .unwrap_or_default();
        (Change::Keep, out)
    };
    let mut s = match stored {
        Some(s) => {
            if !verify_mac(&s.key, req.data) || req.key.is_some_and(|k| k != s.key) {
                let (_, out) = refuse(
                    ErrorCode::Unauthorized,
                    "this session was created with another secret",
                );
                let t = ttl(cfg, &s, now);
                let s = Session {
                    rejected: s.rejected.saturating_add(1),
                    ..s
                };
                return (Change::Put(s, t), out);
            }
            // Lazily apply the expiry rules, for registries without a sweep.
            match expire_session(cfg, now, s.clone()) {
                (Change::Delete, out) if s.matched_at.is_none() && !out.is_empty() => {
                    // The lone peer's wait is over.
                    return (Change::Delete, out);
                }
                (Change::Delete, _) => Session {
                    members: Vec::new(),
                    start_at: None,
                    matched_at: None,
                    ..s
                },
                (Change::Put(n, _), _) => n,
                (Change::Keep, _) => s,
            }
        }
        None => {
            let Some(key) = req.key else {
                return refuse(ErrorCode::UnknownSession, "no such session; send the key");
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
            Session {
                key,
                members: Vec::new(),
                start_at: None,
                matched_at: None,
                rejected: 0,
            }
        }
    };
    if let Some(m) = s.members.iter_mut().find(|m| m.data.id == req.member.id) {
        if req.seq <= m.seq {
            // A replay (or a reordered duplicate): it may come from anywhere, so it must not
            // move the peer's endpoint, and it earns no answer.
            return (Change::Keep, Vec::new());
        }
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
        return (Change::Put(s, t), vec![(src, msg.encode())]);
    }
    let first_match = s.matched_at.is_none();
    let start_at = *s.start_at.get_or_insert_with(|| {
        // Both peers must hear of each other before the start: the slower one-way delay
        // (half its RTT) plus a margin for a lost message and its retransmission.
        let slow = s
            .members
            .iter()
            .map(|m| u64::from(m.rtt_ms))
            .max()
            .unwrap_or_default();
        now + slow / 2 + ms(cfg.start_margin)
    });
    s.matched_at.get_or_insert(now);
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
        };
        // The newcomer always hears; the other peer hears on the first match (its later
        // re-registrations get their own answer).
        if m.data.id == req.member.id || first_match {
            out.push((m.data.public, msg.encode()));
        }
    }
    let t = ttl(cfg, &s, now);
    (Change::Put(s, t), out)
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

#[cfg(test)]
mod tests;

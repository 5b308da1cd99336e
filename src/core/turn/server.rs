//! The TURN server (RFC 8656), sans-IO: the relay half of `punchraw serve --relay`.
//!
//! # Inputs and outputs
//!
//! The machine sees two kinds of input: what a client sends to the server's primary port
//! ([`TurnServer::handle_client`], keyed by the client's 5-tuple: its address and whether it
//! came over UDP or a TCP connection), and what a peer sends to a relayed port
//! ([`TurnServer::handle_peer`]). It answers with [`RelayTransmit`]s, each naming where it
//! leaves from: the primary port (toward a client) or a relay port (toward a peer); and with
//! [`RelayEvent`]s asking the driver to open or close the UDP socket of a relay port. An
//! Allocate's success is held until the driver reports the socket open
//! ([`TurnServer::relay_opened`]), so a client is never handed a relayed address that does not
//! exist; a port the OS refuses is skipped and the next one tried. Data from one of our
//! relayed addresses to another (both peers of a session relayed here) never becomes a
//! transmit: it goes from one allocation to the other inside the machine, under the same
//! permission checks a datagram read from the relay socket gets.
//!
//! # What it enforces
//!
//! - Long-term credentials (RFC 8489 section 9.2): a request without MESSAGE-INTEGRITY gets
//!   401 with REALM and NONCE; a NONCE the server did not issue to this client address, or
//!   one past its lifetime, gets 438 with a fresh one; an unknown user or a wrong
//!   MESSAGE-INTEGRITY gets 401. Nonces are stateless: an expiry time and a MAC over it and
//!   the client's IP under a key from the config ([`TurnServerConfig::secret`]). Peers of
//!   a rendezvous session may use credentials derived from its key instead ([`session`]),
//!   looked up through the driver ([`RelayEvent::Lookup`]) and limited to relaying toward
//!   the session's other peer.
//! - The STUN server's amplification bound ([`crate::core::server::response_limit`]) holds for
//!   every answer to a request that did not authenticate: such answers carry only ERROR-CODE
//!   (its phrase cut to fit), REALM, NONCE and FINGERPRINT, and the realm is limited so that
//!   they always fit ([`MAX_REALM_LEN`]). Authenticated answers are not bounded: their source
//!   proved the key.
//! - Allocate relays UDP only (442 otherwise), one allocation per 5-tuple (437), at most
//!   [`TurnServerConfig::user_quota`] per user (486) and [`TurnServerConfig::max_allocations`]
//!   in all (508), ports from [`TurnServerConfig::ports`] (508 when none is free). Lifetimes
//!   are the default (600 s) up to [`TurnServerConfig::max_lifetime`]; Refresh with lifetime
//!   0 frees. Permissions last 300 s (section 9), channel bindings 600 s (section 12);
//!   ChannelBind follows section 12.2 (400 for a number outside 0x4000-0x7FFF -- RFC 5766's
//!   range, which its clients still use -- a number bound to another peer, or a peer bound
//!   to another number).
//! - Data moves only under a permission: a Send indication or ChannelData toward a peer
//!   without one is dropped, and so is a datagram from a peer without one. Each allocation
//!   may relay at most [`TurnServerConfig::max_bytes`]; beyond, its data is dropped.
//! - It is never an open relay toward itself: a peer address on the relay's own IP at a
//!   port outside the relay range, or an unspecified, multicast or broadcast one, is refused
//!   with 403.
//!
//! Nothing here panics on input; every parser it calls is fuzzed
//! (`fuzz/fuzz_targets/turn_server.rs` drives this machine itself).

mod alloc;
mod auth;
mod requests;
pub mod session;
#[cfg(test)]
mod tests;

use alloc::{Allocation, PortPool};
use rand::rngs::StdRng;
use rand::SeedableRng;
use session::{SessionInfo, MAX_CACHED};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// RFC 8656 section 7.2: the lifetime granted when the client asks for less or nothing.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// RFC 8656 section 7.2 recommends 3600 s as the largest lifetime.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a NONCE stays valid; after it a request gets 438 and a fresh one.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(600);
/// The longest realm: with it, the 16-character NONCE and FINGERPRINT, a 401 or 438 fits in
/// the 92 bytes the amplification bound allows any request from an IPv4 source.
pub const MAX_REALM_LEN: usize = 32;
/// Permissions one allocation may hold; a CreatePermission beyond gets 508.
pub const MAX_PERMISSIONS: usize = 64;
/// Channels one allocation may bind; a ChannelBind beyond gets 508.
pub const MAX_CHANNELS: usize = 64;
/// Ports tried for one Allocate when the OS refuses them.
const OPEN_ATTEMPTS: u8 = 8;

/// What the TURN server relays, for whom and within which bounds (`punchraw serve --relay`);
/// [`TurnServerConfig::new`] fills in the defaults and [`TurnServerConfig::validate`] checks it.
#[derive(Debug, Clone)]
pub struct TurnServerConfig {
    /// RFC 8489 section 9.2: the realm of the long-term credentials.
    pub realm: String,
    /// The address relay sockets bind and XOR-RELAYED-ADDRESS names (the server's own).
    pub relay_ip: IpAddr,
    /// Relay ports, inclusive.
    pub ports: (u16, u16),
    /// Long-term users: username and password.
    pub users: Vec<(String, String)>,
    /// Allocations at once over all users (508 beyond).
    pub max_allocations: usize,
    /// Allocations at once per user (486 beyond).
    pub user_quota: usize,
    /// The longest allocation lifetime granted (RFC 8656 section 7.2): a client asking for more
    /// gets this; never less than [`DEFAULT_LIFETIME`].
    pub max_lifetime: Duration,
    /// Bytes one allocation may relay in both directions together; `None`: unbounded.
    pub max_bytes: Option<u64>,
    /// A SOFTWARE attribute for authenticated responses.
    pub software: Option<String>,
    /// Keys the nonces' MAC. The driver draws it from the OS; tests fix it.
    pub secret: [u8; 32],
    /// Seeds the choice of relay ports (RFC 8656 section 7.2 asks for random ones).
    pub seed: u64,
    /// Accept session credentials ([`session`]): peers of a rendezvous session authenticate
    /// with credentials derived from its key and relay only toward each other.
    pub session_credentials: bool,
}

impl TurnServerConfig {
    /// A relay on `relay_ip` with ports `ports` and the given users; the other bounds at
    /// their defaults (1000 allocations, 10 per user, 3600 s, no byte bound).
    pub fn new(relay_ip: IpAddr, ports: (u16, u16), users: Vec<(String, String)>) -> Self {
        TurnServerConfig {
            realm: "punchraw".into(),
            relay_ip,
            ports,
            users,
            max_allocations: 1000,
            user_quota: 10,
            max_lifetime: MAX_LIFETIME,
            max_bytes: None,
            software: None,
            secret: [0; 32],
            seed: 0,
            session_credentials: false,
        }
    }

    /// Checks what [`TurnServer::new`] relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (lo, hi) = self.ports;
        if lo == 0 || lo > hi {
            return Err(ConfigError::Ports { lo, hi });
        }
        if self.realm.is_empty()
            || self.realm.len() > MAX_REALM_LEN
            || !self.realm.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ConfigError::Realm(self.realm.clone()));
        }
        if self.users.is_empty() && !self.session_credentials {
            return Err(ConfigError::NoUsers);
        }
        for (u, p) in &self.users {
            // RFC 8489 section 14.3: USERNAME under 509 bytes; ASCII keeps the key's input
            // the SASLprep/OpaqueString of itself (section 9.2.2).
            if u.is_empty() || u.len() > 508 || !u.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::User(u.clone()));
            }
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::Password(u.clone()));
            }
        }
        if self.max_allocations == 0 || self.user_quota == 0 {
            return Err(ConfigError::ZeroBound);
        }
        Ok(())
    }
}

/// Why a [`TurnServerConfig`] cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `ports` is empty (`lo > hi`) or starts at port 0.
    #[error("relay port range {lo}-{hi} is empty or starts at 0")]
    Ports {
        /// The first relay port.
        lo: u16,
        /// The last relay port, inclusive.
        hi: u16,
    },
    /// The realm is empty, longer than [`MAX_REALM_LEN`], or not printable ASCII.
    #[error("realm {0:?} must be 1 to {MAX_REALM_LEN} printable ASCII characters (the 401 must fit the amplification bound)")]
    Realm(String),
    /// No long-term user, and session credentials are off: nobody could authenticate.
    #[error("a relay needs at least one user (USER:PASS)")]
    NoUsers,
    /// A username that is empty, longer than 508 bytes (RFC 8489 section 14.3), or not printable
    /// ASCII.
    #[error("username {0:?} must be 1 to 508 printable ASCII characters")]
    User(String),
    /// The password of this user is empty or not printable ASCII.
    #[error("the password of user {0:?} must be printable ASCII and not empty")]
    Password(String),
    /// `max_allocations` or `user_quota` is 0.
    #[error("allocation limits must be at least 1")]
    ZeroBound,
}

/// How a client reaches the primary port (RFC 8656 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Via {
    /// UDP datagrams; the client retransmits requests, ChannelData is not padded.
    Udp,
    /// One TCP connection; ChannelData toward the client is padded (section 12.5).
    Tcp,
}

/// The 5-tuple of an allocation, server side fixed: the client's address and transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    /// Whether the client came over UDP or a TCP connection.
    pub via: Via,
    /// The client's address and port as the server sees them (after any NAT).
    pub addr: SocketAddr,
}

/// Where a transmit leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The primary port, over UDP or the client's TCP connection (`to` names it).
    Primary(Via),
    /// The relay socket on this port.
    Relay(u16),
}

/// Something the TURN server wants sent: a message toward a client, or relayed data toward a
/// peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTransmit {
    /// The socket it leaves from: the primary port (toward a client) or a relay port (toward a
    /// peer).
    pub from: Source,
    /// The client's or the peer's address; with [`Via::Tcp`], names the client's connection.
    pub to: SocketAddr,
    /// The bytes: one datagram, or over TCP one whole message (ChannelData padded to 4 bytes).
    pub payload: Vec<u8>,
}

/// What the driver must do for the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// Bind a UDP socket on (relay IP, `port`) and say how it went with
    /// [`TurnServer::relay_opened`].
    Open {
        /// The relay port to bind, in [`TurnServerConfig::ports`].
        port: u16,
    },
    /// Close the socket of `port` (the allocation is freed or expired).
    Close {
        /// The relay port whose socket to close.
        port: u16,
    },
    /// Look session `session` up in the rendezvous registry and say what it holds with
    /// [`TurnServer::session_found`]; requests with its credentials wait until then.
    Lookup {
        /// The rendezvous session name: the client's USERNAME after `session:`.
        session: String,
    },
}

/// Why the driver could not open a relay socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Someone else holds the port: the next free one is tried.
    InUse,
    /// Anything else: the Allocate gets 508.
    Failed,
}

/// Counters, for the statistics `serve` prints at exit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TurnStats {
    /// TURN requests handled (a request that waits for its session lookup counts once).
    pub requests: u64,
    /// Allocations whose relay socket opened and whose Allocate succeeded.
    pub allocations_made: u64,
    /// Freed by a Refresh of lifetime 0.
    pub allocations_freed: u64,
    /// Allocations whose lifetime ran out without a Refresh.
    pub allocations_expired: u64,
    /// Freed by [`TurnServer::shutdown`].
    pub allocations_closed: u64,
    /// Permissions a CreatePermission installed for a new peer IP (RFC 8656 section 9);
    /// refreshes are not counted.
    pub permissions_created: u64,
    /// Channel numbers newly bound (RFC 8656 section 12); refreshes not counted.
    pub channels_bound: u64,
    /// Application bytes (and datagrams) relayed from clients to peers and back.
    pub bytes_to_peers: u64,
    /// Application bytes relayed from peers to clients.
    pub bytes_to_clients: u64,
    /// Datagrams relayed from clients to peers.
    pub datagrams_to_peers: u64,
    /// Datagrams relayed from peers to clients.
    pub datagrams_to_clients: u64,
    /// Data dropped because there was no permission (either direction) or channel.
    pub dropped_no_permission: u64,
    /// Data dropped because the allocation's byte bound was reached.
    pub dropped_over_bytes: u64,
    /// Input that was neither a well-formed TURN message nor ChannelData.
    pub malformed: u64,
    /// Error responses by code.
    pub refusals: Refusals,
}

/// Error responses by code: the codes this server sends, counted in place (no allocation,
/// so the counters are `Copy`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refusals([u64; REFUSAL_CODES.len()]);

/// Every error code the server sends.
pub const REFUSAL_CODES: [u16; 12] = [400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 508];

impl Refusals {
    /// How many error responses with `code` were sent; 0 for a code not in [`REFUSAL_CODES`].
    pub fn get(&self, code: u16) -> u64 {
        REFUSAL_CODES
            .iter()
            .position(|&c| c == code)
            .map_or(0, |i| self.0[i])
    }

    pub(crate) fn add(&mut self, code: u16) {
        if let Some(i) = REFUSAL_CODES.iter().position(|&c| c == code) {
            self.0[i] += 1;
        }
    }

    /// `(code, count)` for every code sent at least once.
    pub fn iter(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        REFUSAL_CODES
            .iter()
            .zip(self.0)
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| (*c, n))
    }
}

/// The TURN server machine. See the module documentation.
pub struct TurnServer {
    cfg: TurnServerConfig,
    /// Long-term keys by username (RFC 8489 section 9.2.2).
    keys: HashMap<String, [u8; 16]>,
    /// The zero of the nonces' clock.
    epoch: Instant,
    rng: StdRng,
    pool: PortPool,
    allocs: HashMap<ClientId, Allocation>,
    by_port: HashMap<u16, ClientId>,
    per_user: HashMap<String, usize>,
    /// The earliest allocation expiry, or a moment before it (never after).
    next_expiry: Option<Instant>,
    /// Session lookups' answers (`None`: no such session) and until when they hold.
    sessions: HashMap<String, (Option<SessionInfo>, Instant)>,
    /// Requests waiting for their session's lookup: session, client, bytes.
    parked: Vec<(String, ClientId, Vec<u8>)>,
    out: VecDeque<RelayTransmit>,
    events: VecDeque<RelayEvent>,
    stats: TurnStats,
}

impl TurnServer {
    /// A server for `cfg`, with `now` the zero of its nonces' clock; fails when
    /// [`TurnServerConfig::validate`] does.
    pub fn new(cfg: TurnServerConfig, now: Instant) -> Result<TurnServer, ConfigError> {
        cfg.validate()?;
        let keys = cfg
            .users
            .iter()
            .map(|(u, p)| {
                (
                    u.clone(),
                    crate::core::stun::long_term_key(u, &cfg.realm, p),
                )
            })
            .collect();
        Ok(TurnServer {
            rng: StdRng::seed_from_u64(cfg.seed),
            pool: PortPool::new(cfg.ports),
            keys,
            cfg,
            epoch: now,
            allocs: HashMap::new(),
            by_port: HashMap::new(),
            per_user: HashMap::new(),
            next_expiry: None,
            sessions: HashMap::new(),
            parked: Vec::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: TurnStats::default(),
        })
    }

    /// The configuration the server was made with.
    pub fn config(&self) -> &TurnServerConfig {
        &self.cfg
    }

    /// The counters so far.
    pub fn stats(&self) -> &TurnStats {
        &self.stats
    }

    /// Allocations that exist now (those waiting for their socket included).
    pub fn active(&self) -> usize {
        self.allocs.len()
    }

    /// The allocation of `client`, if any: its relayed address.
    pub fn relayed(&self, client: ClientId) -> Option<SocketAddr> {
        self.allocs
            .get(&client)
            .filter(|a| a.open)
            .map(|a| SocketAddr::new(self.cfg.relay_ip, a.port))
    }

    /// Whether `bytes` from a client to the primary port belong to TURN rather than to the
    /// STUN server: ChannelData (first two bits 01, RFC 8656 section 12) or a STUN message
    /// whose method is not Binding.
    pub fn is_turn(bytes: &[u8]) -> bool {
        match bytes.first() {
            Some(b) if b & 0xc0 == 0x40 => true,
            Some(b) if b & 0xc0 == 0 && bytes.len() >= 2 => {
                let t = u16::from_be_bytes([bytes[0], bytes[1]]);
                let mt = crate::core::stun::MessageType::from_u16(t);
                mt.method != crate::core::stun::Method::Binding
            }
            _ => false,
        }
    }

    /// One datagram (or one framed TCP message) from `client` to the primary port.
    pub fn handle_client(&mut self, now: Instant, client: ClientId, bytes: &[u8]) {
        self.expire(now);
        self.on_client(now, client, bytes);
    }

    /// One datagram from `peer` to relay port `port`.
    pub fn handle_peer(&mut self, now: Instant, port: u16, peer: SocketAddr, bytes: &[u8]) {
        self.expire(now);
        self.on_peer(now, port, peer, bytes);
    }

    /// `client`'s TCP connection closed: its 5-tuple is gone, and so is its allocation (as
    /// coturn does; nothing could reach the client any more). Counted as freed by the client.
    pub fn client_gone(&mut self, client: ClientId) {
        if self.allocs.contains_key(&client) {
            self.stats.allocations_freed += 1;
            self.free(client);
        }
    }

    /// The driver's answer to [`RelayEvent::Lookup`]: what the registry holds about
    /// `session` (`None`: nothing). The requests that waited for it are answered now.
    pub fn session_found(&mut self, now: Instant, session: &str, info: Option<SessionInfo>) {
        if self.sessions.len() >= MAX_CACHED {
            self.sessions.clear();
        }
        let until = now
            + if info.is_some() {
                session::SESSION_CACHE
            } else {
                session::SESSION_MISS_CACHE
            };
        self.sessions.insert(session.to_string(), (info, until));
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(s, _, _)| s == session);
        self.parked = waiting;
        for (_, client, bytes) in ready {
            self.handle_client(now, client, &bytes);
        }
    }

    /// The driver's answer to [`RelayEvent::Open`].
    pub fn relay_opened(&mut self, now: Instant, port: u16, result: Result<(), OpenError>) {
        self.on_opened(now, port, result);
    }

    /// Expires allocations whose lifetime ended (their sockets are closed by
    /// [`RelayEvent::Close`]); permissions and channels expire as they are used.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) has work: the earliest allocation expiry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_expiry
    }

    /// The next message or datagram to send, or `None` once the queue is drained.
    pub fn poll_transmit(&mut self) -> Option<RelayTransmit> {
        self.out.pop_front()
    }

    /// The next socket the driver must open or close, or session to look up; `None` once drained.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// Frees every allocation (the server stops): each socket gets [`RelayEvent::Close`].
    pub fn shutdown(&mut self) {
        let all: Vec<ClientId> = self.allocs.keys().copied().collect();
        for c in all {
            self.stats.allocations_closed += 1;
            self.free(c);
        }
    }

    fn expire(&mut self, now: Instant) {
        if self.next_expiry.is_none_or(|t| t > now) {
            return;
        }
        let dead: Vec<ClientId> = self
            .allocs
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(c, _)| *c)
            .collect();
        for c in dead {
            self.stats.allocations_expired += 1;
            self.free(c);
        }
        for a in self.allocs.values_mut() {
            a.purge(now);
        }
        self.next_expiry = self.allocs.values().map(|a| a.expires).min();
    }

    /// Removes `client`'s allocation and gives its port back.
    fn free(&mut self, client: ClientId) {
        let Some(a) = self.allocs.remove(&client) else {
            return;
        };
        self.by_port.remove(&a.port);
        self.pool.release(a.port);
        if let Some(n) = self.per_user.get_mut(&a.username) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(&a.username);
            }
        }
        if a.open {
            self.events.push_back(RelayEvent::Close { port: a.port });
        }
    }

    fn note_expiry(&mut self, t: Instant) {
        if self.next_expiry.is_none_or(|e| t < e) {
            self.next_expiry = Some(t);
        }
    }

    fn lifetime_secs(d: Duration) -> u32 {
        d.as_secs().min(u64::from(u32::MAX)) as u32
    }
}

/// A short printable encoding for nonces (RFC 8489 section 14.10 wants quoted-string
/// characters): 6 bits per character.
fn encode64(bytes: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for chunk in bytes.chunks(3) {
        let mut v = [0u8; 3];
        v[..chunk.len()].copy_from_slice(chunk);
        let n = (u32::from(v[0]) << 16) | (u32::from(v[1]) << 8) | u32::from(v[2]);
        for i in 0..(chunk.len() + 1) {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]);
        }
    }
}

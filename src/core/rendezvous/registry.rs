//! Where the rendezvous server keeps its sessions: the [`Registry`] interface, one atomic
//! read-decide-write per message, and the in-process [`MemoryRegistry`]. The Redis one, which
//! lets several servers share sessions, is `crate::driver::serve::registry`.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::PeerData;

/// One peer of a session. Times are milliseconds on the registry's clock (see
/// [`Registry::transact`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// What the peer registered; `public` is where its latest accepted register came from.
    pub data: PeerData,
    /// The peer's RTT to the server as it reported it (capped at 10 s), for the agreed start.
    pub rtt_ms: u32,
    /// The last accepted `seq`.
    pub seq: u64,
    /// When the peer first registered: a lone peer's wait timeout counts from here.
    pub first_seen: u64,
    /// When the peer's latest accepted register arrived: a peer idle too long is removed.
    pub last_seen: u64,
}

/// A session's whole state: what the registry stores (in memory, or as one Redis value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The session key its creator supplied; later messages must carry a MAC under it. The
    /// secret itself never reaches the server.
    pub key: [u8; 32],
    /// The peers that registered, at most two.
    pub members: Vec<Member>,
    /// Set once both peers are there: the agreed start, on the registry's clock.
    pub start_at: Option<u64>,
    /// When the second peer arrived, on the registry's clock. From then on the session only
    /// answers re-registrations (lost `peer` messages) for the linger time, then is freed.
    pub matched_at: Option<u64>,
    /// Registrations refused for a MAC under another key (see [`super::Msg::Waiting`]).
    #[serde(default)]
    pub rejected: u32,
    /// A member's outcome report was counted ([`super::Msg::Outcome`]): later ones are not.
    #[serde(default)]
    pub outcome_counted: bool,
    /// The id of the peer whose arrival completed the pair (the other was there first):
    /// both peers are told, so they agree on who plays the TLS client.
    #[serde(default)]
    pub completed_by: Option<String>,
}

/// What a transaction does to the stored session.
#[derive(Debug)]
pub enum Change {
    /// Leave the stored session as it is (or absent).
    Keep,
    /// Store this state; the registry may forget it after `ttl_ms` (Redis `PX`).
    Put(Session, u64),
    /// Forget the session: its last peer left, its wait ended, or its linger is over.
    Delete,
}

/// Datagrams to send: destination and bytes.
pub type Out = Vec<(SocketAddr, Vec<u8>)>;

/// Why a [`Registry`] transaction failed; the server then answers `registry-unavailable`.
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

    /// Sessions held with a peer still waiting for the other, and those whose peers were
    /// introduced (for the metrics), when the store can tell.
    fn waiting_and_matched(&self) -> Option<(usize, usize)> {
        None
    }
}

/// The in-memory registry: one process, no lock of its own.
pub struct MemoryRegistry {
    /// The registry clock's zero: set from the first `now` a caller passes (a second before
    /// it, so times never saturate at zero), since the core reads no clock of its own.
    epoch: Option<Instant>,
    map: HashMap<String, Session>,
}

impl MemoryRegistry {
    /// An empty registry; its clock starts at the first `now` it is given.
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

    fn waiting_and_matched(&self) -> Option<(usize, usize)> {
        let matched = self.map.values().filter(|s| s.matched_at.is_some()).count();
        Some((self.map.len() - matched, matched))
    }
}

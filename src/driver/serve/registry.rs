//! Where `punchraw serve` keeps rendezvous sessions: in memory (default), or in Redis
//! (`--registry redis://HOST:PORT`) so that several servers behind one name share them.
//!
//! With Redis, rendezvous messages are handled on a worker thread of their own: the UDP
//! threads only hand each datagram over (never waiting on Redis), so a slow or dead Redis
//! cannot stall STUN. Every Redis call has a timeout; after a failure the registry answers
//! `registry-unavailable` at once for [`RETRY_AFTER`] and then reconnects by itself.

use crate::core::rendezvous::{
    Change, Out, Registry, RegistryError, Rendezvous, RendezvousConfig, RendezvousStats, Session,
};
use crate::driver::Status;
use crate::Error;
use sha2::{Digest, Sha256};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Bound on every Redis call (connect, read, write).
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failed call, how long the registry answers "unavailable" without trying Redis.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);
/// A transaction that keeps losing to concurrent writers gives up after this many tries.
const MAX_TRIES: usize = 8;
/// Rendezvous datagrams queued for the Redis worker; beyond, new ones are dropped (the
/// clients re-register every 300 ms).
const QUEUE: usize = 4096;

/// The Redis key of a session: a hash of its name (names are not stored in clear), inside a
/// hash tag so that every key of one session maps to one Redis Cluster slot.
pub fn session_key(name: &str) -> String {
    let h = Sha256::digest(name.as_bytes());
    format!("punchraw:v1:{{{}}}", crate::core::hex::encode(&h[..16]))
}

/// Sessions in Redis: one key per session holding its JSON state, with a `PX` TTL matching
/// the in-memory expiry rules. Changes are optimistic transactions (WATCH/MULTI/EXEC), so
/// two servers matching the two peers of one session at once cannot both win; the clock is
/// Redis's own (`TIME`), so every server computes the same agreed start.
pub struct RedisRegistry {
    client: redis::Client,
    con: Option<redis::Connection>,
    /// While set and in the future, calls fail at once (Redis was just found down).
    down_until: Option<Instant>,
    /// Logged once per outage.
    down: bool,
    status: Status,
}

impl RedisRegistry {
    /// Parses the URL; does not connect (that happens on first use, and again after an
    /// outage).
    pub fn open(url: &str) -> Result<Self, Error> {
        if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
            return Err(bad_url(url, "give redis://HOST:PORT"));
        }
        let client = redis::Client::open(url).map_err(|e| bad_url(url, &e.to_string()))?;
        Ok(RedisRegistry {
            client,
            con: None,
            down_until: None,
            down: false,
            status: Status::stderr(),
        })
    }

    /// Connects now; `Err` says why Redis is unreachable (the server starts anyway).
    pub fn check(&mut self) -> Result<(), RegistryError> {
        self.connection().map(|_| ())
    }

    fn connection(&mut self) -> Result<&mut redis::Connection, RegistryError> {
        if let Some(t) = self.down_until {
            if Instant::now() < t {
                return Err(RegistryError::Unavailable(
                    "redis is down (retrying soon)".into(),
                ));
            }
        }
        if self.con.is_none() {
            let con = self
                .client
                .get_connection_with_timeout(REDIS_TIMEOUT)
                .and_then(|c| {
                    c.set_read_timeout(Some(REDIS_TIMEOUT))?;
                    c.set_write_timeout(Some(REDIS_TIMEOUT))?;
                    Ok(c)
                })
                .map_err(|e| self.failed(e))?;
            if self.down {
                self.status.say("rendezvous registry: redis is back");
                self.down = false;
            }
            self.con = Some(con);
        }
        Ok(self.con.as_mut().expect("just set"))
    }

    /// Drops the connection and backs off after any error.
    fn failed(&mut self, e: redis::RedisError) -> RegistryError {
        self.con = None;
        self.down_until = Some(Instant::now() + RETRY_AFTER);
        if !self.down {
            warn!(error = %e, "rendezvous registry: redis unavailable; peers are told so until it returns");
            self.down = true;
        }
        RegistryError::Unavailable(e.to_string())
    }

    fn try_transact(
        con: &mut redis::Connection,
        key: &str,
        f: &mut dyn FnMut(u64, Option<Session>) -> (Change, Out),
    ) -> redis::RedisResult<Option<Out>> {
        redis::cmd("WATCH").arg(key).exec(con)?;
        let (stored, (secs, micros)): (Option<String>, (u64, u64)) =
            redis::pipe().get(key).cmd("TIME").query(con)?;
        let now = secs * 1000 + micros / 1000;
        // A value we cannot read (another version's) counts as absent.
        let state = stored.and_then(|v| serde_json::from_str::<Session>(&v).ok());
        let (change, out) = f(now, state);
        let done: Option<redis::Value> = match change {
            Change::Keep => {
                redis::cmd("UNWATCH").exec(con)?;
                return Ok(Some(out));
            }
            Change::Put(s, ttl) => {
                let json = serde_json::to_string(&s).expect("session serialises");
                redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(key)
                    .arg(json)
                    .arg("PX")
                    .arg(ttl.max(1))
                    .ignore()
                    .query(con)?
            }
            Change::Delete => redis::pipe().atomic().del(key).ignore().query(con)?,
        };
        // EXEC answers nil when a watched key changed in between: run `f` again.
        Ok(done.map(|_| out))
    }
}

fn bad_url(url: &str, why: &str) -> Error {
    Error::io(
        format!("invalid --registry {url:?}"),
        io::Error::new(io::ErrorKind::InvalidInput, why.to_string()),
    )
}

impl Registry for RedisRegistry {
    fn transact(
        &mut self,
        _now: Instant,
        name: &str,
        f: &mut dyn FnMut(u64, Option<Session>) -> (Change, Out),
    ) -> Result<Out, RegistryError> {
        let key = session_key(name);
        let mut reconnected = false;
        for _ in 0..MAX_TRIES {
            let fresh = self.con.is_none();
            let con = self.connection()?;
            match Self::try_transact(con, &key, f) {
                Ok(Some(out)) => return Ok(out),
                Ok(None) => continue,
                // A connection from before a Redis restart fails on first use: try once more
                // on a new one before calling Redis down.
                Err(e)
                    if !fresh && !reconnected && (e.is_io_error() || e.is_connection_dropped()) =>
                {
                    debug!(error = %e, "rendezvous registry: redis connection lost; reconnecting");
                    self.con = None;
                    reconnected = true;
                }
                Err(e) => return Err(self.failed(e)),
            }
        }
        debug!(session_key = %key, "rendezvous registry: transaction kept conflicting; dropped");
        Ok(Vec::new())
    }

    fn sessions(&self) -> Option<usize> {
        None
    }
}

/// The rendezvous as the UDP threads see it: [`RendezvousService::handle`] and
/// [`RendezvousService::expire`] return what to send right away (in-memory registry) or hand
/// the work to the Redis worker, which sends its answers itself from a clone of the primary
/// socket, and return nothing.
pub enum RendezvousService {
    /// The in-memory registry, handled on the UDP thread that received the datagram.
    Local(Mutex<Rendezvous>),
    /// A Redis registry (`--registry`), handled by the worker thread.
    Remote(Worker),
}

/// The thread that runs the rendezvous over Redis, fed datagrams through a bounded queue;
/// dropping this handle closes the queue and waits for the thread to finish the one at hand.
pub struct Worker {
    tx: Option<SyncSender<(Instant, SocketAddr, Vec<u8>)>>,
    thread: Option<JoinHandle<()>>,
    /// The worker's counters, as of its last message.
    stats: Arc<Mutex<RendezvousStats>>,
}

impl RendezvousService {
    /// Opens the registry `cfg.registry` names; `primary` is the socket rendezvous answers
    /// leave from (cloned for the Redis worker).
    pub fn start(
        cfg: &RendezvousConfig,
        primary: &UdpSocket,
        status: &Status,
    ) -> Result<Self, Error> {
        let Some(url) = cfg.registry.as_deref() else {
            return Ok(RendezvousService::Local(Mutex::new(Rendezvous::new(
                cfg.clone(),
            ))));
        };
        let mut reg = RedisRegistry::open(url)?;
        reg.status = status.clone();
        match reg.check() {
            Ok(()) => status.say(format!("rendezvous sessions are kept in redis at {url}")),
            Err(RegistryError::Unavailable(why)) => {
                warn!(registry = %url, %why, "redis is not reachable yet; rendezvous answers registry-unavailable until it is")
            }
        }
        let sock = primary
            .try_clone()
            .map_err(|e| Error::io("cannot clone the primary socket", e))?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let rdv = Rendezvous::with_registry(cfg.clone(), Box::new(reg));
        let stats = Arc::new(Mutex::new(RendezvousStats::default()));
        let published = Arc::clone(&stats);
        let thread = thread::Builder::new()
            .name("rendezvous redis".into())
            .spawn(move || worker(rdv, &rx, &sock, &published))
            .map_err(|e| Error::io("cannot start the rendezvous thread", e))?;
        Ok(RendezvousService::Remote(Worker {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        }))
    }

    /// One rendezvous datagram from `src`.
    pub fn handle(&self, now: Instant, src: SocketAddr, data: &[u8]) -> Out {
        match self {
            RendezvousService::Local(r) => r
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .handle(now, src, data),
            RendezvousService::Remote(w) => {
                if let Some(tx) = &w.tx {
                    match tx.try_send((now, src, data.to_vec())) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            debug!(%src, "rendezvous queue full; datagram dropped")
                        }
                        Err(TrySendError::Disconnected(_)) => {
                            debug!(%src, "rendezvous worker gone; datagram dropped")
                        }
                    }
                }
                Vec::new()
            }
        }
    }

    /// What the relay's session credentials need of session `name` (its key and members).
    /// The in-memory registry only: the Redis one is the worker's, and a relay lookup must
    /// not wait on Redis, so `--registry` servers relay for `--relay-user`s only.
    pub fn session_info(&self, now: Instant, name: &str) -> Option<([u8; 32], Vec<SocketAddr>)> {
        match self {
            RendezvousService::Local(r) => r
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .session_info(now, name),
            RendezvousService::Remote(_) => None,
        }
    }

    /// The rendezvous counters, and the sessions waiting and introduced now when the registry
    /// can tell (in memory).
    pub fn stats(&self) -> (RendezvousStats, Option<(usize, usize)>) {
        match self {
            RendezvousService::Local(r) => {
                let r = r.lock().unwrap_or_else(PoisonError::into_inner);
                (r.stats.clone(), r.waiting_and_matched())
            }
            RendezvousService::Remote(w) => (
                w.stats
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
                None,
            ),
        }
    }

    /// The periodic expiry (in memory; Redis expires keys by itself).
    pub fn expire(&self, now: Instant) -> Out {
        match self {
            RendezvousService::Local(r) => {
                r.lock().unwrap_or_else(PoisonError::into_inner).expire(now)
            }
            RendezvousService::Remote(_) => Vec::new(),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue ends the worker after the datagram at hand.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn worker(
    mut rdv: Rendezvous,
    rx: &Receiver<(Instant, SocketAddr, Vec<u8>)>,
    sock: &UdpSocket,
    stats: &Mutex<RendezvousStats>,
) {
    while let Ok((now, src, data)) = rx.recv() {
        for (to, bytes) in rdv.handle(now, src, &data) {
            if let Err(e) = sock.send_to(&bytes, to) {
                debug!(%to, error = %e, "rendezvous send failed");
            }
        }
        stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone_from(&rdv.stats);
    }
}

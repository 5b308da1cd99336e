//! Session credentials: the two peers of a rendezvous session relay through the server with
//! long-term credentials derived from the session's rendezvous key, which both peers derive
//! from their secret and the server already holds (the creator handed it over; the secret
//! itself never reaches the server). Such an allocation may relay only toward the session's
//! other peer: its public address as the rendezvous saw it, or its relayed address on this
//! server.
//!
//! The machine does not know the sessions: for a USERNAME of the form
//! [`SESSION_PREFIX`]`<session>` it asks the driver ([`super::RelayEvent::Lookup`]), holds the
//! request (at most [`MAX_PARKED`] in all) and answers it once the driver says what the
//! registry holds ([`super::TurnServer::session_found`]); answers are cached for
//! [`SESSION_CACHE`], a session not found only for [`SESSION_MISS_CACHE`]: the first peer of
//! a session allocates as it registers, and the session it creates must be found moments
//! later.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::SocketAddr;
use std::time::Duration;

/// USERNAME prefix of session credentials.
pub const SESSION_PREFIX: &str = "session:";
/// Requests held while their session is looked up.
pub const MAX_PARKED: usize = 64;
/// How long a lookup's answer (found or not) is reused.
pub const SESSION_CACHE: Duration = Duration::from_secs(30);
/// How long a lookup that found nothing is reused: enough to spare the registry a burst of
/// requests with one wrong name, short enough that a session created moments after a miss is
/// found by the next request -- the second peer of a session often allocates just after the
/// first peer's early Allocate missed and just before (or as) the session appears, and each
/// miss it meets costs the relayed stream's first byte a retry.
pub const SESSION_MISS_CACHE: Duration = Duration::from_millis(100);
/// Sessions remembered at once; beyond, the cache starts over.
pub(super) const MAX_CACHED: usize = 4096;

/// What the registry holds about a session, for the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The rendezvous key the session's creator handed the server.
    pub key: [u8; 32],
    /// The public addresses the rendezvous saw its members register from.
    pub members: Vec<SocketAddr>,
}

/// The TURN USERNAME and password of session `session` whose rendezvous key is `key`;
/// `None` for a session name that cannot be a USERNAME (not printable ASCII, or too long).
pub fn session_credentials(key: &[u8; 32], session: &str) -> Option<(String, String)> {
    if session.is_empty()
        || session.len() + SESSION_PREFIX.len() > 508
        || !session.bytes().all(|b| b.is_ascii_graphic())
    {
        return None;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"punchraw turn session credentials v1");
    let tag = mac.finalize().into_bytes();
    let password = crate::core::hex::encode(&tag[..16]);
    Some((format!("{SESSION_PREFIX}{session}"), password))
}

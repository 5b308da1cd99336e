//! Long-term credentials on the server side (RFC 8489 section 9.2.4) and the answers to
//! requests that did not authenticate, which keep the amplification bound.

use super::session::{session_credentials, SESSION_PREFIX};
use super::{encode64, TurnServer, NONCE_LIFETIME};
use crate::core::server::response_limit;
use crate::core::stun::long_term_key;
use crate::core::stun::{attr_type, Attribute, Class, Encoder, ErrorCode, Message, MessageType};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Hex digits of the nonce's expiry, then the MAC's characters.
const NONCE_TIME_LEN: usize = 8;
const NONCE_MAC_BYTES: usize = 6;

/// A request that passed the checks: who sent it and the key to sign the answer with.
pub(super) struct Authed {
    pub(super) username: String,
    pub(super) key: [u8; 16],
    /// Session credentials: the session and its members' public addresses.
    pub(super) session: Option<(String, Vec<SocketAddr>)>,
}

/// Why a request did not authenticate, and so what the unsigned answer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unauth {
    /// No MESSAGE-INTEGRITY (the client's first try), an unknown user, a wrong MAC: 401.
    Unauthorized,
    /// MESSAGE-INTEGRITY without USERNAME, REALM or NONCE: 400.
    BadRequest,
    /// A nonce past its lifetime or not ours: 438 with a fresh one.
    StaleNonce,
    /// Session credentials of a session not looked up yet: no answer until it is.
    Lookup(String),
}

impl TurnServer {
    /// The nonce for a client at `ip`, valid until `NONCE_LIFETIME` after `now`: the expiry in
    /// seconds since the epoch (8 hex digits) and a MAC over it and the IP (48 bits, 8
    /// characters), so it needs no state and is worthless from another address.
    pub(super) fn nonce(&self, now: Instant, ip: IpAddr) -> Vec<u8> {
        let expiry = now
            .saturating_duration_since(self.epoch)
            .saturating_add(NONCE_LIFETIME)
            .as_secs()
            .min(u64::from(u32::MAX)) as u32;
        let mut out = format!("{expiry:08x}").into_bytes();
        encode64(&self.nonce_mac(expiry, ip)[..NONCE_MAC_BYTES], &mut out);
        out
    }

    fn nonce_mac(&self, expiry: u32, ip: IpAddr) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.cfg.secret).expect("HMAC takes any key length");
        mac.update(&expiry.to_be_bytes());
        match ip.to_canonical() {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `nonce` is one we gave `ip` and is still valid at `now`.
    fn nonce_valid(&self, now: Instant, ip: IpAddr, nonce: &[u8]) -> bool {
        let Some(time) = nonce.get(..NONCE_TIME_LEN) else {
            return false;
        };
        let Some(expiry) = std::str::from_utf8(time)
            .ok()
            .and_then(|t| u32::from_str_radix(t, 16).ok())
        else {
            return false;
        };
        let mut want = time.to_vec();
        encode64(&self.nonce_mac(expiry, ip)[..NONCE_MAC_BYTES], &mut want);
        let elapsed = now.saturating_duration_since(self.epoch).as_secs();
        want == nonce && elapsed < u64::from(expiry)
    }

    /// RFC 8489 section 9.2.4, in its order: MESSAGE-INTEGRITY present, then USERNAME, REALM
    /// and NONCE present, then the nonce valid, then the user known and the MAC right.
    pub(super) fn authenticate(
        &self,
        now: Instant,
        src: SocketAddr,
        msg: &Message<'_>,
    ) -> Result<Authed, Unauth> {
        if !msg
            .attributes()
            .any(|a| a.typ == attr_type::MESSAGE_INTEGRITY)
        {
            return Err(Unauth::Unauthorized);
        }
        let username = match msg.get(attr_type::USERNAME) {
            Some(Ok(Attribute::Username(u))) => u,
            _ => return Err(Unauth::BadRequest),
        };
        let (Some(Ok(Attribute::Realm(_))), Some(Ok(Attribute::Nonce(nonce)))) =
            (msg.get(attr_type::REALM), msg.get(attr_type::NONCE))
        else {
            return Err(Unauth::BadRequest);
        };
        if !self.nonce_valid(now, src.ip(), nonce) {
            return Err(Unauth::StaleNonce);
        }
        let Ok(username) = std::str::from_utf8(username) else {
            return Err(Unauth::Unauthorized);
        };
        let (key, session) = match self.keys.get(username) {
            Some(key) => (*key, None),
            None => self.session_key(now, username)?,
        };
        // The realm is part of the key, so a request keyed for another realm fails here.
        if !msg.verify_integrity(&key) {
            return Err(Unauth::Unauthorized);
        }
        Ok(Authed {
            username: username.to_string(),
            key,
            session,
        })
    }

    /// The long-term key of session credentials, from the looked-up session's rendezvous key.
    #[allow(clippy::type_complexity)]
    fn session_key(
        &self,
        now: Instant,
        username: &str,
    ) -> Result<([u8; 16], Option<(String, Vec<SocketAddr>)>), Unauth> {
        let Some(name) = username
            .strip_prefix(SESSION_PREFIX)
            .filter(|_| self.cfg.session_credentials)
        else {
            return Err(Unauth::Unauthorized);
        };
        match self.sessions.get(name) {
            Some((Some(info), until)) if *until > now => {
                let (user, pass) =
                    session_credentials(&info.key, name).ok_or(Unauth::Unauthorized)?;
                let key = long_term_key(&user, &self.cfg.realm, &pass);
                Ok((key, Some((name.to_string(), info.members.clone()))))
            }
            Some((None, until)) if *until > now => Err(Unauth::Unauthorized),
            _ => Err(Unauth::Lookup(name.to_string())),
        }
    }

    /// The answer to a request that did not authenticate, at most
    /// [`response_limit`]`(request length, src)` bytes: ERROR-CODE with its phrase cut to
    /// fit, REALM and NONCE (for 401 and 438), FINGERPRINT. Dropped if even that does not
    /// fit, which [`super::MAX_REALM_LEN`] rules out for every request of 20 bytes or more.
    pub(super) fn refuse_unauthenticated(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &Message<'_>,
        why: Unauth,
    ) -> Option<Vec<u8>> {
        let (code, reason) = match why {
            Unauth::Unauthorized => (401, "Unauthorized"),
            Unauth::BadRequest => (400, "Bad Request"),
            Unauth::StaleNonce => (438, "Stale Nonce"),
            Unauth::Lookup(_) => return None,
        };
        let limit = response_limit(msg.as_bytes().len(), src);
        let nonce = self.nonce(now, src.ip());
        let realm = self.cfg.realm.clone();
        let with_realm = why != Unauth::BadRequest;
        let padded = |n: usize| (n + 3) & !3;
        let fixed = 20
            + 8
            + 8
            + if with_realm {
                8 + padded(realm.len()) + padded(nonce.len())
            } else {
                0
            };
        if fixed > limit {
            return None;
        }
        let keep = (limit - fixed) & !3;
        let phrase = reason.get(..reason.len().min(keep)).unwrap_or("");
        let mt = MessageType {
            method: msg.message_type().method,
            class: Class::Error,
        };
        let mut out = Vec::with_capacity(limit);
        let mut e = Encoder::new(&mut out, mt, msg.transaction_id());
        e.push(&Attribute::ErrorCode(ErrorCode {
            code,
            reason: phrase,
        }));
        if with_realm {
            e.push(&Attribute::Realm(&realm))
                .push(&Attribute::Nonce(&nonce));
        }
        e.fingerprint();
        debug_assert!(out.len() <= limit);
        self.stats.refusals.add(code);
        Some(out)
    }
}

//! What the client does with the server's answers: Data indications, and the success and
//! error responses that end (or, for 401 and 438, retry) its requests.

use super::{Auth, Client, Kind, State, DEFAULT_LIFETIME, MAX_STALE};
use crate::core::stun::{attr_type, long_term_key, Attribute, Class, Message, TransactionId};
use crate::core::turn::{Event, TurnError, CHANNEL_REFRESH, PERMISSION_REFRESH};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

impl Client {
    pub(super) fn on_data_indication(&mut self, msg: &Message<'_>) {
        let peer = match msg.get(attr_type::XOR_PEER_ADDRESS) {
            Some(Ok(Attribute::XorPeerAddress(p))) => p,
            _ => return,
        };
        if let Some(Ok(Attribute::Data(d))) = msg.get(attr_type::DATA) {
            self.events.push_back(Event::Data {
                peer,
                bytes: d.to_vec(),
            });
        }
    }

    pub(super) fn on_response(&mut self, now: Instant, msg: &Message<'_>) {
        let tid = msg.transaction_id();
        let Some(i) = self.txns.iter().position(|t| t.tid == tid) else {
            return;
        };
        let class = msg.message_type().class;
        if msg.message_type().method != self.txns[i].kind.method() {
            return;
        }
        if self.txns[i].authed {
            // RFC 8489 section 9.2.5: a response that fails the integrity check is
            // discarded as if never received (retransmissions go on). A success must be
            // signed; 401 and 438 cannot be (the server may not know the key), and other
            // errors are taken unsigned as RFC 5389 servers send them.
            let signed = msg.attributes().any(|a| {
                a.typ == attr_type::MESSAGE_INTEGRITY
                    || a.typ == attr_type::MESSAGE_INTEGRITY_SHA256
            });
            if let Some(a) = &self.auth {
                let valid = msg.verify_integrity(&a.key) || msg.verify_integrity_sha256(&a.key);
                if (signed && !valid) || (!signed && class == Class::Success) {
                    return;
                }
            }
        }
        let txn = self.txns.remove(i);
        if class == Class::Success {
            self.on_success(now, txn.kind, msg);
            return;
        }
        let Some(Ok(Attribute::ErrorCode(ec))) = msg.get(attr_type::ERROR_CODE) else {
            let reason = "an error response without ERROR-CODE";
            self.fail(now, txn.kind.clone(), bad(&txn.kind, reason));
            return;
        };
        match ec.code {
            401 if !txn.authed => {
                let (Some(Ok(Attribute::Realm(realm))), Some(Ok(Attribute::Nonce(nonce)))) =
                    (msg.get(attr_type::REALM), msg.get(attr_type::NONCE))
                else {
                    let reason = "401 without REALM and NONCE";
                    self.fail(now, txn.kind.clone(), bad(&txn.kind, reason));
                    return;
                };
                let key = long_term_key(&self.cfg.username, realm, &self.cfg.password);
                self.auth = Some(Auth {
                    realm: realm.to_string(),
                    nonce: nonce.to_vec(),
                    key,
                });
                self.start(now, txn.kind, 0);
            }
            401 => {
                let realm = self.auth.as_ref().map_or("", |a| a.realm.as_str());
                let error = TurnError::Unauthorized {
                    username: self.cfg.username.clone(),
                    realm: realm.to_string(),
                };
                self.fail(now, txn.kind, error);
            }
            438 => {
                // RFC 8489 section 9.2.5: retry with the NONCE of the 438 (and its REALM).
                let stale = txn.stale + 1;
                let nonce = match msg.get(attr_type::NONCE) {
                    Some(Ok(Attribute::Nonce(n))) => n,
                    _ => {
                        let reason = "438 without NONCE";
                        self.fail(now, txn.kind.clone(), bad(&txn.kind, reason));
                        return;
                    }
                };
                if stale >= MAX_STALE {
                    self.fail(now, txn.kind, TurnError::StaleNonceLoop(stale));
                    return;
                }
                let realm = match msg.get(attr_type::REALM) {
                    Some(Ok(Attribute::Realm(r))) => Some(r),
                    _ => None,
                };
                let username = &self.cfg.username;
                let password = &self.cfg.password;
                match &mut self.auth {
                    Some(a) => {
                        a.nonce = nonce.to_vec();
                        if let Some(r) = realm.filter(|r| *r != a.realm) {
                            a.realm = r.to_string();
                            a.key = long_term_key(username, r, password);
                        }
                    }
                    None => {
                        let Some(r) = realm else {
                            let reason = "438 without REALM before any 401";
                            self.fail(now, txn.kind.clone(), bad(&txn.kind, reason));
                            return;
                        };
                        self.auth = Some(Auth {
                            realm: r.to_string(),
                            nonce: nonce.to_vec(),
                            key: long_term_key(username, r, password),
                        });
                    }
                }
                self.start(now, txn.kind, stale);
            }
            code => {
                let alternate = match msg.get(attr_type::ALTERNATE_SERVER) {
                    Some(Ok(Attribute::Other { value, .. })) => alternate_server(value),
                    _ => None,
                };
                let error = TurnError::from_response(txn.kind.name(), code, ec.reason, alternate);
                self.fail(now, txn.kind, error);
            }
        }
    }

    fn on_success(&mut self, now: Instant, kind: Kind, msg: &Message<'_>) {
        let lifetime = match msg.get(attr_type::LIFETIME) {
            Some(Ok(Attribute::Lifetime(l))) => Some(l),
            _ => None,
        };
        match kind {
            Kind::Allocate => {
                if self.state != State::Allocating {
                    return;
                }
                let Some(Ok(Attribute::XorRelayedAddress(relayed))) =
                    msg.get(attr_type::XOR_RELAYED_ADDRESS)
                else {
                    let error = bad(&kind, "no XOR-RELAYED-ADDRESS");
                    self.die(error);
                    return;
                };
                self.mapped = match msg.get(attr_type::XOR_MAPPED_ADDRESS) {
                    Some(Ok(Attribute::XorMappedAddress(m))) => Some(m),
                    _ => None,
                };
                self.relayed = Some(relayed);
                self.state = State::Allocated;
                let granted = lifetime.unwrap_or(DEFAULT_LIFETIME);
                if self.cfg.lifetime.is_none() {
                    self.lifetime = granted;
                }
                self.set_lifetime(now, granted);
                self.events.push_back(Event::Allocated {
                    relayed,
                    mapped: self.mapped,
                    lifetime: Duration::from_secs(u64::from(granted)),
                });
                self.request_wanted(now);
            }
            Kind::Refresh(0) => self.finish_closed(),
            Kind::Refresh(asked) => {
                if self.state != State::Allocated {
                    return;
                }
                let granted = lifetime.unwrap_or(asked);
                if granted == 0 {
                    self.die(TurnError::Expired);
                    return;
                }
                self.set_lifetime(now, granted);
                self.events.push_back(Event::Refreshed {
                    lifetime: Duration::from_secs(u64::from(granted)),
                });
            }
            Kind::Permission(ips) => {
                if self.state != State::Allocated {
                    return;
                }
                for ip in ips {
                    let p = self.perms.entry(ip).or_default();
                    let first = !p.installed;
                    p.installed = true;
                    p.pending = false;
                    p.refresh_at = Some(now + PERMISSION_REFRESH);
                    if first {
                        self.events.push_back(Event::PermissionCreated { peer: ip });
                    }
                }
                self.release_held();
            }
            Kind::ChannelBind(peer, number) => {
                if self.state != State::Allocated {
                    return;
                }
                let Some(c) = self.chans.get_mut(&peer) else {
                    return;
                };
                let first = !c.bound;
                c.bound = true;
                c.pending = false;
                c.refresh_at = Some(now + CHANNEL_REFRESH);
                // RFC 8656 section 12.2: a ChannelBind installs or refreshes the permission.
                let p = self.perms.entry(peer.ip()).or_default();
                let perm_first = !p.installed;
                p.installed = true;
                let next = now + PERMISSION_REFRESH;
                if !p.pending && p.refresh_at.is_none_or(|t| t < next) {
                    p.refresh_at = Some(next);
                }
                if perm_first {
                    self.events
                        .push_back(Event::PermissionCreated { peer: peer.ip() });
                }
                if first {
                    self.events.push_back(Event::ChannelBound {
                        peer,
                        channel: number,
                    });
                }
                self.release_held();
            }
        }
    }

    /// A request failed for good (error response or timeout).
    pub(super) fn fail(&mut self, _now: Instant, kind: Kind, error: TurnError) {
        if self.state == State::Done {
            return;
        }
        match kind {
            Kind::Refresh(0) => self.finish_closed(),
            Kind::Allocate | Kind::Refresh(_) => {
                if self.state != State::Closing {
                    self.die(error);
                }
            }
            Kind::Permission(ips) => {
                for ip in ips {
                    self.perms.remove(&ip);
                    self.held.retain(|(p, _)| p.ip() != ip);
                    self.events.push_back(Event::PermissionFailed {
                        peer: ip,
                        error: error.clone(),
                    });
                }
            }
            Kind::ChannelBind(peer, number) => {
                // A failed rebind leaves the server's binding until it expires, and the
                // server may go on sending on it: keep receiving on the number, send
                // indications from now on.
                let was_bound = self.chans.remove(&peer).is_some_and(|c| c.bound);
                if !was_bound {
                    self.by_number.remove(&number);
                }
                self.events
                    .push_back(Event::ChannelBindFailed { peer, error });
            }
        }
    }
}

fn bad(kind: &Kind, reason: &'static str) -> TurnError {
    TurnError::BadResponse {
        request: kind.name(),
        reason,
    }
}

/// ALTERNATE-SERVER (RFC 8489 section 14.15) has the layout of MAPPED-ADDRESS; the codec
/// keeps it raw, so it is decoded here.
fn alternate_server(v: &[u8]) -> Option<SocketAddr> {
    Attribute::decode(attr_type::MAPPED_ADDRESS, v, &TransactionId([0; 16]))
        .ok()
        .and_then(|a| match a {
            Attribute::MappedAddress(a) => Some(a),
            _ => None,
        })
}

//! The requests and indications a client sends (RFC 8656 sections 7-12) and the datagrams
//! peers send to relayed addresses.

use super::alloc::Allocation;
use super::auth::{Authed, Unauth};
use super::{
    ClientId, OpenError, RelayEvent, RelayTransmit, Source, TurnServer, Via, DEFAULT_LIFETIME,
    MAX_CHANNELS, MAX_PERMISSIONS, OPEN_ATTEMPTS,
};
use crate::core::stun::{
    attr_type, Attribute, ChannelData, Class, Encoder, ErrorCode, Message, MessageType, Method,
    TransactionId, UnknownList,
};
use crate::core::turn::{CHANNEL_LIFETIME, CHANNEL_MIN, PERMISSION_LIFETIME};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// RFC 5766 section 11: the largest channel number of the older TURN.
const RFC5766_CHANNEL_MAX: u16 = 0x7fff;
/// RFC 8656 section 18.8: UDP's protocol number in REQUESTED-TRANSPORT.
const UDP: u8 = 17;

/// The comprehension-required attributes this server understands in TURN requests; any
/// other one gets 420 (RFC 8489 section 6.3.1.1).
fn known(t: u16) -> bool {
    use attr_type::*;
    attr_type::is_known(t)
        || matches!(
            t,
            CHANNEL_NUMBER
                | LIFETIME
                | XOR_PEER_ADDRESS
                | DATA
                | REQUESTED_ADDRESS_FAMILY
                | EVEN_PORT
                | REQUESTED_TRANSPORT
                | RESERVATION_TOKEN
        )
}

/// An error response to an authenticated request: code and phrase.
type Refusal = (u16, &'static str);

impl TurnServer {
    pub(super) fn on_client(&mut self, now: Instant, client: ClientId, bytes: &[u8]) {
        if ChannelData::is_channel_data(bytes) {
            match ChannelData::parse(bytes) {
                Ok(cd) => self.channel_data_from_client(now, client, cd.channel, cd.data),
                Err(_) => self.stats.malformed += 1,
            }
            return;
        }
        let Ok(msg) = Message::parse(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        let mt = msg.message_type();
        match (mt.class, mt.method) {
            (Class::Indication, Method::Send) => self.send_indication(now, client, &msg),
            (Class::Request, _) => self.request(now, client, &msg),
            // RFC 8489 section 6.3: responses and other indications get no answer.
            _ => self.stats.malformed += 1,
        }
    }

    fn request(&mut self, now: Instant, client: ClientId, msg: &Message<'_>) {
        self.stats.requests += 1;
        let src = client.addr;
        let method = msg.message_type().method;
        if !matches!(
            method,
            Method::Allocate | Method::Refresh | Method::CreatePermission | Method::ChannelBind
        ) {
            // Not TURN's (Binding belongs to the STUN server): one bounded 400.
            if let Some(r) = self.refuse_unauthenticated(now, src, msg, Unauth::BadRequest) {
                self.reply(client, r);
            }
            return;
        }
        let auth = match self.authenticate(now, src, msg) {
            Ok(a) => a,
            Err(Unauth::Lookup(session)) => {
                // Counted when it comes back with the lookup's answer.
                self.stats.requests -= 1;
                self.park(session, client, msg.as_bytes());
                return;
            }
            Err(why) => {
                if let Some(r) = self.refuse_unauthenticated(now, src, msg, why) {
                    self.reply(client, r);
                }
                return;
            }
        };
        let unknown: Vec<u8> = msg
            .attributes()
            .map(|a| a.typ)
            .filter(|&t| attr_type::is_comprehension_required(t) && !known(t))
            .take(16)
            .flat_map(u16::to_be_bytes)
            .collect();
        if !unknown.is_empty() {
            self.refuse(client, msg, &auth, (420, "Unknown Attribute"), &unknown);
            return;
        }
        // RFC 8656 section 7.2 step 1 and 441: only the allocation's own user may use it.
        if let Some(a) = self.allocs.get(&client) {
            if a.username != auth.username && method != Method::Allocate {
                self.refuse(client, msg, &auth, (441, "Wrong Credentials"), &[]);
                return;
            }
        }
        let result = match method {
            Method::Allocate => self.allocate(now, client, msg, &auth),
            Method::Refresh => self.refresh(now, client, msg, &auth),
            Method::CreatePermission => self.create_permission(now, client, msg),
            _ => self.channel_bind(now, client, msg),
        };
        if let Err(refusal) = result {
            self.refuse(client, msg, &auth, refusal, &[]);
        }
    }

    /// RFC 8656 section 7.2. On success the answer waits for the socket
    /// ([`TurnServer::relay_opened`]).
    fn allocate(
        &mut self,
        now: Instant,
        client: ClientId,
        msg: &Message<'_>,
        auth: &Authed,
    ) -> Result<(), Refusal> {
        let tid = msg.transaction_id();
        if let Some(a) = self.allocs.get(&client) {
            if a.tid != tid || a.username != auth.username {
                return Err((437, "Allocation Mismatch"));
            }
            // A retransmission: answer again once the socket is open.
            if a.open {
                let (port, lifetime, key) = (a.port, a.lifetime, a.key);
                self.allocate_success(client, tid, port, lifetime, &key);
            }
            return Ok(());
        }
        let mut transport = None;
        let mut lifetime = None;
        let mut even = false;
        for a in msg.attributes() {
            match a.decode(&tid) {
                Ok(Attribute::RequestedTransport(t)) => transport = Some(t),
                Ok(Attribute::Lifetime(l)) => lifetime = Some(l),
                Ok(Attribute::EvenPort { reserve: false }) => even = true,
                // Reserving the next port (the R bit) and claiming a reservation are not
                // offered: section 7.2 step 5 and 6 answer 508 for what cannot be done.
                Ok(Attribute::EvenPort { reserve: true }) | Ok(Attribute::ReservationToken(_)) => {
                    return Err((508, "Insufficient Capacity"))
                }
                Ok(Attribute::RequestedAddressFamily(f)) => {
                    if (f == 0x01) != self.cfg.relay_ip.is_ipv4() {
                        return Err((440, "Address Family not Supported"));
                    }
                }
                Ok(_) => {}
                Err(_) if attr_type::is_comprehension_required(a.typ) => {
                    return Err((400, "Malformed attribute"))
                }
                Err(_) => {}
            }
        }
        match transport {
            None => return Err((400, "REQUESTED-TRANSPORT missing")),
            Some(UDP) => {}
            Some(_) => return Err((442, "Unsupported Transport Protocol")),
        }
        if self.per_user.get(&auth.username).copied().unwrap_or(0) >= self.cfg.user_quota {
            return Err((486, "Allocation Quota Reached"));
        }
        if self.allocs.len() >= self.cfg.max_allocations {
            return Err((508, "Insufficient Capacity"));
        }
        let Some(port) = self.pool.take(&mut self.rng, even) else {
            return Err((508, "Insufficient Capacity"));
        };
        let granted = self.grant(lifetime);
        *self.per_user.entry(auth.username.clone()).or_default() += 1;
        self.by_port.insert(port, client);
        let expires = now + Duration::from_secs(u64::from(granted));
        self.allocs.insert(
            client,
            Allocation {
                port,
                username: auth.username.clone(),
                key: auth.key,
                tid,
                open: false,
                attempts: 1,
                expires,
                lifetime: granted,
                perms: HashMap::new(),
                chans: HashMap::new(),
                chan_of: HashMap::new(),
                bytes: 0,
                session: auth.session.clone(),
            },
        );
        self.note_expiry(expires);
        self.events.push_back(RelayEvent::Open { port });
        Ok(())
    }

    /// RFC 8656 section 7.2: the default when the client asks for less, the maximum when it
    /// asks for more.
    fn grant(&self, asked: Option<u32>) -> u32 {
        let default = Self::lifetime_secs(DEFAULT_LIFETIME);
        let max = Self::lifetime_secs(self.cfg.max_lifetime).max(default);
        asked.map_or(default, |l| l.clamp(default, max))
    }

    pub(super) fn on_opened(&mut self, now: Instant, port: u16, result: Result<(), OpenError>) {
        let Some(&client) = self.by_port.get(&port) else {
            return;
        };
        let Some(a) = self.allocs.get_mut(&client).filter(|a| !a.open) else {
            return;
        };
        match result {
            Ok(()) => {
                a.open = true;
                let (tid, lifetime, key) = (a.tid, a.lifetime, a.key);
                self.stats.allocations_made += 1;
                self.allocate_success(client, tid, port, lifetime, &key);
            }
            Err(OpenError::InUse) if a.attempts < OPEN_ATTEMPTS => {
                a.attempts += 1;
                // Take the next port before giving this one back, so it is not drawn again.
                let Some(next) = self.pool.take(&mut self.rng, false) else {
                    self.open_failed(now, client, port);
                    return;
                };
                a.port = next;
                self.pool.release(port);
                self.by_port.remove(&port);
                self.by_port.insert(next, client);
                self.events.push_back(RelayEvent::Open { port: next });
            }
            Err(_) => self.open_failed(now, client, port),
        }
    }

    fn open_failed(&mut self, _now: Instant, client: ClientId, _port: u16) {
        let Some(a) = self.allocs.get(&client) else {
            return;
        };
        let (tid, key) = (a.tid, a.key);
        self.free(client);
        let mt = MessageType {
            method: Method::Allocate,
            class: Class::Error,
        };
        self.error_response(client, mt, tid, &key, (508, "Insufficient Capacity"), &[]);
    }

    fn allocate_success(
        &mut self,
        client: ClientId,
        tid: TransactionId,
        port: u16,
        lifetime: u32,
        key: &[u8; 16],
    ) {
        let mt = MessageType {
            method: Method::Allocate,
            class: Class::Success,
        };
        let relayed = SocketAddr::new(self.cfg.relay_ip, port);
        let attrs = [
            Attribute::XorRelayedAddress(relayed),
            Attribute::Lifetime(lifetime),
            Attribute::XorMappedAddress(client.addr),
        ];
        self.signed(client, mt, tid, key, &attrs);
    }

    /// RFC 8656 section 8: a new lifetime, or 0 to free.
    fn refresh(
        &mut self,
        now: Instant,
        client: ClientId,
        msg: &Message<'_>,
        auth: &Authed,
    ) -> Result<(), Refusal> {
        if !self.allocs.get(&client).is_some_and(|a| a.open) {
            return Err((437, "Allocation Mismatch"));
        }
        let asked = match msg.get(attr_type::LIFETIME) {
            Some(Ok(Attribute::Lifetime(l))) => Some(l),
            Some(Err(_)) => return Err((400, "Malformed LIFETIME")),
            _ => None,
        };
        let granted = if asked == Some(0) {
            self.stats.allocations_freed += 1;
            self.free(client);
            0
        } else {
            let granted = self.grant(asked);
            let expires = now + Duration::from_secs(u64::from(granted));
            if let Some(a) = self.allocs.get_mut(&client) {
                a.expires = expires;
            }
            granted
        };
        let mt = MessageType {
            method: Method::Refresh,
            class: Class::Success,
        };
        let attrs = [Attribute::Lifetime(granted)];
        self.signed(client, mt, msg.transaction_id(), &auth.key, &attrs);
        Ok(())
    }

    /// Holds a request until its session is looked up; asks for the lookup once.
    fn park(&mut self, session: String, client: ClientId, bytes: &[u8]) {
        if self.parked.len() >= super::session::MAX_PARKED {
            return;
        }
        if !self.parked.iter().any(|(s, _, _)| *s == session) {
            self.events.push_back(RelayEvent::Lookup {
                session: session.clone(),
            });
        }
        self.parked.push((session, client, bytes.to_vec()));
    }

    /// Whether a session allocation of `client` may relay to `peer` (always, for other
    /// allocations): toward the public address of another member of its session, or toward
    /// the relayed address of another client of the same session on this server.
    fn session_allows(&self, client: ClientId, peer: SocketAddr) -> bool {
        let Some((name, members)) = self.allocs.get(&client).and_then(|a| a.session.as_ref())
        else {
            return true;
        };
        let ip = peer.ip().to_canonical();
        if ip == self.cfg.relay_ip.to_canonical() {
            // A relayed address: the one at `peer`'s port, or (a permission, which names no
            // port) any of the session's other allocations.
            let mate = |c: &ClientId, a: &Allocation| {
                *c != client && a.session.as_ref().is_some_and(|(n, _)| n == name)
            };
            return match self.by_port.get(&peer.port()) {
                Some(c) => self.allocs.get(c).is_some_and(|a| mate(c, a)),
                None => peer.port() == 0 && self.allocs.iter().any(|(c, a)| mate(c, a)),
            };
        }
        // The other members: not the one at the client's own IP, unless all share it.
        let own = client.addr.ip().to_canonical();
        let others: Vec<_> = members
            .iter()
            .map(|m| m.ip().to_canonical())
            .filter(|m| *m != own)
            .collect();
        if others.is_empty() {
            members.iter().any(|m| m.ip().to_canonical() == ip)
        } else {
            others.contains(&ip)
        }
    }

    /// The peer addresses of XOR-PEER-ADDRESS attributes, checked against the relay's family
    /// (443) and its policy (403): see [`TurnServer::forbidden`].
    fn peers(&self, msg: &Message<'_>, client: ClientId) -> Result<Vec<SocketAddr>, Refusal> {
        let tid = msg.transaction_id();
        let mut peers = Vec::new();
        for a in msg.attributes() {
            if a.typ != attr_type::XOR_PEER_ADDRESS {
                continue;
            }
            let Ok(Attribute::XorPeerAddress(p)) = a.decode(&tid) else {
                return Err((400, "Malformed XOR-PEER-ADDRESS"));
            };
            if p.is_ipv4() != self.cfg.relay_ip.is_ipv4() {
                return Err((443, "Peer Address Family Mismatch"));
            }
            if self.forbidden(p) {
                return Err((403, "Forbidden peer address"));
            }
            if !self.session_allows(client, p) {
                return Err((403, "Not a peer of this session"));
            }
            peers.push(p);
        }
        if peers.is_empty() {
            return Err((400, "XOR-PEER-ADDRESS missing"));
        }
        Ok(peers)
    }

    /// Peers the relay never talks to: nothing a datagram could be addressed to, and its own
    /// ports other than relayed ones (its STUN, rendezvous and TCP service must not be
    /// reached from a relayed address, which would look like the relay itself).
    ///
    /// Loopback peers are refused too (as coturn's `--no-loopback-peers`): they would reach
    /// services on the server's host that trust local clients. A relay on a loopback address
    /// itself (tests) still relays between its own relayed ports.
    fn forbidden(&self, p: SocketAddr) -> bool {
        let ip = p.ip().to_canonical();
        let own_ip = ip == self.cfg.relay_ip.to_canonical();
        let bad_ip = ip.is_unspecified()
            || ip.is_multicast()
            || (ip.is_loopback() && !own_ip)
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        let own = own_ip && p.port() != 0;
        bad_ip || (own && !self.pool.contains(p.port()))
    }

    /// RFC 8656 section 9: installs or refreshes every listed permission, or none.
    fn create_permission(
        &mut self,
        now: Instant,
        client: ClientId,
        msg: &Message<'_>,
    ) -> Result<(), Refusal> {
        if !self.allocs.get(&client).is_some_and(|a| a.open) {
            return Err((437, "Allocation Mismatch"));
        }
        let peers = self.peers(msg, client)?;
        let Some(a) = self.allocs.get_mut(&client) else {
            return Err((437, "Allocation Mismatch"));
        };
        a.purge(now);
        let new = peers
            .iter()
            .filter(|p| !a.perms.contains_key(&p.ip()))
            .count();
        if a.perms.len() + new > MAX_PERMISSIONS {
            return Err((508, "Insufficient Capacity"));
        }
        for p in peers {
            a.perms.insert(p.ip(), now + PERMISSION_LIFETIME);
        }
        self.stats.permissions_created += new as u64;
        let key = a.key;
        let mt = MessageType {
            method: Method::CreatePermission,
            class: Class::Success,
        };
        self.signed(client, mt, msg.transaction_id(), &key, &[]);
        Ok(())
    }

    /// RFC 8656 section 12.2.
    fn channel_bind(
        &mut self,
        now: Instant,
        client: ClientId,
        msg: &Message<'_>,
    ) -> Result<(), Refusal> {
        if !self.allocs.get(&client).is_some_and(|a| a.open) {
            return Err((437, "Allocation Mismatch"));
        }
        let number = match msg.get(attr_type::CHANNEL_NUMBER) {
            Some(Ok(Attribute::ChannelNumber(n))) => n,
            _ => return Err((400, "CHANNEL-NUMBER missing or malformed")),
        };
        // RFC 8656 section 12 narrowed the numbers to 0x4000-0x4FFF, but RFC 5766 clients
        // (coturn's turnutils_uclient among them) still pick from 0x4000-0x7FFF, which the
        // first two bits of ChannelData (01) still tell from STUN: accept those too.
        if !(CHANNEL_MIN..=RFC5766_CHANNEL_MAX).contains(&number) {
            return Err((400, "Channel number out of range"));
        }
        let peers = self.peers(msg, client)?;
        let [peer] = peers[..] else {
            return Err((400, "One XOR-PEER-ADDRESS expected"));
        };
        let Some(a) = self.allocs.get_mut(&client) else {
            return Err((437, "Allocation Mismatch"));
        };
        a.purge(now);
        if a.chans.get(&number).is_some_and(|(p, _)| *p != peer) {
            return Err((400, "Channel bound to another peer"));
        }
        if a.chan_of.get(&peer).is_some_and(|&n| n != number) {
            return Err((400, "Peer bound to another channel"));
        }
        let new_chan = !a.chans.contains_key(&number);
        if new_chan && a.chans.len() >= MAX_CHANNELS {
            return Err((508, "Insufficient Capacity"));
        }
        if !a.perms.contains_key(&peer.ip()) && a.perms.len() >= MAX_PERMISSIONS {
            return Err((508, "Insufficient Capacity"));
        }
        a.chans.insert(number, (peer, now + CHANNEL_LIFETIME));
        a.chan_of.insert(peer, number);
        // Section 12.2: binding a channel installs or refreshes the peer's permission.
        let perm = a.perms.entry(peer.ip()).or_insert(now);
        *perm = (*perm).max(now + PERMISSION_LIFETIME);
        if new_chan {
            self.stats.channels_bound += 1;
        }
        let key = a.key;
        let mt = MessageType {
            method: Method::ChannelBind,
            class: Class::Success,
        };
        self.signed(client, mt, msg.transaction_id(), &key, &[]);
        Ok(())
    }

    /// RFC 8656 section 11.2: relays DATA to XOR-PEER-ADDRESS under a permission; anything
    /// wrong drops it silently (indications get no answer).
    fn send_indication(&mut self, now: Instant, client: ClientId, msg: &Message<'_>) {
        let (Some(Ok(Attribute::XorPeerAddress(peer))), Some(Ok(Attribute::Data(data)))) = (
            msg.get(attr_type::XOR_PEER_ADDRESS),
            msg.get(attr_type::DATA),
        ) else {
            self.stats.malformed += 1;
            return;
        };
        self.relay_to_peer(now, client, peer, data);
    }

    /// RFC 8656 section 12.6: ChannelData from a client goes to the channel's peer.
    fn channel_data_from_client(
        &mut self,
        now: Instant,
        client: ClientId,
        channel: u16,
        data: &[u8],
    ) {
        let peer = self
            .allocs
            .get(&client)
            .and_then(|a| a.peer_of(now, channel));
        match peer {
            Some(peer) => self.relay_to_peer(now, client, peer, data),
            None => self.stats.dropped_no_permission += 1,
        }
    }

    fn relay_to_peer(&mut self, now: Instant, client: ClientId, peer: SocketAddr, data: &[u8]) {
        let max_bytes = self.cfg.max_bytes;
        let Some(a) = self.allocs.get_mut(&client).filter(|a| a.open) else {
            self.stats.dropped_no_permission += 1;
            return;
        };
        // A permission for the relay's own IP (two clients of this relay talking to each
        // other) reaches only live relayed ports, never the server's own services.
        let own = peer.ip().to_canonical() == self.cfg.relay_ip.to_canonical();
        if !a.permitted(now, peer.ip()) || (own && !self.by_port.contains_key(&peer.port())) {
            self.stats.dropped_no_permission += 1;
            return;
        }
        if own && a.session.is_some() && !self.session_allows(client, peer) {
            self.stats.dropped_no_permission += 1;
            return;
        }
        let Some(a) = self.allocs.get_mut(&client) else {
            return;
        };
        let n = data.len() as u64;
        if max_bytes.is_some_and(|m| a.bytes + n > m) {
            self.stats.dropped_over_bytes += 1;
            return;
        }
        a.bytes += n;
        let port = a.port;
        self.stats.bytes_to_peers += n;
        self.stats.datagrams_to_peers += 1;
        if own {
            // Both ends are ours: the datagram would leave one relay socket only to be read
            // from the other by this same machine. Delivering it here is what that round
            // trip would do (the receiving allocation checks its permissions as for any
            // peer) at a third of the system calls per datagram.
            let from = SocketAddr::new(self.cfg.relay_ip, port);
            self.on_peer(now, peer.port(), from, data);
            return;
        }
        self.out.push_back(RelayTransmit {
            from: Source::Relay(port),
            to: peer,
            payload: data.to_vec(),
        });
    }

    /// RFC 8656 section 11.3 and 12.6: a datagram from a permitted peer goes to the client as
    /// ChannelData when a channel is bound to the peer, else in a Data indication.
    pub(super) fn on_peer(&mut self, now: Instant, port: u16, peer: SocketAddr, data: &[u8]) {
        let max_bytes = self.cfg.max_bytes;
        let Some(&client) = self.by_port.get(&port) else {
            return;
        };
        let Some(a) = self.allocs.get(&client).filter(|a| a.open) else {
            return;
        };
        let own = peer.ip().to_canonical() == self.cfg.relay_ip.to_canonical();
        if !a.permitted(now, peer.ip())
            || (own && a.session.is_some() && !self.session_allows(client, peer))
        {
            self.stats.dropped_no_permission += 1;
            return;
        }
        let Some(a) = self.allocs.get_mut(&client) else {
            return;
        };
        let n = data.len() as u64;
        // A Data indication must fit a 16-bit STUN length with its other attributes.
        if max_bytes.is_some_and(|m| a.bytes + n > m) || data.len() > crate::core::turn::MAX_DATA {
            self.stats.dropped_over_bytes += 1;
            return;
        }
        a.bytes += n;
        let mut payload = Vec::with_capacity(data.len() + 48);
        match a.channel_of(now, peer) {
            Some(c) => ChannelData::encode(c, data, client.via == Via::Tcp, &mut payload),
            None => {
                let mt = MessageType {
                    method: Method::Data,
                    class: Class::Indication,
                };
                let tid = TransactionId::random(&mut self.rng);
                Encoder::new(&mut payload, mt, tid)
                    .push(&Attribute::XorPeerAddress(peer))
                    .push(&Attribute::Data(data));
            }
        }
        self.stats.bytes_to_clients += n;
        self.stats.datagrams_to_clients += 1;
        self.reply(client, payload);
    }

    /// An error answer to an authenticated request, signed with the user's key.
    fn refuse(
        &mut self,
        client: ClientId,
        msg: &Message<'_>,
        auth: &Authed,
        refusal: Refusal,
        unknown: &[u8],
    ) {
        let mt = MessageType {
            method: msg.message_type().method,
            class: Class::Error,
        };
        self.error_response(
            client,
            mt,
            msg.transaction_id(),
            &auth.key,
            refusal,
            unknown,
        );
    }

    fn error_response(
        &mut self,
        client: ClientId,
        mt: MessageType,
        tid: TransactionId,
        key: &[u8; 16],
        (code, reason): Refusal,
        unknown: &[u8],
    ) {
        self.stats.refusals.add(code);
        let mut attrs = vec![Attribute::ErrorCode(ErrorCode { code, reason })];
        if !unknown.is_empty() {
            attrs.push(Attribute::UnknownAttributes(UnknownList(unknown)));
        }
        self.signed(client, mt, tid, key, &attrs);
    }

    /// Sends an answer with `attrs`, then SOFTWARE, MESSAGE-INTEGRITY keyed with the user's
    /// key (RFC 8489 section 9.2.4: answers to authenticated requests are signed) and
    /// FINGERPRINT.
    fn signed(
        &mut self,
        client: ClientId,
        mt: MessageType,
        tid: TransactionId,
        key: &[u8; 16],
        attrs: &[Attribute<'_>],
    ) {
        let mut out = Vec::with_capacity(128);
        let mut e = Encoder::new(&mut out, mt, tid);
        for a in attrs {
            e.push(a);
        }
        if let Some(s) = &self.cfg.software {
            e.push(&Attribute::Software(s));
        }
        e.message_integrity(key).fingerprint();
        self.reply(client, out);
    }

    fn reply(&mut self, client: ClientId, payload: Vec<u8>) {
        self.out.push_back(RelayTransmit {
            from: Source::Primary(client.via),
            to: client.addr,
            payload,
        });
    }
}

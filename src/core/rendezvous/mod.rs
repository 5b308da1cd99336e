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
pub mod outcome;
mod registry;
mod server;
mod stream;

pub use outcome::{nat_class, Outcome, OutcomeLabels, RendezvousStats};
pub use registry::{Change, Member, MemoryRegistry, Out, Registry, RegistryError, Session};
pub use server::{small_error, Rendezvous, RendezvousConfig};
pub use stream::{
    from_stream_frame, may_be_stream_frame, stream_frame_len, to_stream_frame, StreamFrame,
    MAX_STREAM_FRAME, STREAM_HEADER_LEN,
};

use crate::core::classify::{Allocation, Behavior};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// The 4 bytes every rendezvous message starts with, over UDP and TCP alike. The first byte,
/// 0x50, has top bits 01, which STUN never has (RFC 8489 section 6), so the server tells
/// rendezvous from STUN by it.
pub const MAGIC: &[u8; 4] = b"PRV1";
/// Keeps every message inside one unfragmented datagram on any sane path.
pub const MAX_MESSAGE: usize = 1200;
const MAX_SESSION_NAME: usize = 128;
/// The most `locals` a register may carry.
pub const MAX_LOCALS: usize = 8;
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
    /// Mapping behaviour toward different destinations (RFC 4787 section 4.1).
    pub mapping: Behavior,
    /// Filtering behaviour for inbound packets (RFC 4787 section 5).
    pub filtering: Behavior,
    /// How the NAT picks the external port of a new mapping; with `sequential`, the peer predicts
    /// the next port from `delta`.
    pub allocation: Allocation,
    /// For [`Allocation::Sequential`]: the step between the external ports of consecutive
    /// mappings (may be negative). `None` for every other allocation.
    pub delta: Option<i32>,
    /// With random allocation confined to a block (a carrier-grade NAT's per-subscriber
    /// ports): the ports to search, estimated from the probe's samples. Absent: the whole
    /// non-privileged range. Older peers neither send nor read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[u16; 2]>,
}

impl NatInfo {
    /// Nothing measured: every behaviour `unknown`, no delta, no range. Sent by a peer that
    /// has not classified its NAT, e.g. one whose UDP is blocked.
    pub fn unknown() -> Self {
        NatInfo {
            mapping: Behavior::Unknown,
            filtering: Behavior::Unknown,
            allocation: Allocation::Unknown,
            delta: None,
            range: None,
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
    /// The peer's own NAT classification, as it registered it.
    pub nat: NatInfo,
    /// Present when the peer punches TCP (`connect --tcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpOffer>,
    /// The endpoint the peer's router maps to its punch port on request (PCP, NAT-PMP or
    /// UPnP IGD; UDP, or TCP with `tcp`): anyone reaches the peer there. Older peers
    /// neither send nor read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped: Option<SocketAddr>,
    /// The peer's relayed transport address on a TURN server (RFC 8656 section 2), where
    /// it is reached through its allocation when no hole opens. Absent without an
    /// allocation; older peers neither send nor read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed: Option<RelayOffer>,
    /// The peer's UDP to the server got no answer; it met us over TCP and can only be reached
    /// through its relayed address, so punching toward it is pointless. Absent when false;
    /// older peers neither send nor read it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub udp_blocked: bool,
    /// The pairing exchange of `connect --code` (`crate::core::pairing`). Absent otherwise;
    /// older peers neither send nor read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairing: Option<PairingData>,
    /// The peer's round trip to the server in milliseconds, as it registered it; the server
    /// sets it (see [`peer_rtt`]). Absent from servers that predate it; older peers ignore
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<u32>,
}

/// The round trip between the two peers before anything crossed between them, from what
/// each measured to the server: the sum of the two, the path through the server's
/// surroundings (a peer near the server and one far from it are as far apart as the far one
/// is from the server, not twice the near one's distance). Without the peer's figure (a
/// server that predates it) the peer is taken to be as far from the server as we are.
pub fn peer_rtt(mine: Duration, theirs: Option<u32>) -> Duration {
    mine + theirs.map_or(mine, |ms| Duration::from_millis(u64::from(ms)))
}

/// The session of lockstep attempt `attempt` (2 and on) after a window that did not meet
/// ([`crate::core::punch::lockstep::Retry`]): both peers derive the same name from the agreed
/// one, so the server introduces them again without knowing of attempts, and neither meets a
/// stale registration of the other's earlier attempt. Cut at a character boundary to stay
/// within the 128 bytes a session name may have.
pub fn retry_session(session: &str, attempt: u32) -> String {
    let suffix = format!("#{attempt}");
    let mut keep = MAX_SESSION_NAME
        .saturating_sub(suffix.len())
        .min(session.len());
    while !session.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{suffix}", &session[..keep])
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One side's part of a pairing: its SPAKE2 message, and once it computed the key, its
/// confirmation that it holds it. The server relays both unchanged and can learn neither the
/// code nor the key from them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairingData {
    /// The SPAKE2 message (hex).
    pub msg: String,
    /// HMAC-SHA256 under the agreed key (hex, `crate::core::pairing::confirmation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<String>,
}

/// A SPAKE2 message on Ed25519 is 33 bytes; a little room, and no more.
const MAX_PAIRING_MSG: usize = 64;

impl PairingData {
    fn valid(&self) -> bool {
        crate::core::hex::decode(&self.msg)
            .is_some_and(|m| !m.is_empty() && m.len() <= MAX_PAIRING_MSG)
            && self
                .confirm
                .as_deref()
                .is_none_or(|c| crate::core::hex::decode32(c).is_some())
    }
}

/// A peer's relayed address and the certificate its QUIC stream will present there, MACed
/// like [`TcpOffer`] under the punch key, which the server never has: a server cannot
/// redirect the relayed stream or substitute the certificate. Without a punch there are
/// no authenticated probes to carry the fingerprint, so the offer does.
/// See `crate::core::turn::offer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayOffer {
    /// The relayed transport address (RFC 8656 section 2) allocated to the peer on the TURN
    /// server.
    pub addr: SocketAddr,
    /// SHA-256 of the certificate (hex).
    pub fp: String,
    /// HMAC-SHA256 under the punch key (hex).
    pub mac: String,
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
    /// The peer's NAT as measured over TCP from `local_port` (mapping, filtering, allocation).
    pub nat: NatInfo,
    /// SHA-256 of the certificate the peer's TLS will present (hex).
    pub fp: String,
    /// HMAC-SHA256 under the punch key (hex).
    pub mac: String,
}

impl RelayOffer {
    fn valid(&self) -> bool {
        crate::core::hex::decode32(&self.fp).is_some()
            && crate::core::hex::decode32(&self.mac).is_some()
    }
}

impl TcpOffer {
    fn valid(&self) -> bool {
        crate::core::hex::decode32(&self.fp).is_some()
            && crate::core::hex::decode32(&self.mac).is_some()
    }
}

/// One rendezvous message: the JSON object after [`MAGIC`], its type named by the member `t`
/// (`register`, `waiting`, `peer`, `bye`, `error`, `outcome`). Client messages carry a `mac`;
/// see [`Msg::encode_signed`] and [`verify_mac`]. Wire format: `docs/rendezvous.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Msg {
    /// Client to server; repeated every few hundred ms until the peer arrives, which also
    /// keeps the client's NAT binding toward the server open.
    Register {
        /// The session name both peers give: 1 to 128 bytes, no control characters.
        session: String,
        /// This peer's id: exactly 16 hex digits, random per run.
        peer: String,
        /// Strictly increasing per peer: a replayed register is stale.
        seq: u64,
        /// The session key (hex), sent only to create the session (trust on first use).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// The punching socket's addresses on the peer's own interfaces, then, from a peer that
        /// also punches over the other address family, that family's; at most [`MAX_LOCALS`].
        locals: Vec<SocketAddr>,
        /// The peer's quick NAT classification, for the other side's punch strategy.
        nat: NatInfo,
        /// The TCP punch offer, only from `connect --tcp`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tcp: Option<TcpOffer>,
        /// Our punch port as our router maps it ([`PeerData::mapped`]); absent without a
        /// mapping, so a server that predates it still reads the registers of clients that
        /// have none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mapped: Option<SocketAddr>,
        /// Our relayed address ([`PeerData::relayed`]); absent without an allocation, so a
        /// server that predates it still reads the registers of clients that have none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relayed: Option<RelayOffer>,
        /// [`PeerData::udp_blocked`]; absent when false, so servers that predate it still
        /// read the registers of every client whose UDP works.
        #[serde(default, skip_serializing_if = "is_false")]
        udp_blocked: bool,
        /// [`PeerData::pairing`]; absent outside `connect --code`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pairing: Option<PairingData>,
        /// The client's measured RTT to the server, for the start time.
        rtt_ms: u32,
        /// HMAC-SHA256 under the session key; see [`Msg::encode_signed`].
        #[serde(default, skip_serializing_if = "String::is_empty")]
        mac: String,
    },
    /// Server to client: registered, the other peer is not there yet.
    Waiting {
        /// The public endpoint the server saw this register come from.
        you: SocketAddr,
        /// Milliseconds the server still holds the session for the other peer before it answers
        /// `peer-timeout`.
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
        /// This peer's public endpoint as the server saw it.
        you: SocketAddr,
        /// The other peer, as it registered (with the public endpoint the server saw).
        peer: PeerData,
        /// Start punching this many milliseconds after receiving this message. The server aims
        /// both peers at one start time and subtracts half the receiver's RTT, since the clocks
        /// are not synchronised.
        start_in_ms: u64,
        /// Whether this peer's registration completed the pair (the other peer was waiting):
        /// it then plays the TLS client, whose handshake ends half a round trip before the
        /// server's, so the peer that came last waits least. Absent from older servers
        /// (the peers' ids decide instead).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        joined_second: Option<bool>,
    },
    /// Client to server: leaving; frees the session early.
    Bye {
        /// The session to leave.
        session: String,
        /// The leaving peer's id; only its own entry is removed, and only from the endpoint that
        /// registered it.
        peer: String,
        /// Same counter as `Register`'s `seq`: a `bye` not newer than the peer's last accepted
        /// register is a replay and ignored.
        seq: u64,
        /// HMAC-SHA256 under the session key; see [`Msg::encode_signed`].
        #[serde(default, skip_serializing_if = "String::is_empty")]
        mac: String,
    },
    /// Server to client: a message was refused, or the lone peer's wait ended.
    Error {
        /// What went wrong, for the client to act on.
        code: ErrorCode,
        /// A sentence for the user. May be shortened or empty: an answer to a message that did
        /// not authenticate is never larger than that message ([`small_error`]).
        message: String,
    },
    /// Client to server, once the connect has come to something (issue #15): what it came
    /// to, counted once per session for the server's metrics. Not answered. Sent before
    /// `bye`, while the server still holds the session to check the MAC against.
    Outcome {
        /// The session the outcome belongs to; counted only while the server still holds it.
        session: String,
        /// The reporting peer's id; it must be a member of the session.
        peer: String,
        /// What the connect came to, reduced to bounded labels by the server before counting.
        outcome: Outcome,
        /// HMAC-SHA256 under the session key; see [`Msg::encode_signed`].
        #[serde(default, skip_serializing_if = "String::is_empty")]
        mac: String,
    },
}

/// The `code` of an [`Msg::Error`], serialised in kebab-case (`session-full`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// Two other peers already hold the session.
    SessionFull,
    /// The lone peer waited the server's limit and nobody came.
    PeerTimeout,
    /// The server holds as many sessions as it may.
    ServerBusy,
    /// The message was malformed. The reference server never sends it (it drops what does not
    /// decode, unanswered); a client reports it as a plain rendezvous error.
    BadRequest,
    /// The session does not exist and the register carried no `key` to create it.
    UnknownSession,
    /// The message's MAC does not verify under the session's key (another secret).
    Unauthorized,
    /// The server cannot reach its session registry (Redis).
    RegistryUnavailable,
}

impl Msg {
    /// [`MAGIC`] followed by the message's JSON, unsigned: how the server's answers go out.
    /// Client messages go out through [`Msg::encode_signed`].
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
        if let Msg::Register { mac, .. } | Msg::Bye { mac, .. } | Msg::Outcome { mac, .. } =
            &mut unsigned
        {
            mac.clear();
        }
        let mut v = unsigned.encode();
        debug_assert_eq!(v.last(), Some(&b'}'));
        v.pop();
        let tag = mac_of(key, &v);
        v.extend_from_slice(MAC_PREFIX);
        v.extend_from_slice(crate::core::hex::encode(&tag).as_bytes());
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
                relayed,
                pairing,
                ..
            } => {
                valid_session(session)
                    && valid_peer_id(peer)
                    && locals.len() <= MAX_LOCALS
                    && tcp.as_ref().is_none_or(TcpOffer::valid)
                    && relayed.as_ref().is_none_or(RelayOffer::valid)
                    && pairing.as_ref().is_none_or(PairingData::valid)
                    && key
                        .as_deref()
                        .is_none_or(|k| crate::core::hex::decode32(k).is_some())
                    && crate::core::hex::decode32(mac).is_some()
            }
            Msg::Bye {
                session, peer, mac, ..
            } => {
                valid_session(session)
                    && valid_peer_id(peer)
                    && crate::core::hex::decode32(mac).is_some()
            }
            Msg::Outcome {
                session,
                peer,
                outcome,
                mac,
            } => {
                valid_session(session)
                    && valid_peer_id(peer)
                    && outcome.valid()
                    && crate::core::hex::decode32(mac).is_some()
            }
            Msg::Peer { peer, .. } => {
                valid_peer_id(&peer.id)
                    && peer.locals.len() <= MAX_LOCALS
                    && peer.tcp.as_ref().is_none_or(TcpOffer::valid)
                    && peer.relayed.as_ref().is_none_or(RelayOffer::valid)
                    && peer.pairing.as_ref().is_none_or(PairingData::valid)
            }
            _ => true,
        }
    }

    /// Whether `data` starts with [`MAGIC`], i.e. belongs to the rendezvous rather than STUN or
    /// TURN; says nothing about whether it decodes.
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
        .and_then(crate::core::hex::decode32)
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

fn valid_session(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SESSION_NAME && !s.chars().any(char::is_control)
}

fn valid_peer_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests;

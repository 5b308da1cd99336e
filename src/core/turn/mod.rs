//! TURN (RFC 8656), sans-IO: the client here, the server in [`server`]. The client holds one
//! allocation on one TURN server, its permissions and channels, and the data relayed through
//! it.
//!
//! # What it does
//!
//! [`Client::new`] sends an Allocate for a UDP relay (REQUESTED-TRANSPORT 17) without
//! credentials; the server's 401 carries REALM and NONCE, and the request goes again with
//! USERNAME, REALM, NONCE and MESSAGE-INTEGRITY keyed with the long-term key
//! MD5(username ":" realm ":" password) (RFC 8489 section 9.2). A 438 Stale Nonce is
//! answered by retrying with the new NONCE; a second 401 means wrong credentials. Every later
//! request (Refresh, CreatePermission, ChannelBind) carries the credentials the same way.
//!
//! Once allocated, the client refreshes the allocation a minute before its lifetime ends
//! (RFC 8656 section 8), each permission every [`PERMISSION_REFRESH`] (they last 300 s,
//! section 9) and each channel every [`CHANNEL_REFRESH`] (bindings last 600 s, section 12).
//! [`Client::send_to`] sends through a channel once its ChannelBind succeeded, otherwise in a
//! Send indication; it creates the peer's permission when there is none and holds the data
//! until the permission is installed (the server drops data toward a peer without one).
//! Data indications and ChannelData from the server come out as [`Event::Data`].
//! [`Client::close`] frees the allocation with a Refresh of lifetime 0.
//!
//! Requests are retransmitted over UDP per RFC 8489 section 6.2.1 (RTO from the config,
//! doubled each time, [`TurnConfig::max_transmits`] sends, then 16 RTO for the last answer);
//! over a stream transport they are sent once and time out after 39.5 s (section 6.2.2).
//!
//! # Transports
//!
//! The client produces and consumes whole messages; it never frames. Over UDP each
//! [`Transmit`](crate::core::Transmit) is one datagram and each datagram goes to
//! [`handle_input`](crate::core::Machine::handle_input) as it is. Over TCP or TLS (RFC 8656
//! section 3.1, [`Transport::Stream`]) the driver writes each transmit's payload to the stream
//! as it is (the client pads ChannelData to a multiple of 4 bytes, section 12.5), and splits
//! what it reads with [`crate::core::stun::frame_len`]: a STUN message is 20 bytes plus its
//! length field, a ChannelData message 4 bytes plus its length field rounded up to a multiple
//! of 4; each frame, padding included, is one `handle_input`.

mod client;
mod error;
pub mod offer;
pub mod server;
#[cfg(test)]
mod tests;

pub use client::Client;
pub use error::TurnError;
pub use server::TurnServer;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// RFC 8656 section 9: a permission lasts 300 s; refreshed a minute early.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// How often the client refreshes each permission: a minute before [`PERMISSION_LIFETIME`]
/// runs out.
pub const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// RFC 8656 section 12: a channel binding lasts 600 s; refreshed a minute early.
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// How often the client refreshes each channel binding: a minute before
/// [`CHANNEL_LIFETIME`] runs out.
pub const CHANNEL_REFRESH: Duration = Duration::from_secs(540);
/// RFC 8656 section 12: the channel numbers a client may bind.
pub const CHANNEL_MIN: u16 = 0x4000;
/// The highest channel number a client may bind; numbers from 0x5000 up are reserved.
pub const CHANNEL_MAX: u16 = 0x4fff;
/// The most application bytes one datagram may carry through the relay: what a ChannelData
/// length field (16 bits) and a Send indication's DATA within a 16-bit STUN length both hold.
pub const MAX_DATA: usize = 65_535 - 64;

/// How the client reaches the server (RFC 8656 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Datagrams: requests are retransmitted, ChannelData is not padded.
    Udp,
    /// TCP or TLS: no retransmissions (the stream is reliable), ChannelData padded to 4.
    Stream,
}

/// How a [`Client`] reaches and authenticates to its TURN server, and its timers;
/// [`TurnConfig::new`] fills in the recommended ones.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// The TURN server; input from anywhere else is ignored.
    pub server: SocketAddr,
    /// The long-term credential's username (RFC 8489 section 9.2), sent in USERNAME.
    pub username: String,
    /// The long-term credential's password; never sent, only keys MESSAGE-INTEGRITY through
    /// MD5(username ":" realm ":" password).
    pub password: String,
    /// UDP, or a TCP/TLS stream the driver frames; decides retransmission and ChannelData padding.
    pub transport: Transport,
    /// The driver's socket (or stream) number the transmits name.
    pub socket: usize,
    /// RFC 8489 section 6.2.1 initial retransmission timeout (500 ms recommended).
    pub rto: Duration,
    /// RFC 8489 section 6.2.1 Rc: sends per request over UDP (7 recommended).
    pub max_transmits: u32,
    /// The LIFETIME to ask for; `None` takes the server's default (600 s for coturn).
    pub lifetime: Option<Duration>,
    /// A SOFTWARE attribute for requests.
    pub software: Option<String>,
    /// Seeds the transaction IDs.
    pub seed: u64,
    /// Over UDP, a STUN Binding indication to the server this often while allocated, so
    /// that our NAT keeps the binding toward the server between Refreshes (a Refresh comes
    /// only every few minutes, and NATs forget idle UDP bindings after 30 s or more); the
    /// keep-alive ICE uses, RFC 8445 section 11. `None`: none.
    pub keepalive: Option<Duration>,
}

impl TurnConfig {
    /// UDP to `server`, RFC 8489's recommended timers, the server's default lifetime.
    pub fn new(server: SocketAddr, username: &str, password: &str, seed: u64) -> TurnConfig {
        TurnConfig {
            server,
            username: username.to_string(),
            password: password.to_string(),
            transport: Transport::Udp,
            socket: 0,
            rto: Duration::from_millis(500),
            max_transmits: 7,
            lifetime: None,
            software: None,
            seed,
            keepalive: None,
        }
    }
}

/// What the client tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The allocation exists: peers reach us at `relayed`; the server saw us at `mapped`.
    Allocated {
        /// The relayed transport address (XOR-RELAYED-ADDRESS, RFC 8656 section 18.5).
        relayed: SocketAddr,
        /// Our server-reflexive address (XOR-MAPPED-ADDRESS), when the server included it.
        mapped: Option<SocketAddr>,
        /// The lifetime the server granted (LIFETIME, RFC 8656 section 18.2); 600 s, the
        /// default of RFC 8656 section 7, when the answer carried none.
        lifetime: Duration,
    },
    /// A Refresh succeeded; the allocation lives `lifetime` from now.
    Refreshed {
        /// The lifetime the server granted (LIFETIME, RFC 8656 section 18.2); the one asked
        /// for when the answer carried none.
        lifetime: Duration,
    },
    /// The permission toward `peer` is installed (said once per peer).
    PermissionCreated {
        /// The peer's IP address; permissions ignore the port (RFC 8656 section 9).
        peer: IpAddr,
    },
    /// The server refused or never answered a CreatePermission; data to `peer` is dropped.
    PermissionFailed {
        /// The peer's IP address the permission was for.
        peer: IpAddr,
        /// Why: the server's error response, or no answer.
        error: TurnError,
    },
    /// `channel` is bound to `peer`: data to it now goes as ChannelData (said once).
    ChannelBound {
        /// The peer's transport address; a channel is bound to IP and port.
        peer: SocketAddr,
        /// The channel number, [`CHANNEL_MIN`] to [`CHANNEL_MAX`] (CHANNEL-NUMBER, RFC 8656
        /// section 18.1).
        channel: u16,
    },
    /// The ChannelBind failed; data to `peer` keeps going in Send indications.
    ChannelBindFailed {
        /// The peer's transport address the channel was for.
        peer: SocketAddr,
        /// Why: the server's error response, or no answer.
        error: TurnError,
    },
    /// `peer` sent `bytes` to our relayed address.
    Data {
        /// The peer's transport address, as the server reported it (XOR-PEER-ADDRESS of a
        /// Data indication, or the peer bound to the ChannelData's channel).
        peer: SocketAddr,
        /// The application data the peer sent, without TURN framing or padding.
        bytes: Vec<u8>,
    },
    /// The allocation is lost or was never made; the client is done.
    Failed(TurnError),
    /// [`Client::close`] finished (the server freed the allocation, or did not answer).
    Closed,
}

/// Why [`Client::send_to`] did not send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The allocation does not exist yet, or is closing, closed or lost.
    #[error("no TURN allocation yet (or any more)")]
    NotAllocated,
    /// The data is longer than [`MAX_DATA`]; carries its length in bytes.
    #[error("{0} bytes do not fit one relayed datagram (at most {MAX_DATA})")]
    TooLarge(usize),
    /// The peer is IPv4 and the relayed address IPv6 or the other way round: a relayed
    /// address reaches only peers of its own family (a server would answer 443 Peer Address
    /// Family Mismatch, RFC 8656 section 19).
    #[error("the peer's address family differs from the relayed address's")]
    FamilyMismatch,
}

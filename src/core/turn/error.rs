//! What can go wrong with a TURN allocation, in terms a user can act on.

use std::net::SocketAddr;
use thiserror::Error;

/// Why a TURN request failed. The client reports these in [`super::Event::Failed`] (the
/// allocation is lost), [`super::Event::PermissionFailed`] and
/// [`super::Event::ChannelBindFailed`] (the allocation stays).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TurnError {
    /// RFC 8489 section 9.2.5: a 401 to a request that carried our credentials.
    #[error("the TURN server refused user {username:?} in realm {realm:?} (401 Unauthorized after authenticating): check the relay's username and password")]
    Unauthorized {
        /// The username our long-term credentials were made with (RFC 8489 section 9.2).
        username: String,
        /// The REALM (RFC 8489 section 14.9) of the server's challenge; empty if unknown.
        realm: String,
    },
    /// RFC 8656 section 19: 441, the credentials differ from the allocation's.
    #[error("the TURN server says the credentials differ from those the allocation was made with (441 Wrong Credentials); use one username and password per allocation")]
    WrongCredentials,
    /// 403: the server's policy forbids the request (a peer address it will not relay to,
    /// typically).
    #[error("the TURN server forbids this request (403 Forbidden: {reason}); the peer address may be one the relay refuses to relay to")]
    Forbidden {
        /// The reason phrase of the server's ERROR-CODE (RFC 8489 section 14.8).
        reason: String,
    },
    /// 437: no allocation for our 5-tuple (it expired or was freed), or an Allocate that
    /// clashes with an existing one.
    #[error("the TURN server has no matching allocation (437 Allocation Mismatch); it expired or another client holds this address and port")]
    AllocationMismatch,
    /// 442: the server does not relay UDP.
    #[error("the TURN server does not relay UDP (442 Unsupported Transport Protocol)")]
    UnsupportedTransport,
    /// 443: the peer's address family is not the relayed address's.
    #[error("the peer's address family differs from the relayed address's (443 Peer Address Family Mismatch)")]
    PeerFamilyMismatch,
    /// 486: this user holds as many allocations as the server allows.
    #[error("the TURN server's allocation quota for this user is used up (486 Allocation Quota Reached); free other allocations or wait for them to expire")]
    AllocationQuota,
    /// 508: the server is out of relay ports or memory.
    #[error("the TURN server has no capacity for another allocation (508 Insufficient Capacity); try again later or another relay")]
    InsufficientCapacity,
    /// 300: the server redirects to another one.
    #[error("the TURN server redirects to {} (300 Try Alternate); use that relay", alternate.map_or("another server".to_string(), |a| a.to_string()))]
    TryAlternate {
        /// The server's ALTERNATE-SERVER (RFC 8489 section 14.15), when it sent a usable one.
        alternate: Option<SocketAddr>,
    },
    /// Any other error response.
    #[error("the TURN server refused the {request} request ({code} {reason})")]
    Refused {
        /// The TURN method refused: `Allocate`, `Refresh`, `CreatePermission` or `ChannelBind`.
        request: &'static str,
        /// The ERROR-CODE number (RFC 8489 section 14.8), e.g. 400 or 500.
        code: u16,
        /// The ERROR-CODE reason phrase, as the server wrote it.
        reason: String,
    },
    /// The server kept answering 438 Stale Nonce to fresh nonces.
    #[error("the TURN server answered 438 Stale Nonce {0} times in a row to fresh nonces; it is misbehaving")]
    StaleNonceLoop(u32),
    /// No answer to a request within the RFC 8489 section 6.2.1 retransmission schedule.
    #[error("no answer from the TURN server to the {request} request within {waited_ms} ms: the relay is down or unreachable (is UDP to it blocked?)")]
    Timeout {
        /// The TURN method that got no answer, e.g. `Allocate`.
        request: &'static str,
        /// Milliseconds from the first transmission until the client gave up.
        waited_ms: u64,
    },
    /// An answer this client cannot use.
    #[error("the TURN server's answer to the {request} request is unusable: {reason}")]
    BadResponse {
        /// The TURN method whose answer was unusable, e.g. `Allocate`.
        request: &'static str,
        /// What was wrong with it, e.g. `401 without REALM and NONCE`.
        reason: &'static str,
    },
    /// The allocation's lifetime ran out before a Refresh succeeded.
    #[error("the TURN allocation expired before it could be refreshed")]
    Expired,
}

impl TurnError {
    /// The typed error for an error response `code` to `request`.
    pub(super) fn from_response(
        request: &'static str,
        code: u16,
        reason: &str,
        alternate: Option<SocketAddr>,
    ) -> TurnError {
        match code {
            300 => TurnError::TryAlternate { alternate },
            403 => TurnError::Forbidden {
                reason: reason.to_string(),
            },
            437 => TurnError::AllocationMismatch,
            441 => TurnError::WrongCredentials,
            442 => TurnError::UnsupportedTransport,
            443 => TurnError::PeerFamilyMismatch,
            486 => TurnError::AllocationQuota,
            508 => TurnError::InsufficientCapacity,
            _ => TurnError::Refused {
                request,
                code,
                reason: reason.to_string(),
            },
        }
    }
}

//! STUN wire format: RFC 8489 messages plus the RFC 5780 and RFC 3489 attributes that NAT
//! behaviour discovery needs.
//!
//! Modelled on smoltcp's `wire` module: [`Message::parse`] checks every length once, after
//! which the accessors cannot panic or read past the buffer. [`Encoder`] writes messages
//! into a caller-owned `Vec<u8>` so that a server can reuse one buffer per thread.

mod attr;
mod channel_data;
mod credentials;
mod message;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod turn_tests;

pub use attr::{attr_type, Attribute, ErrorCode, UnknownList};
pub use channel_data::{frame_len, ChannelData, ChannelDataError, CHANNEL_DATA_HEADER_LEN};
pub use credentials::{long_term_key, long_term_key_sha256};
pub use message::{AttrIter, Encoder, Message, RawAttr};

use thiserror::Error;

/// RFC 8489 section 5: the fixed value that tells an RFC 5389/8489 message from an RFC 3489 one.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// RFC 8489 section 14.7: XORed into the CRC-32 of a FINGERPRINT.
pub const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// Every STUN message starts with this fixed-size header.
pub const HEADER_LEN: usize = 20;

/// STUN methods this crate understands: Binding (RFC 8489) and TURN's (RFC 8656 section
/// 17). Anything else is carried as `Other` so a server can answer it with an error instead
/// of dropping it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Binding (RFC 8489 section 3): asks for the reflexive transport address; also the only
    /// method RFC 5780 behaviour discovery uses.
    Binding,
    /// Allocate (RFC 8656 section 7): creates a relayed transport address on a TURN server.
    Allocate,
    /// Refresh (RFC 8656 section 8): extends an allocation's lifetime, or with LIFETIME 0
    /// deletes it.
    Refresh,
    /// Indications only (RFC 8656 section 11).
    Send,
    /// Indications only.
    Data,
    /// CreatePermission (RFC 8656 section 10): installs or refreshes permissions for peer IP
    /// addresses.
    CreatePermission,
    /// ChannelBind (RFC 8656 section 12): binds a channel number to a peer's transport address
    /// so data can travel as ChannelData.
    ChannelBind,
    /// Any other method, holding its 12-bit code.
    Other(u16),
}

impl Method {
    /// The 12-bit method code of the wire format (0x001 for Binding, 0x003 to 0x009 for TURN);
    /// for `Other` the low 12 bits of the held value.
    pub fn code(self) -> u16 {
        match self {
            Method::Binding => 0x001,
            Method::Allocate => 0x003,
            Method::Refresh => 0x004,
            Method::Send => 0x006,
            Method::Data => 0x007,
            Method::CreatePermission => 0x008,
            Method::ChannelBind => 0x009,
            Method::Other(c) => c & 0x0fff,
        }
    }
    /// The method with 12-bit code `code`; higher bits are ignored, and codes this crate does
    /// not know become `Other`.
    pub fn from_code(code: u16) -> Self {
        match code & 0x0fff {
            0x001 => Method::Binding,
            0x003 => Method::Allocate,
            0x004 => Method::Refresh,
            0x006 => Method::Send,
            0x007 => Method::Data,
            0x008 => Method::CreatePermission,
            0x009 => Method::ChannelBind,
            c => Method::Other(c),
        }
    }
}

/// RFC 8489 section 5: the two class bits interleaved into the message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// A request, answered by a success or an error response.
    Request,
    /// An indication, which gets no response.
    Indication,
    /// A success response.
    Success,
    /// An error response, which carries ERROR-CODE.
    Error,
}

/// The message type of a STUN header (RFC 8489 section 5): a method and a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType {
    /// What the message asks for or answers.
    pub method: Method,
    /// Request, indication, success or error response.
    pub class: Class,
}

impl MessageType {
    /// A Binding request, type field 0x0001.
    pub const BINDING_REQUEST: MessageType = MessageType {
        method: Method::Binding,
        class: Class::Request,
    };
    /// A Binding success response, type field 0x0101.
    pub const BINDING_SUCCESS: MessageType = MessageType {
        method: Method::Binding,
        class: Class::Success,
    };
    /// A Binding error response, type field 0x0111.
    pub const BINDING_ERROR: MessageType = MessageType {
        method: Method::Binding,
        class: Class::Error,
    };

    /// The 14-bit type field: method bits M0-M11 with the class bits C0 (bit 4) and C1
    /// (bit 8) interleaved, per RFC 8489 figure 3.
    pub fn to_u16(self) -> u16 {
        let m = self.method.code();
        let c: u16 = match self.class {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        };
        (m & 0x000f) | ((m & 0x0070) << 1) | ((m & 0x0f80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
    }

    /// Splits a type field into method and class; the inverse of [`to_u16`](Self::to_u16).
    /// The two most significant bits, zero in every STUN message, are ignored.
    pub fn from_u16(v: u16) -> Self {
        let m = (v & 0x000f) | ((v >> 1) & 0x0070) | ((v >> 2) & 0x0f80);
        let c = ((v >> 4) & 1) | ((v >> 7) & 2);
        let class = match c {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };
        MessageType {
            method: Method::from_code(m),
            class,
        }
    }
}

/// The 16 bytes after type and length. For RFC 8489 messages the first four are the magic
/// cookie and the rest the 96-bit transaction ID; RFC 3489 used all 128 bits as the ID.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 16]);

impl TransactionId {
    /// A new RFC 8489 transaction ID: the cookie plus 96 bits from `rng` (section 6 asks
    /// for them to be uniformly random). The caller chooses the generator: a seeded one in
    /// the state machines, so a seed reproduces a run.
    pub fn random(rng: &mut impl rand::Rng) -> Self {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        rng.fill(&mut b[4..]);
        TransactionId(b)
    }
    /// An RFC 3489 (cookie-less) transaction ID, as classic clients send.
    pub fn new_rfc3489(bytes: [u8; 16]) -> Self {
        TransactionId(bytes)
    }
    /// Whether the first four bytes are not the magic cookie, that is whether the message comes
    /// from a classic RFC 3489 agent (RFC 8489 section 5).
    pub fn is_rfc3489(&self) -> bool {
        self.0[..4] != MAGIC_COOKIE.to_be_bytes()
    }
}

impl std::fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::core::hex::encode(&self.0))
    }
}

/// Why bytes could not be read as a STUN message. Every variant is a property of the input,
/// never of the program state: a parser that returns one of these has not panicked.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Fewer bytes than the 20-byte header; holds the length.
    #[error("shorter than the 20-byte STUN header ({0} bytes)")]
    TooShort(usize),
    /// The two most significant bits are not zero (RFC 8489 section 5), so this is not STUN;
    /// ChannelData, for one, starts with 0b01.
    #[error("the two most significant bits are not zero, so this is not STUN")]
    NotStun,
    /// The header's length field does not match the bytes after the header.
    #[error("header length {declared} does not match the {actual} bytes after the header")]
    LengthMismatch {
        /// The message length from the header, in bytes after the header.
        declared: usize,
        /// Bytes actually present after the header.
        actual: usize,
    },
    /// The header's length field is not a multiple of 4, as every STUN message length is
    /// (RFC 8489 section 5); holds the field.
    #[error("message length {0} is not a multiple of 4")]
    UnalignedLength(usize),
    /// An attribute's header or padded value runs past the end of the message.
    #[error("attribute 0x{typ:04x} runs past the end of the message")]
    AttributeOverrun {
        /// The attribute's type; 0 when not even its 4-byte header fits.
        typ: u16,
    },
    /// An attribute breaks the rules for its type: a wrong value length or content, or an
    /// attribute after FINGERPRINT.
    #[error("attribute 0x{typ:04x} is malformed: {reason}")]
    BadAttribute {
        /// The attribute's type (see [`attr_type`]).
        typ: u16,
        /// What is wrong with it, for logs and error messages.
        reason: &'static str,
    },
    /// FINGERPRINT is present but does not match the CRC of the message (RFC 8489 section 14.7).
    #[error("FINGERPRINT does not match the message")]
    BadFingerprint,
}

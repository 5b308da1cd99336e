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
    Binding,
    Allocate,
    Refresh,
    /// Indications only (RFC 8656 section 11).
    Send,
    /// Indications only.
    Data,
    CreatePermission,
    ChannelBind,
    Other(u16),
}

impl Method {
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
    Request,
    Indication,
    Success,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType {
    pub method: Method,
    pub class: Class,
}

impl MessageType {
    pub const BINDING_REQUEST: MessageType = MessageType {
        method: Method::Binding,
        class: Class::Request,
    };
    pub const BINDING_SUCCESS: MessageType = MessageType {
        method: Method::Binding,
        class: Class::Success,
    };
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
    #[error("shorter than the 20-byte STUN header ({0} bytes)")]
    TooShort(usize),
    #[error("the two most significant bits are not zero, so this is not STUN")]
    NotStun,
    #[error("header length {declared} does not match the {actual} bytes after the header")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("message length {0} is not a multiple of 4")]
    UnalignedLength(usize),
    #[error("attribute 0x{typ:04x} runs past the end of the message")]
    AttributeOverrun { typ: u16 },
    #[error("attribute 0x{typ:04x} is malformed: {reason}")]
    BadAttribute { typ: u16, reason: &'static str },
    #[error("FINGERPRINT does not match the message")]
    BadFingerprint,
}

//! A length-checked view of a STUN message and an encoder that writes one.

use super::attr::{attr_type, Attribute};
use super::{MessageType, ParseError, TransactionId, FINGERPRINT_XOR, HEADER_LEN};
use hmac::{Hmac, Mac};

/// A STUN message whose header and attribute framing have been checked. Accessors index
/// only ranges that [`Message::parse`] proved to be inside the buffer.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    buf: &'a [u8],
}

/// One attribute as it sits in the message: its type, its value (declared length, padding
/// excluded) and where its TLV header starts.
#[derive(Debug, Clone, Copy)]
pub struct RawAttr<'a> {
    /// The attribute type code (see [`attr_type`]).
    pub typ: u16,
    /// The value: exactly the declared length, without padding.
    pub value: &'a [u8],
    /// Where the TLV header starts, in bytes from the start of the message.
    pub offset: usize,
}

impl<'a> RawAttr<'a> {
    /// Decodes the value into a typed [`Attribute`]; `tid` is the message's transaction ID, which
    /// the XOR-encoded addresses need.
    pub fn decode(&self, tid: &TransactionId) -> Result<Attribute<'a>, ParseError> {
        Attribute::decode(self.typ, self.value, tid)
    }
}

/// Iterates the attributes of a checked message; it cannot fail.
#[derive(Clone)]
pub struct AttrIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = RawAttr<'a>;
    fn next(&mut self) -> Option<RawAttr<'a>> {
        let hdr = self.buf.get(self.pos..self.pos + 4)?;
        let typ = u16::from_be_bytes([hdr[0], hdr[1]]);
        let len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
        let value = self.buf.get(self.pos + 4..self.pos + 4 + len)?;
        let offset = self.pos;
        self.pos += 4 + padded(len);
        Some(RawAttr { typ, value, offset })
    }
}

fn padded(len: usize) -> usize {
    (len + 3) & !3
}

impl<'a> Message<'a> {
    /// How many bytes the message starting at `buf` occupies, from its header alone; used to
    /// frame STUN over TCP (RFC 8489 section 6.2.2). `None` until 4 bytes are there or when
    /// the first bits say it is not STUN.
    pub fn frame_len(buf: &[u8]) -> Option<usize> {
        if buf.len() < 4 || buf[0] & 0xc0 != 0 {
            return None;
        }
        Some(HEADER_LEN + usize::from(u16::from_be_bytes([buf[2], buf[3]])))
    }

    /// Checks the header, that the attributes tile the body exactly, and the FINGERPRINT if
    /// one is present. Does not decode attribute values.
    pub fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        if buf.len() < HEADER_LEN {
            return Err(ParseError::TooShort(buf.len()));
        }
        if buf[0] & 0xc0 != 0 {
            return Err(ParseError::NotStun);
        }
        let declared = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if declared % 4 != 0 {
            return Err(ParseError::UnalignedLength(declared));
        }
        if declared != buf.len() - HEADER_LEN {
            return Err(ParseError::LengthMismatch {
                declared,
                actual: buf.len() - HEADER_LEN,
            });
        }
        let mut pos = HEADER_LEN;
        let mut fingerprint_at = None;
        while pos < buf.len() {
            if buf.len() - pos < 4 {
                return Err(ParseError::AttributeOverrun { typ: 0 });
            }
            let typ = u16::from_be_bytes([buf[pos], buf[pos + 1]]);
            let len = usize::from(u16::from_be_bytes([buf[pos + 2], buf[pos + 3]]));
            if padded(len) > buf.len() - pos - 4 {
                return Err(ParseError::AttributeOverrun { typ });
            }
            if fingerprint_at.is_some() {
                // RFC 8489 section 14.7: FINGERPRINT is the last attribute.
                return Err(ParseError::BadAttribute {
                    typ,
                    reason: "attribute after FINGERPRINT",
                });
            }
            if typ == attr_type::FINGERPRINT {
                // Checked here so that the CRC comparison below reads exactly the value (a
                // shorter one would let padding stand in for CRC bytes; a zero-length one at
                // the very end would put the read past the buffer).
                if len != 4 {
                    return Err(ParseError::BadAttribute {
                        typ,
                        reason: "FINGERPRINT must be 4 bytes",
                    });
                }
                fingerprint_at = Some(pos);
            }
            pos += 4 + padded(len);
        }
        let msg = Message { buf };
        if let Some(at) = fingerprint_at {
            // The loop proved the FINGERPRINT value is 4 bytes inside `buf` and is the last
            // attribute, so `at + 8 == buf.len()`.
            let want = u32::from_be_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
            if buf.len() != at + 8 || fingerprint_of(&buf[..at]) != want {
                return Err(ParseError::BadFingerprint);
            }
        }
        Ok(msg)
    }

    /// The whole message as parsed, header included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Method and class from the header's type field.
    pub fn message_type(&self) -> MessageType {
        MessageType::from_u16(u16::from_be_bytes([self.buf[0], self.buf[1]]))
    }

    /// The 16 bytes after type and length: magic cookie and transaction ID, or an RFC 3489 ID.
    pub fn transaction_id(&self) -> TransactionId {
        let mut t = [0u8; 16];
        t.copy_from_slice(&self.buf[4..20]);
        TransactionId(t)
    }

    /// The attributes in message order, undecoded.
    pub fn attributes(&self) -> AttrIter<'a> {
        AttrIter {
            buf: self.buf,
            pos: HEADER_LEN,
        }
    }

    /// The first attribute of type `typ`, decoded. `None` if absent; `Some(Err)` if present
    /// but malformed.
    pub fn get(&self, typ: u16) -> Option<Result<Attribute<'a>, ParseError>> {
        let tid = self.transaction_id();
        self.attributes()
            .find(|a| a.typ == typ)
            .map(|a| a.decode(&tid))
    }

    /// The address the server saw: XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from servers that
    /// only speak RFC 3489.
    pub fn mapped_address(&self) -> Option<std::net::SocketAddr> {
        match self.get(attr_type::XOR_MAPPED_ADDRESS) {
            Some(Ok(Attribute::XorMappedAddress(a))) => Some(a),
            _ => match self.get(attr_type::MAPPED_ADDRESS) {
                Some(Ok(Attribute::MappedAddress(a))) => Some(a),
                _ => None,
            },
        }
    }

    /// Comprehension-required attributes a server does not know (RFC 8489 section 6.3.1.1),
    /// for a 420 response.
    pub fn unknown_required(&self) -> impl Iterator<Item = u16> + 'a {
        self.attributes()
            .map(|a| a.typ)
            .filter(|&t| attr_type::is_comprehension_required(t) && !attr_type::is_known(t))
    }

    /// RFC 8489 section 14.5: HMAC-SHA1 over the message up to MESSAGE-INTEGRITY with the
    /// header length set as if it were the last attribute.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        let Some(a) = self
            .attributes()
            .find(|a| a.typ == attr_type::MESSAGE_INTEGRITY)
        else {
            return false;
        };
        let mut mac = match Hmac::<sha1::Sha1>::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => return false,
        };
        feed_prefix(&mut mac, self.buf, a.offset, a.offset + 4 + a.value.len());
        mac.verify_slice(a.value).is_ok()
    }

    /// RFC 8489 section 14.6, HMAC-SHA256 possibly truncated.
    pub fn verify_integrity_sha256(&self, key: &[u8]) -> bool {
        let Some(a) = self
            .attributes()
            .find(|a| a.typ == attr_type::MESSAGE_INTEGRITY_SHA256)
        else {
            return false;
        };
        // RFC 8489 section 14.6: the tag is 16 to 32 bytes and a multiple of 4. Checking only
        // that it is a prefix of the HMAC would accept a 1-byte tag, a 1-in-256 forgery.
        let n = a.value.len();
        if !(16..=32).contains(&n) || n % 4 != 0 {
            return false;
        }
        let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => return false,
        };
        feed_prefix(&mut mac, self.buf, a.offset, a.offset + 4 + a.value.len());
        mac.verify_truncated_left(a.value).is_ok()
    }
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tid = self.transaction_id();
        let mut l = f.debug_struct("Message");
        l.field("type", &self.message_type()).field("tid", &tid);
        for a in self.attributes() {
            l.field("attr", &a.decode(&tid));
        }
        l.finish()
    }
}

/// Feeds `buf[..upto]` into a MAC with the header length rewritten to `end - 20`.
fn feed_prefix<M: Mac>(mac: &mut M, buf: &[u8], upto: usize, end: usize) {
    let len = (end - HEADER_LEN) as u16;
    mac.update(&buf[..2]);
    mac.update(&len.to_be_bytes());
    mac.update(&buf[4..upto]);
}

fn fingerprint_of(prefix: &[u8]) -> u32 {
    // The prefix's header already carries the length including FINGERPRINT (the encoder and
    // sender set it before computing), so the CRC is over the bytes as they are.
    crc32fast::hash(prefix) ^ FINGERPRINT_XOR
}

/// Writes one STUN message at the end of a caller-owned buffer, keeping the header length
/// current after every attribute so integrity and fingerprint can be computed in place.
pub struct Encoder<'b> {
    out: &'b mut Vec<u8>,
    start: usize,
    tid: TransactionId,
}

impl<'b> Encoder<'b> {
    /// Starts a message of type `typ` with transaction ID `tid` by appending its 20-byte header
    /// to `out`; what `out` already holds is left alone.
    pub fn new(out: &'b mut Vec<u8>, typ: MessageType, tid: TransactionId) -> Self {
        let start = out.len();
        out.extend_from_slice(&typ.to_u16().to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&tid.0);
        Encoder { out, start, tid }
    }

    fn set_len(&mut self) {
        let len = (self.out.len() - self.start - HEADER_LEN) as u16;
        self.out[self.start + 2..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Appends an attribute with zero padding to a 4-byte boundary.
    pub fn push(&mut self, attr: &Attribute<'_>) -> &mut Self {
        let hdr = self.out.len();
        self.out.extend_from_slice(&attr.typ().to_be_bytes());
        self.out.extend_from_slice(&[0, 0]);
        attr.encode_value(self.out, &self.tid);
        let vlen = self.out.len() - hdr - 4;
        self.out[hdr + 2..hdr + 4].copy_from_slice(&(vlen as u16).to_be_bytes());
        self.out.resize(hdr + 4 + padded(vlen), 0);
        self.set_len();
        self
    }

    fn push_mac(&mut self, typ: u16, tag_len: usize, compute: impl FnOnce(&[u8]) -> Vec<u8>) {
        let hdr = self.out.len();
        self.out.extend_from_slice(&typ.to_be_bytes());
        self.out.extend_from_slice(&(tag_len as u16).to_be_bytes());
        self.out.resize(hdr + 4 + tag_len, 0);
        self.set_len();
        let tag = compute(&self.out[self.start..hdr]);
        self.out[hdr + 4..hdr + 4 + tag_len].copy_from_slice(&tag[..tag_len]);
    }

    /// RFC 8489 section 14.5 MESSAGE-INTEGRITY keyed with `key`.
    pub fn message_integrity(&mut self, key: &[u8]) -> &mut Self {
        self.push_mac(attr_type::MESSAGE_INTEGRITY, 20, |prefix| {
            // HMAC accepts keys of any length.
            let mut mac =
                Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(prefix);
            mac.finalize().into_bytes().to_vec()
        });
        self
    }

    /// RFC 8489 section 14.6 MESSAGE-INTEGRITY-SHA256 (full 32 bytes).
    pub fn message_integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        self.push_mac(attr_type::MESSAGE_INTEGRITY_SHA256, 32, |prefix| {
            let mut mac =
                Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(prefix);
            mac.finalize().into_bytes().to_vec()
        });
        self
    }

    /// RFC 8489 section 14.7: must be the last attribute.
    pub fn fingerprint(&mut self) -> &mut Self {
        let hdr = self.out.len();
        self.out
            .extend_from_slice(&attr_type::FINGERPRINT.to_be_bytes());
        self.out.extend_from_slice(&4u16.to_be_bytes());
        self.out.extend_from_slice(&[0; 4]);
        self.set_len();
        let crc = fingerprint_of(&self.out[self.start..hdr]);
        self.out[hdr + 4..hdr + 8].copy_from_slice(&crc.to_be_bytes());
        self
    }

    /// Length of the message written so far.
    pub fn len(&self) -> usize {
        self.out.len() - self.start
    }

    /// Always false: [`new`](Self::new) writes the 20-byte header at once. It pairs with
    /// [`len`](Self::len).
    pub fn is_empty(&self) -> bool {
        false
    }
}

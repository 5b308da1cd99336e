//! Typed STUN attributes: decoding from a checked TLV value and encoding back.

use super::{ParseError, TransactionId, MAGIC_COOKIE};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Attribute type codes (RFC 8489 section 18.3, RFC 5780 section 7, RFC 3489 section 11.2).
pub mod attr_type {
    /// MAPPED-ADDRESS (RFC 8489 section 14.1): the reflexive transport address in the clear;
    /// servers send it only for backwards compatibility with RFC 3489 clients.
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// RFC 3489 only; deliberately not honoured (it lets anyone reflect traffic at a victim).
    pub const RESPONSE_ADDRESS: u16 = 0x0002;
    /// CHANGE-REQUEST (RFC 5780 section 7.2, first RFC 3489 section 11.2.4): asks the server to
    /// answer from its other IP and/or port.
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// SOURCE-ADDRESS (RFC 3489 section 11.2.5): the endpoint a response left from; the RFC 3489
    /// form of RESPONSE-ORIGIN.
    pub const SOURCE_ADDRESS: u16 = 0x0004;
    /// CHANGED-ADDRESS (RFC 3489 section 11.2.3): the server's alternate endpoint; the RFC 3489
    /// form of OTHER-ADDRESS.
    pub const CHANGED_ADDRESS: u16 = 0x0005;
    /// USERNAME (RFC 8489 section 14.3): names the credentials a message-integrity check uses.
    pub const USERNAME: u16 = 0x0006;
    /// PASSWORD (RFC 3489 section 11.2.7): obsolete since RFC 5389; recognised (see
    /// [`is_known`]) so a request carrying it is not refused with 420, and otherwise ignored.
    pub const PASSWORD: u16 = 0x0007;
    /// MESSAGE-INTEGRITY (RFC 8489 section 14.5): 20-byte HMAC-SHA1 over the message up to the
    /// attribute before it.
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE (RFC 8489 section 14.8): the code (300 to 699) and reason phrase of an error
    /// response.
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES (RFC 8489 section 14.13): in a 420 response, the comprehension-required
    /// types the server did not understand.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000a;
    /// REFLECTED-FROM (RFC 3489 section 11.2.11): obsolete companion of RESPONSE-ADDRESS, never
    /// sent since RESPONSE-ADDRESS is not honoured; recognised (see [`is_known`]) and ignored.
    pub const REFLECTED_FROM: u16 = 0x000b;
    /// RFC 8656 section 18: TURN's attributes (comprehension-required below 0x8000).
    pub const CHANNEL_NUMBER: u16 = 0x000c;
    /// LIFETIME (RFC 8656 section 18.2): the allocation's lifetime in seconds.
    pub const LIFETIME: u16 = 0x000d;
    /// XOR-PEER-ADDRESS (RFC 8656 section 18.3): a peer's transport address, XORed in the same
    /// way as XOR-MAPPED-ADDRESS.
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA (RFC 8656 section 18.4): the application payload of a Send or Data indication.
    pub const DATA: u16 = 0x0013;
    /// REALM (RFC 8489 section 14.9): the realm of the long-term credentials a server asks for.
    pub const REALM: u16 = 0x0014;
    /// NONCE (RFC 8489 section 14.10): the server's nonce, which the client returns in its
    /// authenticated requests.
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS (RFC 8656 section 18.5): the relayed transport address a TURN server
    /// allocated.
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 section 18.6): the address family (IPv4 or IPv6) the
    /// client wants its relayed address in.
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    /// EVEN-PORT (RFC 8656 section 18.7): asks for an even relayed port, optionally reserving
    /// the next one.
    pub const EVEN_PORT: u16 = 0x0018;
    /// REQUESTED-TRANSPORT (RFC 8656 section 18.8): the IP protocol of the relayed transport
    /// address (17 for UDP).
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// DONT-FRAGMENT (RFC 8656 section 18.9): asks the relay to set DF on datagrams it sends to
    /// peers; it has no value.
    pub const DONT_FRAGMENT: u16 = 0x001a;
    /// MESSAGE-INTEGRITY-SHA256 (RFC 8489 section 14.6): HMAC-SHA256 over the message, 16 to 32
    /// bytes.
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001c;
    /// RFC 8489 section 18.3: negotiated password hashing (kept as raw values).
    pub const PASSWORD_ALGORITHM: u16 = 0x001d;
    /// USERHASH (RFC 8489 section 14.4): SHA-256 of username and realm, sent instead of USERNAME
    /// for username anonymity (kept as a raw value).
    pub const USERHASH: u16 = 0x001e;
    /// XOR-MAPPED-ADDRESS (RFC 8489 section 14.2): the reflexive transport address XORed with
    /// the magic cookie (and the transaction ID for IPv6), so NAT ALGs do not rewrite it.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// RESERVATION-TOKEN (RFC 8656 section 18.10): the 8-byte token that claims a relayed port
    /// an earlier EVEN-PORT reserved.
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    /// PADDING (RFC 5780 section 7.6): filler that makes a message large, to test
    /// fragmentation; a punchraw server pads its answer at most to the request's size.
    pub const PADDING: u16 = 0x0026;
    /// RESPONSE-PORT (RFC 5780 section 7.5): the port, at the requester's own IP, that the
    /// answer should go to.
    pub const RESPONSE_PORT: u16 = 0x0027;
    /// RFC 8656 section 18 (comprehension-optional, kept as raw values).
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    /// ADDRESS-ERROR-CODE (RFC 8656 section 18.12): why one address family of a dual-stack
    /// allocation could not be served.
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    /// PASSWORD-ALGORITHMS (RFC 8489 section 14.11): the password hashing algorithms a server
    /// offers.
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    /// ICMP (RFC 8656 section 18.13): the type and code of an ICMP packet a TURN server passes
    /// on in a Data indication.
    pub const ICMP: u16 = 0x8004;
    /// SOFTWARE (RFC 8489 section 14.14): a description of the sender's software, informational
    /// only.
    pub const SOFTWARE: u16 = 0x8022;
    /// ALTERNATE-SERVER (RFC 8489 section 14.15): where a 300 (Try Alternate) response sends
    /// the client instead.
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    /// FINGERPRINT (RFC 8489 section 14.7): CRC-32 of the message XOR 0x5354554e, always last;
    /// tells STUN apart from other protocols sharing a port.
    pub const FINGERPRINT: u16 = 0x8028;
    /// RESPONSE-ORIGIN (RFC 5780 section 7.3): the server endpoint a response left from.
    pub const RESPONSE_ORIGIN: u16 = 0x802b;
    /// OTHER-ADDRESS (RFC 5780 section 7.4): the server's alternate IP and port, where a
    /// client sends its behaviour tests.
    pub const OTHER_ADDRESS: u16 = 0x802c;
    /// punchraw's own, comprehension-optional (RFC 8489 section 18.3 leaves 0xC000-0xFFFF to
    /// private use), request side: over TCP, "after answering, open a TCP connection to my
    /// source address from your other IP and/or port" (the flags of CHANGE-REQUEST). It is the
    /// TCP counterpart of RFC 5780's filtering test: the SYN it sends is unsolicited at the
    /// NAT, and whether it gets through is the NAT's TCP filtering (RFC 5382 section 4.3).
    /// Servers that do not know it ignore it, as RFC 8489 section 14 requires.
    pub const CONNECT_BACK: u16 = 0xc0b0;
    /// Response side of [`CONNECT_BACK`]: the endpoint the server will send the SYN from.
    /// Present only when the server will really send it.
    pub const CONNECT_BACK_ORIGIN: u16 = 0xc0b1;

    /// RFC 8489 section 14: types below 0x8000 must be understood or the request rejected
    /// with 420.
    pub fn is_comprehension_required(t: u16) -> bool {
        t < 0x8000
    }

    /// The comprehension-required attributes a punchraw server knows how to treat.
    pub fn is_known(t: u16) -> bool {
        matches!(
            t,
            MAPPED_ADDRESS
                | RESPONSE_ADDRESS
                | CHANGE_REQUEST
                | SOURCE_ADDRESS
                | CHANGED_ADDRESS
                | USERNAME
                | PASSWORD
                | MESSAGE_INTEGRITY
                | ERROR_CODE
                | UNKNOWN_ATTRIBUTES
                | REFLECTED_FROM
                | REALM
                | NONCE
                | MESSAGE_INTEGRITY_SHA256
                | XOR_MAPPED_ADDRESS
                | PADDING
                | RESPONSE_PORT
        )
    }
}

/// RFC 8489 section 14.8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorCode<'a> {
    /// 300..=699
    pub code: u16,
    /// Reason phrase: advisory UTF-8 text for people, fewer than 128 characters.
    pub reason: &'a str,
}

/// A decoded attribute. Values borrow from the message; nothing is allocated to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute<'a> {
    /// MAPPED-ADDRESS (RFC 8489 section 14.1): the reflexive address in the clear.
    MappedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS (RFC 8489 section 14.2), held un-XORed: the reflexive address the
    /// server saw.
    XorMappedAddress(SocketAddr),
    /// RFC 5780 section 7.2: ask the server to answer from its other IP and/or port.
    ChangeRequest {
        /// Answer from the alternate IP (flag 0x04).
        change_ip: bool,
        /// Answer from the alternate port (flag 0x02).
        change_port: bool,
    },
    /// RESPONSE-ORIGIN (RFC 5780 section 7.3): the server endpoint the response left from.
    ResponseOrigin(SocketAddr),
    /// OTHER-ADDRESS (RFC 5780 section 7.4): the server's alternate IP and port.
    OtherAddress(SocketAddr),
    /// punchraw's CONNECT-BACK ([`attr_type::CONNECT_BACK`]): same layout as CHANGE-REQUEST.
    ConnectBack {
        /// Send the SYN from the server's alternate IP (flag 0x04).
        change_ip: bool,
        /// Send the SYN from the server's alternate port (flag 0x02).
        change_port: bool,
    },
    /// punchraw's CONNECT-BACK-ORIGIN ([`attr_type::CONNECT_BACK_ORIGIN`]).
    ConnectBackOrigin(SocketAddr),
    /// RFC 5780 section 7.5: answer to this port at the requester's IP.
    ResponsePort(u16),
    /// RFC 5780 section 7.6: makes a response as large as this attribute's request.
    Padding(&'a [u8]),
    /// CHANGED-ADDRESS (RFC 3489 section 11.2.3): the RFC 3489 form of OTHER-ADDRESS.
    ChangedAddress(SocketAddr),
    /// SOURCE-ADDRESS (RFC 3489 section 11.2.5): the RFC 3489 form of RESPONSE-ORIGIN.
    SourceAddress(SocketAddr),
    /// RESPONSE-ADDRESS (RFC 3489 section 11.2.2): decoded so it can be recognised, never
    /// honoured (see [`attr_type::RESPONSE_ADDRESS`]).
    ResponseAddress(SocketAddr),
    /// USERNAME (RFC 8489 section 14.3): raw bytes, fewer than 509.
    Username(&'a [u8]),
    /// SOFTWARE (RFC 8489 section 14.14): the sender's description of its software.
    Software(&'a str),
    /// ERROR-CODE (RFC 8489 section 14.8): code and reason phrase of an error response.
    ErrorCode(ErrorCode<'a>),
    /// UNKNOWN-ATTRIBUTES (RFC 8489 section 14.13): the types a 420 response lists.
    UnknownAttributes(UnknownList<'a>),
    /// MESSAGE-INTEGRITY (RFC 8489 section 14.5): the 20-byte HMAC-SHA1 as received; decoding
    /// does not verify it.
    MessageIntegrity(&'a [u8]),
    /// MESSAGE-INTEGRITY-SHA256 (RFC 8489 section 14.6): the HMAC-SHA256 (16 to 32 bytes) as
    /// received; decoding does not verify it.
    MessageIntegritySha256(&'a [u8]),
    /// FINGERPRINT (RFC 8489 section 14.7): the CRC value as received; `Message::parse` checks
    /// it against the message.
    Fingerprint(u32),
    /// RFC 8489 section 14.9: UTF-8, fewer than 128 characters.
    Realm(&'a str),
    /// RFC 8489 section 14.10: opaque to the client, fewer than 128 characters.
    Nonce(&'a [u8]),
    /// RFC 8656 section 18.1: the channel (0x4000-0x4FFF are valid; the codec keeps any).
    ChannelNumber(u16),
    /// RFC 8656 section 18.2: seconds the allocation lives (0 frees it).
    Lifetime(u32),
    /// RFC 8656 section 18.3: the peer's transport address, XORed as XOR-MAPPED-ADDRESS.
    XorPeerAddress(SocketAddr),
    /// RFC 8656 section 18.4: the application bytes of a Send or Data indication.
    Data(&'a [u8]),
    /// RFC 8656 section 18.5: the relayed transport address the server allocated.
    XorRelayedAddress(SocketAddr),
    /// RFC 8656 section 18.6: the family byte (0x01 IPv4, 0x02 IPv6; others kept).
    RequestedAddressFamily(u8),
    /// RFC 8656 section 18.7: the R bit asks the server to reserve port + 1 as well.
    EvenPort {
        /// The R bit: also reserve the next higher port, for a later allocation to claim.
        reserve: bool,
    },
    /// RFC 8656 section 18.8: the IP protocol number of the relayed transport (17: UDP).
    RequestedTransport(u8),
    /// RFC 8656 section 18.9: set DF on the relayed IPv4 datagrams; no value.
    DontFragment,
    /// RFC 8656 section 18.10: the token that claims a port an EVEN-PORT reserved.
    ReservationToken([u8; 8]),
    /// Anything else: its type and raw value.
    Other {
        /// The type code, one this decoder has no typed variant for.
        typ: u16,
        /// The value as received, without the TLV header or padding.
        value: &'a [u8],
    },
}

/// The UNKNOWN-ATTRIBUTES value: a list of 16-bit types, kept as bytes so decoding does not
/// allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownList<'a>(pub &'a [u8]);

impl<'a> UnknownList<'a> {
    /// The listed attribute types, in message order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + 'a {
        self.0
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
    }
}

fn bad(typ: u16, reason: &'static str) -> ParseError {
    ParseError::BadAttribute { typ, reason }
}

/// RFC 8489 section 14.1: reserved byte, family, port, 4 or 16 address bytes.
fn decode_address(typ: u16, v: &[u8]) -> Result<SocketAddr, ParseError> {
    if v.len() < 4 {
        return Err(bad(typ, "address shorter than 4 bytes"));
    }
    let port = u16::from_be_bytes([v[2], v[3]]);
    match (v[1], v.len()) {
        (0x01, 8) => {
            let ip = Ipv4Addr::new(v[4], v[5], v[6], v[7]);
            Ok(SocketAddr::new(IpAddr::V4(ip), port))
        }
        (0x02, 20) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&v[4..20]);
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        (0x01, _) | (0x02, _) => Err(bad(typ, "address length does not match its family")),
        _ => Err(bad(typ, "unknown address family")),
    }
}

/// RFC 5780 section 7.2: the "change IP" (0x04) and "change port" (0x02) bits of the last
/// byte; the other bits are zero and ignored.
fn change_flags(typ: u16, v: &[u8]) -> Result<(bool, bool), ParseError> {
    if v.len() != 4 {
        return Err(bad(
            typ,
            if typ == attr_type::CHANGE_REQUEST {
                "CHANGE-REQUEST must be 4 bytes"
            } else {
                "CONNECT-BACK must be 4 bytes"
            },
        ));
    }
    Ok((v[3] & 0x04 != 0, v[3] & 0x02 != 0))
}

/// A value that must be exactly 4 bytes.
fn four(typ: u16, v: &[u8], reason: &'static str) -> Result<[u8; 4], ParseError> {
    v.try_into().map_err(|_| bad(typ, reason))
}

/// RFC 8489 section 14.2: port XOR the cookie's top half, address XOR cookie (+ ID for IPv6).
fn xor_address(addr: SocketAddr, tid: &TransactionId) -> SocketAddr {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    match addr.ip() {
        IpAddr::V4(ip) => {
            let mut o = ip.octets();
            for (b, k) in o.iter_mut().zip(cookie) {
                *b ^= k;
            }
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port)
        }
        IpAddr::V6(ip) => {
            let mut o = ip.octets();
            // The cookie followed by the 96-bit transaction ID; tid.0 holds exactly that for
            // RFC 8489 messages.
            for (b, k) in o.iter_mut().zip(tid.0) {
                *b ^= k;
            }
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port)
        }
    }
}

impl<'a> Attribute<'a> {
    /// The attribute type code this value is encoded under (see [`attr_type`]).
    pub fn typ(&self) -> u16 {
        use attr_type::*;
        match self {
            Attribute::MappedAddress(_) => MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => XOR_MAPPED_ADDRESS,
            Attribute::ChangeRequest { .. } => CHANGE_REQUEST,
            Attribute::ResponseOrigin(_) => RESPONSE_ORIGIN,
            Attribute::OtherAddress(_) => OTHER_ADDRESS,
            Attribute::ConnectBack { .. } => CONNECT_BACK,
            Attribute::ConnectBackOrigin(_) => CONNECT_BACK_ORIGIN,
            Attribute::ResponsePort(_) => RESPONSE_PORT,
            Attribute::Padding(_) => PADDING,
            Attribute::ChangedAddress(_) => CHANGED_ADDRESS,
            Attribute::SourceAddress(_) => SOURCE_ADDRESS,
            Attribute::ResponseAddress(_) => RESPONSE_ADDRESS,
            Attribute::Username(_) => USERNAME,
            Attribute::Software(_) => SOFTWARE,
            Attribute::ErrorCode(_) => ERROR_CODE,
            Attribute::UnknownAttributes(_) => UNKNOWN_ATTRIBUTES,
            Attribute::MessageIntegrity(_) => MESSAGE_INTEGRITY,
            Attribute::MessageIntegritySha256(_) => MESSAGE_INTEGRITY_SHA256,
            Attribute::Fingerprint(_) => FINGERPRINT,
            Attribute::Realm(_) => REALM,
            Attribute::Nonce(_) => NONCE,
            Attribute::ChannelNumber(_) => CHANNEL_NUMBER,
            Attribute::Lifetime(_) => LIFETIME,
            Attribute::XorPeerAddress(_) => XOR_PEER_ADDRESS,
            Attribute::Data(_) => DATA,
            Attribute::XorRelayedAddress(_) => XOR_RELAYED_ADDRESS,
            Attribute::RequestedAddressFamily(_) => REQUESTED_ADDRESS_FAMILY,
            Attribute::EvenPort { .. } => EVEN_PORT,
            Attribute::RequestedTransport(_) => REQUESTED_TRANSPORT,
            Attribute::DontFragment => DONT_FRAGMENT,
            Attribute::ReservationToken(_) => RESERVATION_TOKEN,
            Attribute::Other { typ, .. } => *typ,
        }
    }

    /// Decodes one attribute value. `value` is exactly the attribute's declared length.
    pub fn decode(typ: u16, value: &'a [u8], tid: &TransactionId) -> Result<Self, ParseError> {
        use attr_type::*;
        let v = value;
        Ok(match typ {
            MAPPED_ADDRESS => Attribute::MappedAddress(decode_address(typ, v)?),
            XOR_MAPPED_ADDRESS => {
                Attribute::XorMappedAddress(xor_address(decode_address(typ, v)?, tid))
            }
            RESPONSE_ORIGIN => Attribute::ResponseOrigin(decode_address(typ, v)?),
            OTHER_ADDRESS => Attribute::OtherAddress(decode_address(typ, v)?),
            CHANGED_ADDRESS => Attribute::ChangedAddress(decode_address(typ, v)?),
            SOURCE_ADDRESS => Attribute::SourceAddress(decode_address(typ, v)?),
            RESPONSE_ADDRESS => Attribute::ResponseAddress(decode_address(typ, v)?),
            CHANGE_REQUEST => {
                let (change_ip, change_port) = change_flags(typ, v)?;
                Attribute::ChangeRequest {
                    change_ip,
                    change_port,
                }
            }
            CONNECT_BACK => {
                let (change_ip, change_port) = change_flags(typ, v)?;
                Attribute::ConnectBack {
                    change_ip,
                    change_port,
                }
            }
            CONNECT_BACK_ORIGIN => Attribute::ConnectBackOrigin(decode_address(typ, v)?),
            RESPONSE_PORT => {
                if v.len() != 4 {
                    return Err(bad(typ, "RESPONSE-PORT must be 4 bytes"));
                }
                Attribute::ResponsePort(u16::from_be_bytes([v[0], v[1]]))
            }
            PADDING => Attribute::Padding(v),
            USERNAME => {
                // RFC 8489 section 14.3: fewer than 509 bytes.
                if v.len() > 508 {
                    return Err(bad(typ, "USERNAME longer than 508 bytes"));
                }
                Attribute::Username(v)
            }
            SOFTWARE => {
                if v.len() > 763 {
                    return Err(bad(typ, "SOFTWARE longer than 763 bytes"));
                }
                Attribute::Software(
                    std::str::from_utf8(v).map_err(|_| bad(typ, "SOFTWARE is not UTF-8"))?,
                )
            }
            ERROR_CODE => {
                if v.len() < 4 || v.len() > 4 + 763 {
                    return Err(bad(typ, "ERROR-CODE length out of range"));
                }
                let class = u16::from(v[2] & 0x07);
                let number = u16::from(v[3]);
                if !(3..=6).contains(&class) || number > 99 {
                    return Err(bad(typ, "ERROR-CODE outside 300..699"));
                }
                let reason = std::str::from_utf8(&v[4..])
                    .map_err(|_| bad(typ, "reason phrase is not UTF-8"))?;
                Attribute::ErrorCode(ErrorCode {
                    code: class * 100 + number,
                    reason,
                })
            }
            UNKNOWN_ATTRIBUTES => {
                if v.len() % 2 != 0 {
                    return Err(bad(typ, "UNKNOWN-ATTRIBUTES length is odd"));
                }
                Attribute::UnknownAttributes(UnknownList(v))
            }
            MESSAGE_INTEGRITY => {
                if v.len() != 20 {
                    return Err(bad(typ, "MESSAGE-INTEGRITY must be 20 bytes"));
                }
                Attribute::MessageIntegrity(v)
            }
            MESSAGE_INTEGRITY_SHA256 => {
                // RFC 8489 section 14.6: truncated to at least 16 bytes, a multiple of 4.
                if v.len() < 16 || v.len() > 32 || v.len() % 4 != 0 {
                    return Err(bad(
                        typ,
                        "MESSAGE-INTEGRITY-SHA256 must be 16..32 bytes, multiple of 4",
                    ));
                }
                Attribute::MessageIntegritySha256(v)
            }
            FINGERPRINT => {
                if v.len() != 4 {
                    return Err(bad(typ, "FINGERPRINT must be 4 bytes"));
                }
                Attribute::Fingerprint(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
            }
            REALM => {
                // RFC 8489 section 14.9: fewer than 128 characters, at most 763 bytes.
                if v.len() > 763 {
                    return Err(bad(typ, "REALM longer than 763 bytes"));
                }
                Attribute::Realm(
                    std::str::from_utf8(v).map_err(|_| bad(typ, "REALM is not UTF-8"))?,
                )
            }
            NONCE => {
                if v.len() > 763 {
                    return Err(bad(typ, "NONCE longer than 763 bytes"));
                }
                Attribute::Nonce(v)
            }
            CHANNEL_NUMBER => {
                let [hi, lo, ..] = four(typ, v, "CHANNEL-NUMBER must be 4 bytes")?;
                Attribute::ChannelNumber(u16::from_be_bytes([hi, lo]))
            }
            LIFETIME => Attribute::Lifetime(u32::from_be_bytes(four(
                typ,
                v,
                "LIFETIME must be 4 bytes",
            )?)),
            XOR_PEER_ADDRESS => {
                Attribute::XorPeerAddress(xor_address(decode_address(typ, v)?, tid))
            }
            XOR_RELAYED_ADDRESS => {
                Attribute::XorRelayedAddress(xor_address(decode_address(typ, v)?, tid))
            }
            DATA => Attribute::Data(v),
            REQUESTED_ADDRESS_FAMILY => Attribute::RequestedAddressFamily(
                four(typ, v, "REQUESTED-ADDRESS-FAMILY must be 4 bytes")?[0],
            ),
            REQUESTED_TRANSPORT => Attribute::RequestedTransport(
                four(typ, v, "REQUESTED-TRANSPORT must be 4 bytes")?[0],
            ),
            EVEN_PORT => match v {
                [b] => Attribute::EvenPort {
                    reserve: b & 0x80 != 0,
                },
                _ => return Err(bad(typ, "EVEN-PORT must be 1 byte")),
            },
            DONT_FRAGMENT => {
                if !v.is_empty() {
                    return Err(bad(typ, "DONT-FRAGMENT must be empty"));
                }
                Attribute::DontFragment
            }
            RESERVATION_TOKEN => Attribute::ReservationToken(
                v.try_into()
                    .map_err(|_| bad(typ, "RESERVATION-TOKEN must be 8 bytes"))?,
            ),
            _ => Attribute::Other { typ, value: v },
        })
    }

    /// Appends the attribute's value (without TLV header or padding) to `out`.
    pub(crate) fn encode_value(&self, out: &mut Vec<u8>, tid: &TransactionId) {
        fn addr(out: &mut Vec<u8>, a: SocketAddr) {
            out.push(0);
            match a.ip() {
                IpAddr::V4(ip) => {
                    out.push(0x01);
                    out.extend_from_slice(&a.port().to_be_bytes());
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(0x02);
                    out.extend_from_slice(&a.port().to_be_bytes());
                    out.extend_from_slice(&ip.octets());
                }
            }
        }
        match self {
            Attribute::MappedAddress(a)
            | Attribute::ResponseOrigin(a)
            | Attribute::OtherAddress(a)
            | Attribute::ConnectBackOrigin(a)
            | Attribute::ChangedAddress(a)
            | Attribute::SourceAddress(a)
            | Attribute::ResponseAddress(a) => addr(out, *a),
            Attribute::XorMappedAddress(a)
            | Attribute::XorPeerAddress(a)
            | Attribute::XorRelayedAddress(a) => addr(out, xor_address(*a, tid)),
            Attribute::ChangeRequest {
                change_ip,
                change_port,
            }
            | Attribute::ConnectBack {
                change_ip,
                change_port,
            } => {
                let flags = (u8::from(*change_ip) << 2) | (u8::from(*change_port) << 1);
                out.extend_from_slice(&[0, 0, 0, flags]);
            }
            Attribute::ResponsePort(p) => {
                out.extend_from_slice(&p.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            Attribute::Padding(v)
            | Attribute::Username(v)
            | Attribute::MessageIntegrity(v)
            | Attribute::MessageIntegritySha256(v)
            | Attribute::Nonce(v)
            | Attribute::Data(v)
            | Attribute::Other { value: v, .. } => out.extend_from_slice(v),
            Attribute::Realm(s) => out.extend_from_slice(s.as_bytes()),
            Attribute::ChannelNumber(c) => {
                out.extend_from_slice(&c.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            Attribute::Lifetime(l) => out.extend_from_slice(&l.to_be_bytes()),
            Attribute::RequestedAddressFamily(b) | Attribute::RequestedTransport(b) => {
                out.extend_from_slice(&[*b, 0, 0, 0]);
            }
            Attribute::EvenPort { reserve } => out.push(u8::from(*reserve) << 7),
            Attribute::DontFragment => {}
            Attribute::ReservationToken(t) => out.extend_from_slice(t),
            Attribute::UnknownAttributes(l) => out.extend_from_slice(l.0),
            Attribute::Software(s) => out.extend_from_slice(s.as_bytes()),
            Attribute::ErrorCode(e) => {
                out.extend_from_slice(&[0, 0, ((e.code / 100) & 0x07) as u8, (e.code % 100) as u8]);
                out.extend_from_slice(e.reason.as_bytes());
            }
            Attribute::Fingerprint(f) => out.extend_from_slice(&f.to_be_bytes()),
        }
    }
}

//! PCP (RFC 6887) messages: MAP (section 11) and ANNOUNCE (section 14.1), requests and
//! answers. Addresses travel as 16 bytes; an IPv4 address as IPv4-mapped IPv6 (section 5).
//! The decoder takes any bytes and never panics; it applies the client's checks of section
//! 8.3 (length, R bit), leaves options unread (we send none, and an answer's options only
//! add to a result we act on anyway) and hands a NAT-PMP answer to the caller as `None`
//! (version negotiation, section 9, is the client machine's business).

use super::natpmp::{be16, be32};
use super::Protocol;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The PCP version we send (RFC 6887 section 9); an answer of version 0 is NAT-PMP's, which shares
/// the server port.
pub const VERSION: u8 = 2;
const OP_ANNOUNCE: u8 = 0;
const OP_MAP: u8 = 1;
const R_BIT: u8 = 0x80;
const HEADER: usize = 24;
const MAP_BODY: usize = 36;
/// Section 8.3: a message longer than this is dropped.
const MAX_LEN: usize = 1100;

/// Result codes of RFC 6887 section 7.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCode {
    /// SUCCESS (0).
    Success,
    /// UNSUPP_VERSION (1): the server does not speak our version; the answer's `version` is the
    /// one it does (section 9).
    UnsuppVersion,
    /// NOT_AUTHORIZED (2): the server's policy refuses this operation for this client.
    NotAuthorized,
    /// MALFORMED_REQUEST (3): the server could not parse the request.
    MalformedRequest,
    /// UNSUPP_OPCODE (4): the server does not know the opcode.
    UnsuppOpcode,
    /// UNSUPP_OPTION (5): a mandatory-to-process option the server does not know.
    UnsuppOption,
    /// MALFORMED_OPTION (6): an option the server could not parse.
    MalformedOption,
    /// NETWORK_FAILURE (7): the server or the NAT it controls has a network problem, such as no
    /// external address yet; short-lived.
    NetworkFailure,
    /// NO_RESOURCES (8): the server cannot create more mappings now; short-lived.
    NoResources,
    /// UNSUPP_PROTOCOL (9): the server does not map this transport protocol.
    UnsuppProtocol,
    /// USER_EX_QUOTA (10): the mapping would exceed this subscriber's port quota.
    UserExQuota,
    /// CANNOT_PROVIDE_EXTERNAL (11): the suggested external port or address cannot be given (only
    /// with the PREFER_FAILURE option, which we do not send).
    CannotProvideExternal,
    /// ADDRESS_MISMATCH (12): the request's source address differs from its client address field,
    /// because another NAT sits between the client and the server.
    AddressMismatch,
    /// EXCESSIVE_REMOTE_PEERS (13): the server could not create the filters of a FILTER option.
    ExcessiveRemotePeers,
    /// A result code RFC 6887 does not define, as received.
    Other(u8),
}

impl ResultCode {
    /// The result code of a wire value (RFC 6887 section 7.4); unknown values become
    /// [`ResultCode::Other`].
    pub fn from_u8(v: u8) -> Self {
        use ResultCode::*;
        match v {
            0 => Success,
            1 => UnsuppVersion,
            2 => NotAuthorized,
            3 => MalformedRequest,
            4 => UnsuppOpcode,
            5 => UnsuppOption,
            6 => MalformedOption,
            7 => NetworkFailure,
            8 => NoResources,
            9 => UnsuppProtocol,
            10 => UserExQuota,
            11 => CannotProvideExternal,
            12 => AddressMismatch,
            13 => ExcessiveRemotePeers,
            n => Other(n),
        }
    }

    /// The wire value of this result code (RFC 6887 section 7.4).
    pub fn to_u8(self) -> u8 {
        use ResultCode::*;
        match self {
            Success => 0,
            UnsuppVersion => 1,
            NotAuthorized => 2,
            MalformedRequest => 3,
            UnsuppOpcode => 4,
            UnsuppOption => 5,
            MalformedOption => 6,
            NetworkFailure => 7,
            NoResources => 8,
            UnsuppProtocol => 9,
            UserExQuota => 10,
            CannotProvideExternal => 11,
            AddressMismatch => 12,
            ExcessiveRemotePeers => 13,
            Other(n) => n,
        }
    }

    /// The words a user reads in a reason; the RFC's name first, for searching.
    pub fn describe(self) -> String {
        use ResultCode::*;
        match self {
            Success => "SUCCESS".into(),
            UnsuppVersion => "UNSUPP_VERSION".into(),
            NotAuthorized => "NOT_AUTHORIZED (port mapping is refused for this host)".into(),
            MalformedRequest => "MALFORMED_REQUEST".into(),
            UnsuppOpcode => "UNSUPP_OPCODE (the router does not do MAP)".into(),
            UnsuppOption => "UNSUPP_OPTION".into(),
            MalformedOption => "MALFORMED_OPTION".into(),
            NetworkFailure => "NETWORK_FAILURE (the router has no external address)".into(),
            NoResources => "NO_RESOURCES (the router is out of ports or mappings)".into(),
            UnsuppProtocol => "UNSUPP_PROTOCOL".into(),
            UserExQuota => "USER_EX_QUOTA (too many mappings for this host)".into(),
            CannotProvideExternal => "CANNOT_PROVIDE_EXTERNAL (the port asked for is taken)".into(),
            AddressMismatch => {
                "ADDRESS_MISMATCH (a NAT between us and the router changed our address)".into()
            }
            ExcessiveRemotePeers => "EXCESSIVE_REMOTE_PEERS".into(),
            Other(n) => format!("result code {n}"),
        }
    }
}

/// The MAP fields, the same in a request and an answer (section 11.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    /// Ties an answer to its request, and a renewal or a delete to the mapping (11.2).
    pub nonce: [u8; 12],
    /// The transport to map, carried as its IANA protocol number.
    pub protocol: Protocol,
    /// Our port that the mapping forwards to, on the request's client address.
    pub internal_port: u16,
    /// Suggested in a request (0: any), assigned in an answer.
    pub external_port: u16,
    /// Suggested in a request (unspecified: any), assigned in an answer.
    pub external_ip: IpAddr,
}

/// A PCP opcode with its opcode-specific fields (RFC 6887 section 7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opcode {
    /// ANNOUNCE (opcode 0, section 14.1): no fields. Sent unsolicited by a server that lost its
    /// state, so that clients renew their mappings.
    Announce,
    /// MAP (opcode 1, section 11): create, renew or delete an inbound mapping.
    Map(Map),
}

/// A request (section 7.1). `lifetime_s` 0 on a MAP deletes the mapping (section 15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Requested lifetime of the mapping, in seconds; 0 deletes it.
    pub lifetime_s: u32,
    /// Our own address as we send from it; a NAT between us and the server that changes
    /// it makes the server answer ADDRESS_MISMATCH (section 8.1).
    pub client: IpAddr,
    /// The opcode and its fields.
    pub op: Opcode,
}

/// An answer (section 7.2); also sent unsolicited (ANNOUNCE after a restart, MAP after a
/// change of the external address: section 14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The server's version: on UNSUPP_VERSION, the highest it supports (section 9).
    pub version: u8,
    /// The result code (section 7.4).
    pub result: ResultCode,
    /// Granted lifetime on success; on an error, how long the error will last.
    pub lifetime_s: u32,
    /// The server's Epoch Time in seconds (section 8.5): one smaller than elapsed time says the
    /// server lost its mappings.
    pub epoch: u32,
    /// `None` for an opcode we do not know, or for an error answer too short for its
    /// opcode's fields (a server that cannot parse a request may echo only the header).
    pub op: Option<Opcode>,
    /// The opcode field without the R bit, kept also when `op` is `None`.
    pub opcode: u8,
}

/// An address as PCP's 16-byte field carries it: IPv6 as is, IPv4 as an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`, section 5).
pub fn addr_to_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The inverse of [`addr_to_bytes`]: an IPv4-mapped IPv6 address becomes IPv4, anything else stays
/// IPv6.
pub fn addr_from_bytes(b: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The "any address" of a suggestion, in the family of `like` (section 11.1).
pub fn unspecified_like(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

fn encode_map(b: &mut Vec<u8>, m: &Map) {
    b.extend_from_slice(&m.nonce);
    b.push(m.protocol.iana());
    b.extend_from_slice(&[0, 0, 0]);
    b.extend_from_slice(&m.internal_port.to_be_bytes());
    b.extend_from_slice(&m.external_port.to_be_bytes());
    b.extend_from_slice(&addr_to_bytes(m.external_ip));
}

fn decode_map(b: &[u8]) -> Option<Map> {
    let body = b.get(..MAP_BODY)?;
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&body[..12]);
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&body[20..36]);
    Some(Map {
        nonce,
        protocol: Protocol::from_iana(body[12])?,
        internal_port: be16(body, 16)?,
        external_port: be16(body, 18)?,
        external_ip: addr_from_bytes(ip),
    })
}

fn opcode_of(op: &Opcode) -> u8 {
    match op {
        Opcode::Announce => OP_ANNOUNCE,
        Opcode::Map(_) => OP_MAP,
    }
}

impl Request {
    /// The request as sent to the server: the 24-byte header of section 7.1, plus the MAP body of
    /// section 11.1 for a MAP.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + MAP_BODY);
        b.push(VERSION);
        b.push(opcode_of(&self.op));
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.lifetime_s.to_be_bytes());
        b.extend_from_slice(&addr_to_bytes(self.client));
        if let Opcode::Map(m) = &self.op {
            encode_map(&mut b, m);
        }
        b
    }

    /// For tests and fuzzing: what a server reads.
    pub fn decode(b: &[u8]) -> Option<Request> {
        if b.len() < HEADER || b.len() > MAX_LEN || b.len() % 4 != 0 || b[0] != VERSION {
            return None;
        }
        if b[1] & R_BIT != 0 {
            return None;
        }
        let mut client = [0u8; 16];
        client.copy_from_slice(&b[8..24]);
        let op = match b[1] {
            OP_ANNOUNCE => Opcode::Announce,
            OP_MAP => Opcode::Map(decode_map(&b[HEADER..])?),
            _ => return None,
        };
        Some(Request {
            lifetime_s: be32(b, 4)?,
            client: addr_from_bytes(client),
            op,
        })
    }
}

impl Response {
    /// Any bytes in, never a panic. `None` for what is not a PCP answer, a NAT-PMP answer
    /// (version 0) included.
    pub fn decode(b: &[u8]) -> Option<Response> {
        if b.len() < HEADER || b.len() > MAX_LEN || b.len() % 4 != 0 {
            return None;
        }
        let version = b[0];
        if version == super::natpmp::VERSION || b[1] & R_BIT == 0 {
            return None;
        }
        let opcode = b[1] & !R_BIT;
        let result = ResultCode::from_u8(b[3]);
        let op = match opcode {
            OP_ANNOUNCE => Some(Opcode::Announce),
            OP_MAP => decode_map(&b[HEADER..]).map(Opcode::Map),
            _ => None,
        };
        // A success must carry its opcode's fields; an error may echo only the header.
        if result == ResultCode::Success && op.is_none() {
            return None;
        }
        Some(Response {
            version,
            result,
            lifetime_s: be32(b, 4)?,
            epoch: be32(b, 8)?,
            op,
            opcode,
        })
    }

    /// For tests and the lab's fake servers.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + MAP_BODY);
        b.push(self.version);
        b.push(R_BIT | self.opcode);
        b.push(0);
        b.push(self.result.to_u8());
        b.extend_from_slice(&self.lifetime_s.to_be_bytes());
        b.extend_from_slice(&self.epoch.to_be_bytes());
        b.extend_from_slice(&[0; 12]);
        if let Some(Opcode::Map(m)) = &self.op {
            encode_map(&mut b, m);
        }
        b
    }
}

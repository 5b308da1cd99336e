//! NAT-PMP (RFC 6886) messages: the external-address request (opcode 0) and the UDP/TCP
//! mapping requests (opcodes 1 and 2), and the gateway's answers to both. The decoder takes
//! any bytes and never panics; it checks only what the RFC makes the client check
//! (section 3.5: version 0, the opcode of an answer is 128 + the request's).

use super::Protocol;
use std::net::Ipv4Addr;

/// The NAT-PMP version (RFC 6886 section 3.2); PCP is version 2 on the same port.
pub const VERSION: u8 = 0;
/// Gateways listen here (RFC 6886 section 3.1), PCP servers too (RFC 6887 section 19.1).
pub const SERVER_PORT: u16 = 5351;
/// Unsolicited announcements go to 224.0.0.1 on this port (RFC 6886 section 3.2.1).
pub const CLIENT_PORT: u16 = 5350;

const OP_EXTERNAL: u8 = 0;
const OP_MAP_UDP: u8 = 1;
const OP_MAP_TCP: u8 = 2;
const OP_REPLY: u8 = 128;

/// Result codes of RFC 6886 section 3.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCode {
    /// Success (0).
    Success,
    /// Unsupported Version (1): the gateway does not speak version 0, or not this one; a PCP
    /// server may answer NAT-PMP this way.
    UnsupportedVersion,
    /// "Not Authorized/Refused": the box supports mapping but the user turned it off.
    NotAuthorized,
    /// The gateway has no external address (no DHCP lease yet, say).
    NetworkFailure,
    /// No free port, or no more mappings for this client.
    OutOfResources,
    /// Unsupported Opcode (5).
    UnsupportedOpcode,
    /// A result code RFC 6886 does not define, as received.
    Other(u16),
}

impl ResultCode {
    /// The result code of a wire value (RFC 6886 section 3.5); unknown values become
    /// [`ResultCode::Other`].
    pub fn from_u16(v: u16) -> Self {
        match v {
            0 => Self::Success,
            1 => Self::UnsupportedVersion,
            2 => Self::NotAuthorized,
            3 => Self::NetworkFailure,
            4 => Self::OutOfResources,
            5 => Self::UnsupportedOpcode,
            n => Self::Other(n),
        }
    }

    /// The wire value of this result code (RFC 6886 section 3.5).
    pub fn to_u16(self) -> u16 {
        match self {
            Self::Success => 0,
            Self::UnsupportedVersion => 1,
            Self::NotAuthorized => 2,
            Self::NetworkFailure => 3,
            Self::OutOfResources => 4,
            Self::UnsupportedOpcode => 5,
            Self::Other(n) => n,
        }
    }

    /// The words a user reads in a reason.
    pub fn describe(self) -> String {
        match self {
            Self::Success => "success".into(),
            Self::UnsupportedVersion => "unsupported version".into(),
            Self::NotAuthorized => {
                "not authorized (port mapping is switched off on the router)".into()
            }
            Self::NetworkFailure => "network failure (the router has no external address)".into(),
            Self::OutOfResources => "out of resources (no free port or too many mappings)".into(),
            Self::UnsupportedOpcode => "unsupported opcode".into(),
            Self::Other(n) => format!("result code {n}"),
        }
    }
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Ask for the gateway's external IPv4 address (opcode 0, section 3.2).
    ExternalAddress,
    /// `lifetime_s` 0 with `suggested_external` 0 deletes the mapping (section 3.4).
    Map {
        /// UDP (opcode 1) or TCP (opcode 2).
        protocol: Protocol,
        /// Our port that the mapping forwards to.
        internal_port: u16,
        /// The external port we would like; 0 leaves it to the gateway.
        suggested_external: u16,
        /// Requested lifetime in seconds (RFC 6886 section 3.3 recommends 7200); 0 deletes.
        lifetime_s: u32,
    },
}

impl Request {
    /// The request as sent to the gateway: 2 bytes for the external-address request, 12 for a
    /// mapping request (section 3.3).
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Request::ExternalAddress => vec![VERSION, OP_EXTERNAL],
            Request::Map {
                protocol,
                internal_port,
                suggested_external,
                lifetime_s,
            } => {
                let mut b = Vec::with_capacity(12);
                b.push(VERSION);
                b.push(map_opcode(protocol));
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&internal_port.to_be_bytes());
                b.extend_from_slice(&suggested_external.to_be_bytes());
                b.extend_from_slice(&lifetime_s.to_be_bytes());
                b
            }
        }
    }

    /// For tests and fuzzing: the request `encode` made, or `None`.
    pub fn decode(b: &[u8]) -> Option<Request> {
        match (b.first()?, b.get(1)?) {
            (0, 0) if b.len() == 2 => Some(Request::ExternalAddress),
            (0, op @ (1 | 2)) if b.len() == 12 => Some(Request::Map {
                protocol: if *op == OP_MAP_UDP {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                },
                internal_port: be16(b, 4)?,
                suggested_external: be16(b, 6)?,
                lifetime_s: be32(b, 8)?,
            }),
            _ => None,
        }
    }
}

fn map_opcode(p: Protocol) -> u8 {
    match p {
        Protocol::Udp => OP_MAP_UDP,
        Protocol::Tcp => OP_MAP_TCP,
    }
}

/// A gateway's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Also sent unsolicited to 224.0.0.1:5350 when the external address changes or the
    /// gateway restarts (section 3.2.1).
    ExternalAddress {
        /// The gateway's result code (section 3.5).
        result: ResultCode,
        /// Seconds since the gateway started or lost its mappings (section 3.6).
        epoch: u32,
        /// Meaningless unless `result` is success.
        external: Ipv4Addr,
    },
    /// The answer to a mapping request or a delete (opcode 128 + 1 or 2, section 3.3).
    Map {
        /// UDP or TCP, from the answer's opcode.
        protocol: Protocol,
        /// The gateway's result code (section 3.5).
        result: ResultCode,
        /// Seconds since the gateway started or lost its mappings (section 3.6).
        epoch: u32,
        /// Our port that the mapping forwards to.
        internal_port: u16,
        /// The external port granted, which may differ from the one suggested.
        external_port: u16,
        /// Granted lifetime in seconds; 0 in the answer to a delete.
        lifetime_s: u32,
    },
    /// An error answer too short to carry the opcode's fields: section 3.5 lets a gateway
    /// answer a request it cannot parse (a PCP request, say) with only the first 8 bytes.
    Error {
        /// The request's opcode the answer is for (the answer's opcode minus 128).
        opcode: u8,
        /// The gateway's result code (section 3.5); never success.
        result: ResultCode,
        /// Seconds since the gateway started or lost its mappings (section 3.6).
        epoch: u32,
    },
}

impl Response {
    /// The answer's epoch, seconds since the gateway started or lost its mappings (section 3.6),
    /// whichever the kind of answer.
    pub fn epoch(&self) -> u32 {
        match self {
            Response::ExternalAddress { epoch, .. }
            | Response::Map { epoch, .. }
            | Response::Error { epoch, .. } => *epoch,
        }
    }

    /// The answer's result code, whichever the kind of answer.
    pub fn result(&self) -> ResultCode {
        match self {
            Response::ExternalAddress { result, .. }
            | Response::Map { result, .. }
            | Response::Error { result, .. } => *result,
        }
    }

    /// Any bytes in, never a panic. Longer datagrams than the opcode needs are accepted
    /// (section 3.5 leaves room for future fields), shorter ones only as errors.
    pub fn decode(b: &[u8]) -> Option<Response> {
        if *b.first()? != VERSION {
            return None;
        }
        let op = *b.get(1)?;
        if op < OP_REPLY {
            return None;
        }
        let result = ResultCode::from_u16(be16(b, 2)?);
        let epoch = be32(b, 4)?;
        let full = match op - OP_REPLY {
            OP_EXTERNAL => b.get(8..12).map(|a| Response::ExternalAddress {
                result,
                epoch,
                external: Ipv4Addr::new(a[0], a[1], a[2], a[3]),
            }),
            code @ (OP_MAP_UDP | OP_MAP_TCP) if b.len() >= 16 => Some(Response::Map {
                protocol: if code == OP_MAP_UDP {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                },
                result,
                epoch,
                internal_port: be16(b, 8)?,
                external_port: be16(b, 10)?,
                lifetime_s: be32(b, 12)?,
            }),
            _ => None,
        };
        match full {
            Some(r) => Some(r),
            None if result != ResultCode::Success => Some(Response::Error {
                opcode: op - OP_REPLY,
                result,
                epoch,
            }),
            None => None,
        }
    }

    /// For tests and the lab's fake gateways.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![VERSION];
        match *self {
            Response::ExternalAddress {
                result,
                epoch,
                external,
            } => {
                b.push(OP_REPLY + OP_EXTERNAL);
                b.extend_from_slice(&result.to_u16().to_be_bytes());
                b.extend_from_slice(&epoch.to_be_bytes());
                b.extend_from_slice(&external.octets());
            }
            Response::Map {
                protocol,
                result,
                epoch,
                internal_port,
                external_port,
                lifetime_s,
            } => {
                b.push(OP_REPLY + map_opcode(protocol));
                b.extend_from_slice(&result.to_u16().to_be_bytes());
                b.extend_from_slice(&epoch.to_be_bytes());
                b.extend_from_slice(&internal_port.to_be_bytes());
                b.extend_from_slice(&external_port.to_be_bytes());
                b.extend_from_slice(&lifetime_s.to_be_bytes());
            }
            Response::Error {
                opcode,
                result,
                epoch,
            } => {
                b.push(OP_REPLY | opcode);
                b.extend_from_slice(&result.to_u16().to_be_bytes());
                b.extend_from_slice(&epoch.to_be_bytes());
            }
        }
        b
    }
}

pub(super) fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

pub(super) fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

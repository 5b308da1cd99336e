//! The STUN server's protocol logic, sans-IO: bytes and the endpoint they arrived on go in,
//! a response and the endpoint to send it from come out. The socket loops live in
//! [`crate::sys::serve`].

use crate::stun::{attr_type, Attribute, Class, Encoder, ErrorCode, Message, MessageType, Method};
use std::net::{IpAddr, SocketAddr};

/// One of the up to four local endpoints of an RFC 5780 server: bit 1 selects the alternate
/// IP, bit 0 the alternate port. `EndpointId(0)` is the primary address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointId(pub u8);

impl EndpointId {
    pub const PRIMARY: EndpointId = EndpointId(0);
    pub fn alt_ip(self) -> bool {
        self.0 & 2 != 0
    }
    pub fn alt_port(self) -> bool {
        self.0 & 1 != 0
    }
    fn flip(self, ip: bool, port: bool) -> EndpointId {
        EndpointId(self.0 ^ (u8::from(ip) << 1) ^ u8::from(port))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub ip: IpAddr,
    /// Second address for RFC 5780 behaviour discovery; `None` makes a plain STUN server.
    pub alt_ip: Option<IpAddr>,
    pub port: u16,
    pub alt_port: u16,
    pub software: Option<String>,
}

impl ServerConfig {
    pub fn discovery(&self) -> bool {
        self.alt_ip.is_some()
    }

    /// The endpoints this configuration listens on, in `EndpointId` order.
    pub fn endpoints(&self) -> Vec<(EndpointId, SocketAddr)> {
        let n = if self.discovery() { 4 } else { 1 };
        (0..n)
            .map(|i| (EndpointId(i), self.addr(EndpointId(i))))
            .collect()
    }

    pub fn addr(&self, e: EndpointId) -> SocketAddr {
        let ip = if e.alt_ip() {
            self.alt_ip.unwrap_or(self.ip)
        } else {
            self.ip
        };
        SocketAddr::new(
            ip,
            if e.alt_port() {
                self.alt_port
            } else {
                self.port
            },
        )
    }
}

/// Why a datagram got no answer. Counted, never echoed to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Malformed,
    NotRequest,
}

/// What to do with one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Send the bytes written to `out` from endpoint `from` to `to`.
    Reply {
        from: EndpointId,
        to: SocketAddr,
    },
    Drop(DropReason),
}

/// Counters only: the server keeps no per-client state, so junk cannot grow its memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub requests: u64,
    pub success: u64,
    pub errors: u64,
    pub malformed: u64,
    pub not_request: u64,
}

pub struct StunServer {
    cfg: ServerConfig,
    pub stats: Stats,
}

impl StunServer {
    pub fn new(cfg: ServerConfig) -> Self {
        StunServer {
            cfg,
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Handles one datagram (or one framed TCP message) that arrived on `local` from `src`.
    /// On `Outcome::Reply` the response is in `out` (cleared first).
    pub fn handle(
        &mut self,
        transport: Transport,
        local: EndpointId,
        src: SocketAddr,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Outcome {
        out.clear();
        let msg = match Message::parse(input) {
            Ok(m) => m,
            Err(_) => {
                self.stats.malformed += 1;
                return Outcome::Drop(DropReason::Malformed);
            }
        };
        let mt = msg.message_type();
        if mt.class != Class::Request {
            // RFC 8489 section 6.3: indications and responses get no answer from a server.
            self.stats.not_request += 1;
            return Outcome::Drop(DropReason::NotRequest);
        }
        self.stats.requests += 1;
        let error_to = Outcome::Reply {
            from: local,
            to: src,
        };
        if mt.method != Method::Binding {
            self.error(&msg, 400, "Only Binding is served here", &[], out);
            return error_to;
        }
        // RFC 8489 section 6.3.1.1: unknown comprehension-required attributes -> 420.
        let mut unknown = [0u8; 32];
        let mut n = 0;
        for t in msg.unknown_required().take(unknown.len() / 2) {
            unknown[n..n + 2].copy_from_slice(&t.to_be_bytes());
            n += 2;
        }
        if n > 0 {
            self.error(&msg, 420, "Unknown Attribute", &unknown[..n], out);
            return error_to;
        }

        let tid = msg.transaction_id();
        let (mut change_ip, mut change_port) = (false, false);
        let mut response_port = None;
        let mut padding = None;
        for a in msg.attributes() {
            match a.decode(&tid) {
                Ok(Attribute::ChangeRequest {
                    change_ip: i,
                    change_port: p,
                }) => {
                    change_ip = i;
                    change_port = p;
                }
                Ok(Attribute::ResponsePort(p)) => response_port = Some(p),
                Ok(Attribute::Padding(p)) => padding = Some(p.len()),
                Ok(_) => {}
                Err(_) if attr_type::is_comprehension_required(a.typ) => {
                    self.error(&msg, 400, "Malformed attribute", &[], out);
                    return error_to;
                }
                Err(_) => {}
            }
        }
        let wants_change = change_ip || change_port;
        if wants_change && (!self.cfg.discovery() || transport == Transport::Tcp) {
            // RFC 5780 section 6.1: a server that cannot answer from another address treats
            // CHANGE-REQUEST as unknown; over TCP the answer must use the same connection.
            let unk = attr_type::CHANGE_REQUEST.to_be_bytes();
            self.error(&msg, 420, "CHANGE-REQUEST not available here", &unk, out);
            return error_to;
        }
        if response_port.is_some() && (padding.is_some() || transport == Transport::Tcp) {
            // RFC 5780 section 6.1: RESPONSE-PORT with PADDING is a 400; over TCP there is no
            // other port to answer to.
            self.error(
                &msg,
                400,
                "RESPONSE-PORT not usable with this request",
                &[],
                out,
            );
            return error_to;
        }
        if response_port == Some(0) {
            self.error(&msg, 400, "RESPONSE-PORT 0", &[], out);
            return error_to;
        }

        let from = local.flip(change_ip, change_port);
        // The destination keeps the requester's IP: RESPONSE-PORT may pick only the port, so
        // the server can never be aimed at a third party's address.
        let to = SocketAddr::new(src.ip(), response_port.unwrap_or(src.port()));
        let origin = self.cfg.addr(from);
        // RFC 5780 section 7.4 / RFC 3489 section 11.2.3 name the endpoint that "change IP
        // and port" answers from. For a request to the primary endpoint (Test I, the only
        // answer RFC 5780 clients read it from) that is the alternate endpoint. We give the
        // alternate endpoint on every answer, as coturn does: coturn's own client takes
        // OTHER-ADDRESS from its Test II answer and would otherwise aim Test III at the
        // primary IP and misreport address-dependent mapping.
        let other = self.cfg.discovery().then(|| self.cfg.addr(EndpointId(3)));

        let mut e = Encoder::new(out, MessageType::BINDING_SUCCESS, tid);
        if tid.is_rfc3489() {
            // RFC 3489 section 11.2: classic clients read these three.
            e.push(&Attribute::MappedAddress(src));
            e.push(&Attribute::SourceAddress(origin));
            if let Some(o) = other {
                e.push(&Attribute::ChangedAddress(o));
            }
        } else {
            e.push(&Attribute::XorMappedAddress(src));
            // RFC 5389-era clients that predate XOR-MAPPED-ADDRESS still read this.
            e.push(&Attribute::MappedAddress(src));
            e.push(&Attribute::ResponseOrigin(origin));
            if let Some(o) = other {
                e.push(&Attribute::OtherAddress(o));
            }
            if let Some(s) = &self.cfg.software {
                e.push(&Attribute::Software(s));
            }
            if let Some(plen) = padding {
                // RFC 5780 section 6.1 asks for MTU-sized padding; we pad only up to the
                // request's own size so a small request can never buy a large answer.
                let room = input.len().saturating_sub(e.len() + 4 + 8 + 4);
                let want = plen.min(room) & !3;
                static ZEROS: [u8; 1500] = [0; 1500];
                e.push(&Attribute::Padding(&ZEROS[..want.min(ZEROS.len())]));
            }
            e.fingerprint();
        }
        self.stats.success += 1;
        Outcome::Reply { from, to }
    }

    fn error(
        &mut self,
        req: &Message<'_>,
        code: u16,
        reason: &str,
        unknown: &[u8],
        out: &mut Vec<u8>,
    ) {
        self.stats.errors += 1;
        let tid = req.transaction_id();
        let mt = MessageType {
            method: req.message_type().method,
            class: Class::Error,
        };
        let mut e = Encoder::new(out, mt, tid);
        e.push(&Attribute::ErrorCode(ErrorCode { code, reason }));
        if !unknown.is_empty() {
            e.push(&Attribute::UnknownAttributes(crate::stun::UnknownList(
                unknown,
            )));
        }
        if !tid.is_rfc3489() {
            e.fingerprint();
        }
    }
}

#[cfg(test)]
mod tests;

//! The STUN server's protocol logic, sans-IO: bytes and the endpoint they arrived on go in,
//! a response and the endpoint to send it from come out. The socket loops live in
//! [`crate::driver::serve`].
//!
//! # Amplification bound
//!
//! A UDP request's source address can be spoofed, so whatever the server answers can be aimed
//! at a victim. The rule, enforced by construction in [`StunServer::handle`] and checked by
//! the unit, property and fuzz tests:
//!
//! > a response is never longer than `max(request length, B)`, with `B` = 92 bytes for an
//! > IPv4 source and 140 bytes for an IPv6 source ([`response_limit`]),
//!
//! where `B` is what coturn (4.6.1, `--stun-only`, two addresses) answers to a bare 20-byte
//! Binding request. The largest amplification factor is therefore coturn's own (4.6x for
//! IPv4, 7x for IPv6, for that 20-byte request), and larger requests are never answered with
//! more than they sent. coturn itself exceeds its own factor: it pads a PADDING request to
//! 1500 bytes whatever its size, and lists every unknown attribute of a 420.
//!
//! Inside the budget the response is built in order of need and an attribute that does not
//! fit is left out (FINGERPRINT's 8 bytes are reserved first):
//!
//! 1. XOR-MAPPED-ADDRESS, the answer itself (RFC 8489 section 14.2), or for RFC 3489
//!    clients MAPPED-ADDRESS (RFC 3489 section 11.2.1);
//! 2. RESPONSE-ORIGIN and OTHER-ADDRESS, which behaviour discovery needs (RFC 5780 sections
//!    7.3, 7.4), or SOURCE-ADDRESS and CHANGED-ADDRESS for RFC 3489 clients;
//! 3. MAPPED-ADDRESS for magic-cookie clients: only for backwards compatibility (RFC 8489
//!    section 14.1), since every RFC 5389/8489 client reads XOR-MAPPED-ADDRESS;
//! 4. SOFTWARE, informational only (RFC 8489 section 14.14, "SHOULD"), dropped when a long
//!    `--software` does not fit;
//! 5. PADDING, only up to the request's own size (RFC 5780 section 7.6 asks for the MTU;
//!    a client that wants a large answer to test fragmentation sends a large request);
//! 6. FINGERPRINT (RFC 8489 section 14.7; never for RFC 3489 clients).
//!
//! Items 1, 2 and 6 always fit: at most 20 + 3 x 24 + 8 = 100 bytes with IPv6 addresses,
//! 88 for an IPv4 source. An error response is ERROR-CODE with its reason phrase cut to fit
//! (RFC 8489 section 14.8 makes the phrase advisory) and, for a 420, as many
//! UNKNOWN-ATTRIBUTES as fit (16 with the phrase, 26 without, for an IPv4 source at 92
//! bytes; RFC 8489 section 14.13 sets no minimum, and every listed type took at least 4
//! request bytes, so larger lists come with larger requests).
//!
//! RESPONSE-PORT and CHANGE-REQUEST change only the port and the local endpoint, never the
//! destination IP, so the server can never be aimed at an address that did not send the
//! request.
//!
//! # CONNECT-BACK (punchraw's TCP filtering test)
//!
//! RFC 5780's filtering test answers from another address, which TCP cannot do on the same
//! connection (section 6.1). Its TCP counterpart is a new connection: a request carrying
//! punchraw's comprehension-optional CONNECT-BACK ([`attr_type::CONNECT_BACK`], the flags of
//! CHANGE-REQUEST) asks the server to answer normally and then send a SYN from the endpoint
//! the flags select to the requester's source address. The answer then carries
//! CONNECT-BACK-ORIGIN, the endpoint the SYN will leave from; without it the server will not
//! send one. Whether that unsolicited SYN reaches the client is the NAT's TCP filtering
//! (RFC 5382 section 4.3). It is honoured over TCP only, whose source address was proven by the
//! handshake, only with discovery configured, only when at least one flag is set (the
//! unchanged endpoint already has this very connection to the requester), and only when the
//! caller says it has room ([`StunServer::handle_tcp`]): one SYN per request, to the
//! requester and nobody else.

mod limit;

pub use limit::SourceLimiter;

use crate::core::stun::{
    attr_type, Attribute, Class, Encoder, ErrorCode, Message, MessageType, Method,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// coturn's answer to a bare 20-byte Binding request from an IPv4 source, in bytes.
pub const COTURN_BINDING_V4: usize = 92;
/// coturn's answer to a bare 20-byte Binding request from an IPv6 source, in bytes.
pub const COTURN_BINDING_V6: usize = 140;

/// The most bytes the server answers a `request_len`-byte request from `src` with.
pub fn response_limit(request_len: usize, src: SocketAddr) -> usize {
    let base = if src.is_ipv4() {
        COTURN_BINDING_V4
    } else {
        COTURN_BINDING_V6
    };
    request_len.max(base)
}

const FINGERPRINT_LEN: usize = 8;

fn padded(n: usize) -> usize {
    (n + 3) & !3
}

fn addr_attr_len(a: SocketAddr) -> usize {
    4 + if a.is_ipv4() { 8 } else { 20 }
}

/// One of the up to four local endpoints of an RFC 5780 server: bit 1 selects the alternate
/// IP, bit 0 the alternate port. `EndpointId(0)` is the primary address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointId(pub u8);

impl EndpointId {
    /// The primary address and port: where clients send their first Binding request.
    pub const PRIMARY: EndpointId = EndpointId(0);
    /// Whether this endpoint is on the alternate IP (RFC 5780 "change IP").
    pub fn alt_ip(self) -> bool {
        self.0 & 2 != 0
    }
    /// Whether this endpoint is on the alternate port (RFC 5780 "change port").
    pub fn alt_port(self) -> bool {
        self.0 & 1 != 0
    }
    fn flip(self, ip: bool, port: bool) -> EndpointId {
        EndpointId(self.0 ^ (u8::from(ip) << 1) ^ u8::from(port))
    }
}

/// The transport a request arrived over, which decides what the server may do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: the source may be spoofed, so the per-source limit applies; CHANGE-REQUEST and
    /// RESPONSE-PORT can be honoured.
    Udp,
    /// TCP: the source was proven by the handshake and the answer must go back on the same
    /// connection, so CHANGE-REQUEST and RESPONSE-PORT are refused.
    Tcp,
}

/// The addresses and options of one STUN server: a plain RFC 8489 server on `ip`:`port`, or
/// with `alt_ip` an RFC 5780 behaviour discovery server on all four combinations of the
/// primary and alternate IP and port.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Primary address: endpoint 0, and the address clients are expected to know.
    pub ip: IpAddr,
    /// Second address for RFC 5780 behaviour discovery; `None` makes a plain STUN server.
    pub alt_ip: Option<IpAddr>,
    /// Primary port.
    pub port: u16,
    /// Alternate port for RFC 5780 behaviour discovery; unused without `alt_ip`.
    pub alt_port: u16,
    /// `--software`: the SOFTWARE attribute's value (RFC 8489 section 14.14), left out of a
    /// response it does not fit; `None` sends none.
    pub software: Option<String>,
    /// `--per-source-limit`: most UDP responses per second to one source (an IPv4 address
    /// or an IPv6 /64), bursts of as many; `None` answers everyone (the default, since many
    /// users can share one address behind carrier-grade NAT). TCP is not limited: its
    /// source cannot be spoofed.
    pub per_source_limit: Option<u32>,
    /// Keys the per-source limiter's bucket hash; the driver draws it at random, tests fix it.
    pub seed: u64,
}

impl ServerConfig {
    /// Whether RFC 5780 behaviour discovery is on, that is an alternate IP is configured.
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

    /// The socket address of endpoint `e`. Without discovery the alternate IP falls back to the
    /// primary one.
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
    /// Not a valid STUN message: bad header, attribute framing or FINGERPRINT.
    Malformed,
    /// An indication or a response, which a server never answers (RFC 8489 section 6.3).
    NotRequest,
    /// `--per-source-limit`: the source's response budget is spent.
    RateLimited,
}

/// What to do with one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Send the bytes written to `out` from endpoint `from` to `to`.
    Reply {
        /// The local endpoint to send from: the one the request arrived on, or the one its
        /// CHANGE-REQUEST selects.
        from: EndpointId,
        /// The requester's IP, with the port from RESPONSE-PORT (RFC 5780 section 7.5) when given.
        to: SocketAddr,
    },
    /// Send nothing; the reason has been counted in [`Stats`].
    Drop(DropReason),
}

/// A TCP connection to open after answering a CONNECT-BACK request: from the server's endpoint
/// `from` (the listening endpoint's own address and port, so the SYN shows exactly that source)
/// to `to`, the requester's source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectBack {
    /// The server endpoint whose address and port the SYN leaves from.
    pub from: EndpointId,
    /// The requester's source address, the only destination a CONNECT-BACK can have.
    pub to: SocketAddr,
}

/// Counters only: the server keeps no per-client state, so junk cannot grow its memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Requests parsed and within the per-source limit: each gets a success or an error response.
    pub requests: u64,
    /// Success responses sent.
    pub success: u64,
    /// Error responses sent (400, 420 and the like).
    pub errors: u64,
    /// Datagrams dropped as not parseable STUN ([`DropReason::Malformed`]).
    pub malformed: u64,
    /// Indications and responses dropped unanswered ([`DropReason::NotRequest`]).
    pub not_request: u64,
    /// Well-formed requests left unanswered by `--per-source-limit`.
    pub rate_limited: u64,
}

/// The sans-IO STUN server: answers Binding requests (RFC 8489, RFC 5780, RFC 3489 clients)
/// under the amplification bound described in the module docs. Holds only its configuration,
/// the optional shared rate limiter and counters.
pub struct StunServer {
    cfg: ServerConfig,
    limiter: Option<Arc<SourceLimiter>>,
    /// Counters since creation; the caller reads and reports them.
    pub stats: Stats,
}

impl StunServer {
    /// A server with a limiter of its own when `cfg.per_source_limit` is set. Servers on
    /// several threads should share one: [`with_limiter`](Self::with_limiter).
    pub fn new(cfg: ServerConfig, now: Instant) -> Self {
        let limiter = Self::limiter_for(&cfg, now);
        Self::with_limiter(cfg, limiter)
    }

    /// A server using `limiter` (shared with other threads' servers, so the budget is per
    /// source, not per source and thread); `None` answers everyone.
    pub fn with_limiter(cfg: ServerConfig, limiter: Option<Arc<SourceLimiter>>) -> Self {
        StunServer {
            cfg,
            limiter,
            stats: Stats::default(),
        }
    }

    /// The limiter for `cfg.per_source_limit`, for [`with_limiter`](Self::with_limiter).
    pub fn limiter_for(cfg: &ServerConfig, now: Instant) -> Option<Arc<SourceLimiter>> {
        cfg.per_source_limit
            .map(|r| Arc::new(SourceLimiter::new(r, now, cfg.seed)))
    }

    /// The configuration this server answers with.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Handles one datagram (or one framed TCP message) that arrived on `local` from `src`
    /// at `now` (the per-source limit's clock). On `Outcome::Reply` the response is in `out`
    /// (cleared first), at most [`response_limit`]`(input.len(), src)` bytes.
    ///
    /// Never offers a CONNECT-BACK, since nothing would open that connection; TCP servers that
    /// can use [`handle_tcp`](Self::handle_tcp).
    pub fn handle(
        &mut self,
        now: Instant,
        transport: Transport,
        local: EndpointId,
        src: SocketAddr,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Outcome {
        self.handle_inner(Some(now), transport, local, src, input, out, false)
            .0
    }

    /// One framed message that arrived over a TCP connection to `local` from `src`. With
    /// `connect_back_room` (the caller can open one more connection now) a CONNECT-BACK
    /// request is honoured: the response says so in CONNECT-BACK-ORIGIN and the second value
    /// says which connection to open. Over TCP the reply always goes back on the connection.
    pub fn handle_tcp(
        &mut self,
        local: EndpointId,
        src: SocketAddr,
        input: &[u8],
        out: &mut Vec<u8>,
        connect_back_room: bool,
    ) -> (Outcome, Option<ConnectBack>) {
        self.handle_inner(
            None,
            Transport::Tcp,
            local,
            src,
            input,
            out,
            connect_back_room,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_inner(
        &mut self,
        now: Option<Instant>,
        transport: Transport,
        local: EndpointId,
        src: SocketAddr,
        input: &[u8],
        out: &mut Vec<u8>,
        connect_back_room: bool,
    ) -> (Outcome, Option<ConnectBack>) {
        out.clear();
        let msg = match Message::parse(input) {
            Ok(m) => m,
            Err(_) => {
                self.stats.malformed += 1;
                return (Outcome::Drop(DropReason::Malformed), None);
            }
        };
        let mt = msg.message_type();
        if mt.class != Class::Request {
            // RFC 8489 section 6.3: indications and responses get no answer from a server.
            self.stats.not_request += 1;
            return (Outcome::Drop(DropReason::NotRequest), None);
        }
        // Only UDP sources can be spoofed; a TCP source has completed a handshake (and TCP
        // requests come without a `now`).
        if let (Transport::Udp, Some(l), Some(now)) = (transport, &self.limiter, now) {
            // Every answer, error or success, goes to `src.ip()`: one token per answer.
            if !l.allow(now, src.ip()) {
                self.stats.rate_limited += 1;
                return (Outcome::Drop(DropReason::RateLimited), None);
            }
        }
        self.stats.requests += 1;
        let limit = response_limit(input.len(), src);
        let error_to = Outcome::Reply {
            from: local,
            to: src,
        };
        if mt.method != Method::Binding {
            self.error(limit, &msg, 400, "Only Binding is served here", &[], out);
            return (error_to, None);
        }
        // RFC 8489 section 6.3.1.1: unknown comprehension-required attributes -> 420. The
        // list is cut to what fits the response budget in `error`.
        let mut unknown = [0u8; 64];
        let mut n = 0;
        for t in msg.unknown_required().take(unknown.len() / 2) {
            unknown[n..n + 2].copy_from_slice(&t.to_be_bytes());
            n += 2;
        }
        if n > 0 {
            self.error(limit, &msg, 420, "Unknown Attribute", &unknown[..n], out);
            return (error_to, None);
        }

        let tid = msg.transaction_id();
        let (mut change_ip, mut change_port) = (false, false);
        let mut response_port = None;
        let mut padding = None;
        let mut connect_back = None;
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
                Ok(Attribute::ConnectBack {
                    change_ip: i,
                    change_port: p,
                }) => connect_back = Some((i, p)),
                Ok(_) => {}
                Err(_) if attr_type::is_comprehension_required(a.typ) => {
                    self.error(limit, &msg, 400, "Malformed attribute", &[], out);
                    return (error_to, None);
                }
                Err(_) => {}
            }
        }
        let wants_change = change_ip || change_port;
        if wants_change && (!self.cfg.discovery() || transport == Transport::Tcp) {
            // RFC 5780 section 6.1: a server that cannot answer from another address treats
            // CHANGE-REQUEST as unknown; over TCP the answer must use the same connection.
            let unk = attr_type::CHANGE_REQUEST.to_be_bytes();
            self.error(
                limit,
                &msg,
                420,
                "CHANGE-REQUEST not available here",
                &unk,
                out,
            );
            return (error_to, None);
        }
        if response_port.is_some() && (padding.is_some() || transport == Transport::Tcp) {
            // RFC 5780 section 6.1: RESPONSE-PORT with PADDING is a 400; over TCP there is no
            // other port to answer to.
            self.error(
                limit,
                &msg,
                400,
                "RESPONSE-PORT not usable with this request",
                &[],
                out,
            );
            return (error_to, None);
        }
        if response_port == Some(0) {
            self.error(limit, &msg, 400, "RESPONSE-PORT 0", &[], out);
            return (error_to, None);
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

        // CONNECT-BACK: see the module documentation for every condition. Neither flag would
        // mean a second connection on this connection's own 4-tuple.
        let connect_back = connect_back
            .filter(|&(i, p)| {
                (i || p)
                    && connect_back_room
                    && transport == Transport::Tcp
                    && self.cfg.discovery()
                    && !tid.is_rfc3489()
            })
            .map(|(i, p)| ConnectBack {
                from: local.flip(i, p),
                to: src,
            });
        let mut promised = None;

        // The budget for everything but FINGERPRINT; see the module documentation.
        let rfc3489 = tid.is_rfc3489();
        let room = limit - if rfc3489 { 0 } else { FINGERPRINT_LEN };
        let mut e = Encoder::new(out, MessageType::BINDING_SUCCESS, tid);
        let push = |e: &mut Encoder<'_>, a: &Attribute<'_>, len: usize| {
            if e.len() + len <= room {
                e.push(a);
            }
        };
        if rfc3489 {
            // RFC 3489 section 11.2: classic clients read these three.
            push(&mut e, &Attribute::MappedAddress(src), addr_attr_len(src));
            push(
                &mut e,
                &Attribute::SourceAddress(origin),
                addr_attr_len(origin),
            );
            if let Some(o) = other {
                push(&mut e, &Attribute::ChangedAddress(o), addr_attr_len(o));
            }
        } else {
            push(
                &mut e,
                &Attribute::XorMappedAddress(src),
                addr_attr_len(src),
            );
            push(
                &mut e,
                &Attribute::ResponseOrigin(origin),
                addr_attr_len(origin),
            );
            if let Some(o) = other {
                push(&mut e, &Attribute::OtherAddress(o), addr_attr_len(o));
            }
            if let Some(cb) = connect_back {
                // Before MAPPED-ADDRESS: the client asked for it, and only a response that
                // carries it may be followed by the SYN. It always fits (76 bytes for IPv4
                // with what precedes it, 124 for IPv6), but is checked like everything else.
                let o = self.cfg.addr(cb.from);
                let before = e.len();
                push(&mut e, &Attribute::ConnectBackOrigin(o), addr_attr_len(o));
                if e.len() > before {
                    promised = Some(cb);
                }
            }
            // RFC 8489 section 14.1: for backwards compatibility only.
            push(&mut e, &Attribute::MappedAddress(src), addr_attr_len(src));
            if let Some(s) = &self.cfg.software {
                push(&mut e, &Attribute::Software(s), 4 + padded(s.len()));
            }
            if let Some(plen) = padding {
                // RFC 5780 section 7.6 asks for MTU-sized padding; we pad only up to the
                // request's own size so a small request can never buy a large answer.
                static ZEROS: [u8; 1500] = [0; 1500];
                let fits = room.saturating_sub(e.len() + 4) & !3;
                let want = (plen & !3).min(fits).min(ZEROS.len());
                push(&mut e, &Attribute::Padding(&ZEROS[..want]), 4 + want);
            }
            e.fingerprint();
        }
        debug_assert!(out.len() <= limit);
        self.stats.success += 1;
        (Outcome::Reply { from, to }, promised)
    }

    /// An error response of at most `limit` bytes: the reason phrase and the list of
    /// unknown attributes (`unknown`, big-endian types) are cut to fit.
    fn error(
        &mut self,
        limit: usize,
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
        let fp = if tid.is_rfc3489() { 0 } else { FINGERPRINT_LEN };
        // Header, ERROR-CODE without a phrase, FINGERPRINT: 36 bytes, within any limit.
        let fixed = 20 + 8 + fp;
        let list_len = |n: usize| if n == 0 { 0 } else { 4 + padded(n) };
        let (phrase, n) = if fixed + padded(reason.len()) + list_len(unknown.len()) <= limit {
            (reason, unknown.len())
        } else if unknown.is_empty() {
            // Reason phrases are ASCII; cut to whole 4-byte words.
            let keep = (limit.saturating_sub(fixed) & !3).min(reason.len());
            (reason.get(..keep).unwrap_or(""), 0)
        } else {
            // The list is what the client acts on (RFC 8489 section 14.13): drop the phrase
            // and list as many types as fit (an even number of bytes; 26 at 92 bytes).
            let left = limit.saturating_sub(fixed + 4) & !3;
            ("", left.min(unknown.len()))
        };
        let mut e = Encoder::new(out, mt, tid);
        e.push(&Attribute::ErrorCode(ErrorCode {
            code,
            reason: phrase,
        }));
        if n > 0 {
            e.push(&Attribute::UnknownAttributes(
                crate::core::stun::UnknownList(&unknown[..n]),
            ));
        }
        if fp > 0 {
            e.fingerprint();
        }
        debug_assert!(out.len() <= limit.max(fixed));
    }
}

#[cfg(test)]
mod tests;

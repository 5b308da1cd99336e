//! STUN Binding over TCP (RFC 8489 section 6.2.2) from a chosen local port: the primitive of
//! both the TCP probe and the TCP punch's port prediction. Every socket is bound with
//! SO_REUSEADDR and SO_REUSEPORT, so that several connections (and a listener) can share one
//! local port toward different destinations, which is what makes the NAT's TCP mapping of
//! that port observable (RFC 5382 REQ-1).

use crate::core::stun::{
    attr_type, Attribute, Class, Encoder, Message, MessageType, TransactionId,
};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Longest response read; a Binding success is under 200 bytes.
const MAX_RESPONSE: usize = 2048;

/// Why a STUN Binding over TCP gave no mapped address.
#[derive(Debug, Error)]
pub enum TcpStunError {
    /// The local socket could not be made or bound (the port in use without SO_REUSEPORT,
    /// or no such local address).
    #[error("cannot open a TCP socket on {local}: {source}")]
    Socket {
        /// The local endpoint we tried to bind.
        local: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The TCP connection to the server failed or broke: refused, reset, or unreachable.
    #[error("cannot connect to {server} over TCP from {local}: {source}")]
    Connect {
        /// Our end (the bound port, or the asked-for endpoint when binding did not tell).
        local: SocketAddr,
        /// The STUN server.
        server: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Connecting, sending or reading the answer took longer than the exchange's timeout.
    #[error("no STUN answer over TCP from {server} within {ms} ms")]
    Timeout {
        /// The STUN server.
        server: SocketAddr,
        /// The timeout that ran out, in milliseconds.
        ms: u64,
    },
    /// The answer did not parse as STUN, or is not a Binding response to our transaction.
    #[error("{server} answered over TCP with something that is not a STUN Binding response")]
    Garbage {
        /// The STUN server.
        server: SocketAddr,
    },
    /// The server answered with a Binding error response.
    #[error("{server} answered the TCP Binding request with error {code}: {reason}")]
    ErrorResponse {
        /// The STUN server.
        server: SocketAddr,
        /// The STUN error code (RFC 8489 section 14.8; 0 when the response carried none).
        code: u16,
        /// The reason phrase the server gave, possibly empty.
        reason: String,
    },
    /// A Binding success without an XOR-MAPPED-ADDRESS or MAPPED-ADDRESS.
    #[error("{server}'s TCP Binding response has no mapped address")]
    NoMapped {
        /// The STUN server.
        server: SocketAddr,
    },
}

impl TcpStunError {
    /// The connection itself failed (nothing answered, or the path refused it), as opposed to
    /// a server that answered badly.
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            TcpStunError::Connect { .. } | TcpStunError::Timeout { .. }
        )
    }

    /// Nothing came back in time: the handshake or the answer timed out (a lost packet, or a
    /// NAT that dropped this flow), as opposed to a refusal or a reset, which another try
    /// would meet again.
    pub fn silent(&self) -> bool {
        match self {
            TcpStunError::Timeout { .. } => true,
            TcpStunError::Connect { source, .. } => source.kind() == io::ErrorKind::TimedOut,
            _ => false,
        }
    }
}

/// What one TCP Binding exchange showed.
#[derive(Debug, Clone)]
pub struct TcpBinding {
    /// Our end of the connection (the port is the one asked for, or the OS's choice for 0).
    pub local: SocketAddr,
    /// The STUN server's endpoint we connected to.
    pub server: SocketAddr,
    /// Where the server saw the connection come from.
    pub mapped: SocketAddr,
    /// The server's RFC 5780 alternate endpoint, when it named one.
    pub other: Option<SocketAddr>,
    /// Connect plus request/response.
    pub rtt: Duration,
    /// The raw response, for attributes a caller looks for itself.
    pub response: Vec<u8>,
}

/// A TCP socket bound to `local` (port 0: a fresh one) that can share its port.
pub fn shared_port_socket(local: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(local),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if local.is_ipv6() {
        // Never IPv4-mapped: the IPv4 side of the port is another punch's, or nobody's.
        s.set_only_v6(true)?;
    }
    s.bind(&local.into())?;
    Ok(s)
}

/// One Binding request over a new TCP connection from `local` to `server`, with `extra`
/// attributes, within `timeout`. The connection is closed before returning.
pub fn binding(
    local: SocketAddr,
    server: SocketAddr,
    extra: &[Attribute<'_>],
    timeout: Duration,
) -> Result<TcpBinding, TcpStunError> {
    exchange(local, server, extra, timeout).map(|(b, _)| b)
}

/// [`binding`], handing back the connection still open (for a caller that must keep the
/// NAT's mapping of it alive while it waits for something else).
pub fn exchange(
    local: SocketAddr,
    server: SocketAddr,
    extra: &[Attribute<'_>],
    timeout: Duration,
) -> Result<(TcpBinding, TcpStream), TcpStunError> {
    let started = Instant::now();
    let (stream, bound) = connect(local, server, timeout)?;
    finish(stream, bound, server, extra, started, timeout)
}

/// Binding requests over new TCP connections from `local` (a port already in use by this
/// host's shared sockets, not 0) to each of `servers`, side by side: [`open_in_order`], then
/// [`Opening::finish`]. Each connection is closed before returning.
pub fn bindings_in_order(
    local: SocketAddr,
    servers: &[SocketAddr],
    timeout: Duration,
) -> Vec<Result<TcpBinding, TcpStunError>> {
    open_in_order(local, servers).finish(timeout)
}

/// Connections from `local` to each of `servers` whose SYNs have left this thread, in that
/// order; the handshakes complete while the caller goes on.
pub struct Opening {
    started: Instant,
    local: SocketAddr,
    conns: Vec<(SocketAddr, Result<TcpStream, TcpStunError>)>,
}

/// Starts a connection from `local` to each of `servers`: every SYN leaves before this
/// returns, in the order given, so a NAT that allocates ports in sequence meets them in that
/// order and before anything the caller sends afterwards.
pub fn open_in_order(local: SocketAddr, servers: &[SocketAddr]) -> Opening {
    let started = Instant::now();
    let conns = servers
        .iter()
        .map(|&server| {
            let open = || {
                let sock = shared_port_socket(local)
                    .map_err(|source| TcpStunError::Socket { local, source })?;
                let err = |source| TcpStunError::Connect {
                    local,
                    server,
                    source,
                };
                sock.set_nonblocking(true).map_err(err)?;
                // The SYN goes out here; the connection completes while the others start.
                match sock.connect(&server.into()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                    Err(e) => return Err(err(e)),
                }
                // Blocking again: the request's write waits for the handshake (within the
                // write timeout `finish` sets), and fails as the connect would have.
                sock.set_nonblocking(false).map_err(err)?;
                Ok(sock.into())
            };
            (server, open())
        })
        .collect();
    Opening {
        started,
        local,
        conns,
    }
}

impl Opening {
    /// The Binding exchanges on the opened connections, at once (a thread each): one round
    /// trip in all instead of one per server, within `timeout` of the first SYN. One result
    /// per server, in the order opened.
    pub fn finish(self, timeout: Duration) -> Vec<Result<TcpBinding, TcpStunError>> {
        let (started, local) = (self.started, self.local);
        std::thread::scope(|scope| {
            let running: Vec<_> = self
                .conns
                .into_iter()
                .map(|(server, o)| {
                    let h = scope.spawn(move || {
                        finish(o?, local, server, &[], started, timeout).map(|(b, _)| b)
                    });
                    (server, h)
                })
                .collect();
            running
                .into_iter()
                .map(|(server, h)| h.join().unwrap_or(Err(TcpStunError::Garbage { server })))
                .collect()
        })
    }
}

/// The request on the connected (or connecting) `stream` and its answer, within what is left
/// of `timeout` since `started`.
fn finish(
    mut stream: TcpStream,
    bound: SocketAddr,
    server: SocketAddr,
    extra: &[Attribute<'_>],
    started: Instant,
    timeout: Duration,
) -> Result<(TcpBinding, TcpStream), TcpStunError> {
    let budget = Budget {
        started,
        timeout,
        server,
    };
    let _ = stream.set_nodelay(true);
    let tid = TransactionId::random(&mut rand::rng());
    let io_err = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => budget.expired(),
        _ => TcpStunError::Connect {
            local: bound,
            server,
            source: e,
        },
    };
    stream
        .set_write_timeout(Some(budget.left()?))
        .map_err(io_err)?;
    stream.write_all(&request(tid, extra)).map_err(io_err)?;
    let response = read_response(&mut stream, &budget, io_err)?;
    let rtt = started.elapsed();
    let (mapped, other) = decode(&response, tid, server)?;
    let b = TcpBinding {
        local: bound,
        server,
        mapped,
        other,
        rtt,
        response,
    };
    Ok((b, stream))
}

/// What is left of one exchange's time.
struct Budget {
    started: Instant,
    timeout: Duration,
    server: SocketAddr,
}

impl Budget {
    fn expired(&self) -> TcpStunError {
        TcpStunError::Timeout {
            server: self.server,
            ms: self.timeout.as_millis() as u64,
        }
    }

    /// The time left, or the timeout error when none is.
    fn left(&self) -> Result<Duration, TcpStunError> {
        self.timeout
            .checked_sub(self.started.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| self.expired())
    }
}

/// The connection from `local` (a shared port) to `server`, and its local address.
fn connect(
    local: SocketAddr,
    server: SocketAddr,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), TcpStunError> {
    let sock =
        shared_port_socket(local).map_err(|source| TcpStunError::Socket { local, source })?;
    let bound = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(local);
    sock.connect_timeout(&server.into(), timeout)
        .map_err(|source| TcpStunError::Connect {
            local: bound,
            server,
            source,
        })?;
    let stream: TcpStream = sock.into();
    let _ = stream.set_nodelay(true);
    Ok((stream, bound))
}

/// A Binding request with `extra` attributes and a FINGERPRINT.
fn request(tid: TransactionId, extra: &[Attribute<'_>]) -> Vec<u8> {
    let mut req = Vec::with_capacity(64);
    let mut e = Encoder::new(&mut req, MessageType::BINDING_REQUEST, tid);
    for a in extra {
        e.push(a);
    }
    e.fingerprint();
    req
}

/// Reads one framed STUN message (RFC 8489 section 6.2.2: over TCP the header's length
/// delimits it) within the budget.
fn read_response(
    stream: &mut TcpStream,
    budget: &Budget,
    io_err: impl Fn(io::Error) -> TcpStunError,
) -> Result<Vec<u8>, TcpStunError> {
    let server = budget.server;
    let mut buf = vec![0u8; MAX_RESPONSE];
    let mut have = 0;
    let want = loop {
        if let Some(n) = Message::frame_len(&buf[..have]) {
            if n > MAX_RESPONSE {
                return Err(TcpStunError::Garbage { server });
            }
            if have >= n {
                break n;
            }
        } else if have >= 4 {
            return Err(TcpStunError::Garbage { server });
        }
        stream
            .set_read_timeout(Some(budget.left()?))
            .map_err(&io_err)?;
        match stream.read(&mut buf[have..]) {
            Ok(0) => return Err(TcpStunError::Garbage { server }),
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    };
    buf.truncate(want);
    Ok(buf)
}

/// The mapped address and OTHER-ADDRESS of a Binding success response to `tid`; an error
/// response or anything else is an error.
fn decode(
    response: &[u8],
    tid: TransactionId,
    server: SocketAddr,
) -> Result<(SocketAddr, Option<SocketAddr>), TcpStunError> {
    let msg = Message::parse(response).map_err(|_| TcpStunError::Garbage { server })?;
    if msg.transaction_id() != tid
        || msg.message_type().method != MessageType::BINDING_REQUEST.method
    {
        return Err(TcpStunError::Garbage { server });
    }
    match msg.message_type().class {
        Class::Success => {}
        Class::Error => {
            let (code, reason) = match msg.get(attr_type::ERROR_CODE) {
                Some(Ok(Attribute::ErrorCode(e))) => (e.code, e.reason.to_string()),
                _ => (0, String::new()),
            };
            return Err(TcpStunError::ErrorResponse {
                server,
                code,
                reason,
            });
        }
        _ => return Err(TcpStunError::Garbage { server }),
    }
    let mapped = msg
        .mapped_address()
        .ok_or(TcpStunError::NoMapped { server })?;
    let other = match msg.get(attr_type::OTHER_ADDRESS) {
        Some(Ok(Attribute::OtherAddress(a))) => Some(a),
        _ => None,
    };
    Ok((mapped, other))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_timed_out_is_silent() {
        let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let local: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let connect = |kind| TcpStunError::Connect {
            local,
            server,
            source: io::Error::from(kind),
        };
        assert!(TcpStunError::Timeout { server, ms: 2500 }.silent());
        assert!(connect(io::ErrorKind::TimedOut).silent());
        // A refusal or a reset would meet the next try too.
        assert!(!connect(io::ErrorKind::ConnectionRefused).silent());
        assert!(!connect(io::ErrorKind::ConnectionReset).silent());
        assert!(!TcpStunError::Garbage { server }.silent());
    }
}

//! Binding the server's sockets: per endpoint a group of UDP sockets sharing the port
//! (SO_REUSEPORT) and one TCP listener, with an ephemeral alternate port pair retried until
//! both protocols get it.

use super::*;
use crate::core::server::ServerConfig;
use crate::Error;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use tracing::debug;

pub(super) struct Bound {
    pub(super) config: ServerConfig,
    /// In `EndpointId` order, so any socket of `udp[from.0]` can answer from that endpoint;
    /// each group holds [`udp_threads`] sockets sharing the endpoint's address.
    pub(super) udp: Vec<Vec<UdpSocket>>,
    pub(super) tcp: Vec<TcpListener>,
}

pub(super) fn invalid(what: &str) -> Error {
    Error::io(
        "invalid server configuration",
        io::Error::new(io::ErrorKind::InvalidInput, what.to_string()),
    )
}

pub(super) fn bind_all(cfg: &ServerConfig) -> Result<Bound, Error> {
    if let Some(alt) = cfg.alt_ip {
        if alt == cfg.ip {
            return Err(invalid("the alternate IP must differ from the primary IP"));
        }
        if alt.is_ipv4() != cfg.ip.is_ipv4() {
            return Err(invalid(
                "the primary and alternate IPs must be of the same family",
            ));
        }
        if cfg.port != 0 && cfg.alt_port == cfg.port {
            return Err(invalid(
                "the alternate port must differ from the primary port",
            ));
        }
    }
    let ephemeral = cfg.port == 0 || (cfg.discovery() && cfg.alt_port == 0);
    let mut attempt = 1;
    loop {
        match try_bind(cfg) {
            Ok(b) => return Ok(b),
            Err((addr, e))
                if ephemeral
                    && e.kind() == io::ErrorKind::AddrInUse
                    && attempt < EPHEMERAL_ATTEMPTS =>
            {
                debug!(%addr, attempt, "OS-chosen port taken elsewhere; binding again");
                attempt += 1;
            }
            Err((addr, source)) => return Err(Error::Bind { addr, source }),
        }
    }
}

/// One binding attempt. The first UDP socket on each port fixes that port (the OS picks it
/// when asked for 0); every other socket then uses the same number.
pub(super) fn try_bind(cfg: &ServerConfig) -> Result<Bound, (SocketAddr, io::Error)> {
    let n = udp_threads();
    let mut config = cfg.clone();
    let primary = bind_udp_group(SocketAddr::new(cfg.ip, cfg.port), n)?;
    config.port = port_of(&primary[0])?;
    let mut udp = vec![primary];
    if cfg.discovery() {
        let want = if cfg.port == 0 { 0 } else { cfg.alt_port };
        let alt_port = bind_udp_group(SocketAddr::new(cfg.ip, want), n)?;
        config.alt_port = port_of(&alt_port[0])?;
        udp.push(alt_port);
    }
    let endpoints = config.endpoints();
    for &(_, addr) in &endpoints[udp.len()..] {
        udp.push(bind_udp_group(addr, n)?);
    }
    let tcp = endpoints
        .iter()
        .map(|&(_, addr)| bind_tcp(addr))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Bound { config, udp, tcp })
}

pub(super) fn port_of(s: &UdpSocket) -> Result<u16, (SocketAddr, io::Error)> {
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    s.local_addr()
        .map(|a| a.port())
        .map_err(|e| (unspecified, e))
}

pub(super) fn new_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        // Binding [::] must not also take the IPv4 port another process may serve.
        s.set_only_v6(true)?;
    }
    Ok(s)
}

/// Binds `n` UDP sockets to `addr` (the port the OS picks when it is 0), sharing it with
/// SO_REUSEPORT when `n > 1`.
///
/// SO_REUSEPORT alone would let this group join a port that another process of the same user
/// already serves with SO_REUSEPORT (and the kernel may even pick such a port for port 0), so
/// the port is first taken with a plain socket, which fails if anyone holds it, and released
/// just before the group binds. A process that binds the port with SO_REUSEPORT after we
/// started can still join; run one server per port.
pub(super) fn bind_udp_group(
    addr: SocketAddr,
    n: usize,
) -> Result<Vec<UdpSocket>, (SocketAddr, io::Error)> {
    let first = bind_udp(addr, false)?;
    if n <= 1 {
        return Ok(vec![first]);
    }
    let addr = first.local_addr().map_err(|e| (addr, e))?;
    drop(first);
    (0..n).map(|_| bind_udp(addr, true)).collect()
}

pub(super) fn bind_udp(
    addr: SocketAddr,
    reuse_port: bool,
) -> Result<UdpSocket, (SocketAddr, io::Error)> {
    let go = || -> io::Result<UdpSocket> {
        // No SO_REUSEADDR: on UDP it would let two servers share the port silently.
        let s = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
        if reuse_port {
            s.set_reuse_port(true)?;
        }
        // Best effort: a deeper queue absorbs bursts; the kernel caps it at rmem_max.
        let _ = s.set_recv_buffer_size(1 << 20);
        s.bind(&addr.into())?;
        s.set_read_timeout(Some(POLL_INTERVAL))?;
        Ok(s.into())
    };
    go().map_err(|e| (addr, e))
}

/// The listener of one endpoint. It shares its port with SO_REUSEPORT because CONNECT-BACK
/// sends its SYN from this very address and port, from a socket that must bind it too (Linux
/// lets a second socket bind a listening port only when both have SO_REUSEPORT).
///
/// SO_REUSEPORT would also let this listener join another same-user process's listener on
/// the port without an error, so the port is first bound by a plain socket, which fails if
/// anyone listens there, as with the UDP sockets ([`bind_udp_group`]).
pub(super) fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, (SocketAddr, io::Error)> {
    let go = || -> io::Result<TcpListener> {
        // SO_REUSEADDR on both: a restart must not wait out TIME_WAIT of the previous run's
        // connections; a port held by a live listener still fails the check.
        let check = new_socket(addr, Type::STREAM, Protocol::TCP)?;
        check.set_reuse_address(true)?;
        check.bind(&addr.into())?;
        drop(check);
        let s = new_socket(addr, Type::STREAM, Protocol::TCP)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&addr.into())?;
        s.listen(TCP_BACKLOG)?;
        // poll() says when to accept; non-blocking keeps a connection reset in between from
        // parking the thread in accept().
        s.set_nonblocking(true)?;
        Ok(s.into())
    };
    go().map_err(|e| (addr, e))
}

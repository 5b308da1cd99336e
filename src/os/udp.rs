//! UDP sockets for the drivers: the source address toward a server, fresh sockets on
//! OS-chosen ports.

use crate::Error;
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// The source address the OS would use toward `server`. `connect` on UDP sends nothing.
pub fn route_source(server: SocketAddr) -> Result<IpAddr, Error> {
    let any: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(any).map_err(|e| Error::io("cannot open a UDP socket", e))?;
    s.connect(server)
        .map_err(|error| Error::NoRoute { server, error })?;
    Ok(s.local_addr()
        .map_err(|e| Error::io("getsockname", e))?
        .ip())
}

/// The IPv4 path MTU from `local` toward `remote` as the kernel knows it (the route's or the
/// interface's MTU, or less once PMTU discovery learned a smaller one), read from a connected
/// UDP socket, which sends nothing; `None` when there is no route or for IPv6.
pub fn path_mtu(local: IpAddr, remote: IpAddr) -> Option<u32> {
    if !(local.is_ipv4() && remote.is_ipv4()) {
        return None;
    }
    let s = UdpSocket::bind((local, 0)).ok()?;
    s.connect((remote, 9)).ok()?;
    let mtu = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::IpMtu).ok()?;
    u32::try_from(mtu).ok()
}

/// This host's IPv6 addresses another host may reach: global unicast and unique-local
/// (RFC 4193; reachable inside a site, and behind a NAT66 all a host has), in interface
/// order, without loopback, link-local (which needs a scope), multicast or IPv4-mapped.
pub fn ipv6_host_addresses() -> Vec<std::net::Ipv6Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        let Some(ip) = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in6())
            .map(|s| s.ip())
        else {
            continue;
        };
        let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
        if ip.is_loopback()
            || ip.is_unspecified()
            || ip.is_multicast()
            || link_local
            || ip.to_ipv4_mapped().is_some()
            || out.contains(&ip)
        {
            continue;
        }
        out.push(ip);
    }
    out
}

/// A fresh non-blocking UDP socket for IPv6 only (IPV6_V6ONLY, so IPv4 never arrives as
/// mapped addresses) on every address of the host, on an OS-chosen port.
pub fn bind_ipv6_any() -> Result<(UdpSocket, u16), Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr: SocketAddr = "[::]:0".parse().expect("literal");
    let bind = |source| Error::Bind { addr, source };
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).map_err(bind)?;
    s.set_only_v6(true).map_err(bind)?;
    s.bind(&addr.into()).map_err(bind)?;
    s.set_nonblocking(true)
        .map_err(|e| Error::io("cannot make a UDP socket non-blocking", e))?;
    let s: UdpSocket = s.into();
    let port = s
        .local_addr()
        .map_err(|e| Error::io("getsockname", e))?
        .port();
    Ok((s, port))
}

/// `n` fresh non-blocking UDP sockets on `ip` with OS-chosen ports, and their addresses.
pub fn bind_fresh(ip: IpAddr, n: usize) -> Result<(Vec<UdpSocket>, Vec<SocketAddr>), Error> {
    let mut sockets = Vec::with_capacity(n);
    let mut locals = Vec::with_capacity(n);
    for _ in 0..n {
        let addr = SocketAddr::new(ip, 0);
        let s = UdpSocket::bind(addr).map_err(|source| Error::Bind { addr, source })?;
        s.set_nonblocking(true)
            .map_err(|e| Error::io("cannot make a UDP socket non-blocking", e))?;
        locals.push(s.local_addr().map_err(|e| Error::io("getsockname", e))?);
        sockets.push(s);
    }
    Ok((sockets, locals))
}

/// Gives `sock` socket buffers of `bytes` each way: beyond `net.core.rmem_max`/`wmem_max`
/// when we hold CAP_NET_ADMIN (SO_RCVBUFFORCE, socket(7)), up to them otherwise. A stream at
/// line rate outruns the default ~200 KB receive buffer between two reads of the runtime,
/// and every datagram dropped there is a loss the congestion controller pays for. Returns
/// the receive buffer the kernel granted (it reports twice what was asked, for its own
/// bookkeeping).
pub fn grow_buffers(sock: &UdpSocket, bytes: usize) -> usize {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if setsockopt(sock, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = setsockopt(sock, sockopt::RcvBuf, &bytes);
    }
    if setsockopt(sock, sockopt::SndBufForce, &bytes).is_err() {
        let _ = setsockopt(sock, sockopt::SndBuf, &bytes);
    }
    getsockopt(sock, sockopt::RcvBuf).unwrap_or(0)
}

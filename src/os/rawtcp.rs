//! The raw IPv4 socket that sends [`Crafted`] TCP segments as they are (IP_HDRINCL), for the
//! raw SYN engine of `connect --tcp`.
//!
//! An `IPPROTO_RAW` socket implies IP_HDRINCL and is send-only (raw(7)): nothing queues up
//! on it, so it needs no reader. The kernel keeps the header we wrote (TTL, DF, id, source
//! address) and only fills in the total length and the header checksum, which
//! [`Crafted::to_bytes`] already got right. The packet then passes this host's netfilter
//! OUTPUT and POSTROUTING hooks like any locally generated one, so the NAT tracks it as the
//! start of a connection (and the punch's own nft rules see it).

use crate::core::wire::craft::Crafted;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{SocketAddr, SocketAddrV4};

/// Sends crafted IPv4 packets; needs CAP_NET_RAW.
#[derive(Debug)]
pub struct RawTcpSender {
    socket: Socket,
}

impl RawTcpSender {
    /// Opens the socket. Fails with PermissionDenied (and a message naming CAP_NET_RAW)
    /// without the capability.
    pub fn open() -> io::Result<Self> {
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .map_err(|e| {
            if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "cannot open a raw IPv4 socket for crafted TCP segments ({e}): \
                         run as root or grant CAP_NET_RAW (setcap cap_net_raw,cap_net_admin+ep)"
                    ),
                )
            } else {
                io::Error::new(e.kind(), format!("cannot open a raw IPv4 socket: {e}"))
            }
        })?;
        Ok(RawTcpSender { socket })
    }

    /// Sends `segment` (its bytes from [`Crafted::to_bytes`]).
    pub fn send(&self, segment: &Crafted) -> io::Result<()> {
        self.send_with(segment, &[])
    }

    /// Sends `segment` with `payload` after its header ([`Crafted::to_bytes_with`]).
    pub fn send_with(&self, segment: &Crafted, payload: &[u8]) -> io::Result<()> {
        self.send_bytes(&segment.to_bytes_with(payload), segment.dst)
    }

    /// Sends an IPv4 packet that starts with its header, routed to `dst`'s address (the port
    /// is only part of the packet).
    pub fn send_bytes(&self, packet: &[u8], dst: SocketAddrV4) -> io::Result<()> {
        // The kernel routes by the address given here, not by the header's destination.
        let to = SockAddr::from(SocketAddr::V4(SocketAddrV4::new(*dst.ip(), 0)));
        let n = loop {
            match self.socket.send_to(packet, &to) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot send a crafted TCP segment to {dst}: {e}"),
                    ))
                }
            }
        };
        if n != packet.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "a crafted TCP segment to {dst} went out short ({n} of {} bytes)",
                    packet.len()
                ),
            ));
        }
        Ok(())
    }
}

//! A kernel TCP socket made ESTABLISHED with TCP_REPAIR (needs CAP_NET_ADMIN) at the state a
//! crafted handshake left: same 4-tuple, sequence numbers and negotiated options, so the
//! NATs' connection tracking sees one continuous connection.

use crate::core::wire::craft::Established;
use std::io;
use std::net::TcpStream;

/// The socket for `e`, bound to `e.local` beside other sockets on that port
/// (SO_REUSEADDR/SO_REUSEPORT), out of repair mode and ready for data. `ours.timestamps`'s
/// TSval is where the socket's timestamp clock continues.
pub fn established(_e: &Established) -> io::Result<TcpStream> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "TCP_REPAIR sockets are not built yet",
    ))
}

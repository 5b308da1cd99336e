//! The streams that run over a punched path: QUIC on the punched UDP socket, TLS on the
//! punched TCP connection, both authenticated by pinned certificates, and the stdin/stdout
//! pumps that feed them.

pub mod pin;
pub mod pipe;
pub mod quic;
pub mod tls;

/// Which side of the handshake we play: the peer with the larger id is the client (QUIC's
/// and TLS's), so the two peers never both connect or both wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Payload bytes of each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub sent: u64,
    pub received: u64,
}

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
    /// Starts the handshake: the QUIC or TLS client, and on TCP the side that commits to one
    /// connection.
    Client,
    /// Answers the handshake: the QUIC or TLS server, and on TCP the side that accepts the
    /// client's commitment.
    Server,
}

/// Payload bytes of each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Bytes read from our input and sent to the peer.
    pub sent: u64,
    /// Bytes received from the peer and written to our output.
    pub received: u64,
}

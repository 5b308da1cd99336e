//! The streams that run over a punched path: QUIC on the punched UDP socket, TLS on the
//! punched TCP connection, both authenticated by pinned certificates, and the stdin/stdout
//! pumps that feed them.

pub mod pin;
pub mod pipe;
pub mod quic;
pub mod tls;

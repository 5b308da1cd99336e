//! The sans-IO core: every protocol state machine and codec. Nothing here opens a socket,
//! starts a thread, reads a clock or draws unseeded randomness; time comes in as `now`,
//! packets come in as bytes, and what to send comes out as [`Transmit`]s.

pub mod classify;
pub mod punch;
pub mod rendezvous;
pub mod server;
/// Simulated NATs and servers for tests (and, with the `sim` feature, for other crates).
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod stun;
pub mod wire;

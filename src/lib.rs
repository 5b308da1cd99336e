//! punchraw: NAT behaviour discovery and hole punching at packet level.
//!
//! The protocol logic is sans-IO: [`stun`] is the wire codec, [`server`] answers STUN
//! requests, [`classify`] is the NAT classifier state machine, [`wire`] reads captured TCP/ICMP packets. None of them touches a socket
//! or reads a clock; [`sys`] holds the operating-system side and the drivers that feed them.

pub mod error;
pub mod punch;
pub mod rendezvous;
pub mod server;
pub mod sim;
pub mod stun;
pub mod sys;
pub mod wire;

pub use error::Error;
pub mod classify;

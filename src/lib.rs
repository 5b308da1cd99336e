//! punchraw: NAT behaviour discovery and hole punching at packet level.
//!
//! The crate is layered; see `ARCHITECTURE.md` for what may import what:
//! - [`core`]: sans-IO state machines and codecs (STUN, the STUN server's answers, the NAT
//!   classifiers, the rendezvous, the punch). No sockets, clocks or unseeded randomness.
//! - [`os`]: the operating system (raw sockets, AF_PACKET, nft, privileges, signals); the
//!   only module with `unsafe`.
//! - [`transport`]: the encrypted streams over a punched path (QUIC, TLS).
//! - [`driver`]: one thin loop per command feeding the core from `os` and `transport`.
//! - [`cli`]: clap, messages, exit codes.

// `unsafe` lives in `os` alone, and there every block says why it is sound.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cli;
pub mod core;
pub mod driver;
pub mod error;
#[allow(unsafe_code)]
pub mod os;
pub mod transport;

pub use error::Error;

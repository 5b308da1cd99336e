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
//! - [`api`]: the same commands for programs that embed punchraw.
//!
//! Beside them, `sim` (tests only) simulates NATs and networks on a virtual clock.

// `unsafe` lives in `os` alone, and there every block says why it is sound.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
// Everything public is documented: the crate is also a library (`api`, and the layers below
// it for those who drive a machine themselves).
#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod core;
pub mod driver;
pub mod error;
#[allow(unsafe_code)]
pub mod os;
/// Simulated NATs and networks on a virtual clock, driving the real core machines: the
/// tests' stand-in for the lab (and, with the `sim` feature, other crates'). Test support,
/// not a layer: it may read the clock once for its virtual clock's origin.
#[cfg(any(test, feature = "sim"))]
#[allow(missing_docs)]
pub mod sim;
pub mod transport;

pub use error::Error;

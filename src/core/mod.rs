//! The sans-IO core: every protocol state machine and codec. Nothing here opens a socket,
//! starts a thread, reads a clock or draws unseeded randomness; time comes in as `now`,
//! packets come in as bytes, and what to send comes out as [`Transmit`]s; [`Machine`] is the
//! call order every datagram machine follows.

pub mod classify;
pub mod hex;
pub mod pairing;
pub mod portmap;
pub mod punch;
pub mod rendezvous;
pub mod server;
pub mod stun;
pub mod turn;
pub mod wire;

use std::net::SocketAddr;
use std::time::Instant;

/// A datagram a machine wants sent: from the driver's socket number `socket`, to `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Index of the driver's socket to send from, numbered as in [`Machine::handle_input`].
    pub socket: usize,
    /// Where the datagram goes.
    pub dst: SocketAddr,
    /// The datagram's bytes, exactly as they go on the wire.
    pub payload: Vec<u8>,
}

/// How every datagram machine of the core is driven (the NAT classifier, the UDP punch, the
/// rendezvous client), in quinn-proto's `Connection` style. The driver owns the sockets and
/// the clock; in each turn it:
///
/// 1. calls [`handle_input`](Machine::handle_input) for every datagram that arrived, with the
///    time it arrived and the number of the socket it arrived on;
/// 2. calls [`handle_timeout`](Machine::handle_timeout) once [`poll_timeout`](Machine::poll_timeout)
///    has passed (calling it early is harmless);
/// 3. drains [`poll_transmit`](Machine::poll_transmit), sending each datagram as it says;
/// 4. drains [`poll_event`](Machine::poll_event);
/// 5. waits for the next datagram or `poll_timeout`, whichever comes first, and goes round
///    until [`is_done`](Machine::is_done).
///
/// Inputs never block and never fail: a datagram the machine cannot use is dropped, which
/// is what a lost datagram would have done. The TCP planners (`punch::tcp`,
/// `classify::tcp::plan`) follow the same order with actions of their own in place of
/// datagrams.
pub trait Machine {
    /// What the machine reports to the driver through [`poll_event`](Machine::poll_event).
    type Event;
    /// Feeds in one datagram that arrived at `now` on the driver's socket number `socket` from
    /// `from`. Never fails: a datagram the machine cannot use is dropped.
    fn handle_input(&mut self, now: Instant, socket: usize, from: SocketAddr, data: &[u8]);
    /// Lets the machine act on the time `now`: retransmits, next rounds, deadlines. Calling it
    /// before [`poll_timeout`](Machine::poll_timeout) is harmless.
    fn handle_timeout(&mut self, now: Instant);
    /// The next datagram to send, or `None` once the queue is drained.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// When [`handle_timeout`](Machine::handle_timeout) is next due; `None` when no timer is
    /// pending, e.g. once done.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next event for the driver, or `None` once the queue is drained.
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// Whether the machine has finished, successfully or not; the driver stops looping then.
    fn is_done(&self) -> bool;
}

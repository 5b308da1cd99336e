//! The `--report` object of `connect` (and what `crate::api` returns at the end).

use super::{outcome, portmap, OnConnected};
use crate::core::punch::Strategy;
use serde::Serialize;
use std::net::SocketAddr;

/// The `--report` object; its shape is a contract.
#[derive(Debug, Default, Serialize)]
pub struct ConnectReport {
    /// Whether a path to the peer opened and was authenticated (direct or relayed).
    pub connected: bool,
    /// What was punched: "udp" (the QUIC stream) or "tcp" (`--tcp`, the TLS stream).
    pub transport: &'static str,
    /// Our end of the stream's path: the punched socket's address, or our relayed address
    /// when the stream ran through the relay; `null` when none opened.
    pub local: Option<SocketAddr>,
    /// The peer's end of that path: its punched endpoint as we reached it, or its relayed
    /// address; `null` when none opened.
    pub peer: Option<SocketAddr>,
    /// The punch strategy tried ("direct", "predict", "sweep" or "mapped"); `null` when
    /// no punch was planned.
    pub strategy: Option<Strategy>,
    /// From the start of the run until connected, or until the end when never connected.
    pub elapsed_ms: u64,
    /// UDP: punch probes sent; TCP: connection attempts made (first SYNs).
    pub probes_sent: u64,
    /// Why the run failed, with every cause (`a: b: c`); `null` on success.
    pub error: Option<String>,
    /// Bytes carried by the stream, once it ran.
    pub bytes_sent: u64,
    /// Bytes the stream received from the peer and wrote to our output.
    pub bytes_received: u64,
    /// From connected until both directions of the stream were done (its setup and close
    /// included); `null` when no stream ran to its end.
    pub stream_ms: Option<u64>,
    /// The router's port mapping of our punch port, or why there was none; `null` with
    /// `--port-mapping off`.
    pub port_mapping: Option<portmap::MappingReport>,
    /// TCP: SYNs sent to the peer (repeats included) and sockets the punch opened; `null`
    /// for UDP and when no connection came up.
    pub syns_sent: Option<u64>,
    /// TCP: the sockets the punch opened (listener, attempts, accepted connections; the raw
    /// engine's own); `null` as for `syns_sent`.
    pub punch_sockets: Option<u64>,
    /// The stream's path: "direct" (punched) or "relay" (TURN); `null` without a stream.
    pub path: Option<&'static str>,
    /// Our relayed address, when we held an allocation.
    pub relay: Option<SocketAddr>,
    /// From the start until the first byte of the peer's data was handed to our output;
    /// `null` when none came (no stream, or an empty one).
    pub time_to_first_byte_ms: Option<u64>,
    /// From the start until the direct (punched) path carried the stream: the moment the
    /// punch confirmed it, before the stream's first byte; `null` when it never went direct.
    pub time_to_direct_ms: Option<u64>,
    /// From the start until the punch opened the direct path: UDP, the punch confirmed it
    /// (as `time_to_direct_ms`); TCP, the handshake of the connection that carries the
    /// stream completed, before the TLS authentication that `connected` also waits for.
    /// `null` when no hole opened.
    pub time_to_punched_ms: Option<u64>,
    /// UDP: the punch attempts made, more than 1 when lockstep windows missed and both peers
    /// registered again (`crate::core::punch::lockstep::Retry`); `null` with `--tcp` or when
    /// no UDP punch ran.
    pub punch_attempts: Option<u32>,
    /// CPU time (user and system, all threads) this process spent from connected until the
    /// stream was done, the span of `stream_ms`; `null` as that is. What the stream cost the
    /// host, to compare transports by.
    pub stream_cpu_ms: Option<u64>,
    /// The process's CPU time when the stream's path opened ([`ConnectReport::stream_cpu_ms`]
    /// counts from it).
    #[serde(skip)]
    pub(crate) cpu_at_connect: Option<std::time::Duration>,
    /// Where the outcome goes, once the peer is known (not part of the report).
    #[serde(skip)]
    pub(crate) outcome: Option<std::sync::Arc<outcome::OutcomeTo>>,
    #[serde(skip)]
    pub(crate) on_connected: Option<OnConnected>,
}

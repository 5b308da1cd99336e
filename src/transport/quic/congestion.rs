//! quinn's BBR without its stall at the start of every connection.
//!
//! BBR is the controller for a punched path (see the module documentation of `quic`: random
//! loss is not congestion). But quinn's BBR (quinn-proto 0.11.19) opens every connection in
//! PROBE_RTT: it keeps no time of a last RTT probe before the first one, takes that for an
//! expired probe, and at its first acknowledgement holds the window at four packets for
//! 200 ms and a round trip more. Every transfer paid that at its start: in the lab at 0 ms the
//! first 200 ms of a 256 MiB stream moved ~10 MiB at four packets per round trip, the rest
//! ~800 MiB/s; on a 160 ms path it is a second of four packets per round trip. Its later
//! probes (every 10 s) hold the window down the same way, and buy nothing here: quinn's BBR
//! takes its minimum RTT from the connection's all-time minimum, not from the probe.
//!
//! So a CUBIC controller runs beside BBR on the same events, and the window is the larger of
//! the two. While BBR probes, CUBIC's slow start (or its congestion avoidance) carries the
//! stream, and it is bounded by loss like any TCP. Once loss shows, CUBIC's window shrinks
//! with every loss, so on a lossy path the window is BBR's, as before; on a clean one BBR's
//! grows past CUBIC's. Nothing else changes: pacing follows the window quinn is given.
//!
//! Measured (lab, two port-restricted cones, one way, 2026-12-06): at 0 ms without loss a
//! 256 MiB stream took 530-580 ms with BBR alone (3 runs; ~200 ms of it the probe) and
//! 360-390 ms with CUBIC beside it. `tools/bench-stream.sh` with CUBIC beside, MiB/s, QUIC
//! against TLS over the TCP punch in the same runs: 0 ms with 1% loss at each NAT 188 / 95,
//! 5%: 82 / 57; 40 ms one way with 1%: 9.9 / 5.3, 5%: 2.0 / 1.4 -- the lossy paths still run
//! on BBR's window.

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;
use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

/// The controller quinn runs: BBR and CUBIC on the same events, the larger window.
pub(super) struct BbrBeside {
    bbr: Box<dyn Controller>,
    cubic: Box<dyn Controller>,
}

impl BbrBeside {
    fn larger(&self) -> &dyn Controller {
        if self.cubic.window() > self.bbr.window() {
            self.cubic.as_ref()
        } else {
            self.bbr.as_ref()
        }
    }
}

impl Controller for BbrBeside {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.bbr.on_sent(now, bytes, last_packet_number);
        self.cubic.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.bbr.on_ack(now, sent, bytes, app_limited, rtt);
        self.cubic.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.bbr
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        self.cubic
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.bbr
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        self.cubic
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.bbr.on_mtu_update(new_mtu);
        self.cubic.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.larger().window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.larger().metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(BbrBeside {
            bbr: self.bbr.clone_box(),
            cubic: self.cubic.clone_box(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.bbr.initial_window().max(self.cubic.initial_window())
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Builds a [`BbrBeside`] for every connection (quinn's `congestion_controller_factory`).
#[derive(Debug, Default)]
pub(super) struct BbrBesideConfig;

impl ControllerFactory for BbrBesideConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(BbrBeside {
            bbr: Arc::new(BbrConfig::default()).build(now, current_mtu),
            cubic: Arc::new(CubicConfig::default()).build(now, current_mtu),
        })
    }
}

#[cfg(test)]
mod tests;

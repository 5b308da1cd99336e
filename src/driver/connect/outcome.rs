//! The outcome report (issue #15): once a connect has come to something -- a stream on its
//! final path, or a failure -- one message to the rendezvous server saying what, signed with
//! the session's rendezvous key so the server counts it only for a session it introduced.
//! Sent once per run, twice over (a lost datagram is the usual loss; the server counts one
//! per session), from a fresh socket: the punched one carries the stream by then.

use super::ConnectReport;
use crate::core::punch::Strategy;
use crate::core::rendezvous::{Msg, NatInfo, Outcome};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::debug;

/// Where and as whom the outcome is reported.
pub(crate) struct OutcomeTo {
    pub(super) server: SocketAddr,
    pub(super) session: String,
    pub(super) peer_id: String,
    /// The rendezvous key (the one the server holds), not the punch key.
    pub(super) key: [u8; 32],
    pub(super) nat: NatInfo,
    pub(super) peer_nat: NatInfo,
    pub(super) transport: &'static str,
    pub(super) sent: AtomicBool,
}

impl std::fmt::Debug for OutcomeTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutcomeTo")
            .field("server", &self.server)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl OutcomeTo {
    /// Connected, the stream on `path`, after the report's `elapsed_ms`.
    pub(super) fn send_success(&self, report: &ConnectReport, path: Option<&str>) {
        self.send("success", report.strategy, path, Some(report.elapsed_ms));
    }

    /// Sends the outcome unless one was sent already this run.
    pub(super) fn send(
        &self,
        result: &str,
        strategy: Option<Strategy>,
        path: Option<&str>,
        time_to_connected_ms: Option<u64>,
    ) {
        if self.sent.swap(true, Ordering::Relaxed) {
            return;
        }
        let msg = Msg::Outcome {
            session: self.session.clone(),
            peer: self.peer_id.clone(),
            outcome: Outcome {
                result: result.into(),
                strategy: strategy.map(|s| s.as_str().into()),
                path: path.map(Into::into),
                transport: self.transport.into(),
                nat: self.nat,
                peer_nat: self.peer_nat,
                time_to_connected_ms,
            },
            mac: String::new(),
        }
        .encode_signed(&self.key);
        let any: SocketAddr = match self.server {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        // Best effort: the metrics miss one connect if this fails, nothing else does.
        let sent = UdpSocket::bind(any).and_then(|s| {
            s.send_to(&msg, self.server)?;
            s.send_to(&msg, self.server)
        });
        debug!(
            result,
            path,
            ok = sent.is_ok(),
            "outcome reported to the rendezvous server"
        );
    }
}

impl ConnectReport {
    /// The stream's path is settled (`path`): the outcome is success on it.
    pub(super) fn path_settled(&self) {
        if let Some(o) = &self.outcome {
            o.send_success(self, self.path);
        }
    }
}

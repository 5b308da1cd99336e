//! The stream once a path is open: QUIC on the punched socket, or through the relay when no
//! hole opened (RFC 8656: between the two peers' relayed transport addresses).

use super::relay::Relay;
use super::tcp_punch;
use super::{ConnectConfig, ConnectReport};
use crate::core::punch::Strategy;
use crate::core::rendezvous::RelayOffer;
use crate::driver::Status;
use crate::error::StreamError;
use crate::os::signals::Shutdown;
use crate::transport::quic::{self, Identity, Path, Role};
use crate::transport::StreamStats;
use crate::Error;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Carries stdin/stdout over QUIC on the punched socket.
pub(super) fn stream_udp(
    cfg: &ConnectConfig,
    status: &Status,
    started: Instant,
    report: &mut ConnectReport,
    punched: UdpPunched,
    identity: &Identity,
    shutdown: &Shutdown,
) -> Result<(), Error> {
    report.local = Some(punched.local);
    report.peer = Some(punched.remote);
    report.connected = true;
    report.path = Some("direct");
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report.time_to_direct_ms = Some(report.elapsed_ms);
    report.time_to_punched_ms = Some(report.elapsed_ms);
    report.path_settled();
    report.now_connected();
    status.say(format!(
        "connected to {} via {} in {} ms ({} probes); starting the encrypted stream",
        punched.remote,
        punched.strategy.as_str(),
        report.elapsed_ms,
        report.probes_sent
    ));
    let role = if punched.controlling {
        Role::Client
    } else {
        Role::Server
    };
    let mut first = FirstByte::new(cfg)?;
    let stats = run_quic(
        Path::Udp(punched.socket),
        punched.remote,
        role,
        identity,
        punched.peer_fp,
        cfg,
        shutdown,
        first.writer(),
    );
    first.report(report, started);
    done(report, status, stats?, started);
    Ok(())
}

/// Carries stdin/stdout over TLS on the punched TCP connection.
pub(super) fn stream_tcp(
    cfg: &ConnectConfig,
    status: &Status,
    started: Instant,
    report: &mut ConnectReport,
    punched: tcp_punch::Punched,
    strategy: Strategy,
    shutdown: &Shutdown,
) -> Result<(), Error> {
    report.probes_sent = punched.conn.attempts;
    report.syns_sent = Some(punched.conn.syns);
    report.punch_sockets = Some(punched.conn.sockets);
    report.local = Some(punched.conn.local);
    report.peer = Some(punched.conn.remote);
    report.connected = true;
    report.path = Some("direct");
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report.time_to_direct_ms = Some(report.elapsed_ms);
    report.time_to_punched_ms = Some(
        punched
            .conn
            .up_at
            .saturating_duration_since(started)
            .as_millis() as u64,
    );
    report.path_settled();
    status.say(format!(
        "connected to {} via {} in {} ms ({} connection attempt(s)); TLS authenticated, starting the stream",
        punched.conn.remote,
        strategy.as_str(),
        report.elapsed_ms,
        punched.conn.attempts
    ));
    report.now_connected();
    let mut first = FirstByte::new(cfg)?;
    let stats = tcp_punch::transfer(punched, cfg.io.input()?, first.writer(), shutdown);
    first.report(report, started);
    done(report, status, stats?, started);
    Ok(())
}

/// The QUIC stream over `path` between stdin/stdout (through `first`) and the peer at `peer`.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_quic(
    path: Path,
    peer: SocketAddr,
    role: Role,
    identity: &Identity,
    peer_fp: [u8; 32],
    cfg: &ConnectConfig,
    shutdown: &Shutdown,
    first: OutputWriter,
) -> Result<StreamStats, Error> {
    quic::run_stream_on(
        path,
        peer,
        role,
        identity,
        peer_fp,
        cfg.io.input()?,
        first,
        cfg.keepalive,
        Duration::from_secs(10),
        shutdown,
    )
    .map_err(|e| match e {
        StreamError::Interrupted => shutdown.interrupted(),
        e => e.into(),
    })
}

/// Notes when the first byte of the peer's data is written to the stream's output (stdout,
/// or the embedder's socket): the report's `time_to_first_byte_ms`. The output thread writes
/// each chunk as soon as the stream hands it over, so this is when the byte arrived, give or
/// take a thread switch.
pub(super) struct FirstByte {
    at: Arc<OnceLock<Instant>>,
    out: Option<Box<dyn Write + Send>>,
}

impl FirstByte {
    pub(super) fn new(cfg: &ConnectConfig) -> Result<FirstByte, Error> {
        Ok(FirstByte {
            at: Arc::new(OnceLock::new()),
            out: Some(cfg.io.output()?),
        })
    }

    /// The output for the stream's pump, which owns it: when the pump is done with it, the
    /// output is closed (the embedder reads EOF then, not when the whole stream ends).
    pub(super) fn writer(&mut self) -> OutputWriter {
        OutputWriter {
            at: Arc::clone(&self.at),
            out: self.out.take().unwrap_or_else(|| Box::new(std::io::sink())),
        }
    }

    /// Sets the report's field, also when the stream failed after data came.
    pub(super) fn report(&self, report: &mut ConnectReport, started: Instant) {
        report.time_to_first_byte_ms = self
            .at
            .get()
            .map(|t| t.saturating_duration_since(started).as_millis() as u64);
    }
}

/// The stream's output, stamping the first byte ([`FirstByte`]).
pub(super) struct OutputWriter {
    at: Arc<OnceLock<Instant>>,
    out: Box<dyn Write + Send>,
}

impl Write for OutputWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !buf.is_empty() {
            self.at.get_or_init(Instant::now);
        }
        self.out.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if !buf.is_empty() {
            self.at.get_or_init(Instant::now);
        }
        self.out.write_all(buf)
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        if bufs.iter().any(|b| !b.is_empty()) {
            self.at.get_or_init(Instant::now);
        }
        self.out.write_vectored(bufs)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

pub(super) fn done(
    report: &mut ConnectReport,
    status: &Status,
    stats: quic::StreamStats,
    started: Instant,
) {
    report.bytes_sent = stats.sent;
    report.bytes_received = stats.received;
    let total = started.elapsed().as_millis() as u64;
    report.stream_ms = Some(total.saturating_sub(report.elapsed_ms));
    report.stream_cpu_ms = report
        .cpu_at_connect
        .zip(crate::os::cpu_time())
        .map(|(from, to)| to.saturating_sub(from).as_millis() as u64);
    status.say(format!(
        "done: {} bytes sent, {} bytes received",
        stats.sent, stats.received
    ));
}

/// A punched UDP path.
pub(super) struct UdpPunched {
    pub socket: UdpSocket,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub peer_fp: [u8; 32],
    /// The side with the larger id is the QUIC client.
    pub controlling: bool,
    pub strategy: Strategy,
}

/// What the fallback needs to know of the rendezvous.
pub(super) struct RelayPeer {
    /// The peer's offer, if it made one.
    pub offer: Option<RelayOffer>,
    pub peer_id: String,
    /// The punch key, under which the peer MACed its offer.
    pub key: [u8; 32],
    /// The side with the larger id is the QUIC client (as after a punch).
    pub controlling: bool,
}

/// After a failed punch: when both sides hold allocations, the stream runs between the two
/// relayed addresses (a channel toward the peer's, RFC 8656 section 12); `failed` is
/// returned otherwise (or when the peer's offer does not verify, which says so).
#[allow(clippy::too_many_arguments)]
pub(super) fn stream_relayed(
    cfg: &ConnectConfig,
    status: &Status,
    started: Instant,
    report: &mut ConnectReport,
    relay: Option<&Relay>,
    peer: RelayPeer,
    identity: &Identity,
    shutdown: &Shutdown,
    failed: Error,
) -> Result<(), Error> {
    let Some(relay) = relay else {
        return Err(failed);
    };
    let Some(offer) = peer.offer else {
        status
            .say("relay: the peer offered no relayed address, so there is no relayed path either");
        return Err(failed);
    };
    let Some((peer_relayed, peer_fp)) =
        crate::core::turn::offer::verify_offer(&peer.key, &peer.peer_id, &offer)
    else {
        status
            .say("relay: the peer's relayed offer does not verify under our secret; not using it");
        return Err(failed);
    };
    let Some(link) = relay.link(peer_relayed) else {
        status.say("relay: our allocation is gone; no relayed path");
        return Err(failed);
    };
    status.say(format!("warning: {failed}"));
    report.local = Some(link.local);
    report.peer = Some(peer_relayed);
    report.connected = true;
    report.path = Some("relay");
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report.path_settled();
    report.now_connected();
    status.say(format!(
        "no direct path: the stream goes through the relay {} (our relayed address {}, the peer's {}); starting the encrypted stream",
        relay.server, link.local, peer_relayed
    ));
    let role = if peer.controlling {
        Role::Client
    } else {
        Role::Server
    };
    let mut first = FirstByte::new(cfg)?;
    let stats = run_quic(
        Path::Relayed(link),
        peer_relayed,
        role,
        identity,
        peer_fp,
        cfg,
        shutdown,
        first.writer(),
    );
    first.report(report, started);
    let stats = stats.map_err(|e| relay_lost(relay, e))?;
    done(report, status, stats, started);
    Ok(())
}

/// A relayed stream's failure, said in terms of the relay when the relay is what stopped
/// (its host refuses our datagrams, or a Refresh failed): QUIC itself only sees silence
/// until its idle timeout. Exit 9 either way; an authentication failure stays one.
pub(super) fn relay_lost(relay: &Relay, e: Error) -> Error {
    match e {
        Error::Stream(ref s) if !s.is_auth_failure() => match relay.lost() {
            Some((why, closed_by_us)) => {
                tracing::debug!(error = %e.chain(), "the relayed stream ended");
                Error::RelayLost {
                    server: relay.server,
                    why,
                    stream: (!closed_by_us).then(|| Box::new(e)),
                }
            }
            None => Error::context(
                format!("the relayed stream through {} failed", relay.server),
                e,
            ),
        },
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `stream_cpu_ms` is the CPU spent between connected and done, not the whole run's.
    #[test]
    fn the_streams_cpu_time_counts_from_connected() {
        let started = Instant::now();
        let mut report = ConnectReport::default();
        report.now_connected();
        let from = crate::os::cpu_time().expect("getrusage");
        // Work until this process has used 20 ms more (bounded, should the count not move).
        let mut x = 0u64;
        while crate::os::cpu_time().is_some_and(|t| t < from + Duration::from_millis(20))
            && started.elapsed() < Duration::from_secs(10)
        {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let stats = quic::StreamStats {
            sent: 1,
            received: 2,
        };
        done(&mut report, &Status::silent(), stats, started);
        let cpu = report.stream_cpu_ms.expect("set at done");
        assert!(cpu >= 20, "{cpu} ms");
    }
}

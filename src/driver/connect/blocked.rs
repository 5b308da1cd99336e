//! `connect` when UDP to the server gets no answer but TCP does (issue #12, "UDP blocked"):
//! no NAT to classify and no hole to punch, so the rendezvous runs over the TCP connection
//! that answered STUN (frames of docs/rendezvous.md, "Over TCP"), the allocation on the
//! server's relay over TCP to the same port, and the stream goes through the relay. Our
//! register says `udp_blocked`, so the peer skips its punch too and relays at once.

use super::classify::UdpBlocked;
use super::relay::{self, Relay, RelayMode, RelayTransport};
use super::rendezvous::{hex_id, rendezvous_on, RelayState, Wire};
use super::stream::{stream_relayed, RelayPeer};
use super::{ConnectConfig, ConnectReport};
use crate::core::punch::derive_key;
use crate::core::rendezvous::client::ClientConfig;
use crate::core::rendezvous::{stream_frame_len, to_stream_frame, NatInfo, StreamFrame};
use crate::driver::Status;
use crate::os::signals::Shutdown;
use crate::transport::quic::Identity;
use crate::Error;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The error a relayed stream reports if it cannot start: no hole was ever tried.
fn no_punch(explanation: &str) -> Error {
    Error::PunchFailed {
        strategy: "none",
        probes: 0,
        explanation: explanation.into(),
    }
}

/// The peer's UDP is blocked: punching toward it would burn the budget for nothing.
pub(super) fn peer_blocked(status: &Status) -> Error {
    status.say("the peer's UDP is blocked (it met the server over TCP); not punching, going straight to the relay");
    no_punch("the peer's UDP is blocked, so no hole can open toward it")
}

/// Rendezvous frames on the TCP connection to the server.
struct TcpWire {
    stream: TcpStream,
    server: SocketAddr,
    buf: Vec<u8>,
}

impl Wire for TcpWire {
    fn send(&mut self, _dst: SocketAddr, payload: &[u8]) {
        if let Some(frame) = to_stream_frame(payload) {
            if let Err(e) = self.stream.write_all(&frame) {
                tracing::debug!(error = %e, "rendezvous send over tcp failed");
            }
        }
    }

    fn recv(
        &mut self,
        wait: Duration,
        out: &mut [u8],
    ) -> Result<Option<(usize, SocketAddr)>, Error> {
        let gone = |why: &str| {
            Error::io(
                format!("the rendezvous connection to {}", self.server),
                io::Error::new(io::ErrorKind::ConnectionAborted, why.to_string()),
            )
        };
        loop {
            match stream_frame_len(&self.buf) {
                StreamFrame::Complete(n) => {
                    let frame: Vec<u8> = self.buf.drain(..n).collect();
                    let Some(d) = crate::core::rendezvous::from_stream_frame(&frame) else {
                        return Err(gone("bad frame"));
                    };
                    let len = d.len().min(out.len());
                    out[..len].copy_from_slice(&d[..len]);
                    return Ok(Some((len, self.server)));
                }
                StreamFrame::Invalid => return Err(gone("the server sent a bad frame")),
                StreamFrame::Incomplete => {}
            }
            self.stream
                .set_read_timeout(Some(wait))
                .map_err(|e| Error::io("socket option", e))?;
            let mut chunk = [0u8; 2048];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(gone("closed by the server")),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(Error::io("the rendezvous connection", e)),
            }
        }
    }
}

/// The whole run after the classification found UDP blocked; `relay` (allocating over UDP,
/// which cannot work) is replaced.
#[allow(clippy::too_many_arguments)]
pub(super) fn connect(
    cfg: &ConnectConfig,
    status: &Status,
    started: Instant,
    report: &mut ConnectReport,
    blocked: UdpBlocked,
    relay: Option<Relay>,
    secret: String,
    shutdown: &Shutdown,
) -> Result<(), Error> {
    drop(relay);
    if cfg.relay == RelayMode::Off {
        return Err(no_punch(
            "UDP to the server is blocked and --relay off leaves no other path",
        ));
    }
    let deadline = started + cfg.timeout;
    let relay = relay::begin_over(cfg, status, &secret, deadline, &RelayTransport::Tcp);
    let (relay, refused) = relay::settled(relay, cfg, status, &|| shutdown.requested())?;
    let identity = Identity::generate()?;
    let key = derive_key(secret.as_bytes(), &cfg.session);
    let my_id = hex_id();
    let fingerprint = identity.fingerprint();
    let offer_of = |a| crate::core::turn::offer::make_offer(&key, &my_id, a, &fingerprint);
    let client = ClientConfig {
        server: cfg.server,
        session: cfg.session.clone(),
        secret: secret.clone().into_bytes(),
        peer_id: my_id.clone(),
        // Nothing to punch from, so nothing for the peer to try on a shared LAN either.
        locals: Vec::new(),
        nat: NatInfo::unknown(),
        tcp: None,
        mapped: None,
        relayed: relay.as_ref().and_then(|r| r.relayed()).map(offer_of),
        rtt: Duration::from_millis(50),
        deadline,
        timeout: cfg.timeout,
        start_delay: cfg.start_delay,
        range_drift: None,
        udp_blocked: true,
        relay_hold: true,
    };
    let offer = |session_exists: bool| match relay.as_ref().map(|r| r.poll_state(session_exists)) {
        Some(relay::State::Allocated(a)) => RelayState::Offer(offer_of(a)),
        Some(relay::State::Allocating { .. }) => RelayState::Pending,
        _ => RelayState::GivenUp,
    };
    let offer = relay
        .as_ref()
        .map(|_| &offer as &dyn Fn(bool) -> RelayState);
    let from = blocked.stream.local_addr().unwrap_or(blocked.binding.local);
    status.say(format!(
        "rendezvous over TCP with {} (from {from}, seen as {})",
        cfg.server, blocked.binding.mapped
    ));
    let _ = blocked.stream.set_nodelay(true);
    let mut wire = TcpWire {
        stream: blocked.stream,
        server: cfg.server,
        buf: Vec::new(),
    };
    let met = rendezvous_on(&mut wire, client, None, None, offer, shutdown, status);
    report.relay = relay.as_ref().and_then(|r| r.relayed());
    let intro = met?;
    let peer = RelayPeer {
        offer: intro.peer.relayed.clone(),
        peer_id: intro.peer.id.clone(),
        key,
        controlling: my_id > intro.peer.id,
    };
    let failed = relay::no_direct_path(
        relay.as_ref(),
        refused,
        no_punch("UDP to the server is blocked, so no hole can be punched"),
    );
    stream_relayed(
        cfg,
        status,
        started,
        report,
        relay.as_ref(),
        peer,
        &identity,
        shutdown,
        failed,
    )
}

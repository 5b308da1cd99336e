//! The rendezvous client's driver: a blocking loop on the punching socket around the sans-IO
//! [`Client`], which holds every rule (timers, messages, errors).

use super::tcp_punch::TcpPrep;
use crate::core::rendezvous::client::{Client, ClientConfig, ClientEvent, Introduction};
use crate::core::rendezvous::{RelayOffer, TcpOffer};
use crate::core::Machine;
use crate::driver::Status;
use crate::os::signals::Shutdown;
use crate::Error;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// The longest a receive blocks: the bound on noticing Ctrl-C.
const POLL: Duration = Duration::from_millis(50);

/// Our TCP prediction while the rendezvous runs, and how to make it anew.
pub(super) struct TcpOfferState<'a> {
    pub prep: TcpPrep,
    pub redo: &'a dyn Fn() -> Result<(TcpPrep, TcpOffer), Error>,
}

impl TcpOfferState<'_> {
    /// A new prediction and its offer; `None` keeps the old ones.
    fn refresh(&mut self, status: &Status) -> Option<TcpOffer> {
        match (self.redo)() {
            Ok((prep, offer)) => {
                tracing::info!("{}", prep.describe());
                self.prep = prep;
                Some(offer)
            }
            // The old prediction is still the best there is.
            Err(e) => {
                status.say(format!("warning: cannot refresh the TCP prediction: {e}"));
                None
            }
        }
    }
}

/// Where our relayed offer stands while we meet the peer.
pub(super) enum RelayState {
    Offer(RelayOffer),
    Pending,
    GivenUp,
}

/// Where the rendezvous messages travel: UDP datagrams, or frames on a TCP connection when
/// UDP is blocked (`super::blocked`).
pub(super) trait Wire {
    /// A lost message is replaced by the next one, so errors are only logged.
    fn send(&mut self, dst: SocketAddr, payload: &[u8]);
    /// One message and its source, or `None` after `wait` of silence; an error only when the
    /// wire is gone for good.
    fn recv(
        &mut self,
        wait: Duration,
        buf: &mut [u8],
    ) -> Result<Option<(usize, SocketAddr)>, Error>;
}

impl Wire for &UdpSocket {
    fn send(&mut self, dst: SocketAddr, payload: &[u8]) {
        let _ = self.send_to(payload, dst);
    }

    fn recv(
        &mut self,
        wait: Duration,
        buf: &mut [u8],
    ) -> Result<Option<(usize, SocketAddr)>, Error> {
        self.set_read_timeout(Some(wait))
            .map_err(|e| Error::io("socket option", e))?;
        // Errors (a timeout, an ICMP error reported on the socket) are like silence: the
        // client's own timers decide when silence is too long.
        Ok(self.recv_from(buf).ok())
    }
}

/// Registers from `sock` until the server introduces the peer, it refuses, or time runs out.
/// `cfg` and `seq` make the client ([`Client::continuing`] `seq`, 0 for the first); returns
/// the introduction and the number of the last register sent.
#[allow(clippy::too_many_arguments)]
pub(super) fn rendezvous(
    sock: &UdpSocket,
    cfg: ClientConfig,
    seq: u64,
    tcp: Option<&mut TcpOfferState<'_>>,
    counter: Option<&dyn Fn() -> Option<u16>>,
    relayed: Option<&dyn Fn(bool) -> RelayState>,
    shutdown: &Shutdown,
    status: &Status,
) -> Result<(Introduction, u64), Error> {
    sock.set_nonblocking(false)
        .map_err(|e| Error::io("socket option", e))?;
    let client = Client::new(cfg, Instant::now()).continuing(seq);
    rendezvous_with(
        &mut { sock },
        client,
        tcp,
        counter,
        relayed,
        shutdown,
        status,
    )
}

/// [`rendezvous`] over any [`Wire`].
pub(super) fn rendezvous_on(
    wire: &mut dyn Wire,
    cfg: ClientConfig,
    tcp: Option<&mut TcpOfferState<'_>>,
    counter: Option<&dyn Fn() -> Option<u16>>,
    relayed: Option<&dyn Fn(bool) -> RelayState>,
    shutdown: &Shutdown,
    status: &Status,
) -> Result<Introduction, Error> {
    let client = Client::new(cfg, Instant::now());
    rendezvous_with(wire, client, tcp, counter, relayed, shutdown, status).map(|(i, _)| i)
}

/// [`rendezvous_on`] with a client made by the caller.
fn rendezvous_with(
    wire: &mut dyn Wire,
    mut client: Client,
    mut tcp: Option<&mut TcpOfferState<'_>>,
    counter: Option<&dyn Fn() -> Option<u16>>,
    relayed: Option<&dyn Fn(bool) -> RelayState>,
    shutdown: &Shutdown,
    status: &Status,
) -> Result<(Introduction, u64), Error> {
    let session = client.config().session.clone();
    let mut buf = [0u8; 2048];
    // The first peer's allocation exists only once its register created the session.
    let mut offered = client.config().relayed.is_some() || relayed.is_none();
    if !offered {
        client.relay_pending();
    }
    loop {
        if !offered {
            // Told whether the session exists yet: a relay waiting to allocate with session
            // credentials tries again at once when it does.
            match relayed.map_or(RelayState::GivenUp, |f| f(client.session_exists())) {
                RelayState::Offer(offer) => {
                    status.say(format!(
                        "relay: allocated; offering our relayed address {}",
                        offer.addr
                    ));
                    client.set_relayed(Instant::now(), offer);
                    offered = true;
                }
                RelayState::Pending => {}
                RelayState::GivenUp => {
                    client.relay_given_up();
                    offered = true;
                }
            }
        }
        if shutdown.requested() {
            return Err(shutdown.interrupted());
        }
        let now = Instant::now();
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_timeout(now);
        }
        // Events before transmits: a refreshed offer must ride the register that is due.
        while let Some(ev) = client.poll_event() {
            match ev {
                ClientEvent::Waiting { wait_left_ms } => status.say(format!(
                    "waiting for the peer in session {session:?} (server holds it {} s more)",
                    wait_left_ms / 1000
                )),
                ClientEvent::StrangerRejected { count } => status.say(format!(
                    "a peer tried to join session {session:?} with another secret ({count} so far); still waiting for one with this secret"
                )),
                ClientEvent::RefreshTcpOffer => {
                    if let Some(offer) = tcp.as_deref_mut().and_then(|t| t.refresh(status)) {
                        client.set_tcp_offer(offer);
                    }
                }
                ClientEvent::MeasureCounter => {
                    if let Some(port) = counter.and_then(|measure| measure()) {
                        client.counter_measured(Instant::now(), port);
                    }
                }
                // Only a pairing client (`pairing.rs`) has a pairing.
                ClientEvent::Paired(_) => {}
                ClientEvent::Introduced(intro) => return Ok((*intro, client.last_seq())),
                ClientEvent::Failed(e) => return Err(e),
            }
        }
        while let Some(t) = client.poll_transmit() {
            wire.send(t.dst, &t.payload);
        }
        let wait = client.poll_timeout().map_or(POLL, |t| {
            t.saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), POLL)
        });
        if let Some((n, from)) = wire.recv(wait, &mut buf)? {
            client.handle_input(Instant::now(), 0, from, &buf[..n]);
        }
    }
}

/// The session's secret: `--secret`, or (with a warning) the session name.
pub(super) fn secret(cfg: &super::ConnectConfig, status: &Status) -> String {
    match &cfg.secret {
        Some(s) => s.clone(),
        None => {
            status.say(
                "warning: no --secret; the session name is the key, so anyone who knows it can pose as the peer",
            );
            cfg.session.clone()
        }
    }
}

/// A random per-run peer id, 16 hex digits.
pub(super) fn hex_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

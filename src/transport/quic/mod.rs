//! A reliable, ordered, encrypted byte stream between two punched peers: QUIC (quinn) on the
//! very UDP socket that punched the hole, so the NAT bindings that the punch opened carry it.
//!
//! There is no CA and no name to check: each side presents a per-run self-signed certificate
//! and pins the peer's by its SHA-256, which it learned from the authenticated punch. The
//! custom verifiers below replace only the chain and name checks; the TLS 1.3 handshake
//! signatures are still verified by rustls' own helpers, so presenting a copied certificate
//! without its private key does not get anyone in.
//!
//! Each direction has a connection of its own, with one unidirectional stream: the client opens
//! both, and the server name it asks for tells the server which is which. Both directions on
//! one connection stall on lossy paths: whenever a connection has stream data waiting, quinn
//! (0.11) sends its ACKs only in packets that congestion control lets through, so with data
//! flowing both ways each side's ACKs wait for the other side's ACKs. Under loss both sides
//! then sit congestion-blocked until a probe timeout, which backs off exponentially and grows
//! with the round-trip estimate that the held-back ACKs inflate; at 36% loss per direction the
//! transfer crawled and died on the idle timeout. On a connection that carries data one way
//! the receiver has only ACKs and flow-control updates to send, so its ACKs go out at once.
//!
//! Setting up: under heavy loss a quinn handshake can stall for longer than any setup budget:
//! when the client's Finished is lost, the client may repeat it only after a probe timeout that
//! is still backed off from the Initial exchange and computed from a round trip inflated by a
//! delayed ACK, while the server drops everything else the client sends. So the client starts
//! a fresh handshake for a direction every second (`ATTEMPT_INTERVAL`) until one is confirmed
//! (the server's HANDSHAKE_DONE arrived, so the server has it too), and then commits to a pair: its
//! stream's first byte names the server-to-client attempt it chose, and the server uses that
//! one and the connection the byte arrived on. The server never starts before the commitment,
//! so the two sides cannot pick different connections.
//!
//! Congestion control is BBR: a loss-based controller (quinn's default is CUBIC) takes random
//! loss for congestion and shrinks its window to two packets, where nearly every loss waits
//! for a probe timeout. Measured in the lab (two port-restricted cones, one way, MiB/s, two
//! runs each, 2026-12-03, other work on the machine): no loss and ~0 RTT: BBR 261/195, CUBIC
//! 308/225; 1% loss at each NAT: BBR 59/52, CUBIC 108/116; 5%: BBR 47/44, CUBIC 3/11; 20%:
//! BBR 4/7, CUBIC 0.3 and one stall; 160 ms RTT, no loss: BBR 7/9, CUBIC 9/9 (the lab's
//! delay element caps those); 1%: BBR 5/5. CUBIC is ahead only on clean or nearly clean
//! paths, by less than a factor of two; BBR keeps lossy ones alive, which is where a punched
//! path across carrier NATs and radio links tends to be. quinn's BBR holds every new
//! connection at a few packets for its first 200 ms, so a CUBIC controller runs beside it and
//! the larger of the two windows counts; and its window is held to twice the bandwidth-delay
//! product that the acknowledgements show, which quinn's estimate sometimes overshot by 100
//! times on a rate-limited link (`congestion`).
//!
//! Pacing: quinn paces at 1.25 x window / smoothed RTT, so a window of twice the
//! bandwidth-delay product sends at about twice the line's rate, and BBR does not answer the
//! loss that follows. Where the line's queue holds less than that excess -- a slow line with a
//! long round trip -- much of it was dropped: 100 Mbit/s each way, 160 ms RTT and a 20 ms queue
//! (`natlab.sh --rate 100 --delay 40`) lost ~43% of the packets of a 32 MiB stream. So the
//! punched socket paces quinn's sends at BBR's gains over the delivery rate the
//! acknowledgements measure (`pace`), and a round of STARTUP that overflows a queue ends it
//! (`congestion`): there ~8% (the first STARTUP's overshoot; TLS over kernel TCP retransmits
//! 22% of its segments in its first slow start), at the same 7.2-8.0 MiB/s; 10 Mbit/s under an
//! 80 ms RTT, 4 MiB: 38% before, ~11% now. The direct leg of a relay-first stream (`upgrade`)
//! is paced the same way, its controllers started over when the stream moves (RFC 9000
//! section 9.4): on that slow line 8-22% of the packets lost (median 10%, 10 runs) instead of
//! 12-33% (median 21%), at the same 6.5-7.4 MiB/s (unpaced 5.8-7.6). A stream through the
//! relay (`relayed`, and the relay leg of relay first) is paced from the same bucket: two
//! random-symmetric NATs on that line, 32 MiB, 9-16% lost instead of 32-37% (3 runs each),
//! at 7.2-7.5 against 7.5-7.6 MiB/s; without the line's limit, at 0 ms 69-74 against
//! 65-78 MiB/s and at 40 ms one way 10.8-12.3 against 11.4-12.2.
//!
//! Ending cleanly: each connection is closed by its sender, with [`CLOSE_DONE`], as soon as all
//! of its data is acknowledged; until then it may need acknowledgements of retransmissions, so
//! the receiver keeps the connection open after reading the FIN and waits for that close. A
//! lost close is repeated by the sender (quinn does so for every packet it receives in its
//! closing period of 3 PTO), so the waiting receiver sends small datagrams to draw it out;
//! after that period the sender's endpoint answers with a stateless reset, which also ends the
//! wait, and `CLOSE_LINGER` (3 s) bounds it in any case. At the end of a stream a side stays
//! for two round trips after its last close, not the whole closing period (`linger_for`): the
//! waiting peer's datagrams reach it well within that. Nothing the receiver still needs
//! hangs on the close: it has all data by then, and data already received stays readable after
//! a close or reset (quinn reads buffered data before reporting the error). A side that fails
//! closes both connections with [`CLOSE_ERROR`] and a reason.
//!
//! Stopping: the caller's [`Shutdown`] flag is polled throughout, setup and transfer alike. A
//! side asked to stop closes everything with [`CLOSE_INTERRUPTED`] and the reason
//! "interrupted", so the peer ends at once with that reason instead of waiting out
//! [`IDLE_TIMEOUT`], and returns [`StreamError::Interrupted`].
//!
//! Here are the public API, the configuration and the error mapping; `setup` brings the two
//! connections up, `transfer` moves the bytes and closes them.

use crate::error::StreamError;
use crate::os::signals::Shutdown;
pub use crate::transport::pin::Identity;
use crate::transport::pin::{self, PinVerifier};
use crate::transport::pipe::{read_input, write_output, CHANNEL_DEPTH};
pub use crate::transport::{Role, StreamStats};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    AckFrequencyConfig, ConnectionError, Endpoint, EndpointConfig, ReadError, Runtime,
    TokioRuntime, TransportConfig, TransportErrorCode, VarInt, WriteError,
};
use rustls::crypto::CryptoProvider;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::pin::pin;
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info};

mod congestion;
mod gso;
mod pace;
mod relayed;
mod reorder;
mod setup;
mod transfer;
pub mod upgrade;

pub use relayed::{RelayLink, RelaySend};

/// What QUIC runs on: the punched socket, or a TURN allocation (`relayed`).
pub enum Path {
    /// Directly on the punched UDP socket; QUIC sends to the peer's punched endpoint.
    Udp(UdpSocket),
    /// Through our TURN allocation only; the peer is addressed by its relayed address.
    Relayed(RelayLink),
    /// Through the relay until a punch hands over a direct path ([`upgrade`]).
    RelayFirst(RelayLink, Arc<upgrade::Upgrade>),
}

/// The only application protocol spoken; a peer of another version fails the handshake
/// instead of misreading the stream. Version 1 carried both directions on one connection.
pub const ALPN: &[u8] = b"punchraw/2";
/// Without a keep-alive or data for this long, the connection counts as lost.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Application close code of a connection's sender: "you acknowledged all of my data". From a
/// receiver that gave up waiting for that close: "I have read your whole stream".
pub const CLOSE_DONE: u32 = 0;
/// Application close code for every failure; the reason text says which.
pub const CLOSE_ERROR: u32 = 1;
/// Application close code of a side that was asked to stop (Ctrl-C, SIGTERM). A peer that
/// predates it reads it as any other failure, by its reason.
pub const CLOSE_INTERRUPTED: u32 = 2;
/// Stream stop code: our output failed, so we will not read further.
const STOP_OUTPUT_FAILED: u32 = 1;
/// Upper bound on waiting for our close to reach the peer (quinn waits 3 PTO, which on a
/// bad path could be long; the peer's idle timeout is the fallback), and on waiting for the
/// peer's close of a connection whose data we have read.
const CLOSE_LINGER: Duration = Duration::from_secs(3);
/// The shortest wait after our close at the end of a stream: a short path's scheduling.
const LINGER_MIN: Duration = Duration::from_millis(10);

/// How long the endpoint stays after our last close, for a peer whose copy of it was lost.
/// That peer sends a datagram every quarter of a round trip while it waits (see
/// `transfer`'s `await_close`), each of which draws the close again while we are still there
/// (quinn repeats it in its closing period), and the first of them reaches us within about a
/// round trip of our close: two round trips answer several. quinn's own closing period, 3 PTO,
/// was spent after every stream -- 21 ms at 0 ms and ~820 ms at 160 ms RTT in the lab -- where
/// a TLS stream simply ends. A peer that never gets our close still ends by its own bound
/// ([`CLOSE_LINGER`]), successfully: it has all our data by then. No RTT known (no
/// connection): [`CLOSE_LINGER`].
fn linger_for(rtt: Option<Duration>) -> Duration {
    rtt.map_or(CLOSE_LINGER, |r| (r * 2).clamp(LINGER_MIN, CLOSE_LINGER))
}

/// What is left of [`linger_for`] once the stream is done, counted from our last close that
/// the peer may wait for, `since_close` ago (`None`: a close made now). That close is the one
/// of the direction we sent on, which on the receiving side of a one-way transfer came right
/// at the start (its stream was empty): the peer's datagrams for it came and went long before
/// the end, and staying on only delayed our exit by two round trips (320 ms on a 160 ms path).
fn linger_left(rtt: Option<Duration>, since_close: Option<Duration>) -> Duration {
    linger_for(rtt).saturating_sub(since_close.unwrap_or_default())
}

/// Datagrams sent at most to draw out a lost close: few enough that unacknowledged ones never
/// fill the congestion window, which would hold back our ACKs (see the module documentation).
const CLOSE_PROBES: u32 = 40;
/// Bounds of the interval between them, a quarter of the round trip, so that several fall into
/// the sender's closing period of 3 PTO (each at least a round trip).
const CLOSE_PROBE_INTERVAL: (Duration, Duration) =
    (Duration::from_millis(2), Duration::from_millis(100));
/// While no handshake for a direction is confirmed, another one starts this often.
const ATTEMPT_INTERVAL: Duration = Duration::from_secs(1);
/// Handshakes per direction at most; the attempt number travels in one byte.
const MAX_ATTEMPTS: u8 = 10;
/// How often a new connection is checked for the server's HANDSHAKE_DONE (quinn signals no
/// event for it): the runtime's timer resolution. On a short path the frame arrives well
/// within a millisecond of the handshake, and a 5 ms poll made every stream start ~4 ms
/// later (lab, 0 ms: 22 ms from connected to done for an empty stream each way).
const CONFIRM_POLL: Duration = Duration::from_millis(1);
/// Round-trip estimate before the first sample. quinn's default, RFC 9002's 333 ms, makes a
/// handshake wait 1 s, then 2 s, then 4 s to repeat a lost packet, too slow for a 10 s setup
/// budget under heavy loss; on a longer path a low estimate costs a few spurious
/// retransmissions of handshake packets, and the first sample replaces it.
const INITIAL_RTT: Duration = Duration::from_millis(25);
/// Asked of the peer (ACK frequency extension): acknowledge every tenth ack-eliciting packet
/// ([`ACK_ELICITING_THRESHOLD`]), at once when a packet arrives out of order
/// ([`REORDERING_THRESHOLD`]), and otherwise within this delay, or within the RTT when that
/// is shorter (quinn sizes what it asks for from the RTT it measures). quinn's default delay,
/// 25 ms, leaves a lone packet whose partner was lost unacknowledged for 25 ms, and the probe
/// timeout includes the peer's delay, which dominates it on short paths.
///
/// Measured against acknowledging every packet at once, which this replaced (lab, two
/// port-restricted cones, one way, MiB/s, median of 6 alternating runs, 2026-12-07): 0 ms
/// clean 429 / 413 (ACK datagrams 848 / 980 for 128 MiB: on a fast path they coalesce per
/// receive batch either way); 1% loss at each NAT 265 / 210; 5% 100 / 108; 40 ms one way
/// clean 11.8 / 11.1 with 3,900 / 6,000 ACK datagrams for 32 MiB; 1% 10.1 / 9.4; 5% 2.6 /
/// 2.2. Sparser ACKs, gaps still acknowledged at once (4-6 runs per cell): every 16th packet
/// cut the ACKs at 40 ms to ~1,000 at the same speed within the noise (0 ms 1% loss 221-252
/// against 245-247, 5% 105-106 against 101-110, 40 ms 1% 9.0-9.4 against 9.1-9.5), so no
/// clear gain; every 1,024th, which leaves the ACKs to the delay timer, made the clean 0 ms
/// path 7% faster (535 / 501, a quarter of the ACKs) and the lossy ones slower (0 ms 1% 112 /
/// 245, 5% 87 / 110): the sender learns late how much got through.
const MAX_ACK_DELAY: Duration = Duration::from_millis(5);
/// Ack-eliciting packets received without an acknowledgement; the next one is acknowledged
/// (see [`MAX_ACK_DELAY`]). RFC 9000 section 13.2.2 asks for every second packet (quinn's
/// default, 1 here until 2026-12-08); every tenth, as large QUIC deployments do, since each
/// ACK costs the receiver a wake-up and a send across the whole stack, and the sender another
/// wake-up: where a line's rate is low, datagrams arrive one by one and those ACKs were a
/// fifth of the receiver's CPU time. Measured (lab, two port-restricted cones, 32 MiB unless
/// said, 3 alternating runs, MiB/s / CPU ms of both ends): 100 Mbit/s each way and 160 ms RTT,
/// receiver 663-943 -> 548-706 CPU ms, sender 500-660 -> 473-544, at the same 7.3-7.6 MiB/s;
/// 0 ms clean (256 MiB) 506-583 / 812-895 -> 527-575 / 862-918 (on a fast path the ACKs
/// coalesce per receive batch either way); 1% loss at each NAT 203-267 -> 189-340; 5%
/// 96-121 -> 71-119; 40 ms one way with 1% 8.4-12.7 / 500-553 -> 11.1-11.8 / 447-523. A gap
/// is still acknowledged at once ([`REORDERING_THRESHOLD`]), so loss reaches the sender as
/// fast as before; what waits is the news that packets arrived, at most [`MAX_ACK_DELAY`]
/// or the RTT.
const ACK_ELICITING_THRESHOLD: u32 = 9;
/// A gap of one packet is acknowledged at once (RFC 9000 section 13.2.1), so on a lossy path
/// every loss reaches the sender without delay whatever the ACK ratio: the choice follows the
/// loss this path shows, packet by packet. quinn's extension default, 2, waits until the
/// sender could declare the loss.
const REORDERING_THRESHOLD: u32 = 1;
/// The smallest flow-control credit per connection, and send buffer: the bandwidth-delay
/// product of [`TARGET_RATE`] at 200 ms RTT (25 MB), rounded up; paths with a longer RTT get
/// more ([`window_for`]). quinn's defaults (1.25 MB per stream) cap a stream at ~7.8 MB/s on
/// a 160 ms path whatever its capacity. The receiver's pump drains the stream as it arrives,
/// so this is a bound, not an allocation: at most the window waits in memory per direction
/// when the output is slower than the path.
const WINDOW: u32 = 32 * 1024 * 1024;
/// The rate a window is sized for: 1 Gbit/s, in bytes per second.
const TARGET_RATE: u64 = 125_000_000;
/// The largest window, whatever the RTT: it keeps [`TARGET_RATE`] up to a smallest RTT of
/// ~860 ms (geostationary satellite paths are ~600 ms), and bounds what one direction may
/// hold in memory.
const MAX_WINDOW: u64 = 128 * 1024 * 1024;

/// Flow-control credit and send buffer for a path whose smallest RTT so far is `min_rtt`:
/// the bandwidth-delay product of [`TARGET_RATE`] and a quarter more (quinn announces new
/// credit only once an eighth of the window is used, and the sender must not run dry while
/// the announcement travels), within [`WINDOW`] and [`MAX_WINDOW`]. The smallest RTT, not the
/// smoothed one: the queue that a full window builds in front of a slower receiver raises
/// the smoothed RTT, which must not raise the window that fills the queue.
pub(super) fn window_for(min_rtt: Duration) -> u64 {
    let bdp = u128::from(TARGET_RATE) * min_rtt.as_micros() / 1_000_000;
    let window = u64::try_from(bdp * 5 / 4).unwrap_or(u64::MAX);
    window.clamp(u64::from(WINDOW), MAX_WINDOW)
}
/// Socket buffers each way (the kernel grants twice this, for its bookkeeping): room for a
/// whole [`WINDOW`] of datagrams with their per-buffer overhead. On a short path the sender's
/// congestion window is never the limit, so when the receiving runtime falls behind, up to a
/// window is in flight in this buffer; at 8 MiB it overflowed (lab, 0 ms, 1 GiB: 0 to 12,000
/// datagrams dropped per run, `UdpRcvbufErrors`), a loss the congestion controller and the
/// offload switch ([`gso`]) paid for. A bound, not an allocation. Without CAP_NET_ADMIN the
/// kernel caps it at `net.core.rmem_max`.
const SOCKET_BUFFER: usize = WINDOW as usize;
/// Gives a socket that will carry a stream its [`SOCKET_BUFFER`]s; `path` names it in the log.
fn grow_buffers(socket: &std::net::UdpSocket, path: &'static str) {
    let granted = crate::os::udp::grow_buffers(socket, SOCKET_BUFFER);
    debug!(granted, path, "UDP receive buffer");
}
/// Bytes of unread datagrams kept; older ones are dropped.
const DATAGRAM_BUFFER: usize = 4096;
/// Close reasons travel in one packet.
const MAX_REASON: usize = 200;
/// How often the stop flag is looked at: well below what a person notices.
const STOP_POLL: Duration = Duration::from_millis(50);

fn setup_err(what: &str) -> impl FnOnce(rustls::Error) -> StreamError + '_ {
    move |e| StreamError::Setup(format!("{what}: {e}"))
}

/// What each side asks of its peer's acknowledgements: see [`MAX_ACK_DELAY`].
fn ack_frequency() -> AckFrequencyConfig {
    let mut acks = AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(ACK_ELICITING_THRESHOLD.into())
        .reordering_threshold(REORDERING_THRESHOLD.into())
        .max_ack_delay(Some(MAX_ACK_DELAY));
    acks
}

fn transport_config(keepalive: Duration, pace: &Arc<pace::Pace>) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("30 s is a valid idle timeout"),
    ));
    // A zero interval would mean sending keep-alives continuously; treat it as "off".
    t.keep_alive_interval((!keepalive.is_zero()).then_some(keepalive));
    // The sender of each connection opens exactly one unidirectional stream.
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(1u32.into());
    // Random loss is not congestion; see the module documentation.
    t.congestion_controller_factory(Arc::new(congestion::BbrBesideConfig {
        pace: Some(pace.clone()),
    }));
    t.initial_rtt(INITIAL_RTT);
    // The stream's own credit is the largest window, so the connection's credit, which
    // follows the path's RTT (`window_for`, set as the transfer goes), is the one that binds.
    t.stream_receive_window(VarInt::from_u64(MAX_WINDOW).expect("128 MiB is a valid varint"));
    t.receive_window(WINDOW.into());
    t.send_window(u64::from(WINDOW));
    t.ack_frequency_config(Some(ack_frequency()));
    // Allowed here; the socket offers bursts only while the path is clean (`gso`).
    t.enable_segmentation_offload(true);
    // Datagrams carry only repeated ACKs and close probes and are never read: one-byte
    // repeats ([`transfer`]) count against this, so at most this many wait unread.
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    Arc::new(t)
}

fn client_config(
    me: &Identity,
    verifier: Arc<PinVerifier>,
    provider: Arc<CryptoProvider>,
    keepalive: Duration,
    pace: &Arc<pace::Pace>,
) -> Result<quinn::ClientConfig, StreamError> {
    let tls = pin::client_tls(me, verifier, provider, ALPN)
        .map_err(setup_err("TLS client configuration"))?;
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| StreamError::Setup(format!("QUIC client configuration: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config(keepalive, pace));
    Ok(config)
}

fn server_config(
    me: &Identity,
    verifier: Arc<PinVerifier>,
    provider: Arc<CryptoProvider>,
    keepalive: Duration,
    pace: &Arc<pace::Pace>,
) -> Result<quinn::ServerConfig, StreamError> {
    let tls = pin::server_tls(me, verifier, provider, ALPN)
        .map_err(setup_err("TLS server configuration"))?;
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| StreamError::Setup(format!("QUIC server configuration: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config(keepalive, pace));
    Ok(config)
}

/// Runs QUIC on `socket` (already bound, possibly already used for punching; it is handed
/// over) with the peer at `peer`. The client connects; the server accepts only connections
/// from `peer` whose certificate matches the pin, refusing others and waiting on.
///
/// Both sides present their certificate and verify that the peer's SHA-256 equals
/// `peer_fingerprint`. Then `input` is copied to a stream to the peer and the peer's stream to
/// `output`, on a connection per direction; at the end of `input` our stream is finished
/// (half-close). Returns when both directions are done and closed, so the peer exits too.
///
/// `timeout` bounds connection setup (the client's handshake; the server's wait for the
/// authenticated peer), not the transfer, which ends only on a stall of [`IDLE_TIMEOUT`].
/// `keepalive` should be well under [`IDLE_TIMEOUT`] and short enough to keep the NAT
/// bindings open; zero turns keep-alives off.
///
/// Once `stop` is requested, setup or transfer ends: the connections are closed with the
/// reason "interrupted" (the peer fails with that reason) and the result is
/// [`StreamError::Interrupted`].
///
/// Blocking: it runs its own tokio runtime, so it must not be called from async code.
#[allow(clippy::too_many_arguments)]
pub fn run_stream(
    socket: UdpSocket,
    peer: SocketAddr,
    role: Role,
    me: &Identity,
    peer_fingerprint: [u8; 32],
    input: impl Read + Send + 'static,
    output: impl Write + Send + 'static,
    keepalive: Duration,
    timeout: Duration,
    stop: &Shutdown,
) -> Result<StreamStats, StreamError> {
    run_stream_on(
        Path::Udp(socket),
        peer,
        role,
        me,
        peer_fingerprint,
        input,
        output,
        keepalive,
        timeout,
        stop,
    )
}

/// [`run_stream`] on either path: through a relay, `peer` is the peer's relayed address.
#[allow(clippy::too_many_arguments)]
pub fn run_stream_on(
    path: Path,
    peer: SocketAddr,
    role: Role,
    me: &Identity,
    peer_fingerprint: [u8; 32],
    input: impl Read + Send + 'static,
    output: impl Write + Send + 'static,
    keepalive: Duration,
    timeout: Duration,
    stop: &Shutdown,
) -> Result<StreamStats, StreamError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinVerifier::new(peer_fingerprint, provider.clone()));
    // The connections' controllers publish their rates here, and the punched socket paces
    // its sends by them (`pace`).
    let pace = pace::Pace::new();
    let v = verifier.clone();
    let (client, server) = match role {
        Role::Client => (
            Some(client_config(me, v, provider, keepalive, &pace)?),
            None,
        ),
        Role::Server => (
            None,
            Some(server_config(me, v, provider, keepalive, &pace)?),
        ),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StreamError::Setup(format!("cannot start the async runtime: {e}")))?;

    // Input and output are blocking (stdin, stdout, files), so each gets a thread of its own.
    // The reader is never joined: on failure it may sit in a read that never returns.
    let (in_tx, in_rx) = mpsc::channel(CHANNEL_DEPTH);
    thread::Builder::new()
        .name("quic-input".into())
        .spawn(move || read_input(input, in_tx))
        .map_err(|e| StreamError::Setup(format!("cannot start the input thread: {e}")))?;
    let (out_tx, out_rx) = mpsc::channel(CHANNEL_DEPTH);
    let (written_tx, written_rx) = oneshot::channel();
    let writer = thread::Builder::new()
        .name("quic-output".into())
        .spawn(move || write_output(output, out_rx, written_tx))
        .map_err(|e| StreamError::Setup(format!("cannot start the output thread: {e}")))?;

    let session = Session {
        peer,
        role,
        verifier,
        timeout,
        gso_open: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        pace: pace.clone(),
        last_close: std::sync::Mutex::new(None),
    };
    let result = runtime.block_on(async {
        // quinn's socket wrapper needs the runtime's reactor, so it is built in here.
        let setup = |e: io::Error| StreamError::Setup(format!("cannot run QUIC on the socket: {e}"));
        let socket: Arc<dyn quinn::AsyncUdpSocket> = match path {
            Path::Udp(socket) => {
                grow_buffers(&socket, "punched");
                let inner = TokioRuntime.wrap_udp_socket(socket).map_err(setup)?;
                gso::GsoGate::new(inner, session.gso_open.clone(), Some(pace.clone()))
            }
            Path::Relayed(link) => relayed::RelayedSocket::new(link, pace.clone()),
            Path::RelayFirst(link, up) => upgrade::SwitchingSocket::new(
                relayed::RelayedSocket::new(link, pace.clone()),
                up,
                peer,
                session.gso_open.clone(),
                pace.clone(),
            )
            .map_err(setup)?,
        };
        let endpoint = Endpoint::new_with_abstract_socket(
            EndpointConfig::default(),
            server,
            socket,
            Arc::new(TokioRuntime),
        )
        .map_err(setup)?;
        let mut conns = Vec::new();
        let run = session.run(&endpoint, client, in_rx, out_tx, written_rx, &mut conns);
        let result = until_stopped(run, &endpoint, stop).await;
        if let Err(StreamError::Interrupted) = result {
            return result;
        }
        // Linger (quinn's 3 PTO) only when the peer still has something to learn from us,
        // so that a lost close is repeated: after success, the close of the connection we
        // sent on; after a failure, our reason. After the peer's own close (it closes both
        // connections at once), a refusal or a timeout there is nothing to say, and 3 PTO
        // can be seconds when the RTT estimate is still the initial one or includes time
        // spent in a socket buffer.
        let linger = match &result {
            Ok(_) => true,
            Err(StreamError::PeerAuthFailed { .. }) if conns.is_empty() => true,
            Err(_) => !conns.is_empty() && conns.iter().all(|c| c.close_reason().is_none()),
        };
        let (code, reason) = match &result {
            Ok(_) => (CLOSE_DONE, "done".to_string()),
            Err(e) => (CLOSE_ERROR, close_reason(e)),
        };
        // After success every connection is closed already, by us or by the peer, unless
        // something ended early; then the close below is the last one, made now.
        let since_close = match &result {
            Ok(_) if conns.iter().all(|c| c.close_reason().is_some()) => {
                session.last_close().map(|at| at.elapsed())
            }
            _ => None,
        };
        endpoint.close(code.into(), reason.as_bytes());
        let rtt = conns.iter().map(quinn::Connection::rtt).max();
        let bound = linger_left(rtt, since_close);
        if linger
            && !bound.is_zero()
            && tokio::time::timeout(bound, endpoint.wait_idle())
                .await
                .is_err()
        {
            debug!("stopped waiting for the close to complete after {bound:?}; a peer that lost it ends by its own bound");
        }
        result
    });
    if result.is_ok() {
        // Everything is written by now (the thread reported it); this only reaps the thread.
        let _ = writer.join();
    }
    result
}

/// Runs the session until it ends or `stop` is requested. On the stop, closes every
/// connection with [`CLOSE_INTERRUPTED`] and lingers as after any close, and only then drops
/// the session: it still holds connections, some perhaps in mid-handshake, and dropping one
/// closes it with code 0, which would read as "done". The close, once sent, is repeated for
/// a peer that keeps sending (quinn's closing period).
async fn until_stopped(
    run: impl Future<Output = Result<StreamStats, StreamError>>,
    endpoint: &Endpoint,
    stop: &Shutdown,
) -> Result<StreamStats, StreamError> {
    let mut run = pin!(run);
    let requested = async {
        while !stop.requested() {
            tokio::time::sleep(STOP_POLL).await;
        }
    };
    tokio::select! {
        result = &mut run => return result,
        () = requested => {}
    }
    debug!("asked to stop; closing the QUIC connections");
    endpoint.close(CLOSE_INTERRUPTED.into(), b"interrupted");
    if tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle())
        .await
        .is_err()
    {
        debug!("the close did not complete within {CLOSE_LINGER:?}; leaving it to the peer's idle timeout");
    }
    Err(StreamError::Interrupted)
}

fn close_reason(e: &StreamError) -> String {
    let mut reason = e.to_string();
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

/// TLS alerts by which a peer says it does not accept our certificate.
fn is_certificate_alert(code: TransportErrorCode) -> bool {
    const BAD_CERTIFICATE: u8 = 42;
    const CERTIFICATE_UNKNOWN: u8 = 46;
    const ACCESS_DENIED: u8 = 49;
    const CERTIFICATE_REQUIRED: u8 = 116;
    let code = u64::from(code);
    (BAD_CERTIFICATE..=CERTIFICATE_UNKNOWN)
        .chain([ACCESS_DENIED, CERTIFICATE_REQUIRED])
        .any(|alert| code == u64::from(TransportErrorCode::crypto(alert)))
}

struct Session {
    peer: SocketAddr,
    role: Role,
    verifier: Arc<PinVerifier>,
    timeout: Duration,
    /// The socket's offload switch ([`gso`]), set while the stream runs.
    gso_open: Arc<std::sync::atomic::AtomicBool>,
    /// The socket's pacing, which also says whether a connection still probes for the rate.
    pace: Arc<pace::Pace>,
    /// When we last closed a connection whose close the peer waits for ([`linger_left`]).
    last_close: std::sync::Mutex<Option<Instant>>,
}

impl Session {
    /// Closes `conn` as done, noting when ([`linger_left`]).
    fn close_done(&self, conn: &quinn::Connection) {
        conn.close(CLOSE_DONE.into(), b"done");
        *self.last_close.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    fn last_close(&self) -> Option<Instant> {
        *self.last_close.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run(
        &self,
        endpoint: &Endpoint,
        client: Option<quinn::ClientConfig>,
        input: mpsc::Receiver<io::Result<bytes::Bytes>>,
        output: mpsc::Sender<Vec<bytes::Bytes>>,
        written: oneshot::Receiver<io::Result<()>>,
        established: &mut Vec<quinn::Connection>,
    ) -> Result<StreamStats, StreamError> {
        let deadline = Instant::now() + self.timeout;
        let link = match client {
            Some(config) => self.connect(endpoint, config, deadline).await,
            None => self.accept(endpoint, deadline).await,
        };
        let link = link.map_err(|(e, up)| {
            established.extend(up);
            e
        })?;
        established.extend([link.outgoing.clone(), link.incoming.clone()]);
        info!(peer = %self.peer, role = ?self.role, "QUIC connections up, peer authenticated");
        self.transfer(link, input, output, written).await
    }

    fn connection_error(&self, e: ConnectionError) -> StreamError {
        let peer = self.peer;
        match e {
            ConnectionError::TransportError(e) => match self.verifier.take_mismatch() {
                Some(got) => StreamError::PeerAuthFailed {
                    peer,
                    expected: crate::core::hex::encode(&self.verifier.expected),
                    got: crate::core::hex::encode(&got),
                },
                None => StreamError::Handshake {
                    proto: "QUIC",
                    peer,
                    reason: e.to_string(),
                },
            },
            ConnectionError::ConnectionClosed(c) => {
                let reason = String::from_utf8_lossy(&c.reason).into_owned();
                if c.error_code == TransportErrorCode::CONNECTION_REFUSED {
                    StreamError::Refused { peer }
                } else if is_certificate_alert(c.error_code) {
                    StreamError::RejectedByPeer { peer, reason }
                } else {
                    StreamError::ClosedByPeer {
                        peer,
                        reason: c.to_string(),
                    }
                }
            }
            ConnectionError::ApplicationClosed(c)
                if c.error_code == VarInt::from_u32(CLOSE_DONE) =>
            {
                StreamError::Protocol {
                    peer,
                    reason: "it ended the connection before all of our data was delivered".into(),
                }
            }
            ConnectionError::ApplicationClosed(c) => StreamError::ClosedByPeer {
                peer,
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            ConnectionError::TimedOut => StreamError::ConnectionLost {
                peer,
                reason: format!(
                    "nothing heard from the peer for {} s",
                    IDLE_TIMEOUT.as_secs()
                ),
            },
            ConnectionError::Reset => StreamError::ConnectionLost {
                peer,
                reason: "the peer reset the connection (did it restart?)".into(),
            },
            ConnectionError::VersionMismatch => StreamError::Handshake {
                proto: "QUIC",
                peer,
                reason: "the peer speaks no QUIC version we do".into(),
            },
            e @ (ConnectionError::LocallyClosed | ConnectionError::CidsExhausted) => {
                StreamError::ConnectionLost {
                    peer,
                    reason: e.to_string(),
                }
            }
        }
    }

    fn write_error(&self, e: WriteError) -> StreamError {
        match e {
            WriteError::Stopped(_) => StreamError::PeerStopped { peer: self.peer },
            WriteError::ConnectionLost(e) => self.connection_error(e),
            e @ (WriteError::ClosedStream | WriteError::ZeroRttRejected) => StreamError::Protocol {
                peer: self.peer,
                reason: e.to_string(),
            },
        }
    }

    fn read_error(&self, e: ReadError) -> StreamError {
        match e {
            ReadError::Reset(code) => StreamError::Protocol {
                peer: self.peer,
                reason: format!("it aborted its data stream (code {code})"),
            },
            ReadError::ConnectionLost(e) => self.connection_error(e),
            e @ (ReadError::ClosedStream
            | ReadError::IllegalOrderedRead
            | ReadError::ZeroRttRejected) => StreamError::Protocol {
                peer: self.peer,
                reason: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_close_lingers_two_round_trips_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(linger_for(Some(ms(160))), ms(320));
        // A LAN's fraction of a millisecond: the floor.
        assert_eq!(linger_for(Some(Duration::from_micros(300))), LINGER_MIN);
        // An estimate inflated by a queue: never past the bound the peer waits itself.
        assert_eq!(linger_for(Some(Duration::from_secs(5))), CLOSE_LINGER);
        assert_eq!(linger_for(None), CLOSE_LINGER);
    }

    #[test]
    fn the_linger_counts_from_our_last_close() {
        let ms = Duration::from_millis;
        // A close made just now (the sender's, at the end): the whole two round trips.
        assert_eq!(linger_left(Some(ms(160)), None), ms(320));
        assert_eq!(linger_left(Some(ms(160)), Some(ms(100))), ms(220));
        // A close long past (the receiver's empty direction): nothing left to wait for.
        assert_eq!(linger_left(Some(ms(160)), Some(ms(2_500))), Duration::ZERO);
        assert_eq!(linger_left(Some(ms(1)), Some(ms(4))), ms(6));
        assert_eq!(linger_left(None, Some(ms(500))), CLOSE_LINGER - ms(500));
    }

    #[test]
    fn acks_come_every_tenth_packet_and_at_once_on_a_gap() {
        // quinn offers no accessors; its Debug output names every field.
        let asked = format!("{:?}", ack_frequency());
        for field in [
            "ack_eliciting_threshold: 9,",
            "reordering_threshold: 1 ",
            "max_ack_delay: Some(5ms)",
        ] {
            assert!(asked.contains(field), "{field} not in {asked}");
        }
    }

    #[test]
    fn the_window_follows_the_smallest_rtt_between_its_bounds() {
        let ms = Duration::from_millis;
        let floor = u64::from(WINDOW);
        // Up to ~210 ms the floor already holds 1 Gbit/s.
        assert_eq!(window_for(Duration::ZERO), floor);
        assert_eq!(window_for(ms(160)), floor);
        assert_eq!(window_for(ms(214)), floor);
        // Past it: the bandwidth-delay product and a quarter (a 600 ms satellite path).
        assert_eq!(window_for(ms(400)), 62_500_000);
        assert_eq!(window_for(ms(600)), 93_750_000);
        // A path that slow still gets no more than the bound.
        assert_eq!(window_for(ms(2_000)), MAX_WINDOW);
        assert_eq!(window_for(Duration::MAX), MAX_WINDOW);
        // Never less than the rate needs, for every RTT the bounds allow.
        for rtt in (0..=900).step_by(7).map(ms) {
            let w = window_for(rtt);
            let need = TARGET_RATE as f64 * rtt.as_secs_f64();
            assert!(w as f64 >= need.min(MAX_WINDOW as f64), "{rtt:?}: {w}");
        }
    }
}

//! A reliable, ordered, encrypted byte stream between two punched peers: QUIC (quinn) on the
//! very UDP socket that punched the hole, so the NAT bindings that the punch opened carry it.
//!
//! There is no CA and no name to check: each side presents a per-run self-signed certificate
//! and pins the peer's by its SHA-256, which it learned from the authenticated punch. The
//! custom verifiers below replace only the chain and name checks; the TLS 1.3 handshake
//! signatures are still verified by rustls' own helpers, so presenting a copied certificate
//! without its private key does not get anyone in.
//!
//! One bidirectional stream carries the data. The client writes a one-byte preamble first,
//! because a QUIC stream only becomes visible to the peer once a frame is sent on it: without
//! it the server could not send anything before the client's input produced its first byte.
//!
//! Ending cleanly: a side is done when its own data is acknowledged and it has read the peer's
//! FIN and written it out; the server then closes the connection with [`CLOSE_DONE`], and the
//! client waits for that close (briefly, then closes itself), so only one side lingers to
//! repeat a lost close. The close tells the peer both of those things too, so the peer treats
//! it as success even when the close overtakes the last acknowledgement. Data already received
//! stays readable after the close (quinn reads buffered data before reporting the close).

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    ConnectionError, Endpoint, EndpointConfig, ReadError, ReadExactError, StoppedError,
    TokioRuntime, TransportConfig, TransportErrorCode, VarInt, WriteError,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The only application protocol spoken; a peer of another version fails the handshake
/// instead of misreading the stream.
pub const ALPN: &[u8] = b"punchraw/1";
/// Without a keep-alive or data for this long, the connection counts as lost.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Application close code: "I have read your whole stream and you acknowledged mine".
pub const CLOSE_DONE: u32 = 0;
/// Application close code for every failure; the reason text says which.
pub const CLOSE_ERROR: u32 = 1;
/// Stream stop code: our output failed, so we will not read further.
const STOP_OUTPUT_FAILED: u32 = 1;
/// The client's first byte on the stream; stripped by the server.
const PREAMBLE: u8 = 0x01;
/// Certificates are pinned, so the name is never checked; rustls only needs a valid one.
const SERVER_NAME: &str = "punchraw";
/// Size of one read from the input and from the stream.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight between the blocking I/O threads and the connection.
const CHANNEL_DEPTH: usize = 8;
/// Upper bound on waiting for our close to reach the peer (quinn waits 3 PTO, which on a
/// bad path could be long; the peer's idle timeout is the fallback).
const CLOSE_LINGER: Duration = Duration::from_secs(3);
/// Close reasons travel in one packet.
const MAX_REASON: usize = 200;

/// A per-run identity: a self-signed ECDSA P-256 certificate and its private key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    pub fn generate() -> Result<Self, QuicError> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| QuicError::Identity(e.to_string()))?;
        Ok(Identity {
            cert: certified.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()),
        })
    }

    /// SHA-256 of the certificate DER: what the peer pins.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert)
    }

    pub fn certificate_der(&self) -> &[u8] {
        &self.cert
    }
}

impl fmt::Debug for Identity {
    // The private key must not end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &fingerprint_hex(&self.fingerprint()))
            .finish_non_exhaustive()
    }
}

/// Lower-case hex, as users compare fingerprints by eye.
pub fn fingerprint_hex(fp: &[u8; 32]) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

fn fingerprint(cert: &[u8]) -> [u8; 32] {
    Sha256::digest(cert).into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Payload bytes of the stream, without the preamble.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub sent: u64,
    pub received: u64,
}

#[derive(Debug, Error)]
pub enum QuicError {
    #[error("cannot create this run's certificate: {0}")]
    Identity(String),
    #[error("cannot set up QUIC: {0}")]
    Setup(String),
    #[error("peer authentication failed: its certificate fingerprint does not match the one from the authenticated punch ({peer} presented {got}, the punch announced {expected})")]
    PeerAuthFailed {
        peer: SocketAddr,
        expected: String,
        got: String,
    },
    #[error("{peer} refused our certificate ({reason}): it pins a different fingerprint for us than the one we announced in the punch")]
    RejectedByPeer { peer: SocketAddr, reason: String },
    #[error("{peer} refused the QUIC connection: it expects us at another address (did the NAT change our mapping?)")]
    Refused { peer: SocketAddr },
    #[error("QUIC handshake with {peer} timed out after {secs} s: {hint}")]
    HandshakeTimeout {
        peer: SocketAddr,
        secs: f64,
        hint: String,
    },
    #[error("QUIC handshake with {peer} failed: {reason}")]
    Handshake { peer: SocketAddr, reason: String },
    #[error("connection lost: {reason} (peer {peer})")]
    ConnectionLost { peer: SocketAddr, reason: String },
    #[error("{peer} closed the connection: {reason}")]
    ClosedByPeer { peer: SocketAddr, reason: String },
    #[error("{peer} stopped reading our data before its end (its output failed?)")]
    PeerStopped { peer: SocketAddr },
    #[error("{peer} broke the stream protocol: {reason}")]
    Protocol { peer: SocketAddr, reason: String },
    #[error("cannot read input")]
    Input(#[source] io::Error),
    #[error("cannot write output")]
    Output(#[source] io::Error),
}

impl QuicError {
    /// Either side's pin check failed: the two peers disagree about who the other is, which
    /// is a security event rather than a network problem.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            QuicError::PeerAuthFailed { .. } | QuicError::RejectedByPeer { .. }
        )
    }
}

/// Pins one certificate by its SHA-256, for either side of the handshake.
#[derive(Debug)]
struct PinVerifier {
    expected: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// What the last rejected certificate hashed to, so the error can name it.
    mismatch: Mutex<Option<[u8; 32]>>,
}

impl PinVerifier {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let got = fingerprint(end_entity);
        if got == self.expected {
            Ok(())
        } else {
            *self.mismatch.lock().unwrap_or_else(|p| p.into_inner()) = Some(got);
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn take_mismatch(&self) -> Option<[u8; 32]> {
        self.mismatch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for PinVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

fn setup_err(what: &str) -> impl FnOnce(rustls::Error) -> QuicError + '_ {
    move |e| QuicError::Setup(format!("{what}: {e}"))
}

fn transport_config(keepalive: Duration) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("30 s is a valid idle timeout"),
    ));
    // A zero interval would mean sending keep-alives continuously; treat it as "off".
    t.keep_alive_interval((!keepalive.is_zero()).then_some(keepalive));
    // The client opens exactly one stream; nothing else may be opened.
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    // With segmentation offload a burst of datagrams crosses each NAT's netfilter hooks as
    // one buffer, so one drop loses the whole burst; loss on punched paths is then far
    // burstier than the congestion controller expects and the transfer crawls.
    t.enable_segmentation_offload(false);
    Arc::new(t)
}

fn client_config(
    me: &Identity,
    verifier: Arc<PinVerifier>,
    provider: Arc<CryptoProvider>,
    keepalive: Duration,
) -> Result<quinn::ClientConfig, QuicError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup_err("TLS client configuration"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            vec![me.cert.clone()],
            PrivateKeyDer::Pkcs8(me.key.clone_key()),
        )
        .map_err(setup_err("TLS client certificate"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // A resumed TLS 1.3 session skips certificate verification; every run must pin afresh.
    tls.resumption = rustls::client::Resumption::disabled();
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| QuicError::Setup(format!("QUIC client configuration: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config(keepalive));
    Ok(config)
}

fn server_config(
    me: &Identity,
    verifier: Arc<PinVerifier>,
    provider: Arc<CryptoProvider>,
    keepalive: Duration,
) -> Result<quinn::ServerConfig, QuicError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup_err("TLS server configuration"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![me.cert.clone()],
            PrivateKeyDer::Pkcs8(me.key.clone_key()),
        )
        .map_err(setup_err("TLS server certificate"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| QuicError::Setup(format!("QUIC server configuration: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config(keepalive));
    Ok(config)
}

/// Runs QUIC on `socket` (already bound, possibly already used for punching; it is handed
/// over) with the peer at `peer`. The client connects; the server accepts only a connection
/// from `peer` whose certificate matches the pin, refusing others and waiting on.
///
/// Both sides present their certificate and verify that the peer's SHA-256 equals
/// `peer_fingerprint`. Then `input` is copied to one bidirectional stream and the stream's
/// incoming bytes to `output`; at the end of `input` our send side is finished (half-close).
/// Returns when both directions are done, after closing the connection so the peer exits too.
///
/// `timeout` bounds connection setup (the client's handshake; the server's wait for the
/// authenticated peer), not the transfer, which ends only on a stall of [`IDLE_TIMEOUT`].
/// `keepalive` should be well under [`IDLE_TIMEOUT`] and short enough to keep the NAT
/// bindings open; zero turns keep-alives off.
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
) -> Result<StreamStats, QuicError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinVerifier {
        expected: peer_fingerprint,
        provider: provider.clone(),
        mismatch: Mutex::new(None),
    });
    let (client, server) = match role {
        Role::Client => (
            Some(client_config(me, verifier.clone(), provider, keepalive)?),
            None,
        ),
        Role::Server => (
            None,
            Some(server_config(me, verifier.clone(), provider, keepalive)?),
        ),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| QuicError::Setup(format!("cannot start the async runtime: {e}")))?;

    // Input and output are blocking (stdin, stdout, files), so each gets a thread of its own.
    // The reader is never joined: on failure it may sit in a read that never returns.
    let (in_tx, in_rx) = mpsc::channel(CHANNEL_DEPTH);
    thread::Builder::new()
        .name("quic-input".into())
        .spawn(move || read_input(input, in_tx))
        .map_err(|e| QuicError::Setup(format!("cannot start the input thread: {e}")))?;
    let (out_tx, out_rx) = mpsc::channel(CHANNEL_DEPTH);
    let (written_tx, written_rx) = oneshot::channel();
    let writer = thread::Builder::new()
        .name("quic-output".into())
        .spawn(move || write_output(output, out_rx, written_tx))
        .map_err(|e| QuicError::Setup(format!("cannot start the output thread: {e}")))?;

    let session = Session {
        peer,
        role,
        verifier,
        timeout,
    };
    let result = runtime.block_on(async {
        // quinn's socket wrapper needs the runtime's reactor, so it is built in here.
        let endpoint = Endpoint::new(
            EndpointConfig::default(),
            server,
            socket,
            Arc::new(TokioRuntime),
        )
        .map_err(|e| QuicError::Setup(format!("cannot run QUIC on the socket: {e}")))?;
        let mut conn = None;
        let result = session
            .run(&endpoint, client, in_rx, out_tx, written_rx, &mut conn)
            .await;
        // Linger (quinn's 3 PTO) only when the peer still has something to learn from us,
        // so that a lost close is repeated. After the peer's own close, a refusal or a
        // timeout there is nothing to say, and 3 PTO can be seconds when the RTT estimate
        // is still the initial one or includes time spent in a socket buffer.
        let linger = match (&result, &conn) {
            (_, Some(c)) => c.close_reason().is_none(),
            (Err(QuicError::PeerAuthFailed { .. }), None) => true,
            _ => false,
        };
        let (code, reason) = match &result {
            Ok(_) => (CLOSE_DONE, "done".to_string()),
            Err(e) => (CLOSE_ERROR, close_reason(e)),
        };
        endpoint.close(code.into(), reason.as_bytes());
        if linger
            && tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle())
                .await
                .is_err()
        {
            debug!("the close did not complete within {CLOSE_LINGER:?}; leaving it to the peer's idle timeout");
        }
        result
    });
    if result.is_ok() {
        // Everything is written by now (the thread reported it); this only reaps the thread.
        let _ = writer.join();
    }
    result
}

fn close_reason(e: &QuicError) -> String {
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

fn read_input(mut input: impl Read, tx: mpsc::Sender<io::Result<Vec<u8>>>) {
    loop {
        let mut buf = vec![0; CHUNK];
        match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                if tx.blocking_send(Ok(buf)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

/// Reports through `written` once everything is written and flushed, or the first error;
/// the receive direction counts as done only then.
fn write_output(
    mut output: impl Write,
    mut rx: mpsc::Receiver<Vec<u8>>,
    written: oneshot::Sender<io::Result<()>>,
) {
    let mut copy = || -> io::Result<()> {
        while let Some(chunk) = rx.blocking_recv() {
            output.write_all(&chunk)?;
            // Flush when caught up, so interactive use sees data at once without a flush per
            // chunk during bulk transfers.
            if rx.is_empty() {
                output.flush()?;
            }
        }
        output.flush()
    };
    let result = copy();
    // Closing the channel first makes the connection side stop sending chunks at once.
    drop(rx);
    let _ = written.send(result);
}

fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6 addresses.
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
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

fn is_done(e: &ConnectionError) -> bool {
    matches!(e, ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(CLOSE_DONE))
}

struct Session {
    peer: SocketAddr,
    role: Role,
    verifier: Arc<PinVerifier>,
    timeout: Duration,
}

impl Session {
    async fn run(
        &self,
        endpoint: &Endpoint,
        client: Option<quinn::ClientConfig>,
        input: mpsc::Receiver<io::Result<Vec<u8>>>,
        output: mpsc::Sender<Vec<u8>>,
        written: oneshot::Receiver<io::Result<()>>,
        established: &mut Option<quinn::Connection>,
    ) -> Result<StreamStats, QuicError> {
        let deadline = Instant::now() + self.timeout;
        let conn = match client {
            Some(config) => self.connect(endpoint, config, deadline).await?,
            None => self.accept(endpoint, deadline).await?,
        };
        info!(peer = %self.peer, role = ?self.role, "QUIC connection up, peer authenticated");
        let conn = established.insert(conn);
        let stats = self
            .transfer(conn, deadline, input, output, written)
            .await?;
        if self.role == Role::Client {
            // Both sides being done at once would make both close and both linger. Instead
            // the server closes and lingers, and the client leaves as soon as that close
            // arrives (or closes itself if it does not).
            if let Ok(e) = tokio::time::timeout(CLOSE_LINGER, conn.closed()).await {
                if !is_done(&e) {
                    return Err(self.connection_error(e));
                }
            }
        }
        Ok(stats)
    }

    fn timed_out(&self, hint: impl Into<String>) -> QuicError {
        QuicError::HandshakeTimeout {
            peer: self.peer,
            secs: self.timeout.as_secs_f64(),
            hint: hint.into(),
        }
    }

    async fn connect(
        &self,
        endpoint: &Endpoint,
        config: quinn::ClientConfig,
        deadline: Instant,
    ) -> Result<quinn::Connection, QuicError> {
        loop {
            let connecting = endpoint
                .connect_with(config.clone(), self.peer, SERVER_NAME)
                .map_err(|e| QuicError::Setup(format!("cannot connect to {}: {e}", self.peer)))?;
            match tokio::time::timeout_at(deadline, connecting).await {
                Err(_) => {
                    return Err(self
                        .timed_out("no answer (is the peer running, and is the hole still open?)"))
                }
                Ok(Ok(conn)) => return Ok(conn),
                // quinn gives up on a silent peer after the idle timeout, which may be
                // shorter than the caller's timeout.
                Ok(Err(ConnectionError::TimedOut)) if Instant::now() < deadline => {}
                Ok(Err(e)) => return Err(self.connection_error(e)),
            }
        }
    }

    async fn accept(
        &self,
        endpoint: &Endpoint,
        deadline: Instant,
    ) -> Result<quinn::Connection, QuicError> {
        // A failed attempt from the peer's address is reported if nothing better arrives:
        // it may have been a stranger (so keep waiting), but most likely it is the reason.
        let mut failure = None;
        let mut stranger = None;
        let waiting = async {
            loop {
                let Some(incoming) = endpoint.accept().await else {
                    return Err(QuicError::Setup("the QUIC endpoint closed".into()));
                };
                let from = incoming.remote_address();
                if !same_addr(from, self.peer) {
                    info!(%from, peer = %self.peer, "refusing a QUIC connection from an address that is not the peer's");
                    incoming.refuse();
                    stranger = Some(from);
                    continue;
                }
                match incoming.await {
                    Ok(conn) => return Ok(conn),
                    Err(e) => {
                        let e = self.connection_error(e);
                        warn!(%from, "QUIC connection attempt failed, waiting on: {e}");
                        failure = Some(e);
                    }
                }
            }
        };
        let outcome = tokio::time::timeout_at(deadline, waiting).await;
        match outcome {
            Ok(result) => result,
            Err(_) => Err(failure.unwrap_or_else(|| match stranger {
                // Most likely the peer itself, from a port its NAT picked anew.
                Some(from) => self.timed_out(format!(
                    "only {from} tried to connect, which is not the peer's address (did the peer's NAT change its mapping?)"
                )),
                None => self
                    .timed_out("it did not connect (is it running, and is the hole still open?)"),
            })),
        }
    }

    fn connection_error(&self, e: ConnectionError) -> QuicError {
        let peer = self.peer;
        match e {
            ConnectionError::TransportError(e) => match self.verifier.take_mismatch() {
                Some(got) => QuicError::PeerAuthFailed {
                    peer,
                    expected: fingerprint_hex(&self.verifier.expected),
                    got: fingerprint_hex(&got),
                },
                None => QuicError::Handshake {
                    peer,
                    reason: e.to_string(),
                },
            },
            ConnectionError::ConnectionClosed(c) => {
                let reason = String::from_utf8_lossy(&c.reason).into_owned();
                if c.error_code == TransportErrorCode::CONNECTION_REFUSED {
                    QuicError::Refused { peer }
                } else if is_certificate_alert(c.error_code) {
                    QuicError::RejectedByPeer { peer, reason }
                } else {
                    QuicError::ClosedByPeer {
                        peer,
                        reason: c.to_string(),
                    }
                }
            }
            ConnectionError::ApplicationClosed(c)
                if c.error_code == VarInt::from_u32(CLOSE_DONE) =>
            {
                QuicError::Protocol {
                    peer,
                    reason: "it ended the connection before all of our data was delivered".into(),
                }
            }
            ConnectionError::ApplicationClosed(c) => QuicError::ClosedByPeer {
                peer,
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            ConnectionError::TimedOut => QuicError::ConnectionLost {
                peer,
                reason: format!(
                    "nothing heard from the peer for {} s",
                    IDLE_TIMEOUT.as_secs()
                ),
            },
            ConnectionError::Reset => QuicError::ConnectionLost {
                peer,
                reason: "the peer reset the connection (did it restart?)".into(),
            },
            ConnectionError::VersionMismatch => QuicError::Handshake {
                peer,
                reason: "the peer speaks no QUIC version we do".into(),
            },
            e @ (ConnectionError::LocallyClosed | ConnectionError::CidsExhausted) => {
                QuicError::ConnectionLost {
                    peer,
                    reason: e.to_string(),
                }
            }
        }
    }

    async fn transfer(
        &self,
        conn: &quinn::Connection,
        deadline: Instant,
        mut input: mpsc::Receiver<io::Result<Vec<u8>>>,
        output: mpsc::Sender<Vec<u8>>,
        written: oneshot::Receiver<io::Result<()>>,
    ) -> Result<StreamStats, QuicError> {
        let peer = self.peer;
        let (mut send, mut recv) = match self.role {
            Role::Client => {
                let (mut send, recv) =
                    conn.open_bi().await.map_err(|e| self.connection_error(e))?;
                send.write_all(&[PREAMBLE])
                    .await
                    .map_err(|e| self.write_error(e))?;
                (send, recv)
            }
            Role::Server => {
                let opened = async {
                    let (send, mut recv) = conn
                        .accept_bi()
                        .await
                        .map_err(|e| self.connection_error(e))?;
                    let mut first = [0u8; 1];
                    match recv.read_exact(&mut first).await {
                        Ok(()) if first[0] == PREAMBLE => Ok((send, recv)),
                        Ok(()) => Err(QuicError::Protocol {
                            peer,
                            reason: format!("stream starts with {:#04x}", first[0]),
                        }),
                        Err(ReadExactError::FinishedEarly(_)) => Err(QuicError::Protocol {
                            peer,
                            reason: "stream ended before its preamble".into(),
                        }),
                        Err(ReadExactError::ReadError(e)) => Err(self.read_error(e)),
                    }
                };
                tokio::time::timeout_at(deadline, opened)
                    .await
                    .map_err(|_| self.timed_out("it connected but opened no stream"))??
            }
        };

        let sending = async {
            let mut sent = 0u64;
            while let Some(chunk) = input.recv().await {
                let chunk = chunk.map_err(QuicError::Input)?;
                send.write_all(&chunk)
                    .await
                    .map_err(|e| self.write_error(e))?;
                sent += chunk.len() as u64;
            }
            // Fails only if the stream is already reset, which `stopped` reports below.
            let _ = send.finish();
            match send.stopped().await {
                Ok(None) => Ok(sent),
                Ok(Some(_)) => Err(QuicError::PeerStopped { peer }),
                // The peer's "done" says it read our stream to the end.
                Err(StoppedError::ConnectionLost(e)) if is_done(&e) => Ok(sent),
                Err(StoppedError::ConnectionLost(e)) => Err(self.connection_error(e)),
                Err(StoppedError::ZeroRttRejected) => Err(QuicError::Protocol {
                    peer,
                    reason: "0-RTT rejected although none was sent".into(),
                }),
            }
        };

        let receiving = async {
            let mut received = 0u64;
            let output_failed = |written: oneshot::Receiver<io::Result<()>>| async {
                match written.await {
                    Ok(Err(e)) => QuicError::Output(e),
                    _ => QuicError::Output(io::Error::other("the output thread ended")),
                }
            };
            loop {
                match recv.read_chunk(CHUNK, true).await {
                    Ok(Some(chunk)) => {
                        received += chunk.bytes.len() as u64;
                        if output.send(chunk.bytes.to_vec()).await.is_err() {
                            let _ = recv.stop(STOP_OUTPUT_FAILED.into());
                            return Err(output_failed(written).await);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Err(self.read_error(e)),
                }
            }
            drop(output);
            match written.await {
                Ok(Ok(())) => Ok(received),
                Ok(Err(e)) => Err(QuicError::Output(e)),
                Err(_) => Err(QuicError::Output(io::Error::other(
                    "the output thread ended",
                ))),
            }
        };

        let (sent, received) = tokio::try_join!(sending, receiving)?;
        debug!(%peer, sent, received, "both directions done");
        Ok(StreamStats { sent, received })
    }

    fn write_error(&self, e: WriteError) -> QuicError {
        match e {
            WriteError::Stopped(_) => QuicError::PeerStopped { peer: self.peer },
            WriteError::ConnectionLost(e) => self.connection_error(e),
            e @ (WriteError::ClosedStream | WriteError::ZeroRttRejected) => QuicError::Protocol {
                peer: self.peer,
                reason: e.to_string(),
            },
        }
    }

    fn read_error(&self, e: ReadError) -> QuicError {
        match e {
            ReadError::Reset(code) => QuicError::Protocol {
                peer: self.peer,
                reason: format!("it aborted its data stream (code {code})"),
            },
            ReadError::ConnectionLost(e) => self.connection_error(e),
            e @ (ReadError::ClosedStream
            | ReadError::IllegalOrderedRead
            | ReadError::ZeroRttRejected) => QuicError::Protocol {
                peer: self.peer,
                reason: e.to_string(),
            },
        }
    }
}

//! The encrypted, authenticated byte stream over a punched TCP connection: TLS 1.3 (rustls)
//! with each side's per-run certificate pinned by the fingerprint from the peer's
//! authenticated TCP offer, as the QUIC stream does for UDP (see [`crate::transport::pin`]).
//!
//! During a punch several TCP connections may come up (a listener is open, and a sweep opens
//! many), and anyone could connect to the listener. So every connection is authenticated
//! before any user byte flows, and the two sides agree on one: after the handshake the TLS
//! client sends [`COMMIT`] on the one connection it chose, and the server, which verified
//! the client's certificate by then, answers [`ACCEPT`] on the first connection that brought
//! a commitment and only there. The client commits on one connection only, so the two
//! cannot pick different ones. A connection that fails any of this is closed and the punch
//! goes on.
//!
//! The client's stream starts right behind its COMMIT, as a TLS 1.3 client's data starts
//! right behind its Finished (RFC 8446 section 2): it has authenticated the server, and the
//! server's ACCEPT (or its refusal of our certificate) is the first thing [`transfer`] reads.
//! Waiting for it would cost a round trip to the peer before the first byte. The price: a
//! connection that dies in that round trip ends the stream instead of the punch going on
//! with another one.
//!
//! After that, input goes out on the connection and the peer's bytes to the output; at the
//! end of the input our side sends TLS close_notify and a TCP FIN (a half-close: TLS 1.3,
//! RFC 8446 section 6.1, lets the peer go on sending), and the stream is done when both
//! directions have ended.

use crate::error::StreamError;
use crate::transport::pin::{self, Identity, PinVerifier, SERVER_NAME};
use crate::transport::pipe::{read_input, write_output, CHANNEL_DEPTH, CHUNK};
use crate::transport::{Role, StreamStats};
use rustls::pki_types::ServerName;
use rustls::AlertDescription;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

/// Distinct from the QUIC stream's, so a TCP peer and a UDP peer never mistake each other.
pub const ALPN: &[u8] = b"punchraw-tcp/1";
/// The client's one byte after the handshake: "this connection carries the stream".
pub const COMMIT: u8 = 0xc1;
/// The server's answer: "accepted; I use this one too".
pub const ACCEPT: u8 = 0xa1;

/// The TLS client's turn to commit, shared by every connection of a punch (and by the
/// punches of both address families): one commitment at a time, none after one was made.
#[derive(Default)]
pub struct Commitment(tokio::sync::Mutex<bool>);

/// A TLS client session made before its connection exists, its ClientHello already taken
/// out ([`TlsSide::prepare_client`]): the raw TCP punch sends that hello in its SYNs, and the
/// session continues on whichever socket carries them ([`TlsSide::handshake_prepared`]).
pub struct PreparedClient {
    conn: rustls::ClientConnection,
    verifier: Arc<PinVerifier>,
    /// The ClientHello as it goes on the wire (TLS records).
    pub hello: Vec<u8>,
}

impl std::fmt::Debug for PreparedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedClient")
            .field("hello", &self.hello.len())
            .finish()
    }
}

/// Our side of the TLS setup: who we are, whom we accept, and which role we play.
pub struct TlsSide {
    role: Role,
    me: Identity,
    peer_fingerprint: [u8; 32],
    timeout: Duration,
}

impl TlsSide {
    /// Our side for one run: our role, our certificate and key, the SHA-256 of the
    /// certificate we accept from the peer, and how long a handshake (and, on the server,
    /// the wait for the commitment) may take.
    pub fn new(role: Role, me: Identity, peer_fingerprint: [u8; 32], timeout: Duration) -> Self {
        TlsSide {
            role,
            me,
            peer_fingerprint,
            timeout,
        }
    }

    /// Whether we play the TLS client, which commits, or the server, which accepts.
    pub fn role(&self) -> Role {
        self.role
    }

    /// A client session whose ClientHello is taken out now, for a connection that does not
    /// exist yet (the client only: the server speaks second).
    pub fn prepare_client(&self) -> Result<PreparedClient, StreamError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinVerifier::new(self.peer_fingerprint, provider.clone()));
        let setup = |e: String| StreamError::Setup(format!("TLS: {e}"));
        let tls = pin::client_tls(&self.me, verifier.clone(), provider, ALPN)
            .map_err(|e| setup(e.to_string()))?;
        let name = ServerName::try_from(SERVER_NAME).map_err(|e| setup(e.to_string()))?;
        let mut conn =
            rustls::ClientConnection::new(Arc::new(tls), name).map_err(|e| setup(e.to_string()))?;
        let mut hello = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut hello)
                .map_err(|e| setup(e.to_string()))?;
        }
        Ok(PreparedClient {
            conn,
            verifier,
            hello,
        })
    }

    /// [`TlsSide::handshake`] continuing `prepared` (a client's, see
    /// [`TlsSide::prepare_client`]) on `tcp`, which has sent or will have sent its hello
    /// before anything else; without it, a fresh session.
    pub async fn handshake_prepared(
        &self,
        tcp: TcpStream,
        commit: Option<&Commitment>,
        prepared: Option<PreparedClient>,
    ) -> Result<TlsStream<TcpStream>, StreamError> {
        self.handshake_with(tcp, commit, prepared).await
    }

    /// The TLS handshake on `tcp`, within the timeout; the client then sends [`COMMIT`]
    /// (holding `commit`, when given, which serialises commitments across connections, and
    /// once one was made refuses every later one: two punches at once, one per address
    /// family, share it; that part is bounded by the caller) and returns: the server's
    /// [`ACCEPT`] is for [`transfer`] to read. The server returns once the client's
    /// commitment arrived, also within the timeout; it still owes the [`ACCEPT`], which
    /// [`accept_commitment`] sends on the one connection it keeps.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        commit: Option<&Commitment>,
    ) -> Result<TlsStream<TcpStream>, StreamError> {
        self.handshake_with(tcp, commit, None).await
    }

    async fn handshake_with(
        &self,
        tcp: TcpStream,
        commit: Option<&Commitment>,
        prepared: Option<PreparedClient>,
    ) -> Result<TlsStream<TcpStream>, StreamError> {
        let peer = tcp.peer_addr().map_err(|e| StreamError::ConnectionLost {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            reason: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // A verifier per connection, so a stranger's mismatch is never reported as the
        // peer's.
        let (verifier, prepared) = match prepared {
            Some(p) => (p.verifier, Some(p.conn)),
            None => (
                Arc::new(PinVerifier::new(self.peer_fingerprint, provider.clone())),
                None,
            ),
        };
        let timed_out = || StreamError::HandshakeTimeout {
            proto: "TLS",
            peer,
            secs: self.timeout.as_secs_f64(),
            hint: String::new(),
        };
        match self.role {
            Role::Client => {
                let tls = pin::client_tls(&self.me, verifier.clone(), provider, ALPN)
                    .map_err(|e| StreamError::Setup(format!("TLS: {e}")))?;
                let name = ServerName::try_from(SERVER_NAME)
                    .map_err(|e| StreamError::Setup(format!("TLS: {e}")))?;
                // A prepared session replaces the one the connector makes: its hello is on
                // the wire already, so the connector goes straight to reading the answer.
                let connecting = TlsConnector::from(Arc::new(tls)).connect_with(name, tcp, |c| {
                    if let Some(p) = prepared {
                        *c = p;
                    }
                });
                let mut s = tokio::time::timeout(self.timeout, connecting)
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|e| self.error(peer, &verifier, e))?;
                // Our turn to commit may take a while (another connection is writing its
                // COMMIT); the punch bounds that wait.
                let mut turn = match commit {
                    Some(m) => Some(m.0.lock().await),
                    None => None,
                };
                if turn.as_deref() == Some(&true) {
                    return Err(StreamError::Setup(format!(
                        "another connection than the one with {peer} carries the stream"
                    )));
                }
                let sent = async {
                    s.write_all(&[COMMIT]).await?;
                    s.flush().await
                }
                .await;
                if let Err(e) = sent {
                    // Other connections may commit while we look for the reason.
                    drop(turn);
                    let e = self.error(peer, &verifier, e);
                    return Err(refusal_or(read_reason(&mut s, peer).await, e));
                }
                // The server may keep this connection now and drop the others: no other
                // connection commits after it (its ACCEPT is `transfer`'s to read).
                if let Some(decided) = turn.as_deref_mut() {
                    *decided = true;
                }
                Ok(TlsStream::from(s))
            }
            Role::Server => {
                let tls = pin::server_tls(&self.me, verifier.clone(), provider, ALPN)
                    .map_err(|e| StreamError::Setup(format!("TLS: {e}")))?;
                let work = async {
                    let mut s = TlsAcceptor::from(Arc::new(tls))
                        .accept(tcp)
                        .await
                        .map_err(|e| self.error(peer, &verifier, e))?;
                    expect_byte(&mut s, peer, COMMIT, "its first byte", |e| {
                        self.error(peer, &verifier, e)
                    })
                    .await?;
                    Ok(TlsStream::from(s))
                };
                tokio::time::timeout(self.timeout, work)
                    .await
                    .map_err(|_| timed_out())?
            }
        }
    }

    fn error(&self, peer: SocketAddr, verifier: &PinVerifier, e: io::Error) -> StreamError {
        if let Some(got) = verifier.take_mismatch() {
            return StreamError::PeerAuthFailed {
                peer,
                expected: crate::core::hex::encode(&self.peer_fingerprint),
                got: crate::core::hex::encode(&got),
            };
        }
        handshake_error(peer, e)
    }
}

/// What a failed handshake (or the peer's answer to it) means to the user: a refusal of our
/// certificate, another TLS error, or the connection ending.
fn handshake_error(peer: SocketAddr, e: io::Error) -> StreamError {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::AlertReceived(
            a @ (AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired),
        )) => StreamError::RejectedByPeer {
            peer,
            reason: format!("TLS alert {a:?}"),
        },
        Some(r) => StreamError::Handshake {
            proto: "TLS",
            peer,
            reason: r.to_string(),
        },
        None => StreamError::Handshake {
            proto: "TLS",
            peer,
            reason: match e.kind() {
                io::ErrorKind::UnexpectedEof => "the connection closed during the handshake".into(),
                _ => e.to_string(),
            },
        },
    }
}

/// Reads one byte of the stream protocol, which must be `want`; `failed` says what a failed
/// read means.
async fn expect_byte(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
    peer: SocketAddr,
    want: u8,
    what: &str,
    failed: impl FnOnce(io::Error) -> StreamError,
) -> Result<(), StreamError> {
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.map_err(failed)?;
    if b[0] == want {
        Ok(())
    } else {
        Err(StreamError::Protocol {
            peer,
            reason: format!("{what} was {:#04x}, not {want:#04x}", b[0]),
        })
    }
}

/// How long a failed write waits for the read that may explain it. The explanation, if any,
/// is already in the receive queue; this only bounds a read that finds nothing there.
const REASON_WAIT: Duration = Duration::from_secs(1);

/// A write that failed on a reset connection may have met the reset that follows the
/// peer's refusal of our certificate: a TCP closed with our unread bytes in its buffer
/// resets the connection (RFC 1122 section 4.2.2.13), after the TLS alert it sent. The
/// alert still lies in our receive queue ahead of the reset, so the read side's outcome
/// says whether the refusal is the reason (the one a user can act on) or `e` stands.
fn refusal_or<T>(read: Result<T, StreamError>, e: StreamError) -> StreamError {
    match read {
        Err(r) if r.is_auth_failure() => r,
        _ => e,
    }
}

/// One read on a client stream whose write failed, for [`refusal_or`].
async fn read_reason(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
    peer: SocketAddr,
) -> Result<(), StreamError> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(REASON_WAIT, s.read(&mut b)).await {
        Ok(Err(e)) => Err(handshake_error(peer, e)),
        _ => Ok(()),
    }
}

/// The server's answer on the connection it keeps (see the module documentation).
pub async fn accept_commitment(s: &mut TlsStream<TcpStream>) -> io::Result<()> {
    s.write_all(&[ACCEPT]).await?;
    s.flush().await
}

/// Copies `input` to the peer and the peer's bytes to `output` until both directions have
/// ended (see the module documentation). Blocking input and output each get a thread. As
/// the TLS client (`role`), the server's [`ACCEPT`] comes before its data.
pub async fn transfer(
    stream: TlsStream<TcpStream>,
    role: Role,
    peer: SocketAddr,
    input: impl Read + Send + 'static,
    output: impl Write + Send + 'static,
) -> Result<StreamStats, StreamError> {
    let (in_tx, mut in_rx) = mpsc::channel(CHANNEL_DEPTH);
    thread::Builder::new()
        .name("tls-input".into())
        .spawn(move || read_input(input, in_tx))
        .map_err(|e| StreamError::Setup(format!("cannot start the input thread: {e}")))?;
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(CHANNEL_DEPTH);
    let (written_tx, written_rx) = oneshot::channel();
    thread::Builder::new()
        .name("tls-output".into())
        .spawn(move || write_output(output, out_rx, written_tx))
        .map_err(|e| StreamError::Setup(format!("cannot start the output thread: {e}")))?;
    let lost = |e: io::Error| StreamError::ConnectionLost {
        peer,
        reason: match e.kind() {
            // rustls reports a TCP FIN without close_notify so: the data may be cut short.
            io::ErrorKind::UnexpectedEof => {
                "the peer's data ended without a TLS close (was the connection cut?)".into()
            }
            _ => e.to_string(),
        },
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let send = async {
        let mut sent = 0u64;
        while let Some(chunk) = in_rx.recv().await {
            let chunk = chunk.map_err(StreamError::Input)?;
            wr.write_all(&chunk).await.map_err(lost)?;
            sent += chunk.len() as u64;
            if in_rx.is_empty() {
                wr.flush().await.map_err(lost)?;
            }
        }
        wr.shutdown().await.map_err(lost)?;
        Ok::<u64, StreamError>(sent)
    };
    let recv = async {
        if role == Role::Client {
            // The server's acceptance; its refusal of our certificate arrives here too, as a
            // TLS alert.
            let what = "its answer to our commitment";
            expect_byte(&mut rd, peer, ACCEPT, what, |e| handshake_error(peer, e)).await?;
        }
        let mut received = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = rd.read(&mut buf).await.map_err(lost)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            received += n as u64;
            if out_tx.send(buf).await.is_err() {
                break;
            }
        }
        drop(out_tx);
        match written_rx.await {
            Ok(Ok(())) => Ok(received),
            Ok(Err(e)) => Err(StreamError::Output(e)),
            Err(_) => Err(StreamError::Output(io::Error::other(
                "the output thread ended early",
            ))),
        }
    };
    let (sent, received) = {
        tokio::pin!(send, recv);
        let (mut sent, mut received) = (None, None);
        while sent.is_none() || received.is_none() {
            tokio::select! {
                s = &mut send, if sent.is_none() => match s {
                    Ok(n) => sent = Some(n),
                    // The reset may follow the peer's refusal of our certificate, whose alert
                    // then waits for the receive side (see `refusal_or`); on a reset
                    // connection its read ends at once, and REASON_WAIT bounds the rest.
                    Err(e @ StreamError::ConnectionLost { .. }) if received.is_none() => {
                        let reason = tokio::time::timeout(REASON_WAIT, &mut recv)
                            .await
                            .unwrap_or(Ok(0));
                        return Err(refusal_or(reason, e));
                    }
                    Err(e) => return Err(e),
                },
                r = &mut recv, if received.is_none() => received = Some(r?),
            }
        }
        (sent.unwrap_or(0), received.unwrap_or(0))
    };
    let stream = rd.unsplit(wr);
    acknowledged(&stream, peer).await?;
    Ok(StreamStats { sent, received })
}

/// The longest the end of a stream waits for the peer to acknowledge our last bytes.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// Waits until the peer's TCP has acknowledged everything we sent, our FIN included. Our
/// bytes are the peer's only then: the process may exit right after the transfer, and the
/// socket it leaves behind gives up after a few retransmissions (tcp_orphan_retries, tcp(7))
/// -- on a lossy path before the peer had the end of the stream, which then waits for it
/// indefinitely (seen at 10% loss in the lab).
async fn acknowledged(stream: &TlsStream<TcpStream>, peer: SocketAddr) -> Result<(), StreamError> {
    let (tcp, _) = stream.get_ref();
    let until = tokio::time::Instant::now() + ACK_WAIT;
    loop {
        match crate::os::tcp_queue::unacknowledged(tcp) {
            // An error: nothing to learn about the queue; the transfer itself went well.
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) if tokio::time::Instant::now() >= until => {
                return Err(StreamError::ConnectionLost {
                    peer,
                    reason: format!(
                        "the peer did not acknowledge the last {n} bytes within {} s",
                        ACK_WAIT.as_secs()
                    ),
                })
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

//! Bringing the two connections up: the client's racing handshakes and its commitment, the
//! server's accepting from the peer's address alone; the pin checks run inside the handshakes.

use super::{
    Session, ATTEMPT_INTERVAL, CLOSE_ERROR, CLOSE_INTERRUPTED, CONFIRM_POLL, MAX_ATTEMPTS,
};
use crate::error::StreamError;
use crate::transport::pin::SERVER_NAME;
use crate::transport::Role;
use quinn::{ConnectionError, Endpoint, ReadError, ReadExactError, RecvStream, SendStream, VarInt};
use std::net::SocketAddr;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Which way a connection carries data. The client asks for a server name per direction and
/// attempt, which is how the server tells its connections apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    ClientToServer,
    ServerToClient,
}

impl Direction {
    const BOTH: [Direction; 2] = [Direction::ClientToServer, Direction::ServerToClient];

    fn label(self) -> &'static str {
        match self {
            Direction::ClientToServer => "client-to-server",
            Direction::ServerToClient => "server-to-client",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn server_name(self, attempt: u8) -> String {
        format!("{}-{attempt}.{SERVER_NAME}", self.label())
    }

    /// Direction and attempt of a connection accepted by the server.
    fn of(conn: &quinn::Connection) -> Option<(Direction, u8)> {
        let data = conn
            .handshake_data()?
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .ok()?;
        let name = data.server_name?;
        let name = name.strip_suffix(SERVER_NAME)?.strip_suffix('.')?;
        Direction::BOTH.into_iter().find_map(|d| {
            let attempt = name.strip_prefix(d.label())?.strip_prefix('-')?;
            Some((d, attempt.parse().ok()?))
        })
    }
}

/// The two connections a session settled on, and the stream that carried the commitment.
pub(super) struct Link {
    pub(super) outgoing: quinn::Connection,
    pub(super) incoming: quinn::Connection,
    /// The client's stream on `outgoing`, the commitment already written.
    pub(super) send: Option<SendStream>,
    /// The server's stream on `incoming`, the commitment already read.
    pub(super) recv: Option<RecvStream>,
}

/// Completes a client handshake and waits until the server confirms it (HANDSHAKE_DONE), which
/// says the server has the connection too: the client's side is complete as soon as it sends
/// its Finished, and until that arrives the server drops everything else the client sends.
async fn confirmed_handshake(
    connecting: quinn::Connecting,
) -> Result<quinn::Connection, ConnectionError> {
    let conn = connecting.await?;
    loop {
        if conn.stats().frame_rx.handshake_done > 0 {
            return Ok(conn);
        }
        if let Some(e) = conn.close_reason() {
            return Err(e);
        }
        tokio::time::sleep(CONFIRM_POLL).await;
    }
}

/// The commitment's length: the bytes of the client-to-server stream that the transfer finds
/// already read.
pub(super) const COMMITMENT_LEN: usize = 1;

/// Reads the client's commitment from the first stream on a client-to-server connection: the
/// attempt number of the server-to-client connection that goes with it. `Err(Ok(_))` means
/// the connection ended first (an attempt the client dropped), `Err(Err(_))` a broken stream.
async fn read_commitment(
    conn: quinn::Connection,
) -> Result<(quinn::Connection, RecvStream, u8), Result<ConnectionError, StreamError>> {
    let peer = conn.remote_address();
    let mut recv = conn.accept_uni().await.map_err(Ok)?;
    let mut attempt = [0u8; COMMITMENT_LEN];
    match recv.read_exact(&mut attempt).await {
        Ok(()) => Ok((conn, recv, attempt[0])),
        Err(ReadExactError::ReadError(ReadError::ConnectionLost(e))) => Err(Ok(e)),
        Err(e) => Err(Err(StreamError::Protocol {
            peer,
            reason: format!("its stream did not start with a commitment ({e})"),
        })),
    }
}

fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6 addresses.
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// The peer was asked to stop: nothing more will come from it, in setup either.
fn is_interrupted(e: &ConnectionError) -> bool {
    matches!(e, ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(CLOSE_INTERRUPTED))
}

impl Session {
    fn timed_out(&self, hint: impl Into<String>) -> StreamError {
        StreamError::HandshakeTimeout {
            proto: "QUIC",
            peer: self.peer,
            secs: self.timeout.as_secs_f64(),
            hint: hint.into(),
        }
    }

    /// Why setup ran out of time, from what did come up.
    fn setup_timed_out(
        &self,
        up: &[quinn::Connection],
        stranger: Option<SocketAddr>,
    ) -> StreamError {
        if !up.is_empty() {
            return self.timed_out(
                "only part of the connections came up (is the path losing most packets?)",
            );
        }
        match (self.role, stranger) {
            (Role::Client, _) => {
                self.timed_out("no answer (is the peer running, and is the hole still open?)")
            }
            // Most likely the peer itself, from a port its NAT picked anew.
            (Role::Server, Some(from)) => self.timed_out(format!(
                "only {from} tried to connect, which is not the peer's address (did the peer's NAT change its mapping?)"
            )),
            (Role::Server, None) => self
                .timed_out("it did not connect (is it running, and is the hole still open?)"),
        }
    }

    /// Races handshakes for both directions until one of each is confirmed, then commits to
    /// that pair. On failure, also returns the connections that came up.
    pub(super) async fn connect(
        &self,
        endpoint: &Endpoint,
        config: quinn::ClientConfig,
        deadline: Instant,
    ) -> Result<Link, (StreamError, Vec<quinn::Connection>)> {
        let mut attempts = tokio::task::JoinSet::new();
        let mut started = [0u8; 2];
        let mut confirmed: [Option<(u8, quinn::Connection)>; 2] = [None, None];
        let mut next_round = Instant::now();
        let racing = async {
            loop {
                if let [Some((_, to_server)), Some((attempt, to_client))] = &confirmed {
                    return Ok((to_server.clone(), *attempt, to_client.clone()));
                }
                tokio::select! {
                    () = tokio::time::sleep_until(next_round) => {
                        next_round += ATTEMPT_INTERVAL;
                        for d in Direction::BOTH {
                            let n = &mut started[d.index()];
                            if confirmed[d.index()].is_some() || *n >= MAX_ATTEMPTS {
                                continue;
                            }
                            let connecting = endpoint
                                .connect_with(config.clone(), self.peer, &d.server_name(*n))
                                .map_err(|e| StreamError::Setup(format!("cannot connect to {}: {e}", self.peer)))?;
                            if *n > 0 {
                                debug!(peer = %self.peer, direction = d.label(), attempt = *n, "no confirmed handshake yet; starting another");
                            }
                            let attempt = *n;
                            *n += 1;
                            attempts.spawn(async move { (d, attempt, confirmed_handshake(connecting).await) });
                        }
                    }
                    Some(Ok((d, attempt, outcome))) = attempts.join_next() => match outcome {
                        Ok(conn) if confirmed[d.index()].is_none() => {
                            confirmed[d.index()] = Some((attempt, conn));
                        }
                        Ok(conn) => conn.close(CLOSE_ERROR.into(), b"superseded by another attempt"),
                        // quinn gives up on a silent peer after the idle timeout, which may be
                        // shorter than the caller's timeout; the next round tries again.
                        Err(ConnectionError::TimedOut) => {}
                        Err(e) => return Err(self.connection_error(e)),
                    },
                }
            }
        };
        let outcome = tokio::time::timeout_at(deadline, racing).await;
        let up = || {
            confirmed
                .iter()
                .flatten()
                .map(|(_, c)| c.clone())
                .collect::<Vec<_>>()
        };
        let (to_server, attempt, to_client) = match outcome {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err((e, up())),
            Err(_) => return Err((self.setup_timed_out(&up(), None), up())),
        };
        // Unconfirmed attempts still in flight are dropped here, which closes them.
        drop(attempts);
        let commit = async {
            let mut send = to_server
                .open_uni()
                .await
                .map_err(|e| self.connection_error(e))?;
            send.write_all(&[attempt])
                .await
                .map_err(|e| self.write_error(e))?;
            Ok(send)
        };
        match commit.await {
            Ok(send) => Ok(Link {
                outgoing: to_server,
                incoming: to_client,
                send: Some(send),
                recv: None,
            }),
            Err(e) => Err((e, vec![to_server, to_client])),
        }
    }

    /// Accepts the client's handshakes from the peer's address, side by side, until the
    /// client commits to a pair. On failure, also returns the connections that came up.
    pub(super) async fn accept(
        &self,
        endpoint: &Endpoint,
        deadline: Instant,
    ) -> Result<Link, (StreamError, Vec<quinn::Connection>)> {
        // A failed attempt from the peer's address is reported if nothing better arrives:
        // it may have been a stranger (so keep waiting), but most likely it is the reason.
        let mut failure = None;
        let mut stranger = None;
        let mut up: Vec<quinn::Connection> = Vec::new();
        let mut to_client: Vec<(u8, quinn::Connection)> = Vec::new();
        let mut committed: Option<(quinn::Connection, RecvStream, u8)> = None;
        let mut handshakes = tokio::task::JoinSet::new();
        let mut commitments = tokio::task::JoinSet::new();
        let waiting = async {
            loop {
                if let Some((_, _, attempt)) = &committed {
                    // The client saw this handshake confirmed, so it completes here too,
                    // if perhaps a moment after the commitment arrived.
                    if let Some((_, chosen)) = to_client.iter().find(|(n, _)| n == attempt) {
                        let chosen = chosen.clone();
                        let (from_client, recv, _) = committed.take().expect("checked above");
                        return Ok((from_client, recv, chosen));
                    }
                }
                tokio::select! {
                    incoming = endpoint.accept() => {
                        let Some(incoming) = incoming else {
                            return Err(StreamError::Setup("the QUIC endpoint closed".into()));
                        };
                        let from = incoming.remote_address();
                        if !same_addr(from, self.peer) {
                            info!(%from, peer = %self.peer, "refusing a QUIC connection from an address that is not the peer's");
                            incoming.refuse();
                            stranger = Some(from);
                            continue;
                        }
                        handshakes.spawn(async move { (from, incoming.await) });
                    }
                    Some(Ok((from, handshake))) = handshakes.join_next() => {
                        let conn = match handshake {
                            Ok(conn) => conn,
                            Err(e) if is_interrupted(&e) => return Err(self.connection_error(e)),
                            Err(e) => {
                                let e = self.connection_error(e);
                                warn!(%from, "QUIC connection attempt failed, waiting on: {e}");
                                // A client that fails its pin check closes its other
                                // handshakes too, and those closes carry no reason (RFC 9000
                                // section 10.2.3); the certificate verdict is the one to keep.
                                if !failure.as_ref().is_some_and(StreamError::is_auth_failure) {
                                    failure = Some(e);
                                }
                                continue;
                            }
                        };
                        up.push(conn.clone());
                        match Direction::of(&conn) {
                            Some((Direction::ClientToServer, _)) => {
                                commitments.spawn(read_commitment(conn));
                            }
                            Some((Direction::ServerToClient, attempt)) => to_client.push((attempt, conn)),
                            None => {
                                return Err(StreamError::Protocol {
                                    peer: self.peer,
                                    reason: "it opened a connection for no known direction".into(),
                                })
                            }
                        }
                    }
                    Some(Ok(commitment)) = commitments.join_next() => match commitment {
                        Ok(c) => committed = Some(c),
                        Err(Ok(e)) if is_interrupted(&e) => return Err(self.connection_error(e)),
                        // An attempt the client gave up on.
                        Err(Ok(e)) => debug!(peer = %self.peer, "a connection ended before its commitment: {e}"),
                        Err(Err(e)) => return Err(e),
                    },
                }
            }
        };
        let outcome = tokio::time::timeout_at(deadline, waiting).await;
        let (from_client, recv, to_client_chosen) = match outcome {
            Ok(Ok(chosen)) => chosen,
            Ok(Err(e)) => return Err((e, up)),
            Err(_) => {
                let e = failure.unwrap_or_else(|| self.setup_timed_out(&up, stranger));
                return Err((e, up));
            }
        };
        // The handshakes and connections the client did not choose are closed when dropped.
        for conn in up.iter().filter(|c| {
            ![&from_client, &to_client_chosen]
                .iter()
                .any(|k| k.stable_id() == c.stable_id())
        }) {
            conn.close(CLOSE_ERROR.into(), b"not chosen");
        }
        Ok(Link {
            outgoing: to_client_chosen,
            incoming: from_client,
            send: None,
            recv: Some(recv),
        })
    }
}

//! Moving the bytes over the two connections and closing them: each by its sender once all
//! of its data is acknowledged, or at once when the peer reports a failure.

use super::reorder::Reorder;
use super::setup::Link;
use super::{
    window_for, Session, CLOSE_DONE, CLOSE_LINGER, CLOSE_PROBES, CLOSE_PROBE_INTERVAL, INITIAL_RTT,
    STOP_OUTPUT_FAILED,
};
use crate::error::StreamError;
use crate::transport::StreamStats;
use bytes::Bytes;
use quinn::{ConnectionError, StoppedError, VarInt};
use std::convert::Infallible;
use std::io;
use std::pin::pin;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

/// Stream segments taken from quinn at once (each is about one packet's payload): what has
/// arrived in order goes to the output thread as one message.
const SEGMENTS: usize = 64;

/// Takes what quinn holds of `recv` into `reorder` -- waiting for the first piece, then as
/// many more as are ready, [`SEGMENTS`] in all at most -- and appends what is now in order to
/// `batch`. `Ok(true)` once the stream has ended.
async fn take_ready(
    recv: &mut quinn::RecvStream,
    reorder: &mut Reorder,
    batch: &mut Vec<Bytes>,
) -> Result<bool, quinn::ReadError> {
    let mut read = Some(recv.read_chunk(usize::MAX, false).await);
    let mut taken = 0;
    while let Some(r) = read {
        let Some(chunk) = r? else { return Ok(true) };
        reorder.push(chunk.offset, chunk.bytes, batch);
        taken += 1;
        read = if taken < SEGMENTS {
            ready(recv.read_chunk(usize::MAX, false)).await
        } else {
            None
        };
    }
    Ok(false)
}

/// The output of `fut` if it is ready at its first poll.
async fn ready<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

fn is_done(e: &ConnectionError) -> bool {
    matches!(e, ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(CLOSE_DONE))
}

/// Returns the close of `conn` once the peer has closed it for a failure or a stop; never
/// for any other end (ours, a clean one, or one that the stream operations report).
async fn closed_by_failure(conn: &quinn::Connection) -> ConnectionError {
    match conn.closed().await {
        ConnectionError::ApplicationClosed(c) if c.error_code != VarInt::from_u32(CLOSE_DONE) => {
            ConnectionError::ApplicationClosed(c)
        }
        _ => std::future::pending().await,
    }
}

/// Acknowledgements repeated after the peer's data stops arriving, at most.
const ACK_REPEATS: u32 = 2;
/// Bounds of the quiet spell after which an acknowledgement is repeated, the smallest round
/// trip seen on the connection.
const ACK_REPEAT_AFTER: (Duration, Duration) =
    (Duration::from_millis(2), Duration::from_millis(200));

/// Repeats our acknowledgement on the receiving connection when the peer's data stops
/// arriving, by sending a one-byte datagram (which carries an ACK frame) once per quiet
/// round trip, [`ACK_REPEATS`] times. Never returns.
///
/// Why: a sender whose whole window is lost can move on only by its probe timeout, which
/// doubles each time its two probes go unacknowledged (RFC 9002 section 6.2.1), and quinn
/// answers the two probes, arriving together, with one ACK. On a path losing ~36% each way
/// that one ACK was lost often enough that six or eight rounds in a row failed and the
/// timeout reached seconds (lab: transfers of 1 MiB stalled for 17-35 s, one of 16 died on
/// the idle timeout). Each repeat is another chance for the ACK to get through before the
/// timeout doubles again. While data keeps arriving nothing is sent: the spell is never
/// quiet.
async fn acknowledge_again(conn: &quinn::Connection) -> Infallible {
    let (min, max) = ACK_REPEAT_AFTER;
    let stream_frames = || conn.stats().frame_rx.stream;
    let mut seen = stream_frames();
    let mut repeats = 0;
    loop {
        tokio::time::sleep(conn.stats().path.min_rtt.clamp(min, max)).await;
        let now = stream_frames();
        if now != seen {
            seen = now;
            repeats = ACK_REPEATS;
        } else if repeats > 0 {
            repeats -= 1;
            // Fails only once the connection is closed, which the transfer reports.
            let _ = conn.send_datagram(Bytes::from_static(&[0]));
        }
    }
}

impl Session {
    /// Copies the input to a stream on the outgoing connection and the stream that the peer
    /// opens on the incoming one to the output. The server's stream becomes visible to the
    /// client with its first frame, so the client waits as long as the server's input stays
    /// silent.
    pub(super) async fn transfer(
        &self,
        link: Link,
        mut input: mpsc::Receiver<io::Result<Bytes>>,
        output: mpsc::Sender<Vec<Bytes>>,
        written: oneshot::Receiver<io::Result<()>>,
    ) -> Result<StreamStats, StreamError> {
        let peer = self.peer;
        let (outgoing, incoming) = (&link.outgoing, &link.incoming);

        let sending = async {
            let mut send = match link.send {
                Some(send) => send,
                None => outgoing
                    .open_uni()
                    .await
                    .map_err(|e| self.connection_error(e))?,
            };
            let mut sent = 0u64;
            let mut send_window = u64::from(super::WINDOW);
            while let Some(chunk) = input.recv().await {
                let chunk = chunk.map_err(StreamError::Input)?;
                // Handed over as it is: `write_all` would copy every byte into quinn.
                sent += chunk.len() as u64;
                send.write_chunk(chunk)
                    .await
                    .map_err(|e| self.write_error(e))?;
                // As large as the peer's credit for this path, so that the send buffer is
                // never what holds the stream back on a long path.
                let w = window_for(outgoing.min_rtt());
                if w != send_window {
                    send_window = w;
                    outgoing.set_send_window(w);
                }
            }
            // Fails only if the stream is already reset, which `stopped` reports below.
            let _ = send.finish();
            match send.stopped().await {
                Ok(None) => {
                    // All acknowledged: the peer needs nothing more on this connection.
                    self.close_done(outgoing);
                    Ok(sent)
                }
                Ok(Some(_)) => Err(StreamError::PeerStopped { peer }),
                // The peer read our stream to the end and gave up waiting for our close.
                Err(StoppedError::ConnectionLost(e)) if is_done(&e) => Ok(sent),
                Err(StoppedError::ConnectionLost(e)) => Err(self.connection_error(e)),
                Err(StoppedError::ZeroRttRejected) => Err(StreamError::Protocol {
                    peer,
                    reason: "0-RTT rejected although none was sent".into(),
                }),
            }
        };

        let receiving = async {
            // The client-to-server stream comes with the commitment read (`setup`).
            let (mut recv, start) = match link.recv {
                Some(recv) => (recv, super::setup::COMMITMENT_LEN as u64),
                None => (
                    incoming
                        .accept_uni()
                        .await
                        .map_err(|e| self.connection_error(e))?,
                    0,
                ),
            };
            let output_failed = |written: oneshot::Receiver<io::Result<()>>| async {
                match written.await {
                    Ok(Err(e)) => StreamError::Output(e),
                    _ => StreamError::Output(io::Error::other("the output thread ended")),
                }
            };
            // Read out of order, put in order here: see `reorder`.
            let mut reorder = Reorder::starting_at(start);
            let mut window = u64::from(super::WINDOW);
            let mut batch = Vec::new();
            loop {
                let finished = take_ready(&mut recv, &mut reorder, &mut batch)
                    .await
                    .map_err(|e| self.read_error(e))?;
                if !batch.is_empty() && output.send(std::mem::take(&mut batch)).await.is_err() {
                    let _ = recv.stop(STOP_OUTPUT_FAILED.into());
                    return Err(output_failed(written).await);
                }
                if finished {
                    if reorder.waiting() {
                        // quinn ends an unordered stream only once every byte was read.
                        return Err(StreamError::Protocol {
                            peer,
                            reason: format!(
                                "its stream ended with data missing after byte {}",
                                reorder.delivered()
                            ),
                        });
                    }
                    break;
                }
                // Changed in steps of an eighth of the window (as quinn announces credit):
                // each change takes the connection's lock, as reading its RTT does, once
                // per batch of up to `SEGMENTS` pieces.
                let full = window_for(incoming.min_rtt());
                let w = reorder.window(full);
                if w.abs_diff(window) >= full / 8 || (w == full && window != full) {
                    window = w;
                    incoming.set_receive_window(VarInt::from_u64(w).unwrap_or(VarInt::MAX));
                }
            }
            drop(output);
            match written.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(StreamError::Output(e)),
                Err(_) => {
                    return Err(StreamError::Output(io::Error::other(
                        "the output thread ended",
                    )))
                }
            }
            // The connection that carried more traffic has the better estimate, and the
            // minimum is not inflated by the handshake or by delayed ACKs.
            let rtt = [outgoing, incoming]
                .map(|c| c.stats().path.min_rtt)
                .into_iter()
                .min()
                .unwrap_or(INITIAL_RTT);
            self.await_close(incoming, rtt).await?;
            Ok(reorder.delivered() - start)
        };

        let (sent, received) = tokio::select! {
            both = async { tokio::try_join!(sending, receiving) } => both?,
            e = self.peer_failed(outgoing, incoming) => return Err(e),
            never = super::gso::watch(&self.gso_open, [outgoing, incoming], &self.pace) => match never {},
            never = acknowledge_again(incoming) => match never {},
        };
        let path = outgoing.stats().path;
        debug!(
            %peer, sent, received,
            packets = path.sent_packets,
            lost = path.lost_packets,
            congestion_events = path.congestion_events,
            cwnd = path.cwnd,
            mtu = path.current_mtu,
            rtt = ?path.rtt,
            "both directions done"
        );
        Ok(StreamStats { sent, received })
    }

    /// Returns once the peer closes either connection for a failure or a stop, which the
    /// directions would notice only on their own connection and, when our input is silent,
    /// the sending one not at all. The peer's close may also reach us on one connection only:
    /// quinn (0.11) never sends the close of a connection whose congestion window is full of
    /// stream data (quinn-rs/quinn#2785), which is the connection a busy sender sends on.
    async fn peer_failed(&self, a: &quinn::Connection, b: &quinn::Connection) -> StreamError {
        let e = tokio::select! {
            e = closed_by_failure(a) => e,
            e = closed_by_failure(b) => e,
        };
        self.connection_error(e)
    }

    /// After reading the whole stream on `conn`: waits (bounded by [`CLOSE_LINGER`]) for the
    /// peer to close the connection, which it does once it has our acknowledgement of all its
    /// data. Until then it may retransmit and need acknowledgements, so the connection stays
    /// open; a few datagrams make a peer whose close was lost repeat it.
    async fn await_close(
        &self,
        conn: &quinn::Connection,
        rtt: Duration,
    ) -> Result<(), StreamError> {
        let mut closed = pin!(conn.closed());
        let mut give_up = pin!(tokio::time::sleep(CLOSE_LINGER));
        let (min, max) = CLOSE_PROBE_INTERVAL;
        let interval = (rtt / 4).clamp(min, max);
        let mut probes = 0;
        let e = loop {
            tokio::select! {
                e = &mut closed => break e,
                () = &mut give_up => {
                    debug!(peer = %self.peer, "no close from the peer after its data; closing");
                    self.close_done(conn);
                    return Ok(());
                }
                () = tokio::time::sleep(interval), if probes < CLOSE_PROBES => {
                    probes += 1;
                    // Fails only once the connection is closed, which `closed` reports.
                    let _ = conn.send_datagram(Vec::new().into());
                }
            }
        };
        match e {
            // The peer's close, or its endpoint's reset after its closing period.
            e if is_done(&e) => Ok(()),
            ConnectionError::Reset | ConnectionError::TimedOut | ConnectionError::LocallyClosed => {
                Ok(())
            }
            e => Err(self.connection_error(e)),
        }
    }
}

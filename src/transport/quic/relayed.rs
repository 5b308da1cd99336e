//! QUIC through a TURN allocation (RFC 8656): a [`quinn::AsyncUdpSocket`] whose datagrams go
//! to the peer's relayed transport address through our own allocation, and whose received
//! datagrams are what the server relayed to us from it (Data indications or ChannelData,
//! sections 11 and 12), handed up as coming from that address. quinn then sees an
//! ordinary path between two relayed addresses.
//!
//! The TURN client and its socket to the server belong to the caller (a driver thread keeps
//! the allocation alive, RFC 8656 section 8): this socket only needs a way to send one
//! datagram through it and a queue of what was relayed to us.

use super::pace::{Pace, PacedPoller};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::mpsc;

/// Sends one datagram to a peer through the allocation. Losing it is allowed, as on UDP.
pub type RelaySend = Box<dyn Fn(SocketAddr, &[u8]) + Send + Sync>;

/// What QUIC needs of an allocation.
pub struct RelayLink {
    /// Our relayed transport address: what the peer sends to.
    pub local: SocketAddr,
    /// Hands a datagram to the allocation for the given peer address.
    pub send: RelaySend,
    /// Datagrams relayed to us, with the peer address they came from.
    pub recv: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
}

pub(super) struct RelayedSocket {
    local: SocketAddr,
    send: RelaySend,
    recv: Mutex<mpsc::Receiver<(SocketAddr, Vec<u8>)>>,
    /// Paced like a punched socket (`pace`): the path through the relay has a bottleneck and a
    /// queue like any other, and unpaced, quinn sends at 1.25 x its window per round trip.
    pace: Arc<Pace>,
}

impl RelayedSocket {
    pub(super) fn new(link: RelayLink, pace: Arc<Pace>) -> Arc<Self> {
        Arc::new(RelayedSocket {
            local: link.local,
            send: link.send,
            recv: Mutex::new(link.recv),
            pace,
        })
    }
}

impl fmt::Debug for RelayedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayedSocket")
            .field("local", &self.local)
            .finish()
    }
}

/// Sending never blocks: a datagram the relay path cannot take is lost, as on UDP.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for RelayedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(PacedPoller::new(
            self.pace.clone(),
            Box::pin(AlwaysWritable),
        ))
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.pace.sent(Instant::now(), transmit.contents.len());
        // One relayed datagram per QUIC datagram: each travels in its own ChannelData
        // message (RFC 8656 section 12), so a burst is split here.
        match transmit.segment_size {
            Some(size) if size > 0 => {
                for chunk in transmit.contents.chunks(size) {
                    (self.send)(transmit.destination, chunk);
                }
            }
            _ => (self.send)(transmit.destination, transmit.contents),
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut rx = match self.recv.lock() {
            Ok(rx) => rx,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let next = if n == 0 {
                rx.poll_recv(cx)
            } else {
                match rx.try_recv() {
                    Ok(d) => Poll::Ready(Some(d)),
                    Err(_) => break,
                }
            };
            match next {
                Poll::Ready(Some((from, data))) => {
                    let len = data.len().min(bufs[n].len());
                    bufs[n][..len].copy_from_slice(&data[..len]);
                    meta[n] = RecvMeta {
                        addr: from,
                        len,
                        stride: len,
                        ..RecvMeta::default()
                    };
                    n += 1;
                }
                Poll::Ready(None) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the TURN allocation is gone",
                    )))
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::task::Waker;

    /// The relayed path is paced like a punched one: past its rate's burst the poller holds
    /// the sender back, and every datagram still reaches the allocation.
    #[test]
    fn the_relayed_socket_is_paced() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _inside = runtime.enter();
        let handed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = handed.clone();
        let (_tx, recv) = mpsc::channel(1);
        let pace = Pace::new();
        let slot = pace.slot();
        // A kilobyte a second: what the rate refills while this thread waits for a core
        // (a loaded CI host) cannot change the count below.
        slot.store(1_000, Ordering::Relaxed);
        let socket = RelayedSocket::new(
            RelayLink {
                local: "192.0.2.1:3478".parse().unwrap(),
                send: Box::new(move |_, d| {
                    count.fetch_add(d.len(), Ordering::Relaxed);
                }),
                recv,
            },
            pace,
        );
        let mut poller = socket.clone().create_io_poller();
        let mut cx = Context::from_waker(Waker::noop());
        let datagram = [0u8; 1200];
        let t = Transmit {
            destination: "192.0.2.2:5000".parse().unwrap(),
            ecn: None,
            contents: &datagram,
            segment_size: None,
            src_ip: None,
        };
        let mut sent = 0;
        while poller.as_mut().poll_writable(&mut cx).is_ready() {
            socket.try_send(&t).unwrap();
            sent += 1;
            assert!(sent < 100, "never held back");
        }
        // The bucket's smallest burst (16 KiB) and the transmit that overdraws it.
        assert_eq!(sent, 16 * 1024 / 1200 + 1);
        assert_eq!(handed.load(Ordering::Relaxed), sent * 1200);
    }
}

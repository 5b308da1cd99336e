//! A message queue between threads whose receiving end is a descriptor, so a thread can
//! [`poll`](super::poll) it together with its sockets.
//!
//! The messages themselves stay in memory (a locked deque); the descriptor, one end of a Unix
//! datagram socket pair, only says "not empty": the sender writes one byte when it puts a
//! message into an empty queue, and the receiver reads it back when it finds the queue empty,
//! so a burst costs one wake-up, not a socket message each. Both changes of the flag happen
//! under the lock, so a message never waits behind a consumed wake-up. (`serve --relay`'s
//! thread is woken through one when another thread opens a relay socket.)
//!
//! Bounded: a queue holds at most the bytes it was made with, and a send beyond fails
//! (`WouldBlock`), as a full socket buffer would; the sender decides what to drop.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

struct Inner {
    msgs: VecDeque<Vec<u8>>,
    bytes: usize,
    /// A wake-up byte is in the socket (written at the last empty -> non-empty change).
    signalled: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    cap: usize,
}

/// The sending end; `&self` suffices, so threads share it.
pub struct QueueTx {
    shared: Arc<Shared>,
    wake: UnixDatagram,
}

/// The receiving end.
pub struct QueueRx {
    shared: Arc<Shared>,
    wake: UnixDatagram,
}

/// A queue holding at most `bytes` of messages.
pub fn pair(bytes: usize) -> io::Result<(QueueTx, QueueRx)> {
    let (tx, rx) = UnixDatagram::pair()?;
    tx.set_nonblocking(true)?;
    rx.set_nonblocking(true)?;
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            msgs: VecDeque::new(),
            bytes: 0,
            signalled: false,
        }),
        cap: bytes,
    });
    Ok((
        QueueTx {
            shared: Arc::clone(&shared),
            wake: tx,
        },
        QueueRx { shared, wake: rx },
    ))
}

fn full() -> io::Error {
    io::Error::new(io::ErrorKind::WouldBlock, "queue full")
}

impl QueueTx {
    /// Queues a copy of `msg`; fails (`WouldBlock`) when the queue is full.
    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        let mut q = self
            .shared
            .inner
            .lock()
            .map_err(|_| io::Error::other("queue lock poisoned"))?;
        if q.bytes + msg.len() > self.shared.cap {
            return Err(full());
        }
        q.bytes += msg.len();
        q.msgs.push_back(msg.to_vec());
        if !q.signalled {
            // The socket holds at most this one byte, so the write cannot find it full.
            q.signalled = self.wake.send(&[1]).is_ok();
        }
        Ok(())
    }
}

impl QueueRx {
    /// Copies the next message into `buf` (cut to its length), or `WouldBlock` when there is
    /// none.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let msg = self.take()?;
        let n = msg.len().min(buf.len());
        buf[..n].copy_from_slice(&msg[..n]);
        Ok(n)
    }

    /// The next message, or `WouldBlock` when there is none.
    pub fn take(&self) -> io::Result<Vec<u8>> {
        let mut q = self
            .shared
            .inner
            .lock()
            .map_err(|_| io::Error::other("queue lock poisoned"))?;
        if let Some(msg) = q.msgs.pop_front() {
            q.bytes -= msg.len();
            return Ok(msg);
        }
        if q.signalled {
            let mut b = [0u8; 8];
            while self.wake.recv(&mut b).is_ok() {}
            q.signalled = false;
        }
        Err(io::Error::new(io::ErrorKind::WouldBlock, "queue empty"))
    }
}

impl AsFd for QueueRx {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn messages_stay_whole_and_a_full_queue_refuses() {
        let (tx, rx) = pair(4096).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            rx.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        tx.send(b"one").unwrap();
        tx.send(b"two!").unwrap();
        assert_eq!(rx.recv(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"one");
        assert_eq!(rx.recv(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"two!");
        let big = [0u8; 1024];
        let sent = (0..10_000).take_while(|_| tx.send(&big).is_ok()).count();
        assert_eq!(sent, 4, "a full queue refuses");
        assert!(rx.take().is_ok());
        assert!(tx.send(&big).is_ok(), "room again once one is taken");
    }

    fn readable(rx: &QueueRx) -> bool {
        crate::os::poll::readable(&[rx.as_fd()], Duration::ZERO).unwrap()[0]
    }

    #[test]
    fn the_descriptor_is_readable_exactly_while_messages_wait() {
        let (tx, rx) = pair(1 << 16).unwrap();
        assert!(!readable(&rx));
        tx.send(b"a").unwrap();
        tx.send(b"b").unwrap();
        assert!(readable(&rx));
        assert_eq!(rx.take().unwrap(), b"a");
        assert_eq!(rx.take().unwrap(), b"b");
        // Still readable until an empty take consumes the wake-up.
        assert!(rx.take().is_err());
        assert!(!readable(&rx));
        tx.send(b"c").unwrap();
        assert!(
            readable(&rx),
            "a message after the queue ran dry wakes again"
        );
    }

    #[test]
    fn nothing_is_lost_between_threads() {
        let (tx, rx) = pair(1 << 20).unwrap();
        let tx = Arc::new(tx);
        let senders: Vec<_> = (0..2u8)
            .map(|k| {
                let tx = Arc::clone(&tx);
                std::thread::spawn(move || {
                    for i in 0..5000u32 {
                        let mut m = vec![k];
                        m.extend_from_slice(&i.to_be_bytes());
                        while tx.send(&m).is_err() {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut next = [0u32; 2];
        while next != [5000, 5000] {
            // An empty take consumed the wake-up; a message sent since must have made another.
            let woke = crate::os::poll::readable(&[rx.as_fd()], Duration::from_secs(5)).unwrap();
            assert!(woke[0], "a wake-up was lost at {next:?}");
            while let Ok(m) = rx.take() {
                let k = usize::from(m[0]);
                assert_eq!(u32::from_be_bytes(m[1..5].try_into().unwrap()), next[k]);
                next[k] += 1;
            }
        }
        for s in senders {
            s.join().unwrap();
        }
    }
}

//! A datagram queue between threads whose receiving end is a descriptor, so a thread can
//! [`poll`](super::poll) it together with its sockets: a Unix datagram socket pair, both ends
//! non-blocking. The kernel keeps each message whole and drops nothing silently: a full
//! queue fails the send, and the sender decides.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;

/// The sending end; `&self` suffices, so threads share it.
pub struct QueueTx(UnixDatagram);

/// The receiving end.
pub struct QueueRx(UnixDatagram);

/// A queue holding about `bytes` of messages (best effort: the kernel caps the buffers).
pub fn pair(bytes: usize) -> io::Result<(QueueTx, QueueRx)> {
    let (tx, rx) = UnixDatagram::pair()?;
    tx.set_nonblocking(true)?;
    rx.set_nonblocking(true)?;
    let _ = socket2::SockRef::from(&rx).set_recv_buffer_size(bytes);
    let _ = socket2::SockRef::from(&tx).set_send_buffer_size(bytes);
    Ok((QueueTx(tx), QueueRx(rx)))
}

impl QueueTx {
    /// Queues one message; fails (`WouldBlock`) when the queue is full.
    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        self.0.send(msg).map(|_| ())
    }
}

impl QueueRx {
    /// The next message, or `WouldBlock` when there is none.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
}

impl AsFd for QueueRx {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(sent < 10_000, "a full queue refuses");
    }
}

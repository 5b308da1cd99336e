//! Waiting for descriptors to become readable: the one `poll(2)` wrapper every loop uses
//! (the server's accept threads, the AF_PACKET watcher, the UDP driver). A signal that
//! interrupts the wait counts as "nothing ready", so the caller's loop goes round and sees
//! its shutdown flag.

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Waits up to `timeout` for any of `fds` to become readable; returns which are.
pub fn readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    // Rounded up so that a timer due in under a millisecond does not spin; waits past the
    // largest poll timeout are cut, which the callers' loops absorb.
    let ms = u16::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
    match poll(&mut pfds, PollTimeout::from(ms)) {
        Ok(_) => Ok(pfds
            .iter()
            .map(|p| {
                p.revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLERR))
            })
            .collect()),
        Err(Errno::EINTR) => Ok(vec![false; fds.len()]),
        Err(e) => Err(e.into()),
    }
}

/// Waits up to `timeout` for `fd` to become readable.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    Ok(readable(&[fd], timeout)?.first().copied().unwrap_or(false))
}

/// Ends another thread's wait early: [`wake_pair`]'s [`Waker`] writes a byte that makes its
/// [`WakeFd`] readable.
pub struct Waker(UnixStream);

/// The descriptor to wait on beside the others; see [`Waker`].
pub struct WakeFd(UnixStream);

/// A connected pair: wake with the first, wait on the second.
pub fn wake_pair() -> io::Result<(Waker, WakeFd)> {
    let (tx, rx) = UnixStream::pair()?;
    Ok((Waker(tx), WakeFd(rx)))
}

impl Waker {
    /// Wakes the waiting side; should that fail, the waiter still ends at its timeout.
    pub fn wake(&self) {
        let _ = (&self.0).write_all(&[1]);
    }
}

impl AsFd for WakeFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    #[test]
    fn readable_once_a_datagram_is_queued() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(!wait_readable(a.as_fd(), Duration::from_millis(1)).unwrap());
        b.send_to(b"x", a.local_addr().unwrap()).unwrap();
        assert!(wait_readable(a.as_fd(), Duration::from_secs(5)).unwrap());
        assert_eq!(
            readable(&[b.as_fd(), a.as_fd()], Duration::from_secs(1)).unwrap(),
            vec![false, true]
        );
    }

    #[test]
    fn a_wake_ends_the_wait_before_its_timeout() {
        let (waker, woken) = wake_pair().unwrap();
        let t = std::thread::spawn(move || readable(&[woken.as_fd()], Duration::from_secs(30)));
        waker.wake();
        // Readable, so the wake ended it (a timeout reports nothing ready).
        assert_eq!(t.join().unwrap().unwrap(), vec![true]);
    }
}

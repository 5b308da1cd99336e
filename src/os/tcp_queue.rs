//! What the kernel still holds of a TCP connection's outgoing bytes.

use std::io;
use std::os::fd::AsRawFd;

/// Bytes written to `sock` that the peer has not acknowledged yet, its FIN included: the
/// send queue's unsent and unacknowledged bytes (SIOCOUTQ, tcp(7)). Zero once the peer has
/// everything, or once the connection is closed.
pub fn unacknowledged(sock: &impl AsRawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ on Linux) writes one c_int through its pointer argument,
    // which points at `n`, alive for the whole call; the descriptor belongs to a live socket
    // that `sock` borrows.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// Bytes the peer's kernel has not taken are counted; once it took them, nothing is.
    #[test]
    fn counts_what_the_peer_has_not_acknowledged() {
        let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        // A small receive buffer (set before listen, inherited by the accepted socket)
        // closes the window while nothing reads.
        l.set_recv_buffer_size(4096).unwrap();
        l.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        l.listen(1).unwrap();
        let l: TcpListener = l.into();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut b, _) = l.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        let data = vec![7u8; 256 * 1024];
        let mut written = 0;
        while written < data.len() {
            match a.write(&data[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(written > 0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let held = unacknowledged(&a).unwrap();
        assert!(held > 0 && held <= written, "{held} of {written}");
        let mut buf = vec![0u8; written];
        b.read_exact(&mut buf).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while unacknowledged(&a).unwrap() > 0 {
            assert!(std::time::Instant::now() < deadline, "still unacknowledged");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

//! Drives a sans-IO state machine with real UDP sockets: send what it wants sent, wait for
//! datagrams or its next timeout with `poll(2)`, feed both back. Used by the NAT probe and
//! the hole punch alike.

use crate::core::{Machine, Transmit};
use crate::os::capture::Capture;
use crate::os::poll;
use crate::os::signals::Shutdown;
use crate::Error;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Sends everything the machine has queued, recording it in the capture.
pub fn flush(
    m: &mut impl Machine,
    sockets: &[UdpSocket],
    locals: &[SocketAddr],
    mut capture: Option<&mut Capture>,
) -> Result<(), Error> {
    while let Some(Transmit {
        socket: i,
        dst,
        payload,
    }) = m.poll_transmit()
    {
        let Some(s) = sockets.get(i) else { continue };
        match s.send_to(&payload, dst) {
            // A send error (no route, EPERM from a firewall) is loss to the machine, which
            // retransmits or concludes from silence, as it should.
            Err(e) => tracing::debug!(%dst, error = %e, "send failed"),
            Ok(_) => {
                if let Some(cap) = capture.as_deref_mut() {
                    cap.udp(locals[i], dst, &payload)?;
                }
            }
        }
    }
    Ok(())
}

/// Runs `m` until it is finished or `between` says stop (it is called after every step and
/// may inspect the machine's events). Polls at least every 200 ms so Ctrl-C is noticed; on
/// SIGINT or SIGTERM it returns [`Error::Interrupted`] naming the signal.
pub fn drive<M: Machine>(
    m: &mut M,
    sockets: &[UdpSocket],
    locals: &[SocketAddr],
    mut capture: Option<&mut Capture>,
    shutdown: &Shutdown,
    mut between: impl FnMut(&mut M) -> bool,
) -> Result<(), Error> {
    let mut buf = vec![0u8; 2048];
    loop {
        flush(m, sockets, locals, capture.as_deref_mut())?;
        if !between(m) || m.is_done() {
            return Ok(());
        }
        if shutdown.requested() {
            return Err(shutdown.interrupted());
        }
        let now = Instant::now();
        let wait = m
            .poll_timeout()
            .map_or(Duration::from_millis(200), |t| {
                t.saturating_duration_since(now)
            })
            .min(Duration::from_millis(200));
        let fds: Vec<_> = sockets.iter().map(|s| s.as_fd()).collect();
        let ready = poll::readable(&fds, wait).map_err(|e| Error::io("poll", e))?;
        for (i, s) in sockets.iter().enumerate().filter(|(i, _)| ready[*i]) {
            loop {
                match s.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        if let Some(cap) = capture.as_deref_mut() {
                            cap.udp(from, locals[i], &buf[..n])?;
                        }
                        m.handle_input(Instant::now(), i, from, &buf[..n]);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // ICMP errors surface as ECONNREFUSED and the like: that packet is lost,
                    // which retransmission already accounts for.
                    Err(e) => {
                        tracing::debug!(socket = i, error = %e, "recv error");
                        break;
                    }
                }
            }
        }
        let now = Instant::now();
        if m.poll_timeout().is_some_and(|t| t <= now) {
            m.handle_timeout(now);
        }
    }
}

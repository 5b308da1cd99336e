//! Drives a sans-IO state machine with real UDP sockets: send what it wants sent, wait for
//! datagrams or its next timeout with `poll(2)`, feed both back. Used by the NAT probe and
//! the hole punch alike.

use crate::os::capture::Capture;
use crate::os::signals::Shutdown;
use crate::Error;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// The driving interface shared by [`crate::core::classify::Classifier`] and
/// [`crate::core::punch::Punch`].
pub trait Machine {
    fn next_transmit(&mut self) -> Option<(usize, SocketAddr, Vec<u8>)>;
    fn next_timeout(&self) -> Option<Instant>;
    fn input(&mut self, now: Instant, socket: usize, from: SocketAddr, data: &[u8]);
    fn timeout(&mut self, now: Instant);
    fn finished(&self) -> bool;
}

/// Both machines share the quinn-proto style method names; the trait only adapts them.
macro_rules! impl_machine {
    ($t:ty) => {
        impl Machine for $t {
            fn next_transmit(&mut self) -> Option<(usize, SocketAddr, Vec<u8>)> {
                self.poll_transmit().map(|t| (t.socket, t.dst, t.payload))
            }
            fn next_timeout(&self) -> Option<Instant> {
                self.poll_timeout()
            }
            fn input(&mut self, now: Instant, socket: usize, from: SocketAddr, data: &[u8]) {
                self.handle_input(now, socket, from, data)
            }
            fn timeout(&mut self, now: Instant) {
                self.handle_timeout(now)
            }
            fn finished(&self) -> bool {
                self.is_done()
            }
        }
    };
}

impl_machine!(crate::core::classify::Classifier);
impl_machine!(crate::core::punch::Punch);

/// Sends everything the machine has queued, recording it in the capture.
pub fn flush(
    m: &mut impl Machine,
    sockets: &[UdpSocket],
    locals: &[SocketAddr],
    mut capture: Option<&mut Capture>,
) -> Result<(), Error> {
    while let Some((i, dst, payload)) = m.next_transmit() {
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
        if !between(m) || m.finished() {
            return Ok(());
        }
        if shutdown.requested() {
            return Err(shutdown.interrupted());
        }
        let now = Instant::now();
        let wait = m
            .next_timeout()
            .map_or(Duration::from_millis(200), |t| {
                t.saturating_duration_since(now)
            })
            .min(Duration::from_millis(200));
        let mut fds: Vec<PollFd> = sockets
            .iter()
            .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
            .collect();
        // Round up so a timer due in under a millisecond does not spin.
        let ms = u16::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(200);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error::io("poll", e.into())),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
            .collect();
        drop(fds);
        for (i, s) in sockets.iter().enumerate().filter(|(i, _)| ready[*i]) {
            loop {
                match s.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        if let Some(cap) = capture.as_deref_mut() {
                            cap.udp(from, locals[i], &buf[..n])?;
                        }
                        m.input(Instant::now(), i, from, &buf[..n]);
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
        if m.next_timeout().is_some_and(|t| t <= now) {
            m.timeout(now);
        }
    }
}

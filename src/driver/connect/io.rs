//! Where the stream's bytes come from and go to: stdin and stdout for the command line, one
//! end of a local socket pair for a program that embeds punchraw (`crate::api`), whose other
//! end it reads and writes. The connect itself is the same either way.

use super::ConnectReport;
use crate::os::UnixStream;
use crate::Error;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::Arc;

/// The stream's input and output.
#[derive(Debug, Clone, Default)]
pub enum StreamIo {
    /// stdin to the peer, the peer's bytes to stdout.
    #[default]
    Stdio,
    /// The embedder's socket: what it writes goes to the peer, the peer's bytes can be read
    /// from it; the end of the peer's data shuts our side's writing down, so the embedder
    /// reads EOF.
    Socket(Arc<UnixStream>),
}

impl StreamIo {
    pub(super) fn input(&self) -> Result<Box<dyn Read + Send>, Error> {
        Ok(match self {
            StreamIo::Stdio => Box::new(std::io::stdin()),
            StreamIo::Socket(s) => Box::new(clone(s)?),
        })
    }

    pub(super) fn output(&self) -> Result<Box<dyn Write + Send>, Error> {
        Ok(match self {
            // A handle of its own on fd 1: `Stdout` searches every write for a newline to
            // flush at (its line buffering), a tenth of the output thread's time at
            // hundreds of MiB/s, and the pump writes large blocks unbuffered anyway.
            StreamIo::Stdio => Box::new(std::fs::File::from(
                std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| Error::io("cannot duplicate stdout", e))?,
            )),
            StreamIo::Socket(s) => Box::new(HalfClose(clone(s)?)),
        })
    }
}

fn clone(s: &UnixStream) -> Result<UnixStream, Error> {
    s.try_clone()
        .map_err(|e| Error::io("cannot duplicate the embedder's stream socket", e))
}

/// Writes to the embedder's socket; when the stream is done with it (dropped), the
/// embedder reads EOF, however many other handles of the socket are open.
struct HalfClose(UnixStream);

impl Write for HalfClose {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.0.write_vectored(bufs)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Drop for HalfClose {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Write);
    }
}

/// Told once, when the stream's path is open (`crate::api` returns the connection then).
#[derive(Clone)]
pub struct OnConnected(pub Arc<dyn Fn(&ConnectReport) + Send + Sync>);

impl std::fmt::Debug for OnConnected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnConnected")
    }
}

impl ConnectReport {
    /// The stream's path is open: whoever waits for that hears it. The stream's CPU time
    /// counts from here.
    pub(super) fn now_connected(&mut self) {
        self.cpu_at_connect = crate::os::cpu_time();
        if let Some(n) = &self.on_connected {
            (n.0)(self);
        }
    }
}

//! The blocking ends of a stream: the user's input (stdin, a file) read on a thread of its
//! own into a channel, and the peer's bytes written from a channel to the output on another.
//! Shared by the QUIC and the TLS-over-TCP streams, which run on an async runtime.

use std::io::{self, Read, Write};
use tokio::sync::{mpsc, oneshot};

/// Size of one read from the input and from the stream.
pub(crate) const CHUNK: usize = 64 * 1024;
/// Chunks in flight between the blocking I/O threads and the connection.
pub(crate) const CHANNEL_DEPTH: usize = 8;

pub(crate) fn read_input(mut input: impl Read, tx: mpsc::Sender<io::Result<Vec<u8>>>) {
    loop {
        let mut buf = vec![0; CHUNK];
        match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                if tx.blocking_send(Ok(buf)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

/// Reports through `written` once everything is written and flushed, or the first error;
/// the receive direction counts as done only then.
pub(crate) fn write_output(
    mut output: impl Write,
    mut rx: mpsc::Receiver<Vec<u8>>,
    written: oneshot::Sender<io::Result<()>>,
) {
    let mut copy = || -> io::Result<()> {
        while let Some(chunk) = rx.blocking_recv() {
            output.write_all(&chunk)?;
            // Flush when caught up, so interactive use sees data at once without a flush per
            // chunk during bulk transfers.
            if rx.is_empty() {
                output.flush()?;
            }
        }
        output.flush()
    };
    let result = copy();
    // Closing the channel first makes the connection side stop sending chunks at once.
    drop(rx);
    let _ = written.send(result);
}

//! The blocking ends of a stream: the user's input (stdin, a file) read on a thread of its
//! own into a channel, and the peer's bytes written from a channel to the output on another.
//! Shared by the QUIC and the TLS-over-TCP streams, which run on an async runtime.

use bytes::Bytes;
use std::io::{self, BufWriter, Read, Write};
use tokio::sync::{mpsc, oneshot};

/// Size of one read from the input and from the stream. Each chunk costs a channel message, a
/// wake-up of the connection's thread and an allocation; at 64 KiB those held a QUIC stream
/// on a clean lab path to ~440 MiB/s, at 256 KiB it carried ~550 (at 1 MiB no more, and the
/// TLS stream less). A read returns what is there, so interactive input is not held back.
pub(crate) const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the blocking I/O threads and the connection.
pub(crate) const CHANNEL_DEPTH: usize = 8;
/// The output is written in blocks of up to this much: a QUIC stream hands over one
/// packet's worth of data at a time, and a write per packet cost more CPU than the stream
/// itself (measured: a third of the receiver's time on a fast path).
const OUTPUT_BUFFER: usize = 256 * 1024;

/// What the connection side hands the output thread.
pub(crate) trait OutputChunk: Send + 'static {
    fn write_into(&self, out: &mut impl Write) -> io::Result<()>;
}

impl OutputChunk for Vec<u8> {
    fn write_into(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(self)
    }
}

/// The segments of a stream that were ready at once, in order: one channel message (and at
/// most one wake-up of the output thread) for many packets.
impl OutputChunk for Vec<Bytes> {
    fn write_into(&self, out: &mut impl Write) -> io::Result<()> {
        self.iter().try_for_each(|b| out.write_all(b))
    }
}

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
pub(crate) fn write_output<T: OutputChunk>(
    output: impl Write,
    mut rx: mpsc::Receiver<T>,
    written: oneshot::Sender<io::Result<()>>,
) {
    let mut output = BufWriter::with_capacity(OUTPUT_BUFFER, output);
    let mut copy = || -> io::Result<()> {
        while let Some(chunk) = rx.blocking_recv() {
            chunk.write_into(&mut output)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records every write the output receives.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<usize>>>, Arc<Mutex<Vec<u8>>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.len());
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn packet_sized_segments_reach_the_output_in_order_and_in_few_writes() {
        let out = Recorder::default();
        let (tx, rx) = mpsc::channel::<Vec<Bytes>>(CHANNEL_DEPTH);
        let (done_tx, done_rx) = oneshot::channel();
        let writer = {
            let out = out.clone();
            std::thread::spawn(move || write_output(out, rx, done_tx))
        };
        // 2,000 segments of 1,200 bytes (about 2.3 MiB), sent in batches of 50 as the QUIC
        // receiver does, while the writer is free to catch up at any time.
        let mut expected = Vec::new();
        for batch in 0..40u32 {
            let segs: Vec<Bytes> = (0..50u32)
                .map(|i| Bytes::from(vec![(batch * 50 + i) as u8; 1200]))
                .collect();
            segs.iter().for_each(|s| expected.extend_from_slice(s));
            tx.blocking_send(segs).unwrap();
        }
        drop(tx);
        writer.join().unwrap();
        done_rx.blocking_recv().unwrap().unwrap();
        assert_eq!(*out.1.lock().unwrap(), expected);
        let writes = out.0.lock().unwrap().len();
        // At most a write per batch (the writer flushes when it has caught up), never one
        // per segment.
        assert!(writes <= 40, "{writes} writes for 2,000 segments");
    }
}

//! The blocking ends of a stream: the user's input (stdin, a file) read on a thread of its
//! own into a channel, and the peer's bytes written from a channel to the output on another.
//! Shared by the QUIC and the TLS-over-TCP streams, which run on an async runtime.

use bytes::Bytes;
use std::io::{self, IoSlice, Read, Write};
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
/// itself (measured: a third of the receiver's time on a fast path). The segments go out
/// in one vectored write each, from the buffers they arrived in: a copy into a buffer of our
/// own was a tenth of the output thread's time.
const OUTPUT_BUFFER: usize = 256 * 1024;
/// Segments one `writev` takes at most (Linux's `IOV_MAX`).
const MAX_SLICES: usize = 1024;

/// What the connection side hands the output thread.
pub(crate) trait OutputChunk: Send + 'static {
    /// Bytes in the chunk.
    fn size(&self) -> usize;
    /// The chunk's bytes, in order, as slices for a vectored write.
    fn slices(&self) -> impl Iterator<Item = IoSlice<'_>>;
}

impl OutputChunk for Vec<u8> {
    fn size(&self) -> usize {
        self.len()
    }
    fn slices(&self) -> impl Iterator<Item = IoSlice<'_>> {
        std::iter::once(IoSlice::new(self))
    }
}

/// The segments of a stream that were ready at once, in order: one channel message (and at
/// most one wake-up of the output thread) for many packets.
impl OutputChunk for Vec<Bytes> {
    fn size(&self) -> usize {
        self.iter().map(Bytes::len).sum()
    }
    fn slices(&self) -> impl Iterator<Item = IoSlice<'_>> {
        self.iter().map(|b| IoSlice::new(b))
    }
}

/// `write_all` for a list of slices, [`MAX_SLICES`] per call.
fn write_all_vectored(out: &mut impl Write, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = slices.len().min(MAX_SLICES);
        match out.write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => IoSlice::advance_slices(&mut slices, k),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Input buffers kept for reuse at most (idle: [`CHUNK`] each).
const POOL: usize = 32;

/// One read's bytes, in a buffer that goes back to the reader's pool when the stream is done
/// with it (QUIC holds it until the peer acknowledged it): a fresh buffer per read had to be
/// zeroed first, a third of the input thread's time at hundreds of MiB/s.
struct Pooled {
    buf: Vec<u8>,
    len: usize,
    pool: std::sync::mpsc::SyncSender<Vec<u8>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // A full pool (or a reader gone) frees it.
        let _ = self.pool.try_send(std::mem::take(&mut self.buf));
    }
}

pub(crate) fn read_input(mut input: impl Read, tx: mpsc::Sender<io::Result<Bytes>>) {
    let (back, pool) = std::sync::mpsc::sync_channel(POOL);
    loop {
        let mut buf = pool.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let chunk = Bytes::from_owner(Pooled {
                    buf,
                    len: n,
                    pool: back.clone(),
                });
                if tx.blocking_send(Ok(chunk)).is_err() {
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
/// the receive direction counts as done only then. Each write takes what is queued at that
/// moment (up to [`OUTPUT_BUFFER`]), so interactive use sees data at once and bulk transfers
/// are written in large blocks.
pub(crate) fn write_output<T: OutputChunk>(
    mut output: impl Write,
    mut rx: mpsc::Receiver<T>,
    written: oneshot::Sender<io::Result<()>>,
) {
    let mut copy = || -> io::Result<()> {
        let mut batch: Vec<T> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut size = first.size();
            batch.push(first);
            while size < OUTPUT_BUFFER {
                match rx.try_recv() {
                    Ok(c) => {
                        size += c.size();
                        batch.push(c);
                    }
                    Err(_) => break,
                }
            }
            let mut slices: Vec<IoSlice<'_>> = batch.iter().flat_map(T::slices).collect();
            write_all_vectored(&mut output, &mut slices)?;
            drop(slices);
            batch.clear();
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
            self.write_vectored(&[IoSlice::new(buf)])
        }
        /// Takes at most 1,000 slices per call, so partial writes are exercised too.
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut n = 0;
            for b in bufs.iter().take(1000) {
                self.1.lock().unwrap().extend_from_slice(b);
                n += b.len();
            }
            self.0.lock().unwrap().push(n);
            Ok(n)
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
        // At most a write per batch (the writer takes what is queued), never one
        // per segment.
        assert!(writes <= 40, "{writes} writes for 2,000 segments");
    }

    #[test]
    fn more_segments_than_one_vectored_write_takes_arrive_whole_and_in_order() {
        let out = Recorder::default();
        let (tx, rx) = mpsc::channel::<Vec<Bytes>>(CHANNEL_DEPTH);
        let (done_tx, done_rx) = oneshot::channel();
        let writer = {
            let out = out.clone();
            std::thread::spawn(move || write_output(out, rx, done_tx))
        };
        // 3,000 segments, some empty: past IOV_MAX, and past what the recorder takes per call.
        let segs: Vec<Bytes> = (0..3000u32)
            .map(|i| Bytes::from(vec![i as u8; (i % 7) as usize]))
            .collect();
        let expected: Vec<u8> = segs.iter().flat_map(|s| s.iter().copied()).collect();
        tx.blocking_send(segs).unwrap();
        drop(tx);
        writer.join().unwrap();
        done_rx.blocking_recv().unwrap().unwrap();
        assert_eq!(*out.1.lock().unwrap(), expected);
        assert!(
            out.0.lock().unwrap().len() >= 3,
            "one call per IOV_MAX slices at most"
        );
    }
}

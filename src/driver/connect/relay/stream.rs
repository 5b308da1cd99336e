//! TURN to the server over TCP or TLS (RFC 8656 section 3.1): the client-to-server leg is a
//! byte stream, the relayed leg stays UDP. The sans-IO client takes and gives whole
//! messages; this module frames them: STUN messages and ChannelData, the latter padded to a
//! multiple of 4 (section 12.5), read back with [`frame_len`].
//!
//! Writes never block the caller (the QUIC socket sends through here, under the TURN
//! client's lock): frames go to a writer thread through a queue, and relayed data that finds
//! the queue full is dropped as a full UDP socket would drop it -- QUIC's congestion control
//! is what paces the stream, not TCP's. Requests (Refresh, ChannelBind...) are never
//! dropped. With TLS, the rustls connection encrypts under its own lock and hands the
//! records to the same queue in that order.

use crate::core::stun::{frame_len, ChannelData, Class, MessageType, Method};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The wait for the TCP connection and, with TLS, for the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A write the server does not take in this long means it is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes waiting for the writer beyond which relayed data is dropped.
const MAX_QUEUED: usize = 1 << 20;
/// Bytes the writer hands the kernel in one write at most.
const BATCH: usize = 64 * 1024;
/// The writer's bound on noticing that the connection is done.
const POLL: Duration = Duration::from_millis(100);
/// The largest frame: a STUN message of the largest declared length.
const MAX_FRAME: usize = 20 + 65_535;

/// TLS toward the TURN server: the name its certificate must carry and the trust to check
/// it with.
pub(super) struct Tls {
    pub(super) name: ServerName<'static>,
    pub(super) config: Arc<ClientConfig>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sending half: frames to the writer thread.
pub(super) struct Writer {
    tx: mpsc::Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    tls: Option<Arc<Mutex<ClientConnection>>>,
}

/// The receiving half, driven by the relay thread; dropping it closes the connection.
pub(super) struct Reader {
    sock: TcpStream,
    raw: Vec<u8>,
    /// Bytes of the TURN stream (decrypted, with TLS) not yet a whole frame.
    buf: Vec<u8>,
    tls: Option<Arc<Mutex<ClientConnection>>>,
    tx: mpsc::Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
}

/// Relayed data: what may be dropped when the queue is full (ChannelData, section 12, and
/// Send indications, section 11).
fn droppable(frame: &[u8]) -> bool {
    if ChannelData::is_channel_data(frame) {
        return true;
    }
    frame.len() >= 2 && {
        let t = MessageType::from_u16(u16::from_be_bytes([frame[0], frame[1]]));
        t.method == Method::Send && t.class == Class::Indication
    }
}

impl Writer {
    /// Queues one frame; relayed data is lost when the queue is full, as a datagram may be.
    pub(super) fn send(&self, frame: &[u8]) {
        if droppable(frame) && self.queued.load(Ordering::Relaxed) > MAX_QUEUED {
            return;
        }
        match &self.tls {
            None => queue(&self.tx, &self.queued, frame.to_vec()),
            Some(conn) => {
                let mut c = lock(conn);
                if c.writer().write_all(frame).is_err() {
                    return;
                }
                // Under the lock: records reach the queue in the order they were sealed.
                queue(&self.tx, &self.queued, sealed(&mut c));
            }
        }
    }
}

fn queue(tx: &mpsc::Sender<Vec<u8>>, queued: &AtomicUsize, bytes: Vec<u8>) {
    if bytes.is_empty() {
        return;
    }
    queued.fetch_add(bytes.len(), Ordering::Relaxed);
    // The writer is gone only with the connection, which the reader reports.
    let _ = tx.send(bytes);
}

/// The TLS records rustls has ready to go.
fn sealed(c: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while c.wants_write() {
        if c.write_tls(&mut out).is_err() {
            break;
        }
    }
    out
}

impl Reader {
    /// The frames that arrived within `wait` (none when nothing did); `Err` says why the
    /// connection ended -- and with it the allocation (RFC 8656 section 3.1).
    pub(super) fn read(&mut self, wait: Duration) -> Result<Vec<Vec<u8>>, String> {
        self.sock
            .set_read_timeout(Some(wait))
            .map_err(|e| e.to_string())?;
        let n = match self.sock.read(&mut self.raw) {
            Ok(0) => return Err("the server closed the connection".into()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Vec::new())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Vec::new()),
            Err(e) => return Err(format!("the connection failed: {e}")),
        };
        match &self.tls {
            None => self.buf.extend_from_slice(&self.raw[..n]),
            Some(conn) => {
                let mut c = lock(conn);
                open(&mut c, &self.raw[..n], &mut self.buf)?;
                // Whatever TLS itself has to say back (a KeyUpdate's answer).
                queue(&self.tx, &self.queued, sealed(&mut c));
            }
        }
        take_frames(&mut self.buf)
    }
}

/// The whole frames at the start of `buf`, taken out of it; a partial one stays.
fn take_frames(buf: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, String> {
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 4 {
        let Some(len) = frame_len(&buf[at..]).filter(|&l| l <= MAX_FRAME) else {
            return Err("the server sent bytes that are neither STUN nor ChannelData".into());
        };
        if buf.len() - at < len {
            break;
        }
        frames.push(buf[at..at + len].to_vec());
        at += len;
    }
    buf.drain(..at);
    Ok(frames)
}

/// Feeds TLS records to rustls and appends the plaintext they carry to `out`.
fn open(c: &mut ClientConnection, mut records: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut plain = [0u8; 16 * 1024];
    while !records.is_empty() {
        c.read_tls(&mut records).map_err(|e| format!("TLS: {e}"))?;
        c.process_new_packets().map_err(|e| format!("TLS: {e}"))?;
        loop {
            match c.reader().read(&mut plain) {
                Ok(0) => return Err("the server closed the TLS session".into()),
                Ok(k) => out.extend_from_slice(&plain[..k]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("TLS: {e}")),
            }
        }
    }
    Ok(())
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

/// Connects to `server` (from `bind`, when given), does the TLS handshake when asked, and
/// starts the writer thread.
pub(super) fn connect(
    server: SocketAddr,
    bind: Option<IpAddr>,
    tls: Option<Tls>,
) -> Result<(Writer, Reader), String> {
    let sock = open_tcp(server, bind).map_err(|e| format!("cannot connect over TCP: {e}"))?;
    let _ = sock.set_nodelay(true);
    let tls = match tls {
        None => None,
        Some(t) => Some(Arc::new(Mutex::new(handshake(&sock, t)?))),
    };
    let writer_sock = sock.try_clone().map_err(|e| e.to_string())?;
    writer_sock
        .set_write_timeout(Some(WRITE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicBool::new(false));
    {
        let (queued, closed) = (queued.clone(), closed.clone());
        std::thread::Builder::new()
            .name("turn-writer".into())
            .spawn(move || write_loop(writer_sock, &rx, &queued, &closed))
            .map_err(|e| format!("cannot start the relay's writer thread: {e}"))?;
    }
    let reader = Reader {
        sock,
        raw: vec![0u8; 64 * 1024],
        buf: Vec::with_capacity(2 * MAX_FRAME),
        tls: tls.clone(),
        tx: tx.clone(),
        queued: queued.clone(),
        closed,
    };
    Ok((Writer { tx, queued, tls }, reader))
}

fn open_tcp(server: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(ip) = bind else {
        return TcpStream::connect_timeout(&server, CONNECT_TIMEOUT);
    };
    let domain = socket2::Domain::for_address(server);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.bind(&SocketAddr::new(ip, 0).into())?;
    s.connect_timeout(&server.into(), CONNECT_TIMEOUT)?;
    Ok(s.into())
}

/// The TLS handshake, blocking, bounded by [`CONNECT_TIMEOUT`] per read or write.
fn handshake(sock: &TcpStream, tls: Tls) -> Result<ClientConnection, String> {
    let mut conn = ClientConnection::new(tls.config, tls.name)
        .map_err(|e| format!("cannot start TLS: {e}"))?;
    let mut s = sock;
    s.set_read_timeout(Some(CONNECT_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(CONNECT_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut s)
            .map_err(|e| format!("the TLS handshake failed: {e}"))?;
    }
    // Our Finished may still be buffered.
    while conn.wants_write() {
        conn.write_tls(&mut s)
            .map_err(|e| format!("the TLS handshake failed: {e}"))?;
    }
    Ok(conn)
}

fn write_loop(
    mut sock: TcpStream,
    rx: &mpsc::Receiver<Vec<u8>>,
    queued: &AtomicUsize,
    closed: &AtomicBool,
) {
    loop {
        let mut batch = match rx.recv_timeout(POLL) {
            Ok(b) => b,
            Err(mpsc::RecvTimeoutError::Timeout) if !closed.load(Ordering::Relaxed) => continue,
            Err(_) => return,
        };
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        queued.fetch_sub(batch.len(), Ordering::Relaxed);
        if let Err(e) = sock.write_all(&batch) {
            tracing::debug!(error = %e, "writing to the TURN server failed");
            // The reader then sees the connection end, and says so.
            let _ = sock.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// The TLS settings for a TURN server whose certificate must name `name` (a DNS name or an
/// IP address) and chain to one of `roots` (RFC 8656 section 3.1 leaves the trust to the
/// client; WebPKI rules as for any TLS server).
pub(super) fn tls(
    name: &str,
    roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Tls, String> {
    let name = ServerName::try_from(name.to_string())
        .map_err(|e| format!("{name:?} cannot be a TLS server name: {e}"))?;
    let mut store = rustls::RootCertStore::empty();
    let (_, ignored) = store.add_parsable_certificates(roots.iter().cloned());
    if store.is_empty() {
        return Err(format!(
            "no usable CA certificate to check the relay's with ({ignored} unusable)"
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Tls {
        name,
        config: Arc::new(config),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stun::{Encoder, TransactionId};

    fn stun(method: Method, class: Class) -> Vec<u8> {
        let mut out = Vec::new();
        let mt = MessageType { method, class };
        Encoder::new(&mut out, mt, TransactionId::random(&mut rand::rng()));
        out
    }

    #[test]
    fn frames_come_out_whole_whatever_the_reads_cut() {
        let answer = stun(Method::Allocate, Class::Success);
        // 5 bytes of data: padded to 8 on a stream (RFC 8656 section 12.5).
        let mut cd = Vec::new();
        ChannelData::encode(0x4000, b"abcde", true, &mut cd);
        let wire = [answer.clone(), cd.clone(), answer.clone()].concat();
        for cut in 1..wire.len() {
            let mut buf = wire[..cut].to_vec();
            let mut got = take_frames(&mut buf).unwrap();
            buf.extend_from_slice(&wire[cut..]);
            got.extend(take_frames(&mut buf).unwrap());
            assert_eq!(
                got,
                vec![answer.clone(), cd.clone(), answer.clone()],
                "{cut}"
            );
            assert!(buf.is_empty(), "{cut}");
        }
    }

    #[test]
    fn bytes_neither_stun_nor_channel_data_end_the_stream() {
        // Neither a STUN header (first two bits 0) nor a channel number (0x4000-0x4fff).
        let mut buf = vec![0xff; 12];
        assert!(take_frames(&mut buf).is_err());
    }

    #[test]
    fn only_relayed_data_is_dropped_when_the_queue_is_full() {
        let mut cd = Vec::new();
        ChannelData::encode(0x4001, b"x", true, &mut cd);
        assert!(droppable(&cd));
        assert!(droppable(&stun(Method::Send, Class::Indication)));
        for (m, c) in [
            (Method::Refresh, Class::Request),
            (Method::ChannelBind, Class::Request),
            (Method::CreatePermission, Class::Request),
            (Method::Binding, Class::Indication),
        ] {
            assert!(!droppable(&stun(m, c)), "{m:?} {c:?}");
        }
    }
}

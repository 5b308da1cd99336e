//! Batched UDP receive and send (Linux `recvmmsg`/`sendmmsg`) behind a safe interface, for
//! the server's hot loop and the load generator. One syscall moves up to [`MAX_BATCH`]
//! datagrams; every buffer is allocated once and reused, so a steady flow of datagrams
//! allocates nothing.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

/// Most datagrams moved by one syscall.
pub const MAX_BATCH: usize = 64;

/// Reusable receive buffers for up to [`MAX_BATCH`] datagrams of up to `slot_len` bytes each.
pub struct RecvBatch {
    buf: Vec<u8>,
    slot_len: usize,
    slots: usize,
    lens: [usize; MAX_BATCH],
    truncated: [bool; MAX_BATCH],
    addrs: [libc::sockaddr_storage; MAX_BATCH],
    addr_lens: [libc::socklen_t; MAX_BATCH],
    n: usize,
}

impl RecvBatch {
    /// `slots` is capped at [`MAX_BATCH`]. A datagram longer than `slot_len` is reported as
    /// truncated, never handed out cut short.
    pub fn new(slots: usize, slot_len: usize) -> Self {
        let slots = slots.clamp(1, MAX_BATCH);
        RecvBatch {
            buf: vec![0; slots * slot_len],
            slot_len,
            slots,
            lens: [0; MAX_BATCH],
            truncated: [false; MAX_BATCH],
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: unsafe { mem::zeroed() },
            addr_lens: [0; MAX_BATCH],
            n: 0,
        }
    }

    /// Datagrams held since the last [`recv`](Self::recv).
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when no datagram is held (none yet, or the last [`recv`](Self::recv) brought none).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Datagram `i`: its bytes, its source (None for an address family we do not speak) and
    /// whether it was longer than the slot (then the bytes are only a prefix).
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>, bool) {
        assert!(i < self.n, "datagram {i} of {}", self.n);
        let start = i * self.slot_len;
        let len = self.lens[i].min(self.slot_len);
        (
            &self.buf[start..start + len],
            from_storage(&self.addrs[i], self.addr_lens[i]),
            self.truncated[i],
        )
    }

    /// Waits for at least one datagram (as long as the socket's read timeout allows: then
    /// `WouldBlock`/`TimedOut`), takes whatever else is queued up to the batch size, and
    /// returns how many arrived.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.n = 0;
        // SAFETY: mmsghdr and iovec are plain C structs; all-zero is valid (null pointers,
        // zero lengths) and every field used is set below.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
        let base = self.buf.as_mut_ptr();
        for i in 0..self.slots {
            iovs[i] = libc::iovec {
                // SAFETY: `i * slot_len + slot_len <= buf.len()`, so the slot is in bounds.
                iov_base: unsafe { base.add(i * self.slot_len) }.cast(),
                iov_len: self.slot_len,
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: `hdrs[..slots]` point at `iovs`, `addrs` and disjoint slots of `buf`, all
        // owned by this frame or `self` and alive for the call; the kernel writes at most the
        // lengths given. A null timeout means "use the socket's SO_RCVTIMEO".
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                self.slots as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = r as usize;
        for (i, h) in hdrs.iter().enumerate().take(n) {
            self.lens[i] = h.msg_len as usize;
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.addr_lens[i] = h.msg_hdr.msg_namelen;
        }
        self.n = n;
        Ok(n)
    }
}

/// Reusable send buffers: fill up to [`MAX_BATCH`] datagrams with [`push`](Self::push), then
/// [`flush`](Self::flush) sends them with as few syscalls as the kernel allows.
pub struct SendBatch {
    bufs: Vec<Vec<u8>>,
    dests: [libc::sockaddr_storage; MAX_BATCH],
    dest_lens: [libc::socklen_t; MAX_BATCH],
    n: usize,
}

impl SendBatch {
    /// Each of the [`MAX_BATCH`] buffers starts with `capacity` bytes reserved.
    pub fn new(capacity: usize) -> Self {
        SendBatch {
            bufs: (0..MAX_BATCH)
                .map(|_| Vec::with_capacity(capacity))
                .collect(),
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            dests: unsafe { mem::zeroed() },
            dest_lens: [0; MAX_BATCH],
            n: 0,
        }
    }

    /// Datagrams queued since the last [`flush`](Self::flush).
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// True when all [`MAX_BATCH`] buffers are queued: [`push`](Self::push) would refuse.
    pub fn is_full(&self) -> bool {
        self.n == MAX_BATCH
    }

    /// The buffer of the next datagram, cleared; it is queued only by [`commit`](Self::commit).
    /// `None` when the batch is full.
    pub fn next_buf(&mut self) -> Option<&mut Vec<u8>> {
        let b = self.bufs.get_mut(self.n)?;
        b.clear();
        Some(b)
    }

    /// Queues the buffer last returned by [`next_buf`](Self::next_buf) for `to`.
    pub fn commit(&mut self, to: SocketAddr) {
        assert!(self.n < MAX_BATCH, "send batch overflow");
        self.dest_lens[self.n] = to_storage(to, &mut self.dests[self.n]);
        self.n += 1;
    }

    /// Copies `data` in and queues it for `to`; false when the batch is full.
    pub fn push(&mut self, data: &[u8], to: SocketAddr) -> bool {
        match self.next_buf() {
            Some(b) => {
                b.extend_from_slice(data);
                self.commit(to);
                true
            }
            None => false,
        }
    }

    /// Sends every queued datagram and empties the batch. A datagram the kernel refuses is
    /// skipped, so one bad destination cannot block the rest; returns (sent, failed) and the
    /// last error seen.
    pub fn flush(&mut self, sock: &UdpSocket) -> (usize, usize, Option<io::Error>) {
        let (mut sent, mut failed, mut last_err) = (0, 0, None);
        let mut at = 0;
        while at < self.n {
            // SAFETY: plain C structs; all-zero is valid and the used fields are set below.
            let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
            // SAFETY: as above.
            let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
            let count = self.n - at;
            for k in 0..count {
                let i = at + k;
                iovs[k] = libc::iovec {
                    iov_base: self.bufs[i].as_ptr() as *mut libc::c_void,
                    iov_len: self.bufs[i].len(),
                };
                let h = &mut hdrs[k].msg_hdr;
                h.msg_name = (&mut self.dests[i] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = self.dest_lens[i];
                h.msg_iov = &mut iovs[k];
                h.msg_iovlen = 1;
            }
            // SAFETY: `hdrs[..count]` point at `iovs` (this frame) and at buffers and
            // addresses owned by `self`, all alive and unaliased for the call; the kernel
            // only reads the data and writes `msg_len`.
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    count as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first datagram failed: skip it and go on with the others.
                failed += 1;
                at += 1;
                last_err = Some(e);
            } else {
                sent += r as usize;
                at += (r as usize).max(1).min(count);
                if r == 0 {
                    failed += 1;
                }
            }
        }
        self.n = 0;
        (sent, failed, last_err)
    }
}

fn from_storage(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(s.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, which is smaller than
            // and no more aligned than sockaddr_storage.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_storage(addr: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in fits in sockaddr_storage and needs no stricter alignment.
            let sin =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            sin.sin_zero = [0; 8];
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn batches_round_trip_with_addresses_and_truncation() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let to = b.local_addr().unwrap();
        let mut tx = SendBatch::new(64);
        for i in 0..10u8 {
            assert!(tx.push(&[i; 5], to));
        }
        assert!(tx.push(&[7; 40], to));
        let (sent, failed, err) = tx.flush(&a);
        assert_eq!((sent, failed), (11, 0), "{err:?}");
        assert!(tx.is_empty());
        let mut rx = RecvBatch::new(MAX_BATCH, 16);
        let mut got = Vec::new();
        while got.len() < 11 {
            let n = rx.recv(&b).unwrap();
            for i in 0..n {
                let (d, src, trunc) = rx.get(i);
                assert_eq!(src, Some(a.local_addr().unwrap()));
                got.push((d.to_vec(), trunc));
            }
        }
        for (i, (d, trunc)) in got.iter().take(10).enumerate() {
            assert_eq!((d.as_slice(), *trunc), (&[i as u8; 5][..], false));
        }
        assert!(
            got[10].1,
            "a 40-byte datagram in a 16-byte slot is truncated"
        );
        b.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let e = rx.recv(&b).unwrap_err();
        assert!(matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
    }

    #[test]
    fn address_conversion_round_trips() {
        // SAFETY: all-zero sockaddr_storage is valid.
        let mut s: libc::sockaddr_storage = unsafe { mem::zeroed() };
        for a in [
            "192.0.2.7:3478".parse::<SocketAddr>().unwrap(),
            "[2001:db8::1]:5349".parse().unwrap(),
        ] {
            let len = to_storage(a, &mut s);
            assert_eq!(from_storage(&s, len), Some(a));
        }
    }
}

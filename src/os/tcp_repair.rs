//! A kernel TCP socket made ESTABLISHED with TCP_REPAIR (needs CAP_NET_ADMIN) at the state a
//! crafted handshake left: same 4-tuple, sequence numbers and negotiated options, so the
//! NATs' connection tracking sees one continuous connection.
//!
//! What the kernel requires (net/ipv4/tcp.c, do_tcp_setsockopt; checked on Linux 6.x):
//! - TCP_REPAIR on a fresh socket makes bind() force-reuse the port (another socket, bound
//!   and not listening, may hold it) and makes connect() send nothing: the socket goes from
//!   CLOSE to ESTABLISHED at once.
//! - TCP_QUEUE_SEQ is refused (EPERM) unless the socket is still CLOSE: the send queue's
//!   sequence (write_seq, hence snd_una and snd_nxt) and the receive queue's (rcv_nxt) are
//!   set before connect().
//! - TCP_REPAIR_OPTIONS is refused (EPERM) unless the socket is ESTABLISHED and has sent
//!   nothing: after connect(). A peer's segment arriving between the two (microseconds; seen
//!   once with the peer's window probe at 0 ms delay) draws a duplicate ACK without options;
//!   both ends are established by then, so at worst the peer drops that one ACK. Without a window-scale entry the socket keeps the receive
//!   scale connect() chose for itself while the peer does not scale (it would read our
//!   windows 2^scale times too small), so "no window scaling" is sent as the entry 0/0.
//!   The MSS entry raises `mss_clamp` only; the segment size the socket uses was computed
//!   at connect() from `mss_clamp`, so TCP_MAXSEG (user_mss, which connect() copies into
//!   `mss_clamp`) is set to the peer's MSS before connect() as well.
//! - TCP_TIMESTAMP sets the offset of the socket's timestamp clock (tsoffset) so that its
//!   TSval is the given value now; since Linux 6.7 the value's lowest bit also selects
//!   microsecond timestamps (an odd value made the socket's clock run 1000 times faster in
//!   the lab), so the value is made even. Crafted SYNs should carry an even TSval for the
//!   clock to continue exactly. It is set before connect(): the socket is ESTABLISHED from
//!   connect() on and, repair mode or not, answers what arrives (a peer's SYN-ACK that
//!   crossed ours draws an ACK), so the clock must be right before anything can be sent.
//! - TCP_REPAIR_WINDOW after connect(), since connect() resets the windows (snd_wnd 0
//!   would leave the socket probing a zero window until the peer's first ACK).
//! - Leaving repair mode with TCP_REPAIR_OFF sends one window probe: an ACK with
//!   seq = snd_una - 1 and ack = rcv_nxt. It is kept after a SYN-ACK of the peer's: the peer
//!   answers it with an ACK that carries its window, and the crafted third segment of the
//!   handshake follows it (the socket is made first, so the peer's first data finds it). After our own SYN-ACK ([`Established::awaiting_peer`]) the
//!   socket leaves with TCP_REPAIR_OFF_NO_WP (-1) and sends nothing.

use crate::core::wire::craft::Established;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

// include/uapi/linux/tcp.h; libc exports the option names but not these values.
const TCP_REPAIR_ON: libc::c_int = 1;
const TCP_REPAIR_OFF: libc::c_int = 0;
/// Leaves repair mode without the window probe (Linux 4.8 on).
const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_SEND_QUEUE: libc::c_int = 2;
/// TCP option kinds as TCP_REPAIR_OPTIONS names them (the wire's kinds, RFC 9293 section
/// 3.2, RFC 7323, RFC 2018).
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
/// RFC 7323 section 2.3: a larger shift is used as 14; the kernel refuses one (EFBIG).
const MAX_WSCALE: u8 = 14;
/// RFC 9293 section 3.7.1: the MSS to assume when the peer sent none.
const DEFAULT_MSS: u16 = 536;

/// struct tcp_repair_opt.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RepairOpt {
    code: u32,
    val: u32,
}

/// struct tcp_repair_window.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RepairWindow {
    snd_wl1: u32,
    snd_wnd: u32,
    max_window: u32,
    rcv_wnd: u32,
    rcv_wup: u32,
}

/// setsockopt(2) with a plain-data value; `what` names the step for the error.
fn set<T: Copy>(fd: RawFd, name: libc::c_int, value: &T, what: &str) -> io::Result<()> {
    set_slice(fd, name, std::slice::from_ref(value), what)
}

fn set_slice<T: Copy>(fd: RawFd, name: libc::c_int, values: &[T], what: &str) -> io::Result<()> {
    // SAFETY: setsockopt(2) reads exactly `len` bytes from `values`, a live slice of
    // plain-data (`Copy`, `repr(C)` or integer) values that outlives the call; the kernel
    // copies them and keeps no pointer.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            name,
            values.as_ptr() as *const libc::c_void,
            std::mem::size_of_val(values) as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("TCP_REPAIR socket: cannot {what}: {e}"),
        ))
    }
}

/// The TCP_TIMESTAMP value that makes the socket's TSval `tsval` now, on the usual
/// millisecond clock: since Linux 6.7 the value's lowest bit switches the socket to
/// microsecond timestamps (tcp_usec_ts), so an odd TSval is rounded up to the next even one
/// (never down: RFC 7323 section 5.3 wants the peer's view of our clock monotonic).
fn ms_clock(tsval: u32) -> u32 {
    tsval.wrapping_add(1) & !1
}

/// The TCP_REPAIR_OPTIONS entries for what both SYNs carried.
fn negotiated(e: &Established) -> Vec<RepairOpt> {
    let (ours, theirs) = (&e.ours, &e.theirs);
    let mut opts = vec![RepairOpt {
        code: TCPOPT_MSS,
        val: u32::from(theirs.mss.unwrap_or(DEFAULT_MSS)),
    }];
    // RFC 7323 section 2.2: scaling applies only when both SYNs carried the option.
    let (snd, rcv) = match (theirs.wscale, ours.wscale) {
        (Some(t), Some(o)) => (t.min(MAX_WSCALE), o.min(MAX_WSCALE)),
        _ => (0, 0),
    };
    opts.push(RepairOpt {
        code: TCPOPT_WINDOW,
        val: u32::from(snd) | (u32::from(rcv) << 16),
    });
    if ours.sack_permitted && theirs.sack_permitted {
        opts.push(RepairOpt {
            code: TCPOPT_SACK_PERM,
            val: 0,
        });
    }
    if ours.timestamps.is_some() && theirs.timestamps.is_some() {
        opts.push(RepairOpt {
            code: TCPOPT_TIMESTAMP,
            val: 0,
        });
    }
    opts
}

/// The socket for `e`, bound to `e.local` beside other sockets on that port
/// (SO_REUSEADDR/SO_REUSEPORT), out of repair mode and ready for data. `ours.timestamps`'s
/// TSval is where the socket's timestamp clock continues.
///
/// Leaving repair mode sends one ACK (seq = our ISN, ack = `rcv_nxt`), unless
/// `e.awaiting_peer`; nothing else is sent.
/// The stream is in blocking mode; callers set what they need.
pub fn established(e: &Established) -> io::Result<TcpStream> {
    established_pausing(e, || {})
}

/// [`established`], with `pause` run while the socket is ESTABLISHED with its negotiated
/// options but still in repair mode: the moment at which a peer's segment can already draw
/// an answer from the kernel. For tests of what the socket sends then.
pub fn established_pausing(e: &Established, pause: impl FnOnce()) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .map_err(|err| io::Error::new(err.kind(), format!("cannot open a TCP socket: {err}")))?;
    let fd = socket.as_raw_fd();
    set(fd, libc::TCP_REPAIR, &TCP_REPAIR_ON, "enter repair mode").map_err(|err| {
        if err.kind() == io::ErrorKind::PermissionDenied {
            io::Error::new(
                err.kind(),
                format!(
                    "{err} (TCP_REPAIR needs CAP_NET_ADMIN: run as root or grant it with \
                     setcap cap_net_raw,cap_net_admin+ep)"
                ),
            )
        } else {
            err
        }
    })?;
    // Also set for the sockets bound to the port after this one (repair mode alone forces
    // this bind only).
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket
        .bind(&SockAddr::from(SocketAddr::V4(e.local)))
        .map_err(|err| io::Error::new(err.kind(), format!("cannot bind {}: {err}", e.local)))?;

    set(
        fd,
        libc::TCP_REPAIR_QUEUE,
        &TCP_SEND_QUEUE,
        "select the send queue",
    )?;
    set(fd, libc::TCP_QUEUE_SEQ, &e.snd_nxt, "set the send sequence")?;
    set(
        fd,
        libc::TCP_REPAIR_QUEUE,
        &TCP_RECV_QUEUE,
        "select the receive queue",
    )?;
    // The receive queue starts where the data the peer's SYN carried begins; writing that
    // data into it below moves rcv_nxt past it.
    let received = u32::try_from(e.received.len()).unwrap_or(0);
    set(
        fd,
        libc::TCP_QUEUE_SEQ,
        &e.rcv_nxt.wrapping_sub(received),
        "set the receive sequence",
    )?;
    // Before connect(): from then on the kernel may answer a peer's segment although the
    // socket is still in repair mode (its SYN-ACK crossing ours draws an ACK), and every
    // TSval it sends must already continue the crafted clock. Set later, one such ACK went
    // out on the kernel's own clock; the peer took it as ts_recent and then dropped every
    // segment on the crafted clock as old (PAWS, RFC 7323 section 5), so TLS stalled.
    // connect() keeps tsoffset in repair mode (tcp_v4_connect sets it only outside repair).
    if let (Some((tsval, _)), Some(_)) = (e.ours.timestamps, e.theirs.timestamps) {
        set(
            fd,
            libc::TCP_TIMESTAMP,
            &ms_clock(tsval),
            "continue the timestamp clock",
        )?;
    }
    let mss = libc::c_int::from(e.theirs.mss.unwrap_or(DEFAULT_MSS));
    // Below 88 the kernel refuses TCP_MAXSEG; such a peer is then served by mss_clamp.
    if mss >= 88 {
        set(fd, libc::TCP_MAXSEG, &mss, "set the peer's MSS")?;
    }

    socket
        .connect(&SockAddr::from(SocketAddr::V4(e.remote)))
        .map_err(|err| {
            io::Error::new(
                err.kind(),
                format!(
                    "cannot put the socket {} -> {} into ESTABLISHED (the 4-tuple may \
                     already be in use): {err}",
                    e.local, e.remote
                ),
            )
        })?;

    set_slice(
        fd,
        libc::TCP_REPAIR_OPTIONS,
        &negotiated(e),
        "set the negotiated options",
    )?;
    pause();
    // Still TCP_RECV_QUEUE: in repair mode a write appends to the receive queue
    // (tcp_send_rcvq), which the application then reads as if it had arrived.
    let mut queued = 0;
    while queued < e.received.len() {
        match socket.send(&e.received[queued..]) {
            Ok(0) => {
                return Err(io::Error::other(
                    "the receive queue took none of the SYN's data",
                ))
            }
            Ok(n) => queued += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                return Err(io::Error::new(
                    err.kind(),
                    format!("cannot queue the data of the peer's SYN: {err}"),
                ))
            }
        }
    }
    let window = RepairWindow {
        // The peer's SYN (sequence rcv_nxt - 1) last updated the send window.
        snd_wl1: e.rcv_nxt.wrapping_sub(1),
        snd_wnd: u32::from(e.peer_window),
        max_window: u32::from(e.peer_window),
        rcv_wnd: u32::from(e.our_window),
        rcv_wup: e.rcv_nxt,
    };
    set(fd, libc::TCP_REPAIR_WINDOW, &window, "set the windows")?;
    let leave = if e.awaiting_peer {
        TCP_REPAIR_OFF_NO_WP
    } else {
        TCP_REPAIR_OFF
    };
    set(fd, libc::TCP_REPAIR, &leave, "leave repair mode")?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::TcpOptions;

    fn est(ours: TcpOptions, theirs: TcpOptions) -> Established {
        Established {
            local: "10.0.0.1:1".parse().expect("addr"),
            remote: "10.0.0.2:2".parse().expect("addr"),
            snd_nxt: 1,
            rcv_nxt: 2,
            ours,
            theirs,
            peer_window: 1000,
            our_window: 2000,
            awaiting_peer: false,
            received: Vec::new(),
            first_flight: None,
        }
    }

    fn codes(o: &[RepairOpt]) -> Vec<(u32, u32)> {
        o.iter().map(|o| (o.code, o.val)).collect()
    }

    #[test]
    fn only_what_both_sides_sent_is_negotiated() {
        let full = TcpOptions {
            mss: Some(1460),
            wscale: Some(7),
            sack_permitted: true,
            timestamps: Some((5, 0)),
        };
        let peer = TcpOptions {
            mss: Some(1400),
            wscale: Some(15),
            sack_permitted: true,
            timestamps: Some((9, 5)),
        };
        assert_eq!(
            codes(&negotiated(&est(full, peer))),
            vec![(2, 1400), (3, 14 | (7 << 16)), (4, 0), (8, 0)]
        );
        // The peer sent nothing: default MSS, no scaling in either direction.
        assert_eq!(
            codes(&negotiated(&est(full, TcpOptions::default()))),
            vec![(2, 536), (3, 0)]
        );
        let no_ws = TcpOptions {
            wscale: None,
            ..full
        };
        assert_eq!(
            codes(&negotiated(&est(no_ws, peer))),
            vec![(2, 1400), (3, 0), (4, 0), (8, 0)]
        );
    }

    #[test]
    fn the_timestamp_clock_stays_in_milliseconds_and_never_goes_back() {
        assert_eq!(ms_clock(76), 76);
        assert_eq!(ms_clock(77), 78);
        assert_eq!(ms_clock(u32::MAX), 0);
    }

    /// The data of the peer's SYN is what the application reads first. In a network
    /// namespace of its own (a thread's), so that nothing the socket might send leaves it;
    /// skipped without the privileges.
    #[test]
    fn the_data_of_the_peers_syn_is_read_first() {
        let t = std::thread::spawn(|| -> Option<(Vec<u8>, u32)> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .ok()?;
            assert!(up.success(), "ip link set lo up");
            let mut e = est(TcpOptions::default(), TcpOptions::default());
            e.local = "127.0.0.1:40001".parse().expect("addr");
            e.remote = "127.0.0.1:40002".parse().expect("addr");
            e.received = b"client hello".to_vec();
            e.rcv_nxt = 2000 + 12;
            e.awaiting_peer = true;
            let mut s = match established(&e) {
                Ok(s) => s,
                Err(err) if err.kind() == io::ErrorKind::PermissionDenied => return None,
                Err(err) => panic!("{err}"),
            };
            let mut got = vec![0u8; 64];
            s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .expect("timeout");
            let n = std::io::Read::read(&mut s, &mut got).expect("read the queued data");
            got.truncate(n);
            // TCP_QUEUE_SEQ reads the receive queue's next sequence back in repair mode.
            set(s.as_raw_fd(), libc::TCP_REPAIR, &TCP_REPAIR_ON, "repair").expect("repair");
            set(
                s.as_raw_fd(),
                libc::TCP_REPAIR_QUEUE,
                &TCP_RECV_QUEUE,
                "queue",
            )
            .expect("queue");
            let mut seq: u32 = 0;
            let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
            // SAFETY: `seq` is a u32 the kernel writes at most `len` bytes of, and `len`
            // says so.
            let r = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_QUEUE_SEQ,
                    (&mut seq as *mut u32).cast(),
                    &mut len,
                )
            };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            // Closed in repair mode: the socket goes without a FIN or RST.
            Some((got, seq))
        });
        if let Some((got, rcv_nxt)) = t.join().expect("the test thread") {
            assert_eq!(got, b"client hello");
            assert_eq!(rcv_nxt, 2012);
        }
    }

    #[test]
    fn the_structs_match_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<RepairOpt>(), 8);
        assert_eq!(std::mem::size_of::<RepairWindow>(), 20);
    }
}

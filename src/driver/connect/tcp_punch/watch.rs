//! The watcher's thread, and what it saw of the peer during the punch: counted here,
//! explained in `core::punch::explain`, with a status line for the first of each kind.

use super::WatchCounts;
use crate::core::wire::{IcmpKind, Seen, Segment};
use crate::os::packet::{Packet, Watcher};
use crate::os::poll::{wake_pair, Waker};
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// The thread that blocks in poll(2) on the watcher and feeds its packets to each family's
/// punch.
pub(super) struct WatchThread {
    stop: Arc<AtomicBool>,
    /// A byte here ends the thread's wait at once: joining it after its 50 ms poll had run
    /// out cost every connection 25 ms on average on its way to the stream.
    wake: Waker,
    handle: JoinHandle<()>,
}

impl WatchThread {
    /// Packets that concern `also_peer` (the IPv6 punch's peer) go to `also`, the rest to
    /// `first`.
    pub(super) fn spawn(
        watcher: Watcher,
        also_peer: Option<IpAddr>,
        first: UnboundedSender<Packet>,
        also: UnboundedSender<Packet>,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, woken) = wake_pair()?;
        let stopped = stop.clone();
        let handle = std::thread::Builder::new()
            .name("tcp-watch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    match watcher.wait_or_woken(&woken, Duration::from_millis(50)) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(_) => return,
                    }
                    while let Ok(Some(p)) = watcher.recv() {
                        let to = match also_peer {
                            Some(peer) if concerns(&p, peer) => &also,
                            _ => &first,
                        };
                        if to.send(p).is_err() || stopped.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                }
            })?;
        Ok(WatchThread { stop, wake, handle })
    }

    /// Stops the thread; with `wait`, waits for it, so that what it had read is in the
    /// channels. Without, it ends by itself within its next turn: joining a thread that the
    /// busy machine had not scheduled yet cost a connection 5-15 ms on its way to the stream
    /// (lab, 40 ms one way), for packets only a capture wants.
    pub(super) fn stop(self, wait: bool) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.wake();
        if wait {
            let _ = self.handle.join();
        }
    }
}

/// Packets of the punch: TCP with the peer, and ICMP errors about such TCP (the filter lets
/// every ICMP through, and IPv6 TCP with anyone).
pub(super) fn concerns(p: &Packet, peer: IpAddr) -> bool {
    match p.seen {
        Some(Seen::Tcp { src, dst, .. }) => src.ip() == peer || dst.ip() == peer,
        Some(Seen::IcmpTcp {
            quoted_src,
            quoted_dst,
            ..
        }) => quoted_src.ip() == peer || quoted_dst.ip() == peer,
        None => false,
    }
}

impl WatchCounts {
    pub(super) fn note(&mut self, s: &Seen, outgoing: bool, peer: IpAddr) -> Option<String> {
        match *s {
            Seen::Tcp {
                dst,
                segment: Segment::Syn,
                ..
            } if outgoing && dst.ip() == peer => {
                self.syn_out += 1;
                self.syn_to.insert(dst.port());
                None
            }
            Seen::Tcp { src, segment, .. } if !outgoing && src.ip() == peer => match segment {
                Segment::Syn => {
                    self.syn_in += 1;
                    self.syn_from.insert(src.port());
                    (self.syn_in == 1).then(|| format!("the peer's SYN arrived from {src}"))
                }
                Segment::SynAck => {
                    self.synack_in += 1;
                    self.synack_from.insert(src.port());
                    (self.synack_in == 1).then(|| format!("SYN-ACK from {src}"))
                }
                Segment::Rst => {
                    self.rst_in += 1;
                    self.rst_from.insert(src.port());
                    (self.rst_in == 1).then(|| format!("RST from {src}: the peer's NAT refused a SYN of ours that came before the peer's own (it wipes the mapping our SYN opened); retrying"))
                }
                Segment::Other => None,
            },
            Seen::IcmpTcp {
                from,
                kind,
                quoted_dst,
                ..
            } if !outgoing && quoted_dst.ip() == peer => match kind {
                IcmpKind::Unreachable(code) => {
                    self.icmp_unreachable += 1;
                    self.icmp_for.insert(quoted_dst.port());
                    let what = if from == peer {
                        "the peer's NAT refused a SYN of ours; the error is dropped here, so the attempt stays open for the peer's SYN"
                    } else {
                        "a router on the way refused a SYN of ours"
                    };
                    (self.icmp_unreachable == 1).then(|| {
                        format!("ICMP destination unreachable (code {code}) from {from}: {what}")
                    })
                }
                // Our own priming SYNs dying on the way, as intended.
                IcmpKind::TimeExceeded => None,
            },
            _ => None,
        }
    }
}

//! What the watcher saw of the peer during the punch: counted here, explained in
//! `core::punch::explain`, with a status line for the first of each kind.

use super::WatchCounts;
use crate::core::wire::{IcmpKind, Seen, Segment};
use std::net::IpAddr;

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

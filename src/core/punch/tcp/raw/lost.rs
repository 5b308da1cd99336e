//! Recovering a lost SYN-ACK (part of the raw engine, [`RawPunch`]).
//!
//! A SYN-ACK can be lost, and nothing else brings it back: the socket is ESTABLISHED on our
//! side, and once our NAT's connection tracking has seen our SYN-ACK it drops the peer's repeated
//! SYNs (a SYN from the reply side in SYN_RECV is invalid for Linux's conntrack), so the peer's
//! repeats never reach us to be answered. The engine therefore repeats that SYN-ACK itself,
//! paced like its SYNs, until the peer shows it arrived (its ACK, data, or its own SYN-ACK on
//! that 4-tuple), and reports the 4-tuple through [`RawPunch::poll_confirmed`] then. Until
//! then the socket should send nothing (no window probe): an ACK of ours would move our NAT's
//! tracking to ESTABLISHED, in which it drops our repeated SYN-ACKs as invalid too
//! (net/netfilter/nf_conntrack_proto_tcp.c, the state table). The one exception is the TLS
//! client's first flight, which waiting would delay by a round trip to the peer: the driver
//! says so ([`RawPunch::sending_early`]), and the engine then repeats our SYN on that
//! 4-tuple instead, which the tracking in ESTABLISHED lets through and the peer's SYN-ACK to
//! it brings back in step.
//!
//! The mirror image: the peer's SYN-ACK lost on its way to us, from a peer that spoke right
//! behind it, whose NAT is therefore in ESTABLISHED and drops the repeated SYN-ACKs. Lost
//! between our NAT and us (a LAN or radio link behind the NAT), after our NAT's tracking took
//! it to SYN_RECV, which drops the peer's repeated SYNs: nothing of the handshake reaches us
//! again, only the peer's data. Data that acknowledges our SYN therefore finishes the
//! handshake on our side ([`RawPunch::handle_seen_with`]): its first byte follows the peer's
//! ISN. Lost before our NAT, whose tracking is still in SYN_SENT: the peer's data passes
//! (conntrack ignores an ACK from the reply side there) but every ACK of ours is invalid, so
//! the peer repeats its SYN, which the tracking lets through; we answer it with a SYN-ACK
//! (SYN_SENT2 takes our SYN-ACK to SYN_RECV, and our ACKs pass from then on). Until the peer
//! acknowledges our data we cannot tell the two apart, so the driver keeps the engine
//! running ([`RawPunch::awaiting_ack_of_data`]). Seen in the lab with 5% loss at each NAT in
//! about one TCP punch in ten, which until then failed after its whole budget.

use super::{Done, RawPunch};
use crate::core::wire::craft::{Crafted, Flags};
use crate::core::wire::{Segment, TcpOptions};
use std::net::SocketAddrV4;
use std::time::Instant;

/// A handshake finished from the peer's data, until the peer acknowledges ours.
#[derive(Debug, Clone, Copy)]
pub(super) struct FromData {
    /// The peer's ISN: a SYN of the peer's with it is answered, not ignored.
    their_isn: u32,
    /// Our next sequence number then: an acknowledgement past it shows the peer has what our
    /// socket sent since, so our NAT lets our segments through.
    our_next: u32,
    confirmed: bool,
}

impl RawPunch {
    /// SYN-ACKs the peer has not shown it received, again (see the module documentation).
    /// Outside the rate: one per answered 4-tuple and round trip at most.
    pub(super) fn repeat_synacks(&mut self, now: Instant) {
        let due: Vec<(SocketAddrV4, u32, Done, u32)> = self
            .done
            .iter()
            .filter_map(|(to, d)| match (d.answered, d.unconfirmed) {
                (Some(isn), Some((sent, next))) if next <= now => Some((*to, isn, *d, sent)),
                _ => None,
            })
            .collect();
        for (to, isn, d, sent) in due {
            if d.early {
                self.syn_again(to, d.options);
            } else {
                self.synack(to, isn, d.taken, d.options);
            }
            let next = now + self.backoff(sent + 1);
            if let Some(d) = self.done.get_mut(&to) {
                d.unconfirmed = Some((sent + 1, next));
            }
        }
    }

    /// Our SYN once more on the answered 4-tuple `to`, whose socket has sent data: our NAT's
    /// tracking took that data's ACK to ESTABLISHED, where it drops our SYN-ACK as invalid but
    /// lets our SYN pass as possibly out of sync (Linux's conntrack ignores a SYN in the
    /// original direction there, and the peer's SYN-ACK acknowledging it puts the entry back
    /// in step). A peer that never had our SYN nor our SYN-ACK answers it like any SYN, so the
    /// handshake completes in the sequence space our socket already uses. The options are our
    /// SYN-ACK's, TSval included (the socket's clock continues from it), echoing nothing.
    fn syn_again(&mut self, to: SocketAddrV4, options: TcpOptions) {
        self.transmits.push_back(Crafted {
            src: self.local,
            dst: to,
            ttl: self.cfg.ttl,
            seq: self.isn,
            ack: 0,
            flags: Flags::Syn,
            window: self.cfg.window,
            options: TcpOptions {
                timestamps: options.timestamps.map(|(v, _)| (v, 0)),
                ..options
            },
            data: false,
        });
        self.syns += 1;
    }

    /// The socket of the answered 4-tuple `remote` sends before the peer confirmed it has our
    /// SYN-ACK (the TLS client's first flight, a round trip sooner than after the
    /// confirmation). What that costs when our SYN-ACK was lost is covered by repeating our
    /// SYN instead (see `syn_again`).
    pub fn sending_early(&mut self, remote: SocketAddrV4) {
        if let Some(d) = self.done.get_mut(&remote) {
            d.early = d.answered.is_some();
        }
    }

    /// Whether `segment` from the peer on the answered 4-tuple `src` shows our SYN-ACK arrived:
    /// anything but a SYN or RST that acknowledges our SYN (the peer's ACK, its data, or the
    /// SYN-ACK to our own SYN, which says the peer is established too).
    pub(super) fn confirm(&mut self, src: SocketAddrV4, segment: Segment, ack: u32) {
        let Some(d) = self.done.get_mut(&src) else {
            return;
        };
        if let Some(f) = d.from_data.as_mut().filter(|f| !f.confirmed) {
            let past = ack.wrapping_sub(f.our_next);
            if segment == Segment::Other && past != 0 && past < 1 << 30 {
                f.confirmed = true;
                self.confirmed.push_back(src);
            }
            return;
        }
        let acks_ours = ack.wrapping_sub(self.isn.wrapping_add(1)) < 1 << 30;
        let Some((sent, _)) = d.unconfirmed else {
            return;
        };
        if acks_ours && matches!(segment, Segment::Other | Segment::SynAck) {
            d.unconfirmed = None;
            self.confirmed.push_back(src);
            // A SYN-ACK to our first SYN: the peer made its socket when that SYN came, before
            // our data. Otherwise its socket came with our SYN-ACK or a SYN of ours sent again
            // (an early 4-tuple's repeats, `sent` past the first answer), possibly after the
            // data, which it then never had.
            let resynced = sent > 1;
            if d.early && (segment != Segment::SynAck || resynced) {
                self.data_again.push_back(src);
            }
        }
    }

    /// The peer's data on `src`, acknowledging our SYN, when its SYN-ACK never reached us: the
    /// handshake finishes from the data. This is how a SYN-ACK lost between our NAT and us
    /// (a lossy LAN or radio link) is recovered from a peer that spoke right behind it (the
    /// TLS server answering the hello our SYN carried, or the client): our NAT's tracking,
    /// which saw that SYN-ACK, is in SYN_RECV and drops the peer's repeated SYNs as invalid,
    /// and the peer's NAT, which saw its data, is ESTABLISHED and drops repeated SYN-ACKs
    /// (net/netfilter/nf_conntrack_proto_tcp.c, the state table); only the peer's data and
    /// ACKs pass both. A data segment, unlike a pure ACK or a window probe, names the peer's
    /// ISN: the first byte of its stream follows the SYN (RFC 9293 section 3.4), and what the
    /// peer sends first, and again until we acknowledge it, is that first segment.
    ///
    /// The options of a SYN-ACK we never saw are those an engine like this one answers our
    /// SYN with (ours; the MSS of our own path toward the peer); the window its segment
    /// advertises is scaled as ours is. The kernel corrects both from the peer's next ACK.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_from_data(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        seq: u32,
        ack: u32,
        window: u16,
        seen: TcpOptions,
        payload: &[u8],
    ) {
        let ours = TcpOptions {
            timestamps: seen.timestamps.map(|(v, _)| (self.tsval(now), v)),
            ..self.syn_options(now)
        };
        let theirs = TcpOptions {
            timestamps: seen.timestamps,
            ..self.syn_options(now)
        };
        let shift = self.cfg.wscale.min(14);
        let end = seq.wrapping_add(u32::try_from(payload.len()).unwrap_or(0));
        // Acknowledges the data, and so shows the peer our end is up.
        let acked = self.bare_ack(src, ack, end, true, &ours);
        self.transmits.push_back(acked);
        let peer_window = u16::try_from(u32::from(window) << shift).unwrap_or(u16::MAX);
        self.finish(src, seq.wrapping_sub(1), peer_window, ours, theirs, None);
        self.continue_at(ack);
        if let Some(e) = self.established.back_mut() {
            e.rcv_nxt = end;
            e.received = payload.to_vec();
        }
        if let Some(d) = self.done.get_mut(&src) {
            d.from_data = Some(FromData {
                their_isn: seq.wrapping_sub(1),
                our_next: ack,
                confirmed: false,
            });
        }
    }

    /// Whether the handshake on `remote` finished from the peer's data and the peer has not
    /// yet acknowledged anything our socket sent since: until it does, our NAT may be dropping
    /// our segments, which the engine mends by answering the peer's repeated SYN (see the
    /// module documentation), so the engine must go on seeing the peer's segments. Reported
    /// through [`RawPunch::poll_confirmed`] when that changes.
    pub fn awaiting_ack_of_data(&self, remote: SocketAddrV4) -> bool {
        self.done
            .get(&remote)
            .and_then(|d| d.from_data)
            .is_some_and(|f| !f.confirmed)
    }

    /// The peer's SYN `seq` on `src`, whose handshake finished from the peer's data
    /// (`finish_from_data`): answered when it has the ISN that data named.
    pub(super) fn answer_after_data(&mut self, src: SocketAddrV4, seq: u32, d: &Done) {
        let Some(f) = d.from_data.filter(|f| f.their_isn == seq) else {
            return;
        };
        // Finished from the peer's data while our NAT's tracking never saw its SYN-ACK
        // (lost on the way to our NAT): in SYN_SENT it lets the peer's data through
        // but drops every ACK of ours as invalid, so the peer never learns we are up
        // and repeats its SYN. Our SYN-ACK to it takes the tracking to SYN_RECV, after
        // which our ACKs pass; it acknowledges the SYN alone, as tracking that never
        // counted the peer's data requires, and the peer's engine takes it as the
        // confirmation it waits for. Our first data, dropped until now, goes again
        // right behind it.
        self.synack(src, seq, 0, d.options);
        // With the hello the peer took: the peer's NAT, in ESTABLISHED, resyncs its
        // tracking from this SYN-ACK (it acknowledges the peer's SYN, which that NAT
        // ignored), and ends our side of the sequence space where the SYN-ACK ends;
        // the peer's ACKs, past the hello, would be invalid beyond a bare SYN-ACK.
        if let Some(c) = self.transmits.back_mut() {
            c.data = f.our_next != self.isn.wrapping_add(1);
        }
        if !f.confirmed {
            self.data_again.push_back(src);
        }
    }
}

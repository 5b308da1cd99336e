//! The stream read out of order, put back in order here.
//!
//! quinn (quinn-proto 0.11.19) reassembles an ordered stream in a buffer of at most 1,024
//! pieces and closes the connection with "too many gaps in stream buffer" past that -- its
//! defence against a peer that sends slivers, which legitimate traffic reaches too: with 5%
//! loss at each NAT and 160 ms RTT a 32 MiB transfer failed that way in every lab run, with
//! a send window of a megabyte as much as with 32 MiB (the count includes pieces its
//! compaction keeps apart, not only holes). Read unordered, quinn hands each piece over as it
//! arrives (dropping what it already handed over), and the pieces wait here, in a map without
//! such a limit, until the hole before them is filled.
//!
//! Memory stays bounded by the receive window all the same: quinn grants flow-control credit
//! for every byte read, so the connection's window is lowered by what waits here
//! ([`Reorder::window`]) and the peer may send no further past the hole than before.

use bytes::{Buf, Bytes};
use std::collections::BTreeMap;

/// Pieces waiting for the hole before them, and where the stream goes on in order.
#[derive(Debug, Default)]
pub(super) struct Reorder {
    /// The offset of the next byte in order.
    next: u64,
    /// Pieces past `next`, by offset.
    waiting: BTreeMap<u64, Bytes>,
    /// Bytes in `waiting`.
    held: u64,
}

impl Reorder {
    /// A stream whose first `offset` bytes were read elsewhere.
    pub(super) fn starting_at(offset: u64) -> Self {
        Reorder {
            next: offset,
            ..Reorder::default()
        }
    }

    /// A piece at `offset`: appends to `out` whatever is now in order (this piece and the
    /// waiting ones it joins up with). Bytes already delivered are dropped, so repeats and
    /// overlaps are harmless.
    pub(super) fn push(&mut self, offset: u64, bytes: Bytes, out: &mut Vec<Bytes>) {
        if bytes.is_empty() {
            return;
        }
        if offset > self.next {
            let len = bytes.len() as u64;
            // Two pieces at one offset: the longer one stays (the other is part of it, or
            // the rest comes again at its own offset).
            match self.waiting.get(&offset) {
                Some(old) if old.len() >= bytes.len() => {}
                old => {
                    self.held = self.held - old.map_or(0, |o| o.len() as u64) + len;
                    self.waiting.insert(offset, bytes);
                }
            }
            return;
        }
        self.deliver(offset, bytes, out);
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() > self.next {
                break;
            }
            let (at, piece) = entry.remove_entry();
            self.held -= piece.len() as u64;
            self.deliver(at, piece, out);
        }
    }

    /// Appends the part of `bytes` (at `offset`, not past `next`) that `next` has not reached.
    fn deliver(&mut self, offset: u64, mut bytes: Bytes, out: &mut Vec<Bytes>) {
        let seen = self.next - offset;
        if seen >= bytes.len() as u64 {
            return;
        }
        bytes.advance(seen as usize);
        self.next += bytes.len() as u64;
        out.push(bytes);
    }

    /// Whether pieces wait for a hole.
    pub(super) fn waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The offset up to which the stream has been delivered in order.
    pub(super) fn delivered(&self) -> u64 {
        self.next
    }

    /// The connection receive window that keeps the peer within `full` bytes past the hole:
    /// `full` less what waits here.
    pub(super) fn window(&self, full: u64) -> u64 {
        full.saturating_sub(self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn joined(out: &[Bytes]) -> Vec<u8> {
        out.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn pieces_in_order_pass_at_once_and_a_hole_holds_back_what_follows() {
        let data: Vec<u8> = (0..100u8).collect();
        let piece = |a: usize, b: usize| Bytes::copy_from_slice(&data[a..b]);
        let mut r = Reorder::default();
        let mut out = Vec::new();
        r.push(0, piece(0, 10), &mut out);
        assert_eq!(joined(&out), &data[..10]);
        r.push(20, piece(20, 30), &mut out);
        r.push(30, piece(30, 40), &mut out);
        assert_eq!(r.delivered(), 10);
        assert_eq!(r.window(1000), 980);
        r.push(10, piece(10, 20), &mut out);
        assert_eq!(joined(&out), &data[..40]);
        assert_eq!(r.window(1000), 1000);
        // A repeat of delivered bytes, and one overlapping the end, add only what is new.
        r.push(5, piece(5, 15), &mut out);
        r.push(35, piece(35, 50), &mut out);
        assert_eq!(joined(&out), &data[..50]);
    }

    proptest! {
        /// Whatever order, repeats and overlaps the pieces come in, the stream comes out
        /// whole and in order once every byte has come at least once.
        #[test]
        fn any_arrival_order_delivers_the_stream(
            cuts in proptest::collection::vec(1usize..2000, 1..40),
            order in proptest::collection::vec(any::<u64>(), 40),
            repeats in proptest::collection::vec((0usize..2000, 1usize..300), 0..20),
        ) {
            let len = cuts.iter().sum::<usize>();
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in &cuts {
                pieces.push((at, at + c));
                at += c;
            }
            for &(s, l) in &repeats {
                let s = s.min(len - 1);
                pieces.push((s, (s + l).min(len)));
            }
            let mut keyed: Vec<_> = pieces.into_iter().zip(order.iter().cycle()).collect();
            keyed.sort_by_key(|(_, k)| **k);
            let mut r = Reorder::default();
            let mut out = Vec::new();
            for ((a, b), _) in keyed {
                r.push(a as u64, Bytes::copy_from_slice(&data[a..b]), &mut out);
            }
            prop_assert_eq!(joined(&out), data);
            prop_assert_eq!(r.delivered(), len as u64);
        }
    }
}

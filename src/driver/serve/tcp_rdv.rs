//! The rendezvous over TCP (docs/rendezvous.md, "Over TCP"): for a peer whose UDP to the
//! server is blocked. Its frames go to the same [`RendezvousService`] as datagrams; what the
//! service sends to a peer registered over TCP goes down that peer's connection, whichever
//! thread (a UDP one for the other peer's register, the expiry, this connection) produced it.

use super::registry::RendezvousService;
use crate::core::rendezvous::{from_stream_frame, to_stream_frame, Out};
use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tracing::debug;

/// The connections of peers that sent a rendezvous frame, by source address. One lock for
/// all writes, so frames pushed from different threads never interleave on a stream.
/// The rendezvous service and the sockets of the primary endpoint (answers to UDP peers
/// leave from the first).
pub(super) type RdvParts = (Arc<RendezvousService>, Arc<Vec<Vec<UdpSocket>>>);

#[derive(Default)]
pub(super) struct RdvConns(Mutex<HashMap<SocketAddr, TcpStream>>);

impl RdvConns {
    pub(super) fn register(&self, peer: SocketAddr, stream: &TcpStream) {
        let mut conns = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let std::collections::hash_map::Entry::Vacant(e) = conns.entry(peer) {
            if let Ok(s) = stream.try_clone() {
                e.insert(s);
            }
        }
    }

    pub(super) fn remove(&self, peer: SocketAddr) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&peer);
    }

    /// Sends what the rendezvous service produced: down a registered connection, else as a
    /// datagram from `udp` (the primary socket).
    pub(super) fn send_all(&self, msgs: Out, udp: &UdpSocket) {
        if msgs.is_empty() {
            return;
        }
        let mut conns = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (to, bytes) in msgs {
            let Some(s) = conns.get_mut(&to) else {
                if let Err(e) = udp.send_to(&bytes, to) {
                    debug!(%to, error = %e, "rendezvous send failed");
                }
                continue;
            };
            let Some(frame) = to_stream_frame(&bytes) else {
                continue;
            };
            // A failed write may leave half a frame: the stream is unusable from here on.
            if let Err(e) = s.write_all(&frame) {
                debug!(%to, error = %e, "rendezvous send over tcp failed; closing");
                let _ = s.shutdown(std::net::Shutdown::Both);
                conns.remove(&to);
            }
        }
    }
}

/// What a TCP connection of the primary endpoint needs for rendezvous frames.
pub(super) struct RdvTcp<'a> {
    pub(super) service: &'a RendezvousService,
    pub(super) conns: &'a RdvConns,
    pub(super) udp: &'a UdpSocket,
}

impl RdvTcp<'_> {
    /// One complete frame from `peer`, whose connection is `stream`.
    pub(super) fn handle(&self, peer: SocketAddr, stream: &TcpStream, frame: &[u8]) {
        let Some(datagram) = from_stream_frame(frame) else {
            return;
        };
        self.conns.register(peer, stream);
        let msgs = self.service.handle(Instant::now(), peer, &datagram);
        self.conns.send_all(msgs, self.udp);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tcp::tests::{request, server, PEER};
    use super::super::tcp::{serve_frames, ConnectBacks};
    use super::super::Shared;
    use crate::core::server::EndpointId;

    #[test]
    fn rendezvous_frames_go_to_the_rendezvous_with_turn_and_stun_around() {
        use crate::core::rendezvous::to_stream_frame;
        let rdv = to_stream_frame(b"PRV1{\"t\":\"x\"}").unwrap();
        let mut cd = Vec::new();
        crate::core::stun::ChannelData::encode(0x4000, b"abcde", true, &mut cd);
        let input = [rdv.clone(), request(), cd.clone(), rdv.clone()].concat();
        for cut in 0..=input.len() {
            let mut s = server();
            let (mut out, mut wire) = (Vec::new(), Vec::new());
            let (mut frames, mut turned) = (Vec::<Vec<u8>>::new(), 0);
            let mut to_rdv = |f: &[u8]| frames.push(f.to_vec());
            let mut to_relay = |_: &[u8]| turned += 1;
            let mut used = 0;
            for end in [cut, input.len()] {
                let r = serve_frames(
                    &mut s,
                    EndpointId::PRIMARY,
                    PEER,
                    &input[used..end.max(used)],
                    &mut out,
                    &mut wire,
                    &mut ConnectBacks::new(&Shared::default()),
                    Some(&mut to_relay),
                    Some(&mut to_rdv),
                );
                assert_eq!(r.1, None, "cut {cut}");
                used += r.0;
            }
            assert_eq!(used, input.len());
            assert_eq!(frames, [rdv.clone(), rdv.clone()], "cut {cut}");
            assert_eq!((turned, s.stats.success), (1, 1), "cut {cut}");
        }
        // Too long a frame, or the magic gone wrong after the first byte, closes.
        let mut to_rdv = |_: &[u8]| {};
        for junk in [&b"PRV1\xff\xff"[..], b"PRX1"] {
            let r = serve_frames(
                &mut server(),
                EndpointId::PRIMARY,
                PEER,
                junk,
                &mut Vec::new(),
                &mut Vec::new(),
                &mut ConnectBacks::new(&Shared::default()),
                None,
                Some(&mut to_rdv),
            );
            assert!(r.1.is_some(), "{junk:?}");
        }
    }
}

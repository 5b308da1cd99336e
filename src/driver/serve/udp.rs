//! The UDP loop: one thread per socket of an endpoint's group, batched receive and send.

use super::*;
use crate::core::rendezvous::Msg;
use crate::core::server::{DropReason, EndpointId, Outcome, ServerConfig, StunServer, Transport};
use crate::core::turn::TurnServer;
use crate::driver::serve::registry::RendezvousService;
use crate::driver::serve::relay::{Forwarder, Outbox};
use crate::os::mmsg::{RecvBatch, SendBatch, MAX_BATCH};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::thread::{self};
use std::time::{Duration, Instant};
use tracing::debug;

/// What the primary endpoint serves besides STUN.
pub(super) struct Services<'a> {
    /// The rendezvous registry.
    pub(super) rdv: Option<&'a RendezvousService>,
    /// `--relay`: TURN datagrams go to the TURN machine.
    pub(super) relay: Option<&'a Forwarder>,
}

/// Serves socket `k` of endpoint `id` until shutdown; `services` are on the primary
/// endpoint only.
pub(super) fn udp_loop(
    id: EndpointId,
    k: usize,
    sockets: &[Vec<UdpSocket>],
    cfg: ServerConfig,
    services: Services<'_>,
    stop: &Stop,
    shared: &Shared,
) {
    let Services { rdv, relay } = services;
    let local = cfg.addr(id);
    let sock = &sockets[usize::from(id.0)][k];
    let mut last_expiry = Instant::now();
    // A peer that met over TCP gets its messages down its connection.
    let send_all = |msgs: Vec<(SocketAddr, Vec<u8>)>| shared.rdv_tcp.send_all(msgs, sock);
    let mut server = StunServer::with_limiter(cfg, shared.limiter.clone());
    let slot = if relay.is_some() {
        UDP_RELAY_BUF_LEN
    } else {
        UDP_BUF_LEN
    };
    let mut rx = RecvBatch::new(MAX_BATCH, slot);
    let mut tx = SendBatch::new(UDP_OUT_LEN);
    // The TURN machine and what it answers, sent after each receive batch.
    let mut relay = relay.map(|f| (f, Outbox::batched()));
    let mut out = Vec::with_capacity(UDP_OUT_LEN);
    let mut unflushed = 0u32;
    // Checked on every batch, not only on timeouts: under a flood recv never times out.
    while !stop.requested() {
        // One socket of the group runs the expiry, so it runs once per period.
        if let Some(r) = rdv.filter(|_| k == 0) {
            if last_expiry.elapsed() >= Duration::from_millis(500) {
                last_expiry = Instant::now();
                let msgs = r.expire(last_expiry);
                send_all(msgs);
            }
        }
        let n = match rx.recv(sock) {
            Ok(n) => n,
            Err(e) if is_timeout(&e) => {
                shared.udp.at(id).drain_from(&mut server.stats);
                unflushed = 0;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // E.g. an ICMP error surfacing on the socket: transient, but do not spin.
                debug!(%local, error = %e, "udp receive failed");
                thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        // One clock read per batch: the datagrams of a batch arrived together.
        let now = Instant::now();
        for i in 0..n {
            let (data, src, truncated) = rx.get(i);
            let Some(src) = src else { continue };
            if truncated {
                server.stats.malformed += 1;
                log_drop(
                    Transport::Udp,
                    DropReason::Malformed,
                    src,
                    local,
                    data.len(),
                );
                continue;
            }
            if let Some(r) = rdv.filter(|_| Msg::is_rendezvous(data)) {
                let msgs = r.handle(now, src, data);
                send_all(msgs);
                continue;
            }
            // After the rendezvous check: its magic starts with bits 01, like ChannelData.
            if let Some((f, out)) = relay.as_mut().filter(|_| TurnServer::is_turn(data)) {
                f.forward_udp(now, src, data, out);
                continue;
            }
            // The common case answers from this very endpoint: straight into the send batch.
            let Some(buf) = tx.next_buf() else {
                unreachable!("the send batch is flushed after every receive batch");
            };
            match server.handle(now, Transport::Udp, id, src, data, buf) {
                Outcome::Reply { from, to } if from == id => tx.commit(to),
                Outcome::Reply { from, to } => {
                    // RFC 5780 section 6.1: CHANGE-REQUEST answers leave from the other IP
                    // and/or port, so the sending socket is one of the group `from` names.
                    std::mem::swap(buf, &mut out);
                    let Some(group) = sockets.get(usize::from(from.0)).filter(|g| !g.is_empty())
                    else {
                        debug!(%src, ?from, "no socket for the endpoint to answer from");
                        continue;
                    };
                    if let Err(e) = group[k % group.len()].send_to(&out, to) {
                        shared.udp_send_errors.fetch_add(1, Ordering::Relaxed);
                        debug!(%to, %src, %local, error = %e, "udp send failed");
                    }
                }
                Outcome::Drop(reason) => log_drop(Transport::Udp, reason, src, local, data.len()),
            }
        }
        if let Some((f, out)) = relay.as_mut() {
            f.send(out, sock);
        }
        if !tx.is_empty() {
            let (_, failed, err) = tx.flush(sock);
            if failed > 0 {
                shared
                    .udp_send_errors
                    .fetch_add(failed as u64, Ordering::Relaxed);
                if let Some(e) = err {
                    debug!(%local, failed, error = %e, "udp send failed");
                }
            }
        }
        unflushed += n as u32;
        if unflushed >= UDP_FLUSH_EVERY {
            shared.udp.at(id).drain_from(&mut server.stats);
            unflushed = 0;
        }
    }
    shared.udp.at(id).drain_from(&mut server.stats);
}

pub(super) fn log_drop(
    transport: Transport,
    reason: DropReason,
    src: SocketAddr,
    local: SocketAddr,
    len: usize,
) {
    match reason {
        DropReason::Malformed => {
            debug!(?transport, %src, %local, len, "dropped: not a well-formed STUN message")
        }
        DropReason::NotRequest => debug!(?transport, %src, %local, len, "dropped: not a request"),
        DropReason::RateLimited => {
            debug!(?transport, %src, %local, len, "dropped: --per-source-limit reached")
        }
    }
}

//! `connect --code`: before anything else, the two sides meet in the code's session and run
//! the pairing exchange (`crate::core::pairing`, through the rendezvous client); the key it
//! agrees on becomes the secret of the connection that follows, in a session named after
//! the key (so nobody who lacks it can even find that session).

use super::rendezvous::hex_id;
use super::ConnectConfig;
use crate::core::pairing::{self, Code, Pake, RENDEZVOUS_SECRET};
use crate::core::rendezvous::client::{Client, ClientConfig, ClientEvent};
use crate::core::rendezvous::NatInfo;
use crate::core::Machine;
use crate::driver::udp::drive;
use crate::driver::Status;
use crate::os::signals::Shutdown;
use crate::os::udp::{bind_fresh, route_source};
use crate::Error;
use sha2::Digest;
use std::time::{Duration, Instant};

/// `--code` without a value picks a code; with one, joins it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pairing {
    /// Pick a fresh code, announce it for the other side, and wait for it to join.
    New,
    /// Join the side that announced this code.
    Join(Code),
}

/// Pairs; returns the session and secret of the connection that follows.
pub(super) fn pair(
    cfg: &ConnectConfig,
    status: &Status,
    shutdown: &Shutdown,
    how: Pairing,
) -> Result<(String, String), Error> {
    let code = match how {
        Pairing::New => {
            let code = Code::random(&mut rand::rng());
            // Said even with --quiet: without it the other side cannot join.
            status.announce(format!(
                "pairing code: {code}  (the other side runs: punchraw connect --server ... --code {code})"
            ));
            code
        }
        Pairing::Join(code) => code,
    };
    let ip = match cfg.bind {
        Some(ip) => ip,
        None => route_source(cfg.server)?,
    };
    let (sockets, locals) = bind_fresh(ip, 1)?;
    let (pake, msg) = Pake::start(&code, rand_core_06::OsRng);
    let now = Instant::now();
    let client = ClientConfig {
        server: cfg.server,
        session: code.session(),
        secret: RENDEZVOUS_SECRET.to_vec(),
        peer_id: hex_id(),
        locals: Vec::new(),
        nat: NatInfo::unknown(),
        tcp: None,
        mapped: None,
        relayed: None,
        rtt: Duration::from_millis(100),
        deadline: now + cfg.timeout,
        timeout: cfg.timeout,
        start_delay: Duration::ZERO,
        range_drift: None,
        udp_blocked: false,
        relay_hold: true,
    };
    let mut client = Client::new(client, now).with_pairing(pake, &msg);
    let (mut key, mut failed) = (None, None);
    drive(&mut client, &sockets, &locals, None, shutdown, |c| {
        while let Some(ev) = c.poll_event() {
            match ev {
                ClientEvent::Waiting { .. } => status.say(format!(
                    "pairing: waiting for the other side to type the code (session {})",
                    code.nameplate
                )),
                ClientEvent::Paired(k) => key = Some(k),
                ClientEvent::Failed(e) => failed = Some(e),
                _ => {}
            }
        }
        key.is_none() && failed.is_none()
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let key = key.ok_or_else(|| Error::Rendezvous("the pairing ended without a key".into()))?;
    status.say("pairing: the other side typed the same code (both confirmed the key); connecting");
    let tag = crate::core::hex::encode(&sha2::Sha256::digest(key)[..8]);
    Ok((format!("{}-{tag}", code.session()), pairing::secret(&key)))
}

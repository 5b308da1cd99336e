//! Session credentials: a lookup holds the request, the registry's answer releases it, and
//! a session allocation relays only toward the session's other peer.

use super::*;
use crate::core::stun::{attr_type, long_term_key, Attribute, Encoder, MessageType, TransactionId};
use crate::core::turn::server::session::{session_credentials, SessionInfo, SESSION_PREFIX};

const KEY: [u8; 32] = [5; 32];

fn member(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 100 + i], 5000))
}

struct S {
    srv: TurnServer,
    t: Instant,
    n: u8,
    nonce: Vec<u8>,
}

impl S {
    fn new(session_credentials: bool) -> S {
        let mut cfg = config();
        cfg.users.clear();
        cfg.session_credentials = session_credentials;
        if !session_credentials {
            cfg.users.push((USER.into(), PASS.into()));
        }
        let t = Instant::now();
        S {
            srv: TurnServer::new(cfg, t).unwrap(),
            t,
            n: 0,
            nonce: Vec::new(),
        }
    }

    /// A request from `client` signed with session `name`'s credentials under `key`.
    fn request(
        &mut self,
        client: ClientId,
        method: Method,
        attrs: &[Attribute<'_>],
        name: &str,
        key: &[u8; 32],
    ) -> Vec<RelayTransmit> {
        // Nonces are bound to the client's IP: one for this client.
        {
            let bare = self.raw(method, &[], None);
            self.srv.handle_client(self.t, client, &bare);
            let out = self.srv.poll_transmit().unwrap();
            let m = Message::parse(&out.payload).unwrap();
            let Some(Ok(Attribute::Nonce(n))) = m.get(attr_type::NONCE) else {
                panic!("no nonce")
            };
            self.nonce = n.to_vec();
        }
        let (user, pass) = session_credentials(key, name).unwrap();
        let k = long_term_key(&user, "punchraw", &pass);
        let req = self.raw(method, attrs, Some((&user, &k)));
        self.srv.handle_client(self.t, client, &req);
        std::iter::from_fn(|| self.srv.poll_transmit()).collect()
    }

    fn raw(
        &mut self,
        method: Method,
        attrs: &[Attribute<'_>],
        auth: Option<(&str, &[u8; 16])>,
    ) -> Vec<u8> {
        self.n += 1;
        let mut tid = [self.n; 16];
        tid[..4].copy_from_slice(&crate::core::stun::MAGIC_COOKIE.to_be_bytes());
        let mt = MessageType {
            method,
            class: Class::Request,
        };
        let mut out = Vec::new();
        let mut e = Encoder::new(&mut out, mt, TransactionId(tid));
        for a in attrs {
            e.push(a);
        }
        if let Some((user, key)) = auth {
            e.push(&Attribute::Username(user.as_bytes()))
                .push(&Attribute::Realm("punchraw"))
                .push(&Attribute::Nonce(&self.nonce))
                .message_integrity(key);
        }
        out
    }

    /// Answers lookups (session "team" exists with members 0 and 1) and socket opens.
    fn serve_events(&mut self) -> Vec<String> {
        let mut looked = Vec::new();
        while let Some(ev) = self.srv.poll_event() {
            match ev {
                RelayEvent::Open { port } => self.srv.relay_opened(self.t, port, Ok(())),
                RelayEvent::Close { .. } => {}
                RelayEvent::Lookup { session } => {
                    let info = (session == "team").then(|| SessionInfo {
                        key: KEY,
                        members: vec![member(0), member(1)],
                    });
                    looked.push(session.clone());
                    self.srv.session_found(self.t, &session, info);
                }
            }
        }
        looked
    }

    fn code(out: &[RelayTransmit]) -> Option<u16> {
        assert_eq!(out.len(), 1, "one answer: {out:?}");
        match Message::parse(&out[0].payload)
            .unwrap()
            .get(attr_type::ERROR_CODE)
        {
            Some(Ok(Attribute::ErrorCode(e))) => Some(e.code),
            _ => None,
        }
    }

    /// Allocates for `client` with session credentials; returns the answer's code.
    fn allocate(&mut self, client: ClientId, name: &str, key: &[u8; 32]) -> Option<u16> {
        let attrs = [Attribute::RequestedTransport(17)];
        let held = self.request(client, Method::Allocate, &attrs, name, key);
        let mut out = held;
        self.serve_events();
        out.extend(std::iter::from_fn(|| self.srv.poll_transmit()));
        self.serve_events();
        out.extend(std::iter::from_fn(|| self.srv.poll_transmit()));
        S::code(&out)
    }
}

fn at(a: SocketAddr) -> ClientId {
    ClientId {
        via: Via::Udp,
        addr: a,
    }
}

#[test]
fn session_credentials_wait_for_the_lookup_and_then_allocate() {
    let mut s = S::new(true);
    let c = at(member(0));
    let attrs = [Attribute::RequestedTransport(17)];
    let out = s.request(c, Method::Allocate, &attrs, "team", &KEY);
    assert!(out.is_empty(), "held until the lookup");
    // The lookup's answer releases the request; its socket opens; then the answer.
    assert_eq!(s.serve_events(), ["team"]);
    let out: Vec<_> = std::iter::from_fn(|| s.srv.poll_transmit()).collect();
    assert_eq!(S::code(&out), None, "allocated");
    assert!(s.srv.relayed(c).is_some());
    // Cached: the next request is answered at once.
    let out = s.request(c, Method::Refresh, &[], "team", &KEY);
    assert_eq!(S::code(&out), None);
    assert!(s.srv.poll_event().is_none(), "no second lookup");
    // Two bare requests for nonces, the held Allocate once, the Refresh.
    assert_eq!(s.srv.stats().requests, 4);
}

/// The first peer of a session allocates before its register has created the session: a
/// miss is remembered only briefly, so its retry a second later finds the session.
#[test]
fn a_session_not_found_is_looked_up_again_after_a_second() {
    let mut s = S::new(true);
    assert_eq!(s.allocate(at(member(0)), "later", &KEY), Some(401));
    let attrs = [Attribute::RequestedTransport(17)];
    let out = s.request(at(member(0)), Method::Allocate, &attrs, "later", &KEY);
    assert_eq!(S::code(&out), Some(401), "the miss is cached for a moment");
    assert!(s.srv.poll_event().is_none());
    s.t += crate::core::turn::server::session::SESSION_MISS_CACHE;
    let out = s.request(at(member(0)), Method::Allocate, &attrs, "later", &KEY);
    assert!(out.is_empty(), "held for a fresh lookup");
    assert_eq!(s.serve_events(), ["later"]);
}

#[test]
fn unknown_session_or_wrong_key_is_401_and_off_means_no_lookup() {
    let mut s = S::new(true);
    assert_eq!(s.allocate(at(member(0)), "nobody", &KEY), Some(401));
    assert_eq!(s.allocate(at(member(1)), "team", &[6; 32]), Some(401));
    let mut s = S::new(false);
    let attrs = [Attribute::RequestedTransport(17)];
    let out = s.request(at(member(0)), Method::Allocate, &attrs, "team", &KEY);
    assert_eq!(S::code(&out), Some(401));
    assert!(s.srv.poll_event().is_none());
    assert!(SESSION_PREFIX.ends_with(':'));
}

#[test]
fn a_session_allocation_relays_only_toward_the_other_peer() {
    let mut s = S::new(true);
    let a = at(member(0));
    assert_eq!(s.allocate(a, "team", &KEY), None);
    let perm = |s: &mut S, c: ClientId, p: SocketAddr| {
        let out = s.request(
            c,
            Method::CreatePermission,
            &[Attribute::XorPeerAddress(p)],
            "team",
            &KEY,
        );
        S::code(&out)
    };
    assert_eq!(perm(&mut s, a, member(1)), None, "the other peer");
    assert_eq!(perm(&mut s, a, member(0)), Some(403), "not itself");
    assert_eq!(
        perm(&mut s, a, SocketAddr::from(([192, 0, 2, 1], 9))),
        Some(403)
    );
    // The relay's own address only once the other peer holds an allocation here.
    let relay_any = SocketAddr::new(relay_ip(), 0);
    assert_eq!(perm(&mut s, a, relay_any), Some(403));
    let b = at(member(1));
    assert_eq!(s.allocate(b, "team", &KEY), None);
    assert_eq!(perm(&mut s, a, relay_any), None);
    // A client of other credentials elsewhere on the relay is not a session peer.
    let rb = s.srv.relayed(b).unwrap();
    let ra = s.srv.relayed(a).unwrap();
    let stranger_port = if ra.port() == 50000 || rb.port() == 50000 {
        50009
    } else {
        50000
    };
    let t = s.t;
    s.srv.handle_peer(
        t,
        ra.port(),
        SocketAddr::new(relay_ip(), stranger_port),
        b"x",
    );
    assert!(s.srv.poll_transmit().is_none());
    s.srv.handle_peer(t, ra.port(), rb, b"from b");
    let out = s
        .srv
        .poll_transmit()
        .expect("from the session's other relay");
    assert_eq!(out.to, a.addr);
}

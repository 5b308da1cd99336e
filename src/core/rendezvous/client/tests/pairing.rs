//! Pairing codes through the real rendezvous machine: the SPAKE2 messages and confirmations
//! ride the registers, and the introduction comes only once both confirmations matched.

use super::*;
use crate::core::pairing::{Code, Pake, RENDEZVOUS_SECRET};
use rand_core_06::OsRng;

/// Peer `n` pairing with `code` (typed as given) now; returns its index.
fn pair(net: &mut Net, n: u8, code: &str) -> usize {
    let code: Code = code.parse().expect("a well-formed code");
    let mut cfg = net.config(n, "", Duration::from_secs(30));
    cfg.session = code.session();
    cfg.secret = RENDEZVOUS_SECRET.to_vec();
    cfg.locals = Vec::new();
    let (pake, msg) = Pake::start(&code, OsRng);
    net.peers.push(Peer {
        addr: addr(n),
        client: Client::new(cfg, net.now).with_pairing(pake, &msg),
        events: Vec::new(),
        sent: Vec::new(),
        received: Vec::new(),
        next_offer_port: 0,
    });
    net.step();
    net.peers.len() - 1
}

fn key(p: &Peer) -> Option<[u8; 32]> {
    p.events.iter().find_map(|(_, e)| match e {
        ClientEvent::Paired(k) => Some(*k),
        _ => None,
    })
}

fn wrong_code(p: &Peer) -> bool {
    matches!(p.failure(), Some((_, Error::WrongCode { .. })))
}

#[test]
fn the_same_code_pairs_both_sides_on_one_key() {
    let mut net = Net::new();
    let a = pair(&mut net, 1, "7-guitar-orbit");
    net.run_for(ms(800));
    let b = pair(&mut net, 2, "7-Guitar-Orbit");
    net.run_for(ms(1000));
    let (ka, kb) = (key(&net.peers[a]), key(&net.peers[b]));
    assert!(ka.is_some() && ka == kb, "{ka:?} {kb:?}");
    for p in [a, b] {
        let (t, _) = net.peers[p]
            .introduction()
            .expect("introduced after pairing");
        // The server's round trip for the messages, one more for the confirmations.
        assert!(
            t - net.at(ms(800)) < ms(400),
            "paired {:?} after B came",
            t - net.t0
        );
    }
    // The words never travel: no register carries them.
    for p in [a, b] {
        for (_, m) in &net.peers[p].sent {
            let text = String::from_utf8_lossy(&m.encode()).into_owned();
            assert!(
                !text.contains("guitar") && !text.contains("orbit"),
                "{text}"
            );
        }
    }
}

/// Another word: both sides see the confirmations differ and end with "wrong code".
#[test]
fn a_wrong_code_fails_on_both_sides() {
    let mut net = Net::new();
    let a = pair(&mut net, 1, "7-guitar-orbit");
    net.run_for(ms(500));
    let b = pair(&mut net, 2, "7-guitar-tiger");
    net.run_for(ms(1000));
    for p in [a, b] {
        assert!(wrong_code(&net.peers[p]), "{:?}", net.peers[p].failure());
        assert!(key(&net.peers[p]).is_none() && net.peers[p].introduction().is_none());
    }
}

/// A third party who knows the number guesses the words before the right peer comes: its
/// one guess fails, it takes the code's first side down with it (the code is used up), and
/// the right peer finds the session taken rather than a stranger's key.
#[test]
fn a_third_partys_guess_burns_the_code() {
    let mut net = Net::new();
    let a = pair(&mut net, 1, "7-guitar-orbit");
    net.run_for(ms(500));
    let m = pair(&mut net, 3, "7-guitar-tiger");
    net.run_for(ms(1000));
    let b = pair(&mut net, 2, "7-guitar-orbit");
    net.run_for(ms(2000));
    assert!(wrong_code(&net.peers[a]));
    assert!(wrong_code(&net.peers[m]));
    assert!(key(&net.peers[b]).is_none(), "no key with anyone");
    assert!(
        matches!(
            net.peers[b].failure(),
            Some((_, Error::SessionTaken { .. }))
        ),
        "{:?}",
        net.peers[b].failure()
    );
}

/// An old register of A's, replayed from elsewhere after the pairing started, changes
/// nothing: the server drops it (its seq is stale) and the pair completes.
#[test]
fn a_replayed_register_changes_nothing() {
    let mut net = Net::new();
    let a = pair(&mut net, 1, "7-guitar-orbit");
    net.run_for(ms(500));
    let b = pair(&mut net, 2, "7-guitar-orbit");
    net.run_for(ms(30));
    let (_, old) = net.peers[a].sent[0].clone();
    let key_a =
        crate::core::rendezvous::derive_rendezvous_key(RENDEZVOUS_SECRET, "punchraw-code-7");
    let replay = old.encode_signed(&key_a);
    let evil = addr(9);
    let answers = net.server.handle(net.now, evil, &replay);
    assert!(answers.is_empty(), "a replay earns no answer: {answers:?}");
    net.run_for(ms(1000));
    let (ka, kb) = (key(&net.peers[a]), key(&net.peers[b]));
    assert!(ka.is_some() && ka == kb);
    let (_, intro) = net.peers[b].introduction().expect("introduced");
    assert_eq!(intro.peer.public, addr(1), "A's endpoint did not move");
}

//! The relayed address a peer offers in the rendezvous ([`RelayOffer`]): MACed under the
//! punch key (derived from the secret, which the rendezvous and TURN server never see), so
//! the server that relays the offer -- and relays the stream, RFC 8656 section 2 -- can
//! neither point a peer at another address nor swap the certificate it will pin.

use crate::core::rendezvous::RelayOffer;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::SocketAddr;

fn offer_mac(key: &[u8; 32], from_id: &str, addr: SocketAddr, fp: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"punchraw v1 relay offer\0");
    mac.update(from_id.as_bytes());
    mac.update(&[0]);
    mac.update(addr.to_string().as_bytes());
    mac.update(&[0]);
    mac.update(fp.as_bytes());
    mac
}

/// Our offer: relayed address `addr` and certificate `fingerprint`, from peer `my_id`.
pub fn make_offer(
    key: &[u8; 32],
    my_id: &str,
    addr: SocketAddr,
    fingerprint: &[u8; 32],
) -> RelayOffer {
    let fp = crate::core::hex::encode(fingerprint);
    let mac = offer_mac(key, my_id, addr, &fp).finalize().into_bytes();
    RelayOffer {
        addr,
        fp,
        mac: crate::core::hex::encode(&mac),
    }
}

/// The peer's relayed address and certificate fingerprint, when its offer verifies under our
/// punch key.
pub fn verify_offer(
    key: &[u8; 32],
    peer_id: &str,
    o: &RelayOffer,
) -> Option<(SocketAddr, [u8; 32])> {
    let tag = crate::core::hex::decode32(&o.mac)?;
    offer_mac(key, peer_id, o.addr, &o.fp)
        .verify_slice(&tag)
        .ok()?;
    Some((o.addr, crate::core::hex::decode32(&o.fp)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_verifies_only_unaltered_and_under_the_same_key() {
        let addr: SocketAddr = "203.0.113.1:50000".parse().unwrap();
        let o = make_offer(&[1; 32], "a", addr, &[7; 32]);
        assert_eq!(verify_offer(&[1; 32], "a", &o), Some((addr, [7; 32])));
        assert_eq!(verify_offer(&[2; 32], "a", &o), None, "another secret");
        assert_eq!(verify_offer(&[1; 32], "b", &o), None, "another peer");
        let mut moved = o.clone();
        moved.addr = "203.0.113.1:50002".parse().unwrap();
        assert_eq!(verify_offer(&[1; 32], "a", &moved), None, "redirected");
        let mut swapped = o.clone();
        swapped.fp = crate::core::hex::encode(&[8; 32]);
        assert_eq!(
            verify_offer(&[1; 32], "a", &swapped),
            None,
            "certificate swapped"
        );
        let mut junk = o;
        junk.mac = "zz".into();
        assert_eq!(verify_offer(&[1; 32], "a", &junk), None);
    }
}

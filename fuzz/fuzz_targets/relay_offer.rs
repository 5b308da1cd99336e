//! Checks a relay offer (`core::turn::offer`) built from arbitrary fields against a fixed
//! punch key: nothing may panic, and an offer verifies only as we would have written it --
//! the relayed address and fingerprint it returns, offered again under the same key and id,
//! give the same fingerprint text and the same MAC (hex, either case). So a rendezvous server
//! that passes offers along can change nothing in one that still verifies. Each input is also
//! turned into a genuine offer, which must verify, and must stop verifying when any one of
//! its fields changes.
//!
//! Input: `[id_len: u8][id][v6: u8][addr: 6 or 18 bytes][fp_len: u8][fp][mac...]`; strings are
//! taken as UTF-8 with replacement, so any bytes reach the hex decoder.

#![no_main]

use libfuzzer_sys::fuzz_target;
use punchraw::core::rendezvous::RelayOffer;
use punchraw::core::turn::offer::{make_offer, verify_offer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const KEY: [u8; 32] = [0x5a; 32];

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = (data.get(..n)?, data.get(n..)?);
    *data = rest;
    Some(head)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn parse(mut data: &[u8]) -> Option<(String, RelayOffer)> {
    let id_len = usize::from(*take(&mut data, 1)?.first()?);
    let id = text(take(&mut data, id_len)?);
    let addr = if take(&mut data, 1)?[0] & 1 == 1 {
        let b: [u8; 18] = take(&mut data, 18)?.try_into().ok()?;
        let ip: [u8; 16] = b[..16].try_into().ok()?;
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from(ip)),
            u16::from_be_bytes([b[16], b[17]]),
        )
    } else {
        let b: [u8; 6] = take(&mut data, 6)?.try_into().ok()?;
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
            u16::from_be_bytes([b[4], b[5]]),
        )
    };
    let fp_len = usize::from(*take(&mut data, 1)?.first()?);
    let fp = text(take(&mut data, fp_len)?);
    let mac = text(data);
    Some((id, RelayOffer { addr, fp, mac }))
}

fuzz_target!(|data: &[u8]| {
    let Some((id, offer)) = parse(data) else {
        return;
    };
    if let Some((addr, fp)) = verify_offer(&KEY, &id, &offer) {
        let again = make_offer(&KEY, &id, addr, &fp);
        assert_eq!(again.addr, offer.addr);
        assert_eq!(
            again.fp, offer.fp,
            "a fingerprint verified in another spelling"
        );
        assert!(
            again.mac.eq_ignore_ascii_case(&offer.mac),
            "a MAC verified in another spelling: {:?}",
            offer.mac
        );
    }

    // A genuine offer of these fields: the fingerprint from the input's bytes.
    let mut fp = [0u8; 32];
    for (o, b) in fp.iter_mut().zip(offer.fp.bytes().chain(offer.mac.bytes())) {
        *o = b;
    }
    let good = make_offer(&KEY, &id, offer.addr, &fp);
    assert_eq!(verify_offer(&KEY, &id, &good), Some((offer.addr, fp)));
    let mut other_key = KEY;
    other_key[0] ^= 1;
    assert_eq!(verify_offer(&other_key, &id, &good), None, "another key");
    assert_eq!(
        verify_offer(&KEY, &format!("{id}x"), &good),
        None,
        "another id"
    );
    let mut moved = good.clone();
    moved.addr.set_port(moved.addr.port().wrapping_add(1));
    assert_eq!(verify_offer(&KEY, &id, &moved), None, "another address");
    for field in [0, 1] {
        let mut changed = good.clone();
        let s = if field == 0 {
            &mut changed.fp
        } else {
            &mut changed.mac
        };
        // Flip one digit to another digit (0 <-> 1, ...), keeping the text valid hex.
        let i = usize::from(fp[0]) % s.len();
        let c = s.as_bytes()[i];
        let flipped = if c == b'f' {
            b'e'
        } else if c == b'9' {
            b'a'
        } else {
            c + 1
        };
        s.replace_range(i..=i, &char::from(flipped).to_string());
        assert_eq!(
            verify_offer(&KEY, &id, &changed),
            None,
            "field {field} changed"
        );
    }
});

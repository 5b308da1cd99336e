//! Lower-case hex: how keys, MACs and certificate fingerprints travel in the rendezvous's JSON
//! and appear in messages (users compare fingerprints by eye).

/// `b` as lower-case hex digits, two per byte.
pub fn encode(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        // Writing to a String cannot fail.
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// An even number of hex digits (either case) to their bytes; `None` for anything else.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// Exactly 64 hex digits (either case) to 32 bytes; `None` for anything else, so a
/// malformed key or MAC from the network is refused, never a panic.
pub fn decode32(s: &str) -> Option<[u8; 32]> {
    // `from_str_radix` alone would also take a sign ("+f"), so "0f" and "+f" would both
    // read as 15: two spellings of one MAC.
    if s.len() != 64 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let b: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        let h = encode(&b);
        assert_eq!(h.len(), 64);
        assert_eq!(&h[..6], "00254a");
        assert_eq!(decode32(&h), Some(b));
        assert_eq!(decode32(&h.to_uppercase()), Some(b));
        assert_eq!(decode32(&h[..62]), None);
        assert_eq!(decode32(&format!("{}zz", &h[..62])), None);
        // A multi-byte character must not split a digit pair into a panic.
        assert_eq!(decode32(&format!("é{}", &h[..62])), None);
        // Digits only: no sign in front of a pair (seen while writing the relay_offer fuzz
        // target, whose property is that a verified offer is spelled as we would spell it).
        assert_eq!(decode32(&format!("+f{}", &h[2..])), None);
    }
}

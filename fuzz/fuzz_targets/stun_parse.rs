//! Parses arbitrary bytes as a STUN message and, when that succeeds, walks every accessor;
//! then re-encodes the decoded attributes and checks the result parses back to the same
//! attributes. Nothing may panic, and no attribute value may point outside the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use punchraw::core::stun::{attr_type, Attribute, Encoder, Message, ParseError, HEADER_LEN};

const KEY: &[u8] = b"fuzz-key";

/// An attribute as found: decoded, or (type, raw value) when its value is malformed.
type Found<'a> = Result<Attribute<'a>, (u16, &'a [u8])>;

fuzz_target!(|data: &[u8]| {
    let _ = Message::frame_len(data);
    let Ok(msg) = Message::parse(data) else {
        return;
    };
    assert_eq!(Message::frame_len(data), Some(data.len()));
    let tid = msg.transaction_id();
    let mt = msg.message_type();
    assert_eq!(mt.to_u16(), u16::from_be_bytes([data[0], data[1]]));

    let inside = data.as_ptr_range();
    let within = |s: &[u8]| {
        let r = s.as_ptr_range();
        inside.start <= r.start && r.end <= inside.end
    };
    let mut found: Vec<Found<'_>> = Vec::new();
    let mut fingerprint = false;
    let mut pos = HEADER_LEN;
    for a in msg.attributes() {
        assert_eq!(a.offset, pos, "attributes must tile the body");
        assert!(within(a.value), "attribute value outside the input");
        pos += 4 + ((a.value.len() + 3) & !3);
        match a.decode(&tid) {
            Ok(Attribute::Fingerprint(_)) => fingerprint = true,
            Ok(d) => {
                match &d {
                    Attribute::Padding(s)
                    | Attribute::Username(s)
                    | Attribute::MessageIntegrity(s)
                    | Attribute::MessageIntegritySha256(s)
                    | Attribute::Nonce(s)
                    | Attribute::Data(s)
                    | Attribute::Other { value: s, .. } => assert!(within(s)),
                    Attribute::Software(s) | Attribute::Realm(s) => {
                        assert!(within(s.as_bytes()))
                    }
                    Attribute::ErrorCode(e) => assert!(within(e.reason.as_bytes())),
                    Attribute::UnknownAttributes(l) => {
                        assert!(within(l.0));
                        assert_eq!(l.iter().count() * 2, l.0.len());
                    }
                    _ => {}
                }
                found.push(Ok(d));
            }
            Err(ParseError::BadAttribute { typ, .. }) => {
                assert_eq!(typ, a.typ);
                assert_ne!(
                    typ,
                    attr_type::FINGERPRINT,
                    "parse accepted a bad FINGERPRINT"
                );
                found.push(Err((a.typ, a.value)));
            }
            Err(e) => panic!("decode returned a framing error: {e:?}"),
        }
    }
    assert_eq!(pos, data.len());
    let _ = msg.mapped_address();
    let _ = msg.unknown_required().count();
    let _ = msg.verify_integrity(KEY);
    let _ = msg.verify_integrity_sha256(KEY);
    let _ = format!("{msg:?}");

    // Re-encode what was decoded (malformed values verbatim) and parse it back. Values keep
    // their lengths, so the message keeps its size; only padding and reserved bits may differ.
    let mut out = Vec::with_capacity(data.len());
    let mut enc = Encoder::new(&mut out, mt, tid);
    for f in &found {
        match f {
            Ok(a) => enc.push(a),
            Err((typ, value)) => enc.push(&Attribute::Other { typ: *typ, value }),
        };
    }
    if fingerprint {
        enc.fingerprint();
    }
    assert_eq!(enc.len(), data.len());
    let again = Message::parse(&out).expect("a re-encoded message parses");
    assert_eq!(again.message_type(), mt);
    assert_eq!(again.transaction_id(), tid);
    let mut attrs = again.attributes();
    for f in &found {
        let a = attrs.next().expect("as many attributes as before");
        match f {
            Ok(want) => assert_eq!(a.decode(&tid).as_ref(), Ok(want)),
            Err((typ, value)) => {
                assert_eq!((a.typ, a.value), (*typ, *value));
                assert!(a.decode(&tid).is_err());
            }
        }
    }
    if fingerprint {
        let a = attrs.next().expect("FINGERPRINT");
        assert_eq!(a.typ, attr_type::FINGERPRINT);
    }
    assert!(attrs.next().is_none());
});

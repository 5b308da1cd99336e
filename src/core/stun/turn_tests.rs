//! Tests of what TURN adds to the codec: its methods, its attributes, long-term credentials
//! (the RFC 5769 section 2.4 vector) and ChannelData.

use super::*;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn tid() -> TransactionId {
    let mut t = [7u8; 16];
    t[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    TransactionId(t)
}

#[test]
fn turn_message_types_have_rfc_8656_values() {
    // RFC 8656 section 17 method numbers, with the class bits of RFC 8489 section 5.
    let cases = [
        (Method::Allocate, Class::Request, 0x0003),
        (Method::Allocate, Class::Success, 0x0103),
        (Method::Allocate, Class::Error, 0x0113),
        (Method::Refresh, Class::Request, 0x0004),
        (Method::Refresh, Class::Success, 0x0104),
        (Method::Send, Class::Indication, 0x0016),
        (Method::Data, Class::Indication, 0x0017),
        (Method::CreatePermission, Class::Request, 0x0008),
        (Method::CreatePermission, Class::Error, 0x0118),
        (Method::ChannelBind, Class::Request, 0x0009),
        (Method::ChannelBind, Class::Success, 0x0109),
    ];
    for (method, class, v) in cases {
        let mt = MessageType { method, class };
        assert_eq!(mt.to_u16(), v, "{mt:?}");
        assert_eq!(MessageType::from_u16(v), mt);
        assert_eq!(Method::from_code(method.code()), method);
    }
    // Other methods stay Other.
    assert_eq!(Method::from_code(0x00a), Method::Other(0x00a));
    assert_eq!(Method::from_code(0x002), Method::Other(0x002));
}

fn round_trip(a: Attribute<'_>) {
    let t = tid();
    let mut out = Vec::new();
    Encoder::new(&mut out, MessageType::BINDING_REQUEST, t)
        .push(&a)
        .fingerprint();
    let m = Message::parse(&out).expect("parses");
    let got = m.get(a.typ()).expect("present").expect("decodes");
    assert_eq!(got, a);
    assert_eq!(out.len() % 4, 0);
}

#[test]
fn turn_attributes_round_trip() {
    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)), 49152);
    let v6 = SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6)),
        3478,
    );
    for a in [
        Attribute::ChannelNumber(0x4000),
        Attribute::ChannelNumber(0x4fff),
        Attribute::Lifetime(600),
        Attribute::Lifetime(0),
        Attribute::XorPeerAddress(v4),
        Attribute::XorPeerAddress(v6),
        Attribute::XorRelayedAddress(v4),
        Attribute::XorRelayedAddress(v6),
        Attribute::Data(b""),
        Attribute::Data(b"hello"),
        Attribute::Realm("example.org"),
        Attribute::Nonce(b"f//499k954d6OL34oL9FSTvy64sA"),
        Attribute::RequestedAddressFamily(0x02),
        Attribute::RequestedTransport(17),
        Attribute::EvenPort { reserve: true },
        Attribute::EvenPort { reserve: false },
        Attribute::DontFragment,
        Attribute::ReservationToken(*b"12345678"),
    ] {
        round_trip(a);
    }
}

#[test]
fn turn_attribute_wire_layout() {
    // RFC 8656 section 18: number then RFFU; protocol then RFFU; family then RFFU; R bit.
    let t = tid();
    let enc = |a: Attribute<'_>| {
        let mut v = Vec::new();
        a.encode_value(&mut v, &t);
        v
    };
    assert_eq!(enc(Attribute::ChannelNumber(0x4001)), [0x40, 0x01, 0, 0]);
    assert_eq!(enc(Attribute::RequestedTransport(17)), [17, 0, 0, 0]);
    assert_eq!(enc(Attribute::RequestedAddressFamily(1)), [1, 0, 0, 0]);
    assert_eq!(enc(Attribute::Lifetime(0x0102_0304)), [1, 2, 3, 4]);
    assert_eq!(enc(Attribute::EvenPort { reserve: true }), [0x80]);
    assert_eq!(enc(Attribute::DontFragment), [0u8; 0]);
    // XOR-PEER-ADDRESS XORs like XOR-MAPPED-ADDRESS (port ^ 0x2112).
    let a = SocketAddr::from(([192, 0, 2, 1], 0x2112));
    assert_eq!(
        enc(Attribute::XorPeerAddress(a)),
        [0, 1, 0, 0, 192 ^ 0x21, 0x12, 2 ^ 0xa4, 1 ^ 0x42]
    );
}

#[test]
fn bad_turn_attribute_values_are_errors() {
    let t = tid();
    let cases: &[(u16, &[u8])] = &[
        (attr_type::CHANNEL_NUMBER, &[0x40, 0]),
        (attr_type::LIFETIME, &[0, 0, 1]),
        (attr_type::LIFETIME, &[0, 0, 0, 1, 0]),
        (attr_type::XOR_PEER_ADDRESS, &[0, 1, 0]),
        (attr_type::XOR_RELAYED_ADDRESS, &[0, 3, 0, 0, 1, 2, 3, 4]),
        (attr_type::REQUESTED_ADDRESS_FAMILY, &[1]),
        (attr_type::REQUESTED_TRANSPORT, &[17, 0]),
        (attr_type::EVEN_PORT, &[]),
        (attr_type::EVEN_PORT, &[0x80, 0]),
        (attr_type::DONT_FRAGMENT, &[0]),
        (attr_type::RESERVATION_TOKEN, &[1, 2, 3, 4, 5, 6, 7]),
        (attr_type::REALM, &[0xff, 0xfe]),
        (attr_type::REALM, &[b'a'; 764]),
        (attr_type::NONCE, &[b'a'; 764]),
    ];
    for (typ, v) in cases {
        assert!(
            matches!(
                Attribute::decode(*typ, v, &t),
                Err(ParseError::BadAttribute { typ: got, .. }) if got == *typ
            ),
            "0x{typ:04x} {v:?}"
        );
    }
}

/// RFC 5769 section 2.4, Sample Request with Long-Term Authentication. Username
/// "<U+30DE><U+30C8><U+30EA><U+30C3><U+30AF><U+30B9>" (18 bytes of UTF-8), password
/// "The<U+00AD>M<U+00AA>tr<U+2168>", which SASLprep (RFC 4013) maps to "TheMatrIX" (the soft
/// hyphen is dropped, NFKC turns the ordinal indicator into "a" and the Roman numeral nine
/// into "IX"), realm "example.org".
fn rfc5769_long_term_request() -> Vec<u8> {
    hex("00010060 2112a442 78ad3433 c6ad72c0 29da412e
         00060012 e3839ee3 8388e383 aae38383 e382afe3 82b90000
         0015001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679 36347341
         0014000b 6578616d 706c652e 6f726700
         00080014 f6702465 6dd64a3e 02b8e071 2e85c9a2 8ca89666")
}

#[test]
fn rfc5769_long_term_vector_verifies_with_the_md5_key() {
    let v = rfc5769_long_term_request();
    let m = Message::parse(&v).expect("parses");
    let username = "\u{30de}\u{30c8}\u{30ea}\u{30c3}\u{30af}\u{30b9}";
    assert_eq!(
        m.get(attr_type::USERNAME),
        Some(Ok(Attribute::Username(username.as_bytes())))
    );
    assert_eq!(
        m.get(attr_type::REALM),
        Some(Ok(Attribute::Realm("example.org")))
    );
    assert_eq!(
        m.get(attr_type::NONCE),
        Some(Ok(Attribute::Nonce(b"f//499k954d6OL34oL9FSTvy64sA")))
    );
    let key = long_term_key(username, "example.org", "TheMatrIX");
    assert!(m.verify_integrity(&key));
    assert!(!m.verify_integrity(&long_term_key(username, "example.org", "TheMatrix")));

    // The encoder reproduces the vector (its padding bytes are zero already).
    let mut out = Vec::new();
    Encoder::new(&mut out, MessageType::BINDING_REQUEST, m.transaction_id())
        .push(&Attribute::Username(username.as_bytes()))
        .push(&Attribute::Nonce(b"f//499k954d6OL34oL9FSTvy64sA"))
        .push(&Attribute::Realm("example.org"))
        .message_integrity(&key);
    assert_eq!(out, v);
}

#[test]
fn long_term_key_is_md5_of_user_realm_password() {
    // MD5("user:realm:pass"), computed independently (md5sum).
    assert_eq!(
        crate::core::hex::encode(&long_term_key("user", "realm", "pass")),
        "8493fbc53ba582fb4c044c456bdc40eb"
    );
    // SHA-256("user:realm:pass") (sha256sum).
    assert_eq!(
        crate::core::hex::encode(&long_term_key_sha256("user", "realm", "pass")),
        "07e934117abd40836e7c6329b54731b2b2d2a5f9a71f544922d75e0730d8251b"
    );
}

#[test]
fn channel_data_parse_and_encode() {
    let mut out = Vec::new();
    ChannelData::encode(0x4001, b"hello", false, &mut out);
    assert_eq!(out, [0x40, 0x01, 0, 5, b'h', b'e', b'l', b'l', b'o']);
    assert_eq!(
        ChannelData::parse(&out),
        Ok(ChannelData {
            channel: 0x4001,
            data: b"hello"
        })
    );
    // Padded for a stream: 4 + 8 bytes, the padding outside the length.
    let mut padded = Vec::new();
    ChannelData::encode(0x4001, b"hello", true, &mut padded);
    assert_eq!(padded.len(), 12);
    assert_eq!(&padded[9..], [0, 0, 0]);
    assert_eq!(ChannelData::parse(&padded).unwrap().data, b"hello");
    assert_eq!(frame_len(&padded), Some(12));
    assert_eq!(frame_len(&padded[..3]), None);
    // Empty data is legal (RFC 8656 section 12.4 allows a zero length).
    let mut empty = Vec::new();
    ChannelData::encode(0x4fff, b"", true, &mut empty);
    assert_eq!(empty, [0x4f, 0xff, 0, 0]);
    assert_eq!(ChannelData::parse(&empty).unwrap().data, b"");
}

#[test]
fn channel_data_errors() {
    assert_eq!(
        ChannelData::parse(&[0x40]),
        Err(ChannelDataError::TooShort(1))
    );
    assert_eq!(
        ChannelData::parse(&[0x00, 1, 0, 0]),
        Err(ChannelDataError::NotChannelData)
    );
    assert_eq!(
        ChannelData::parse(&[0x80, 1, 0, 0]),
        Err(ChannelDataError::NotChannelData)
    );
    assert_eq!(
        ChannelData::parse(&[0x40, 0, 0, 5, 1, 2]),
        Err(ChannelDataError::Truncated {
            declared: 5,
            actual: 2
        })
    );
    assert_eq!(
        ChannelData::parse(&[0x40, 0, 0, 0, 1, 2, 3, 4]),
        Err(ChannelDataError::Trailing(4))
    );
}

#[test]
fn stream_frame_len_tells_stun_from_channel_data() {
    let mut stun = Vec::new();
    Encoder::new(&mut stun, MessageType::BINDING_REQUEST, tid()).push(&Attribute::Lifetime(1));
    assert_eq!(frame_len(&stun), Some(28));
    assert_eq!(frame_len(&[0x40, 0, 0, 1]), Some(8));
    assert_eq!(frame_len(&[0x40, 0, 0, 4]), Some(8));
    assert_eq!(frame_len(&[0x80, 0, 0, 4]), None);
    assert_eq!(frame_len(&[]), None);
}

proptest! {
    #[test]
    fn channel_data_parse_never_panics(buf in prop::collection::vec(any::<u8>(), 0..80)) {
        let _ = frame_len(&buf);
        if let Ok(cd) = ChannelData::parse(&buf) {
            prop_assert_eq!(usize::from(u16::from_be_bytes([buf[2], buf[3]])), cd.data.len());
            prop_assert!(buf.len() - 4 - cd.data.len() <= 3);
            let mut again = Vec::new();
            ChannelData::encode(cd.channel, cd.data, false, &mut again);
            prop_assert_eq!(&again[..], &buf[..4 + cd.data.len()]);
        }
    }

    #[test]
    fn channel_data_round_trips(channel in 0x4000u16..0x8000, data in prop::collection::vec(any::<u8>(), 0..64), pad: bool) {
        let mut out = Vec::new();
        ChannelData::encode(channel, &data, pad, &mut out);
        if pad {
            prop_assert_eq!(out.len() % 4, 0);
            prop_assert_eq!(frame_len(&out), Some(out.len()));
        }
        let cd = ChannelData::parse(&out).unwrap();
        prop_assert_eq!(cd.channel, channel);
        prop_assert_eq!(cd.data, &data[..]);
    }
}

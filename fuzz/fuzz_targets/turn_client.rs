//! Feeds arbitrary datagrams to the sans-IO TURN client (`core::turn::Client`), as if from the
//! server or a stranger, interleaved with timeouts, sends, channel binds and a close over
//! advancing virtual time. Records whose first byte says so are wrapped as a response to the
//! client's latest request (its transaction id, the fuzzed attributes, optionally signed with
//! the right key), so the fuzzer reaches the 401, 438, success and error paths.
//!
//! Checks: no panic; every transmit goes to the server and is STUN or ChannelData; nothing is
//! sent or said after the client is done.
//!
//! Input: records `[op: u8][advance: u8][len: u8][len bytes]`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use punchraw::core::stun::{
    long_term_key, Attribute, ChannelData, Class, Encoder, Message, MessageType,
};
use punchraw::core::turn::{Client, Event, TurnConfig};
use punchraw::core::Machine;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), 3478);
    let stranger = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66)), 3478);
    let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)), 4000);
    let key = long_term_key("user", "realm", "pass");
    let t0 = Instant::now();
    let mut c = Client::new(TurnConfig::new(server, "user", "pass", 1), t0);
    let mut now = t0;
    let mut last_req: Option<Vec<u8>> = None;
    let mut done = false;
    let mut rest = data;
    while rest.len() >= 3 {
        let (op, advance, len) = (rest[0], rest[1], usize::from(rest[2]));
        let body = &rest[3..(3 + len).min(rest.len())];
        rest = &rest[(3 + len).min(rest.len())..];
        now += Duration::from_millis(u64::from(advance) * 500);
        match op % 8 {
            0 | 1 => c.handle_input(now, 0, server, body),
            2 => c.handle_input(now, 0, stranger, body),
            3 | 4 => {
                // A response to the latest request: the class bits of a success (op 3) or an
                // error (op 4), the same transaction id. With the top bit of `op`, the body is
                // records `[type: u16][len: u8][value]` encoded and signed with the right key,
                // as a server that knows us would; else it is the raw attribute bytes.
                if let Some(req) = &last_req {
                    let m = Message::parse(req).expect("checked when sent");
                    let class = if op % 8 == 3 {
                        Class::Success
                    } else {
                        Class::Error
                    };
                    let mt = MessageType {
                        method: m.message_type().method,
                        class,
                    };
                    let r = if op & 0x80 != 0 {
                        let mut out = Vec::new();
                        let mut e = Encoder::new(&mut out, mt, m.transaction_id());
                        let mut b = body;
                        while b.len() >= 3 {
                            let typ = u16::from_be_bytes([b[0], b[1]]);
                            let n = usize::from(b[2]).min(b.len() - 3);
                            e.push(&Attribute::Other {
                                typ,
                                value: &b[3..3 + n],
                            });
                            b = &b[3 + n..];
                        }
                        e.message_integrity(&key);
                        out
                    } else {
                        let mut r = req[..20].to_vec();
                        r[..2].copy_from_slice(&mt.to_u16().to_be_bytes());
                        r.extend_from_slice(body);
                        let n = (r.len() - 20) as u16;
                        r[2..4].copy_from_slice(&n.to_be_bytes());
                        r
                    };
                    c.handle_input(now, 0, server, &r);
                }
            }
            5 => {
                let _ = c.send_to(now, peer, body);
            }
            6 => {
                let _ = c.bind_channel(now, peer);
            }
            _ => c.close(now),
        }
        if c.poll_timeout().is_some_and(|t| t <= now) {
            c.handle_timeout(now);
        }
        while let Some(t) = c.poll_transmit() {
            assert!(!done, "a transmit after the end");
            assert_eq!(t.dst, server);
            if ChannelData::is_channel_data(&t.payload) {
                assert!(ChannelData::parse(&t.payload).is_ok());
            } else {
                let m = Message::parse(&t.payload).expect("the client sends valid STUN");
                if m.message_type().class == Class::Request {
                    last_req = Some(t.payload.clone());
                }
            }
        }
        while let Some(ev) = c.poll_event() {
            assert!(!done, "an event after the end: {ev:?}");
            if matches!(ev, Event::Failed(_) | Event::Closed) {
                done = true;
            }
        }
        assert_eq!(done, c.is_done());
    }
});

//! Parses arbitrary bytes as TURN ChannelData (RFC 8656 section 12.4) and as the start of a
//! TURN stream (section 12.5 framing); re-encodes what parsed and checks it matches. Nothing
//! may panic, and the data may not point outside the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use punchraw::core::stun::{frame_len, ChannelData, Message, CHANNEL_DATA_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Some(n) = frame_len(data) {
        assert!(n >= CHANNEL_DATA_HEADER_LEN);
        if ChannelData::is_channel_data(data) {
            assert_eq!(n % 4, 0, "ChannelData frames are padded to 4 over streams");
        } else if n <= data.len() {
            // A whole STUN frame: parsing it may fail, never panic.
            let _ = Message::parse(&data[..n]);
        }
    }
    let Ok(cd) = ChannelData::parse(data) else {
        return;
    };
    let inside = data.as_ptr_range();
    let r = cd.data.as_ptr_range();
    assert!(inside.start <= r.start && r.end <= inside.end);
    assert!(data.len() - CHANNEL_DATA_HEADER_LEN - cd.data.len() <= 3);
    let mut out = Vec::new();
    ChannelData::encode(cd.channel, cd.data, false, &mut out);
    assert_eq!(&out[..], &data[..out.len()]);
    let mut padded = Vec::new();
    ChannelData::encode(cd.channel, cd.data, true, &mut padded);
    assert_eq!(frame_len(&padded), Some(padded.len()));
    assert_eq!(ChannelData::parse(&padded), Ok(cd));
});

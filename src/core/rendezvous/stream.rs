//! Rendezvous messages on a stream (TCP to the server's primary port, used when UDP to the
//! server is blocked). A datagram carries no length, so on a stream each message is the magic,
//! a 2-byte big-endian length of the JSON that follows, and the JSON:
//! `PRV1 | len (u16 BE) | JSON`. The datagram form is `PRV1 | JSON`; the two convert into
//! each other without touching the JSON, so MACs stay valid. See `docs/rendezvous.md`.

use super::{MAGIC, MAX_MESSAGE};

/// Magic plus length field.
pub const STREAM_HEADER_LEN: usize = MAGIC.len() + 2;
/// The longest frame: a datagram of [`MAX_MESSAGE`] plus the length field.
pub const MAX_STREAM_FRAME: usize = MAX_MESSAGE + 2;

/// What the bytes at the start of a stream buffer hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFrame {
    /// Not enough bytes yet to know.
    Incomplete,
    /// A whole frame of this many bytes (header included) is at the start.
    Complete(usize),
    /// Not a rendezvous frame (other magic), or a length over [`MAX_MESSAGE`]: the stream
    /// cannot be resynchronised and must close.
    Invalid,
}

/// True when `buf` may still turn out to start with a rendezvous frame: its bytes so far
/// agree with the magic. Lets a server tell the frame from STUN/TURN on its first byte.
pub fn may_be_stream_frame(buf: &[u8]) -> bool {
    let n = buf.len().min(MAGIC.len());
    n > 0 && buf[..n] == MAGIC[..n]
}

/// Looks at the start of `buf`.
pub fn stream_frame_len(buf: &[u8]) -> StreamFrame {
    if !may_be_stream_frame(buf) {
        return if buf.is_empty() {
            StreamFrame::Incomplete
        } else {
            StreamFrame::Invalid
        };
    }
    let Some(h) = buf.get(..STREAM_HEADER_LEN) else {
        return StreamFrame::Incomplete;
    };
    let json = usize::from(u16::from_be_bytes([h[4], h[5]]));
    if MAGIC.len() + json > MAX_MESSAGE {
        return StreamFrame::Invalid;
    }
    let total = STREAM_HEADER_LEN + json;
    if buf.len() < total {
        StreamFrame::Incomplete
    } else {
        StreamFrame::Complete(total)
    }
}

/// The stream frame of a datagram-form message; `None` unless it starts with the magic and
/// fits [`MAX_MESSAGE`].
pub fn to_stream_frame(datagram: &[u8]) -> Option<Vec<u8>> {
    let json = datagram.strip_prefix(MAGIC.as_slice())?;
    if datagram.len() > MAX_MESSAGE {
        return None;
    }
    let len = u16::try_from(json.len()).ok()?;
    let mut out = Vec::with_capacity(STREAM_HEADER_LEN + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(json);
    Some(out)
}

/// The datagram form of one complete frame (as [`stream_frame_len`] measured it).
pub fn from_stream_frame(frame: &[u8]) -> Option<Vec<u8>> {
    match stream_frame_len(frame) {
        StreamFrame::Complete(n) if n == frame.len() => {
            let mut out = Vec::with_capacity(frame.len() - 2);
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&frame[STREAM_HEADER_LEN..]);
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(json: &str) -> Vec<u8> {
        let mut d = MAGIC.to_vec();
        d.extend_from_slice(json.as_bytes());
        d
    }

    #[test]
    fn round_trip() {
        let d = datagram(r#"{"t":"bye","session":"s","id":"0123456789abcdef"}"#);
        let f = to_stream_frame(&d).unwrap();
        assert_eq!(&f[..4], MAGIC);
        assert_eq!(usize::from(u16::from_be_bytes([f[4], f[5]])), d.len() - 4);
        assert_eq!(stream_frame_len(&f), StreamFrame::Complete(f.len()));
        assert_eq!(from_stream_frame(&f).unwrap(), d);
    }

    #[test]
    fn partial_frames_wait_and_back_to_back_frames_split() {
        let a = to_stream_frame(&datagram(r#"{"t":"a"}"#)).unwrap();
        let b = to_stream_frame(&datagram(r#"{"t":"bb"}"#)).unwrap();
        let mut wire = a.clone();
        wire.extend_from_slice(&b);
        for cut in 0..a.len() {
            assert_eq!(
                stream_frame_len(&wire[..cut]),
                StreamFrame::Incomplete,
                "{cut}"
            );
        }
        for cut in a.len()..=wire.len() {
            assert_eq!(
                stream_frame_len(&wire[..cut]),
                StreamFrame::Complete(a.len())
            );
        }
        assert_eq!(
            stream_frame_len(&wire[a.len()..]),
            StreamFrame::Complete(b.len())
        );
        assert!(from_stream_frame(&wire).is_none(), "two frames are not one");
    }

    #[test]
    fn oversize_and_foreign_are_rejected() {
        let mut big = MAGIC.to_vec();
        big.extend_from_slice(&((MAX_MESSAGE - 3) as u16).to_be_bytes());
        assert_eq!(stream_frame_len(&big), StreamFrame::Invalid);
        let mut max = MAGIC.to_vec();
        max.extend_from_slice(&((MAX_MESSAGE - 4) as u16).to_be_bytes());
        assert_eq!(stream_frame_len(&max), StreamFrame::Incomplete);
        assert!(to_stream_frame(&datagram(&"x".repeat(MAX_MESSAGE - 3))).is_none());
        assert!(to_stream_frame(&datagram(&"x".repeat(MAX_MESSAGE - 4))).is_some());
        assert!(to_stream_frame(b"{}").is_none());
        assert_eq!(stream_frame_len(b"PRX"), StreamFrame::Invalid);
        assert_eq!(stream_frame_len(&[0, 1]), StreamFrame::Invalid);
        assert!(may_be_stream_frame(b"PR"));
        assert!(!may_be_stream_frame(b"\x00\x01"));
    }
}

//! TURN's ChannelData message (RFC 8656 section 12.4) and the framing of STUN and ChannelData
//! on one stream (section 12.5).
//!
//! A ChannelData message is a 4-byte header (channel number, length of the application data)
//! and the data. The first two bits tell it from STUN: 0b00 is STUN (RFC 8489 section 5),
//! 0b01 is ChannelData (channel numbers 0x4000-0x7FFF, of which 0x4000-0x4FFF are valid and
//! 0x5000-0x7FFF reserved, RFC 8656 section 12). Over TCP and TLS the message is padded to a
//! multiple of 4 bytes and the padding is not counted in the length; over UDP the padding is
//! optional (RFC 8656 section 12.5), so a receiver accepts up to 3 trailing bytes.

use super::Message;
use thiserror::Error;

/// Channel number and length.
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// A checked view of a ChannelData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// The channel number the client bound to a peer with ChannelBind: 0x4000-0x4FFF are valid,
    /// 0x5000-0x7FFF reserved (RFC 8656 section 12); parsing keeps any number.
    pub channel: u16,
    /// The application data, without padding.
    pub data: &'a [u8],
}

/// Why bytes could not be read as a ChannelData message (RFC 8656 section 12.4). Every
/// variant is a property of the input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChannelDataError {
    /// Fewer bytes than the 4-byte header; holds the length.
    #[error("shorter than the 4-byte ChannelData header ({0} bytes)")]
    TooShort(usize),
    /// The first two bits are not 0b01: STUN (0b00) or another protocol.
    #[error("the first two bits are not 0b01, so this is not ChannelData")]
    NotChannelData,
    /// The length field claims more application data than follows the header.
    #[error("ChannelData length {declared} runs past the {actual} bytes after the header")]
    Truncated {
        /// The length field: bytes of application data claimed.
        declared: usize,
        /// Bytes actually present after the header.
        actual: usize,
    },
    /// More than 3 bytes follow the data, so they cannot be padding; holds how many follow.
    #[error("{0} bytes follow the ChannelData beyond the at most 3 of padding")]
    Trailing(usize),
}

fn padded(len: usize) -> usize {
    (len + 3) & !3
}

impl<'a> ChannelData<'a> {
    /// Whether a datagram or frame starting with `first` is ChannelData rather than STUN.
    pub fn is_channel_data(buf: &[u8]) -> bool {
        buf.first().is_some_and(|b| b & 0xc0 == 0x40)
    }

    /// Parses one whole datagram or stream frame; up to 3 bytes of padding may follow the
    /// data (they are what RFC 8656 section 12.5 asks for over streams, and allows over UDP).
    pub fn parse(buf: &'a [u8]) -> Result<Self, ChannelDataError> {
        if buf.len() < CHANNEL_DATA_HEADER_LEN {
            return Err(ChannelDataError::TooShort(buf.len()));
        }
        if !Self::is_channel_data(buf) {
            return Err(ChannelDataError::NotChannelData);
        }
        let channel = u16::from_be_bytes([buf[0], buf[1]]);
        let declared = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        let actual = buf.len() - CHANNEL_DATA_HEADER_LEN;
        if declared > actual {
            return Err(ChannelDataError::Truncated { declared, actual });
        }
        if actual - declared > 3 {
            return Err(ChannelDataError::Trailing(actual - declared));
        }
        Ok(ChannelData {
            channel,
            data: &buf[CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + declared],
        })
    }

    /// Appends the message to `out`; `pad` adds the zero padding a stream transport needs
    /// (RFC 8656 section 12.5). `data` longer than 65535 bytes cannot be expressed; the caller
    /// checks (the TURN client refuses such a send).
    pub fn encode(channel: u16, data: &[u8], pad: bool, out: &mut Vec<u8>) {
        debug_assert!(data.len() <= usize::from(u16::MAX));
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        if pad {
            out.resize(out.len() + padded(data.len()) - data.len(), 0);
        }
    }
}

/// The length of the frame at the start of a TURN stream (TCP or TLS to the server, RFC 8656
/// section 12.5): a STUN message (20-byte header plus its declared length, always a multiple
/// of 4) or a ChannelData message padded to a multiple of 4. `None` until the 4 bytes that
/// say the length are there, and for bytes that are neither (the stream is then broken:
/// close it).
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    if ChannelData::is_channel_data(buf) {
        let h = buf.get(..CHANNEL_DATA_HEADER_LEN)?;
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        return Some(CHANNEL_DATA_HEADER_LEN + padded(len));
    }
    Message::frame_len(buf)
}

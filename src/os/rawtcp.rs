//! The raw IPv4 socket that sends [`Crafted`] TCP segments as they are (IP_HDRINCL), for the
//! raw SYN engine of `connect --tcp`.

use crate::core::wire::craft::Crafted;
use std::io;

/// Sends crafted IPv4 packets; needs CAP_NET_RAW.
#[derive(Debug)]
pub struct RawTcpSender {
    _private: (),
}

impl RawTcpSender {
    pub fn open() -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the raw SYN engine is not built yet",
        ))
    }

    pub fn send(&self, _segment: &Crafted) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the raw SYN engine is not built yet",
        ))
    }
}

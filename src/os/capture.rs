//! pcap files of what a command sent and received. Packets are written as raw IP
//! (LINKTYPE_RAW) with correct IP/UDP headers and checksums so Wireshark and tshark dissect
//! them without complaint.

use crate::Error;
use etherparse::PacketBuilder;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::DataLink;
use std::fs::File;
use std::io::BufWriter;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A pcap file being written (`--capture`): every datagram or packet the command sent or
/// received, in the order it happened.
pub struct Capture {
    path: PathBuf,
    writer: PcapWriter<BufWriter<File>>,
    buf: Vec<u8>,
    /// Packets written so far.
    pub packets: u64,
}

impl Capture {
    /// Creates (or truncates) the file at `path` and writes the pcap header.
    pub fn create(path: &Path) -> Result<Self, Error> {
        let err = |source| Error::Capture {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(err)?;
        let header = PcapHeader {
            datalink: DataLink::RAW,
            ..Default::default()
        };
        let writer = PcapWriter::with_header(BufWriter::new(file), header)
            .map_err(|e| err(std::io::Error::other(e.to_string())))?;
        Ok(Capture {
            path: path.to_path_buf(),
            writer,
            buf: Vec::with_capacity(1600),
            packets: 0,
        })
    }

    /// Records one UDP datagram as it would appear on the wire between `src` and `dst`.
    pub fn udp(&mut self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Result<(), Error> {
        self.buf.clear();
        let built = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64)
                .udp(src.port(), dst.port())
                .write(&mut self.buf, payload),
            (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64)
                .udp(src.port(), dst.port())
                .write(&mut self.buf, payload),
            // Mixed families cannot be on one socket; nothing to record.
            _ => return Ok(()),
        };
        if let Err(e) = built {
            return Err(Error::Capture {
                path: self.path.clone(),
                source: std::io::Error::other(e.to_string()),
            });
        }
        let buf = std::mem::take(&mut self.buf);
        let r = self.ip(&buf, SystemTime::now());
        self.buf = buf;
        r
    }

    /// Records one IP packet exactly as seen on an interface (an AF_PACKET capture).
    pub fn ip(&mut self, packet: &[u8], at: SystemTime) -> Result<(), Error> {
        let ts = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let pkt = PcapPacket::new(ts, packet.len() as u32, packet);
        self.writer.write_packet(&pkt).map_err(|e| Error::Capture {
            path: self.path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        self.packets += 1;
        Ok(())
    }

    /// Flushes the file; returns its path and the number of packets in it.
    pub fn finish(self) -> Result<(PathBuf, u64), Error> {
        let path = self.path;
        let mut inner = self.writer.into_writer();
        std::io::Write::flush(&mut inner).map_err(|source| Error::Capture {
            path: path.clone(),
            source,
        })?;
        Ok((path, self.packets))
    }
}

//! Asking the router for a port mapping: NAT-PMP (RFC 6886) and PCP (RFC 6887) codecs and
//! the client machine that speaks them ([`client::PortMapper`]). UPnP IGD is not here: it is
//! SSDP over multicast and SOAP over HTTP/TCP, which the driver runs through a crate (see
//! `driver::portmap`); what its answers mean is still summed up by [`Offer`].

pub mod client;
pub mod natpmp;
pub mod pcp;
#[cfg(test)]
mod tests;
pub mod upnp;

use serde::Serialize;
use std::collections::BTreeMap;

/// The transport a mapping is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// UDP, IANA protocol number 17.
    Udp,
    /// TCP, IANA protocol number 6.
    Tcp,
}

impl Protocol {
    /// The IANA protocol number PCP carries (RFC 6887 section 11.1).
    pub fn iana(self) -> u8 {
        match self {
            Protocol::Udp => 17,
            Protocol::Tcp => 6,
        }
    }

    /// The transport of an IANA protocol number as PCP carries it (RFC 6887 section 11.1); `None`
    /// for anything but UDP and TCP.
    pub fn from_iana(n: u8) -> Option<Self> {
        match n {
            17 => Some(Protocol::Udp),
            6 => Some(Protocol::Tcp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Udp => "UDP",
            Protocol::Tcp => "TCP",
        })
    }
}

/// Which protocol granted a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Port Control Protocol (RFC 6887): version 2 on the gateway's UDP port 5351.
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886): version 0 on the same port 5351.
    NatPmp,
    /// UPnP Internet Gateway Device: SSDP discovery, then SOAP `AddPortMapping` or
    /// `AddAnyPortMapping` on its WANIPConnection service.
    Upnp,
}

impl Via {
    /// The lowercase key used in JSON and in `reasons` maps: `pcp`, `nat_pmp` or `upnp` (the
    /// serialised name); [`Display`](std::fmt::Display) gives the name a person reads.
    pub fn name(self) -> &'static str {
        match self {
            Via::Pcp => "pcp",
            Via::NatPmp => "nat_pmp",
            Via::Upnp => "upnp",
        }
    }
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::Pcp => "PCP",
            Via::NatPmp => "NAT-PMP",
            Via::Upnp => "UPnP IGD",
        })
    }
}

/// What the router offers, as `probe --json` reports it under `port_mapping`. Field names
/// and order are a contract with users' scripts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Offer {
    /// Whether a UPnP IGD granted the probe's test mapping.
    pub upnp: bool,
    /// Whether the gateway granted the probe's test mapping over NAT-PMP.
    pub nat_pmp: bool,
    /// Whether the gateway granted the probe's test mapping over PCP.
    pub pcp: bool,
    /// The external endpoint of the probe's test mapping (the first protocol that granted
    /// one, in the order PCP, NAT-PMP, UPnP), `ip:port`.
    pub external: Option<String>,
    /// The lifetime granted to that mapping; 0 for a permanent UPnP lease.
    pub lifetime_s: Option<u64>,
    /// For each protocol that is not offered, why not (keys `upnp`, `nat_pmp`, `pcp`);
    /// for one that granted a mapping but could not delete it, `<name>_delete`.
    pub reasons: BTreeMap<String, String>,
}

impl Offer {
    /// Whether any protocol maps ports on request.
    pub fn any(&self) -> bool {
        self.upnp || self.nat_pmp || self.pcp
    }

    /// The offered protocols, for a table row: "PCP, NAT-PMP".
    pub fn names(&self) -> String {
        let mut v = Vec::new();
        if self.pcp {
            v.push("PCP");
        }
        if self.nat_pmp {
            v.push("NAT-PMP");
        }
        if self.upnp {
            v.push("UPnP IGD");
        }
        v.join(", ")
    }
}

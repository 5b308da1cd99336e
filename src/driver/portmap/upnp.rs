//! UPnP IGD through the `igd-next` crate (its tokio flavour): SSDP discovery on the LAN,
//! then SOAP `AddPortMapping` / `AddAnyPortMapping` / `DeletePortMapping` to the
//! WANIPConnection service it found.
//!
//! Why a crate here and our own code for PCP and NAT-PMP: those two are one UDP datagram
//! each way with a fixed layout, a natural sans-IO machine; UPnP is SSDP over multicast,
//! then an HTTP GET of a device description (XML), then SOAP over HTTP/TCP, three parsers of
//! formats routers write loosely. `igd-next` is maintained (used by libp2p), speaks both
//! WANIPConnection v1 and v2 and has met many routers' XML; a hand-written one would be
//! more code to get wrong, not less. What the router's refusals mean for the next request
//! (the quirks) is still decided in the core, by `core::portmap::upnp::UpnpPlan`.

use crate::core::portmap::upnp::{UpnpAsk, UpnpPlan, UpnpRefusal};
use crate::core::portmap::Protocol;
use igd_next::aio::tokio::{search_gateway, Tokio};
use igd_next::aio::Gateway;
use igd_next::{AddAnyPortError, AddPortError, PortMappingProtocol, RequestError, SearchOptions};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// A mapping a UPnP IGD granted.
#[derive(Debug, Clone)]
pub struct UpnpMapping {
    /// The IGD that granted it, kept to renew and delete the mapping.
    pub gateway: Gateway<Tokio>,
    /// UDP or TCP.
    pub protocol: Protocol,
    /// The router's external address (GetExternalIPAddress) and the external port granted,
    /// which may differ from our local port.
    pub external: SocketAddr,
    /// 0: permanent (the router grants no other): delete it on every exit.
    pub lease_s: u32,
}

fn proto(p: Protocol) -> PortMappingProtocol {
    match p {
        Protocol::Udp => PortMappingProtocol::UDP,
        Protocol::Tcp => PortMappingProtocol::TCP,
    }
}

fn refusal_of_request(e: RequestError) -> UpnpRefusal {
    match e {
        RequestError::ErrorCode(code, text) => UpnpRefusal::from_code(code, &text),
        RequestError::UnsupportedAction(_) => UpnpRefusal::NoSuchAction,
        e => UpnpRefusal::Other(format!("the router's answer: {e}")),
    }
}

fn refusal_add(e: AddPortError) -> UpnpRefusal {
    match e {
        AddPortError::ActionNotAuthorized => UpnpRefusal::NotAuthorized,
        AddPortError::ExternalPortZeroInvalid => UpnpRefusal::ExternalPortZero,
        AddPortError::PortInUse => UpnpRefusal::PortInUse,
        AddPortError::SamePortValuesRequired => UpnpRefusal::SamePortRequired,
        AddPortError::OnlyPermanentLeasesSupported => UpnpRefusal::OnlyPermanentLeases,
        AddPortError::RequestError(e) => refusal_of_request(e),
        e => UpnpRefusal::Other(e.to_string()),
    }
}

fn refusal_add_any(e: AddAnyPortError) -> UpnpRefusal {
    match e {
        AddAnyPortError::ActionNotAuthorized => UpnpRefusal::NotAuthorized,
        AddAnyPortError::NoPortsAvailable => UpnpRefusal::NoPortsAvailable,
        AddAnyPortError::ExternalPortInUse => UpnpRefusal::PortInUse,
        AddAnyPortError::OnlyPermanentLeasesSupported => UpnpRefusal::OnlyPermanentLeases,
        AddAnyPortError::RequestError(e) => refusal_of_request(e),
        e => UpnpRefusal::Other(e.to_string()),
    }
}

/// SSDP's port (UPnP Device Architecture 1.1, section 1.3.2).
const SSDP_PORT: u16 = 1900;
/// However soon the gateway refuses SSDP, the multicast search goes on this long: a device
/// whose SSDP socket listens on the multicast group alone refuses a unicast search, and one
/// that answers at once (miniupnpd does within about 50 ms) is still heard.
const REFUSED_GRACE: Duration = Duration::from_millis(250);

/// Finds the IGD by SSDP from `client` (multicast on the LAN the default route leaves by),
/// waiting `wait` at most for an answer. When `unicast` yields the default gateway, one
/// unicast M-SEARCH goes to it beside the multicast search (UDA 1.1 section 1.3.2 provides
/// for unicast searches): a router with nothing on port 1900 answers it with ICMP port
/// unreachable, and then an answer to the multicast is unlikely (the IGD that could map our
/// port is the router our traffic leaves by), so the search ends a quarter of a second after
/// it began instead of waiting out `wait` -- 2 s that every connect behind a NAT without UPnP
/// paid before its punch. A router that drops the datagram silently costs `wait` as before.
pub async fn discover(
    client: Ipv4Addr,
    unicast: impl std::future::Future<Output = Option<Ipv4Addr>>,
    wait: Duration,
) -> Result<Gateway<Tokio>, String> {
    let opts = SearchOptions {
        bind_addr: SocketAddr::V4(SocketAddrV4::new(client, 0)),
        timeout: Some(wait),
        single_search_timeout: Some(wait),
        ..SearchOptions::default()
    };
    let started = tokio::time::Instant::now();
    let search = search_gateway(opts);
    tokio::pin!(search);
    let gateway = tokio::select! {
        r = &mut search => return r.map_err(|e| search_failed(e, wait)),
        gateway = refused_by(client, unicast) => gateway,
    };
    match tokio::time::timeout_at(started + REFUSED_GRACE.min(wait), search).await {
        Ok(r) => r.map_err(|e| search_failed(e, wait)),
        Err(_) => Err(format!(
            "no UPnP IGD: the router at {gateway} answered SSDP with ICMP port unreachable \
             (nothing listens on port {SSDP_PORT}), and nothing answered the multicast \
             search within {} ms",
            REFUSED_GRACE.min(wait).as_millis()
        )),
    }
}

fn search_failed(e: igd_next::SearchError, wait: Duration) -> String {
    match e {
        igd_next::SearchError::NoResponseWithinTimeout => format!(
            "no UPnP IGD answered SSDP discovery on the LAN within {} ms",
            wait.as_millis()
        ),
        e => format!("UPnP discovery failed: {e}"),
    }
}

/// Completes, with the gateway, only when the gateway `unicast` yields refuses a unicast
/// M-SEARCH from `client` (a connected UDP socket reports the ICMP port unreachable as
/// ECONNREFUSED); no go-ahead, an answer, a silent router or any other error leave it
/// pending, and the multicast search decides.
async fn refused_by(
    client: Ipv4Addr,
    unicast: impl std::future::Future<Output = Option<Ipv4Addr>>,
) -> Ipv4Addr {
    let Some(gateway) = unicast.await else {
        return std::future::pending().await;
    };
    let ask = async {
        let sock = tokio::net::UdpSocket::bind(SocketAddrV4::new(client, 0)).await?;
        sock.connect(SocketAddrV4::new(gateway, SSDP_PORT)).await?;
        let search = format!(
            "M-SEARCH * HTTP/1.1\r\nHOST: {gateway}:{SSDP_PORT}\r\nMAN: \"ssdp:discover\"\r\n\
             ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n"
        );
        sock.send(search.as_bytes()).await?;
        let mut buf = [0u8; 1500];
        loop {
            sock.recv(&mut buf).await?;
        }
    };
    let r: std::io::Result<()> = ask.await;
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => gateway,
        r => {
            tracing::debug!(result = ?r, "unicast SSDP search of the gateway: no refusal");
            std::future::pending().await
        }
    }
}

/// Maps `local` (our address and port) on `gw`, working through the router's quirks.
pub async fn map(
    gw: &Gateway<Tokio>,
    protocol: Protocol,
    local: SocketAddrV4,
    lease_s: u32,
    description: &str,
    seed: u64,
) -> Result<UpnpMapping, String> {
    let ext_ip = gw.get_external_ip().await.map_err(|e| match e {
        // miniupnpd answers with an empty address when its WAN interface has none.
        igd_next::GetExternalIpError::RequestError(igd_next::RequestError::InvalidResponse(
            ref body,
        )) if body.contains("<NewExternalIPAddress></NewExternalIPAddress>") => {
            "UPnP GetExternalIPAddress: the router has no external address (an empty answer)"
                .to_string()
        }
        e => format!("UPnP GetExternalIPAddress failed: {e}"),
    })?;
    let has_any = gw.control_schema.contains_key("AddAnyPortMapping");
    let mut plan = UpnpPlan::new(local.port(), lease_s, has_any, seed);
    let mut ask = plan.first();
    let mut last = UpnpRefusal::Other("no request made".into());
    while let Some(UpnpAsk {
        any,
        external_port,
        lease_s,
    }) = ask
    {
        let local = SocketAddr::V4(local);
        let got = if any {
            gw.add_any_port(proto(protocol), local, lease_s, description)
                .await
                .map_err(refusal_add_any)
        } else {
            gw.add_port(proto(protocol), external_port, local, lease_s, description)
                .await
                .map(|()| external_port)
                .map_err(refusal_add)
        };
        match got {
            Ok(port) => {
                return Ok(UpnpMapping {
                    gateway: gw.clone(),
                    protocol,
                    external: SocketAddr::new(ext_ip, port),
                    lease_s,
                })
            }
            Err(r) => {
                tracing::debug!(refusal = ?r, "UPnP AddPortMapping refused");
                ask = plan.next(&r);
                last = r;
            }
        }
    }
    Err(format!("UPnP mapping refused: {}", last.describe()))
}

/// Extends `m`'s lease (an `AddPortMapping` of the same ports from the same client
/// updates the entry, UPnP-gw-WANIPConnection-v2 section 2.5.16).
pub async fn renew(m: &UpnpMapping, local: SocketAddrV4, description: &str) -> Result<(), String> {
    m.gateway
        .add_port(
            proto(m.protocol),
            m.external.port(),
            SocketAddr::V4(local),
            m.lease_s,
            description,
        )
        .await
        .map_err(|e| format!("UPnP AddPortMapping (renewal) failed: {e}"))
}

/// Deletes `m` on its router (`DeletePortMapping`); the error says why it stayed.
pub async fn unmap(m: &UpnpMapping) -> Result<(), String> {
    m.gateway
        .remove_port(proto(m.protocol), m.external.port())
        .await
        .map_err(|e| format!("UPnP DeletePortMapping failed: {e}"))
}

/// The probe's check: discover, map `local`, delete. `Ok((external, lease_s, deleted))`.
pub fn probe(
    client: Ipv4Addr,
    gateway: Ipv4Addr,
    local: SocketAddrV4,
    wait: Duration,
) -> Result<(SocketAddr, u32, Result<(), String>), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the UPnP client: {e}"))?;
    rt.block_on(async {
        let gw = discover(client, std::future::ready(Some(gateway)), wait).await?;
        let m = tokio::time::timeout(
            wait * 3,
            map(
                &gw,
                Protocol::Udp,
                local,
                120,
                "punchraw probe",
                rand::random(),
            ),
        )
        .await
        .map_err(|_| format!("the UPnP IGD at {} stopped answering", gw.addr))??;
        let deleted = unmap(&m).await;
        Ok((m.external, m.lease_s, deleted))
    })
}

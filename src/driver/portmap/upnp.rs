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

/// Finds the IGD by SSDP from `client` (multicast on the LAN the default route leaves by).
pub async fn discover(client: Ipv4Addr, wait: Duration) -> Result<Gateway<Tokio>, String> {
    let opts = SearchOptions {
        bind_addr: SocketAddr::V4(SocketAddrV4::new(client, 0)),
        timeout: Some(wait),
        single_search_timeout: Some(wait),
        ..SearchOptions::default()
    };
    search_gateway(opts).await.map_err(|e| match e {
        igd_next::SearchError::NoResponseWithinTimeout => format!(
            "no UPnP IGD answered SSDP discovery on the LAN within {} ms",
            wait.as_millis()
        ),
        e => format!("UPnP discovery failed: {e}"),
    })
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
    local: SocketAddrV4,
    wait: Duration,
) -> Result<(SocketAddr, u32, Result<(), String>), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the UPnP client: {e}"))?;
    rt.block_on(async {
        let gw = discover(client, wait).await?;
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

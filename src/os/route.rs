//! The IPv4 default gateway, from the kernel's routing table as /proc/net/route shows it:
//! the router a port-mapping request goes to (RFC 6886 section 3: the client sends to its
//! default gateway; RFC 6887 section 8.1 likewise for a PCP server it was not told about).

use std::net::Ipv4Addr;

/// The gateway of the default route with the lowest metric, or `None` (no default route, or
/// not Linux).
pub fn default_gateway() -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    parse_default_gateway(&text)
}

/// Lines are `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`, addresses as 8
/// hex digits in the host's byte order (little-endian on the machines we run on).
fn parse_default_gateway(text: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let gw = u32::from_str_radix(f.get(2)?, 16).ok()?;
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let metric: u32 = f.get(6)?.parse().ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            let default =
                dest == 0 && mask == 0 && flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY;
            default.then(|| (metric, Ipv4Addr::from(gw.to_ne_bytes())))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, gw)| gw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_default_route_with_the_lowest_metric() {
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t00000000\t0101000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                 eth1\t00000000\t0102000A\t0003\t0\t0\t50\t00000000\t0\t0\t0\n\
                 eth0\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(parse_default_gateway(t), Some(Ipv4Addr::new(10, 0, 2, 1)));
        assert_eq!(parse_default_gateway("Iface\nbad line\n"), None);
    }
}

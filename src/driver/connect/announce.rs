//! The status lines that say what a UDP punch is about to do and how likely it is to work.

use super::ConnectConfig;
use crate::core::punch::{PunchConfig, Strategy};
use crate::core::rendezvous::client::Introduction;
use crate::driver::{kebab, Status};
use crate::os::capture::Capture;
use crate::Error;

/// Tells the user what the UDP punch is about to do with this peer.
pub(super) fn announce_udp_punch(
    status: &Status,
    cfg: &ConnectConfig,
    pcfg: &PunchConfig,
    intro: &Introduction,
) {
    let strategy = pcfg.strategy();
    status.say(format!(
        "peer {} (NAT mapping {}, allocation {}); strategy {}",
        intro.peer.public,
        kebab(&intro.peer.nat.mapping),
        kebab(&intro.peer.nat.allocation),
        strategy.as_str()
    ));
    if let Some(l) = crate::core::punch::lockstep::Lockstep::new(pcfg) {
        status.say(format!(
            "both NATs count their ports: {} window flows at the peer's ports {} apart, covering up to {} earlier flows through our NAT and {} through the peer's",
            l.my_flows,
            if l.controlling { 1 } else { 2 },
            l.my_extra_max,
            l.peer_extra_max
        ));
    }
    if pcfg.other_family_socket().is_some() {
        let v6: Vec<String> = pcfg
            .other_family_targets()
            .iter()
            .map(ToString::to_string)
            .collect();
        status.say(if v6.is_empty() {
            "the peer offered no IPv6 address: IPv4 only".to_string()
        } else {
            format!(
                "IPv6: probing the peer at {} directly, beside IPv4; the first path to answer authenticated is kept",
                v6.join(", ")
            )
        });
    }
    if strategy == Strategy::Sweep {
        status.say(udp_sweep_line(cfg, pcfg));
    }
    if strategy == Strategy::Mapped {
        status.say(match pcfg.peer.mapped {
            Some(m) => format!("the peer's router maps its punch port at {m}: sending there"),
            None => "our router maps our punch port: answering what the peer sends through it, silent toward its public endpoint".into(),
        });
    }
}

/// The status line that says what a UDP sweep does and how likely it is to work.
fn udp_sweep_line(cfg: &ConnectConfig, pcfg: &PunchConfig) -> String {
    let what = if pcfg.spray_at_counter() {
        let ports = pcfg.counter_ports();
        format!(
            "opening {} mappings toward each of the peer's next {} ports (its NAT gives every new destination the next port of a counter)",
            cfg.sweep_sockets,
            ports.len()
        )
    } else if pcfg.i_spray() {
        format!("opening {} mappings toward the peer", cfg.sweep_sockets)
    } else if pcfg.probe_from_counter() {
        format!(
            "probing {} random ports of the peer over and over (our NAT gives each new destination the next port of a counter, which the peer's mappings aim at)",
            pcfg.counter_flows()
        )
    } else {
        let ports = match pcfg.peer.nat.range {
            Some(_) => {
                let [lo, hi] = crate::core::punch::random_ports(&pcfg.peer.nat);
                format!("random ports {lo}-{hi} of the peer (its NAT's port block)")
            }
            None => "random ports of the peer".to_string(),
        };
        if pcfg.two_sided() {
            format!(
                "probing {ports} from {} socket(s)",
                pcfg.two_sided_sockets()
            )
        } else {
            format!("probing {ports}")
        }
    };
    let chance = if pcfg.sweep_hopeless() {
        format!(
            "expected success probability {:.1}% (both sides symmetric with random ports: neither can be reached by a sweep)",
            100.0 * pcfg.sweep_success_probability()
        )
    } else if pcfg.two_sided() {
        let (reused, single) = pcfg.two_sided_probabilities();
        let mut s = format!(
            "expected success probability {:.1}% (two-sided: both NATs draw random ports from blocks small enough to meet by chance",
            100.0 * reused
        );
        if single < reused - 0.0005 {
            s += &format!(
                "; {:.1}% if a NAT never gives one port to two destinations",
                100.0 * single
            );
        }
        s + ")"
    } else {
        format!(
            "expected success probability {:.1}%",
            100.0 * pcfg.sweep_success_probability()
        )
    };
    format!(
        "birthday sweep: {what} for {} s at {} probes/s; {chance}",
        pcfg.budget.as_secs(),
        cfg.rate
    )
}

pub(super) fn finish_capture(capture: Option<Capture>, status: &Status) -> Result<(), Error> {
    if let Some(c) = capture {
        let (path, n) = c.finish()?;
        status.say(format!(
            "capture: {n} packets written to {}",
            path.display()
        ));
    }
    Ok(())
}

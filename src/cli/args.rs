//! The clap structs: every flag, its default and its help text. Names and defaults are a
//! contract with users' scripts.

use crate::driver::connect::tcp_punch::SynEngine;
use crate::driver::connect::PrimeTtl;
use clap::{Args, Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "punchraw",
    version,
    about = "Classify NATs and punch holes through them, at packet level",
    long_about = "punchraw gets two machines behind NATs talking directly and tells you why it can or cannot.\n\n\
                  serve  runs the STUN server (RFC 8489, RFC 5780 behaviour discovery, RFC 3489 compatible).\n\
                  probe  classifies the NAT in front of you (mapping, filtering, port allocation, hairpinning, binding lifetime).\n\
                  connect punches a hole to a peer (UDP, or TCP by simultaneous open) and carries stdin/stdout over it, encrypted.\n\n\
                  Exit codes: 0 success, 1 other failure, 2 usage, 3 server unreachable, 4 local setup, 5 peer never came, 6 session taken, \
                  7 peer authentication failed, 8 punching failed, 9 stream failed, 130 SIGINT, 143 SIGTERM."
)]
/// The whole command line (its help text is the `about` above, not this comment).
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The command to run.
    #[command(subcommand)]
    pub cmd: Command,
}

/// The commands; each variant's doc comment is its help text.
#[derive(Subcommand)]
pub enum Command {
    /// Run the STUN server (and, with --alternate, RFC 5780 behaviour discovery).
    Serve(ServeArgs),
    /// Classify the NAT between this host and a STUN server.
    Probe(ProbeArgs),
    /// Punch a hole to a peer through both NATs and carry stdin/stdout over an encrypted,
    /// reliable stream on it (QUIC over UDP; TLS over TCP with --tcp).
    Connect(ConnectArgs),
    /// Print a shell completion script to stdout, e.g. `punchraw completions bash >
    /// /etc/bash_completion.d/punchraw` (bash), `punchraw completions zsh > ~/.zfunc/_punchraw`
    /// (zsh, with ~/.zfunc on fpath), `punchraw completions fish >
    /// ~/.config/fish/completions/punchraw.fish` (fish).
    Completions(CompletionsArgs),
    /// Write the man pages: punchraw(1) and one per command (punchraw-serve(1), ...).
    /// Without --out-dir, print punchraw(1) to stdout (`punchraw man | man -l -`).
    Man(ManArgs),
}

/// `punchraw completions`.
#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// `punchraw man`.
#[derive(Args)]
pub struct ManArgs {
    /// Directory to write punchraw.1 and punchraw-COMMAND.1 into (created if missing),
    /// e.g. /usr/local/share/man/man1.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// `punchraw connect`.
#[derive(Args)]
pub struct ConnectArgs {
    /// The punchraw server both peers use for the rendezvous, HOST or HOST:PORT.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub server: String,
    /// Session name both peers give; the server introduces the two peers of a session.
    #[arg(long, value_name = "NAME", required_unless_present = "code")]
    pub session: Option<String>,
    /// Pair with a short code instead of --session and --secret. Without a value: pick a
    /// code, print it (read it out to the other side) and wait; with one (`--code
    /// 7-guitar-orbit`): join the side that printed it. A password-authenticated key exchange
    /// (SPAKE2) turns the code's words into the connection's secret, which neither the server
    /// nor an eavesdropper learns; a wrong code ends both sides (exit 7) and uses the code up.
    #[arg(
        long,
        value_name = "CODE",
        num_args = 0..=1,
        conflicts_with_all = ["session", "secret"],
        value_parser = parse_code
    )]
    pub code: Option<Option<crate::core::pairing::Code>>,
    /// Shared secret that authenticates the peer (every punch packet carries a MAC keyed from
    /// it, and the QUIC certificates are pinned through it). Without it the session name is
    /// the key. Also read from PUNCHRAW_SECRET.
    #[arg(
        long,
        value_name = "S",
        env = "PUNCHRAW_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
    /// Give up when not connected within this many seconds (waiting for the peer included).
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: u64,
    /// Write a JSON report of the attempt to this file.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Write the packets of the classification and the punch to this pcap file.
    #[arg(long, value_name = "FILE.pcap")]
    pub capture: Option<PathBuf>,
    /// No status messages on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Local IP to use [default: the address the OS routes to the server from]. An IPv4
    /// address also keeps the punch to IPv4.
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// IPv4 only: offer the peer none of this host's IPv6 addresses. By default (UDP) the
    /// punch also tries the peer's IPv6 addresses from this host's, beside IPv4, and keeps
    /// whichever path is authenticated first.
    #[arg(short = '4')]
    pub ipv4_only: bool,
    /// Keep-alive interval on the established stream, in seconds; well under common NAT
    /// UDP timeouts (30 s on Linux for unreplied flows).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=25))]
    pub keepalive: u64,
    /// Time for the punch itself, from the agreed start, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub punch_budget: u64,
    /// Most punch probes per second (the sweep's probing rate).
    #[arg(long, value_name = "PPS", default_value_t = 500, value_parser = clap::value_parser!(u32).range(10..=20000))]
    pub rate: u32,
    /// Ports past the peer's last seen port to try when predicting a sequential NAT. Between
    /// two sequential NATs a quarter of it is how many other flows through each NAT the
    /// prediction tolerates. In a sweep between a random NAT and a sequential symmetric one,
    /// the random side aims at this many of the other's next ports and the sequential side
    /// probes half as many ports of the random one. Give both peers the same value.
    #[arg(long, value_name = "N", default_value_t = 24)]
    pub window: u16,
    /// Mappings the random side opens in a birthday sweep; in a sweep at a sequential
    /// symmetric NAT's port counter, toward each of the counter's next ports.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub sweep_sockets: u16,
    /// Punch TCP instead of UDP: simultaneous open toward the peer's predicted port, with
    /// kernel sockets sweeping ports around the prediction, then TLS with pinned certificates.
    /// Needs CAP_NET_ADMIN (a temporary nft rule drops this host's RSTs to the peer) and
    /// CAP_NET_RAW (SYN/RST/ICMP watching); run with sudo. Both peers must give it.
    #[arg(long)]
    pub tcp: bool,
    /// TCP only: TTL of each attempt's first SYN. "auto" measures toward the peer and picks a
    /// TTL that opens our NAT but dies before the peer's (or none when no hop lies between);
    /// "off" sends the normal TTL; a number forces it.
    #[arg(long, value_name = "auto|off|N", default_value = "auto", value_parser = parse_prime_ttl)]
    pub prime_ttl: PrimeTtl,
    /// TCP only: who sends the punch's SYNs. "kernel": a kernel socket per attempt, all on one
    /// local port. "raw": crafted SYNs on a raw socket, every one with one sequence number
    /// and one set of options, repeated at the measured round trip; a TCP_REPAIR socket
    /// continues the handshake that succeeds (IPv4; the spraying side of a sweep keeps kernel
    /// sockets). Both need CAP_NET_RAW and CAP_NET_ADMIN.
    #[arg(long, value_name = "raw|kernel", default_value = "raw", value_parser = parse_syn_engine)]
    pub syn_engine: SynEngine,
    /// Ask the router for a port mapping of the punch port: "auto" asks by PCP, then NAT-PMP,
    /// then UPnP IGD (UDP; TCP with --tcp), offers the mapped endpoint to the peer (who then
    /// sends straight to it: a mapping makes even a symmetric NAT reachable), renews it
    /// before it expires and deletes it on every exit (Ctrl-C and SIGTERM included). A router
    /// that offers none or refuses is said and connect goes on without. "off" never asks.
    #[arg(long, value_name = "auto|off", default_value = "auto", action = clap::ArgAction::Set, value_parser = parse_port_mapping)]
    pub port_mapping: bool,
    /// Do not tell the rendezvous server what the connect came to. By default, once it is
    /// known (connected and on which path, or why not), both peers send the server one
    /// message authenticated with the session key: the strategy, the path, the transport,
    /// both NATs' classes, the time to connected or the failure reason -- nothing of the
    /// data, the secret or the addresses. The server counts them per pair of NAT classes
    /// (`punchraw serve --metrics`).
    #[arg(long)]
    pub no_report_outcome: bool,
    /// The port mapping's lifetime to ask for, in seconds (testing: a short one shows the
    /// renewals).
    // 600 s: renewals are rare, and a mapping left by a killed run (SIGKILL, power loss)
    // does not linger long.
    #[arg(long, value_name = "SECS", default_value_t = 600, hide = true, value_parser = clap::value_parser!(u64).range(2..=86400))]
    pub port_mapping_lifetime: u64,
    /// Start punching this many milliseconds after the moment agreed with the peer (testing:
    /// makes the other side's packets arrive first).
    #[arg(long, value_name = "MS", default_value_t = 0, hide = true, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub start_delay_ms: u64,
    /// The TURN relay (RFC 8656) to carry the stream when no hole opens. "auto": the
    /// rendezvous server's own (`punchraw serve --relay`), with credentials derived from the
    /// session key; a server that refuses or does not relay is said and connect goes on
    /// without. "turn://USER:PASS@HOST:PORT": that TURN server (coturn, say); credentials
    /// it refuses end connect at once (exit 7). "?transport=tcp" reaches it over TCP and
    /// "?transport=tls" over TLS (its certificate must name HOST; see --relay-ca) instead of
    /// UDP ("?transport=udp", the default); without :PORT the port is 3478, 5349 with tls
    /// (RFC 7065). The relayed leg to the peer is UDP either way,
    /// and the allocation lives only as long as the connection. A relay that refuses an
    /// allocation (486 quota, 508 capacity) turns a failed punch into exit 7. "off": none.
    /// The allocation is made before the rendezvous and freed on every exit.
    #[arg(long, value_name = "auto|off|turn://USER:PASS@HOST:PORT[?transport=udp|tcp|tls]", default_value = "auto", value_parser = parse_relay)]
    pub relay: RelayArg,
    /// With --relay turn://...?transport=tls: trust the TURN server's certificate only if
    /// it chains to a certificate in FILE (PEM; the server's own self-signed one will do).
    /// Without it, the system's CA bundle is used.
    #[arg(long, value_name = "FILE.pem")]
    pub relay_ca: Option<PathBuf>,
}

/// `--relay`, before the host is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayArg {
    /// `off`: never relay.
    Off,
    /// `auto`: the rendezvous server's own relay, when it offers one.
    Auto,
    /// `turn://USER:PASS@HOST[:PORT][?transport=...]`: that TURN server.
    Turn {
        /// HOST or HOST:PORT, resolved later.
        host: String,
        /// The long-term credential's user name (RFC 8489 section 9.2).
        username: String,
        /// Its password.
        password: String,
        /// How the TURN server is reached.
        transport: TurnTransport,
    },
}

/// `?transport=` of a `turn://` URL: how we reach the TURN server (RFC 8656 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnTransport {
    /// UDP (the default).
    Udp,
    /// TCP, framed as RFC 8656 section 3.1 says.
    Tcp,
    /// TLS over TCP (port 5349 by default).
    Tls,
}

fn parse_relay(s: &str) -> std::result::Result<RelayArg, String> {
    match s {
        "auto" => return Ok(RelayArg::Auto),
        "off" => return Ok(RelayArg::Off),
        _ => {}
    }
    let bad =
        || format!("{s:?} is not auto, off or turn://USER:PASS@HOST:PORT[?transport=udp|tcp|tls]");
    let rest = s.strip_prefix("turn://").ok_or_else(bad)?;
    // The password may hold '?' and '@': the query is after the host, which follows the
    // last '@'.
    let (creds, host) = rest.rsplit_once('@').ok_or_else(bad)?;
    let (host, query) = match host.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (host, None),
    };
    let (username, password) = creds.split_once(':').ok_or_else(bad)?;
    if username.is_empty() || host.is_empty() {
        return Err(bad());
    }
    let transport = match query {
        None => TurnTransport::Udp,
        Some(q) => match q.strip_prefix("transport=") {
            Some("udp") => TurnTransport::Udp,
            Some("tcp") => TurnTransport::Tcp,
            Some("tls") => TurnTransport::Tls,
            Some(t) => return Err(format!("{s:?}: transport {t:?} is not udp, tcp or tls")),
            None => {
                return Err(format!(
                    "{s:?}: the only query a turn:// URL takes is ?transport=udp|tcp|tls, not {q:?}"
                ))
            }
        },
    };
    Ok(RelayArg::Turn {
        host: host.to_string(),
        username: username.to_string(),
        password: password.to_string(),
        transport,
    })
}

/// `auto` -> true, `off` -> false.
fn parse_port_mapping(s: &str) -> std::result::Result<bool, String> {
    match s {
        "auto" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?} is not auto or off")),
    }
}

fn parse_syn_engine(s: &str) -> std::result::Result<SynEngine, String> {
    match s {
        "raw" => Ok(SynEngine::Raw),
        "kernel" => Ok(SynEngine::Kernel),
        _ => Err(format!("{s:?} is not raw or kernel")),
    }
}

fn parse_prime_ttl(s: &str) -> std::result::Result<PrimeTtl, String> {
    match s {
        "auto" => Ok(PrimeTtl::Auto),
        "off" => Ok(PrimeTtl::Off),
        n => match n.parse::<u8>() {
            Ok(t) if t >= 1 => Ok(PrimeTtl::Fixed(t)),
            _ => Err(format!("{n:?} is not auto, off or a TTL of 1 to 255")),
        },
    }
}

/// `punchraw serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Primary IP address to listen on (must be an address of this host). Give it once per
    /// family (an IPv4 and an IPv6 address) to serve both; the rendezvous and --relay run on
    /// the IPv4 one.
    #[arg(long, value_name = "IP", required = true)]
    pub listen: Vec<IpAddr>,
    /// Second IP address of this host, of the family of a --listen address (once per
    /// family). Enables RFC 5780 behaviour discovery on that family: the server then answers
    /// on 2 addresses x 2 ports and honours CHANGE-REQUEST.
    #[arg(long, value_name = "IP2")]
    pub alternate: Vec<IpAddr>,
    /// Serve the server's counters in the Prometheus text format at
    /// http://ADDR:PORT/metrics: STUN requests and errors by endpoint, malformed packets,
    /// rendezvous sessions waiting and introduced, relay allocations and bytes, and the
    /// connect outcomes peers report, by pair of NAT classes
    /// (`punchraw_connect_outcomes_total`). Give a loopback or management address: the
    /// endpoint has no authentication of its own.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Primary port (UDP and TCP).
    #[arg(long, default_value_t = 3478)]
    pub port: u16,
    /// Alternate port used for behaviour discovery [default: PORT+1].
    #[arg(long, value_name = "PORT")]
    pub alt_port: Option<u16>,
    /// SOFTWARE attribute sent in responses; empty to send none.
    #[arg(long, default_value = "punchraw")]
    pub software: String,
    /// Rendezvous: how long a lone peer waits for the other before it is told the other
    /// never came, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub wait_timeout: u64,
    /// Rendezvous: most sessions held at once; beyond, new sessions are refused.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub max_sessions: usize,
    /// Rendezvous: keep sessions in Redis instead of this process's memory, so several
    /// servers behind one name share them (and a restart loses none), e.g.
    /// redis://10.0.0.5:6379.
    #[arg(long, value_name = "redis://HOST:PORT")]
    pub registry: Option<String>,
    /// Answer at most N UDP requests per second from one source address (IPv6: one /64),
    /// with bursts of N, so that a spoofed victim receives at most that rate. Off by default:
    /// behind carrier-grade NAT many users share one address.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub per_source_limit: Option<u32>,
    /// Also be a TURN relay (RFC 8656) on the primary port (UDP and TCP), for peers no hole
    /// can be punched between. Peers of a rendezvous session authenticate with credentials
    /// derived from its key and relay only toward each other; standard TURN clients
    /// (coturn's turnutils_uclient, WebRTC) use the long-term credentials of --relay-user.
    /// Never an open relay: every allocation needs a password, and allocations are bounded in
    /// number and lifetime.
    #[arg(long, help_heading = "Relay (TURN)")]
    pub relay: bool,
    /// Relay: the UDP ports relayed addresses are taken from, LO-HI.
    #[arg(long, value_name = "LO-HI", default_value = "49152-65535", value_parser = parse_port_range, help_heading = "Relay (TURN)")]
    pub relay_ports: (u16, u16),
    /// Relay: a long-term TURN user USER:PASS (repeat for more users); needed with
    /// --registry, where session credentials are not available.
    #[arg(long, value_name = "USER:PASS", value_parser = parse_user, help_heading = "Relay (TURN)")]
    pub relay_user: Vec<(String, String)>,
    /// Relay: the realm of the credentials (1 to 32 printable ASCII characters).
    #[arg(
        long,
        value_name = "REALM",
        default_value = "punchraw",
        help_heading = "Relay (TURN)"
    )]
    pub relay_realm: String,
    /// Relay: most allocations one user may hold at once (486 beyond).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Relay (TURN)")]
    pub relay_user_quota: u32,
    /// Relay: most allocations over all users (508 beyond).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Relay (TURN)")]
    pub relay_max_allocations: u32,
}

/// `LO-HI` (or a single port) to an inclusive range of ports.
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
    };
    let (lo, hi) = (port(lo)?, port(hi)?);
    if lo > hi {
        return Err(format!(
            "the range {lo}-{hi} is empty: give LO-HI with LO <= HI"
        ));
    }
    Ok((lo, hi))
}

/// `USER:PASS`, both non-empty printable ASCII (the password may contain ':').
fn parse_user(s: &str) -> Result<(String, String), String> {
    let (u, p) = s
        .split_once(':')
        .ok_or_else(|| "give USER:PASS (a colon between user and password)".to_string())?;
    let printable = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic());
    if !printable(u) || !printable(p) {
        return Err("user and password must be non-empty printable ASCII".into());
    }
    Ok((u.to_string(), p.to_string()))
}

/// One family's addresses of `serve`: the primary (`--listen`) and the alternate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeFamily {
    /// The primary address.
    pub listen: IpAddr,
    /// The RFC 5780 alternate address, when given.
    pub alternate: Option<IpAddr>,
}

impl ServeArgs {
    /// `--listen` and `--alternate` paired by family, the IPv4 one first (it carries the
    /// rendezvous and the relay): at most one of each per family, and no alternate without a
    /// primary of its family (OTHER-ADDRESS names an address of the family the request came
    /// in on, RFC 5780 section 7.4, so the two families are two servers side by side).
    pub fn families(&self) -> Result<Vec<ServeFamily>, String> {
        let family = |ip: &IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        let mut out: Vec<ServeFamily> = Vec::new();
        for &ip in &self.listen {
            if let Some(f) = out.iter().find(|f| f.listen.is_ipv4() == ip.is_ipv4()) {
                return Err(format!(
                    "--listen is given twice for {} ({} and {ip}): give at most one address per family",
                    family(&ip),
                    f.listen
                ));
            }
            out.push(ServeFamily {
                listen: ip,
                alternate: None,
            });
        }
        for &alt in &self.alternate {
            let Some(f) = out.iter_mut().find(|f| f.listen.is_ipv4() == alt.is_ipv4()) else {
                return Err(format!(
                    "--alternate {alt} is {} but no --listen address is: give a --listen of that family",
                    family(&alt)
                ));
            };
            if let Some(prev) = f.alternate {
                return Err(format!(
                    "--alternate is given twice for {} ({prev} and {alt}): give at most one address per family",
                    family(&alt)
                ));
            }
            if alt == f.listen {
                return Err(format!(
                    "--alternate must be a different address than --listen ({alt})"
                ));
            }
            f.alternate = Some(alt);
        }
        out.sort_by_key(|f| !f.listen.is_ipv4());
        Ok(out)
    }
}

fn parse_code(s: &str) -> Result<crate::core::pairing::Code, String> {
    s.parse()
        .map_err(|e: crate::core::pairing::CodeError| e.to_string())
}

/// `probe -4`/`-6`: the one family to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `-4`: IPv4 only.
    V4,
    /// `-6`: IPv6 only.
    V6,
}

/// `punchraw probe`.
#[derive(Args)]
pub struct ProbeArgs {
    /// STUN server as HOST or HOST:PORT (port defaults to 3478). Any RFC 5780 server works for the
    /// full classification; a plain STUN server gives a partial one. A name is probed on
    /// every family it resolves to (IPv4 and IPv6), one after the other.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub server: String,
    /// Probe over IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6_only")]
    pub ipv4_only: bool,
    /// Probe over IPv6 only.
    #[arg(short = '6')]
    pub ipv6_only: bool,
    /// Print exactly one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Skip the TCP tests (TCP mapping, filtering and port allocation, run after the UDP ones;
    /// the filtering test needs CAP_NET_RAW and reports `unknown` without it).
    #[arg(long)]
    pub no_tcp: bool,
    /// Also measure the UDP binding lifetime (takes up to --lifetime-max seconds).
    #[arg(long)]
    pub lifetime: bool,
    /// Upper bound of the binding-lifetime search, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lifetime_max: u64,
    /// Local IP to probe from [default: the address the OS routes to the server from].
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// Write every packet the probe sent and received to this pcap file (opens in Wireshark).
    #[arg(long, value_name = "FILE.pcap")]
    pub capture: Option<PathBuf>,
    /// Do not ask the router for a test port mapping (PCP, NAT-PMP, UPnP IGD); the JSON's
    /// `port_mapping` is then null.
    #[arg(long)]
    pub no_port_mapping: bool,
}

impl ProbeArgs {
    /// The family `-4` or `-6` picks; `None`: every family the server resolves to.
    pub fn family(&self) -> Option<Family> {
        match (self.ipv4_only, self.ipv6_only) {
            (true, _) => Some(Family::V4),
            (_, true) => Some(Family::V6),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port_mapping(extra: &[&str]) -> Result<bool, clap::Error> {
        let base = ["punchraw", "connect", "--server", "h", "--session", "s"];
        let cli = Cli::try_parse_from(base.iter().chain(extra))?;
        match cli.cmd {
            Command::Connect(a) => Ok(a.port_mapping),
            _ => unreachable!("a connect command line"),
        }
    }

    #[test]
    fn relay_is_auto_by_default_and_takes_off_or_a_turn_url() {
        let relay = |extra: &[&str]| {
            let base = ["punchraw", "connect", "--server", "h", "--session", "s"];
            Cli::try_parse_from(base.iter().chain(extra)).map(|c| match c.cmd {
                Command::Connect(a) => a.relay,
                _ => unreachable!("a connect command line"),
            })
        };
        assert_eq!(relay(&[]).unwrap(), RelayArg::Auto);
        assert_eq!(relay(&["--relay", "off"]).unwrap(), RelayArg::Off);
        assert_eq!(
            relay(&["--relay", "turn://u:p:q@h.example:3478"]).unwrap(),
            RelayArg::Turn {
                host: "h.example:3478".into(),
                username: "u".into(),
                password: "p:q".into(),
                transport: TurnTransport::Udp,
            }
        );
        for bad in ["on", "turn://h:3478", "turn://:p@h", "http://u:p@h"] {
            assert!(relay(&["--relay", bad]).is_err(), "{bad}");
        }
    }

    fn serve(extra: &[&str]) -> Result<Vec<ServeFamily>, String> {
        let cli = Cli::try_parse_from(["punchraw", "serve"].iter().chain(extra))
            .map_err(|e| e.to_string())?;
        match cli.cmd {
            Command::Serve(a) => a.families(),
            _ => unreachable!("a serve command line"),
        }
    }

    fn fam(listen: &str, alternate: Option<&str>) -> ServeFamily {
        ServeFamily {
            listen: listen.parse().unwrap(),
            alternate: alternate.map(|a| a.parse().unwrap()),
        }
    }

    #[test]
    fn serve_takes_one_listen_and_one_alternate_per_family() {
        assert_eq!(
            serve(&["--listen", "10.0.0.1"]).unwrap(),
            [fam("10.0.0.1", None)]
        );
        assert_eq!(
            serve(&[
                "--listen",
                "2001:db8::1",
                "--alternate",
                "2001:db8::2",
                "--listen",
                "10.0.0.1",
                "--alternate",
                "10.0.0.2"
            ])
            .unwrap(),
            [
                fam("10.0.0.1", Some("10.0.0.2")),
                fam("2001:db8::1", Some("2001:db8::2"))
            ]
        );
        assert_eq!(
            serve(&[
                "--listen",
                "10.0.0.1",
                "--listen",
                "::1",
                "--alternate",
                "::2"
            ])
            .unwrap(),
            [fam("10.0.0.1", None), fam("::1", Some("::2"))]
        );
        let e = serve(&["--listen", "10.0.0.1", "--listen", "10.0.0.2"]).unwrap_err();
        assert!(e.contains("--listen is given twice for IPv4"), "{e}");
        let e = serve(&["--listen", "10.0.0.1", "--alternate", "::2"]).unwrap_err();
        assert!(e.contains("no --listen address is"), "{e}");
        let e = serve(&[
            "--listen",
            "::1",
            "--alternate",
            "::2",
            "--alternate",
            "::3",
        ])
        .unwrap_err();
        assert!(e.contains("--alternate is given twice for IPv6"), "{e}");
        let e = serve(&["--listen", "::1", "--alternate", "::1"]).unwrap_err();
        assert!(e.contains("different address"), "{e}");
        assert!(serve(&[]).is_err(), "--listen is required");
    }

    #[test]
    fn probe_takes_4_or_6_but_not_both() {
        let family = |extra: &[&str]| {
            Cli::try_parse_from(["punchraw", "probe", "--server", "h"].iter().chain(extra)).map(
                |c| match c.cmd {
                    Command::Probe(a) => a.family(),
                    _ => unreachable!("a probe command line"),
                },
            )
        };
        assert_eq!(family(&[]).unwrap(), None);
        assert_eq!(family(&["-4"]).unwrap(), Some(Family::V4));
        assert_eq!(family(&["-6"]).unwrap(), Some(Family::V6));
        assert!(family(&["-4", "-6"]).is_err());
    }

    #[test]
    fn a_turn_url_takes_the_transport_to_the_server() {
        let relay = |url: &str| {
            let base = ["punchraw", "connect", "--server", "h", "--session", "s"];
            let args = base.iter().copied().chain(["--relay", url]);
            Cli::try_parse_from(args).map(|c| match c.cmd {
                Command::Connect(a) => a.relay,
                _ => unreachable!("a connect command line"),
            })
        };
        for (q, t) in [
            ("", TurnTransport::Udp),
            ("?transport=udp", TurnTransport::Udp),
            ("?transport=tcp", TurnTransport::Tcp),
            ("?transport=tls", TurnTransport::Tls),
        ] {
            assert_eq!(
                relay(&format!("turn://u:p?@x@192.0.2.1:3478{q}")).unwrap(),
                RelayArg::Turn {
                    host: "192.0.2.1:3478".into(),
                    username: "u".into(),
                    password: "p?@x".into(),
                    transport: t,
                },
                "{q}"
            );
        }
        for (bad, says) in [
            (
                "turn://u:p@h:3478?transport=sctp",
                "transport \"sctp\" is not udp, tcp or tls",
            ),
            (
                "turn://u:p@h:3478?transport=",
                "transport \"\" is not udp, tcp or tls",
            ),
            (
                "turn://u:p@h:3478?proto=tcp",
                "the only query a turn:// URL takes is ?transport=udp|tcp|tls",
            ),
            ("turn://u:p@?transport=tcp", "is not auto, off or turn://"),
        ] {
            let e = relay(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn port_mapping_is_auto_by_default_and_takes_auto_or_off() {
        assert!(port_mapping(&[]).unwrap());
        assert!(port_mapping(&["--port-mapping", "auto"]).unwrap());
        assert!(!port_mapping(&["--port-mapping", "off"]).unwrap());
        assert!(!port_mapping(&["--port-mapping=off"]).unwrap());
        let e = port_mapping(&["--port-mapping", "on"]).unwrap_err();
        assert!(e.to_string().contains("not auto or off"), "{e}");
    }
}

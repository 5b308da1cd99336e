//! The command line: clap structs, validation into library configs, then the library runs.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use punchraw::core::rendezvous::RendezvousConfig;
use punchraw::core::server::ServerConfig;
use punchraw::driver::connect::{ConnectConfig, PrimeTtl};
use punchraw::driver::probe::ProbeConfig;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "punchraw",
    version,
    about = "Classify NATs and punch holes through them, at packet level",
    long_about = "punchraw gets two machines behind NATs talking directly and tells you why it can or cannot.\n\n\
                  serve  runs the STUN server (RFC 8489, RFC 5780 behaviour discovery, RFC 3489 compatible).\n\
                  probe  classifies the NAT in front of you (mapping, filtering, port allocation, hairpinning, binding lifetime)."
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the STUN server (and, with --alternate, RFC 5780 behaviour discovery).
    Serve(ServeArgs),
    /// Classify the NAT between this host and a STUN server.
    Probe(ProbeArgs),
    /// Punch a hole to a peer through both NATs and carry stdin/stdout over an encrypted,
    /// reliable stream on it (QUIC over UDP; TLS over TCP with --tcp).
    Connect(ConnectArgs),
}

#[derive(Args)]
struct ConnectArgs {
    /// The punchraw server both peers use for the rendezvous, HOST[:PORT].
    #[arg(long, value_name = "HOST[:PORT]")]
    server: String,
    /// Session name both peers give; the server introduces the two peers of a session.
    #[arg(long, value_name = "NAME")]
    session: String,
    /// Shared secret that authenticates the peer (every punch packet carries a MAC keyed from
    /// it, and the QUIC certificates are pinned through it). Without it the session name is
    /// the key. Also read from PUNCHRAW_SECRET.
    #[arg(
        long,
        value_name = "S",
        env = "PUNCHRAW_SECRET",
        hide_env_values = true
    )]
    secret: Option<String>,
    /// Give up when not connected within this many seconds (waiting for the peer included).
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    timeout: u64,
    /// Write a JSON report of the attempt to this file.
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Write the packets of the classification and the punch to this pcap file.
    #[arg(long, value_name = "FILE.pcap")]
    capture: Option<PathBuf>,
    /// No status messages on stderr.
    #[arg(short, long)]
    quiet: bool,
    /// Local IP to use [default: the address the OS routes to the server from].
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// Keep-alive interval on the established stream, in seconds; well under common NAT
    /// UDP timeouts (30 s on Linux for unreplied flows).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=25))]
    keepalive: u64,
    /// Time for the punch itself, from the agreed start, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=600))]
    punch_budget: u64,
    /// Most punch probes per second (the sweep's probing rate).
    #[arg(long, value_name = "PPS", default_value_t = 500, value_parser = clap::value_parser!(u32).range(10..=20000))]
    rate: u32,
    /// Ports past the peer's last seen port to try when predicting a sequential NAT.
    #[arg(long, value_name = "N", default_value_t = 24)]
    window: u16,
    /// Mappings the random side opens in a birthday sweep.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096))]
    sweep_sockets: u16,
    /// Punch TCP instead of UDP: simultaneous open toward the peer's predicted port, with
    /// kernel sockets sweeping ports around the prediction, then TLS with pinned certificates.
    /// Needs CAP_NET_ADMIN (a temporary nft rule drops this host's RSTs to the peer) and
    /// CAP_NET_RAW (SYN/RST/ICMP watching); run with sudo. Both peers must give it.
    #[arg(long)]
    tcp: bool,
    /// TCP only: TTL of each attempt's first SYN. "auto" measures toward the peer and picks a
    /// TTL that opens our NAT but dies before the peer's (or none when no hop lies between);
    /// "off" sends the normal TTL; a number forces it.
    #[arg(long, value_name = "auto|off|N", default_value = "auto", value_parser = parse_prime_ttl)]
    prime_ttl: PrimeTtl,
    /// Start punching this many milliseconds after the moment agreed with the peer (testing:
    /// makes the other side's packets arrive first).
    #[arg(long, value_name = "MS", default_value_t = 0, hide = true, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    start_delay_ms: u64,
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

#[derive(Args)]
struct ServeArgs {
    /// Primary IP address to listen on (must be an address of this host).
    #[arg(long, value_name = "IP")]
    listen: IpAddr,
    /// Second IP address of this host. Enables RFC 5780 behaviour discovery: the server then
    /// answers on 2 addresses x 2 ports and honours CHANGE-REQUEST.
    #[arg(long, value_name = "IP2")]
    alternate: Option<IpAddr>,
    /// Primary port (UDP and TCP).
    #[arg(long, default_value_t = 3478)]
    port: u16,
    /// Alternate port used for behaviour discovery [default: PORT+1].
    #[arg(long, value_name = "PORT")]
    alt_port: Option<u16>,
    /// SOFTWARE attribute sent in responses; empty to send none.
    #[arg(long, default_value = "punchraw")]
    software: String,
    /// Rendezvous: how long a lone peer waits for the other before it is told the other
    /// never came, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    wait_timeout: u64,
    /// Rendezvous: most sessions held at once; beyond, new sessions are refused.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    max_sessions: usize,
    /// Rendezvous: keep sessions in Redis instead of this process's memory, so several
    /// servers behind one name share them (and a restart loses none), e.g.
    /// redis://10.0.0.5:6379.
    #[arg(long, value_name = "redis://HOST:PORT")]
    registry: Option<String>,
    /// Answer at most N UDP requests per second from one source address (IPv6: one /64),
    /// with bursts of N, so that a spoofed victim receives at most that rate. Off by default:
    /// behind carrier-grade NAT many users share one address.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    per_source_limit: Option<u32>,
}

#[derive(Args)]
struct ProbeArgs {
    /// STUN server as HOST[:PORT] (port defaults to 3478). Any RFC 5780 server works for the
    /// full classification; a plain STUN server gives a partial one.
    #[arg(long, value_name = "HOST[:PORT]")]
    server: String,
    /// Print exactly one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Skip the TCP tests (TCP mapping, filtering and port allocation, run after the UDP ones;
    /// the filtering test needs CAP_NET_RAW and reports `unknown` without it).
    #[arg(long)]
    no_tcp: bool,
    /// Also measure the UDP binding lifetime (takes up to --lifetime-max seconds).
    #[arg(long)]
    lifetime: bool,
    /// Upper bound of the binding-lifetime search, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(2..=3600))]
    lifetime_max: u64,
    /// Local IP to probe from [default: the address the OS routes to the server from].
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// Write every packet the probe sent and received to this pcap file (opens in Wireshark).
    #[arg(long, value_name = "FILE.pcap")]
    capture: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    punchraw::cli::logging::init(cli.verbose);
    let result = match cli.cmd {
        Command::Serve(a) => serve_config(a)
            .and_then(|(c, r)| punchraw::driver::serve::run(c, r).map_err(Into::into)),
        Command::Probe(a) => probe_config(a).and_then(punchraw::driver::probe::run),
        Command::Connect(a) => connect_config(a).and_then(punchraw::driver::connect::run),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let known = e.downcast_ref::<punchraw::Error>();
            if let Some(i @ punchraw::Error::Interrupted { .. }) = known {
                // Not a failure: the user (or a supervisor) asked, and the cleanup has run.
                eprintln!("punchraw: {i}");
            } else {
                eprintln!("punchraw: error: {e:#}");
            }
            ExitCode::from(known.map_or(1, punchraw::Error::exit_code))
        }
    }
}

fn serve_config(a: ServeArgs) -> Result<(ServerConfig, RendezvousConfig)> {
    let alt_port = match a.alt_port {
        Some(p) => p,
        None => a
            .port
            .checked_add(1)
            .context("--port 65535 leaves no room for the default --alt-port; give --alt-port")?,
    };
    if a.alternate.is_some() && alt_port == a.port {
        bail!(
            "--alt-port must differ from --port ({}) for behaviour discovery",
            a.port
        );
    }
    if a.alternate == Some(a.listen) {
        bail!(
            "--alternate must be a different address than --listen ({})",
            a.listen
        );
    }
    if let Some(alt) = a.alternate {
        if alt.is_ipv4() != a.listen.is_ipv4() {
            bail!("--listen and --alternate must be of the same IP family");
        }
    }
    let rendezvous = RendezvousConfig {
        wait_timeout: Duration::from_secs(a.wait_timeout),
        max_sessions: a.max_sessions,
        registry: a.registry,
        ..RendezvousConfig::default()
    };
    let server = ServerConfig {
        ip: a.listen,
        alt_ip: a.alternate,
        port: a.port,
        alt_port,
        software: (!a.software.is_empty()).then_some(a.software),
        per_source_limit: a.per_source_limit,
    };
    Ok((server, rendezvous))
}

/// HOST[:PORT] to one address, preferring IPv4 like most STUN deployments.
fn resolve(spec: &str) -> Result<SocketAddr> {
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = spec.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 3478));
    }
    let with_port = if spec
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        spec.to_string()
    } else {
        format!("{spec}:3478")
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve server {spec:?}; give HOST[:PORT] or IP[:PORT]"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .with_context(|| format!("server {spec:?} resolved to no address"))
}

fn probe_config(a: ProbeArgs) -> Result<ProbeConfig> {
    Ok(ProbeConfig {
        server: resolve(&a.server)?,
        json: a.json,
        tcp: !a.no_tcp,
        lifetime_max: a.lifetime.then(|| Duration::from_secs(a.lifetime_max)),
        bind: a.bind,
        capture: a.capture,
    })
}

fn connect_config(a: ConnectArgs) -> Result<ConnectConfig> {
    if a.session.is_empty() || a.session.len() > 128 || a.session.chars().any(char::is_control) {
        bail!("--session must be 1 to 128 printable characters");
    }
    if a.secret.as_deref() == Some("") {
        bail!("--secret must not be empty (leave it out to use the session name as the key)");
    }
    Ok(ConnectConfig {
        server: resolve(&a.server)?,
        session: a.session,
        secret: a.secret,
        timeout: Duration::from_secs(a.timeout),
        report: a.report,
        capture: a.capture,
        quiet: a.quiet,
        bind: a.bind,
        keepalive: Duration::from_secs(a.keepalive),
        rate: a.rate,
        window: a.window,
        sweep_sockets: usize::from(a.sweep_sockets),
        punch_budget: Duration::from_secs(a.punch_budget),
        tcp: a.tcp,
        prime_ttl: a.prime_ttl,
        start_delay: Duration::from_millis(a.start_delay_ms),
    })
}

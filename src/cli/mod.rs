//! The command line: clap structs ([`args`]), their validation into the library's configs,
//! the messages a user reads and the exit codes. The only module (with `main.rs`) that uses
//! `anyhow`; everything below returns [`crate::Error`].

pub mod args;
pub mod docs;
pub mod logging;
pub mod table;

use crate::core::rendezvous::RendezvousConfig;
use crate::core::server::ServerConfig;
use crate::core::turn::server::TurnServerConfig;
use crate::driver::connect::{ConnectConfig, Pairing, RelayMode, RelayTransport};
use crate::driver::probe::ProbeConfig;
use crate::driver::Status;
use anyhow::{bail, Context, Result};
use args::{Cli, Command, ConnectArgs, Family, ProbeArgs, ServeArgs};
use clap::Parser;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// Parses the command line, runs the command, prints the outcome, and says how to exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::cli::logging::init(cli.verbose);
    let result = match cli.cmd {
        Command::Serve(a) => {
            let metrics = a.metrics;
            serve_config(a).and_then(|(c, r, t)| {
                crate::driver::serve::run(c, r, t, metrics, &Status::stderr()).map_err(Into::into)
            })
        }
        Command::Probe(a) => probe_config(a).and_then(|c| match c {
            Ok(c) => probe(c),
            Err(unreachable) => {
                // Not a failure of this host: the server cannot be reached on the family
                // asked for, the exit status of an unreachable server.
                eprintln!("punchraw: error: {unreachable}");
                Ok(ExitCode::from(3))
            }
        }),
        Command::Completions(a) => {
            docs::completions(&a, &mut std::io::stdout().lock()).map(|()| ExitCode::SUCCESS)
        }
        Command::Man(a) => docs::man(&a, &mut std::io::stdout().lock()).map(|()| ExitCode::SUCCESS),
        Command::Connect(a) => {
            // --quiet silences the status lines, not the final error nor a pairing code.
            let status = if a.quiet {
                Status::quiet()
            } else {
                Status::stderr()
            };
            // The stream's buffers come and go at its rate: keep their pages (`os::memory`).
            crate::os::memory::keep_freed_heap();
            connect_config(a)
                .and_then(|c| crate::driver::connect::run(c, &status).map_err(Into::into))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let known = e.downcast_ref::<crate::Error>();
            if let Some(i @ crate::Error::Interrupted { .. }) = known {
                // Not a failure: the user (or a supervisor) asked, and the cleanup has run.
                eprintln!("punchraw: {i}");
            } else {
                eprintln!("punchraw: error: {e:#}");
            }
            ExitCode::from(known.map_or(1, crate::Error::exit_code))
        }
    }
}

fn serve_config(
    a: ServeArgs,
) -> Result<(
    Vec<ServerConfig>,
    RendezvousConfig,
    Option<TurnServerConfig>,
)> {
    let families = a.families().map_err(anyhow::Error::msg)?;
    let alt_port = match a.alt_port {
        Some(p) => p,
        None => a
            .port
            .checked_add(1)
            .context("--port 65535 leaves no room for the default --alt-port; give --alt-port")?,
    };
    if !a.alternate.is_empty() && alt_port == a.port {
        bail!(
            "--alt-port must differ from --port ({}) for behaviour discovery",
            a.port
        );
    }
    // The relay hands out addresses of the first family (IPv4 when given).
    let relay = relay_config(&a, families[0].listen)?;
    let rendezvous = RendezvousConfig {
        wait_timeout: Duration::from_secs(a.wait_timeout),
        max_sessions: a.max_sessions,
        registry: a.registry,
        ..RendezvousConfig::default()
    };
    let servers = families
        .iter()
        .map(|f| ServerConfig {
            ip: f.listen,
            alt_ip: f.alternate,
            port: a.port,
            alt_port,
            software: (!a.software.is_empty()).then(|| a.software.clone()),
            per_source_limit: a.per_source_limit,
            seed: rand::random(),
        })
        .collect();
    Ok((servers, rendezvous, relay))
}

/// `--relay` and its options into the TURN server's configuration.
fn relay_config(a: &ServeArgs, listen: IpAddr) -> Result<Option<TurnServerConfig>> {
    if !a.relay {
        if !a.relay_user.is_empty() {
            bail!("--relay-user is given but --relay is not: add --relay to serve TURN");
        }
        return Ok(None);
    }
    if a.relay_user.is_empty() && a.registry.is_some() {
        bail!("with --registry, --relay needs at least one --relay-user USER:PASS: session credentials need the in-memory registry (the relay is never open)");
    }
    if listen.is_unspecified() {
        bail!("--relay needs --listen to be this host's own address, not {listen}: relayed addresses are handed to peers");
    }
    let mut cfg = TurnServerConfig::new(listen, a.relay_ports, a.relay_user.clone());
    cfg.realm = a.relay_realm.clone();
    cfg.user_quota = a.relay_user_quota as usize;
    cfg.max_allocations = a.relay_max_allocations as usize;
    cfg.software = (!a.software.is_empty()).then(|| a.software.clone());
    // Peers of a rendezvous session relay with credentials derived from its key.
    cfg.session_credentials = a.registry.is_none();
    // The nonces' key and the port choice: fresh per run, from the OS.
    cfg.secret = rand::random();
    cfg.seed = rand::random();
    cfg.validate().context("--relay")?;
    Ok(Some(cfg))
}

/// HOST[:PORT] to one address, preferring IPv4 like most STUN deployments.
fn resolve(spec: &str) -> Result<SocketAddr> {
    resolve_port(spec, STUN_PORT)
}

/// STUN and TURN over UDP and TCP (RFC 8489 section 18.6, RFC 8656 section 17).
const STUN_PORT: u16 = 3478;
/// STUN and TURN over TLS ("stuns"/"turns", RFC 8489 section 18.6, RFC 7065 section 4).
const STUNS_PORT: u16 = 5349;

/// A TURN server's port when its URL names none.
fn turn_port(t: args::TurnTransport) -> u16 {
    match t {
        args::TurnTransport::Tls => STUNS_PORT,
        args::TurnTransport::Udp | args::TurnTransport::Tcp => STUN_PORT,
    }
}

/// [`resolve`] with `port` when HOST has none.
fn resolve_port(spec: &str, port: u16) -> Result<SocketAddr> {
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = spec.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let with_port = if spec
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        spec.to_string()
    } else {
        format!("{spec}:{port}")
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

/// HOST[:PORT] to one address per family it has, IPv4 first, limited to `only`. The error
/// (`Ok(Err)`) says why no family is left: the server has none of the family asked for.
fn resolve_families(spec: &str, only: Option<Family>) -> Result<Result<Vec<SocketAddr>, String>> {
    let name = |a: &SocketAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
    let all: Vec<SocketAddr> = if let Ok(sa) = spec.parse::<SocketAddr>() {
        vec![sa]
    } else if let Ok(ip) = spec.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, 3478)]
    } else {
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
            .with_context(|| {
                format!("cannot resolve server {spec:?}; give HOST[:PORT] or IP[:PORT]")
            })?
            .collect();
        let v4 = addrs.iter().find(|a| a.is_ipv4());
        let v6 = addrs.iter().find(|a| a.is_ipv6());
        v4.into_iter().chain(v6).copied().collect()
    };
    if all.is_empty() {
        bail!("server {spec:?} resolved to no address");
    }
    let wanted: Vec<SocketAddr> = all
        .iter()
        .filter(|a| match only {
            Some(Family::V4) => a.is_ipv4(),
            Some(Family::V6) => a.is_ipv6(),
            None => true,
        })
        .copied()
        .collect();
    if wanted.is_empty() {
        let asked = if only == Some(Family::V4) {
            "IPv4 (-4)"
        } else {
            "IPv6 (-6)"
        };
        let has: Vec<String> = all.iter().map(|a| format!("{a} ({})", name(a))).collect();
        return Ok(Err(format!(
            "server {spec:?} has no {asked} address; it has only {}",
            has.join(", ")
        )));
    }
    Ok(Ok(wanted))
}

/// The probe's configuration, or (`Ok(Err)`) why the server cannot be probed at all: it has
/// no address of the family asked for, or none this host can reach.
pub(crate) fn probe_config(a: ProbeArgs) -> Result<std::result::Result<ProbeConfig, String>> {
    let servers = match resolve_families(&a.server, a.family())? {
        Ok(s) => s,
        Err(why) => return Ok(Err(why)),
    };
    // A family this host has no route for is left out (a host without IPv6 probes a
    // dual-stack name over IPv4 as before); if none is left, that is the answer.
    let mut reachable = Vec::new();
    let mut unreachable = Vec::new();
    for s in servers {
        match crate::driver::probe::source_for(s, a.bind) {
            Ok(_) => reachable.push(s),
            Err(e) => unreachable.push(format!("{s}: {e:#}")),
        }
    }
    if reachable.is_empty() {
        return Ok(Err(format!(
            "server {:?} cannot be reached from this host on any family it was probed on ({})",
            a.server,
            unreachable.join("; ")
        )));
    }
    for u in &unreachable {
        eprintln!("punchraw: not probing {u}");
    }
    Ok(Ok(ProbeConfig {
        servers: reachable,
        json: a.json,
        tcp: !a.no_tcp,
        lifetime_max: a.lifetime.then(|| Duration::from_secs(a.lifetime_max)),
        bind: a.bind,
        capture: a.capture,
        port_mapping: !a.no_port_mapping,
        shutdown: None,
    }))
}

pub(crate) fn connect_config(a: ConnectArgs) -> Result<ConnectConfig> {
    if let Some(session) = &a.session {
        if session.is_empty() || session.len() > 128 || session.chars().any(char::is_control) {
            bail!("--session must be 1 to 128 printable characters");
        }
    }
    if a.secret.as_deref() == Some("") {
        bail!("--secret must not be empty (leave it out to use the session name as the key)");
    }
    let tls = matches!(
        a.relay,
        args::RelayArg::Turn {
            transport: args::TurnTransport::Tls,
            ..
        }
    );
    if a.relay_ca.is_some() && !tls {
        bail!("--relay-ca is for --relay turn://USER:PASS@HOST:PORT?transport=tls only");
    }
    Ok(ConnectConfig {
        server: resolve(&a.server)?,
        session: a.session.unwrap_or_default(),
        secret: a.secret,
        pairing: a.code.map(|c| c.map_or(Pairing::New, Pairing::Join)),
        timeout: Duration::from_secs(a.timeout),
        report: a.report,
        capture: a.capture,
        bind: a.bind,
        ipv6: !a.ipv4_only && a.bind.is_none_or(|b| b.is_ipv6()),
        keepalive: Duration::from_secs(a.keepalive),
        rate: a.rate,
        window: a.window,
        sweep_sockets: usize::from(a.sweep_sockets),
        punch_budget: Duration::from_secs(a.punch_budget),
        tcp: a.tcp,
        prime_ttl: a.prime_ttl,
        syn_engine: a.syn_engine,
        port_mapping: a.port_mapping,
        port_mapping_lifetime: Duration::from_secs(a.port_mapping_lifetime),
        report_outcome: !a.no_report_outcome,
        io: crate::driver::connect::StreamIo::Stdio,
        on_connected: None,
        shutdown: None,
        start_delay: Duration::from_millis(a.start_delay_ms),
        relay: match a.relay {
            args::RelayArg::Off => RelayMode::Off,
            args::RelayArg::Auto => RelayMode::Auto,
            args::RelayArg::Turn {
                host,
                username,
                password,
                transport,
            } => RelayMode::Turn {
                server: resolve_port(&host, turn_port(transport))?,
                username,
                password,
                transport: relay_transport(transport, &host, a.relay_ca.as_deref())?,
            },
        },
    })
}

/// `?transport=` with what TLS needs: the name the certificate must carry (HOST without
/// its port) and the CAs to trust, from --relay-ca or the system's bundle.
fn relay_transport(
    t: args::TurnTransport,
    host: &str,
    ca: Option<&std::path::Path>,
) -> Result<RelayTransport> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    Ok(match t {
        args::TurnTransport::Udp => RelayTransport::Udp,
        args::TurnTransport::Tcp => RelayTransport::Tcp,
        args::TurnTransport::Tls => {
            let name = tls_name(host);
            let file = match ca {
                Some(f) => f.to_path_buf(),
                None => std::env::var_os("SSL_CERT_FILE")
                    .map(std::path::PathBuf::from)
                    .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into()),
            };
            let roots = CertificateDer::pem_file_iter(&file)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .with_context(|| format!("cannot read CA certificates from {}", file.display()))?;
            if roots.is_empty() {
                bail!(
                    "{} holds no PEM certificate to check the relay's with (--relay-ca)",
                    file.display()
                );
            }
            RelayTransport::Tls { name, roots }
        }
    })
}

/// The name a TURN server's certificate must carry: HOST of HOST[:PORT], an IP address
/// as such (IPv6 with or without brackets).
fn tls_name(host: &str) -> String {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip.to_string();
    }
    if let Ok(sa) = host.parse::<SocketAddr>() {
        return sa.ip().to_string();
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h.to_string(),
        _ => host.to_string(),
    }
}

/// Runs the probe and prints its report: one JSON object on stdout with `--json`, the table
/// otherwise. A server that never answered is still reported, then exits 3.
fn probe(cfg: ProbeConfig) -> Result<ExitCode> {
    let json = cfg.json;
    let report = crate::driver::probe::run(cfg, &Status::stderr())?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).context("serialising the report")?
        );
    } else {
        print!("{}", table::render(&report));
    }
    // The IPv4 verdict decides as it always did; a lone IPv6 probe decides for itself.
    let first = report.families().first().map(|(_, u, _)| u.legacy_type);
    if first == Some(crate::core::classify::LegacyType::Blocked) {
        return Err(crate::Error::ServerUnreachable {
            server: report.server,
            waited_ms: report.elapsed_ms,
        }
        .into());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::tls_name;

    #[test]
    fn a_tls_relay_without_a_port_is_on_5349_others_on_3478() {
        use super::{args::TurnTransport, resolve_port, turn_port};
        let port = |host: &str, t| resolve_port(host, turn_port(t)).unwrap().port();
        assert_eq!(port("192.0.2.1", TurnTransport::Udp), 3478);
        assert_eq!(port("192.0.2.1", TurnTransport::Tcp), 3478);
        assert_eq!(port("192.0.2.1", TurnTransport::Tls), 5349);
        assert_eq!(port("192.0.2.1:443", TurnTransport::Tls), 443);
        assert_eq!(port("[2001:db8::1]:3480", TurnTransport::Udp), 3480);
    }

    #[test]
    fn the_tls_name_of_a_relay_is_its_host_without_the_port() {
        for (host, name) in [
            ("turn.example:5349", "turn.example"),
            ("turn.example", "turn.example"),
            ("203.0.113.1:5349", "203.0.113.1"),
            ("203.0.113.1", "203.0.113.1"),
            ("[2001:db8::1]:5349", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
        ] {
            assert_eq!(tls_name(host), name, "{host}");
        }
    }
}

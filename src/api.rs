//! The embedding API: `punchraw connect` and `punchraw probe` inside your program.
//!
//! Options are the command's own flags, checked and defaulted by the same parser as the
//! command line, so a program and a shell script that ask for the same thing get the same
//! thing. [`Connect::connect`] returns once the stream's path is open and authenticated,
//! with a local socket that carries the stream: what you write to it reaches the peer, what
//! the peer sends you read from it, and shutting down your writing ends the stream toward
//! the peer, as EOF on stdin does for the command. [`probe`] returns the report `probe
//! --json` prints. Neither installs signal handlers: [`Connection::stop`] stops a connect.
//!
//! ```no_run
//! # async fn demo() -> Result<(), punchraw::api::ApiError> {
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let mut conn = punchraw::api::Connect::new("rendezvous.example.net")
//!     .session("team-42", "a long shared secret")
//!     .connect()
//!     .await?;
//! println!("connected to {} ({}, {})", conn.peer, conn.path, conn.transport);
//! conn.stream.write_all(b"hello").await?;
//! conn.stream.shutdown().await?;
//! let mut answer = Vec::new();
//! conn.stream.read_to_end(&mut answer).await?;
//! let report = conn.finish().await?;
//! println!("{} bytes sent", report.bytes_sent);
//! # Ok(())
//! # }
//! ```

use crate::cli::args::{Cli, Command};
use crate::core::punch::Strategy;
use crate::driver::connect::{ConnectReport, OnConnected, StreamIo};
use crate::driver::probe::ProbeReport;
use crate::driver::Status;
use crate::os::signals::Shutdown;
use clap::Parser;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// What can go wrong, typed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The options do not make a valid command; the text is the command line's message.
    #[error("invalid options: {0}")]
    Options(String),
    /// The connect or probe failed; [`crate::Error::exit_code`] says how, as for the command.
    #[error(transparent)]
    Failed(#[from] crate::Error),
    /// The local socket that carries the stream failed.
    #[error("stream socket: {0}")]
    Io(#[from] std::io::Error),
}

fn parse(args: Vec<String>) -> Result<Command, ApiError> {
    Cli::try_parse_from(args)
        .map(|c| c.cmd)
        .map_err(|e| ApiError::Options(e.to_string()))
}

/// A connect to configure: the options of `punchraw connect`.
#[derive(Debug, Clone)]
pub struct Connect {
    args: Vec<String>,
}

impl Connect {
    /// A connect through the rendezvous server `server` (`HOST[:PORT]`).
    pub fn new(server: &str) -> Self {
        Connect {
            args: ["punchraw", "connect", "--server", server]
                .map(String::from)
                .to_vec(),
        }
    }

    /// The session both peers give, and the secret that authenticates them
    /// (`--session`, `--secret`).
    pub fn session(self, name: &str, secret: &str) -> Self {
        self.arg("--session", name).arg("--secret", secret)
    }

    /// Punch TCP and carry the stream over TLS instead of QUIC over UDP (`--tcp`).
    pub fn tcp(self) -> Self {
        self.flag("--tcp")
    }

    /// The relay when no hole opens: `auto`, `off` or `turn://USER:PASS@HOST:PORT`
    /// (`--relay`).
    pub fn relay(self, how: &str) -> Self {
        self.arg("--relay", how)
    }

    /// Whether to ask the router for a port mapping (`--port-mapping auto|off`).
    pub fn port_mapping(self, on: bool) -> Self {
        self.arg("--port-mapping", if on { "auto" } else { "off" })
    }

    /// How long to wait for the peer and punch, in seconds (`--timeout`).
    pub fn timeout_secs(self, secs: u64) -> Self {
        self.arg("--timeout", &secs.to_string())
    }

    /// Any other option of `punchraw connect` that takes a value, e.g. `("--report",
    /// "r.json")`.
    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        self.args.extend([flag.to_string(), value.to_string()]);
        self
    }

    /// Any other option of `punchraw connect` without a value, e.g. `-4`.
    pub fn flag(mut self, flag: &str) -> Self {
        self.args.push(flag.to_string());
        self
    }

    /// Meets the peer, punches (or relays) and returns once the stream's path is open;
    /// the stream then runs until both sides have shut their writing down.
    pub async fn connect(self) -> Result<Connection, ApiError> {
        let Command::Connect(a) = parse(self.args)? else {
            unreachable!("the arguments start with `connect`");
        };
        let mut cfg =
            crate::cli::connect_config(a).map_err(|e| ApiError::Options(format!("{e:#}")))?;
        let (ours, theirs) = UnixStream::pair()?;
        let stop = Shutdown::manual();
        let (tx, rx) = oneshot::channel::<Opened>();
        let tx = Mutex::new(Some(tx));
        cfg.io = StreamIo::Socket(Arc::new(theirs));
        cfg.shutdown = Some(stop.clone());
        cfg.on_connected = Some(OnConnected(Arc::new(move |r: &ConnectReport| {
            let opened = Opened {
                peer: r.peer,
                path: r.path.unwrap_or("direct"),
                transport: r.transport,
                strategy: r.strategy,
            };
            if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                let _ = tx.send(opened);
            }
        })));
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("punchraw connect".into())
            .spawn(move || {
                let _ = done_tx.send(crate::driver::connect::run_report(cfg, &Status::quiet()));
            })?;
        match rx.await {
            Ok(o) => {
                ours.set_nonblocking(true)?;
                Ok(Connection {
                    stream: tokio::net::UnixStream::from_std(ours)?,
                    peer: o
                        .peer
                        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                    path: o.path,
                    transport: o.transport,
                    strategy: o.strategy,
                    stop,
                    done: done_rx,
                })
            }
            // Never connected: the connect ended, and says why.
            Err(_) => match done_rx.await {
                Ok((_, Err(e))) => Err(e.into()),
                _ => Err(ApiError::Options(
                    "the connect ended without a stream".into(),
                )),
            },
        }
    }
}

struct Opened {
    peer: Option<SocketAddr>,
    path: &'static str,
    transport: &'static str,
    strategy: Option<Strategy>,
}

/// An open, authenticated connection to the peer.
#[derive(Debug)]
pub struct Connection {
    /// The stream: write to reach the peer, read what it sends; shut your writing down to
    /// end your direction.
    pub stream: tokio::net::UnixStream,
    /// The peer's address on the path (its relayed address on a relay).
    pub peer: SocketAddr,
    /// `direct` or `relay` when the stream started (a relayed stream may move to the
    /// direct path later: [`ConnectReport::path`] says where it ended).
    pub path: &'static str,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    /// How the hole was punched, when one was.
    pub strategy: Option<Strategy>,
    stop: Shutdown,
    done: oneshot::Receiver<(ConnectReport, Result<(), crate::Error>)>,
}

impl Connection {
    /// Waits for the stream to end (both directions done) and returns the report
    /// `connect --report` writes. Call it before the program exits: what was written may
    /// still be on its way to the peer until then.
    pub async fn finish(self) -> Result<ConnectReport, ApiError> {
        drop(self.stream);
        match self.done.await {
            Ok((report, Ok(()))) => Ok(report),
            Ok((_, Err(e))) => Err(e.into()),
            Err(_) => Err(ApiError::Options("the connect thread ended early".into())),
        }
    }

    /// Stops the connection now, as SIGINT stops the command.
    pub fn stop(&self) {
        self.stop.trigger();
    }
}

/// `punchraw probe --server SERVER ARGS...`, returning the report `--json` prints (with
/// `--json` implied). `args` are further options, e.g. `["--no-tcp"]`.
pub async fn probe(server: &str, args: &[&str]) -> Result<ProbeReport, ApiError> {
    let argv = ["punchraw", "probe", "--server", server, "--json"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect();
    let Command::Probe(a) = parse(argv)? else {
        unreachable!("the arguments start with `probe`");
    };
    let mut cfg = match crate::cli::probe_config(a) {
        Ok(Ok(c)) => c,
        Ok(Err(unreachable)) => return Err(ApiError::Options(unreachable)),
        Err(e) => return Err(ApiError::Options(format!("{e:#}"))),
    };
    cfg.shutdown = Some(Shutdown::manual());
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("punchraw probe".into())
        .spawn(move || {
            let _ = tx.send(crate::driver::probe::run(cfg, &Status::quiet()));
        })?;
    match rx.await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ApiError::Options("the probe thread ended early".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// Options are the command's: what the command line refuses, the API refuses with the
    /// same message, before anything is sent.
    #[test]
    fn invalid_options_are_refused_with_the_command_lines_message() {
        let e = block_on(Connect::new("127.0.0.1").arg("--bogus", "1").connect()).unwrap_err();
        assert!(
            matches!(&e, ApiError::Options(m) if m.contains("--bogus")),
            "{e}"
        );
        let e = block_on(Connect::new("127.0.0.1").session("", "x").connect()).unwrap_err();
        assert!(
            matches!(&e, ApiError::Options(m) if m.contains("--session")),
            "{e}"
        );
        let e = block_on(probe("127.0.0.1", &["--lifetime-max", "nope"])).unwrap_err();
        assert!(matches!(e, ApiError::Options(_)), "{e}");
    }

    /// A failure before any stream comes back as the connect's typed error, with the
    /// command's exit code: nothing answers at the server's address here.
    #[test]
    fn a_connect_that_fails_returns_its_error() {
        // A port nothing listens on, on loopback: the classification gets no answer.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = silent.local_addr().unwrap().to_string();
        drop(silent);
        let e = block_on(
            Connect::new(&server)
                .session("api-test", "secret")
                .relay("off")
                .port_mapping(false)
                .timeout_secs(1)
                .flag("-4")
                .connect(),
        )
        .unwrap_err();
        match e {
            ApiError::Failed(e) => assert_eq!(e.exit_code(), 3, "{e}"),
            e => panic!("{e}"),
        }
    }
}

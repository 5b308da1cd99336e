//! The library's typed errors. Each says what happened and what the user can do; the CLI
//! maps them to distinct exit codes.

use std::net::SocketAddr;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "cannot bind {addr} (is another server running there, or is the address not on this host?)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no STUN answer from {server} over UDP within {waited_ms} ms: the server is down, unreachable, or UDP is blocked on the path")]
    ServerUnreachable { server: SocketAddr, waited_ms: u64 },
    /// `connect --code`: the two sides did not derive the same key.
    #[error("wrong code: the other side of session {session:?} typed another pairing code (or someone else tried to guess it); this code is used up, so start again with a new one (punchraw connect --code)")]
    WrongCode { session: String },
    /// The host has no route (or no address) of the server's family.
    #[error("this host has no {} route to the server {server} ({error}): it may have no {} address; give the server's {} address or a name that has one", family(server), family(server), if server.is_ipv4() { "IPv6" } else { "IPv4" })]
    NoRoute {
        server: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot write capture {path}")]
    Capture {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the other peer never came to session {session:?} (waited {waited_s} s); check that both sides use the same --server and --session")]
    PeerNeverCame { session: String, waited_s: u64 },
    #[error("session {session:?} is taken: two other peers are in it; pick another session name")]
    SessionTaken { session: String },
    #[error("peer authentication failed: {rejected} packets claiming to be the peer failed the integrity check (different --secret on the two sides?)")]
    AuthFailed { rejected: u64 },
    #[error("punching failed ({strategy}, {probes} probes sent): {explanation}")]
    PunchFailed {
        strategy: &'static str,
        probes: u64,
        explanation: String,
    },
    #[error("peer authentication failed: the peer's TCP offer does not verify under our secret (is --secret the same on both sides? a rendezvous server that altered the offer fails the same way)")]
    OfferAuthFailed,
    #[error("the server {server} answered over TCP, but not as a STUN server should ({reason}); --tcp needs a server that serves STUN Binding over TCP, such as punchraw serve")]
    TcpServerBroken { server: SocketAddr, reason: String },
    #[error("peer authentication failed: session {session:?} exists at the rendezvous server with another secret (or someone else created it); check --secret on both sides or pick another session name")]
    SessionKeyMismatch { session: String },
    #[error("peer authentication failed: {rejected} registrations for session {session:?} used another secret, and no peer with this secret came within {waited_s} s; check --secret on both sides")]
    WrongSecretPeer {
        session: String,
        rejected: u32,
        waited_s: u64,
    },
    #[error("the rendezvous server {server} cannot reach its session registry (Redis is down or unreachable from it); try again shortly or use another server")]
    RegistryUnavailable { server: SocketAddr },
    #[error("rendezvous refused: {0}")]
    Rendezvous(String),
    #[error("missing privileges: {missing}; run with sudo, or grant them with `setcap cap_net_admin,cap_net_raw+ep` on the binary")]
    Privileges { missing: String },
    #[error("cannot reach the server {server} over TCP ({reason}); --tcp learns the NAT's TCP ports from TCP connections to the server, so TCP to it must work (is TCP blocked on the path?)")]
    TcpServerUnreachable { server: SocketAddr, reason: String },
    #[error("the peer punches {}, we punch {}: give --tcp on both sides or on neither", if *.peer_tcp { "TCP" } else { "UDP" }, if *.peer_tcp { "UDP" } else { "TCP" })]
    TransportMismatch { peer_tcp: bool },
    /// `--relay turn://...` with a username or password the TURN server does not accept.
    #[error("the TURN server {server} refused user {username:?}'s credentials (401 Unauthorized after authenticating, realm {realm:?}): check USER:PASS in --relay turn://USER:PASS@HOST:PORT")]
    RelayCredentials {
        server: SocketAddr,
        username: String,
        realm: String,
    },
    /// No hole opened, and the relay that would have carried the stream refused our
    /// allocation (quota, capacity, policy); `refusal` names its error code and what to do.
    #[error("no direct path, and the relay {server} that would have carried the stream refused our allocation: {refusal}")]
    RelayRefused {
        server: SocketAddr,
        refusal: String,
        #[source]
        punch: Box<Error>,
    },
    /// The relayed stream ended because the relay stopped relaying, with no direct path.
    #[error("the relay {server} stopped relaying ({why}), and there is no direct path to the peer to go on with")]
    RelayLost {
        server: SocketAddr,
        why: String,
        /// How the stream ended, unless it ended only because we closed its relayed socket
        /// on learning that the relay is gone (then QUIC's words would mislead).
        #[source]
        stream: Option<Box<Error>>,
    },
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// SIGINT (Ctrl-C) or SIGTERM arrived; the command stopped after its cleanup.
    #[error("interrupted ({signal})")]
    Interrupted { signal: Signal },
    /// What was being done when `source` happened; exits as `source` does.
    #[error("{what}")]
    Context {
        what: String,
        #[source]
        source: Box<Error>,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The signals that stop a command in an orderly way (see `crate::os::signals`). Here rather
/// than in `os` so that the error type depends on nothing below the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
}

impl Signal {
    /// The POSIX signal number (the same on every Unix for these two).
    pub fn number(self) -> u8 {
        match self {
            Signal::Int => 2,
            Signal::Term => 15,
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        })
    }
}

fn family(a: &SocketAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

impl Error {
    /// Exit codes: 1 generic, 2 usage (clap), 3 server unreachable / UDP blocked / its registry down,
    /// 4 local setup (bind, capture file), 5 peer never came, 6 session taken,
    /// 7 peer authentication failed (or the session has another secret; or the relay refused
    /// our credentials, or refused us when no hole opened), 8 punching failed within the
    /// budget, 9 the stream failed after the hole was open (or the relay carrying it died), 130 interrupted by SIGINT, 143 by SIGTERM (the shell's
    /// 128 + signal number, which a supervisor reads as "stopped by that signal").
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::ServerUnreachable { .. }
            | Error::NoRoute { .. }
            | Error::RegistryUnavailable { .. }
            | Error::TcpServerUnreachable { .. }
            | Error::TcpServerBroken { .. } => 3,
            Error::Bind { .. } | Error::Capture { .. } | Error::Privileges { .. } => 4,
            Error::PeerNeverCame { .. } => 5,
            Error::SessionTaken { .. } => 6,
            Error::AuthFailed { .. }
            | Error::OfferAuthFailed
            | Error::SessionKeyMismatch { .. }
            | Error::WrongSecretPeer { .. }
            | Error::WrongCode { .. }
            | Error::RelayCredentials { .. }
            | Error::RelayRefused { .. } => 7,
            Error::PunchFailed { .. } => 8,
            Error::Stream(e) if e.is_auth_failure() => 7,
            Error::Stream(_) | Error::RelayLost { .. } => 9,
            Error::TransportMismatch { .. } => 1,
            Error::Interrupted { signal } => 128 + signal.number(),
            Error::Context { source, .. } => source.exit_code(),
            Error::Rendezvous(_) | Error::Io { .. } => 1,
        }
    }

    /// The failure as the outcome report names it (one of
    /// [`crate::core::rendezvous::outcome::RESULTS`]): by what the exit code says.
    pub fn outcome_reason(&self) -> &'static str {
        match self.exit_code() {
            3 => "server-unreachable",
            4 => "local-setup",
            5 => "peer-never-came",
            6 => "session-taken",
            7 => "auth-failed",
            8 => "punch-failed",
            9 => "stream-failed",
            128.. => "interrupted",
            _ => "other",
        }
    }

    /// `source`, said to have happened while doing `what`.
    pub fn context(what: impl Into<String>, source: Error) -> Self {
        Error::Context {
            what: what.into(),
            source: Box::new(source),
        }
    }

    /// The message with every underlying cause, `a: b: c`, as the CLI prints it.
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cause = c.source();
        }
        s
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// What ends an encrypted stream, QUIC over a punched UDP path or TLS over a punched TCP
/// connection (`crate::transport`): one type, so the exit codes and the authentication
/// failures are decided once.
#[derive(Debug, Error)]
pub enum StreamError {
    #[error("cannot create this run's certificate: {0}")]
    Identity(String),
    #[error("cannot set up the stream: {0}")]
    Setup(String),
    #[error("peer authentication failed: {peer} presented a certificate whose fingerprint is {got}, but the authenticated punch announced {expected}")]
    PeerAuthFailed {
        peer: SocketAddr,
        expected: String,
        got: String,
    },
    #[error("peer authentication failed: {peer} refused our certificate ({reason}); it pins another fingerprint for us than the one we announced")]
    RejectedByPeer { peer: SocketAddr, reason: String },
    #[error("{peer} refused the QUIC connection: it expects us at another address (did the NAT change our mapping?)")]
    Refused { peer: SocketAddr },
    #[error("{proto} handshake with {peer} timed out after {secs} s{}", if hint.is_empty() { String::new() } else { format!(": {hint}") })]
    HandshakeTimeout {
        proto: &'static str,
        peer: SocketAddr,
        secs: f64,
        hint: String,
    },
    #[error("{proto} handshake with {peer} failed: {reason}")]
    Handshake {
        proto: &'static str,
        peer: SocketAddr,
        reason: String,
    },
    #[error("connection to {peer} lost: {reason}")]
    ConnectionLost { peer: SocketAddr, reason: String },
    #[error("{peer} closed the connection: {reason}")]
    ClosedByPeer { peer: SocketAddr, reason: String },
    #[error("{peer} stopped reading our data before its end (its output failed?)")]
    PeerStopped { peer: SocketAddr },
    #[error("{peer} did not follow the stream protocol: {reason}")]
    Protocol { peer: SocketAddr, reason: String },
    #[error("cannot read input")]
    Input(#[source] std::io::Error),
    #[error("cannot write output")]
    Output(#[source] std::io::Error),
    /// Our side was asked to stop (SIGINT, SIGTERM) and closed the stream; the caller knows
    /// which signal it was and maps this to its own [`Error::Interrupted`].
    #[error("interrupted")]
    Interrupted,
}

impl StreamError {
    /// Either side's pin check failed: the two peers disagree about who the other is, which
    /// is a security event rather than a network problem.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            StreamError::PeerAuthFailed { .. } | StreamError::RejectedByPeer { .. }
        )
    }
}

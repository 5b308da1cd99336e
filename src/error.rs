//! The library's typed errors. Each says what happened and what the user can do; the CLI
//! maps them to distinct exit codes.

use std::net::SocketAddr;
use thiserror::Error;

/// Every way a punchraw command can fail. The `#[error]` text is the message the user reads;
/// [`Error::exit_code`] gives the CLI's exit code for each variant.
#[derive(Debug, Error)]
pub enum Error {
    /// A local socket or listener could not be bound (a server's ports, the metrics endpoint or a
    /// client socket). Exit code 4.
    #[error(
        "cannot bind {addr} (is another server running there, or is the address not on this host?)"
    )]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// No answer from a STUN or rendezvous server over UDP within the wait: the server is down or
    /// unreachable, or UDP is blocked on the path. Exit code 3.
    #[error("no STUN answer from {server} over UDP within {waited_ms} ms: the server is down, unreachable, or UDP is blocked on the path")]
    ServerUnreachable {
        /// The server that did not answer.
        server: SocketAddr,
        /// How long we waited, in milliseconds.
        waited_ms: u64,
    },
    /// `connect --code`: the two sides did not derive the same key.
    #[error("wrong code: the other side of session {session:?} typed another pairing code (or someone else tried to guess it); this code is used up, so start again with a new one (punchraw connect --code)")]
    WrongCode {
        /// The rendezvous session the pairing ran in.
        session: String,
    },
    /// The host has no route (or no address) of the server's family.
    #[error("this host has no {} route to the server {server} ({error}): it may have no {} address; give the server's {} address or a name that has one", family(server), family(server), if server.is_ipv4() { "IPv6" } else { "IPv4" })]
    NoRoute {
        /// The server we tried to reach.
        server: SocketAddr,
        /// The operating system's error on connecting to it.
        error: std::io::Error,
    },
    /// The packet capture file could not be created or written. Exit code 4.
    #[error("cannot write capture {path}")]
    Capture {
        /// The capture file.
        path: std::path::PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The other peer did not join the rendezvous session before the deadline. Exit code 5.
    #[error("the other peer never came to session {session:?} (waited {waited_s} s); check that both sides use the same --server and --session")]
    PeerNeverCame {
        /// The session name (`--session`).
        session: String,
        /// How long we waited for the peer, in seconds.
        waited_s: u64,
    },
    /// The rendezvous session already holds two other peers. Exit code 6.
    #[error("session {session:?} is taken: two other peers are in it; pick another session name")]
    SessionTaken {
        /// The session name (`--session`).
        session: String,
    },
    /// Packets claiming to come from the peer failed the punch's integrity check and no
    /// authentic one arrived: most likely the two sides use different secrets. Exit code 7.
    #[error("peer authentication failed: {rejected} packets claiming to be the peer failed the integrity check (different --secret on the two sides?)")]
    AuthFailed {
        /// Packets that failed MESSAGE-INTEGRITY-SHA256 or carried another certificate.
        rejected: u64,
    },
    /// No hole opened within the punching budget (or punching was skipped because it could not
    /// work). Exit code 8.
    #[error("punching failed ({strategy}, {probes} probes sent): {explanation}")]
    PunchFailed {
        /// The punch strategy tried (`direct`, `predict`, `sweep` or `mapped`), or `none` when no
        /// punch was tried.
        strategy: &'static str,
        /// Probes sent: UDP datagrams or TCP connection attempts.
        probes: u64,
        /// Why it most likely failed, given both sides' NAT behaviour, and what might help.
        explanation: String,
    },
    /// The peer's TCP offer, carried by the rendezvous server, does not verify under our secret.
    /// Exit code 7.
    #[error("peer authentication failed: the peer's TCP offer does not verify under our secret (is --secret the same on both sides? a rendezvous server that altered the offer fails the same way)")]
    OfferAuthFailed,
    /// With `--tcp`, the server accepted a TCP connection but did not answer STUN Binding over it
    /// as it should. Exit code 3.
    #[error("the server {server} answered over TCP, but not as a STUN server should ({reason}); --tcp needs a server that serves STUN Binding over TCP, such as punchraw serve")]
    TcpServerBroken {
        /// The server we connected to.
        server: SocketAddr,
        /// What was wrong with its answer.
        reason: String,
    },
    /// The rendezvous server refused us: the session exists there under another secret.
    /// Exit code 7.
    #[error("peer authentication failed: session {session:?} exists at the rendezvous server with another secret (or someone else created it); check --secret on both sides or pick another session name")]
    SessionKeyMismatch {
        /// The session name (`--session`).
        session: String,
    },
    /// Registrations for the session came with another secret, and no peer with ours came before
    /// the deadline. Exit code 7.
    #[error("peer authentication failed: {rejected} registrations for session {session:?} used another secret, and no peer with this secret came within {waited_s} s; check --secret on both sides")]
    WrongSecretPeer {
        /// The session name (`--session`).
        session: String,
        /// How many registrations were rejected for using another secret.
        rejected: u32,
        /// How long we waited for the peer, in seconds.
        waited_s: u64,
    },
    /// The rendezvous server cannot reach its session registry (Redis). Exit code 3.
    #[error("the rendezvous server {server} cannot reach its session registry (Redis is down or unreachable from it); try again shortly or use another server")]
    RegistryUnavailable {
        /// The rendezvous server that reported it.
        server: SocketAddr,
    },
    /// The rendezvous (or the pairing) failed for a reason with no variant of its own; holds the
    /// server's message. Exit code 1.
    #[error("rendezvous refused: {0}")]
    Rendezvous(String),
    /// The TCP punch lacks the capabilities it needs (CAP_NET_ADMIN, CAP_NET_RAW) or may not
    /// manage nftables rules. Exit code 4.
    #[error("missing privileges: {missing}; run with sudo, or grant them with `setcap cap_net_admin,cap_net_raw+ep` on the binary")]
    Privileges {
        /// What is missing, worded for the user.
        missing: String,
    },
    /// With `--tcp`, no TCP connection to the server could be made, and the TCP port prediction
    /// needs one. Exit code 3.
    #[error("cannot reach the server {server} over TCP ({reason}); --tcp learns the NAT's TCP ports from TCP connections to the server, so TCP to it must work (is TCP blocked on the path?)")]
    TcpServerUnreachable {
        /// The server we tried to connect to.
        server: SocketAddr,
        /// The connection error.
        reason: String,
    },
    /// One side gave `--tcp` and the other did not, so they would punch different transports.
    /// Exit code 1.
    #[error("the peer punches {}, we punch {}: give --tcp on both sides or on neither", if *.peer_tcp { "TCP" } else { "UDP" }, if *.peer_tcp { "UDP" } else { "TCP" })]
    TransportMismatch {
        /// Whether the peer punches TCP (then we punch UDP).
        peer_tcp: bool,
    },
    /// `--relay turn://...` with a username or password the TURN server does not accept.
    #[error("the TURN server {server} refused user {username:?}'s credentials (401 Unauthorized after authenticating, realm {realm:?}): check USER:PASS in --relay turn://USER:PASS@HOST:PORT")]
    RelayCredentials {
        /// The TURN server from `--relay`.
        server: SocketAddr,
        /// The username we authenticated as.
        username: String,
        /// The realm the server named in its challenge.
        realm: String,
    },
    /// No hole opened, and the relay that would have carried the stream refused our
    /// allocation (quota, capacity, policy); `refusal` names its error code and what to do.
    #[error("no direct path, and the relay {server} that would have carried the stream refused our allocation: {refusal}")]
    RelayRefused {
        /// The TURN server that refused the allocation.
        server: SocketAddr,
        /// Its refusal: the error code, its meaning and what to do.
        refusal: String,
        /// The punching failure that made the relay necessary.
        #[source]
        punch: Box<Error>,
    },
    /// The relayed stream ended because the relay stopped relaying, with no direct path.
    #[error("the relay {server} stopped relaying ({why}), and there is no direct path to the peer to go on with")]
    RelayLost {
        /// The TURN server that carried the stream.
        server: SocketAddr,
        /// Why the relay is taken to have stopped (its host refuses our datagrams, or a Refresh
        /// failed).
        why: String,
        /// How the stream ended, unless it ended only because we closed its relayed socket
        /// on learning that the relay is gone (then QUIC's words would mislead).
        #[source]
        stream: Option<Box<Error>>,
    },
    /// The encrypted stream failed after the hole was open. Exit code 9, or 7 when the peers'
    /// certificate pins disagree.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// SIGINT (Ctrl-C) or SIGTERM arrived; the command stopped after its cleanup.
    #[error("interrupted ({signal})")]
    Interrupted {
        /// The signal that arrived; the exit code is 128 plus its number.
        signal: Signal,
    },
    /// What was being done when `source` happened; exits as `source` does.
    #[error("{what}")]
    Context {
        /// What was being done; the message this error shows.
        what: String,
        /// The error that happened meanwhile.
        #[source]
        source: Box<Error>,
    },
    /// An I/O error with no variant of its own, said with what was being done. Exit code 1.
    #[error("{what}")]
    Io {
        /// What was being done; the message this error shows.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// The signals that stop a command in an orderly way (see `crate::os::signals`). Here rather
/// than in `os` so that the error type depends on nothing below the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (2): Ctrl-C at the terminal.
    Int,
    /// SIGTERM (15): an orderly stop, as a service manager sends.
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

    /// An [`Error::Io`]: `source`, said to have happened while doing `what`.
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
    /// This run's self-signed certificate, whose fingerprint the punch announces, could not be
    /// created; holds the reason.
    #[error("cannot create this run's certificate: {0}")]
    Identity(String),
    /// The local side of the stream could not be set up (TLS or QUIC configuration, the async
    /// runtime, the input and output threads, the socket); holds what and why.
    #[error("cannot set up the stream: {0}")]
    Setup(String),
    /// The peer presented a certificate other than the one the authenticated punch announced:
    /// someone else answered. Exit code 7.
    #[error("peer authentication failed: {peer} presented a certificate whose fingerprint is {got}, but the authenticated punch announced {expected}")]
    PeerAuthFailed {
        /// The address the certificate came from.
        peer: SocketAddr,
        /// The announced certificate fingerprint, hex.
        expected: String,
        /// The presented certificate's fingerprint, hex.
        got: String,
    },
    /// The peer refused our certificate: it pins another fingerprint for us than we announced.
    /// Exit code 7.
    #[error("peer authentication failed: {peer} refused our certificate ({reason}); it pins another fingerprint for us than the one we announced")]
    RejectedByPeer {
        /// The peer that refused us.
        peer: SocketAddr,
        /// The TLS alert or QUIC close reason it sent.
        reason: String,
    },
    /// The peer refused the QUIC connection (CONNECTION_REFUSED): it expects us at another
    /// address, perhaps because our NAT mapping changed.
    #[error("{peer} refused the QUIC connection: it expects us at another address (did the NAT change our mapping?)")]
    Refused {
        /// The peer that refused.
        peer: SocketAddr,
    },
    /// The TLS or QUIC handshake did not finish within its timeout.
    #[error("{proto} handshake with {peer} timed out after {secs} s{}", if hint.is_empty() { String::new() } else { format!(": {hint}") })]
    HandshakeTimeout {
        /// `"QUIC"` or `"TLS"`.
        proto: &'static str,
        /// The peer the handshake was with.
        peer: SocketAddr,
        /// The timeout, in seconds.
        secs: f64,
        /// What the silence most likely means, or empty when there is no better guess.
        hint: String,
    },
    /// The TLS or QUIC handshake failed for a reason other than authentication or a timeout.
    #[error("{proto} handshake with {peer} failed: {reason}")]
    Handshake {
        /// `"QUIC"` or `"TLS"`.
        proto: &'static str,
        /// The peer the handshake was with.
        peer: SocketAddr,
        /// What went wrong, as the TLS or QUIC library or the socket reported it.
        reason: String,
    },
    /// The established connection broke: silence past QUIC's idle timeout, a reset, or a TCP
    /// connection cut without a TLS close.
    #[error("connection to {peer} lost: {reason}")]
    ConnectionLost {
        /// The peer at the other end.
        peer: SocketAddr,
        /// How it was lost.
        reason: String,
    },
    /// The peer closed the connection before the stream ended.
    #[error("{peer} closed the connection: {reason}")]
    ClosedByPeer {
        /// The peer that closed it.
        peer: SocketAddr,
        /// The reason it gave.
        reason: String,
    },
    /// The peer stopped reading our data before its end, most likely because its output failed.
    #[error("{peer} stopped reading our data before its end (its output failed?)")]
    PeerStopped {
        /// The peer that stopped reading.
        peer: SocketAddr,
    },
    /// The peer broke the stream protocol, for instance by ending the connection before all of
    /// our data was delivered.
    #[error("{peer} did not follow the stream protocol: {reason}")]
    Protocol {
        /// The peer at fault.
        peer: SocketAddr,
        /// What it did wrong.
        reason: String,
    },
    /// Reading the local input, the data to send to the peer, failed.
    #[error("cannot read input")]
    Input(#[source] std::io::Error),
    /// Writing the peer's data to the local output failed.
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

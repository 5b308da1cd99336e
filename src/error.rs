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
    #[error("cannot write capture {path}")]
    Capture {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Exit codes: 1 generic, 2 usage (clap), 3 server unreachable / UDP blocked,
    /// 4 local setup (bind, capture file).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::ServerUnreachable { .. } => 3,
            Error::Bind { .. } | Error::Capture { .. } => 4,
            Error::Io { .. } => 1,
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

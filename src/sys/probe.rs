//! Drives the classifier with real UDP sockets for `punchraw probe`.
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub server: SocketAddr,
    pub json: bool,
    pub tcp: bool,
    pub lifetime_max: Option<Duration>,
    pub bind: Option<IpAddr>,
    pub capture: Option<PathBuf>,
}

pub fn run(_cfg: ProbeConfig) -> anyhow::Result<ExitCode> {
    todo!()
}

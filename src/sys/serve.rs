//! Socket loops for `punchraw serve`.
use crate::server::ServerConfig;
use std::process::ExitCode;

pub fn run(_cfg: ServerConfig) -> Result<ExitCode, crate::Error> {
    todo!()
}

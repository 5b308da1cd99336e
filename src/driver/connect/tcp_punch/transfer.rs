//! The stream over the punched TCP connection: TLS between the user's bytes and the peer.

use super::{Connection, Punched};
use crate::os::signals::Shutdown;
use crate::transport::tls;
use crate::transport::StreamStats;
use crate::Error;
use std::io;
use std::time::Duration;

/// Carries the user's bytes over the punched connection.
pub fn transfer(
    p: Punched,
    input: impl io::Read + Send + 'static,
    output: impl io::Write + Send + 'static,
    shutdown: &Shutdown,
) -> Result<StreamStats, Error> {
    let Punched {
        runtime,
        conn:
            Connection {
                stream,
                role,
                remote,
                ..
            },
    } = p;
    runtime.block_on(async {
        let work = tls::transfer(stream, role, remote, input, output);
        tokio::pin!(work);
        loop {
            tokio::select! {
                r = &mut work => return r.map_err(Error::from),
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if shutdown.requested() {
                        return Err(shutdown.interrupted());
                    }
                }
            }
        }
    })
}

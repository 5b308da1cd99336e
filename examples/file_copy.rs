//! Copies a file to a peer behind another NAT, with punchraw embedded (the `punchraw::api`
//! connect): run `send` on one machine and `receive` on the other, with the same session
//! and secret, both pointing at a `punchraw serve`.
//!
//! ```sh
//! cargo run --example file_copy -- send    rendezvous.example.net team-42 "$SECRET" big.iso
//! cargo run --example file_copy -- receive rendezvous.example.net team-42 "$SECRET" copy.iso
//! ```
//!
//! Needs what `punchraw connect` needs (root, or CAP_NET_RAW on the binary).

use punchraw::api::Connect;
use std::process::ExitCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, server, session, secret, path] = &args[..] else {
        eprintln!("usage: file_copy send|receive SERVER SESSION SECRET FILE");
        return ExitCode::from(2);
    };
    match copy(mode, server, session, secret, path).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("file_copy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn copy(
    mode: &str,
    server: &str,
    session: &str,
    secret: &str,
    path: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = Connect::new(server)
        .session(session, secret)
        .connect()
        .await?;
    eprintln!(
        "file_copy: connected to {} over {} ({} path)",
        conn.peer, conn.transport, conn.path
    );
    match mode {
        "send" => {
            let mut file = tokio::fs::File::open(path).await?;
            tokio::io::copy(&mut file, &mut conn.stream).await?;
            conn.stream.shutdown().await?;
            // The receiver sends nothing; its end of the stream says it has everything.
            let mut rest = Vec::new();
            conn.stream.read_to_end(&mut rest).await?;
        }
        "receive" => {
            conn.stream.shutdown().await?;
            let mut file = tokio::fs::File::create(path).await?;
            tokio::io::copy(&mut conn.stream, &mut file).await?;
            file.flush().await?;
        }
        _ => return Err(format!("unknown mode {mode:?}: send or receive").into()),
    }
    let report = conn.finish().await?;
    eprintln!(
        "file_copy: done, {} bytes sent, {} received, path {}",
        report.bytes_sent,
        report.bytes_received,
        report.path.unwrap_or("none")
    );
    Ok(())
}

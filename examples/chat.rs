//! A two-person chat through both NATs, with punchraw embedded (`punchraw::api`): every line
//! typed goes to the peer with your name in front, every line the peer types is printed.
//! End with Ctrl-D; the chat ends when both sides have.
//!
//! ```sh
//! cargo run --example chat -- rendezvous.example.net team-42 "$SECRET" alice
//! cargo run --example chat -- rendezvous.example.net team-42 "$SECRET" bob
//! ```

use punchraw::api::Connect;
use std::io::BufRead;
use std::process::ExitCode;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, session, secret, name] = &args[..] else {
        eprintln!("usage: chat SERVER SESSION SECRET NAME");
        return ExitCode::from(2);
    };
    match chat(server, session, secret, name).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn chat(
    server: &str,
    session: &str,
    secret: &str,
    name: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = Connect::new(server)
        .session(session, secret)
        .connect()
        .await?;
    eprintln!(
        "chat: connected to {} ({} path); type away",
        conn.peer, conn.path
    );
    let (read, mut write) = conn.stream.split();
    // Lines typed, from a thread: stdin blocks.
    let (tx, mut typed) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let name = name.to_string();
    let sending = async move {
        while let Some(line) = typed.recv().await {
            write
                .write_all(format!("{name}: {line}\n").as_bytes())
                .await?;
        }
        write.shutdown().await
    };
    let receiving = async move {
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await? {
            println!("{line}");
        }
        Ok::<(), std::io::Error>(())
    };
    let (sent, received) = tokio::join!(sending, receiving);
    sent?;
    received?;
    // What we wrote may still be on its way: the connection ends when the peer has it.
    conn.finish().await?;
    Ok(())
}

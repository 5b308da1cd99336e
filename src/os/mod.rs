//! The operating system: sockets and batched I/O, AF_PACKET capture with BPF, nft rules,
//! capabilities and privilege dropping, a pollable queue between threads, hop measurement, signals, capture files. The only
//! module allowed `unsafe`; every block says why it is sound in a `// SAFETY:` comment.

/// A local stream socket pair end: how an embedder's program and the connect driver hand
/// the stream's bytes to each other (`crate::api`).
pub use std::os::unix::net::UnixStream;
pub mod capture;
pub mod memory;
pub mod mmsg;
pub mod nft;
pub mod packet;
pub mod poll;
pub mod privileges;
pub mod queue;
pub mod rawtcp;
pub mod route;
pub mod signals;
pub mod tcp_queue;
pub mod tcp_repair;
pub mod ttl;
pub mod udp;

/// CPU time this process has used so far, all threads, user and system (getrusage(2));
/// `None` where the kernel does not say.
pub fn cpu_time() -> Option<std::time::Duration> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let micros = |t: nix::sys::time::TimeVal| -> Option<u64> {
        Some(u64::try_from(t.tv_sec()).ok()? * 1_000_000 + u64::try_from(t.tv_usec()).ok()?)
    };
    Some(std::time::Duration::from_micros(
        micros(u.user_time())? + micros(u.system_time())?,
    ))
}

//! The nftables rules a TCP punch needs while it runs, in a table of their own that is always
//! removed: when the guard is dropped (success, error, panic unwinding, Ctrl-C and SIGTERM,
//! which end the punch loop), and at the next start for tables whose process is gone (after
//! SIGKILL).
//!
//! Why the rules: while the punch runs, SYN-ACKs and SYNs may reach this host on 4-tuples no
//! socket owns any more (an attempt closed, a probe abandoned). The kernel would answer them
//! with RST, and that RST, passing our NAT, would end the conntrack entry the punch relies on
//! (RFC 5382 section 5.2 expects NATs to let RSTs close a mapping). ICMP time-exceeded answers
//! to low-TTL priming SYNs come back as RELATED and would abort the SYN_SENT socket
//! (EHOSTUNREACH), so they are dropped on the host too, and so is ICMP destination-unreachable
//! from the peer (see [`PunchRules::install`]).
//!
//! The rules are applied with the `nft` command (Debian package `nftables`).

use crate::Error;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// Tables of ours are named this plus the owning process id.
const PREFIX: &str = "punchraw_";

/// Fails unless `nft` runs and may read this namespace's ruleset: checked before the
/// rendezvous, so that a missing package or privilege is told before the peer is kept waiting.
pub fn check_usable() -> Result<(), Error> {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Error::io(
                "cannot run `nft` (install the nftables package: apt-get install nftables)",
                e,
            )
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Privileges {
            missing: format!(
                "`nft` may not manage rules here ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// Runs `nft -f -` on `script`; `what` names the change for the error message.
fn nft(script: &str, what: &str) -> Result<(), Error> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::io(
                "cannot run `nft` (install the nftables package: apt-get install nftables)",
                e,
            )
        })?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes())
        .map_err(|e| Error::io("cannot talk to `nft`", e))?;
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("cannot run `nft`", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::io(
            format!(
                "`nft` refused to {what}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            std::io::Error::other("nft failed"),
        ))
    }
}

/// The punch's rules; dropping it removes them.
#[derive(Debug)]
pub struct PunchRules {
    table: String,
    removed: bool,
}

impl PunchRules {
    /// Drops this host's RSTs toward each of `peers` and ICMP destination-unreachable from
    /// them, and
    /// (with `drop_time_exceeded`) ICMP time-exceeded toward this host, until the guard is
    /// dropped.
    ///
    /// A NAT that answers an early SYN with ICMP port-unreachable (instead of the silence
    /// RFC 5382 REQ-4 asks for) does not end its own connection tracking entry, since ICMP
    /// errors do not change TCP state there; it only makes our socket give up
    /// (port-unreachable is a hard error that aborts the connection, RFC 1122 section
    /// 4.2.3.9). Dropping the error on this host keeps the socket in SYN-SENT, so the peer's
    /// SYN, which our NAT still lets in, completes it. The AF_PACKET watcher sees the error
    /// before netfilter and still reports it.
    pub fn install(peers: &[IpAddr], drop_time_exceeded: bool) -> Result<Self, Error> {
        remove_stale();
        let table = format!("{PREFIX}{}", std::process::id());
        let mut script = format!(
            "add table inet {table}\n\
             add chain inet {table} out {{ type filter hook output priority 0; policy accept; }}\n\
             add chain inet {table} in {{ type filter hook input priority 0; policy accept; }}\n"
        );
        for peer in peers {
            let (family, icmp) = if peer.is_ipv4() {
                // Not fragmentation-needed: path MTU discovery must go on working.
                (
                    "ip",
                    "icmp type destination-unreachable icmp code != frag-needed",
                )
            } else {
                // Not packet-too-big (a type of its own in ICMPv6): the same reason.
                ("ip6", "icmpv6 type destination-unreachable")
            };
            script.push_str(&format!(
                "add rule inet {table} out {family} daddr {peer} tcp flags & rst == rst counter drop\n\
                 add rule inet {table} in {family} saddr {peer} {icmp} counter drop\n"
            ));
        }
        if drop_time_exceeded {
            script.push_str(&format!(
                "add rule inet {table} in icmp type time-exceeded counter drop\n\
                 add rule inet {table} in icmpv6 type time-exceeded counter drop\n"
            ));
        }
        // Tear down a half-made table rather than leave it.
        let guard = PunchRules {
            table,
            removed: false,
        };
        nft(&script, "install the punch rules")?;
        Ok(guard)
    }

    /// The name of our table in the `inet` family (`punchraw_` and our process id), for
    /// status lines and for removing it by hand.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Removes the rules now (also done on drop).
    pub fn remove(mut self) -> Result<(), Error> {
        self.removed = true;
        delete_table(&self.table)
    }
}

impl Drop for PunchRules {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = delete_table(&self.table) {
                tracing::warn!("{e}; remove it with: nft delete table inet {}", self.table);
            }
        }
    }
}

fn delete_table(table: &str) -> Result<(), Error> {
    // `destroy` would not fail on a missing table, but needs nftables >= 1.0.8; a missing
    // table is told from a real failure by listing, only when the delete failed: a second
    // `nft` run on every punch's way to its stream costs about 10 ms.
    match nft(
        &format!("delete table inet {table}\n"),
        &format!("remove table inet {table}"),
    ) {
        Err(_) if !list_tables().iter().any(|t| t == table) => Ok(()),
        r => r,
    }
}

fn list_tables() -> Vec<String> {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("table inet "))
        .filter(|t| t.starts_with(PREFIX))
        .map(str::to_string)
        .collect()
}

/// Removes punch tables whose process no longer exists (it was killed before it could).
pub fn remove_stale() {
    for t in list_tables() {
        let Some(pid) = t.strip_prefix(PREFIX).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = nft(
                &format!("delete table inet {t}\n"),
                "remove a stale punch table",
            );
        }
    }
}

/// Tables of punchraw's present in this network namespace (for tests and diagnostics).
pub fn tables() -> Vec<String> {
    list_tables()
}

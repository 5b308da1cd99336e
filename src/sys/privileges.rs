//! What the process may do, checked up front so a missing privilege is named before any work
//! starts rather than surfacing as an EPERM halfway through a punch.

/// Linux capability numbers (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_NET_RAW: u32 = 13;

/// The effective capability set, from /proc (no syscall needed to read it).
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn has(cap: u32) -> bool {
    effective() & (1u64 << cap) != 0
}

/// The capabilities in `needed` (number, name, what for) that the process lacks, as one
/// sentence per capability; empty when all are there.
pub fn missing(needed: &[(u32, &str, &str)]) -> Vec<String> {
    needed
        .iter()
        .filter(|(cap, _, _)| !has(*cap))
        .map(|(_, name, why)| format!("{name} ({why})"))
        .collect()
}

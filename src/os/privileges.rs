//! What the process may do, checked up front so a missing privilege is named before any work
//! starts rather than surfacing as an EPERM halfway through a punch.

/// Linux capability numbers (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
/// Raw and packet sockets: the AF_PACKET watcher and the raw SYN engine.
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

/// Whether capability number `cap` is in the effective set.
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

/// `_LINUX_CAPABILITY_VERSION_3` (linux/capability.h): 64-bit sets in two 32-bit halves.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// What [`drop_except`] did, for the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The user switched to (from SUDO_UID), when running under sudo.
    pub user: Option<u32>,
    /// The capability numbers still held (those asked to be kept).
    pub kept: Vec<u32>,
}

/// Ambient capabilities (Linux 4.3) are what lets `nft`, run by us, inherit ours.
fn ambient_supported() -> bool {
    // SAFETY: prctl with integer arguments only; PR_CAP_AMBIENT_IS_SET reads our own state.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_IS_SET,
            libc::c_ulong::from(CAP_NET_ADMIN),
            0,
            0,
        ) >= 0
    }
}

/// The thread's (effective, permitted, inheritable) sets.
fn get_sets() -> std::io::Result<(u64, u64, u64)> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) reads the header and writes two data structs of exactly the layout
    // declared above (version 3); both are alive and exclusively ours for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

fn set_sets(effective: u64, permitted: u64, inheritable: u64) -> std::io::Result<()> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let half = |v: u64, hi: bool| if hi { (v >> 32) as u32 } else { v as u32 };
    let data = [false, true].map(|hi| CapData {
        effective: half(effective, hi),
        permitted: half(permitted, hi),
        inheritable: half(inheritable, hi),
    });
    // SAFETY: capset(2) reads one header and two data structs of exactly the layout
    // declared above (version 3), both alive for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn raise_ambient(keep: &[u32]) -> std::io::Result<()> {
    for &cap in keep {
        // SAFETY: prctl with integer arguments only; raising an ambient capability that is
        // permitted and inheritable (set by the caller) is allowed for any process.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE,
                libc::c_ulong::from(cap),
                0,
                0,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes `caps` (those we have) pass to the programs we run. A root process's children get
/// every capability anyway; one that holds them from file capabilities (`setcap` on the
/// binary, run by a normal user) passes none unless they are inheritable and ambient.
pub fn lend_to_children(caps: &[u32]) -> std::io::Result<()> {
    let mask: u64 = caps.iter().fold(0, |m, c| m | (1u64 << c));
    let (eff, perm, inh) = get_sets()?;
    let lend = mask & perm;
    if lend & !inh != 0 {
        set_sets(eff, perm, inh | lend)?;
    }
    if ambient_supported() {
        let have: Vec<u32> = caps
            .iter()
            .copied()
            .filter(|c| lend & (1u64 << c) != 0)
            .collect();
        raise_ambient(&have)?;
    }
    Ok(())
}

/// Gives up root as far as the rest of the run allows: every capability except `keep`, and,
/// under sudo, the root user itself (back to SUDO_UID/SUDO_GID). The kept capabilities are
/// also raised as ambient ones, so that a program we run later (`nft`, to remove our rules)
/// still has them after the user switch; where the kernel has no ambient capabilities the
/// user stays root (with only `keep`), since otherwise that program would run without them.
pub fn drop_except(keep: &[u32]) -> std::io::Result<Dropped> {
    let mask: u64 = keep.iter().fold(0, |m, c| m | (1u64 << c));
    let sudo = |var: &str| std::env::var(var).ok().and_then(|v| v.parse::<u32>().ok());
    let mut user = None;
    if nix::unistd::getuid().is_root() && ambient_supported() {
        if let (Some(uid), Some(gid)) = (sudo("SUDO_UID"), sudo("SUDO_GID")) {
            if uid != 0 {
                // SAFETY: prctl(PR_SET_KEEPCAPS) takes plain integers and touches no memory
                // of ours; it keeps the permitted set across the setuid below.
                if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                nix::unistd::setgroups(&[]).map_err(std::io::Error::from)?;
                nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))
                    .map_err(std::io::Error::from)?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))
                    .map_err(std::io::Error::from)?;
                user = Some(uid);
            }
        }
    }
    let (_, perm, _) = get_sets()?;
    let mask = mask & perm;
    set_sets(mask, mask, mask)?;
    if ambient_supported() {
        raise_ambient(keep)?;
    }
    Ok(Dropped {
        user,
        kept: keep.to_vec(),
    })
}

/// Raises the soft limit on open descriptors toward `want` (never past the hard limit);
/// best effort, as a lower limit only shortens what needs many sockets.
pub fn raise_file_limit(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = want.min(hard);
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_in_a_child_keeps_only_what_was_asked() {
        // Capabilities are per thread; a forked child keeps the test process intact.
        if !has(CAP_NET_ADMIN) {
            eprintln!("skipped: needs CAP_NET_ADMIN");
            return;
        }
        // SAFETY: the child only calls async-signal-safe-enough code paths of its own and
        // exits with _exit; the test harness's other threads are not touched by the child.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                let ok = drop_except(&[CAP_NET_ADMIN]).is_ok()
                    && has(CAP_NET_ADMIN)
                    && !has(CAP_NET_RAW)
                    && !has(0);
                // SAFETY: _exit ends the child without running the parent's destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).expect("waitpid");
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}

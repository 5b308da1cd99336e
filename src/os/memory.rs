//! The C library's heap, tuned for a process that moves a stream.
//!
//! A stream at hundreds of MiB/s allocates and frees buffers of 64-256 KiB at that rate on
//! one thread and frees many of them on another (input chunks held until the peer
//! acknowledges them; received datagrams, copied out of a receive batch, until the output
//! thread has written them). glibc's defaults serve a request above 128 KiB with a fresh
//! `mmap` and give memory at the top of a heap back to the kernel once more than 128 KiB of it
//! is free, so at that rate the same pages went back and forth: every new buffer was a run of
//! page faults, each on a zeroed page. A profile of the lab's clean 0 ms path (two
//! port-restricted cones, 256 MiB, 2026-12-07) had the receiver's main thread in page faults
//! for 12% of its time and the sender's for 9%. Keeping the freed memory: `tools/bench-stream.sh`
//! there, 4 runs, QUIC 505 -> 545 MiB/s (medians) and both ends' CPU 3.81 -> 3.48 s per GiB;
//! the TLS stream's numbers stayed within their noise (755 / 709 MiB/s, 2.37 / 2.31 s).
//!
//! What is kept is bounded: at most [`TRIM_THRESHOLD`] of freed memory per heap before glibc
//! returns it, which is well below the stream's own flow-control window that it holds.

/// Requests at least this large get a mapping of their own: above every buffer a stream
/// allocates over and over (the input's 256 KiB chunks, a receive batch's 64 KiB datagrams),
/// below the windows that are allocated once.
pub const MMAP_THRESHOLD: usize = 1024 * 1024;
/// Freed memory at the top of a heap is kept up to this much.
pub const TRIM_THRESHOLD: usize = 64 * 1024 * 1024;
/// Each time a heap grows, it grows by this much more than asked, so the next buffers find
/// their pages already there.
pub const TOP_PAD: usize = 16 * 1024 * 1024;

/// Sets the thresholds above for the whole process; `false` where the C library is not glibc
/// or refused one of them. Meant for the binary (an embedder's program chooses its own
/// allocator policy), before the stream starts.
pub fn keep_freed_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set = |param: libc::c_int, value: usize| -> bool {
            let Ok(value) = libc::c_int::try_from(value) else {
                return false;
            };
            // SAFETY: mallopt(3) only changes the allocator's parameters, under the arena
            // lock; it takes plain integers and touches no memory of ours.
            unsafe { libc::mallopt(param, value) == 1 }
        };
        // All three, whatever one of them answered.
        let mmap = set(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        let trim = set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        let pad = set(libc::M_TOP_PAD, TOP_PAD);
        mmap && trim && pad
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Chunks the allocator currently holds as mappings of their own (`mallinfo2`'s `hblks`);
/// `None` where the C library is not glibc. What shows that [`keep_freed_heap`] took effect.
pub fn mapped_chunks() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2(3) returns a struct by value, filled under the allocator's locks.
        Some(unsafe { libc::mallinfo2() }.hblks)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

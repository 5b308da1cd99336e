//! The heap tuning of `punchraw connect` (`os::memory`): after it, buffers of the sizes a
//! stream allocates over and over come from the heap instead of a mapping of their own each,
//! so freeing one and allocating the next reuses pages already there. One test in this file,
//! so that no other test of the process allocates meanwhile (the counters are process-wide).

use punchraw::os::memory;
use std::hint::black_box;

#[test]
fn the_streams_buffers_stay_on_the_heap() {
    let Some(before) = memory::mapped_chunks() else {
        eprintln!("skipped: the C library is not glibc");
        return;
    };
    assert!(memory::keep_freed_heap(), "glibc took the thresholds");
    // Larger than any threshold glibc would have reached by itself (it raises its own to the
    // size of the largest mapped chunk freed so far, none this size here), below ours.
    let size = memory::MMAP_THRESHOLD * 3 / 4;
    let chunks: Vec<Vec<u8>> = (0..4).map(|_| black_box(vec![1u8; size])).collect();
    assert_eq!(
        memory::mapped_chunks(),
        Some(before),
        "no mapping per buffer"
    );
    drop(chunks);
}

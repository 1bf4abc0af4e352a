//! The daemon's malloc setting (`checkpoint::writer::fix_mmap_threshold`):
//! a large block gets its own mapping even after a larger one was freed,
//! which under glibc's default raises the threshold above it and sends it
//! into a fragmenting arena (the soak's RSS climb, docs/PERFORMANCE.md).
//! One test in its own process: the setting is the whole process's.

/// Whether a block of `size` bytes from malloc lies in a mapping of its
/// own: one that starts right below it (glibc's 16-byte chunk header)
/// and holds it (`/proc/self/maps`, read while the block is held).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn own_mapping(size: usize) -> bool {
    // SAFETY: plain malloc/free of a block this function owns.
    let block = unsafe { libc::malloc(size) };
    assert!(!block.is_null());
    let at = block as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    // SAFETY: allocated above, freed once.
    unsafe { libc::free(block) };
    maps.lines().any(|line| {
        let range = line.split_whitespace().next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (usize::from_str_radix(start, 16).unwrap(), usize::from_str_radix(end, 16).unwrap());
        start + 16 == at && end - start >= size
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_large_block_is_mapped_even_after_a_larger_one_was_freed() {
    use tapewatch::checkpoint::writer::{MMAP_THRESHOLD_BYTES, fix_mmap_threshold};
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return; // the environment's setting wins over the call and glibc's default
    }
    // First, as `main` does: the arenas have held no large block yet (a
    // free block in an arena serves a request whatever the threshold).
    fix_mmap_threshold();
    let size = 3 * MMAP_THRESHOLD_BYTES;
    // Under glibc's default, freeing this mapped block would raise the
    // threshold to 24 MiB, and the next block of `size` would come from
    // the arena (this test fails without the call above).
    assert!(own_mapping(24 << 20));
    assert!(own_mapping(size), "a block of {size} bytes was not given its own mapping");
    assert!(!own_mapping(MMAP_THRESHOLD_BYTES / 2), "a small block was mapped");
}

//! The native tape's block checksum, XXH3-64 (seed 0, default secret),
//! computed slice by slice so that the caller can check each slice's
//! records right after it is hashed, while they are in cache
//! (`native::check_blocks`).
//!
//! `xxhash-rust`, which hashes the tape's other parts, picks its vector
//! code when it is compiled: a build for any x86-64 gets its SSE2 loop
//! (about 47 instructions per 64-byte record on the replay's source thread,
//! the largest single cost of verifying a block). `twox-hash` chooses AVX2
//! at run time where the CPU has it (about 20 a record) and gives the same
//! value bit for bit (tested below against `xxhash-rust`), so tapes on disk
//! verify as before.

use std::hash::Hasher;
use twox_hash::xxhash3_64::{RawHasher, SecretBuffer};

/// Hashes `input` (the bytes of one block) as `xxh3_64(input)` would, and
/// hands it to `each` in slices of `slice_bytes`, each right after it has
/// been hashed.
#[inline]
pub fn xxh3_64_by_slices(input: &[u8], slice_bytes: usize, mut each: impl FnMut(&[u8])) -> u64 {
    assert!(slice_bytes > 0);
    // The raw hasher over the default secret lives on the stack: the crate's
    // `XxHash3_64` boxes its buffers, an allocation per block.
    let mut hasher = RawHasher::new(SecretBuffer::default());
    for slice in input.chunks(slice_bytes) {
        hasher.write(slice);
        each(slice);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use xxhash_rust::xxh3::xxh3_64;

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Every length class XXH3 treats apart (short, mid, long; a round of
    /// 16 stripes exactly, one stripe past it, one short of it; a tape's
    /// 256 KiB block), through the fast loop where the CPU has one: the
    /// crate's value, and every byte handed on once, in order.
    #[test]
    fn equals_the_crate_at_every_length_class() {
        let records = [1usize, 2, 3, 4, 5, 15, 16, 17, 31, 32, 33, 255, 256, 257, 1023, 1024, 1025, 4095, 4096];
        for (k, n) in records.into_iter().enumerate() {
            for extra in [0usize, 1, 17] {
                let input = bytes(n * 64 + extra, k as u64 + 7);
                for slice in [1024, 64 * 1024] {
                    let mut seen = Vec::new();
                    let hash = xxh3_64_by_slices(&input, slice, |s| seen.extend_from_slice(s));
                    assert_eq!(hash, xxh3_64(&input), "{} bytes, slices of {slice}", input.len());
                    assert_eq!(seen, input);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn equals_the_crate(records in 1usize..600, seed in any::<u64>(), rounds in 1usize..5) {
            let input = bytes(records * 64, seed);
            let hash = xxh3_64_by_slices(&input, rounds * 1024, |_| {});
            prop_assert_eq!(hash, xxh3_64(&input));
        }
    }
}

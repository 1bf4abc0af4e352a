//! The native tape's block checksum, XXH3-64 (`xxhash_rust::xxh3::xxh3_64`,
//! seed 0, default secret), computed slice by slice so that the caller can
//! check each slice's records right after it is hashed, while they are in
//! cache (`native::check_blocks`).
//!
//! The crate picks its vector code when it is compiled: a build for any
//! x86-64 gets its SSE2 loop (about 47 instructions per 64-byte record on
//! the replay's source thread, the largest single cost of verifying a
//! block). Where the CPU has AVX2 (checked at run time, once per block),
//! this file's own long-input loop runs instead: the same algorithm, two
//! 256-bit lanes per stripe and the accumulators kept in registers (about
//! 15 instructions per record). Both give the crate's value bit for bit
//! (tested below against the crate for every length class), so tapes on
//! disk verify as before.

use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

/// Bytes per stripe (one 64-byte record is one stripe).
const STRIPE: usize = 64;
/// Stripes between two scrambles of the accumulators (default secret).
const STRIPES_PER_ROUND: usize = 16;
/// Inputs up to this length take the crate's short-input paths.
const MID_SIZE_MAX: usize = 240;

/// Hashes `input` (the bytes of one block) as `xxh3_64(input)` would, and
/// hands it to `each` in slices of `slice_bytes` (a multiple of 1024; the
/// last may be shorter), each right after it has been hashed.
#[inline]
pub fn xxh3_64_by_slices(input: &[u8], slice_bytes: usize, mut each: impl FnMut(&[u8])) -> u64 {
    assert!(slice_bytes > 0 && slice_bytes.is_multiple_of(STRIPE * STRIPES_PER_ROUND));
    #[cfg(target_arch = "x86_64")]
    if input.len() > MID_SIZE_MAX && input.len().is_multiple_of(STRIPE) && std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { avx2::long(input, slice_bytes, &mut each) };
    }
    portable(input, slice_bytes, &mut each)
}

/// The crate's streaming hasher: any CPU, any length.
fn portable(input: &[u8], slice_bytes: usize, each: &mut impl FnMut(&[u8])) -> u64 {
    if input.len() <= MID_SIZE_MAX {
        each(input);
        return xxh3_64(input);
    }
    let mut hasher = Xxh3Default::new();
    for slice in input.chunks(slice_bytes) {
        hasher.update(slice);
        each(slice);
    }
    hasher.digest()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{STRIPE, STRIPES_PER_ROUND};
    use std::arch::x86_64::*;

    const PRIME32_1: u64 = 0x9E37_79B1;
    const PRIME32_2: u64 = 0x85EB_CA77;
    const PRIME32_3: u64 = 0xC2B2_AE3D;
    const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;
    const PRIME64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const PRIME64_3: u64 = 0x1656_67B1_9E37_79F9;
    const PRIME64_4: u64 = 0x85EB_CA77_C2B2_AE63;
    const PRIME64_5: u64 = 0x27D4_EB2F_1656_67C5;
    /// Where the secret of the scramble, the last stripe and the merge start.
    const SCRAMBLE_AT: usize = SECRET.len() - STRIPE;
    const LAST_STRIPE_AT: usize = SECRET.len() - STRIPE - 7;
    const MERGE_AT: usize = 11;

    /// XXH3's default secret (the specification's `kSecret`).
    static SECRET: [u8; 192] = [
        0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c, //
        0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f, //
        0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21, //
        0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c, //
        0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3, //
        0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8, //
        0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d, //
        0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64, //
        0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb, //
        0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e, //
        0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce, //
        0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e, //
    ];

    /// The eight 64-bit accumulators, as two 256-bit lanes.
    #[derive(Clone, Copy)]
    struct Acc([__m256i; 2]);

    /// One stripe into the accumulators, with the secret at `key`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn accumulate(acc: &mut Acc, stripe: &[u8; STRIPE], key: &[u8; STRIPE]) {
        for half in 0..2 {
            // SAFETY: unaligned loads of 32 bytes at 0 and 32 inside the
            // two 64-byte arrays.
            let (data, key) = unsafe {
                (
                    _mm256_loadu_si256(stripe.as_ptr().add(32 * half).cast()),
                    _mm256_loadu_si256(key.as_ptr().add(32 * half).cast()),
                )
            };
            let data_key = _mm256_xor_si256(data, key);
            let product = _mm256_mul_epu32(data_key, _mm256_srli_epi64(data_key, 32));
            // The two 64-bit words of each 128-bit pair swapped.
            let swapped = _mm256_shuffle_epi32(data, 0b01_00_11_10);
            acc.0[half] = _mm256_add_epi64(acc.0[half], _mm256_add_epi64(product, swapped));
        }
    }

    /// The accumulators' scramble after every round of 16 stripes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn scramble(acc: &mut Acc) {
        let prime = _mm256_set1_epi32(PRIME32_1 as i32);
        let key = key(SCRAMBLE_AT);
        for half in 0..2 {
            let a = acc.0[half];
            // SAFETY: an unaligned load of 32 bytes inside the 64-byte key.
            let key = unsafe { _mm256_loadu_si256(key.as_ptr().add(32 * half).cast()) };
            let data_key = _mm256_xor_si256(_mm256_xor_si256(a, _mm256_srli_epi64(a, 47)), key);
            let low = _mm256_mul_epu32(data_key, prime);
            let high = _mm256_mul_epu32(_mm256_srli_epi64(data_key, 32), prime);
            acc.0[half] = _mm256_add_epi64(low, _mm256_slli_epi64(high, 32));
        }
    }

    fn key(at: usize) -> &'static [u8; STRIPE] {
        SECRET[at..at + STRIPE].try_into().expect("64 bytes of secret")
    }

    /// `xxh3_64` of an input longer than 240 bytes whose length is a
    /// multiple of 64 (whole records), in slices as `xxh3_64_by_slices`.
    #[target_feature(enable = "avx2")]
    pub(super) fn long(input: &[u8], slice_bytes: usize, each: &mut impl FnMut(&[u8])) -> u64 {
        debug_assert!(input.len() > super::MID_SIZE_MAX && input.len().is_multiple_of(STRIPE));
        let (stripes, _) = input.as_chunks::<STRIPE>();
        // Every stripe but the last goes through the rounds (the last is
        // hashed apart, with its own secret: XXH3's `hash_long_internal_loop`
        // on an input that is whole stripes).
        let regular = stripes.len() - 1;
        // `_mm256_set_epi64x` takes the highest lane first.
        let mut acc = Acc([
            _mm256_set_epi64x(PRIME64_3 as i64, PRIME64_2 as i64, PRIME64_1 as i64, PRIME32_3 as i64),
            _mm256_set_epi64x(PRIME32_1 as i64, PRIME64_5 as i64, PRIME32_2 as i64, PRIME64_4 as i64),
        ]);
        let mut j = 0;
        for slice in input.chunks(slice_bytes) {
            let end = (j + slice.len() / STRIPE).min(regular);
            // Slices start on a round (`slice_bytes` is a multiple of 1024).
            while j + STRIPES_PER_ROUND <= end {
                for (s, stripe) in stripes[j..j + STRIPES_PER_ROUND].iter().enumerate() {
                    accumulate(&mut acc, stripe, key(s * 8));
                }
                scramble(&mut acc);
                j += STRIPES_PER_ROUND;
            }
            // The last, partial round (not scrambled: no stripe follows it).
            while j < end {
                accumulate(&mut acc, &stripes[j], key(j % STRIPES_PER_ROUND * 8));
                j += 1;
            }
            each(slice);
        }
        accumulate(&mut acc, &stripes[regular], key(LAST_STRIPE_AT));
        merge(acc, (input.len() as u64).wrapping_mul(PRIME64_1))
    }

    #[target_feature(enable = "avx2")]
    fn merge(acc: Acc, start: u64) -> u64 {
        let mut words = [0u64; 8];
        // SAFETY: AVX2 is enabled here; two unaligned 32-byte stores into 64 bytes.
        unsafe {
            _mm256_storeu_si256(words.as_mut_ptr().cast(), acc.0[0]);
            _mm256_storeu_si256(words.as_mut_ptr().add(4).cast(), acc.0[1]);
        }
        let secret = |at: usize| u64::from_le_bytes(SECRET[at..at + 8].try_into().expect("8 bytes"));
        let mut result = start;
        for pair in 0..4 {
            let (a, b) = (
                words[2 * pair] ^ secret(MERGE_AT + 16 * pair),
                words[2 * pair + 1] ^ secret(MERGE_AT + 16 * pair + 8),
            );
            let product = a as u128 * b as u128;
            result = result.wrapping_add(product as u64 ^ (product >> 64) as u64);
        }
        // XXH3's avalanche.
        result ^= result >> 37;
        result = result.wrapping_mul(0x1656_6791_9E37_79F9);
        result ^ (result >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

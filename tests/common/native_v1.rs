//! Turns a native tape into the format it had before the block index
//! (version 1): the index section dropped, the header's index fields
//! zeroed, the header re-sealed. What an old tape looks like to a reader.

use std::path::Path;
use xxhash_rust::xxh3::xxh3_64;

pub fn strip_index(from: &Path, to: &Path) {
    let bytes = std::fs::read(from).expect("read tape");
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 2, "a version 2 tape");
    let index_at = u64_at(96) as usize;
    let mut b = bytes[..index_at].to_vec();
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[48..56].copy_from_slice(&(index_at as u64).to_le_bytes());
    b[96..120].fill(0);
    let hash = xxh3_64(&b[..120]);
    b[120..128].copy_from_slice(&hash.to_le_bytes());
    std::fs::write(to, b).expect("write version 1 tape");
}

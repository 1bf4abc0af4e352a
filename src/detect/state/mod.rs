//! Containers for rule and view state that snapshot incrementally: a
//! barrier costs O(1) (or O(hot keys)), the rest is copied in slices
//! between batches while records keep changing the live state.

pub mod cow;
pub mod episode;
pub mod ring;
pub mod slices;

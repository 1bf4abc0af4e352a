//! The spoof stream: the window of order entries, cancels and executions
//! per (group, instrument) that spoofing and layering both measure
//! (`rules/spoof_pattern.rs`), kept once for both. The two rules follow the
//! same pattern over different windows and thresholds; as two rules each
//! kept its own copy of the stream (a key insert, an order-map insert and an
//! expiry per record, twice). As a view it is updated once per record, after
//! the book, and each rule reads what it found for that rule.
//!
//! Its state is the view's snapshot section (`ID`): the entries, the keys,
//! and each rule's `since` per key, with each rule's parameters, so a
//! restore under other parameters (a rules reload) lets that rule start
//! empty while the other keeps its state.

use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::detect::rules::{BookRule, Finding, MAX_SPOOF_RULES, PatternParams, SpoofPattern};
use crate::detect::views::Change;
use crate::detect::views::book::InstrumentBook;
use crate::event::Event;

/// The findings of one record, each rule's in the order found. A record
/// completes at most two patterns per rule (a trade checks both parties).
const MAX_FOUND: usize = 2 * MAX_SPOOF_RULES;

pub struct SpoofStream {
    pattern: SpoofPattern,
    found: [Option<Finding>; MAX_FOUND],
    len: usize,
    /// The snapshot cut at a barrier, until the views take it.
    snapshot: Option<Vec<u8>>,
}

/// What the stream found at the record, for the rules to emit.
#[derive(Clone, Copy, Debug)]
pub struct SpoofSeen<'a> {
    found: &'a [Option<Finding>],
}

impl<'a> SpoofSeen<'a> {
    /// The findings of `rule` at this record.
    #[inline]
    pub fn of(self, rule: BookRule) -> impl Iterator<Item = &'a Finding> {
        self.found.iter().flatten().filter(move |f| f.rule == rule)
    }
}

impl SpoofStream {
    pub const ID: u16 = 0x8003;
    /// 3: a key is hot (listed, with its `since`s) once it has a counted
    /// cancel and an execution on the other side; a cold key's entries may
    /// hold cancels (a version-3 reader sums them when the key turns hot).
    pub const VERSION: u16 = 3;

    pub fn new(rules: &[(BookRule, PatternParams)]) -> SpoofStream {
        SpoofStream { pattern: SpoofPattern::shared(rules), found: [None; MAX_FOUND], len: 0, snapshot: None }
    }

    #[inline(always)]
    pub fn prefetch(&self, event: &Event) {
        self.pattern.prefetch(event);
    }

    /// Applies one record (after the book); `seen` then shows what it found.
    #[inline(always)]
    pub fn update(&mut self, event: &Event, change: &Change, book: &InstrumentBook) {
        self.settle();
        self.len = 0;
        let (found, len) = (&mut self.found, &mut self.len);
        self.pattern.on_record(event, change, book, &mut |f| {
            assert!(*len < MAX_FOUND, "more findings at one record than two per rule");
            found[*len] = Some(f);
            *len += 1;
        });
    }

    #[inline(always)]
    pub fn seen(&self) -> SpoofSeen<'_> {
        SpoofSeen { found: &self.found[..self.len] }
    }

    /// Builds the restored state once every old shard's section was read
    /// (the views have no hook after the last one: the first record or
    /// snapshot after a restore does it).
    #[inline(always)]
    fn settle(&mut self) {
        if self.pattern.restore_pending() {
            self.pattern.restored();
        }
    }

    pub fn grew(&self) -> u64 {
        self.pattern.stats().grew
    }

    /// Records of new keys refused (the pattern's key table full).
    pub fn keys_refused(&self) -> u64 {
        self.pattern.stats().keys_refused
    }

    /// (keys, window entries) now.
    pub fn footprint(&self) -> (usize, usize) {
        let s = self.pattern.stats();
        (s.keys, s.entries)
    }

    /// Cuts the snapshot: the whole stream is encoded now (O(window
    /// entries), as each of the two rules did before it was shared).
    pub fn begin_snapshot(&mut self, mut image: Vec<u8>) {
        self.settle();
        image.clear();
        self.pattern.encode(&mut Writer::new(&mut image));
        self.snapshot = Some(image);
    }

    pub fn take_snapshot(&mut self) -> Option<Vec<u8>> {
        self.snapshot.take()
    }

    pub fn restore(&mut self, r: &mut Reader<'_>, keep: &dyn Fn(u64) -> bool) -> Result<(), DecodeError> {
        self.pattern.restore(r, keep)
    }
}

//! The rule interface. A rule is one type implementing `Rule` in a file of
//! `detect/rules/`, plus one line in `detect/registry.rs`; nothing else in
//! the crate names it. Dispatch is static: the registry holds each rule as
//! an `Option<R>` field and calls it directly. Its dispatch is compiled once
//! per record kind, with only the rules whose `KINDS` has it, and tests a
//! per-kind mask of the enabled ones (made once per shard): a rule costs
//! nothing on a kind it does not want, and one bit test when it is off.
//!
//! What the shard guarantees a rule (and why alerts do not depend on the
//! shard count or the tape format):
//! - `on_record` sees the records of the instruments it owns in `(ts_ns,
//!   seq)` order, every record of an instrument on the same shard, after
//!   the shared views (`Seen`) were updated with that record.
//! - `on_watermark(w)` comes after every record with `ts_ns < w` of the
//!   shard's instruments was passed to `on_record`; no record below `w`
//!   comes later. When it is called (which batch) depends on the shard
//!   count, so a rule with timers must fire those due before a record's
//!   `ts_ns` when it sees that record too, and give a timer's alert the
//!   timer's own time: then the watermark only decides how soon it goes out.
//! - `on_end` comes once after the last record; a rule flushes what is open.
//! - State is keyed by something that contains the instrument (a key's low
//!   32 bits are the instrument id): a checkpoint is restored into any shard
//!   count by keeping the keys with `instrument % shards == shard`.

use crate::alert::{Alert, Evidence, EvidenceJson, RuleId};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::config::Problems;
use crate::event::Px;
use crate::event::{Event, Kind};
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// The record kinds a rule wants; the others never reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds(u8);

impl Kinds {
    pub const NEW: Kinds = Kinds(1);
    pub const CANCEL: Kinds = Kinds(2);
    pub const TRADE: Kinds = Kinds(4);
    pub const ALL: Kinds = Kinds(7);

    pub const fn or(self, other: Kinds) -> Kinds {
        Kinds(self.0 | other.0)
    }

    /// How many record kinds there are: `slot` numbers them from 0.
    pub const SLOTS: usize = 3;

    /// The kind's index in a per-kind table (its bit in `Kinds` is `1 << slot`).
    #[inline(always)]
    pub const fn slot(kind: Kind) -> usize {
        match kind {
            Kind::New => 0,
            Kind::Cancel => 1,
            Kind::Trade => 2,
        }
    }

    #[inline(always)]
    pub fn has(self, kind: Kind) -> bool {
        self.has_slot(Kinds::slot(kind))
    }

    /// Whether the kind at `slot` is one of these.
    #[inline(always)]
    pub const fn has_slot(self, slot: usize) -> bool {
        self.0 & 1 << slot != 0
    }
}

/// The shared per-instrument views a rule reads (`detect::views`); a view
/// no enabled rule reads is not kept at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Reads(u8);

impl Reads {
    pub const NONE: Reads = Reads(0);
    /// `Seen::last_trade`: the instrument's last trade price before this record.
    pub const LAST_TRADE: Reads = Reads(1);
    /// The instrument's order book and what the record did to it (the book view).
    pub const BOOK: Reads = Reads(2);
    /// The window stream spoofing and layering share (`detect::views::spoof`):
    /// what it found for the rule at this record. Needs `BOOK`.
    pub const SPOOF: Reads = Reads(4);

    pub const fn or(self, other: Reads) -> Reads {
        Reads(self.0 | other.0)
    }

    #[inline(always)]
    pub const fn has(self, other: Reads) -> bool {
        self.0 & other.0 != 0
    }
}

/// What the views show a rule about the record it is given: only what the
/// rule declared in `READS` is filled in.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen<'a> {
    /// The instrument's last trade price before this record, if any.
    pub last_trade: Option<Px>,
    /// `Reads::BOOK`: what the record did to its instrument's order book,
    /// and the book just after it (`detect::views::book`).
    pub book: Option<crate::detect::views::BookSeen<'a>>,
    /// `Reads::SPOOF`: the spoof stream's findings at this record.
    pub spoof: Option<crate::detect::views::spoof::SpoofSeen<'a>>,
    /// The record's instrument's tier (0: none, or no tier tables); the
    /// registry sets a tiered rule's parameters from it before `on_record`.
    pub tier: u8,
    /// Keeps the lifetime for views borrowed from the shard (the book).
    pub _views: std::marker::PhantomData<&'a ()>,
}

/// Where a rule puts its alerts. `list` goes into the shard's evidence
/// arena (at most `alert::MAX_LIST` items; the rest are counted as dropped).
pub trait Emit {
    fn alert(&mut self, alert: Alert, list: &[u64]);
}

/// Start-up sizes a rule may preallocate from.
#[derive(Clone, Copy, Debug)]
pub struct Sizing {
    /// Window entries a shard expects to hold.
    pub window_capacity: usize,
}

/// Counters a rule reports for the summary and for sizing checkpoint images.
#[derive(Clone, Copy, Debug, Default)]
pub struct RuleStats {
    pub window_entries: usize,
    pub active_keys: usize,
    /// Keys a barrier copies at once (the rest is copied in slices).
    pub hot_keys: usize,
    /// Times a table grew on the hot path (an allocation).
    pub grew: u64,
    /// Records not tracked because their key was new and the rule's key
    /// table was at its limit (the summary's `refused` line).
    pub keys_refused: u64,
}

pub trait Rule: Sized + Send + 'static {
    /// Stable id: alerts, manifest counts and snapshot sections are keyed by it.
    const ID: RuleId;
    /// The JSON `rule` name, as in alerts, summaries and scenario files.
    const NAME: &'static str;
    /// The rules file table.
    const TABLE: &'static str;
    /// Layout version of the rule's snapshot section; a checkpoint with another is refused.
    const VERSION: u16;
    const KINDS: Kinds;
    const READS: Reads = Reads::NONE;
    /// Whether the rule's work a record outweighs the source thread's on a
    /// large day (per-key tables of the whole day, far beyond the cache).
    /// Only the default shard count reads it: with such a rule on, the
    /// shards get every core (`Rules::shard_bound`).
    const HEAVY: bool = false;

    /// The rule's table as written (`#[serde(deny_unknown_fields)]`, fields
    /// as `toml::Spanned` to report lines); a missing table is `default()`.
    type Raw: DeserializeOwned + Default;
    /// Validated parameters.
    type Params: Copy + Debug + PartialEq + Eq + Send + Sync + 'static;
    /// The rule's state as of a checkpoint barrier (`()` if stateless).
    type Image: Default + Send + 'static;

    /// Validates the raw table: `None` if the rule is off. Every problem
    /// goes to `problems` (the caller reports them all at once).
    fn validate(raw: Self::Raw, problems: &mut Problems<'_>) -> Option<Self::Params>;
    /// Whether the rule takes `[rule.tiers.NAME]` tables: it evaluates
    /// thresholds only in `on_record`, where `set_params` has put the
    /// record's tier's (a rule with timers or state shared across
    /// instruments cannot say which tier a threshold belongs to).
    const TIERS: bool = false;
    /// A tiered rule's thresholds for the records that follow.
    fn set_params(&mut self, _params: &Self::Params) {}
    /// Why a tier's parameters cannot go with the base's (e.g. a window
    /// length: the window is one FIFO for every instrument), if so.
    fn tier_check(_base: &Self::Params, _tier: &Self::Params) -> Option<&'static str> {
        None
    }

    /// The canonical bytes of `params`: part of the checkpoint identity.
    fn encode_params(params: &Self::Params, w: &mut Writer<'_>);
    /// The table's fields as TOML lines (`key = value`), defaults filled
    /// in, for `tapewatch rules show`; a rule without it shows `enabled` only.
    fn show(_params: &Self::Params, _out: &mut String) {}

    fn new(params: &Self::Params, sizing: &Sizing) -> Self;

    /// Brings what `on_record` will need for `event` into cache (called a few records ahead).
    #[inline(always)]
    fn prefetch(&self, _event: &Event) {}
    fn on_record(&mut self, event: &Event, seen: &Seen<'_>, out: &mut impl Emit);
    fn on_watermark(&mut self, _watermark_ns: i64, _out: &mut impl Emit) {}
    fn on_end(&mut self, _out: &mut impl Emit) {}

    /// The fields of the alert's `evidence` JSON object, from its inline
    /// evidence and its list. Runs on the sink thread.
    fn write_evidence(evidence: &Evidence, list: &[u64], json: &mut EvidenceJson<'_>);

    fn stats(&self) -> RuleStats {
        RuleStats::default()
    }

    /// Episodes opened and crossings suppressed so far (since the start or
    /// the resume), for a rule that alerts per episode.
    fn episodes(&self) -> Option<crate::detect::state::episode::EpisodeCounts> {
        None
    }

    // Checkpoints. The defaults are those of a stateless rule.

    /// Grows an image ahead of the state (on the checkpoint writer thread),
    /// to about `keys` keys and `entries` entries.
    fn prepare_image(_image: &mut Self::Image, _keys: usize, _entries: usize) {}
    /// Cuts the snapshot at a barrier into a reused image: O(hot keys); the
    /// rest is copied by `copy_slice`, and records applied meanwhile must
    /// not change what the image will hold (copy-on-write or copy-before-expire).
    fn begin_snapshot(&mut self, _image: Self::Image) {}
    /// Copies up to `max` more items of the snapshot in progress; the image
    /// once complete.
    fn copy_slice(&mut self, _max: usize) -> Option<Self::Image> {
        Some(Self::Image::default())
    }
    fn encode_image(_image: &Self::Image, _w: &mut Writer<'_>) {}
    /// Loads the keys that `keep` accepts from one old shard's section; called once per old shard.
    fn restore(&mut self, _r: &mut Reader<'_>, _keep: &dyn Fn(u64) -> bool) -> Result<(), DecodeError> {
        Ok(())
    }
    /// After every old shard's section was restored.
    fn restored(&mut self) {}
    /// Counts for `tapewatch checkpoint show`, from one section.
    fn describe(_section: &[u8]) -> Result<Vec<(&'static str, u64)>, DecodeError> {
        Ok(Vec::new())
    }
}

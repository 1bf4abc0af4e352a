//! The one list of rules. `registry!` turns it into everything that used
//! to name each rule by hand: the validated rule set (`Rules`, parsed from
//! the rules file), the enabled rules of a shard (`Active`, static
//! dispatch), their checkpoint images and snapshot sections, the name and
//! evidence-writer lookups by rule id, and `RULES` (id, name, table) for
//! counts, summaries, scoring and scenarios.
//!
//! To add a rule: write `detect/rules/<name>.rs` implementing
//! `detect::rule::Rule`, and add one line below.

use super::rule::{Emit, Kinds, Reads, Rule, RuleStats, Seen, Sizing};
use crate::alert::{Alert, EvidenceJson, RuleId};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::config::Problems;
use crate::event::{Event, Kind};

/// One rule as the registry lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub id: RuleId,
    pub name: &'static str,
    pub table: &'static str,
}

/// The registry position of rule `id` (counts are arrays in registry order).
#[inline]
pub fn index_of(id: RuleId) -> Option<usize> {
    RULES.iter().position(|r| r.id == id)
}

/// The JSON name of rule `id` ("unknown" for an id this build lacks).
pub fn name(id: RuleId) -> &'static str {
    index_of(id).map_or("unknown", |i| RULES[i].name)
}

/// Rule id by JSON name.
pub fn by_name(name: &str) -> Option<RuleId> {
    RULES.iter().find(|r| r.name == name).map(|r| r.id)
}

/// Alerts per rule, in registry order.
pub type Counts = [u64; RULE_COUNT];

/// Episodes and suppressed crossings per rule, in registry order (`None`:
/// off, or a rule without episodes).
pub type EpisodeTotals = [Option<crate::detect::state::episode::EpisodeCounts>; RULE_COUNT];

/// Adds one shard's episode counts into `into`.
pub fn add_episodes(into: &mut EpisodeTotals, from: &EpisodeTotals) {
    for (a, b) in into.iter_mut().zip(from) {
        if let Some(b) = b {
            let a = a.get_or_insert_with(Default::default);
            a.episodes += b.episodes;
            a.suppressed += b.suppressed;
        }
    }
}

/// Writes a snapshot section: id, version, length, bytes.
pub(crate) fn write_section(w: &mut Writer<'_>, id: u16, version: u16, body: impl FnOnce(&mut Writer<'_>)) {
    w.u32(id as u32 | (version as u32) << 16);
    let at = w.out.len();
    w.u64(0);
    body(w);
    let len = (w.out.len() - at - 8) as u64;
    w.out[at..at + 8].copy_from_slice(&len.to_le_bytes());
}

/// A snapshot section: (id, version, bytes).
pub type Section<'a> = (u16, u16, &'a [u8]);

/// Reads a section's header and body.
pub(crate) fn read_section<'a>(r: &mut Reader<'a>) -> Result<Section<'a>, DecodeError> {
    let head = r.u32()?;
    let len = usize::try_from(r.u64()?).map_err(|_| DecodeError("section length overflows".into()))?;
    let body = r.take(len)?;
    Ok((head as u16, (head >> 16) as u16, body))
}

/// A short hash of a rule's validated parameters (its id and canonical
/// bytes): alerts carry it, so an analyst knows which settings made them.
pub fn param_version<R: Rule>(params: &R::Params) -> u32 {
    let mut bytes = Vec::new();
    let mut w = Writer::new(&mut bytes);
    w.u32(R::ID as u32);
    R::encode_params(params, &mut w);
    xxhash_rust::xxh3::xxh3_64(&bytes) as u32
}

/// Validates one `[rule.tiers.NAME]` table: the rule's own parser over the
/// base table's fields with the tier's on top (`TierSplit::tier_text`).
/// `None` when it has problems (listed) or the rule is off.
fn tier<R: Rule>(
    split: &crate::config::TierSplit<'_>,
    t: &crate::config::TierTable,
    base: Option<&R::Params>,
    list: &mut Vec<String>,
) -> Option<R::Params> {
    let label = format!("{}.tiers.{}", R::TABLE, t.tier);
    if !R::TIERS {
        list.push(format!(
            "line {}: [{label}]: {} takes no tiers (its thresholds are the same for every instrument)",
            t.line,
            R::TABLE
        ));
        return None;
    }
    let text = split.tier_text(t);
    let raw: std::collections::BTreeMap<String, R::Raw> = match toml::from_str(&text) {
        Ok(raw) => raw,
        Err(e) => {
            list.push(crate::config::toml_error(&text, &e));
            return None;
        }
    };
    let raw = raw.into_values().next().unwrap_or_default();
    let params = R::validate(raw, &mut Problems::new(&text, &label, list));
    let base = base?;
    let Some(params) = params else {
        list.push(format!("line {}: [{label}]: a tier cannot turn {} off", t.line, R::TABLE));
        return None;
    };
    if let Some(why) = R::tier_check(base, &params) {
        list.push(format!("line {}: [{label}]: {why}", t.line));
        return None;
    }
    Some(params)
}

/// Where each tier table was written: (tier, line). Only for messages:
/// two rule sets with the same tables elsewhere in the file are equal.
#[derive(Clone, Debug, Default)]
pub struct TierLines(pub Vec<(String, usize)>);

impl PartialEq for TierLines {
    fn eq(&self, _: &TierLines) -> bool {
        true
    }
}

impl Eq for TierLines {}

/// A rule's parameters when its table says only `enabled = true`.
fn default_params<R: Rule>() -> Option<R::Params> {
    let raw: R::Raw = toml::from_str("enabled = true\n").ok()?;
    let mut problems = Vec::new();
    R::validate(raw, &mut Problems::new("", R::TABLE, &mut problems)).filter(|_| problems.is_empty())
}

/// Puts the rule's parameter version on each alert it emits.
struct Stamp<'a, E: Emit> {
    out: &'a mut E,
    version: u32,
}

impl<E: Emit> Emit for Stamp<'_, E> {
    #[inline(always)]
    fn alert(&mut self, alert: Alert, list: &[u64]) {
        self.out.alert(Alert { params: self.version, ..alert }, list);
    }
}

macro_rules! registry {
    ($( $(#[$attr:meta])* $field:ident : $rule:ty ),* $(,)?) => {
        /// Every rule of the registry, in its order.
        pub const RULES: &[RuleInfo] = &[
            $( $(#[$attr])* RuleInfo { id: <$rule as Rule>::ID, name: <$rule as Rule>::NAME, table: <$rule as Rule>::TABLE }, )*
        ];
        pub const RULE_COUNT: usize = RULES.len();

        /// Each rule's registry position: its bit in `Active::wants`.
        #[allow(non_camel_case_types, dead_code)]
        #[derive(Clone, Copy)]
        enum Bit {
            $( $(#[$attr])* $field, )*
        }
        const _: () = assert!(RULE_COUNT <= 32, "Active::wants holds a rule per bit of a u32");

        /// The validated rule set: a rule whose field is `None` is off.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct Rules {
            $( $(#[$attr])* pub $field: Option<<$rule as Rule>::Params>, )*
            /// Per-tier overrides (`[rule.tiers.NAME]`).
            pub tiers: Tiers,
        }

        /// The rules file's tiers: instruments whose instruments.csv `tier`
        /// is NAME take a rule's `[rule.tiers.NAME]` parameters.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Tiers {
            /// The tier names, sorted: tier index `i` (from 1) is `names[i - 1]`; 0 is the base table.
            pub names: Vec<String>,
            /// (tier, line of its table) of each tier table.
            pub lines: TierLines,
            $( $(#[$attr])* pub $field: Vec<(u8, <$rule as Rule>::Params)>, )*
        }

        /// Each enabled rule's parameters by tier index (0: the base
        /// table; a tier the rule has no table for takes the base's), for
        /// the rules that have tier tables.
        #[derive(Default)]
        struct TierTables {
            $( $(#[$attr])* $field: Option<Box<[<$rule as Rule>::Params]>>, )*
        }

        /// The tier each rule's parameters are set for now.
        #[derive(Default)]
        struct TierNow {
            $( $(#[$attr])* $field: u8, )*
        }

        #[derive(serde::Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct RawRules {
            $( $(#[$attr])* #[serde(default)] $field: Option<<$rule as Rule>::Raw>, )*
        }

        impl Rules {
            /// Parses a rules file; a missing table or field takes the rule's
            /// defaults. Every problem is reported, each with its line.
            pub fn parse(text: &str) -> Result<Rules, Vec<String>> {
                let split = crate::config::TierSplit::new(text);
                let base = split.base.as_str();
                let raw: RawRules = toml::from_str(base).map_err(|e| vec![crate::config::toml_error(base, &e)])?;
                let mut list = Vec::new();
                let mut rules = Rules {
                    $( $(#[$attr])* $field: <$rule as Rule>::validate(
                        raw.$field.unwrap_or_default(),
                        &mut Problems::new(base, <$rule as Rule>::TABLE, &mut list),
                    ), )*
                    tiers: Tiers::default(),
                };
                list.extend(split.problems.iter().cloned());
                let mut names: Vec<String> = split.tiers.iter().map(|t| t.tier.clone()).collect();
                names.sort();
                names.dedup();
                if names.len() > crate::config::MAX_TIERS {
                    list.push(format!("{} tiers: at most {}", names.len(), crate::config::MAX_TIERS));
                }
                for t in &split.tiers {
                    let index = names.iter().position(|n| *n == t.tier).map_or(0, |i| i + 1) as u8;
                    let mut known = false;
                    $( $(#[$attr])* if t.table == <$rule as Rule>::TABLE {
                        known = true;
                        if let Some(params) = tier::<$rule>(&split, t, rules.$field.as_ref(), &mut list) {
                            rules.tiers.$field.push((index, params));
                        }
                    } )*
                    if !known {
                        list.push(format!("line {}: [{}.tiers.{}]: there is no rule `{}`", t.line, t.table, t.tier, t.table));
                    }
                    rules.tiers.lines.0.push((t.tier.clone(), t.line));
                }
                rules.tiers.names = names;
                if list.is_empty() { Ok(rules) } else { Err(list) }
            }

            /// Problems of the tiers against the instruments.csv loaded: a
            /// tier no instrument is in (a typo would silently leave its
            /// instruments on the base table), tiers without the file.
            pub fn check_tiers(&self, instruments: &crate::instruments::Instruments) -> Vec<String> {
                let mut problems = Vec::new();
                if self.tiers.lines.0.is_empty() {
                    return problems;
                }
                if !instruments.loaded() {
                    problems.push("the rules file has tier tables: they need instruments.csv with a `tier` column (--instruments)".to_string());
                    return problems;
                }
                let used = instruments.tiers();
                for (tier, line) in &self.tiers.lines.0 {
                    if !used.contains(tier.as_str()) {
                        problems.push(format!("line {line}: tier `{tier}` is the tier of no instrument in instruments.csv"));
                    }
                }
                problems
            }

            /// The views the enabled rules read.
            pub fn reads(&self) -> Reads {
                let mut reads = Reads::NONE;
                $( $(#[$attr])* if self.$field.is_some() { reads = reads.or(<$rule as Rule>::READS); } )*
                reads
            }

            /// Whether the shards, not the source, bound a replay: the
            /// enabled rules keep the book (the views' dearest state) or
            /// one of them is `Rule::HEAVY`. The default shard count then
            /// gives the shards every core instead of one less.
            pub fn shard_bound(&self) -> bool {
                let mut heavy = self.reads().has(Reads::BOOK);
                $( $(#[$attr])* { heavy |= self.$field.is_some() && <$rule as Rule>::HEAVY; } )*
                heavy
            }

            /// The canonical bytes of the enabled rules (id, length, params
            /// each): part of the checkpoint identity. A rule that is off
            /// adds nothing, so adding one leaves old checkpoints valid.
            pub fn canonical(&self) -> Vec<u8> {
                let mut out = Vec::new();
                let mut w = Writer::new(&mut out);
                $( $(#[$attr])* if let Some(params) = self.$field.as_ref() {
                    write_section(&mut w, <$rule as Rule>::ID, 0, |w| {
                        <$rule as Rule>::encode_params(params, w);
                        // Tiers after the base: a rule without them encodes as before.
                        for (index, params) in &self.tiers.$field {
                            w.str(&self.tiers.names[*index as usize - 1]);
                            <$rule as Rule>::encode_params(params, w);
                        }
                    });
                } )*
                out
            }

            /// The parameter version of each enabled rule: (name, version).
            pub fn versions(&self) -> Vec<(&'static str, u32)> {
                let mut out = Vec::new();
                $( $(#[$attr])* if let Some(params) = self.$field.as_ref() {
                    out.push((<$rule as Rule>::NAME, self.version_of::<$rule>(params, &self.tiers.$field)));
                } )*
                out
            }

            /// The parameter version of each enabled rule by id: what a
            /// checkpoint records of the rules it was cut under
            /// (`Manifest::rules`), so a reload can tell which rules' state
            /// still applies.
            pub fn versions_by_id(&self) -> Vec<(RuleId, u32)> {
                let mut out = Vec::new();
                $( $(#[$attr])* if let Some(params) = self.$field.as_ref() {
                    out.push((<$rule as Rule>::ID, self.version_of::<$rule>(params, &self.tiers.$field)));
                } )*
                out
            }

            /// A rule's parameter version: of its base table, and its tiers when it has some.
            fn version_of<R: Rule>(&self, params: &R::Params, tiers: &[(u8, R::Params)]) -> u32 {
                if tiers.is_empty() {
                    return param_version::<R>(params);
                }
                let mut bytes = Vec::new();
                let mut w = Writer::new(&mut bytes);
                w.u32(R::ID as u32);
                R::encode_params(params, &mut w);
                for (index, params) in tiers {
                    w.str(&self.tiers.names[*index as usize - 1]);
                    R::encode_params(params, &mut w);
                }
                xxhash_rust::xxh3::xxh3_64(&bytes) as u32
            }

            /// The effective rules file: every rule's table, defaults filled
            /// in. A rule that is off shows `enabled = false` over its
            /// default fields, so turning it on is one edit (and the text
            /// reads back as the same rules).
            pub fn show(&self) -> String {
                let mut out = String::new();
                $( $(#[$attr])* {
                    out.push_str(&format!("[{}]\n", <$rule as Rule>::TABLE));
                    match self.$field.as_ref() {
                        Some(params) => {
                            out.push_str("enabled = true\n");
                            <$rule as Rule>::show(params, &mut out);
                            let version = self.version_of::<$rule>(params, &self.tiers.$field);
                            out.push_str(&format!("# parameter version {version:08x}\n"));
                            for (index, params) in &self.tiers.$field {
                                out.push_str(&format!("[{}.tiers.{}]\n", <$rule as Rule>::TABLE, self.tiers.names[*index as usize - 1]));
                                <$rule as Rule>::show(params, &mut out);
                            }
                        }
                        None => {
                            out.push_str("enabled = false\n");
                            if let Some(params) = default_params::<$rule>() {
                                <$rule as Rule>::show(&params, &mut out);
                            }
                        }
                    }
                    out.push('\n');
                } )*
                out
            }

            /// Whether rule `id` is on.
            pub fn enabled(&self, id: RuleId) -> bool {
                $( $(#[$attr])* if id == <$rule as Rule>::ID { return self.$field.is_some(); } )*
                false
            }
        }

        impl Default for Rules {
            fn default() -> Rules {
                match Rules::parse("") {
                    Ok(rules) => rules,
                    Err(problems) => panic!("a rule's defaults do not validate: {problems:?}"),
                }
            }
        }

        /// The enabled rules of one shard.
        pub(crate) struct Active {
            $( $(#[$attr])* $field: Option<$rule>, )*
            /// Per record kind (`Kinds::slot`), the enabled rules that want
            /// it, bit `Bit::$field` each: a record is dispatched to these
            /// only, in registry order.
            wants: [u32; Kinds::SLOTS],
            versions: Versions,
            tier_tables: TierTables,
            tier_now: TierNow,
        }

        /// Each rule's parameter version (`param_version`), stamped on its alerts.
        #[derive(Clone, Copy, Default)]
        struct Versions {
            $( $(#[$attr])* $field: u32, )*
        }

        /// The rules' state as of a barrier, one image per enabled rule
        /// (reused from checkpoint to checkpoint).
        #[derive(Default)]
        pub struct Images {
            $( $(#[$attr])* $field: Option<<$rule as Rule>::Image>, )*
        }

        impl Active {
            pub(crate) fn new(rules: &Rules, sizing: &Sizing) -> Active {
                let mut wants = [0u32; Kinds::SLOTS];
                $( $(#[$attr])* if rules.$field.is_some() {
                    for (slot, mask) in wants.iter_mut().enumerate() {
                        if <$rule as Rule>::KINDS.has_slot(slot) {
                            *mask |= 1 << Bit::$field as u32;
                        }
                    }
                } )*
                Active {
                    wants,
                    $( $(#[$attr])* $field: rules.$field.as_ref().map(|p| <$rule as Rule>::new(p, sizing)), )*
                    versions: Versions { $( $(#[$attr])* $field: rules.$field.as_ref().map_or(0, |p| rules.version_of::<$rule>(p, &rules.tiers.$field)), )* },
                    tier_tables: TierTables { $( $(#[$attr])* $field: rules.$field.as_ref().filter(|_| !rules.tiers.$field.is_empty()).map(|base| {
                        let mut table = vec![*base; rules.tiers.names.len() + 1];
                        for (index, params) in &rules.tiers.$field {
                            table[*index as usize] = *params;
                        }
                        table.into_boxed_slice()
                    }), )* },
                    tier_now: TierNow::default(),
                }
            }

            #[inline(always)]
            pub(crate) fn prefetch(&self, event: &Event) {
                match event.kind {
                    Kind::New => self.prefetch_of::<{ Kinds::slot(Kind::New) }>(event),
                    Kind::Cancel => self.prefetch_of::<{ Kinds::slot(Kind::Cancel) }>(event),
                    Kind::Trade => self.prefetch_of::<{ Kinds::slot(Kind::Trade) }>(event),
                }
            }

            #[inline(always)]
            fn prefetch_of<const SLOT: usize>(&self, event: &Event) {
                let wants = self.wants[SLOT];
                $( $(#[$attr])* {
                    if <$rule as Rule>::KINDS.has_slot(SLOT)
                        && wants & 1 << Bit::$field as u32 != 0
                        && let Some(rule) = self.$field.as_ref()
                    {
                        Rule::prefetch(rule, event);
                    }
                } )*
            }

            /// Hands the record to the enabled rules that want its kind, in
            /// registry order. Compiled once per kind: a rule whose `KINDS`
            /// lacks the kind is not there at all, one that is off costs a
            /// bit test.
            #[inline(always)]
            pub(crate) fn on_record(&mut self, event: &Event, seen: &Seen<'_>, out: &mut impl Emit) {
                match event.kind {
                    Kind::New => self.on_record_of::<{ Kinds::slot(Kind::New) }>(event, seen, out),
                    Kind::Cancel => self.on_record_of::<{ Kinds::slot(Kind::Cancel) }>(event, seen, out),
                    Kind::Trade => self.on_record_of::<{ Kinds::slot(Kind::Trade) }>(event, seen, out),
                }
            }

            /// `on_record` for the records of kind `SLOT` (`Kinds::slot`).
            #[inline(always)]
            fn on_record_of<const SLOT: usize>(&mut self, event: &Event, seen: &Seen<'_>, out: &mut impl Emit) {
                let wants = self.wants[SLOT];
                $( $(#[$attr])* {
                    if <$rule as Rule>::KINDS.has_slot(SLOT)
                        && wants & 1 << Bit::$field as u32 != 0
                        && let Some(rule) = self.$field.as_mut()
                    {
                        // A rule with tiers gets its instrument's parameters
                        // (set only when the tier changes from the last record's).
                        if <$rule as Rule>::TIERS
                            && let Some(table) = self.tier_tables.$field.as_deref()
                            && seen.tier != self.tier_now.$field
                            && let Some(params) = table.get(seen.tier as usize)
                        {
                            Rule::set_params(rule, params);
                            self.tier_now.$field = seen.tier;
                        }
                        Rule::on_record(rule, event, seen, &mut Stamp { out: &mut *out, version: self.versions.$field });
                    }
                } )*
            }

            pub(crate) fn on_watermark(&mut self, watermark_ns: i64, out: &mut impl Emit) {
                $( $(#[$attr])* if let Some(rule) = self.$field.as_mut() {
                    Rule::on_watermark(rule, watermark_ns, &mut Stamp { out: &mut *out, version: self.versions.$field });
                } )*
            }

            pub(crate) fn on_end(&mut self, out: &mut impl Emit) {
                $( $(#[$attr])* if let Some(rule) = self.$field.as_mut() {
                    Rule::on_end(rule, &mut Stamp { out: &mut *out, version: self.versions.$field });
                } )*
            }

            pub(crate) fn stats(&self) -> RuleStats {
                let mut all = RuleStats::default();
                $( $(#[$attr])* if let Some(rule) = self.$field.as_ref() {
                    let s = Rule::stats(rule);
                    all.window_entries += s.window_entries;
                    all.active_keys += s.active_keys;
                    all.hot_keys += s.hot_keys;
                    all.grew += s.grew;
                } )*
                all
            }

            /// Each enabled rule's refused keys (`RuleStats::keys_refused`),
            /// in registry order (`None`: off).
            pub(crate) fn keys_refused(&self) -> [Option<u64>; RULE_COUNT] {
                let mut out = [None; RULE_COUNT];
                let mut i = 0;
                $( $(#[$attr])* {
                    out[i] = self.$field.as_ref().map(|rule| Rule::stats(rule).keys_refused);
                    i += 1;
                } )*
                debug_assert_eq!(i, RULE_COUNT);
                out
            }

            /// Each enabled rule's episode counts, in registry order.
            pub(crate) fn episodes(&self) -> EpisodeTotals {
                let mut out: EpisodeTotals = [None; RULE_COUNT];
                let mut i = 0;
                $( $(#[$attr])* {
                    out[i] = self.$field.as_ref().and_then(Rule::episodes);
                    i += 1;
                } )*
                debug_assert_eq!(i, RULE_COUNT);
                out
            }

            pub(crate) fn begin_snapshot(&mut self, images: &mut Images) {
                $( $(#[$attr])* if let Some(rule) = self.$field.as_mut() {
                    Rule::begin_snapshot(rule, images.$field.take().unwrap_or_default());
                } )*
            }

            /// One slice of every rule's snapshot not yet complete; true once all are.
            pub(crate) fn copy_slice(&mut self, max: usize, images: &mut Images) -> bool {
                let mut done = true;
                $( $(#[$attr])* if let Some(rule) = self.$field.as_mut() && images.$field.is_none() {
                    images.$field = Rule::copy_slice(rule, max);
                    done &= images.$field.is_some();
                } )*
                done
            }

            /// Restores one section, if it is an enabled rule's; `Ok(false)` if
            /// it is not a rule's at all.
            pub(crate) fn restore(
                &mut self,
                (id, version, body): (u16, u16, &[u8]),
                keep: &dyn Fn(u64) -> bool,
            ) -> Result<bool, DecodeError> {
                $( $(#[$attr])* if id == <$rule as Rule>::ID {
                    let Some(rule) = self.$field.as_mut() else {
                        return Err(DecodeError(format!("a section of {}, which is off: the checkpoint was taken with other rules", <$rule as Rule>::NAME)));
                    };
                    if version != <$rule as Rule>::VERSION {
                        return Err(DecodeError(format!("{} section version {version}, this build reads {}", <$rule as Rule>::NAME, <$rule as Rule>::VERSION)));
                    }
                    let mut r = Reader::new(body);
                    Rule::restore(rule, &mut r, keep)?;
                    r.finish()?;
                    return Ok(true);
                } )*
                Ok(false)
            }

            pub(crate) fn restored(&mut self) {
                $( $(#[$attr])* if let Some(rule) = self.$field.as_mut() { Rule::restored(rule); } )*
            }

            /// Empty images for the enabled rules.
            pub(crate) fn new_images(&self) -> Images {
                Images { $( $(#[$attr])* $field: self.$field.as_ref().map(|_| Default::default()), )* }
            }

            /// Ids of the enabled rules (a restore must find a section of each).
            pub(crate) fn ids(&self) -> Vec<RuleId> {
                let mut ids = Vec::new();
                $( $(#[$attr])* if self.$field.is_some() { ids.push(<$rule as Rule>::ID); } )*
                ids
            }
        }

        impl Images {
            /// Grows the images there are (the enabled rules').
            pub(crate) fn prepare(&mut self, keys: usize, entries: usize) {
                $( $(#[$attr])* if let Some(image) = self.$field.as_mut() {
                    <$rule as Rule>::prepare_image(image, keys, entries);
                } )*
            }

            /// One section per rule that has an image (was enabled); returns how many.
            pub(crate) fn encode(&self, w: &mut Writer<'_>) -> u32 {
                let mut n = 0;
                $( $(#[$attr])* if let Some(image) = self.$field.as_ref() {
                    write_section(w, <$rule as Rule>::ID, <$rule as Rule>::VERSION, |w| <$rule as Rule>::encode_image(image, w));
                    n += 1;
                } )*
                n
            }

            /// Drops the images of rules that are off (an image made for
            /// another rule set).
            pub(crate) fn keep_only(&mut self, active: &Active) {
                $( $(#[$attr])* if active.$field.is_none() { self.$field = None; } )*
            }
        }

        /// The rule's evidence JSON for `alert` (on the sink thread).
        pub fn write_evidence(alert: &Alert, list: &[u64], json: &mut EvidenceJson<'_>) {
            $( $(#[$attr])* if alert.rule == <$rule as Rule>::ID {
                return <$rule as Rule>::write_evidence(&alert.evidence, list, json);
            } )*
        }

        /// Counts for `checkpoint show` from a rule's section.
        pub fn describe(id: RuleId, section: &[u8]) -> Result<Vec<(&'static str, u64)>, DecodeError> {
            $( $(#[$attr])* if id == <$rule as Rule>::ID { return <$rule as Rule>::describe(section); } )*
            Ok(Vec::new())
        }

        #[cfg(test)]
        const TABLES: &[&str] = &[ $( $(#[$attr])* stringify!($field), )* ];
    };
}

// The list: `table: type`, one line per rule (its file is declared in
// `rules/mod.rs`). The table is the rules file's; the order is the order of
// counts in summaries. Ids are the rules' own, stable and never reused.
registry! {
    excessive_cancel: super::rules::excessive_cancel::ExcessiveCancel,
    self_trade: super::rules::self_trade::SelfTrade,
    spoofing: super::rules::spoofing::Spoofing,
    layering: super::rules::layering::Layering,
    momentum_ignition: super::rules::momentum_ignition::MomentumIgnition,
    wash_trade: super::rules::wash_trade::WashTrade,
    quote_stuffing: super::rules::quote_stuffing::QuoteStuffing,
    instant_cancel: super::rules::instant_cancel::InstantCancel,
    ramping: super::rules::ramping::Ramping,
    marking_close: super::rules::marking::MarkingClose,
    marking_open: super::rules::marking::MarkingOpen,
    #[cfg(test)]
    test_probe: super::rules::test_probe::TestProbe,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_names_and_tables_are_unique_and_tables_are_the_field_names() {
        for (i, a) in RULES.iter().enumerate() {
            assert_eq!(a.table, TABLES[i], "{}: TABLE must be its registry field's name", a.name);
            assert!(a.id > 0 && a.id < 0x8000, "{}: ids 0x8000 and up are the views'", a.name);
            for b in &RULES[i + 1..] {
                assert!(a.id != b.id && a.name != b.name && a.table != b.table, "{a:?} and {b:?}");
            }
        }
    }

    #[test]
    fn a_rule_that_is_off_leaves_the_identity_unchanged() {
        let rules = Rules::default();
        let explicit = Rules::parse("[self_trade]\nenabled = true\n").unwrap();
        assert_eq!(rules.canonical(), explicit.canonical());
        let other = Rules::parse("[excessive_cancel]\nmin_cancels = 3\n").unwrap();
        assert_ne!(rules.canonical(), other.canonical());
        let off = Rules::parse("[self_trade]\nenabled = false\n").unwrap();
        assert_ne!(rules.canonical(), off.canonical());
    }

    #[test]
    fn unknown_tables_are_refused_with_the_known_ones() {
        let problems = Rules::parse("[spoofing_v9]\nenabled = true\n").unwrap_err();
        assert!(problems[0].starts_with("line 1: unknown field `spoofing_v9`"), "{problems:?}");
        for table in TABLES {
            assert!(problems[0].contains(table), "{problems:?} should list {table}");
        }
    }
}

#[cfg(test)]
mod show_tests {
    use super::*;

    #[test]
    fn show_prints_the_effective_rules_and_reads_back_the_same() {
        let defaults = Rules::default();
        assert_eq!(Rules::parse(&defaults.show()).unwrap(), defaults);
        let text = "[ramping]\nenabled = true\nwindow_ms = 60000\nmin_move_bp = 250\nwindow2_ms = 20000\nmin_move2_bp = 150\nvolume = \"aggressive\"\n\
                    [marking_close]\ncall_start = \"14:56\"\n[quote_stuffing]\nenabled = true\ncooldown_ms = 0\n[wash_trade]\nenabled = false\n\
                    [excessive_cancel]\nratio_pct = 80\n";
        let rules = Rules::parse(text).unwrap();
        let shown = rules.show();
        assert!(shown.contains("[ramping]\nenabled = true\nwindow_ms = 60000\nmin_move_bp = 250\n"), "{shown}");
        assert!(shown.contains("call_start = \"14:56:00\""), "{shown}");
        assert!(shown.contains("[wash_trade]\nenabled = false\nmin_share_pct = 10\nmin_trades = 3\n"), "{shown}");
        // Every rule that is off shows its defaults, ready to turn on; the book rules too.
        let off = Rules::parse(&RULES.iter().map(|r| format!("[{}]\nenabled = false\n", r.table)).collect::<String>())
            .unwrap();
        let shown_off = off.show();
        assert_eq!(Rules::parse(&shown_off).unwrap(), off);
        for (table, field) in [
            ("spoofing", "max_levels_behind = 2"),
            ("layering", "min_levels_behind = 3"),
            ("momentum_ignition", "min_move_ticks = 5"),
            ("excessive_cancel", "cooldown_ms = 60000"),
        ] {
            assert!(shown_off.contains(&format!("[{table}]\nenabled = false\n")), "{shown_off}");
            assert!(
                shown_off.split(&format!("[{table}]")).nth(1).unwrap().split("\n[").next().unwrap().contains(field),
                "{table}: {shown_off}"
            );
        }
        let on = shown_off.replace("enabled = false", "enabled = true");
        let on = Rules::parse(&on).unwrap();
        assert!(RULES.iter().all(|r| on.enabled(r.id)), "the shown tables turn on as they are");
        assert_eq!(Rules::parse(&shown).unwrap(), rules);
        // The parameter version follows the parameters.
        let version = |r: &Rules, name: &str| r.versions().into_iter().find(|(n, _)| *n == name).map(|(_, v)| v);
        assert_ne!(version(&rules, "ramping"), version(&defaults, "ramping"));
        assert_eq!(version(&rules, "self-trade"), version(&defaults, "self-trade"));
        assert_eq!(version(&rules, "wash-trade"), None);
    }
}

#[cfg(test)]
mod tier_tests {
    use super::*;

    const TIERED: &str = "[ramping]\nenabled = true\nmin_move_bp = 400\nmin_share_pct = 30\n\
                          [wash_trade]\nmin_share_pct = 10\n\
                          [ramping.tiers.chinext]\nmin_move_bp = 800\n\
                          [excessive_cancel.tiers.etf]\nratio_pct = 95\n";

    #[test]
    fn a_tier_table_overrides_the_base_table_field_by_field() {
        let rules = Rules::parse(TIERED).unwrap();
        assert_eq!(rules.tiers.names, vec!["chinext".to_string(), "etf".to_string()]);
        assert_eq!(rules.tiers.lines.0, vec![("chinext".to_string(), 7), ("etf".to_string(), 9)]);
        let base = rules.ramping.unwrap();
        let [(index, chinext)] = rules.tiers.ramping[..] else { panic!("{:?}", rules.tiers) };
        assert_eq!(index, 1);
        assert_eq!(chinext.windows[0].unwrap().min_move_bp, 800);
        assert_eq!(chinext.min_share_pct, base.min_share_pct, "the rest is the base table's");
        let [(2, etf)] = rules.tiers.excessive_cancel[..] else { panic!("{:?}", rules.tiers) };
        assert_eq!((etf.ratio_pct, etf.min_cancels), (95, 20));
        // Shown, it reads back the same; the tiers are part of the identity and version.
        assert_eq!(Rules::parse(&rules.show()).unwrap(), rules);
        let untiered = Rules::parse("[ramping]\nenabled = true\n").unwrap();
        assert_ne!(rules.canonical(), untiered.canonical());
        let version = |r: &Rules| r.versions().into_iter().find(|(n, _)| *n == "ramping").map(|(_, v)| v);
        assert_ne!(version(&rules), version(&untiered));
        // A tier table before its base table, and the base table absent.
        let first =
            Rules::parse("[ramping.tiers.chinext]\nmin_move_bp = 900\n[ramping]\nenabled = true\nmin_share_pct = 40\n")
                .unwrap();
        assert_eq!(first.tiers.ramping[0].1.windows[0].unwrap().min_move_bp, 900);
        assert_eq!(first.tiers.ramping[0].1.min_share_pct, 40);
        let alone = Rules::parse("[wash_trade.tiers.thin]\nmin_trades = 5\n").unwrap();
        assert_eq!(alone.tiers.wash_trade[0].1.min_trades, 5);
    }

    #[test]
    fn every_tier_problem_is_reported_with_its_line() {
        let text = "[ramping]\nenabled = true\n\
                    [ramping.tiers.chinext]\nmin_move_bp = 0\nshare = 3\n\
                    [ramping.tiers.star]\nwindow_ms = 60000\n\
                    [self_trade.tiers.etf]\n\
                    [nothing.tiers.etf]\n\
                    [excessive_cancel.tiers.etf]\nmin_cancels = 0\n\
                    [ramping.tiers.chinext]\n";
        let problems = Rules::parse(text).unwrap_err();
        let has = |p: &str| problems.iter().any(|x| x.starts_with(p));
        assert!(has("line 5: unknown field `share`"), "{problems:#?}");
        assert!(
            has("line 6: [ramping.tiers.star]: window_ms and window2_ms must be the base table's"),
            "{problems:#?}"
        );
        assert!(has("line 8: [self_trade.tiers.etf]: self_trade takes no tiers"), "{problems:#?}");
        assert!(has("line 9: [nothing.tiers.etf]: there is no rule `nothing`"), "{problems:#?}");
        assert!(has("line 11: excessive_cancel.tiers.etf.min_cancels = 0 is out of range"), "{problems:#?}");
        assert!(has("line 12: [ramping.tiers.chinext] is already defined on line 3"), "{problems:#?}");
        // The out-of-range field of a tier whose other field is unknown is
        // not reached (toml stops at the unknown field): 6 problems.
        assert_eq!(problems.len(), 6, "{problems:#?}");
    }

    #[test]
    fn tiers_are_checked_against_instruments_csv() {
        let rules = Rules::parse(TIERED).unwrap();
        let none = crate::instruments::Instruments::default();
        assert!(rules.check_tiers(&none)[0].contains("need instruments.csv"));
        let csv = "instrument,prev_close,limit_up,limit_down,tick,tier\nA,10,11,9,0.01,main\nB,10,12,8,0.01,chinext\n";
        let instruments = crate::instruments::Instruments::parse(csv).unwrap();
        assert_eq!(
            rules.check_tiers(&instruments),
            vec!["line 9: tier `etf` is the tier of no instrument in instruments.csv".to_string()]
        );
        assert!(Rules::default().check_tiers(&none).is_empty());
    }
}

//! Reading a tape's records in feed order for the analyst's commands, with
//! the work a filter allows left undone: on a native tape with an index,
//! a block that cannot hold a wanted record is neither verified nor read
//! (its pages are never touched); every block that is read is verified
//! against its checksum first. A CSV tape is decoded and validated as
//! replay does (rejected records are not part of it).

use crate::cmd::CmdError;
use crate::event::{Event, GroupId};
use crate::ingest::csv::CsvFeed;
use crate::ingest::native::Tape;
use crate::ingest::validate::{Limits, Validator};
use crate::ingest::{Feed, RejectLog};
use crate::symbols::{Groups, NameTable, Names};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which blocks may hold wanted records: instrument ids (empty: any) and
/// an event-time range.
#[derive(Clone, Debug)]
pub struct BlockPlan {
    pub instruments: Vec<u32>,
    pub from_ns: i64,
    pub to_ns: i64,
}

impl BlockPlan {
    pub fn all() -> BlockPlan {
        BlockPlan { instruments: Vec::new(), from_ns: i64::MIN, to_ns: i64::MAX }
    }
}

/// What a walk read and left unread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkStats {
    pub blocks: usize,
    pub blocks_read: usize,
    pub records_read: u64,
    /// Whether the tape had an index to skip by (CSV: false).
    pub indexed: bool,
}

impl WalkStats {
    pub fn describe(&self) -> String {
        if self.indexed {
            format!(
                "index: read {} of {} blocks ({} records), skipped {}",
                self.blocks_read,
                self.blocks,
                self.records_read,
                self.blocks - self.blocks_read
            )
        } else if self.blocks > 0 {
            format!(
                "no index on this tape (written before format version 2; import it again to get one): \
                 read {} of {} blocks ({} records), every one up to the period's end",
                self.blocks_read, self.blocks, self.records_read
            )
        } else {
            format!("CSV tape: read {} records (import it for an indexed native tape)", self.records_read)
        }
    }
}

/// An opened tape, native or CSV. One per command, so the size of the
/// native variant (the mapping's bookkeeping) costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Source {
    Native { tape: Tape, names: Names, groups_by_account: Vec<GroupId>, use_index: bool },
    Csv { path: PathBuf, groups: Arc<Groups> },
}

impl Source {
    /// Opens a tape; a missing, unreadable or damaged one is bad input (exit 2).
    pub fn open(path: &Path, groups: Arc<Groups>) -> Result<Source, CmdError> {
        let native = crate::cmd::is_native_tape(path)
            .map_err(|e| CmdError::Usage(format!("{}: cannot read tape: {e}", path.display())))?;
        if !native {
            return Ok(Source::Csv { path: path.to_path_buf(), groups });
        }
        let tape = Tape::open_streaming(path).map_err(|e| CmdError::Usage(e.to_string()))?;
        let accounts = tape.accounts();
        let groups_by_account = tape.groups_by_account(&groups);
        let names = Names {
            accounts: Arc::new(NameTable::from_names(&accounts)),
            instruments: Arc::new(NameTable::from_names(&tape.instruments())),
            groups,
        };
        Ok(Source::Native { tape, names, groups_by_account, use_index: true })
    }

    /// Reads as if the tape had no index (measurement: `investigate --no-index`).
    pub fn without_index(mut self) -> Source {
        if let Source::Native { use_index, .. } = &mut self {
            *use_index = false;
        }
        self
    }

    pub fn is_native(&self) -> bool {
        matches!(self, Source::Native { .. })
    }

    /// A native tape's instrument id by name (CSV: unknown before reading).
    pub fn instrument_id(&self, name: &str) -> Option<u32> {
        match self {
            Source::Native { tape, .. } => {
                tape.instruments().iter().position(|n| *n == name.as_bytes()).map(|i| i as u32)
            }
            Source::Csv { .. } => None,
        }
    }

    /// The first record's event time, when the tape has one (native: read
    /// from the index, or from the first block, verified).
    pub fn first_ts(&self) -> Result<Option<i64>, CmdError> {
        match self {
            Source::Native { tape, .. } => {
                if tape.is_empty() {
                    return Ok(None);
                }
                if let Some(index) = tape.index() {
                    return Ok(Some(index.block(0).check.first_ts));
                }
                tape.verify_block(0).map_err(|e| CmdError::Usage(e.to_string()))?;
                Ok(Some(tape.record(0).ts_ns))
            }
            Source::Csv { path, .. } => first_csv_ts(path),
        }
    }

    /// Calls `f` with each record of the blocks `plan` may need that is
    /// of a wanted instrument (any, when the plan names none), in feed
    /// order, with the tape's names; stops when `f` breaks. `passed` gets
    /// the event time of every other record read, and the greatest event
    /// time of each block left unread, in feed order: what a watermark needs.
    pub fn walk(
        &self,
        plan: &BlockPlan,
        passed: &mut dyn FnMut(i64),
        mut f: impl FnMut(&Event, &Names) -> ControlFlow<()>,
    ) -> Result<WalkStats, CmdError> {
        match self {
            Source::Native { tape, names, groups_by_account, use_index } => {
                let index = tape.index().filter(|_| *use_index);
                let mut stats = WalkStats { blocks: tape.blocks(), indexed: index.is_some(), ..WalkStats::default() };
                let per = tape.block_records();
                let wanted = |id: u32| plan.instruments.is_empty() || plan.instruments.contains(&id);
                for b in 0..tape.blocks() {
                    if let Some(index) = index {
                        let c = &index.block(b).check;
                        if c.max_ts < plan.from_ns || c.min_ts > plan.to_ns || !index.has_any(b, &plan.instruments) {
                            passed(c.max_ts);
                            continue;
                        }
                    }
                    tape.verify_block(b).map_err(|e| CmdError::Usage(e.to_string()))?;
                    stats.blocks_read += 1;
                    for i in b * per..((b + 1) * per).min(tape.len()) {
                        stats.records_read += 1;
                        let record = tape.record(i);
                        if !wanted(record.instrument) {
                            passed(record.ts_ns);
                            continue;
                        }
                        let event = record.to_event(groups_by_account);
                        if f(&event, names).is_break() {
                            return Ok(stats);
                        }
                    }
                    tape.release_before((b + 1) * per);
                }
                Ok(stats)
            }
            Source::Csv { path, groups } => {
                let file = std::fs::File::open(path)
                    .map_err(|e| CmdError::Usage(format!("{}: cannot open tape: {e}", path.display())))?;
                let validator = Validator::new(Limits::default(), groups.clone());
                let names = crate::cmd::validator_names(&validator, groups.clone());
                let mut feed = CsvFeed::new(file, path, validator, RejectLog::discard())
                    .map_err(|e| CmdError::Usage(e.to_string()))?;
                let mut stats = WalkStats::default();
                let mut stopped = false;
                while !stopped {
                    let more = feed
                        .pump_until(&mut |event| {
                            stats.records_read += 1;
                            stopped = f(event, &names).is_break();
                            !stopped
                        })
                        .map_err(|e| CmdError::Usage(e.to_string()))?;
                    if !more {
                        break;
                    }
                }
                Ok(stats)
            }
        }
    }
}

/// The `ts_ns` of a CSV tape's first data line (for `HH:MM:SS` times);
/// `None` when it has none or the line does not parse (the walk then
/// reports the tape's own problem).
pub fn first_csv_ts(path: &Path) -> Result<Option<i64>, CmdError> {
    use std::io::BufRead;
    if crate::outputs::is_stdio(path) {
        return Ok(None);
    }
    let file =
        std::fs::File::open(path).map_err(|e| CmdError::Usage(format!("{}: cannot open tape: {e}", path.display())))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let _header = lines.next();
    for line in lines.take(1000) {
        let Ok(line) = line else { return Ok(None) };
        if let Some(ts) = line.split(',').nth(1).and_then(|t| t.parse::<i64>().ok()) {
            return Ok(Some(ts));
        }
    }
    Ok(None)
}

//! The analyst's tools over a tape: the filters (`filter`), reading only
//! the blocks a filter needs (`walk`), the order and book reconstruction of
//! one instrument for a report (`overlay`), and the self-contained HTML
//! report of `tapewatch investigate` (`report`). The commands themselves
//! are `cmd/{cat,slice,investigate}.rs`; replay's filters are
//! `replay_filter`.

pub mod filter;
pub mod overlay;
pub mod replay_filter;
pub mod report;
pub mod walk;

use crate::cmd::CmdError;
use filter::{Filter, Matcher, clock};
use std::sync::Arc;
use walk::{BlockPlan, Source};

/// The tape's event-time span: (first record's, least, greatest), from the
/// index when there is one, else from the first and last blocks (verified)
/// as a best guess (`None` for a CSV tape or an empty one).
pub fn tape_span(source: &Source) -> Result<Option<(i64, i64, i64)>, CmdError> {
    let Source::Native { tape, .. } = source else { return Ok(None) };
    if tape.is_empty() {
        return Ok(None);
    }
    if let Some(index) = tape.index() {
        let first = index.block(0).check.first_ts;
        let (min, max) = (0..index.blocks())
            .map(|b| index.block(b).check)
            .fold((i64::MAX, i64::MIN), |(lo, hi), c| (lo.min(c.min_ts), hi.max(c.max_ts)));
        return Ok(Some((first, min, max)));
    }
    let last = tape.blocks() - 1;
    tape.verify_block(0).map_err(|e| CmdError::Usage(e.to_string()))?;
    tape.verify_block(last).map_err(|e| CmdError::Usage(e.to_string()))?;
    let per = tape.block_records();
    let ends = (0..per.min(tape.len())).chain(last * per..tape.len());
    let (min, max) =
        ends.map(|i| tape.record(i).ts_ns).fold((i64::MAX, i64::MIN), |(lo, hi), ts| (lo.min(ts), hi.max(ts)));
    Ok(Some((tape.record(0).ts_ns, min, max)))
}

/// Resolves a filter against an opened tape: names that are not on a
/// native tape and times outside it are bad input (exit 2), every problem
/// at once. Returns the record matcher and the block plan.
pub fn resolve(
    source: &Source,
    filter: Filter,
    groups: Arc<crate::symbols::Groups>,
) -> Result<(Matcher, BlockPlan), CmdError> {
    let mut problems = Vec::new();
    let mut ids = Vec::new();
    if source.is_native() {
        for name in &filter.instruments {
            match source.instrument_id(name) {
                Some(id) => ids.push(id),
                None => problems.push(format!("--instrument {name}: no record of it on the tape")),
            }
        }
        if let Source::Native { names, .. } = source {
            let on_tape = |name: &str| (0..names.accounts.len() as u32).any(|id| names.accounts.get_string(id) == name);
            for name in &filter.accounts {
                if !on_tape(name) {
                    problems.push(format!("--account {name}: no record of it on the tape"));
                }
            }
            for group in &filter.groups {
                let known = groups.names().iter().any(|g| g == group) || on_tape(group);
                if !known {
                    problems.push(format!(
                        "--group {group}: not a group of accounts.csv{}, nor an account on the tape",
                        if groups.names().is_empty() { " (no accounts.csv loaded)" } else { "" }
                    ));
                }
            }
        }
    }
    let mut matcher = Matcher::new(filter, groups);
    let mut plan = BlockPlan { instruments: ids, from_ns: i64::MIN, to_ns: i64::MAX };
    if let Some(first) = source.first_ts()? {
        let (from, to) = matcher.start(first);
        plan.from_ns = from;
        plan.to_ns = to;
        if let Some((_, min, max)) = tape_span(source)?
            && (from > max || to < min)
        {
            problems.push(format!(
                "--from/--to {}..{}: outside the tape, whose records run from {} to {} (Asia/Shanghai)",
                if from == i64::MIN { "start".to_string() } else { clock(from) },
                if to == i64::MAX { "end".to_string() } else { clock(to) },
                clock(min),
                clock(max)
            ));
        }
    }
    if problems.is_empty() { Ok((matcher, plan)) } else { Err(CmdError::Usage(problems.join("\n"))) }
}

/// Writes an output whole or not at all: a regular file is written to
/// `<path>.partial` (created through `outputs::create`: locked) and renamed
/// over `path` only once `write` succeeded, so a failed run leaves `path`
/// as it was; stdout and devices are written in place.
pub fn write_atomically(
    path: &std::path::Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> Result<(), CmdError>,
) -> Result<(), CmdError> {
    use std::io::Write;
    let failed = |e: std::io::Error| CmdError::Failed(format!("{}: cannot write: {e}", path.display()));
    if crate::outputs::is_special(path) {
        let file = crate::outputs::create(path).map_err(failed)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
        write(&mut out)?;
        return out
            .flush()
            .map_err(|e| if crate::outputs::is_stdout(path) { crate::cmd::stdout_error(&e) } else { failed(e) });
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let file = crate::outputs::create(&partial).map_err(failed)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
    let result = write(&mut out)
        .and_then(|()| out.flush().map_err(failed))
        .and_then(|()| out.get_ref().sync_all().map_err(failed))
        .and_then(|()| std::fs::rename(&partial, path).map_err(failed));
    match result {
        Ok(()) => {
            crate::outputs::keep(&partial);
            Ok(())
        }
        Err(e) => {
            crate::outputs::remove_created(&partial);
            Err(e)
        }
    }
}

/// Appends one event as a FEED.md line (with its newline).
pub fn write_feed_line(out: &mut Vec<u8>, e: &crate::event::Event, names: &crate::symbols::Names) {
    crate::sink::write_feed_line(out, e, names);
}

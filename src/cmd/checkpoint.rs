//! `tapewatch checkpoint ls|show|verify DIR`: what a state directory holds.
//! Opens the database read-only (no lock), so it also works while a replay
//! is checkpointing into the directory.

use super::CmdError;
use crate::checkpoint::recover;
use crate::checkpoint::store::Store;
use crate::checkpoint::{Manifest, sections, store};
use crate::detect::registry;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// A line to stdout, through `cmd::print`: a closed pipe (`| head -1`) ends
/// the command quietly, any other write error fails it; neither panics.
macro_rules! say {
    ($($arg:tt)*) => {
        super::print(&format!("{}\n", format_args!($($arg)*)))?
    };
}

#[derive(clap::Args, Debug, Clone)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Action {
    /// One line per checkpoint: id, position, size, age, and whether it verifies.
    Ls { dir: PathBuf },
    /// Every field of one checkpoint's manifest (default: the newest).
    Show { dir: PathBuf, id: Option<u64> },
    /// Verifies every checkpoint (checksums of manifest, source snapshot and
    /// shard files); exits 1 if any fails.
    Verify { dir: PathBuf },
}

pub fn run(args: CheckpointArgs) -> Result<(), CmdError> {
    match args.action {
        Action::Ls { dir } => {
            let store = Store::open_read_only(&dir).map_err(CmdError::Usage)?;
            let ids = store.checkpoint_ids().map_err(CmdError::Failed)?;
            if ids.is_empty() {
                say!("no checkpoints in {}", dir.display());
            }
            for id in ids {
                let verified = recover::load(&store, id);
                match recover::manifest(&store, id) {
                    Ok(m) => say!(
                        "{id:>6}  after seq {:<10} {:<24} {:>10} bytes  {:>8} old  {}",
                        m.last_seq,
                        position(&m),
                        m.bytes(),
                        age(m.created_unix_ms),
                        match verified {
                            Ok(_) => "verified".to_string(),
                            Err(e) => format!("BAD: {e}"),
                        }
                    ),
                    Err(e) => say!("{id:>6}  BAD: {e}"),
                }
            }
            Ok(())
        }
        Action::Show { dir, id } => {
            let store = Store::open_read_only(&dir).map_err(CmdError::Usage)?;
            let ids = store.checkpoint_ids().map_err(CmdError::Failed)?;
            let Some(id) = id.or(ids.last().copied()) else {
                return Err(CmdError::Failed(format!("{}: no checkpoints", dir.display())));
            };
            let m = recover::manifest(&store, id).map_err(CmdError::Failed)?;
            say!("checkpoint   {}", m.id);
            say!("age          {}", age(m.created_unix_ms));
            say!("after seq    {}", m.last_seq);
            say!("position     {} ({} records read)", position(&m), m.records_read);
            say!("shards       {}", m.shards);
            say!(
                "outputs      alerts {} bytes, late {} bytes, rejects {} bytes",
                m.alerts_bytes,
                m.late_bytes,
                m.rejects_bytes
            );
            let per_rule: Vec<String> =
                m.alerts.iter().map(|&(id, n)| format!("{n} {}", crate::detect::registry::name(id))).collect();
            say!(
                "counts       {} alerts ({}), {} late, {} applied",
                m.alerts.iter().map(|(_, n)| n).sum::<u64>(),
                per_rule.join(", "),
                m.late,
                m.applied
            );
            say!("names        {} accounts, {} instruments", m.accounts, m.instruments);
            say!("source       {} bytes in the state database, xxh3 {:016x}", m.source_len, m.source_hash);
            for (shard, f) in m.shard_files.iter().enumerate() {
                say!(
                    "shard {shard:<6} {} bytes in {}, xxh3 {:016x}",
                    f.len,
                    store.shard_path(id, shard).display(),
                    f.hash
                );
            }
            say!("total        {} bytes (+{} per shard file header)", m.bytes(), store::SNAP_HEADER_BYTES);
            match recover::load(&store, id) {
                Ok(loaded) => {
                    // Per section (rule or view), summed over the shards.
                    let mut totals: Vec<SectionTotal> = Vec::new();
                    for payload in &loaded.shards {
                        for (sid, _, body) in sections(payload).map_err(|e| CmdError::Failed(e.to_string()))? {
                            let counts = registry::describe(sid, body).map_err(|e| CmdError::Failed(e.to_string()))?;
                            let at = match totals.iter().position(|t| t.0 == sid) {
                                Some(at) => at,
                                None => {
                                    totals.push((sid, 0, counts.iter().map(|&(k, _)| (k, 0)).collect()));
                                    totals.len() - 1
                                }
                            };
                            totals[at].1 += body.len() as u64;
                            for (total, (_, n)) in totals[at].2.iter_mut().zip(counts) {
                                total.1 += n;
                            }
                        }
                    }
                    for (sid, bytes, counts) in totals {
                        let what: String = counts.iter().map(|(k, n)| format!("; {n} {k}")).collect();
                        println!("section      {} ({sid:#x}): {bytes} bytes{what}", section_name(sid));
                    }
                    say!("verified     yes");
                }
                Err(e) => say!("verified     NO: {e}"),
            }
            Ok(())
        }
        Action::Verify { dir } => {
            let store = Store::open_read_only(&dir).map_err(CmdError::Usage)?;
            let ids = store.checkpoint_ids().map_err(CmdError::Failed)?;
            let mut bad = Vec::new();
            for &id in &ids {
                match recover::load(&store, id) {
                    Ok(_) => say!("checkpoint {id}: ok"),
                    Err(e) => {
                        say!("checkpoint {id}: FAILED: {e}");
                        bad.push(id);
                    }
                }
            }
            if bad.is_empty() {
                say!("{} checkpoint{} verified in {}", ids.len(), if ids.len() == 1 { "" } else { "s" }, dir.display());
                Ok(())
            } else {
                Err(CmdError::Failed(format!("{}: checkpoints {bad:?} do not verify", dir.display())))
            }
        }
    }
}

fn position(m: &Manifest) -> String {
    if m.identity.format == 0 {
        format!("byte {} line {}", m.offset, m.line_no)
    } else {
        format!("record {}", m.offset)
    }
}

fn age(created_unix_ms: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let secs = now.saturating_sub(created_unix_ms) / 1000;
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

/// A section's name: its rule's, or its view's.
fn section_name(id: u16) -> &'static str {
    crate::detect::views::section_name(id).unwrap_or_else(|| registry::name(id))
}

/// A section id, its bytes and its counts, summed over the shards.
type SectionTotal = (u16, u64, Vec<(&'static str, u64)>);

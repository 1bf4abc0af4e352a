//! Interning of account and instrument names to dense integer ids, and the
//! account groups of accounts.csv.
//!
//! The source thread is the only writer: it interns names as records arrive.
//! The alert sink reads names back concurrently to write alerts, so the name
//! table is append-only, allocated once at its stated capacity, and published
//! through an atomic length (no lock, no reallocation that could move it).

use crate::event::{AccountId, GROUP_SELF, GroupId};
use crate::flat_map::FlatMap;
use rustc_hash::FxHashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Names are at most 16 bytes (FEED.md: accounts 1-16, instruments 1-12).
pub const NAME_MAX: usize = 16;

/// A name packed into 16 bytes, zero-padded; FEED.md names never contain NUL.
pub type Packed = u128;

#[inline]
pub fn pack(name: &[u8]) -> Packed {
    debug_assert!(!name.is_empty() && name.len() <= NAME_MAX);
    let mut bytes = [0u8; NAME_MAX];
    bytes[..name.len()].copy_from_slice(name);
    u128::from_le_bytes(bytes)
}

pub fn unpack(packed: Packed) -> ([u8; NAME_MAX], usize) {
    let bytes = packed.to_le_bytes();
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(NAME_MAX);
    (bytes, len)
}

/// Append-only id -> name table, readable from other threads while the
/// source appends.
pub struct NameTable {
    names: Box<[[AtomicU64; 2]]>,
    len: AtomicUsize,
}

impl NameTable {
    pub fn with_capacity(capacity: usize) -> NameTable {
        NameTable {
            names: (0..capacity).map(|_| [AtomicU64::new(0), AtomicU64::new(0)]).collect(),
            len: AtomicUsize::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.names.len()
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A complete table, e.g. from a native tape's symbol section.
    pub fn from_names(names: &[&[u8]]) -> NameTable {
        let table = NameTable::with_capacity(names.len());
        for name in names {
            table.push(pack(name));
        }
        table
    }

    /// Single writer only (the source thread).
    fn push(&self, packed: Packed) -> Option<u32> {
        let id = self.len.load(Ordering::Relaxed);
        let slot = self.names.get(id)?;
        slot[0].store(packed as u64, Ordering::Relaxed);
        slot[1].store((packed >> 64) as u64, Ordering::Relaxed);
        // Release: a reader that sees the new length sees the name.
        self.len.store(id + 1, Ordering::Release);
        Some(id as u32)
    }

    /// The name of `id`. Ids come from records that crossed a ring after
    /// the id was published, so they are always below `len`.
    pub fn get(&self, id: u32) -> ([u8; NAME_MAX], usize) {
        let id = id as usize;
        assert!(id < self.len(), "name id {id} not yet published");
        let slot = &self.names[id];
        let packed = slot[0].load(Ordering::Relaxed) as u128 | ((slot[1].load(Ordering::Relaxed) as u128) << 64);
        unpack(packed)
    }

    pub fn get_string(&self, id: u32) -> String {
        let (bytes, len) = self.get(id);
        String::from_utf8_lossy(&bytes[..len]).into_owned()
    }
}

/// Source-side interner: name -> id, writing each new name to a shared table.
pub struct Interner {
    ids: FlatMap<Packed, u32>,
    table: Arc<NameTable>,
}

impl Interner {
    pub fn new(capacity: usize) -> Interner {
        // Small up front (a table far larger than the names in use costs cache
        // misses); the map grows as names arrive, but the name table itself
        // never moves.
        let ids = FlatMap::with_capacity(capacity.min(1 << 12));
        Interner { ids, table: Arc::new(NameTable::with_capacity(capacity)) }
    }

    /// The id of `name`, interning it if new; `None` when the table is full.
    #[inline]
    pub fn intern(&mut self, name: &[u8]) -> Option<u32> {
        self.intern_packed(pack(name))
    }

    /// As `intern`, for a name the decoder already packed.
    #[inline]
    pub fn intern_packed(&mut self, packed: Packed) -> Option<u32> {
        if let Some(&id) = self.ids.get(packed) {
            return Some(id);
        }
        let id = self.table.push(packed)?;
        self.ids.insert(packed, id);
        Some(id)
    }

    /// Brings the table slot of a name about to be interned into cache.
    #[inline]
    pub fn prefetch(&self, packed: Packed) {
        self.ids.prefetch(packed);
    }

    pub fn table(&self) -> &Arc<NameTable> {
        &self.table
    }

    pub fn names(&self) -> Vec<Vec<u8>> {
        (0..self.table.len() as u32)
            .map(|id| {
                let (bytes, len) = self.table.get(id);
                bytes[..len].to_vec()
            })
            .collect()
    }
}

/// accounts.csv: which accounts are related. Read-only once loaded.
#[derive(Default)]
pub struct Groups {
    by_account: FxHashMap<Packed, GroupId>,
    names: Vec<String>,
}

/// The most a reference file (accounts.csv, instruments.csv) may hold: far
/// above a market's (a million accounts take about 20 MiB), and a bound on
/// what reading one allocates.
pub const REFERENCE_MAX_BYTES: u64 = 64 << 20;

/// Reads a reference file whole, refusing one past `REFERENCE_MAX_BYTES`
/// (read through a limit, so a device or a growing file is bounded too).
pub fn read_reference(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(REFERENCE_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if bytes.len() as u64 > REFERENCE_MAX_BYTES {
        return Err(format!(
            "{}: larger than {} MiB, the most a reference file may hold",
            path.display(),
            REFERENCE_MAX_BYTES >> 20
        ));
    }
    Ok(bytes)
}

/// At most this many problems of one file are listed; the rest are counted.
const PROBLEMS_SHOWN: usize = 50;

/// Every problem of a file, one a line, the first `PROBLEMS_SHOWN` in full.
pub fn list_problems(problems: &[String]) -> String {
    let mut text = problems[..problems.len().min(PROBLEMS_SHOWN)].join("\n");
    if problems.len() > PROBLEMS_SHOWN {
        text += &format!("\n... and {} more problems", problems.len() - PROBLEMS_SHOWN);
    }
    text
}

impl Groups {
    pub fn load(path: &Path) -> Result<Groups, String> {
        let bytes = read_reference(path)?;
        let text = std::str::from_utf8(&bytes).map_err(|e| format!("{}: not UTF-8: {e}", path.display()))?;
        Groups::parse(text)
            .map_err(|e| e.lines().map(|line| format!("{}: {line}", path.display())).collect::<Vec<_>>().join("\n"))
    }

    /// Parses `account,group` lines after the header; every problem is
    /// reported, each with its line number.
    pub fn parse(text: &str) -> Result<Groups, String> {
        let mut groups = Groups::default();
        let mut group_ids: FxHashMap<&str, GroupId> = FxHashMap::default();
        let mut problems = Vec::new();
        // A byte-order mark is accepted, as on a tape.
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, header)) if header.trim_end() == "account,group" => {}
            // `{:?}` shows what makes it differ (a stray byte, a space) instead of a look-alike.
            Some((_, header)) => problems.push(format!("line 1: header must be `account,group`, found {header:?}")),
            None => problems.push("empty file: expected the header `account,group`".to_string()),
        }
        for (index, line) in lines {
            let line_no = index + 1;
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let Some((account, group)) = line.split_once(',') else {
                problems.push(format!("line {line_no}: expected `account,group`, found `{line}`"));
                continue;
            };
            if !valid_account(account.as_bytes()) {
                problems.push(format!("line {line_no}: bad account `{account}` (1-16 bytes of [A-Za-z0-9_-])"));
                continue;
            }
            // Fields are not trimmed (a tape's are not either): a space is
            // refused, never made part of a name.
            if group.starts_with(char::is_whitespace) || group.ends_with(char::is_whitespace) {
                problems.push(format!("line {line_no}: group {group:?} has a space at its start or end"));
                continue;
            }
            if !valid_group(group) {
                problems.push(format!(
                    "line {line_no}: bad group `{group}` (1-64 bytes, no comma, quote, backslash or control character)"
                ));
                continue;
            }
            let next_id = group_ids.len() as GroupId;
            let id = *group_ids.entry(group).or_insert(next_id);
            if id as usize == groups.names.len() {
                groups.names.push(group.to_string());
            }
            if let Some(previous) = groups.by_account.insert(pack(account.as_bytes()), id)
                && previous != id
            {
                problems.push(format!("line {line_no}: account `{account}` is listed in two groups"));
            }
        }
        if problems.is_empty() { Ok(groups) } else { Err(list_problems(&problems)) }
    }

    /// The group of an account: its accounts.csv group, or itself.
    #[inline]
    pub fn group_of(&self, packed_account: Packed, account: AccountId) -> GroupId {
        match self.by_account.get(&packed_account) {
            Some(&group) => group,
            None => GROUP_SELF | account,
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

pub fn valid_account(name: &[u8]) -> bool {
    (1..=16).contains(&name.len()) && name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub fn valid_instrument(name: &[u8]) -> bool {
    (1..=12).contains(&name.len())
        && name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn valid_group(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| !c.is_control() && !matches!(c, ',' | '"' | '\\'))
}

/// Resolves ids back to names for output; shared by the sink threads.
#[derive(Clone)]
pub struct Names {
    pub accounts: Arc<NameTable>,
    pub instruments: Arc<NameTable>,
    pub groups: Arc<Groups>,
}

impl Names {
    /// Appends a group's name: a group of accounts.csv, or the account's own.
    pub fn write_group(&self, out: &mut Vec<u8>, group: GroupId) {
        if group & GROUP_SELF != 0 {
            self.write_account(out, group & !GROUP_SELF);
        } else {
            out.extend_from_slice(self.groups.names[group as usize].as_bytes());
        }
    }

    pub fn write_account(&self, out: &mut Vec<u8>, account: AccountId) {
        let (bytes, len) = self.accounts.get(account);
        out.extend_from_slice(&bytes[..len]);
    }

    pub fn write_instrument(&self, out: &mut Vec<u8>, instrument: u32) {
        let (bytes, len) = self.instruments.get(instrument);
        out.extend_from_slice(&bytes[..len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference files are bounded before they are read whole: a huge file
    /// (sparse here) or an endless device is refused naming the path, and a
    /// file of many bad lines lists the first problems and counts the rest.
    #[test]
    fn reference_files_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let huge = dir.path().join("huge.accounts.csv");
        let file = std::fs::File::create(&huge).unwrap();
        file.set_len(REFERENCE_MAX_BYTES + 1).unwrap();
        let e = Groups::load(&huge).err().expect("refused");
        assert!(e.contains("huge.accounts.csv: larger than 64 MiB"), "{e}");
        let e = crate::instruments::Instruments::load(Path::new("/dev/zero")).unwrap_err();
        assert!(e.contains("/dev/zero: larger than 64 MiB"), "{e}");
        let bad = dir.path().join("bad.accounts.csv");
        std::fs::write(&bad, format!("account,group\n{}", "A 1,G\n".repeat(1000))).unwrap();
        let e = Groups::load(&bad).err().expect("refused");
        assert_eq!(e.lines().count(), PROBLEMS_SHOWN + 1, "{e}");
        assert!(e.ends_with("bad.accounts.csv: ... and 950 more problems"), "{e}");
    }

    #[test]
    fn name_rules_of_feed_md() {
        for (name, account, instrument) in [
            (&b"A0001"[..], true, true),
            (b"acct_1-x", true, true),
            (b"000001.SZ", false, true),
            (b"0123456789abcdef", true, false),
            (b"0123456789abcdefg", false, false),
            (b"", false, false),
            (b"A 1", false, false),
            (b"A,1", false, false),
            ("Ä1".as_bytes(), false, false),
        ] {
            assert_eq!(valid_account(name), account, "{:?}", String::from_utf8_lossy(name));
            assert_eq!(valid_instrument(name), instrument, "{:?}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn interns_in_order_of_first_appearance() {
        let mut interner = Interner::new(4);
        assert_eq!(interner.intern(b"B"), Some(0));
        assert_eq!(interner.intern(b"A"), Some(1));
        assert_eq!(interner.intern(b"B"), Some(0));
        assert_eq!(interner.table().get_string(1), "A");
        assert_eq!(interner.intern(b"ABCDEFGHIJKLMNOP"), Some(2));
        assert_eq!(interner.table().get_string(2), "ABCDEFGHIJKLMNOP");
        assert_eq!(interner.intern(b"C"), Some(3));
        assert_eq!(interner.intern(b"D"), None, "a full table refuses, it does not grow");
    }

    #[test]
    fn groups_parse_and_resolve() {
        let groups = Groups::parse("account,group\nA1,G\nA2,G\nA3,H\n").unwrap();
        assert_eq!(groups.group_of(pack(b"A1"), 7), groups.group_of(pack(b"A2"), 9));
        assert_ne!(groups.group_of(pack(b"A1"), 7), groups.group_of(pack(b"A3"), 8));
        assert_eq!(groups.group_of(pack(b"Z"), 5), GROUP_SELF | 5);
    }

    #[test]
    fn groups_report_every_problem_with_its_line() {
        let err = Groups::parse("account,group\nA1,G\nbad account,G\nA2\nA1,H\n").err().unwrap();
        assert!(err.contains("line 3: bad account"), "{err}");
        assert!(err.contains("line 4: expected"), "{err}");
        assert!(err.contains("line 5: account `A1` is listed in two groups"), "{err}");
        let err = Groups::parse("acct,grp\n").err().unwrap();
        assert!(err.contains("line 1: header"), "{err}");
    }

    /// Regression (issue 13): accounts.csv with a byte-order mark was
    /// refused with a message that looked like the expected header, and
    /// `A1, G1` made a group named " G1".
    #[test]
    fn regression_accounts_bom_accepted_and_spaces_refused() {
        let groups = Groups::parse("\u{FEFF}account,group\nA1,G1\nA2,G1\n").unwrap();
        assert_eq!(groups.group_of(pack(b"A1"), 0), groups.group_of(pack(b"A2"), 1));
        let err = Groups::parse("account,group\nA1, G1\nA2,G1 \n").err().unwrap();
        assert!(err.contains("line 2: group \" G1\" has a space"), "{err}");
        assert!(err.contains("line 3: group \"G1 \" has a space"), "{err}");
        let err = Groups::parse("account ,group\n").err().unwrap();
        assert!(err.contains("found \"account ,group\""), "{err}");
    }
}

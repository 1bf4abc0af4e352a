//! instruments.csv, the day's reference data per instrument (FEED.md):
//! previous close, price limits and tick, and an optional `tier` column.
//! Loaded once before a run, read-only after; its hash is part of a
//! checkpoint's identity, because the book skips orders outside the limits.

use crate::event::{PX_SCALE, Px, parse_px, write_px};
use crate::symbols::{Packed, pack, valid_instrument};
use rustc_hash::FxHashMap;
use std::path::Path;
use xxhash_rust::xxh3::Xxh3;

/// One instrument's line of instruments.csv.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstrumentInfo {
    pub prev_close: Px,
    pub limit_up: Px,
    pub limit_down: Px,
    pub tick: Px,
    /// The optional extra column (e.g. a board or liquidity tier); not used
    /// by the book, kept for rules that want it.
    pub tier: Option<Box<str>>,
}

/// The loaded file: instrument name -> reference data. Empty when no file
/// was given (then no instrument counts as missing from it).
#[derive(Debug, Default)]
pub struct Instruments {
    by_name: FxHashMap<Packed, InstrumentInfo>,
    /// Whether a file was loaded at all.
    loaded: bool,
    hash: u64,
}

const HEADER: &str = "instrument,prev_close,limit_up,limit_down,tick";
const HEADER_TIER: &str = "instrument,prev_close,limit_up,limit_down,tick,tier";

impl Instruments {
    pub fn load(path: &Path) -> Result<Instruments, String> {
        let bytes = crate::symbols::read_reference(path)?;
        let text = std::str::from_utf8(&bytes).map_err(|e| format!("{}: not UTF-8: {e}", path.display()))?;
        Instruments::parse(text)
            .map_err(|e| e.lines().map(|line| format!("{}: {line}", path.display())).collect::<Vec<_>>().join("\n"))
    }

    /// Parses the file after its header; every problem is reported at once,
    /// each with its line number. A BOM and CRLF line ends are accepted, as
    /// on a tape.
    pub fn parse(text: &str) -> Result<Instruments, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut problems = Vec::new();
        let mut lines = text.lines().enumerate();
        let columns = match lines.next().map(|(_, h)| h.trim_end_matches('\r')) {
            Some(HEADER) => 5,
            Some(HEADER_TIER) => 6,
            Some(header) => {
                problems.push(format!("line 1: header must be `{HEADER}` (optionally `,tier`), found `{header}`"));
                // Go on reading, so the lines' problems are reported too.
                5
            }
            None => {
                problems.push(format!("empty file: expected the header `{HEADER}`"));
                5
            }
        };
        let mut by_name: FxHashMap<Packed, InstrumentInfo> = FxHashMap::default();
        let mut first_line: FxHashMap<Packed, usize> = FxHashMap::default();
        let mut hasher = Xxh3::new();
        for (index, line) in lines {
            let line_no = index + 1;
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').collect();
            if fields.len() != columns {
                problems.push(format!("line {line_no}: expected {columns} columns, found {}: `{line}`", fields.len()));
                continue;
            }
            let name = fields[0];
            let mut bad = Vec::new();
            if !valid_instrument(name.as_bytes()) {
                bad.push(format!("bad instrument `{name}` (1-12 bytes of [A-Za-z0-9._-])"));
            }
            let mut px = |column: &str, text: &str| match parse_px(text.as_bytes()) {
                Some(px) if px > 0 => px,
                _ => {
                    bad.push(format!("bad {column} `{text}` (a decimal > 0, at most 4 places)"));
                    0
                }
            };
            let info = InstrumentInfo {
                prev_close: px("prev_close", fields[1]),
                limit_up: px("limit_up", fields[2]),
                limit_down: px("limit_down", fields[3]),
                tick: px("tick", fields[4]),
                tier: fields.get(5).filter(|t| !t.is_empty()).map(|t| Box::from(*t)),
            };
            if bad.is_empty() && !(info.limit_down <= info.prev_close && info.prev_close <= info.limit_up) {
                bad.push("limits must satisfy limit_down <= prev_close <= limit_up".to_string());
            }
            if !bad.is_empty() {
                problems.push(format!("line {line_no}: {}", bad.join("; ")));
                continue;
            }
            let packed = pack(name.as_bytes());
            if let Some(first) = first_line.get(&packed) {
                problems.push(format!("line {line_no}: instrument `{name}` already listed on line {first}"));
                continue;
            }
            first_line.insert(packed, line_no);
            hasher.update(&packed.to_le_bytes());
            for v in [info.prev_close, info.limit_up, info.limit_down, info.tick] {
                hasher.update(&v.to_le_bytes());
            }
            hasher.update(info.tier.as_deref().unwrap_or("").as_bytes());
            hasher.update(b"\n");
            by_name.insert(packed, info);
        }
        if !problems.is_empty() {
            return Err(crate::symbols::list_problems(&problems));
        }
        Ok(Instruments { by_name, loaded: true, hash: hasher.digest() })
    }

    #[inline]
    pub fn get(&self, name: Packed) -> Option<&InstrumentInfo> {
        self.by_name.get(&name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The tiers the instruments are in.
    pub fn tiers(&self) -> std::collections::BTreeSet<&str> {
        self.by_name.values().filter_map(|i| i.tier.as_deref()).collect()
    }

    /// Whether a file was loaded (an instrument missing from it is counted).
    pub fn loaded(&self) -> bool {
        self.loaded
    }

    /// A hash of the loaded data (0 when none), for the checkpoint identity.
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

/// A price as FEED.md writes it, as a `String` (cold paths: output, errors).
pub fn px_string(px: Px) -> String {
    let mut out = Vec::new();
    if px < 0 {
        out.push(b'-');
    }
    write_px(&mut out, px.abs());
    String::from_utf8(out).unwrap_or_default()
}

/// One 1/10,000 unit: the tick of an instrument without reference data.
pub const DEFAULT_TICK: Px = 1;
const _: () = assert!(PX_SCALE == 10_000);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_bom_crlf_and_tier() {
        let text = "\u{feff}instrument,prev_close,limit_up,limit_down,tick,tier\r\n000001,10.00,11.00,9.00,0.01,main\r\n300750,200.0000,240.0000,160.0000,0.01,\r\n";
        let refs = Instruments::parse(text).unwrap();
        assert_eq!(refs.len(), 2);
        let a = refs.get(pack(b"000001")).unwrap();
        assert_eq!((a.prev_close, a.limit_up, a.limit_down, a.tick), (100_000, 110_000, 90_000, 100));
        assert_eq!(a.tier.as_deref(), Some("main"));
        assert_eq!(refs.get(pack(b"300750")).unwrap().tier, None);
        assert!(refs.loaded() && refs.hash() != 0);
        let plain =
            Instruments::parse("instrument,prev_close,limit_up,limit_down,tick\n000001,10,11,9,0.01\n").unwrap();
        assert_eq!(plain.get(pack(b"000001")).unwrap().limit_up, 110_000);
    }

    #[test]
    fn the_hash_follows_the_data_not_the_line_ends() {
        let lf = Instruments::parse("instrument,prev_close,limit_up,limit_down,tick\nX,10,11,9,0.01\n").unwrap();
        let crlf = Instruments::parse("instrument,prev_close,limit_up,limit_down,tick\r\nX,10,11,9,0.01\r\n").unwrap();
        let other = Instruments::parse("instrument,prev_close,limit_up,limit_down,tick\nX,10,11.5,9,0.01\n").unwrap();
        assert_eq!(lf.hash(), crlf.hash());
        assert_ne!(lf.hash(), other.hash());
        assert_eq!(Instruments::default().hash(), 0);
    }

    #[test]
    fn reports_every_problem_with_its_line() {
        let text = "instrument,prev_close,limit_up,limit_down,tick\n\
                    X,10,11,9,0.01\n\
                    bad name,10,11,9,0.01\n\
                    Y,10,11,9\n\
                    Z,ten,11,9,0\n\
                    X,10,11,9,0.01\n\
                    W,10,9,11,0.01\n";
        let err = Instruments::parse(text).err().unwrap();
        assert!(err.contains("line 3: bad instrument `bad name`"), "{err}");
        assert!(err.contains("line 4: expected 5 columns, found 4"), "{err}");
        assert!(err.contains("line 5: bad prev_close `ten`"), "{err}");
        assert!(err.contains("bad tick `0`"), "{err}");
        assert!(err.contains("line 6: instrument `X` already listed on line 2"), "{err}");
        assert!(err.contains("line 7: limits must satisfy"), "{err}");
        let err = Instruments::parse("instrument,close\nX,10\n").err().unwrap();
        assert!(err.contains("line 1: header must be"), "{err}");
        assert!(err.contains("line 2: expected 5 columns"), "{err}");
        assert!(Instruments::parse("").err().unwrap().contains("empty file"));
    }

    #[test]
    fn prices_print_as_feed_md_writes_them() {
        assert_eq!(px_string(102_500), "10.2500");
        assert_eq!(px_string(1), "0.0001");
    }
}

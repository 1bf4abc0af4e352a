//! The analyst's filters (`--from/--to`, `--instrument`, `--account`,
//! `--group`), shared by `replay`, `slice`, `cat` and `investigate`: their
//! flags, their validation against a tape's names, and the per-record test.
//!
//! A record is selected when its instrument is one of `--instrument` (any
//! when none is given), its event time is in `[--from, --to]`, and, with
//! `--account`/`--group`, one of its parties (the account of an `N` or
//! `C`, the buyer or the seller of a `T`) is a selected account or belongs
//! to a selected group. Times are `HH:MM:SS[.fff]` in the trading day's
//! zone (Asia/Shanghai) on the tape's day, nanoseconds since the epoch, or
//! an ISO time (`2026-11-02T09:45:00`, zone Asia/Shanghai unless it ends in
//! `Z` or `+HH:MM`).
//!
//! Names are matched, not ids: a CSV tape interns as it goes, so the ids of
//! a name are resolved the first time the record stream shows them, and
//! cached per id (one table lookup per record afterwards).

use crate::cmd::book::At;
use crate::detect::state::episode::{NS_PER_DAY, NS_PER_SEC, ZONE_OFFSET_NS};
use crate::event::{Event, Kind};
use crate::symbols::{Groups, NameTable, pack, valid_account, valid_instrument};

/// The filter flags, flattened into each command that takes them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only records at or after this event time: `HH:MM:SS[.fff]` (Asia/Shanghai, on the tape's
    /// day), nanoseconds since the epoch, or an ISO time (`2026-11-02T09:45:00[.fff][Z|+08:00]`).
    #[arg(long)]
    pub from: Option<String>,
    /// Only records at or before this event time (same forms as --from).
    #[arg(long)]
    pub to: Option<String>,
    /// Only this instrument's records (repeat for several).
    #[arg(long)]
    pub instrument: Vec<String>,
    /// Only records with this account on either side (repeat for several).
    #[arg(long)]
    pub account: Vec<String>,
    /// Only records with an account of this accounts.csv group on either side (an account not in
    /// accounts.csv is a group of its own, named after it). Repeat for several.
    #[arg(long)]
    pub group: Vec<String>,
}

impl FilterArgs {
    pub fn is_empty(&self) -> bool {
        self.from.is_none()
            && self.to.is_none()
            && self.instrument.is_empty()
            && self.account.is_empty()
            && self.group.is_empty()
    }

    /// Checks the flags' syntax; every problem is pushed.
    pub fn validate(&self, problems: &mut Vec<String>) -> Filter {
        let mut time = |flag: &str, text: &Option<String>| -> Option<At> {
            let text = text.as_deref()?;
            parse_time(text).map_err(|e| problems.push(format!("{flag} {text}: {e}"))).ok()
        };
        let from = time("--from", &self.from);
        let to = time("--to", &self.to);
        for name in &self.instrument {
            if !valid_instrument(name.as_bytes()) {
                problems.push(format!("--instrument {name}: not an instrument name (1-12 bytes of [A-Za-z0-9._-])"));
            }
        }
        for name in &self.account {
            if !valid_account(name.as_bytes()) {
                problems.push(format!("--account {name}: not an account name (1-16 bytes of [A-Za-z0-9_-])"));
            }
        }
        if let (Some(At::Raw(from)), Some(At::Raw(to))) | (Some(At::Clock(from)), Some(At::Clock(to))) = (from, to)
            && from > to
        {
            problems.push(format!(
                "--from {} is after --to {}",
                self.from.as_deref().unwrap_or(""),
                self.to.as_deref().unwrap_or("")
            ));
        }
        Filter {
            from,
            to,
            instruments: self.instrument.clone(),
            accounts: self.account.clone(),
            groups: self.group.clone(),
        }
    }
}

/// Validated flags, not yet resolved against a tape.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub from: Option<At>,
    pub to: Option<At>,
    pub instruments: Vec<String>,
    pub accounts: Vec<String>,
    pub groups: Vec<String>,
}

impl Filter {
    /// Whether records are selected by party (account or group).
    pub fn by_party(&self) -> bool {
        !self.accounts.is_empty() || !self.groups.is_empty()
    }

    /// The group names the party flags select: `--group` as given, and the
    /// group of each `--account` (its accounts.csv group, or itself).
    pub fn group_names(&self, groups: &Groups) -> Vec<String> {
        let mut names = self.groups.clone();
        for account in &self.accounts {
            names.push(group_name(groups, account.as_bytes()));
        }
        names.sort();
        names.dedup();
        names
    }

    /// `[from, to]` in epoch nanoseconds, given the tape's first record.
    pub fn range(&self, first_ts: i64) -> (i64, i64) {
        (self.from.map_or(i64::MIN, |a| a.resolve(first_ts)), self.to.map_or(i64::MAX, |a| a.resolve(first_ts)))
    }
}

/// An account's group name: its accounts.csv group, or the account itself.
pub fn group_name(groups: &Groups, account: &[u8]) -> String {
    let id = groups.group_of(pack(account), 0);
    if id & crate::event::GROUP_SELF != 0 {
        String::from_utf8_lossy(account).into_owned()
    } else {
        groups.names()[id as usize].clone()
    }
}

/// Parses a time flag (see the module doc).
pub fn parse_time(text: &str) -> Result<At, String> {
    if text.len() >= 19 && text.as_bytes()[10] == b'T' {
        return parse_iso(text).map(At::Raw);
    }
    At::parse(text).map_err(|_| {
        "expected HH:MM:SS[.fff] (Asia/Shanghai), nanoseconds since the epoch, or an ISO time \
         (2026-11-02T09:45:00[.fff][Z|+08:00])"
            .to_string()
    })
}

fn parse_iso(text: &str) -> Result<i64, String> {
    let bad = || "expected an ISO time such as 2026-11-02T09:45:00.250+08:00".to_string();
    let (date, rest) = text.split_once('T').ok_or_else(bad)?;
    let d: Vec<&str> = date.split('-').collect();
    let [y, m, d] = d[..] else { return Err(bad()) };
    let num = |s: &str, len: usize| -> Result<i64, String> {
        if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) { s.parse().map_err(|_| bad()) } else { Err(bad()) }
    };
    let (y, m, d) = (num(y, 4)?, num(m, 2)?, num(d, 2)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    // The zone: `Z`, `+HH:MM`/`-HH:MM`, or none (Asia/Shanghai).
    let (clock, offset_ns) = if let Some(clock) = rest.strip_suffix('Z') {
        (clock, 0)
    } else if rest.len() > 6 && matches!(rest.as_bytes()[rest.len() - 6], b'+' | b'-') {
        let (clock, zone) = rest.split_at(rest.len() - 6);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, mm) = zone[1..].split_once(':').ok_or_else(bad)?;
        (clock, sign * (num(h, 2)? * 3600 + num(mm, 2)? * 60) * NS_PER_SEC)
    } else {
        (rest, ZONE_OFFSET_NS)
    };
    let At::Clock(of_day) = At::parse(clock).map_err(|_| bad())? else { return Err(bad()) };
    // Days since the epoch (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * NS_PER_DAY + of_day - offset_ns)
}

/// A filter resolved against a record stream: per-id verdicts cached as
/// ids appear, the time range fixed at the first record.
pub struct Matcher {
    filter: Filter,
    group_names: Vec<String>,
    range: Option<(i64, i64)>,
    /// Per instrument id: 0 not yet seen, 1 out, 2 in.
    instruments: Vec<u8>,
    /// Per account id, as for instruments (party filter only).
    accounts: Vec<u8>,
    /// Per account id: its group's name (for reports).
    groups: std::sync::Arc<Groups>,
}

impl Matcher {
    pub fn new(filter: Filter, groups: std::sync::Arc<Groups>) -> Matcher {
        let group_names = filter.group_names(&groups);
        Matcher { filter, group_names, range: None, instruments: Vec::new(), accounts: Vec::new(), groups }
    }

    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// The selected groups' names (party flags), sorted.
    pub fn group_names(&self) -> &[String] {
        &self.group_names
    }

    /// Fixes the time range against the tape's first record.
    pub fn start(&mut self, first_ts: i64) -> (i64, i64) {
        *self.range.get_or_insert_with(|| self.filter.range(first_ts))
    }

    pub fn range(&self) -> Option<(i64, i64)> {
        self.range
    }

    /// Whether instrument `id` (named in `names`) is selected.
    #[inline]
    pub fn instrument(&mut self, id: u32, names: &NameTable) -> bool {
        if self.filter.instruments.is_empty() {
            return true;
        }
        let i = id as usize;
        if i >= self.instruments.len() {
            self.instruments.resize(i + 1, 0);
        }
        if self.instruments[i] == 0 {
            let name = names.get_string(id);
            self.instruments[i] = 1 + self.filter.instruments.contains(&name) as u8;
        }
        self.instruments[i] == 2
    }

    /// Whether account `id` is a selected account or in a selected group.
    #[inline]
    pub fn account(&mut self, id: u32, names: &NameTable) -> bool {
        let i = id as usize;
        if i >= self.accounts.len() {
            self.accounts.resize(i + 1, 0);
        }
        if self.accounts[i] == 0 {
            let name = names.get_string(id);
            let group = group_name(&self.groups, name.as_bytes());
            let chosen = self.filter.accounts.contains(&name) || self.filter.groups.contains(&group);
            self.accounts[i] = 1 + chosen as u8;
        }
        self.accounts[i] == 2
    }

    /// Whether one of the record's parties is selected (true without party flags).
    #[inline]
    pub fn party(&mut self, e: &Event, accounts: &NameTable) -> bool {
        if !self.filter.by_party() {
            return true;
        }
        self.account(e.account, accounts) || (e.kind == Kind::Trade && self.account(e.contra_account, accounts))
    }

    /// The whole test: instrument, time, party. `start` must have been called.
    #[inline]
    pub fn selects(&mut self, e: &Event, instruments: &NameTable, accounts: &NameTable) -> bool {
        let (from, to) = self.range.unwrap_or((i64::MIN, i64::MAX));
        (from..=to).contains(&e.ts_ns) && self.instrument(e.instrument, instruments) && self.party(e, accounts)
    }
}

/// `HH:MM:SS.fff` in Asia/Shanghai.
pub fn clock(ts_ns: i64) -> String {
    let of_day = (ts_ns + ZONE_OFFSET_NS).rem_euclid(NS_PER_DAY);
    let secs = of_day / NS_PER_SEC;
    format!("{:02}:{:02}:{:02}.{:03}", secs / 3600, secs / 60 % 60, secs % 60, of_day % NS_PER_SEC / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_form() {
        // 1793583000000000000 is 2026-11-02 01:30:00 UTC = 09:30:00 in Shanghai.
        let t = 1_793_583_000_000_000_000;
        assert_eq!(parse_time("2026-11-02T09:30:00"), Ok(At::Raw(t)));
        assert_eq!(parse_time("2026-11-02T09:30:00+08:00"), Ok(At::Raw(t)));
        assert_eq!(parse_time("2026-11-02T01:30:00Z"), Ok(At::Raw(t)));
        assert_eq!(parse_time("2026-11-01T20:30:00-05:00"), Ok(At::Raw(t)));
        assert_eq!(parse_time("2026-11-02T09:30:00.25"), Ok(At::Raw(t + 250_000_000)));
        assert_eq!(parse_time("09:30:00"), Ok(At::Clock(34_200 * NS_PER_SEC)));
        assert_eq!(parse_time("1793583000000000000"), Ok(At::Raw(t)));
        for bad in ["2026-13-03T09:30:00", "2026-11-03T9:30:00", "2026-11-03T09:30:00+8", "x", "9:30"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert_eq!(clock(t + 5_250_000_000), "09:30:05.250");
    }

    #[test]
    fn flags_report_every_problem() {
        let args = FilterArgs {
            from: Some("10:00:00".into()),
            to: Some("09:00:00".into()),
            instrument: vec!["bad name!".into()],
            account: vec!["".into()],
            group: vec![],
        };
        let mut problems = Vec::new();
        args.validate(&mut problems);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("--from 10:00:00 is after --to 09:00:00")), "{problems:?}");
    }

    #[test]
    fn parties_match_by_account_or_group() {
        let groups = std::sync::Arc::new(Groups::parse("account,group\nA1,G\nA2,G\nA3,H\n").unwrap());
        let accounts = NameTable::from_names(&[b"A1", b"A2", b"A3", b"A4"]);
        let instruments = NameTable::from_names(&[b"X", b"Y"]);
        let filter = Filter { groups: vec!["G".into()], instruments: vec!["Y".into()], ..Filter::default() };
        let mut m = Matcher::new(filter, groups.clone());
        m.start(0);
        let e = |account, contra, instrument, kind| Event {
            account,
            contra_account: contra,
            instrument,
            kind,
            ..Event::default()
        };
        assert!(m.selects(&e(1, 0, 1, Kind::New), &instruments, &accounts));
        assert!(!m.selects(&e(1, 0, 0, Kind::New), &instruments, &accounts), "instrument X is not selected");
        assert!(!m.selects(&e(2, 0, 1, Kind::New), &instruments, &accounts), "A3 is in H");
        assert!(m.selects(&e(3, 0, 1, Kind::Trade), &instruments, &accounts), "the seller A1 is in G");
        // An account outside accounts.csv is its own group.
        let mut m = Matcher::new(Filter { groups: vec!["A4".into()], ..Filter::default() }, groups);
        m.start(0);
        assert!(m.selects(&e(3, 0, 0, Kind::New), &instruments, &accounts));
        assert_eq!(m.group_names(), ["A4"]);
    }
}

//! Alert episodes and the trading day's clock, shared by the window-metric
//! rules. An episode is one alert for a key that keeps crossing its
//! threshold: it ends only once the key has stayed below the threshold for
//! `cooldown_ns` (a key's crossing is evaluated at its own records, so "below
//! since" is the first of its records that no longer crosses). With a
//! cooldown of 0 every rising edge is a new episode.

use crate::checkpoint::codec::{DecodeError, Reader, Writer};

/// The episode state of one key: 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Episode {
    /// Event time of the first record that no longer crossed (valid when not hot).
    below_since: i64,
    /// Episodes so far (the current one's number while hot).
    count: u32,
    hot: bool,
    /// A day rule's near-miss flag (`near_miss_pct`): the key had a
    /// near-miss or crossed today; the rule clears it at the day change.
    /// Kept here, where the struct has room (bit 1 of `hot`'s byte).
    pub near_today: bool,
}

/// What one evaluation of a key did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Below,
    /// A new episode (its number, from 1): alert.
    New(u32),
    /// A crossing inside an episode that already alerted.
    Suppressed,
}

impl Episode {
    #[inline]
    pub fn observe(&mut self, ts_ns: i64, crossing: bool, cooldown_ns: i64) -> Outcome {
        if !crossing {
            if self.hot {
                self.hot = false;
                self.below_since = ts_ns;
            }
            return Outcome::Below;
        }
        if self.hot {
            return Outcome::Suppressed;
        }
        self.hot = true;
        if self.count > 0 && ts_ns - self.below_since < cooldown_ns {
            return Outcome::Suppressed;
        }
        self.count += 1;
        Outcome::New(self.count)
    }

    /// A window rule's near-miss episodes (`near_miss_pct`): `self` tracks
    /// whether the key reaches that share of every threshold (`near`,
    /// crossing included) as `observe` tracks crossing, with the alerts'
    /// cooldown. A near-miss is a new near episode at a record that does not
    /// cross: at most one per key per near episode, and none for an episode
    /// that began by crossing (it alerted).
    #[inline]
    pub fn near_miss(&mut self, ts_ns: i64, near: bool, crossing: bool, cooldown_ns: i64) -> bool {
        matches!(self.observe(ts_ns, near || crossing, cooldown_ns), Outcome::New(_)) && !crossing
    }

    pub fn encode(&self, w: &mut Writer<'_>) {
        w.i64(self.below_since);
        w.u32(self.count);
        w.u8(self.hot as u8 | (self.near_today as u8) << 1);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Episode, DecodeError> {
        let (below_since, count, flags) = (r.i64()?, r.u32()?, r.u8()?);
        Ok(Episode { below_since, count, hot: flags & 1 != 0, near_today: flags & 2 != 0 })
    }
}

/// Episodes opened and crossings suppressed, per rule (the run summary's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpisodeCounts {
    pub episodes: u64,
    pub suppressed: u64,
}

impl EpisodeCounts {
    #[inline]
    pub fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::New(_) => self.episodes += 1,
            Outcome::Suppressed => self.suppressed += 1,
            Outcome::Below => {}
        }
    }
}

/// Accounts of a key's group seen in what it measures, and its latest
/// order ids, bounded (evidence: every account involved, the contributing
/// orders with a count when there are more).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Involved {
    accounts: [u32; ACCOUNTS],
    n_accounts: u32,
    orders: [u64; ORDERS],
    /// Orders added in all (the newest `ORDERS` are kept, a ring).
    n_orders: u64,
}

const ACCOUNTS: usize = 6;
const ORDERS: usize = 8;
/// Words of `Involved::list`.
pub const INVOLVED_WORDS: usize = 2 + ACCOUNTS + ORDERS;

impl Involved {
    #[inline]
    pub fn account(&mut self, account: u32) {
        let n = (self.n_accounts as usize).min(ACCOUNTS);
        if self.accounts[..n].contains(&account) {
            return;
        }
        if n < ACCOUNTS {
            self.accounts[n] = account;
        }
        // Counted past the bound, so the evidence can say how many there were.
        self.n_accounts += 1;
    }

    #[inline]
    pub fn order(&mut self, order_id: u64) {
        self.orders[(self.n_orders % ORDERS as u64) as usize] = order_id;
        self.n_orders += 1;
    }

    /// The evidence list: accounts (count, ids), orders (count, newest ids).
    pub fn list(&self) -> ([u64; INVOLVED_WORDS], usize) {
        let mut out = [0u64; INVOLVED_WORDS];
        let na = (self.n_accounts as usize).min(ACCOUNTS);
        out[0] = self.n_accounts as u64;
        for i in 0..na {
            out[1 + i] = self.accounts[i] as u64;
        }
        let mut at = 1 + na;
        out[at] = self.n_orders;
        at += 1;
        let kept = (self.n_orders as usize).min(ORDERS);
        for k in 0..kept {
            // Oldest kept first.
            let i = (self.n_orders as usize - kept + k) % ORDERS;
            out[at] = self.orders[i];
            at += 1;
        }
        (out, at)
    }

    /// Writes what `list` made: `accounts`, `accounts_total` when some were
    /// cut, `order_ids` and `order_count`. Returns the rest of the list.
    pub fn write<'l>(list: &'l [u64], json: &mut crate::alert::EvidenceJson<'_>) -> &'l [u64] {
        let Some((&n_accounts, rest)) = list.split_first() else {
            return list;
        };
        let na = (n_accounts as usize).min(ACCOUNTS).min(rest.len());
        json.accounts("accounts", &rest[..na]);
        if n_accounts as usize > na {
            json.u64("accounts_total", n_accounts);
        }
        let rest = &rest[na..];
        let Some((&n_orders, rest)) = rest.split_first() else {
            return rest;
        };
        let no = (n_orders as usize).min(ORDERS).min(rest.len());
        json.u64_list("order_ids", &rest[..no]);
        json.u64("order_count", n_orders);
        &rest[no..]
    }

    pub fn encode(&self, w: &mut Writer<'_>) {
        for a in self.accounts {
            w.u32(a);
        }
        w.u32(self.n_accounts);
        for o in self.orders {
            w.u64(o);
        }
        w.u64(self.n_orders);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Involved, DecodeError> {
        let mut v = Involved::default();
        for a in v.accounts.iter_mut() {
            *a = r.u32()?;
        }
        v.n_accounts = r.u32()?;
        for o in v.orders.iter_mut() {
            *o = r.u64()?;
        }
        v.n_orders = r.u64()?;
        Ok(v)
    }
}

/// The key of a (group or account, instrument) table: the instrument in the
/// low 32 bits, as checkpoint restore expects.
#[inline]
pub fn key(high: u32, instrument: u32) -> u64 {
    (high as u64) << 32 | instrument as u64
}

/// The trading day's zone (Asia/Shanghai, no daylight saving): UTC+8.
pub const ZONE_OFFSET_NS: i64 = 8 * 3600 * NS_PER_SEC;
pub const NS_PER_SEC: i64 = 1_000_000_000;
pub const NS_PER_DAY: i64 = 86_400 * NS_PER_SEC;

/// The trading day (days since the epoch, in the zone) of an event time.
#[inline]
pub fn day_of(ts_ns: i64) -> i64 {
    (ts_ns + ZONE_OFFSET_NS).div_euclid(NS_PER_DAY)
}

/// Nanoseconds since local midnight of an event time.
#[inline]
pub fn time_of_day(ts_ns: i64) -> i64 {
    (ts_ns + ZONE_OFFSET_NS).rem_euclid(NS_PER_DAY)
}

/// The event time of `tod_ns` after local midnight of `day`.
#[inline]
pub fn at(day: i64, tod_ns: i64) -> i64 {
    day * NS_PER_DAY + tod_ns - ZONE_OFFSET_NS
}

/// Parses "HH:MM" or "HH:MM:SS" into nanoseconds after midnight.
pub fn parse_time_of_day(s: &str) -> Option<i64> {
    let mut parts = s.split(':');
    let mut total = 0i64;
    let limits = [24, 60, 60];
    let mut n = 0;
    for (i, part) in parts.by_ref().enumerate() {
        if i >= 3 || part.len() != 2 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let v: i64 = part.parse().ok()?;
        if v >= limits[i] {
            return None;
        }
        total = total * 60 + v;
        n = i + 1;
    }
    match n {
        2 => Some(total * 60 * NS_PER_SEC),
        3 => Some(total * NS_PER_SEC),
        _ => None,
    }
}

/// Writes "HH:MM:SS" for a time of day.
pub fn format_time_of_day(tod_ns: i64) -> String {
    let s = tod_ns / NS_PER_SEC;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_keeps_crossing_is_one_episode_until_it_cools_down() {
        let mut e = Episode::default();
        assert_eq!(e.observe(0, true, 100), Outcome::New(1));
        assert_eq!(e.observe(10, true, 100), Outcome::Suppressed);
        assert_eq!(e.observe(20, false, 100), Outcome::Below);
        assert_eq!(e.observe(119, true, 100), Outcome::Suppressed, "below for 99 < 100");
        assert_eq!(e.observe(130, false, 100), Outcome::Below);
        assert_eq!(e.observe(230, true, 100), Outcome::New(2), "below for 100");
        let mut edge = Episode::default();
        assert_eq!(edge.observe(0, true, 0), Outcome::New(1));
        assert_eq!(edge.observe(0, false, 0), Outcome::Below);
        assert_eq!(edge.observe(0, true, 0), Outcome::New(2), "cooldown 0: every rising edge");
    }

    #[test]
    fn a_near_miss_opens_a_near_episode_that_did_not_cross() {
        let mut n = Episode::default();
        assert!(n.near_miss(0, true, false, 100), "first near record");
        assert!(!n.near_miss(10, true, false, 100), "same near episode");
        assert!(!n.near_miss(20, true, true, 100), "crossing later: the alert's, not a near-miss");
        assert!(!n.near_miss(30, false, false, 100));
        assert!(!n.near_miss(129, true, false, 100), "below for 99 < 100");
        assert!(!n.near_miss(140, false, false, 100));
        assert!(n.near_miss(240, true, false, 100), "below for 100: a new near episode");
        let mut crossed = Episode::default();
        assert!(!crossed.near_miss(0, true, true, 0), "an episode that began by crossing");
        assert!(!crossed.near_miss(1, true, false, 0));
        let mut e = Episode { near_today: true, ..Episode::default() };
        e.observe(5, true, 0);
        let mut bytes = Vec::new();
        e.encode(&mut Writer::new(&mut bytes));
        assert_eq!(Episode::decode(&mut Reader::new(&bytes)).unwrap(), e, "the day flag round-trips");
    }

    #[test]
    fn clock_in_the_trading_day_zone() {
        // 2026-11-02 09:30:00 +08:00 = 01:30:00 UTC.
        let ts = 1_793_583_000 * NS_PER_SEC;
        assert_eq!(time_of_day(ts), parse_time_of_day("09:30").unwrap());
        assert_eq!(at(day_of(ts), time_of_day(ts)), ts);
        assert_eq!(format_time_of_day(parse_time_of_day("14:57:05").unwrap()), "14:57:05");
        for bad in ["9:30", "24:00", "12:60", "12:00:00:00", "", "ab:cd"] {
            assert_eq!(parse_time_of_day(bad), None, "{bad}");
        }
    }
}

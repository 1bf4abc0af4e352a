//! Checkpoints and exactly-once recovery: the only code that persists
//! pipeline state. See ARCHITECTURE.md, "Checkpoints", for how one is cut.
//!
//! - `codec`: the byte layout of every snapshot.
//! - `store`: the state directory (RocksDB for manifests, source snapshots
//!   and names; memory-mapped, checksummed files for shard window state).
//! - `writer`: the background thread that makes a checkpoint durable once
//!   the source, every shard and the sink have passed its barrier.
//! - `recover`: finds the newest checkpoint that verifies, and reads it back.

pub mod codec;
pub mod recover;
pub mod store;
pub mod writer;

use crate::alert::RuleId;
use crate::detect::registry::{self, Counts};
use crate::event::{Event, Kind, Side};
use codec::{DecodeError, Reader, Writer};
use std::path::PathBuf;
use xxhash_rust::xxh3::xxh3_64;

/// Manifest layout version; a different one is refused, not misread.
/// 2: alert counts keyed by rule id (sections per rule); 3: also
/// `tape_prefix_hash`, and the validator's sequencer state in the source
/// snapshot; 4: also the rules' parameter versions and `reload_to` (a
/// version 3 manifest is still read: no rules listed, no reload); 5: also
/// the near-miss file's committed length (versions 3 and 4 read as none).
const MANIFEST_VERSION: u32 = 5;

/// When to cut checkpoints and how many to keep.
#[derive(Clone, Debug)]
pub struct Settings {
    pub dir: PathBuf,
    /// A barrier after this many records routed since the last one (0: never by count).
    pub every_records: u64,
    /// A barrier once this much wall time has passed since the last one (0: never by time).
    pub interval_ns: u64,
    /// Complete checkpoints kept; older ones are deleted.
    pub keep: usize,
    /// Test hook: abort the process right after this checkpoint is durable,
    /// as a crash would (`--exit-after-checkpoint`, hidden).
    pub abort_after: Option<u64>,
    /// Test hook: the source waits for each checkpoint instead of skipping
    /// barriers while one is in flight, so checkpoint k follows exactly
    /// k * `every_records` records (`--checkpoint-exact`, hidden).
    pub exact: bool,
    pub identity: Identity,
    /// The parameter version of each enabled rule (`Rules::versions_by_id`),
    /// written into every manifest.
    pub rules: Vec<(RuleId, u32)>,
    /// A CSV tape: the writer hashes the bytes consumed up to each
    /// checkpoint's position (`Manifest::tape_prefix_hash`). None for a
    /// native tape, whose header checksum (in the identity) covers all of it.
    pub tape: Option<PathBuf>,
}

/// What must be the same for a checkpoint to be resumed: the tape, the
/// rules, the account groups and the lateness. A mismatch is refused with a clear error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Identity {
    /// 0: FEED.md CSV, 1: native tape, 2: a live feed (`Identity::LIVE`).
    pub format: u8,
    /// xxh3 of the tape's first 64 KiB.
    pub tape_head_hash: u64,
    pub lateness_ns: i64,
    /// `Identity::reference_hash`: the enabled rules and the reference data.
    pub rules_hash: u64,
}

pub const TAPE_HEAD_BYTES: usize = 64 * 1024;

impl Identity {
    /// xxh3 of the canonical encoding of the enabled rules' validated
    /// parameters (`Rules::canonical`: a rule that is off adds nothing), then
    /// of each reference file in a fixed order, each with its length:
    /// accounts.csv, then instruments.csv (the hash of its loaded data,
    /// `Instruments::hash`, so line ends do not matter; empty without one).
    pub fn reference_hash(rules: &crate::config::Rules, accounts: &[u8], instruments: &[u8]) -> u64 {
        let mut bytes = rules.canonical();
        for file in [accounts, instruments] {
            bytes.extend_from_slice(&(file.len() as u64).to_le_bytes());
            bytes.extend_from_slice(file);
        }
        xxh3_64(&bytes)
    }

    pub fn for_tape(
        path: &std::path::Path,
        native: bool,
        lateness_ns: i64,
        reference_hash: u64,
    ) -> std::io::Result<Identity> {
        use std::io::Read;
        let mut head = Vec::with_capacity(TAPE_HEAD_BYTES);
        std::fs::File::open(path)?.take(TAPE_HEAD_BYTES as u64).read_to_end(&mut head)?;
        Ok(Identity { format: native as u8, tape_head_hash: xxh3_64(&head), lateness_ns, rules_hash: reference_hash })
    }

    /// A live feed (`serve`): no tape to hash; its position is the next
    /// seq, which the sender is asked for on connect.
    pub fn for_live(lateness_ns: i64, reference_hash: u64) -> Identity {
        Identity { format: Identity::LIVE, tape_head_hash: 0, lateness_ns, rules_hash: reference_hash }
    }

    /// `format` of a live feed's checkpoints.
    pub const LIVE: u8 = 2;

    /// Why a checkpoint cannot be resumed under this identity, if it cannot.
    pub fn mismatch(&self, saved: &Identity) -> Option<&'static str> {
        if (self.format == Identity::LIVE) != (saved.format == Identity::LIVE) {
            Some("it was taken by a replay of a tape, not by the daemon (or the other way round)")
        } else if self.format != saved.format || self.tape_head_hash != saved.tape_head_hash {
            Some("it was taken on another tape")
        } else if self.lateness_ns != saved.lateness_ns {
            Some("it was taken with another --lateness-ms")
        } else if self.rules_hash != saved.rules_hash {
            Some("it was taken with other rules or another accounts file (or instruments file)")
        } else {
            None
        }
    }
}

/// The xxh3 of a tape's first bytes, read on as checkpoints move forward:
/// each byte is read once more, on the checkpoint writer thread, never on
/// the pipeline's.
pub struct PrefixHasher {
    file: std::fs::File,
    path: PathBuf,
    pos: u64,
    state: xxhash_rust::xxh3::Xxh3Default,
    buf: Vec<u8>,
}

impl PrefixHasher {
    pub fn open(path: &std::path::Path) -> Result<PrefixHasher, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: cannot open tape: {e}", path.display()))?;
        Ok(PrefixHasher {
            file,
            path: path.to_path_buf(),
            pos: 0,
            state: xxhash_rust::xxh3::Xxh3Default::new(),
            buf: vec![0; 1 << 20],
        })
    }

    /// The hash of the tape's bytes before `offset` (at or after the last one asked for).
    pub fn hash_to(&mut self, offset: u64) -> Result<u64, String> {
        use std::io::Read;
        assert!(offset >= self.pos, "checkpoint positions only move forward");
        while self.pos < offset {
            let want = (offset - self.pos).min(self.buf.len() as u64) as usize;
            let n = match self.file.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(format!(
                        "{}: the tape ends at byte {}, before {offset}",
                        self.path.display(),
                        self.pos
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("{}: cannot read tape: {e}", self.path.display())),
            };
            self.state.update(&self.buf[..n]);
            self.pos += n as u64;
        }
        Ok(self.state.digest())
    }
}

/// A shard snapshot file as the manifest records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardFile {
    pub len: u64,
    pub hash: u64,
}

/// A complete checkpoint: written last, in the same atomic RocksDB batch
/// as the source snapshot, after every file it points at is durable.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Manifest {
    pub id: u64,
    pub created_unix_ms: u64,
    pub identity: Identity,
    /// The barrier followed the accepted record with this seq (0: none yet).
    pub last_seq: u64,
    pub records_read: u64,
    /// Where the tape is read on from: byte offset and line (CSV), or record index (native).
    pub offset: u64,
    pub line_no: u64,
    pub shards: u32,
    /// Committed lengths of the outputs, synced before the manifest was written.
    pub alerts_bytes: u64,
    pub late_bytes: u64,
    pub rejects_bytes: u64,
    /// Alerts per rule id as of the barrier, so the summary of a resumed
    /// run is the whole run's.
    pub alerts: Vec<(RuleId, u64)>,
    pub late: u64,
    pub applied: u64,
    /// Interned names as of the barrier (ids `0..n`).
    pub accounts: u64,
    pub instruments: u64,
    pub source_len: u64,
    pub source_hash: u64,
    /// xxh3 of the tape's bytes before `offset` (CSV; 0 for a native tape):
    /// a resume refuses a tape edited anywhere before where it goes on.
    pub tape_prefix_hash: u64,
    pub shard_files: Vec<ShardFile>,
    /// The enabled rules and their parameter versions at the barrier.
    pub rules: Vec<(RuleId, u32)>,
    /// 0, or a reload's checkpoint (`serve`, SIGHUP): the reference hash
    /// (`Identity::rules_hash`) of the rules it hands over to. It may be
    /// resumed under those rules as well as under its own
    /// (`Manifest::resumable_under`).
    pub reload_to: u64,
    /// The near-miss file's committed length (`--near-misses`; none: no file).
    pub near_bytes: Option<u64>,
}

impl Manifest {
    /// The alert counts in registry order; a count of a rule this build
    /// lacks is refused (the identity would differ anyway).
    pub fn counts(&self) -> Result<Counts, String> {
        let mut counts = [0; registry::RULE_COUNT];
        for &(id, n) in &self.alerts {
            match registry::index_of(id) {
                Some(i) => counts[i] = n,
                None => {
                    return Err(format!(
                        "checkpoint {} counts alerts of rule id {id}, which this build lacks",
                        self.id
                    ));
                }
            }
        }
        Ok(counts)
    }

    /// Counts keyed by rule id, from counts in registry order.
    pub fn keyed(counts: &Counts) -> Vec<(RuleId, u64)> {
        registry::RULES.iter().zip(counts).map(|(r, &n)| (r.id, n)).collect()
    }

    /// Why this checkpoint cannot be resumed under `identity`, if it
    /// cannot: it must have been cut under it, or be a reload's checkpoint
    /// handing over to `identity`'s rules (everything else the same).
    pub fn resumable_under(&self, identity: &Identity) -> Option<&'static str> {
        let why = identity.mismatch(&self.identity)?;
        let reloaded = Identity { rules_hash: identity.rules_hash, ..self.identity };
        if self.reload_to != 0 && self.reload_to == identity.rules_hash && identity.mismatch(&reloaded).is_none() {
            None
        } else {
            Some(why)
        }
    }

    /// For a resume under other rules than the checkpoint's (a reload's):
    /// the ids of the rules whose state carries over (enabled before and
    /// after with the same parameter version), and one line per rule that
    /// changed, is new or was removed.
    pub fn carry(&self, now: &[(RuleId, u32)]) -> (Vec<RuleId>, Vec<String>) {
        let mut carry = Vec::new();
        let mut lines = Vec::new();
        for &(id, version) in now {
            let name = registry::name(id);
            match self.rules.iter().find(|r| r.0 == id) {
                Some(&(_, before)) if before == version => {
                    carry.push(id);
                    lines.push(format!("{name}: parameters {version:08x} unchanged: its state is kept"));
                }
                Some(&(_, before)) => {
                    lines.push(format!("{name}: parameters {before:08x} -> {version:08x}: starts with empty state"))
                }
                None => lines.push(format!("{name}: new (parameters {version:08x}): starts with empty state")),
            }
        }
        for &(id, before) in &self.rules {
            if !now.iter().any(|r| r.0 == id) {
                lines.push(format!("{}: removed (parameters {before:08x}): its state is dropped", registry::name(id)));
            }
        }
        (carry, lines)
    }

    pub fn bytes(&self) -> u64 {
        self.source_len + self.shard_files.iter().map(|f| f.len).sum::<u64>()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let mut w = Writer::new(&mut out);
        w.u32(MANIFEST_VERSION);
        w.u64(self.id);
        w.u64(self.created_unix_ms);
        w.u8(self.identity.format);
        w.u64(self.identity.tape_head_hash);
        w.i64(self.identity.lateness_ns);
        w.u64(self.identity.rules_hash);
        for v in [self.last_seq, self.records_read, self.offset, self.line_no] {
            w.u64(v);
        }
        w.u32(self.shards);
        for v in [self.alerts_bytes, self.late_bytes, self.rejects_bytes] {
            w.u64(v);
        }
        w.u64(self.alerts.len() as u64);
        for &(id, n) in &self.alerts {
            w.u32(id as u32);
            w.u64(n);
        }
        for v in [self.late, self.applied, self.accounts, self.instruments, self.source_len, self.source_hash] {
            w.u64(v);
        }
        w.u64(self.tape_prefix_hash);
        w.u64(self.shard_files.len() as u64);
        for f in &self.shard_files {
            w.u64(f.len);
            w.u64(f.hash);
        }
        w.u64(self.rules.len() as u64);
        for &(id, version) in &self.rules {
            w.u32(id as u32);
            w.u32(version);
        }
        w.u64(self.reload_to);
        w.u8(self.near_bytes.is_some() as u8);
        w.u64(self.near_bytes.unwrap_or(0));
        let hash = xxh3_64(w.out);
        w.u64(hash);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest, DecodeError> {
        if bytes.len() < 12 {
            return Err(DecodeError("manifest too short".into()));
        }
        let (body, tail) = bytes.split_at(bytes.len() - 8);
        let mut stored = [0u8; 8];
        stored.copy_from_slice(tail);
        if xxh3_64(body) != u64::from_le_bytes(stored) {
            return Err(DecodeError("manifest checksum mismatch".into()));
        }
        let mut r = Reader::new(body);
        let version = r.u32()?;
        if !(3..=MANIFEST_VERSION).contains(&version) {
            return Err(DecodeError(format!("manifest version {version}, this build reads {MANIFEST_VERSION}")));
        }
        let mut m = Manifest {
            id: r.u64()?,
            created_unix_ms: r.u64()?,
            identity: Identity {
                format: r.u8()?,
                tape_head_hash: r.u64()?,
                lateness_ns: r.i64()?,
                rules_hash: r.u64()?,
            },
            last_seq: r.u64()?,
            records_read: r.u64()?,
            offset: r.u64()?,
            line_no: r.u64()?,
            shards: r.u32()?,
            alerts_bytes: r.u64()?,
            late_bytes: r.u64()?,
            rejects_bytes: r.u64()?,
            alerts: (0..r.count(12)?)
                .map(|_| Ok((r.u32()? as RuleId, r.u64()?)))
                .collect::<Result<_, DecodeError>>()?,
            late: r.u64()?,
            applied: r.u64()?,
            accounts: r.u64()?,
            instruments: r.u64()?,
            source_len: r.u64()?,
            source_hash: r.u64()?,
            tape_prefix_hash: r.u64()?,
            shard_files: Vec::new(),
            rules: Vec::new(),
            reload_to: 0,
            near_bytes: None,
        };
        for _ in 0..r.count(16)? {
            m.shard_files.push(ShardFile { len: r.u64()?, hash: r.u64()? });
        }
        if version >= 4 {
            for _ in 0..r.count(8)? {
                m.rules.push((r.u32()? as RuleId, r.u32()?));
            }
            m.reload_to = r.u64()?;
        }
        if version >= 5 {
            let (has, len) = (r.u8()?, r.u64()?);
            m.near_bytes = (has != 0).then_some(len);
        }
        r.finish()?;
        if m.shard_files.len() != m.shards as usize || m.shards == 0 {
            return Err(DecodeError(format!("{} shard files for {} shards", m.shard_files.len(), m.shards)));
        }
        Ok(m)
    }
}

/// The sections of a shard snapshot, `(id, version, bytes)`, for
/// `checkpoint show`.
pub fn sections(payload: &[u8]) -> Result<Vec<registry::Section<'_>>, DecodeError> {
    let mut r = Reader::new(payload);
    let mut out = Vec::new();
    for _ in 0..r.u32()? {
        out.push(registry::read_section(&mut r)?);
    }
    r.finish()?;
    Ok(out)
}

pub fn write_event(w: &mut Writer<'_>, e: &Event) {
    w.u64(e.seq);
    w.i64(e.ts_ns);
    w.u64(e.order_id);
    w.u64(e.contra_order_id);
    w.i64(e.price);
    w.u64(e.qty);
    for v in [e.account, e.contra_account, e.group, e.contra_group, e.instrument] {
        w.u32(v);
    }
    w.u8(e.kind as u8);
    w.u8(e.side as u8);
}

pub const EVENT_BYTES: usize = 6 * 8 + 5 * 4 + 2;

pub fn read_event(r: &mut Reader<'_>) -> Result<Event, DecodeError> {
    let mut e = Event {
        seq: r.u64()?,
        ts_ns: r.i64()?,
        order_id: r.u64()?,
        contra_order_id: r.u64()?,
        price: r.i64()?,
        qty: r.u64()?,
        account: r.u32()?,
        contra_account: r.u32()?,
        group: r.u32()?,
        contra_group: r.u32()?,
        instrument: r.u32()?,
        ..Event::default()
    };
    e.kind = match r.u8()? {
        b'N' => Kind::New,
        b'C' => Kind::Cancel,
        b'T' => Kind::Trade,
        other => return Err(DecodeError(format!("bad kind byte {other}"))),
    };
    e.side = match r.u8()? {
        b'B' => Side::Buy,
        b'S' => Side::Sell,
        other => return Err(DecodeError(format!("bad side byte {other}"))),
    };
    Ok(e)
}

/// The router's part of the source snapshot: event time and the records
/// still waiting in the reorder buffers (of every shard, in one list: on
/// resume they are routed again by instrument, whatever the shard count).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterState {
    pub max_ts_ns: i64,
    pub pending: Vec<Event>,
}

impl RouterState {
    pub fn decode(r: &mut Reader<'_>) -> Result<RouterState, DecodeError> {
        let max_ts_ns = r.i64()?;
        let n = r.count(EVENT_BYTES)?;
        let mut pending = Vec::with_capacity(n);
        for _ in 0..n {
            pending.push(read_event(r)?);
        }
        Ok(RouterState { max_ts_ns, pending })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_event() -> impl Strategy<Value = Event> {
        (any::<u64>(), any::<i64>(), any::<u64>(), any::<i64>(), any::<u32>(), 0u8..3, any::<bool>()).prop_map(
            |(seq, ts_ns, order_id, price, account, kind, buy)| Event {
                seq,
                ts_ns,
                order_id,
                contra_order_id: order_id ^ 1,
                price,
                qty: seq / 3,
                account,
                contra_account: account / 2,
                group: account ^ 7,
                contra_group: account / 3,
                instrument: account % 1000,
                kind: [Kind::New, Kind::Cancel, Kind::Trade][kind as usize],
                side: if buy { Side::Buy } else { Side::Sell },
                _pad: [0; 2],
            },
        )
    }

    #[test]
    fn a_reload_checkpoint_resumes_under_its_own_rules_or_those_it_hands_over_to() {
        let (a, b, c) = (Identity::for_live(5, 0xa), Identity::for_live(5, 0xb), Identity::for_live(5, 0xc));
        let plain = Manifest { identity: a, ..Manifest::default() };
        assert_eq!(plain.resumable_under(&a), None);
        assert!(plain.resumable_under(&b).is_some(), "a plain checkpoint refuses other rules");
        let reload = Manifest { reload_to: 0xb, ..plain.clone() };
        assert_eq!(reload.resumable_under(&a), None);
        assert_eq!(reload.resumable_under(&b), None);
        assert!(reload.resumable_under(&c).is_some(), "only the rules it hands over to");
        let other_lateness = Identity::for_live(6, 0xb);
        assert!(reload.resumable_under(&other_lateness).is_some(), "only the rules change");
    }

    #[test]
    fn the_state_of_rules_with_unchanged_parameters_carries_over() {
        let m = Manifest { rules: vec![(1, 10), (2, 20), (6, 60)], ..Manifest::default() };
        let (carry, lines) = m.carry(&[(1, 10), (2, 21), (7, 70)]);
        assert_eq!(carry, vec![1]);
        let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(has("0000000a unchanged: its state is kept"), "{lines:?}");
        assert!(has("00000014 -> 00000015: starts with empty state"), "{lines:?}");
        assert!(has("new (parameters 00000046): starts with empty state"), "{lines:?}");
        assert!(has("removed (parameters 0000003c): its state is dropped"), "{lines:?}");
    }

    #[test]
    fn a_version_3_manifest_is_read_without_rules() {
        let m = Manifest { id: 4, shards: 1, shard_files: vec![ShardFile { len: 9, hash: 3 }], ..Manifest::default() };
        let v5 = m.encode();
        // An older version: the body without its last `cut` bytes.
        let older = |version: u32, cut: usize| {
            let mut body = v5[..v5.len() - 8 - cut].to_vec();
            body[..4].copy_from_slice(&version.to_le_bytes());
            let hash = xxh3_64(&body);
            body.extend_from_slice(&hash.to_le_bytes());
            body
        };
        // Version 4: no near-miss length (9 bytes); 3: no rule list and no reload_to either (16 more).
        assert_eq!(Manifest::decode(&older(4, 9)).unwrap(), m);
        assert_eq!(Manifest::decode(&older(3, 25)).unwrap(), m);
        let with_near = Manifest { near_bytes: Some(1234), ..m.clone() };
        assert_eq!(Manifest::decode(&with_near.encode()).unwrap(), with_near);
        assert!(Manifest::decode(&older(6, 0)).unwrap_err().0.contains("manifest version 6"));
    }

    proptest! {
        #[test]
        fn router_state_round_trips(max_ts_ns in any::<i64>(), pending in proptest::collection::vec(any_event(), 0..50)) {
            let state = RouterState { max_ts_ns, pending };
            let mut buf = Vec::new();
            let mut w = Writer::new(&mut buf);
            w.i64(state.max_ts_ns);
            w.u64(state.pending.len() as u64);
            for e in &state.pending {
                write_event(&mut w, e);
            }
            prop_assert_eq!(buf.len(), 16 + EVENT_BYTES * state.pending.len());
            let mut r = Reader::new(&buf);
            prop_assert_eq!(RouterState::decode(&mut r).unwrap(), state);
            prop_assert!(r.finish().is_ok());
        }

        #[test]
        fn manifest_round_trips_and_any_flipped_bit_is_caught(id in 1u64..1000, shards in 1usize..9, seq in any::<u64>(),
                                                              flip in any::<proptest::sample::Index>()) {
            let m = Manifest {
                id,
                last_seq: seq,
                shards: shards as u32,
                alerts: vec![(1, 3), (2, 4)],
                rules: vec![(1, seq as u32), (6, 7)],
                reload_to: seq ^ 5,
                near_bytes: (seq % 2 == 0).then_some(seq / 3),
                shard_files: (0..shards as u64).map(|i| ShardFile { len: i * 10, hash: i ^ seq }).collect(),
                ..Manifest::default()
            };
            let mut bytes = m.encode();
            prop_assert_eq!(Manifest::decode(&bytes).unwrap(), m);
            let bit = flip.index(bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Manifest::decode(&bytes).is_err());
        }
    }
}

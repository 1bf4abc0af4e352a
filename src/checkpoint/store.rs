//! Where checkpoints live on disk. A state directory holds:
//!
//! - `db/`: a RocksDB database with the manifests (`m/<id>`), the source
//!   snapshots (`s/<id>`: feed position, validator with its open orders,
//!   watermark, reorder buffers) and the interned names (`a/<id>`, `i/<id>`,
//!   written once each, shared by every checkpoint). A checkpoint's keys go
//!   in one atomic, synced `WriteBatch`, and its manifest is among them: a
//!   checkpoint exists exactly when its manifest does.
//! - `snap/<id>/shard-<i>.snap`: each shard's window state, written through
//!   a memory map, `msync`ed and `fsync`ed (file and directory) before the
//!   batch that holds the manifest is written. Each file starts with a
//!   header (magic, checkpoint id, shard, payload length, xxh3 of the
//!   payload), and the manifest repeats the length and checksum, so a torn
//!   or damaged file is detected, never used.

use super::codec::{DecodeError, Reader, Writer};
use memmap2::MmapMut;
use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

/// The shard file format; 02: window entries carry their keys (sliced
/// snapshots), 01 (slots and key table) is refused.
const SNAP_MAGIC: &[u8; 8] = b"TWSNAP03";
pub const SNAP_HEADER_BYTES: usize = 40;

pub struct Store {
    pub dir: PathBuf,
    db: DB,
}

fn key(prefix: u8, id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The checkpoint database's memtable, and how many may exist at once (the
/// active one and those being flushed): its memory bound.
const MEMTABLE_BYTES: usize = 4 << 20;
const MEMTABLES: i32 = 2;

pub const MANIFEST: u8 = b'm';
pub const SOURCE: u8 = b's';
pub const ACCOUNT: u8 = b'a';
pub const INSTRUMENT: u8 = b'i';

impl Store {
    /// Opens (creating if needed) the state directory. Every failure names
    /// the path: a missing parent, no permission, or another process holding
    /// the database's lock.
    pub fn open(dir: &Path) -> Result<Store, String> {
        if let Err(e) = std::fs::create_dir(dir)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(format!("{}: cannot create the state directory: {e}", dir.display()));
        }
        if !dir.is_dir() {
            return Err(format!("{}: the state directory is not a directory", dir.display()));
        }
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_keep_log_file_num(2);
        opts.set_max_total_wal_size(64 << 20);
        // Memory: the database holds a few checkpoints' source snapshots
        // (the newest `checkpoint_keep`), but every checkpoint writes one
        // (open orders included: hundreds of KB a second on a busy day),
        // and RocksDB's default memtable (64 MiB, two of them while one is
        // flushed) keeps them all until it fills: a daemon's RSS climbed and
        // sawed by tens of MiB. A small memtable bounds that at
        // `MEMTABLE_BYTES * MEMTABLES`.
        opts.set_write_buffer_size(MEMTABLE_BYTES);
        opts.set_max_write_buffer_number(MEMTABLES);
        let db_path = dir.join("db");
        let db = DB::open(&opts, &db_path).map_err(|e| {
            let text = e.into_string();
            if text.contains("LOCK") && (text.contains("unavailable") || text.contains("lock")) {
                format!(
                    "{}: the state database is in use by another process (its LOCK file is held); \
                     stop that replay or use another --state directory ({text})",
                    db_path.display()
                )
            } else {
                format!("{}: cannot open the state database: {text}", db_path.display())
            }
        })?;
        Ok(Store { dir: dir.to_path_buf(), db })
    }

    /// Opens a state directory for inspection only (`tapewatch checkpoint`):
    /// no lock is taken, so it works while a replay is checkpointing into it.
    pub fn open_read_only(dir: &Path) -> Result<Store, String> {
        let db_path = dir.join("db");
        if !db_path.is_dir() {
            return Err(format!("{}: not a state directory (no db/ inside)", dir.display()));
        }
        let db = DB::open_for_read_only(&Options::default(), &db_path, false)
            .map_err(|e| format!("{}: cannot open the state database: {}", db_path.display(), e.into_string()))?;
        Ok(Store { dir: dir.to_path_buf(), db })
    }

    fn db_error(&self, what: &str, e: rocksdb::Error) -> String {
        format!("{}: {what}: {}", self.dir.join("db").display(), e.into_string())
    }

    pub fn snap_dir(&self, id: u64) -> PathBuf {
        self.dir.join("snap").join(format!("{id:020}"))
    }

    pub fn shard_path(&self, id: u64, shard: usize) -> PathBuf {
        self.snap_dir(id).join(format!("shard-{shard}.snap"))
    }

    /// Ids of every manifest, oldest first.
    pub fn checkpoint_ids(&self) -> Result<Vec<u64>, String> {
        let mut ids = Vec::new();
        for item in self.db.iterator(IteratorMode::From(&[MANIFEST], Direction::Forward)) {
            let (k, _) = item.map_err(|e| self.db_error("cannot read", e))?;
            if k.first() != Some(&MANIFEST) || k.len() != 9 {
                break;
            }
            let mut id = [0u8; 8];
            id.copy_from_slice(&k[1..]);
            ids.push(u64::from_be_bytes(id));
        }
        Ok(ids)
    }

    pub fn get(&self, prefix: u8, id: u64) -> Result<Option<Vec<u8>>, String> {
        self.db.get(key(prefix, id)).map_err(|e| self.db_error("cannot read", e))
    }

    /// The names with ids `0..count` of one table (`ACCOUNT` or `INSTRUMENT`).
    pub fn names(&self, prefix: u8, count: u64) -> Result<Vec<Vec<u8>>, String> {
        let mut out = Vec::with_capacity(count.min(1 << 20) as usize);
        for item in self.db.iterator(IteratorMode::From(&key(prefix, 0), Direction::Forward)) {
            if out.len() as u64 == count {
                break;
            }
            let (k, v) = item.map_err(|e| self.db_error("cannot read", e))?;
            if k.as_ref() != key(prefix, out.len() as u64) {
                break;
            }
            out.push(v.to_vec());
        }
        if out.len() as u64 != count {
            return Err(format!("{} of {count} names of table `{}` are stored", out.len(), prefix as char));
        }
        Ok(out)
    }

    /// Writes one checkpoint's keys atomically and durably.
    pub fn commit(
        &self,
        id: u64,
        manifest: &[u8],
        source: &[u8],
        new_names: &[(u8, u64, Vec<u8>)],
    ) -> Result<(), String> {
        let mut batch = WriteBatch::default();
        for (prefix, name_id, name) in new_names {
            batch.put(key(*prefix, *name_id), name);
        }
        batch.put(key(SOURCE, id), source);
        batch.put(key(MANIFEST, id), manifest);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts).map_err(|e| self.db_error("cannot write checkpoint", e))
    }

    /// Deletes a checkpoint: the manifest first, so a crash halfway leaves
    /// no manifest pointing at missing files.
    pub fn delete(&self, id: u64) -> Result<(), String> {
        let mut batch = WriteBatch::default();
        batch.delete(key(MANIFEST, id));
        batch.delete(key(SOURCE, id));
        self.db.write(batch).map_err(|e| self.db_error("cannot delete checkpoint", e))?;
        let dir = self.snap_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: cannot delete: {e}", dir.display())),
        }
    }

    /// Creates the snapshot directory of a checkpoint (and `snap/`).
    pub fn create_snap_dir(&self, id: u64) -> Result<PathBuf, String> {
        let dir = self.snap_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
        Ok(dir)
    }
}

/// Writes a shard snapshot file through a memory map and makes it durable.
/// Returns the payload's checksum.
pub fn write_snapshot(path: &Path, id: u64, shard: usize, payload: &[u8]) -> Result<u64, String> {
    let fail = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", path.display());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| fail("cannot create", e))?;
    let total = SNAP_HEADER_BYTES + payload.len();
    file.set_len(total as u64).map_err(|e| fail("cannot size", e))?;
    let hash = xxh3_64(payload);
    let mut header = Vec::with_capacity(SNAP_HEADER_BYTES);
    header.extend_from_slice(SNAP_MAGIC);
    let mut w = Writer::new(&mut header);
    w.u64(id);
    w.u64(shard as u64);
    w.u64(payload.len() as u64);
    w.u64(hash);
    debug_assert_eq!(header.len(), SNAP_HEADER_BYTES);
    // SAFETY: the file was just created by us with this length and nothing
    // else maps or truncates it while the map lives (a checkpoint's files
    // are written by the checkpoint writer thread only).
    let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| fail("cannot map", e))?;
    map[..SNAP_HEADER_BYTES].copy_from_slice(&header);
    map[SNAP_HEADER_BYTES..].copy_from_slice(payload);
    // msync, then fsync for the file's size and metadata.
    map.flush().map_err(|e| fail("cannot msync", e))?;
    drop(map);
    file.sync_all().map_err(|e| fail("cannot fsync", e))?;
    Ok(hash)
}

/// Reads a shard snapshot and checks it against the manifest's record of
/// it: the header, its length and checksum. Any mismatch is a torn or
/// damaged file.
pub fn read_snapshot(path: &Path, id: u64, shard: usize, len: u64, hash: u64) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let torn = |why: String| format!("{}: {why}", path.display());
    if bytes.len() >= SNAP_HEADER_BYTES && bytes[..6] == SNAP_MAGIC[..6] && bytes[..8] != SNAP_MAGIC[..] {
        let found = String::from_utf8_lossy(&bytes[..8]);
        let want = String::from_utf8_lossy(SNAP_MAGIC);
        return Err(torn(format!("shard file format {found}, this build reads {want} (written by another build)")));
    }
    if bytes.len() < SNAP_HEADER_BYTES || &bytes[..8] != SNAP_MAGIC {
        return Err(torn(format!("no snapshot header ({} bytes)", bytes.len())));
    }
    let mut r = Reader::new(&bytes[8..SNAP_HEADER_BYTES]);
    let header = (|| -> Result<_, DecodeError> { Ok((r.u64()?, r.u64()?, r.u64()?, r.u64()?)) })()
        .map_err(|e| torn(e.to_string()))?;
    let payload = &bytes[SNAP_HEADER_BYTES..];
    if header != (id, shard as u64, len, hash) {
        return Err(torn(format!(
            "header says checkpoint {} shard {} length {} checksum {:016x}; the manifest expects {id}, {shard}, {len}, {hash:016x}",
            header.0, header.1, header.2, header.3
        )));
    }
    if payload.len() as u64 != len {
        return Err(torn(format!("{} payload bytes, the manifest expects {len}", payload.len())));
    }
    let actual = xxh3_64(payload);
    if actual != hash {
        return Err(torn(format!("checksum mismatch ({actual:016x}, expected {hash:016x})")));
    }
    Ok(payload.to_vec())
}

/// `fsync` of a directory, so the names of the files created in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| format!("{}: cannot fsync: {e}", dir.display()))
}

/// `fsync` of an output file that another thread wrote and flushed.
pub fn sync_file(path: &Path) -> Result<(), String> {
    File::open(path).and_then(|f| f.sync_all()).map_err(|e| format!("{}: cannot fsync: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_round_trips_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let payload: Vec<u8> = (0..1000u32).flat_map(|i| i.to_le_bytes()).collect();
        let hash = write_snapshot(&path, 7, 1, &payload).unwrap();
        assert_eq!(read_snapshot(&path, 7, 1, payload.len() as u64, hash).unwrap(), payload);
        assert!(read_snapshot(&path, 8, 1, payload.len() as u64, hash).is_err(), "another checkpoint's file");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SNAP_HEADER_BYTES + 10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_snapshot(&path, 7, 1, payload.len() as u64, hash).unwrap_err();
        assert!(err.contains("checksum mismatch"), "{err}");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(read_snapshot(&path, 7, 1, payload.len() as u64, hash).is_err(), "a torn file");
        // Files of earlier formats (slots and a key table; one rule's layout
        // without sections) are not misread.
        for old in [b"TWSNAP01", b"TWSNAP02"] {
            bytes[..8].copy_from_slice(old);
            std::fs::write(&path, &bytes).unwrap();
            let err = read_snapshot(&path, 7, 1, payload.len() as u64, hash).unwrap_err();
            let want = format!("format {}, this build reads TWSNAP03", String::from_utf8_lossy(old));
            assert!(err.contains(&want), "{err}");
        }
    }

    #[test]
    fn commits_are_listed_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state).unwrap();
        store.commit(1, b"m1", b"s1", &[(ACCOUNT, 0, b"A".to_vec())]).unwrap();
        store.commit(2, b"m2", b"s2", &[(ACCOUNT, 1, b"B".to_vec())]).unwrap();
        assert_eq!(store.checkpoint_ids().unwrap(), vec![1, 2]);
        assert_eq!(store.names(ACCOUNT, 2).unwrap(), vec![b"A".to_vec(), b"B".to_vec()]);
        assert!(store.names(ACCOUNT, 3).is_err());
        store.delete(1).unwrap();
        assert_eq!(store.checkpoint_ids().unwrap(), vec![2]);
        assert_eq!(store.get(SOURCE, 2).unwrap().as_deref(), Some(&b"s2"[..]));
        let err = Store::open(&state).err().expect("the lock is held");
        assert!(err.contains("in use by another process"), "{err}");
    }
}

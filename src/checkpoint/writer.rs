//! The checkpoint writer thread: all checkpoint I/O, off the source, shard
//! and sink threads. Each of those copies its state into a buffer as of the
//! barrier and sends it here (a shard cuts its snapshot at the barrier and
//! copies the window entries in slices between the batches that follow, so
//! its part may come after later records were applied; it is still the
//! state at the barrier); once the source, every shard and the sink
//! have reported a checkpoint, this thread writes the shard files (mmap,
//! msync, fsync), fsyncs the output files up to their committed lengths,
//! then writes the manifest with the source snapshot and any new names in
//! one synced RocksDB batch, and deletes the checkpoints beyond the newest K.
//! Each thread has one snapshot buffer, passed back and forth: the writer
//! hands it back, grown ahead of the state and touched, before the
//! checkpoint completes, and the next barrier waits for that (see
//! `ImageSlot` for the shards').

use super::codec::Writer;
use super::store::{self, ACCOUNT, INSTRUMENT, Store};
use super::{Manifest, Settings, ShardFile};
use crate::detect::DetectorImage;
use crate::detect::registry::Counts;
use crate::metrics::Clock;
use crate::symbols::{NameTable, Names};
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};
use xxhash_rust::xxh3::xxh3_64;

/// What each pipeline thread reports at a barrier.
pub enum Msg {
    Source {
        id: u64,
        /// When the source cut the barrier (pipeline clock), for the duration.
        cut_ns: u64,
        last_seq: u64,
        records_read: u64,
        offset: u64,
        line_no: u64,
        rejects: Option<(PathBuf, u64)>,
        accounts: u64,
        instruments: u64,
        snapshot: Vec<u8>,
        /// `Manifest::reload_to` (0: an ordinary checkpoint).
        reload_to: u64,
    },
    Shard {
        id: u64,
        shard: usize,
        applied: u64,
        /// The shard's window state as of the barrier (copied in slices
        /// after it); encoded here.
        image: Box<DetectorImage>,
    },
    Sink {
        id: u64,
        alerts: (PathBuf, u64),
        late: (PathBuf, u64),
        /// The near-miss file, if any (`--near-misses`).
        near: Option<(PathBuf, u64)>,
        counts: Counts,
        late_count: u64,
    },
}

/// A shard's checkpoint image, shared with the writer. The shard takes it
/// at a barrier (one lock per barrier, never per record) and the writer
/// puts it back after encoding it. Between checkpoints the writer grows it
/// to twice the state the shard publishes (once per batch), so that the
/// shard's copy neither allocates nor takes page faults.
#[derive(Default)]
pub struct ImageSlot {
    pub image: Mutex<Option<Box<DetectorImage>>>,
    pub keys: AtomicUsize,
    pub entries: AtomicUsize,
}

impl ImageSlot {
    /// The image, or a fresh one if the slot is empty (a writer that died).
    pub fn take(&self) -> Box<DetectorImage> {
        let mut guard = self.image.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.take().unwrap_or_default()
    }

    /// The first image, made at start-up.
    pub fn put_initial(&self, image: DetectorImage) {
        self.put(Box::new(image));
    }

    fn put(&self, image: Box<DetectorImage>) {
        *self.image.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(image);
    }

    /// Grows the image, if the shard is not using it, ahead of the state.
    fn grow_ahead(&self) {
        if let Ok(mut guard) = self.image.try_lock()
            && let Some(image) = guard.as_mut()
        {
            let (keys, entries) = (self.keys.load(Ordering::Relaxed), self.entries.load(Ordering::Relaxed));
            image.prepare(2 * keys, 2 * entries);
        }
    }
}

/// Shared with the source: the newest durable checkpoint, so the source
/// never has two in flight.
#[derive(Default)]
pub struct Progress {
    pub completed: AtomicU64,
    /// The bytes the newest durable checkpoint wrote, and how long it took
    /// from its cut to the durable manifest (the daemon's metrics); stored
    /// before `completed`, so a reader that sees the id sees these.
    pub last_bytes: AtomicU64,
    pub last_duration_ns: AtomicU64,
}

pub struct WriterOutput {
    pub taken: u64,
    pub bytes: u64,
    /// From the barrier's cut to the manifest being durable.
    pub duration: Histogram<u64>,
}

struct Partial {
    source: Option<Msg>,
    shards: Vec<Option<(u64, Box<DetectorImage>)>>,
    sink: Option<Msg>,
}

pub struct CheckpointWriter {
    pub store: Store,
    pub settings: Settings,
    pub names: Names,
    pub shards: usize,
    /// Names already stored (a resumed run starts from the manifest's counts).
    pub saved_accounts: u64,
    pub saved_instruments: u64,
    /// Records applied before the checkpoint this run resumed from.
    pub applied_base: u64,
    pub progress: Arc<Progress>,
    /// Each shard's image, handed back here after encoding.
    pub images: Vec<Arc<ImageSlot>>,
    /// The source's snapshot buffer goes back here.
    pub source_back: Sender<Vec<u8>>,
    /// Reused to encode shard images.
    pub encoded: Vec<u8>,
    /// A CSV tape's consumed bytes, hashed as checkpoints move on (opened
    /// at the first checkpoint).
    pub prefix: Option<super::PrefixHasher>,
}

impl CheckpointWriter {
    pub fn run(mut self, rx: Receiver<Msg>, clock: Clock) -> Result<WriterOutput, String> {
        let mut out = WriterOutput { taken: 0, bytes: 0, duration: crate::metrics::latency_histogram() };
        let mut partial: Option<(u64, Partial)> = None;
        // The channel closes when the source and every shard and the sink
        // are done. While it is quiet, the shards' images are grown.
        loop {
            let msg = match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => {
                    self.images.iter().for_each(|slot| slot.grow_ahead());
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let id = match &msg {
                Msg::Source { id, .. } | Msg::Shard { id, .. } | Msg::Sink { id, .. } => *id,
            };
            let (current, parts) = partial.get_or_insert_with(|| {
                (id, Partial { source: None, shards: (0..self.shards).map(|_| None).collect(), sink: None })
            });
            assert_eq!(*current, id, "a barrier arrived before the previous checkpoint completed");
            match msg {
                Msg::Shard { shard, applied, image, .. } => parts.shards[shard] = Some((applied, image)),
                msg @ Msg::Source { .. } => parts.source = Some(msg),
                msg @ Msg::Sink { .. } => parts.sink = Some(msg),
            }
            if parts.source.is_some() && parts.sink.is_some() && parts.shards.iter().all(Option::is_some) {
                let Some((id, parts)) = partial.take() else { unreachable!("checked above") };
                let (bytes, cut_ns) = self.commit(id, parts)?;
                out.taken += 1;
                out.bytes += bytes;
                let took_ns = clock.now_ns().saturating_sub(cut_ns).max(1);
                out.duration.saturating_record(took_ns);
                self.progress.last_bytes.store(bytes, Ordering::Relaxed);
                self.progress.last_duration_ns.store(took_ns, Ordering::Relaxed);
                self.progress.completed.store(id, Ordering::Release);
                if self.settings.abort_after == Some(id) {
                    eprintln!("tapewatch: checkpoint {id} is durable; aborting as --exit-after-checkpoint asks");
                    std::process::abort();
                }
            }
        }
        Ok(out)
    }

    fn commit(&mut self, id: u64, parts: Partial) -> Result<(u64, u64), String> {
        let Some(Msg::Source {
            cut_ns,
            last_seq,
            records_read,
            offset,
            line_no,
            rejects,
            accounts,
            instruments,
            snapshot: source,
            reload_to,
            ..
        }) = parts.source
        else {
            unreachable!("a complete checkpoint has its source part")
        };
        let Some(Msg::Sink { alerts, late, near, counts, late_count, .. }) = parts.sink else {
            unreachable!("a complete checkpoint has its sink part")
        };
        // Shard files first, each durable, then their directory.
        let dir = self.store.snap_dir(id);
        if dir.exists() {
            // Left by a checkpoint of an abandoned timeline (a crash after the
            // files, before the manifest): never referenced, replaced.
            std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: cannot remove: {e}", dir.display()))?;
        }
        self.store.create_snap_dir(id)?;
        let mut shard_files = Vec::with_capacity(self.shards);
        let mut applied = self.applied_base;
        let mut snapshot = std::mem::take(&mut self.encoded);
        for (shard, part) in parts.shards.into_iter().enumerate() {
            let Some((shard_applied, mut image)) = part else { unreachable!("a complete checkpoint has every shard") };
            applied += shard_applied;
            snapshot.clear();
            image.encode(&mut Writer::new(&mut snapshot));
            // Room for the state to double before the shard copies into it again.
            image.prepare(0, 0);
            self.images[shard].put(image);
            let hash = store::write_snapshot(&self.store.shard_path(id, shard), id, shard, &snapshot)?;
            shard_files.push(ShardFile { len: snapshot.len() as u64, hash });
        }
        self.encoded = snapshot;
        store::sync_dir(&dir)?;
        if let Some(parent) = dir.parent() {
            store::sync_dir(parent)?;
        }
        // The outputs up to their committed lengths.
        store::sync_file(&alerts.0)?;
        store::sync_file(&late.0)?;
        if let Some((path, _)) = &near {
            store::sync_file(path)?;
        }
        if let Some((path, _)) = &rejects {
            store::sync_file(path)?;
        }
        let tape_prefix_hash = match &self.settings.tape {
            Some(path) => {
                if self.prefix.is_none() {
                    self.prefix = Some(super::PrefixHasher::open(path)?);
                }
                self.prefix.as_mut().map_or(Ok(0), |p| p.hash_to(offset))?
            }
            None => 0,
        };
        let mut new_names = Vec::new();
        collect_names(&mut new_names, ACCOUNT, &self.names.accounts, self.saved_accounts, accounts);
        collect_names(&mut new_names, INSTRUMENT, &self.names.instruments, self.saved_instruments, instruments);
        let manifest = Manifest {
            id,
            created_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            identity: self.settings.identity,
            last_seq,
            records_read,
            offset,
            line_no,
            shards: self.shards as u32,
            alerts_bytes: alerts.1,
            late_bytes: late.1,
            rejects_bytes: rejects.as_ref().map_or(0, |r| r.1),
            alerts: Manifest::keyed(&counts),
            late: late_count,
            applied,
            accounts,
            instruments,
            source_len: source.len() as u64,
            source_hash: xxh3_64(&source),
            tape_prefix_hash,
            shard_files,
            rules: self.settings.rules.clone(),
            reload_to,
            near_bytes: near.map(|n| n.1),
        };
        self.store.commit(id, &manifest.encode(), &source, &new_names)?;
        self.saved_accounts = self.saved_accounts.max(accounts);
        self.saved_instruments = self.saved_instruments.max(instruments);
        let mut source = source;
        if source.capacity() < 2 * source.len() {
            // Room to double, touched here rather than on the source thread.
            source = vec![0u8; 2 * source.len()];
        }
        source.clear();
        let _ = self.source_back.send(source);
        let ids = self.store.checkpoint_ids()?;
        if ids.len() > self.settings.keep {
            for &old in &ids[..ids.len() - self.settings.keep] {
                self.store.delete(old)?;
            }
        }
        Ok((manifest.bytes(), cut_ns))
    }
}

/// The allocation threshold `fix_mmap_threshold` sets.
pub const MMAP_THRESHOLD_BYTES: usize = 256 << 10;

/// glibc malloc: blocks of `MMAP_THRESHOLD_BYTES` and more each get their
/// own mapping, returned to the system when freed. Glibc's default
/// threshold rises to the largest block freed, so RocksDB's copies of each
/// checkpoint's source snapshot (a write batch, a memtable block, blocks
/// read back: hundreds of KB a second, growing through the day with the
/// open orders) were carved from this thread's arena, which fragmented
/// and kept growing: a daemon's RSS climbed 1 MiB a minute
/// (docs/PERFORMANCE.md, the soak). No reuse here reaches RocksDB's own
/// copies, nor would an allocator crate (C++ allocations bypass Rust's
/// global allocator). Called by `main` before any thread starts;
/// `MALLOC_MMAP_THRESHOLD_` set in the environment wins.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets a malloc parameter.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES as libc::c_int) };
    }
}

fn collect_names(out: &mut Vec<(u8, u64, Vec<u8>)>, prefix: u8, table: &NameTable, from: u64, to: u64) {
    for id in from..to {
        let (bytes, len) = table.get(id as u32);
        out.push((prefix, id, bytes[..len].to_vec()));
    }
}

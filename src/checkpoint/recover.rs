//! Reading checkpoints back: verify one (manifest checksum, source snapshot
//! checksum, every shard file's header, length and checksum, the names it
//! needs), and pick the newest one that verifies. A checkpoint that fails
//! is reported and skipped, never used.

use super::store::{self, ACCOUNT, INSTRUMENT, MANIFEST, SOURCE, Store};
use super::{Identity, Manifest};
use xxhash_rust::xxh3::xxh3_64;

/// A verified checkpoint, read into memory.
pub struct Loaded {
    pub manifest: Manifest,
    pub source: Vec<u8>,
    pub shards: Vec<Vec<u8>>,
    pub accounts: Vec<Vec<u8>>,
    pub instruments: Vec<Vec<u8>>,
}

pub fn manifest(store: &Store, id: u64) -> Result<Manifest, String> {
    let bytes = store.get(MANIFEST, id)?.ok_or_else(|| format!("checkpoint {id}: no manifest"))?;
    let manifest = Manifest::decode(&bytes).map_err(|e| format!("checkpoint {id}: bad manifest: {e}"))?;
    if manifest.id != id {
        return Err(format!("checkpoint {id}: the manifest names checkpoint {}", manifest.id));
    }
    Ok(manifest)
}

/// Reads and verifies every part of one checkpoint.
pub fn load(store: &Store, id: u64) -> Result<Loaded, String> {
    let manifest = manifest(store, id)?;
    let source = store.get(SOURCE, id)?.ok_or_else(|| format!("checkpoint {id}: no source snapshot"))?;
    if source.len() as u64 != manifest.source_len || xxh3_64(&source) != manifest.source_hash {
        return Err(format!("checkpoint {id}: the source snapshot does not match its manifest"));
    }
    let mut shards = Vec::with_capacity(manifest.shard_files.len());
    for (shard, file) in manifest.shard_files.iter().enumerate() {
        let path = store.shard_path(id, shard);
        shards.push(store::read_snapshot(&path, id, shard, file.len, file.hash)?);
    }
    let accounts = store.names(ACCOUNT, manifest.accounts).map_err(|e| format!("checkpoint {id}: {e}"))?;
    let instruments = store.names(INSTRUMENT, manifest.instruments).map_err(|e| format!("checkpoint {id}: {e}"))?;
    Ok(Loaded { manifest, source, shards, accounts, instruments })
}

/// The newest checkpoint that verifies. Each newer one that does not is
/// reported through `log` and deleted (it could only mislead a later run).
/// A checkpoint taken on another tape or with other rules is an error: the
/// operator pointed `--state` at the wrong directory (or changed the rules
/// file without a reload). A reload's checkpoint may be resumed under the
/// rules it hands over to (`Manifest::resumable_under`).
pub fn newest(store: &Store, identity: &Identity, log: &mut dyn FnMut(String)) -> Result<Option<Loaded>, String> {
    let ids = store.checkpoint_ids()?;
    for (index, &id) in ids.iter().enumerate().rev() {
        match load(store, id) {
            Ok(loaded) => {
                if let Some(why) = loaded.manifest.resumable_under(identity) {
                    return Err(format!(
                        "{}: checkpoint {id} cannot be resumed: {why}; use another --state directory",
                        store.dir.display()
                    ));
                }
                return Ok(Some(loaded));
            }
            Err(e) => {
                let fallback = match index {
                    0 => "starting from the beginning of the tape".to_string(),
                    _ => format!("trying checkpoint {}", ids[index - 1]),
                };
                log(format!(
                    "{}: checkpoint {id} is torn or damaged and will not be used ({e}); {fallback}",
                    store.dir.display()
                ));
                store.delete(id)?;
            }
        }
    }
    Ok(None)
}

//! The redb index: cache keys → results, snapshot records, layer info, checksum memo and small
//! metadata, each in its own table. Every write transaction commits durably, except those that
//! only save work (cache results, layer records, use times, the checksum memo, link-reuse
//! hints, new snapshots' records): they commit without waiting for the disk, and the next durable commit (any other
//! write, or closing the store) carries them. A crash before it loses that work and nothing
//! else: what they name was made durable first, so no record ever names what is not on disk.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

use crate::CacheError;

pub(crate) const RESULTS: TableDefinition<&str, &[u8]> = TableDefinition::new("results");
pub(crate) const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
pub(crate) const LAYERS: TableDefinition<u64, &[u8]> = TableDefinition::new("layers");
pub(crate) const MEMO: TableDefinition<&[u8], &[u8]> = TableDefinition::new("memo");
pub(crate) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
pub(crate) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// Snapshots whose records are removed and whose directories may not be yet (id → 0): finished
/// when the store is opened, so a directory never outlives its record for a reader.
pub(crate) const REMOVING: TableDefinition<u64, u64> = TableDefinition::new("removing");
/// Cache key → when a build last used its result (unix seconds), for least-recently-used GC.
pub(crate) const USED: TableDefinition<&str, u64> = TableDefinition::new("used");

/// The one `Database` of a store, shared by the index and the snapshots.
#[derive(Debug)]
pub(crate) struct Db {
    pub(crate) db: Database,
    pub(crate) path: PathBuf,
    /// Whether a lazy commit happened since the last durable one.
    lazy: std::sync::atomic::AtomicBool,
}

impl Drop for Db {
    fn drop(&mut self) {
        // The store is closing: what lazy commits saved becomes durable now, whoever forgot to
        // call `persist`.
        let _ = self.persist();
    }
}

impl Db {
    pub(crate) fn open(path: &Path) -> Result<Db, CacheError> {
        let db = Database::create(path).map_err(CacheError::db("open the database", path))?;
        let this = Db {
            db,
            path: path.to_path_buf(),
            lazy: std::sync::atomic::AtomicBool::new(false),
        };
        // Create every table up front so read transactions never meet a missing one; a store
        // that has them all is not written (a durable commit costs every command an fdatasync).
        if this.has_every_table()? {
            return Ok(this);
        }
        let txn = this.begin_write()?;
        {
            let err = CacheError::db("create tables", path);
            txn.open_table(RESULTS).map_err(err)?;
            txn.open_table(SNAPSHOTS)
                .map_err(CacheError::db("create tables", path))?;
            txn.open_table(LAYERS)
                .map_err(CacheError::db("create tables", path))?;
            txn.open_table(MEMO)
                .map_err(CacheError::db("create tables", path))?;
            txn.open_table(META)
                .map_err(CacheError::db("create tables", path))?;
            txn.open_table(COUNTERS)
                .map_err(CacheError::db("create tables", path))?;
            txn.open_table(USED)
                .map_err(CacheError::db("create tables", path))?;
            txn.open_table(REMOVING)
                .map_err(CacheError::db("create tables", path))?;
        }
        this.commit(txn)?;
        Ok(this)
    }

    fn has_every_table(&self) -> Result<bool, CacheError> {
        let txn = self.begin_read()?;
        let names: HashSet<String> = txn
            .list_tables()
            .map_err(CacheError::db("list tables", &self.path))?
            .map(|t| t.name().to_string())
            .collect();
        Ok([
            RESULTS.name(),
            SNAPSHOTS.name(),
            LAYERS.name(),
            MEMO.name(),
            META.name(),
            COUNTERS.name(),
            USED.name(),
            REMOVING.name(),
        ]
        .iter()
        .all(|n| names.contains(*n)))
    }

    pub(crate) fn begin_write(&self) -> Result<redb::WriteTransaction, CacheError> {
        self.db
            .begin_write()
            .map_err(CacheError::db("begin a write transaction", &self.path))
    }

    pub(crate) fn begin_read(&self) -> Result<redb::ReadTransaction, CacheError> {
        self.db
            .begin_read()
            .map_err(CacheError::db("begin a read transaction", &self.path))
    }

    pub(crate) fn commit(&self, txn: redb::WriteTransaction) -> Result<(), CacheError> {
        // Cleared first: a lazy commit racing this one is then either carried by it or flagged
        // again after it.
        let was_lazy = self.lazy.swap(false, std::sync::atomic::Ordering::SeqCst);
        txn.commit().map_err(|e| {
            if was_lazy {
                self.lazy.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            CacheError::db("commit a transaction", &self.path)(e)
        })
    }

    /// Commits a transaction that only saves work (see the module docs): two `fdatasync`s
    /// fewer per step, which a short build feels.
    pub(crate) fn commit_lazily(&self, mut txn: redb::WriteTransaction) -> Result<(), CacheError> {
        txn.set_durability(redb::Durability::None);
        txn.commit()
            .map_err(CacheError::db("commit a transaction", &self.path))?;
        self.lazy.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Makes what lazy commits saved durable (an empty durable commit, only when there were
    /// any).
    pub(crate) fn persist(&self) -> Result<(), CacheError> {
        if !self.lazy.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let txn = self.begin_write()?;
        self.commit(txn)
    }

    pub(crate) fn err<E: Into<redb::Error>>(
        &self,
        action: &'static str,
    ) -> impl FnOnce(E) -> CacheError {
        CacheError::db(action, &self.path)
    }
}

/// What a cache key resolved to. `snapshot == None` is the empty file system (scratch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedResult {
    pub snapshot: Option<SnapshotId>,
    pub created_unix: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The cache index. Obtained from [`crate::Store::index`].
#[derive(Debug)]
pub struct CacheIndex {
    db: std::sync::Arc<Db>,
    /// Hits since the last [`CacheIndex::flush_usage`]: key → unix seconds. Kept in memory so
    /// a cache hit costs no durable write; lost on a crash, which only makes GC think those
    /// results a little older.
    touched: Mutex<HashMap<String, u64>>,
}

impl Drop for CacheIndex {
    fn drop(&mut self) {
        // Best effort: a use not recorded only makes its result look older to the GC.
        let _ = self.flush_usage();
    }
}

impl CacheIndex {
    pub(crate) fn new(db: std::sync::Arc<Db>) -> Self {
        CacheIndex {
            db,
            touched: Mutex::new(HashMap::new()),
        }
    }

    /// The result recorded for a cache key. A hit counts as a use of the result (see
    /// [`CacheIndex::last_used`]).
    pub fn get(&self, key: &str) -> Result<Option<CachedResult>, CacheError> {
        let found = self.peek(key)?;
        if found.is_some() {
            if let Ok(mut t) = self.touched.lock() {
                t.insert(key.to_string(), unix_now());
            }
        }
        Ok(found)
    }

    /// Writes the uses recorded by [`CacheIndex::get`] since the last flush, in one durable
    /// transaction, which also makes what the build's lazy commits saved durable: a build calls
    /// it when it ends.
    pub fn flush_usage(&self) -> Result<(), CacheError> {
        let touched = match self.touched.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return self.db.persist(),
        };
        if touched.is_empty() {
            return self.db.persist();
        }
        let txn = self.db.begin_write()?;
        {
            let results = txn
                .open_table(RESULTS)
                .map_err(self.db.err("open results"))?;
            let mut used = txn.open_table(USED).map_err(self.db.err("open used"))?;
            for (key, when) in &touched {
                // A result removed since its hit needs no record.
                if results
                    .get(key.as_str())
                    .map_err(self.db.err("read a result"))?
                    .is_some()
                {
                    used.insert(key.as_str(), *when)
                        .map_err(self.db.err("write used"))?;
                }
            }
        }
        self.db.commit(txn)
    }

    /// When each result was last used: its last recorded hit, else its creation.
    pub fn last_used(&self) -> Result<HashMap<String, u64>, CacheError> {
        self.flush_usage()?;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(USED).map_err(self.db.err("open used"))?;
        let mut out = HashMap::new();
        for item in table.iter().map_err(self.db.err("list used"))? {
            let (k, v) = item.map_err(self.db.err("list used"))?;
            out.insert(k.value().to_string(), v.value());
        }
        for (key, result) in self.list()? {
            let e = out.entry(key).or_insert(result.created_unix);
            *e = (*e).max(result.created_unix);
        }
        Ok(out)
    }

    /// Drops the use records of results that are gone.
    pub(crate) fn forget_unused_records(&self) -> Result<(), CacheError> {
        let txn = self.db.begin_write()?;
        {
            let results = txn
                .open_table(RESULTS)
                .map_err(self.db.err("open results"))?;
            let mut used = txn.open_table(USED).map_err(self.db.err("open used"))?;
            let mut stale = Vec::new();
            for item in used.iter().map_err(self.db.err("list used"))? {
                let (k, _) = item.map_err(self.db.err("list used"))?;
                if results
                    .get(k.value())
                    .map_err(self.db.err("read a result"))?
                    .is_none()
                {
                    stale.push(k.value().to_string());
                }
            }
            for k in stale {
                used.remove(k.as_str())
                    .map_err(self.db.err("remove used"))?;
            }
        }
        self.db.commit(txn)
    }

    /// The result recorded for a cache key, without counting a use.
    fn peek(&self, key: &str) -> Result<Option<CachedResult>, CacheError> {
        let txn = self.db.begin_read()?;
        let table = txn
            .open_table(RESULTS)
            .map_err(self.db.err("open results"))?;
        let Some(value) = table.get(key).map_err(self.db.err("read a result"))? else {
            return Ok(None);
        };
        let result =
            serde_json::from_slice(value.value()).map_err(|e| CacheError::CorruptJson {
                what: "cache result",
                location: format!("{} (key `{key}`)", self.db.path.display()),
                cause: e,
            })?;
        Ok(Some(result))
    }

    /// Records a result. Its snapshot must already exist (and be durable): a result never points
    /// at a snapshot the store does not have.
    pub fn put(&self, key: &str, result: &CachedResult) -> Result<(), CacheError> {
        self.put_aliased(key, result, None)
    }

    /// As [`CacheIndex::put`], and records `alias` (see [`CacheIndex::alias_put`]) for `key` in
    /// the same transaction: one commit per step, not two.
    pub fn put_aliased(
        &self,
        key: &str,
        result: &CachedResult,
        alias: Option<&str>,
    ) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec(result).map_err(|e| CacheError::CorruptJson {
            what: "cache result",
            location: key.to_string(),
            cause: e,
        })?;
        let txn = self.db.begin_write()?;
        {
            if let Some(id) = result.snapshot {
                let snaps = txn
                    .open_table(SNAPSHOTS)
                    .map_err(self.db.err("open snapshots"))?;
                if snaps
                    .get(id.0)
                    .map_err(self.db.err("read a snapshot"))?
                    .is_none()
                {
                    return Err(CacheError::SnapshotNotFound(id.0));
                }
            }
            let mut table = txn
                .open_table(RESULTS)
                .map_err(self.db.err("open results"))?;
            table
                .insert(key, bytes.as_slice())
                .map_err(self.db.err("write a result"))?;
            if let Some(alias) = alias {
                let mut meta = txn.open_table(META).map_err(self.db.err("open meta"))?;
                meta.insert(format!("{RESULT_ALIAS}{alias}").as_str(), key)
                    .map_err(self.db.err("write meta"))?;
            }
        }
        self.db.commit_lazily(txn)
    }

    /// Forgets a cache key (no error when it was not there).
    pub fn remove(&self, key: &str) -> Result<(), CacheError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn
                .open_table(RESULTS)
                .map_err(self.db.err("open results"))?;
            table.remove(key).map_err(self.db.err("remove a result"))?;
        }
        self.db.commit(txn)
    }

    /// Forgets several cache keys in one transaction, with their use records.
    pub fn remove_many(&self, keys: &[String]) -> Result<(), CacheError> {
        if keys.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn
                .open_table(RESULTS)
                .map_err(self.db.err("open results"))?;
            let mut used = txn.open_table(USED).map_err(self.db.err("open used"))?;
            for key in keys {
                table
                    .remove(key.as_str())
                    .map_err(self.db.err("remove a result"))?;
                used.remove(key.as_str())
                    .map_err(self.db.err("remove used"))?;
            }
            let keys: HashSet<&str> = keys.iter().map(String::as_str).collect();
            remove_meta_of(&self.db, &txn, &HashSet::new(), &keys)?;
        }
        self.db.commit(txn)
    }

    /// All recorded results, for garbage collection and `kiln cache ls`.
    pub fn list(&self) -> Result<Vec<(String, CachedResult)>, CacheError> {
        let txn = self.db.begin_read()?;
        let table = txn
            .open_table(RESULTS)
            .map_err(self.db.err("open results"))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(self.db.err("list results"))? {
            let (k, v) = item.map_err(self.db.err("list results"))?;
            let key = k.value().to_string();
            let result =
                serde_json::from_slice(v.value()).map_err(|e| CacheError::CorruptJson {
                    what: "cache result",
                    location: format!("{} (key `{key}`)", self.db.path.display()),
                    cause: e,
                })?;
            out.push((key, result));
        }
        Ok(out)
    }

    /// Looks up content checksums memoised by (path, size, mtime, ctime, inode) keys.
    /// A malformed stored value reads as a miss.
    pub fn memo_get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<[u8; 32]>>, CacheError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MEMO).map_err(self.db.err("open memo"))?;
        keys.iter()
            .map(|k| {
                let v = table.get(k.as_slice()).map_err(self.db.err("read memo"))?;
                Ok(v.and_then(|v| <[u8; 32]>::try_from(v.value()).ok()))
            })
            .collect()
    }

    /// Stores content checksums, all in one transaction.
    pub fn memo_put_many(&self, entries: &[(Vec<u8>, [u8; 32])]) -> Result<(), CacheError> {
        if entries.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(MEMO).map_err(self.db.err("open memo"))?;
            for (k, v) in entries {
                table
                    .insert(k.as_slice(), v.as_slice())
                    .map_err(self.db.err("write memo"))?;
            }
        }
        // Keyed by the file's `stat`: losing an entry costs a re-hash, never a wrong sum.
        self.db.commit_lazily(txn)
    }

    /// Reads a small string value.
    pub fn meta_get(&self, key: &str) -> Result<Option<String>, CacheError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META).map_err(self.db.err("open meta"))?;
        let v = table.get(key).map_err(self.db.err("read meta"))?;
        Ok(v.map(|v| v.value().to_string()))
    }

    /// Writes a small string value, replacing any old one.
    pub fn meta_put(&self, key: &str, value: &str) -> Result<(), CacheError> {
        let txn = self.meta_insert(key, value)?;
        self.db.commit(txn)
    }

    fn meta_insert(&self, key: &str, value: &str) -> Result<redb::WriteTransaction, CacheError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(META).map_err(self.db.err("open meta"))?;
            table
                .insert(key, value)
                .map_err(self.db.err("write meta"))?;
        }
        Ok(txn)
    }

    /// [`CacheIndex::meta_put`] for a hint whose loss in a crash costs only work (the snapshot
    /// a COPY may link files from): committed lazily, as cache results are.
    pub fn meta_put_hint(&self, key: &str, value: &str) -> Result<(), CacheError> {
        let txn = self.meta_insert(key, value)?;
        self.db.commit_lazily(txn)
    }

    /// All small string values, sorted by key.
    pub fn meta_list(&self) -> Result<Vec<(String, String)>, CacheError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META).map_err(self.db.err("open meta"))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(self.db.err("list meta"))? {
            let (k, v) = item.map_err(self.db.err("list meta"))?;
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// Removes a small string value (no error when it was not there).
    pub fn meta_remove(&self, key: &str) -> Result<(), CacheError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(META).map_err(self.db.err("open meta"))?;
            table.remove(key).map_err(self.db.err("remove meta"))?;
        }
        self.db.commit(txn)
    }
}

/// `meta` rows that belong to a snapshot: removed by GC with it.
const SNAPSHOT_META: &str = "snapshot/";
/// `meta` rows naming where a blob missing from the content store can be fetched.
const REMOTE_BLOB: &str = "remote-blob:";
/// `meta` rows naming a result's key by another key: removed by GC with the result.
const RESULT_ALIAS: &str = "result-alias/";

impl CacheIndex {
    /// A value memoised for snapshot `id` under `name` (a committed snapshot never changes, and
    /// ids are never reused, so it stays true until the snapshot is removed).
    pub fn snapshot_meta_get(
        &self,
        id: SnapshotId,
        name: &str,
    ) -> Result<Option<String>, CacheError> {
        self.meta_get(&format!("{SNAPSHOT_META}{id}/{name}"))
    }

    /// Memoises `value` for snapshot `id` under `name`; [`crate::Store::gc`] removes it with
    /// the snapshot.
    pub fn snapshot_meta_put(
        &self,
        id: SnapshotId,
        name: &str,
        value: &str,
    ) -> Result<(), CacheError> {
        self.meta_put(&format!("{SNAPSHOT_META}{id}/{name}"), value)
    }

    /// Forgets a value memoised for snapshot `id` (a lazy snapshot once it is filled).
    pub fn snapshot_meta_remove(&self, id: SnapshotId, name: &str) -> Result<(), CacheError> {
        self.meta_remove(&format!("{SNAPSHOT_META}{id}/{name}"))
    }

    /// Records that the blob `digest` is not in the content store but can be fetched from
    /// `source` (a lazily imported build cache's layer): `kiln check` keeps what names it.
    pub fn remote_blob_put(&self, digest: &str, source: &str) -> Result<(), CacheError> {
        self.meta_put(&format!("{REMOTE_BLOB}{digest}"), source)
    }

    /// Where the blob `digest` can be fetched from, if it was recorded as remote.
    pub fn remote_blob_get(&self, digest: &str) -> Result<Option<String>, CacheError> {
        self.meta_get(&format!("{REMOTE_BLOB}{digest}"))
    }

    /// The result key that `alias` names, if recorded.
    pub fn alias_get(&self, alias: &str) -> Result<Option<String>, CacheError> {
        self.meta_get(&format!("{RESULT_ALIAS}{alias}"))
    }

    /// Records that `alias` names the result under `key`; [`crate::Store::gc`] removes it with
    /// that result.
    pub fn alias_put(&self, alias: &str, key: &str) -> Result<(), CacheError> {
        self.meta_put(&format!("{RESULT_ALIAS}{alias}"), key)
    }

    /// The `meta` rows that outlived what they are about: a snapshot's memo whose snapshot is
    /// not in `live_snapshots`, an alias whose result key is not in `live_results`.
    pub(crate) fn meta_dangling(
        &self,
        live_snapshots: &std::collections::HashSet<SnapshotId>,
        live_results: &std::collections::HashSet<String>,
    ) -> Result<Vec<String>, CacheError> {
        Ok(self
            .meta_list()?
            .into_iter()
            .filter(|(k, v)| {
                let dead_snap = k
                    .strip_prefix(SNAPSHOT_META)
                    .and_then(|rest| rest.split('/').next())
                    .and_then(|id| id.parse().ok())
                    .is_some_and(|id| !live_snapshots.contains(&SnapshotId(id)));
                dead_snap || (k.starts_with(RESULT_ALIAS) && !live_results.contains(v))
            })
            .map(|(k, _)| k)
            .collect())
    }

    /// Removes `meta` rows in one transaction.
    pub(crate) fn meta_remove_many(&self, keys: &[String]) -> Result<(), CacheError> {
        if keys.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(META).map_err(self.db.err("open meta"))?;
            for key in keys {
                table
                    .remove(key.as_str())
                    .map_err(self.db.err("remove meta"))?;
            }
        }
        self.db.commit(txn)
    }
}

/// Removes, inside `txn`, the `meta` rows that belong to the snapshots `snapshots` (their memos)
/// or name one of the results `results` (their aliases). Done in the transaction that removes
/// those records, so a process killed at any point never leaves a row naming what is gone.
pub(crate) fn remove_meta_of(
    db: &Db,
    txn: &redb::WriteTransaction,
    snapshots: &HashSet<u64>,
    results: &HashSet<&str>,
) -> Result<(), CacheError> {
    if snapshots.is_empty() && results.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(META).map_err(db.err("open meta"))?;
    let mut doomed = Vec::new();
    for item in table.iter().map_err(db.err("list meta"))? {
        let (k, v) = item.map_err(db.err("list meta"))?;
        let (k, v) = (k.value(), v.value());
        let of_snapshot = k
            .strip_prefix(SNAPSHOT_META)
            .and_then(|rest| rest.split('/').next())
            .and_then(|id| id.parse::<u64>().ok())
            .is_some_and(|id| snapshots.contains(&id));
        if of_snapshot || (k.starts_with(RESULT_ALIAS) && results.contains(v)) {
            doomed.push(k.to_string());
        }
    }
    for k in doomed {
        table.remove(k.as_str()).map_err(db.err("remove meta"))?;
    }
    Ok(())
}

/// A snapshot's number; small so overlay option strings stay short.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Ord, PartialOrd, Serialize, Deserialize)]
pub struct SnapshotId(pub u64);

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How a snapshot is stored in the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    pub(crate) parent: Option<u64>,
    pub(crate) created_unix: u64,
    /// Set on a snapshot whose changes are relative to only part of its parent chain (a merge's
    /// re-applied layer): the ancestor at which that part ends (exclusive; 0: none of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) diff_floor: Option<u64>,
}

/// Parses a stored snapshot record.
pub(crate) fn decode_record(db: &Db, id: u64, bytes: &[u8]) -> Result<SnapshotRecord, CacheError> {
    serde_json::from_slice(bytes).map_err(|e| CacheError::CorruptJson {
        what: "snapshot record",
        location: format!("{} (snapshot `{id}`)", db.path.display()),
        cause: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn index() -> (tempfile::TempDir, CacheIndex) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("index.redb")).unwrap());
        (dir, CacheIndex::new(db))
    }

    #[test]
    fn a_result_committed_lazily_is_durable_after_the_build_ends_or_the_store_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let r = CachedResult {
            snapshot: None,
            created_unix: 5,
        };
        {
            let idx = CacheIndex::new(Arc::new(Db::open(&path).unwrap()));
            idx.put("lazy", &r).unwrap();
            assert!(idx.db.lazy.load(std::sync::atomic::Ordering::SeqCst));
            // The end of a build: one durable commit carries the step's.
            idx.flush_usage().unwrap();
            assert!(!idx.db.lazy.load(std::sync::atomic::Ordering::SeqCst));
            idx.put("closed", &r).unwrap();
        }
        let idx = CacheIndex::new(Arc::new(Db::open(&path).unwrap()));
        assert_eq!(idx.get("lazy").unwrap(), Some(r.clone()));
        assert_eq!(idx.get("closed").unwrap(), Some(r));
    }

    #[test]
    fn results_round_trip() {
        let (_d, idx) = index();
        assert_eq!(idx.get("k").unwrap(), None);
        let r = CachedResult {
            snapshot: None,
            created_unix: 42,
        };
        idx.put("k", &r).unwrap();
        assert_eq!(idx.get("k").unwrap(), Some(r.clone()));
        assert_eq!(idx.list().unwrap(), vec![("k".to_string(), r)]);
        idx.remove("k").unwrap();
        assert_eq!(idx.get("k").unwrap(), None);
    }

    #[test]
    fn a_result_put_with_an_alias_is_found_by_it_and_a_failed_put_records_neither() {
        let (_d, idx) = index();
        let r = CachedResult {
            snapshot: None,
            created_unix: 42,
        };
        idx.put_aliased("k", &r, Some("by-content")).unwrap();
        assert_eq!(idx.alias_get("by-content").unwrap().as_deref(), Some("k"));
        assert_eq!(idx.get("k").unwrap(), Some(r));
        let missing = CachedResult {
            snapshot: Some(SnapshotId(7)),
            created_unix: 1,
        };
        assert!(idx.put_aliased("k2", &missing, Some("other")).is_err());
        assert_eq!(idx.alias_get("other").unwrap(), None);
    }

    // A GC killed between removing results and removing their aliases left aliases naming
    // results that were gone (`kiln check` found 8 such rows): both go in one transaction now.
    #[test]
    fn removing_a_result_removes_its_aliases_in_the_same_commit() {
        let (_d, idx) = index();
        let r = CachedResult {
            snapshot: None,
            created_unix: 1,
        };
        idx.put_aliased("gone", &r, Some("by-content-of-gone"))
            .unwrap();
        idx.put_aliased("kept", &r, Some("by-content-of-kept"))
            .unwrap();
        idx.remove_many(&["gone".to_string()]).unwrap();
        assert_eq!(idx.alias_get("by-content-of-gone").unwrap(), None);
        assert_eq!(
            idx.alias_get("by-content-of-kept").unwrap().as_deref(),
            Some("kept")
        );
    }

    #[test]
    fn result_must_point_at_an_existing_snapshot() {
        let (_d, idx) = index();
        let r = CachedResult {
            snapshot: Some(SnapshotId(7)),
            created_unix: 1,
        };
        let err = idx.put("k", &r).unwrap_err();
        assert!(matches!(err, CacheError::SnapshotNotFound(7)), "{err}");
        assert_eq!(idx.get("k").unwrap(), None);
    }

    #[test]
    fn memo_many() {
        let (_d, idx) = index();
        idx.memo_put_many(&[(b"a".to_vec(), [1; 32]), (b"b".to_vec(), [2; 32])])
            .unwrap();
        let got = idx
            .memo_get_many(&[b"a".to_vec(), b"x".to_vec(), b"b".to_vec()])
            .unwrap();
        assert_eq!(got, vec![Some([1; 32]), None, Some([2; 32])]);
        idx.memo_put_many(&[]).unwrap();
    }

    #[test]
    fn meta_round_trip() {
        let (_d, idx) = index();
        assert_eq!(idx.meta_get("image:alpine").unwrap(), None);
        idx.meta_put("image:alpine", "sha256:x").unwrap();
        idx.meta_put("image:alpine", "sha256:y").unwrap();
        assert_eq!(
            idx.meta_get("image:alpine").unwrap().as_deref(),
            Some("sha256:y")
        );
        idx.meta_remove("image:alpine").unwrap();
        assert_eq!(idx.meta_get("image:alpine").unwrap(), None);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        {
            let idx = CacheIndex::new(Arc::new(Db::open(&path).unwrap()));
            idx.meta_put("a", "b").unwrap();
        }
        let idx = CacheIndex::new(Arc::new(Db::open(&path).unwrap()));
        assert_eq!(idx.meta_get("a").unwrap().as_deref(), Some("b"));
    }
}

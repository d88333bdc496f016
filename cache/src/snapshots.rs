//! Snapshots: one directory of changes per snapshot (`snapshots/<id>/fs`, overlay whiteout
//! form) plus a parent recorded in the index; chains, mounts, layer info and merged reads.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::digest::{validate_digest, Digest};
use crate::index::{
    decode_record, remove_meta_of, Db, SnapshotId, SnapshotRecord, COUNTERS, LAYERS, REMOVING,
    RESULTS, SNAPSHOTS,
};
use crate::mount::{self, MountGuard, Mounter};
use crate::unpack::{OPAQUE_XATTR, USER_OPAQUE_XATTR};
use crate::CacheError;

/// The most lower layers one mount may stack: overlayfs's `OVL_MAX_STACK`, the same through
/// mount(2) and through `fsconfig` `lowerdir+`.
pub(crate) const MAX_LAYERS: usize = 500;

/// Deepest chain followed before the index is declared corrupt (a parent cycle).
const MAX_CHAIN: usize = 100_000;

/// A snapshot being written: it removes itself when dropped unless [`MutableSnapshot::commit`]
/// was called, as BuildKit's `MutableRef` until `Commit`. A step that fails (an error, `?`, a
/// panic, a cancelled future) thus leaves no half-made snapshot behind, without a hand-written
/// removal on each error path.
#[must_use = "a mutable snapshot is removed when dropped; `commit` it to keep it"]
#[derive(Debug)]
pub struct MutableSnapshot {
    snaps: Snapshots,
    id: SnapshotId,
    committed: bool,
}

impl MutableSnapshot {
    /// The snapshot's id, to write into it or to mount it; it is still removed on drop.
    pub fn id(&self) -> SnapshotId {
        self.id
    }

    /// The directory the snapshot's files go into.
    pub fn fs_dir(&self) -> PathBuf {
        self.snaps.fs_dir(self.id)
    }

    /// Keeps the snapshot: from now on it is an ordinary snapshot, removed only by GC or prune.
    pub fn commit(mut self) -> SnapshotId {
        self.committed = true;
        self.id
    }
}

impl Drop for MutableSnapshot {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a snapshot no result points at is collected by `kiln prune` anyway.
            let _ = self.snaps.remove(self.id);
        }
    }
}

/// A layer blob known for a snapshot (one per media type).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub diff_id: Digest,
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// The snapshot store. Obtained from [`crate::Store::snapshots`]; cheap to clone.
#[derive(Clone, Debug)]
pub struct Snapshots {
    dir: PathBuf,
    pub(crate) db: Arc<Db>,
    mounter: Arc<dyn Mounter>,
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Snapshots {
    pub(crate) fn new(root: &Path, db: Arc<Db>, mounter: Arc<dyn Mounter>) -> Self {
        Snapshots {
            dir: root.join("snapshots"),
            db,
            mounter,
        }
    }

    fn snapshot_dir(&self, id: SnapshotId) -> PathBuf {
        self.dir.join(id.0.to_string())
    }

    /// The directory holding this snapshot's own changes.
    pub fn fs_dir(&self, id: SnapshotId) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    /// The overlay work dir of a snapshot used as an upper; beside `fs/`, same file system.
    pub fn work_dir(&self, id: SnapshotId) -> PathBuf {
        self.snapshot_dir(id).join("work")
    }

    /// A new empty snapshot on `parent` that is removed again unless committed: see
    /// [`MutableSnapshot`].
    pub fn create_mutable(
        &self,
        parent: Option<SnapshotId>,
    ) -> Result<MutableSnapshot, CacheError> {
        Ok(MutableSnapshot {
            id: self.create(parent)?,
            snaps: self.clone(),
            committed: false,
        })
    }

    /// As [`Snapshots::create_over`], but removed on drop unless committed.
    pub fn create_over_mutable(
        &self,
        parent: Option<SnapshotId>,
        floor: Option<SnapshotId>,
    ) -> Result<MutableSnapshot, CacheError> {
        Ok(MutableSnapshot {
            id: self.create_over(parent, floor)?,
            snaps: self.clone(),
            committed: false,
        })
    }

    /// Takes back `id`, a committed snapshot that nothing records yet (a step's new result, until
    /// the index names it): it is removed on drop unless committed again.
    pub fn adopt(&self, id: SnapshotId) -> MutableSnapshot {
        MutableSnapshot {
            id,
            snaps: self.clone(),
            committed: false,
        }
    }

    /// Creates a new, empty snapshot on `parent` (which must exist).
    pub fn create(&self, parent: Option<SnapshotId>) -> Result<SnapshotId, CacheError> {
        self.create_record(parent, None)
    }

    /// Creates a new, empty snapshot on `parent` whose changes are a diff against the chain
    /// below it only down to `floor` (exclusive; `None`: against nothing). A merge re-applies a
    /// layer on another base this way: its layer stays the diff it was made as, whatever the base.
    pub fn create_over(
        &self,
        parent: Option<SnapshotId>,
        floor: Option<SnapshotId>,
    ) -> Result<SnapshotId, CacheError> {
        self.create_record(parent, Some(floor.map_or(0, |f| f.0)))
    }

    fn create_record(
        &self,
        parent: Option<SnapshotId>,
        diff_floor: Option<u64>,
    ) -> Result<SnapshotId, CacheError> {
        let txn = self.db.begin_write()?;
        let id;
        {
            let mut snaps = txn
                .open_table(SNAPSHOTS)
                .map_err(self.db.err("open snapshots"))?;
            if let Some(p) = parent {
                if snaps
                    .get(p.0)
                    .map_err(self.db.err("read a snapshot"))?
                    .is_none()
                {
                    return Err(CacheError::SnapshotNotFound(p.0));
                }
            }
            let mut counters = txn
                .open_table(COUNTERS)
                .map_err(self.db.err("open counters"))?;
            let next = counters
                .get("snapshot")
                .map_err(self.db.err("read the snapshot counter"))?
                .map(|v| v.value())
                .unwrap_or(1);
            id = SnapshotId(next);
            counters
                .insert("snapshot", next + 1)
                .map_err(self.db.err("write the snapshot counter"))?;
            // A directory left by a crash before an earlier commit may hold this number.
            let dir = self.snapshot_dir(id);
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(CacheError::io("remove stale snapshot", &dir))?;
            }
            let fs_dir = self.fs_dir(id);
            fs::create_dir_all(&fs_dir).map_err(CacheError::io("create snapshot", &fs_dir))?;
            let record = SnapshotRecord {
                parent: parent.map(|p| p.0),
                created_unix: now_unix(),
                diff_floor,
            };
            let bytes = serde_json::to_vec(&record).map_err(|e| CacheError::CorruptJson {
                what: "snapshot record",
                location: id.to_string(),
                cause: e,
            })?;
            snaps
                .insert(id.0, bytes.as_slice())
                .map_err(self.db.err("write a snapshot"))?;
        }
        // Lazily: a crash that loses the record (and the counter) leaves a directory no record
        // names, which the next snapshot given this number removes first (above); whatever
        // names the snapshot commits after it, so it is lost with it.
        self.db.commit_lazily(txn)?;
        Ok(id)
    }

    fn record(&self, id: SnapshotId) -> Result<SnapshotRecord, CacheError> {
        let txn = self.db.begin_read()?;
        let snaps = txn
            .open_table(SNAPSHOTS)
            .map_err(self.db.err("open snapshots"))?;
        let v = snaps
            .get(id.0)
            .map_err(self.db.err("read a snapshot"))?
            .ok_or(CacheError::SnapshotNotFound(id.0))?;
        decode_record(&self.db, id.0, v.value())
    }

    /// Whether the snapshot is recorded.
    pub fn exists(&self, id: SnapshotId) -> Result<bool, CacheError> {
        match self.record(id) {
            Ok(_) => Ok(true),
            Err(CacheError::SnapshotNotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The parent of a snapshot.
    pub fn parent(&self, id: SnapshotId) -> Result<Option<SnapshotId>, CacheError> {
        Ok(self.record(id)?.parent.map(SnapshotId))
    }

    /// `[id, parent, grandparent, …]`, top first.
    pub fn chain(&self, id: SnapshotId) -> Result<Vec<SnapshotId>, CacheError> {
        let txn = self.db.begin_read()?;
        let snaps = txn
            .open_table(SNAPSHOTS)
            .map_err(self.db.err("open snapshots"))?;
        let mut out = vec![id];
        let mut cur = id;
        loop {
            let v = snaps
                .get(cur.0)
                .map_err(self.db.err("read a snapshot"))?
                .ok_or(CacheError::SnapshotNotFound(cur.0))?;
            match decode_record(&self.db, cur.0, v.value())?.parent {
                None => return Ok(out),
                Some(p) => {
                    if out.len() >= MAX_CHAIN {
                        return Err(CacheError::Corrupt {
                            what: "snapshot chain",
                            location: format!("{} (snapshot `{id}`)", self.db.path.display()),
                            detail: "the parents form a cycle".into(),
                        });
                    }
                    cur = SnapshotId(p);
                    out.push(cur);
                }
            }
        }
    }

    /// The snapshots a snapshot's own changes are a diff against, top first: its parent chain,
    /// cut at the floor given to [`Snapshots::create_over`]. A layer leaves out what this chain
    /// already has.
    pub fn diff_lowers(&self, id: SnapshotId) -> Result<Vec<SnapshotId>, CacheError> {
        let rec = self.record(id)?;
        let Some(parent) = rec.parent else {
            return Ok(Vec::new());
        };
        if rec.diff_floor == Some(0) {
            return Ok(Vec::new());
        }
        let mut chain = self.chain(SnapshotId(parent))?;
        if let Some(floor) = rec.diff_floor {
            if let Some(i) = chain.iter().position(|s| s.0 == floor) {
                chain.truncate(i);
            }
        }
        Ok(chain)
    }

    /// All recorded snapshots with their parents, for garbage collection.
    pub fn list(&self) -> Result<Vec<(SnapshotId, Option<SnapshotId>)>, CacheError> {
        let txn = self.db.begin_read()?;
        let snaps = txn
            .open_table(SNAPSHOTS)
            .map_err(self.db.err("open snapshots"))?;
        let mut out = Vec::new();
        for item in snaps.iter().map_err(self.db.err("list snapshots"))? {
            let (k, v) = item.map_err(self.db.err("list snapshots"))?;
            let rec = decode_record(&self.db, k.value(), v.value())?;
            out.push((SnapshotId(k.value()), rec.parent.map(SnapshotId)));
        }
        Ok(out)
    }

    /// Removes a snapshot with no children: its record, its layer info, the cache results that
    /// point at it (so no result ever dangles), then its directory.
    pub fn remove(&self, id: SnapshotId) -> Result<(), CacheError> {
        self.remove_many(&[id])
    }

    /// Removes several snapshots in one transaction. A snapshot may have children only among
    /// those removed with it.
    pub fn remove_many(&self, ids: &[SnapshotId]) -> Result<(), CacheError> {
        let doomed: std::collections::HashSet<u64> = ids.iter().map(|id| id.0).collect();
        if doomed.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut snaps = txn
                .open_table(SNAPSHOTS)
                .map_err(self.db.err("open snapshots"))?;
            for id in ids {
                if snaps
                    .get(id.0)
                    .map_err(self.db.err("read a snapshot"))?
                    .is_none()
                {
                    return Err(CacheError::SnapshotNotFound(id.0));
                }
            }
            for item in snaps.iter().map_err(self.db.err("list snapshots"))? {
                let (k, v) = item.map_err(self.db.err("list snapshots"))?;
                if doomed.contains(&k.value()) {
                    continue;
                }
                if let Some(p) = decode_record(&self.db, k.value(), v.value())?.parent {
                    if doomed.contains(&p) {
                        return Err(CacheError::SnapshotInUse {
                            id: p,
                            child: k.value(),
                        });
                    }
                }
            }
            let mut layers = txn.open_table(LAYERS).map_err(self.db.err("open layers"))?;
            for id in &doomed {
                snaps
                    .remove(*id)
                    .map_err(self.db.err("remove a snapshot"))?;
                layers
                    .remove(*id)
                    .map_err(self.db.err("remove layer info"))?;
            }
            let mut results = txn
                .open_table(RESULTS)
                .map_err(self.db.err("open results"))?;
            let mut stale = Vec::new();
            for item in results.iter().map_err(self.db.err("list results"))? {
                let (k, v) = item.map_err(self.db.err("list results"))?;
                let r: Result<crate::CachedResult, _> = serde_json::from_slice(v.value());
                // An unreadable result is useless anyway; drop it with the snapshot.
                let gone = r
                    .map(|r| r.snapshot.is_some_and(|s| doomed.contains(&s.0)))
                    .unwrap_or(true);
                if gone {
                    stale.push(k.value().to_string());
                }
            }
            for k in &stale {
                results
                    .remove(k.as_str())
                    .map_err(self.db.err("remove a result"))?;
            }
            let stale: std::collections::HashSet<&str> = stale.iter().map(String::as_str).collect();
            remove_meta_of(&self.db, &txn, &doomed, &stale)?;
            // The directories go after the commit; until they are gone, the journal says so.
            let mut removing = txn
                .open_table(REMOVING)
                .map_err(self.db.err("open removing"))?;
            for id in &doomed {
                removing
                    .insert(*id, 0)
                    .map_err(self.db.err("journal a removal"))?;
            }
        }
        self.db.commit(txn)?;
        self.finish_removals()
    }

    /// Removes the directories of snapshots whose records are gone (the `removing` journal),
    /// then the journal. A process killed while removing them leaves the journal, and the next
    /// [`crate::Store::open`] finishes the job before anything reads a snapshot: so no reader
    /// ever finds a directory whose record is gone (the image unpacker reuses a snapshot by its
    /// directory).
    pub(crate) fn finish_removals(&self) -> Result<(), CacheError> {
        let ids: Vec<u64> = {
            let txn = self.db.begin_read()?;
            let table = txn
                .open_table(REMOVING)
                .map_err(self.db.err("open removing"))?;
            let mut ids = Vec::new();
            for item in table.iter().map_err(self.db.err("list removing"))? {
                let (k, _) = item.map_err(self.db.err("list removing"))?;
                ids.push(k.value());
            }
            ids
        };
        if ids.is_empty() {
            return Ok(());
        }
        for id in &ids {
            let dir = self.snapshot_dir(SnapshotId(*id));
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CacheError::io("remove snapshot directory", &dir)(e)),
            }
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn
                .open_table(REMOVING)
                .map_err(self.db.err("open removing"))?;
            for id in &ids {
                table
                    .remove(*id)
                    .map_err(self.db.err("clear the removal journal"))?;
            }
        }
        self.db.commit(txn)
    }

    /// Mounts `lower` (top first) at `target`; with `upper` the mount is writable and changes
    /// land in that snapshot's fs dir (overlay work dir: `snapshots/<id>/work`). One lower and
    /// no upper is a read-only bind; no lower and an upper is a writable bind of the upper.
    /// Stacks whose option string would pass one page use `fsconfig` `lowerdir+` (Linux 6.8+).
    /// Unmounted (`MNT_DETACH`) when the guard drops.
    pub fn mount(
        &self,
        lower: &[SnapshotId],
        upper: Option<SnapshotId>,
        target: &Path,
    ) -> Result<MountGuard, CacheError> {
        if lower.len() > MAX_LAYERS {
            // The kernel's own answer would be a bare `Invalid argument`.
            return Err(CacheError::TooManyLayers {
                layers: lower.len(),
                max: MAX_LAYERS,
            });
        }
        for id in lower.iter().chain(upper.iter()) {
            if !self.fs_dir(*id).is_dir() {
                return Err(CacheError::SnapshotNotFound(id.0));
            }
        }
        if let Some(u) = upper {
            if lower.contains(&u) {
                return Err(CacheError::MountRequest {
                    target: target.to_path_buf(),
                    reason: format!("snapshot `{u}` is both a lower and the upper; pass a new snapshot as the upper"),
                });
            }
        }
        if !target.is_dir() {
            return Err(CacheError::MountRequest {
                target: target.to_path_buf(),
                reason: "the mount point is not a directory; create it first".into(),
            });
        }
        let lower_dirs: Vec<PathBuf> = lower.iter().map(|id| self.fs_dir(*id)).collect();
        let upper_dirs = upper.map(|id| (self.fs_dir(id), self.work_dir(id)));
        if let Some((_, work)) = &upper_dirs {
            if !lower.is_empty() {
                fs::create_dir_all(work)
                    .map_err(CacheError::io("create overlay work dir", work))?;
            }
        }
        let req = mount::plan(
            &lower_dirs,
            upper_dirs.as_ref().map(|(f, w)| (f.as_path(), w.as_path())),
            target,
        )?;
        MountGuard::mount(self.mounter.clone(), &req)
    }

    /// Unpacks an uncompressed layer tar into a new snapshot on `parent`, then syncs it to disk.
    /// The reader is consumed to EOF, so a hashing wrapper around it yields the diff ID.
    /// On any error the new snapshot is removed again.
    pub fn unpack_layer(
        &self,
        parent: Option<SnapshotId>,
        tar: impl io::Read,
    ) -> Result<SnapshotId, CacheError> {
        self.unpack_layer_mutable(parent, tar)
            .map(MutableSnapshot::commit)
    }

    /// As [`Snapshots::unpack_layer`], left uncommitted: for a caller that has more to check
    /// (the blob's digest) before the snapshot may stay.
    pub fn unpack_layer_mutable(
        &self,
        parent: Option<SnapshotId>,
        tar: impl io::Read,
    ) -> Result<MutableSnapshot, CacheError> {
        let snap = self.create_mutable(parent)?;
        let fs_dir = snap.fs_dir();
        crate::unpack::unpack(&fs_dir, tar).and_then(|_| sync_fs(&fs_dir))?;
        Ok(snap)
    }

    /// Fills `id`, a snapshot made empty (a lazily imported layer), with an uncompressed layer
    /// tar. The files are unpacked beside its `fs` directory and synced, then renamed over the
    /// empty one: a reader sees the snapshot empty or whole, never half-written.
    pub fn fill(&self, id: SnapshotId, tar: impl io::Read) -> Result<(), CacheError> {
        let fs_dir = self.fs_dir(id);
        let staging = self.snapshot_dir(id).join("fs.filling");
        if staging.exists() {
            fs::remove_dir_all(&staging)
                .map_err(CacheError::io("remove a half-filled snapshot", &staging))?;
        }
        fs::create_dir(&staging).map_err(CacheError::io("create snapshot dir", &staging))?;
        let filled = crate::unpack::unpack(&staging, tar).and_then(|_| sync_fs(&staging));
        if let Err(e) = filled {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        // rename(2) replaces an empty directory; a filled one (a second filler won) is an error.
        fs::rename(&staging, &fs_dir).map_err(CacheError::io("fill snapshot", &fs_dir))
    }

    /// Flushes a snapshot's files to disk, so a result may be recorded for it. A small
    /// snapshot of regular files and directories only is synced one by one, with the
    /// directories above it; any other one with one `syncfs`, which also waits for every other
    /// writer's dirty data on the file system (a peer's writeback cost a small step tens of ms).
    pub fn sync(&self, id: SnapshotId) -> Result<(), CacheError> {
        self.sync_with_durable_links(id, &HashSet::new())
    }

    /// [`Snapshots::sync`] of a snapshot in which the files at the absolute paths `durable` are
    /// hard links to files of a snapshot already synced: their data and inodes are on disk, so
    /// only the directories naming them are synced, and they do not count towards the size
    /// that makes the sync one `syncfs`. (An `fsync` of each such link costs a disk cache flush
    /// each: 200 of them took 30-70 ms where the directories' took 1-2 ms.)
    pub fn sync_with_durable_links(
        &self,
        id: SnapshotId,
        durable: &HashSet<PathBuf>,
    ) -> Result<(), CacheError> {
        let fs_dir = self.fs_dir(id);
        let Some(entries) = small_plain_tree(&fs_dir, SYNC_ONE_BY_ONE, durable)? else {
            return sync_fs(&fs_dir);
        };
        let snapshot_dir = fs_dir.parent().map(Path::to_path_buf);
        let snapshots_dir = snapshot_dir
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        let all: Vec<&Path> = entries
            .iter()
            .map(PathBuf::as_path)
            .chain(std::iter::once(fs_dir.as_path()))
            .chain(snapshot_dir.as_deref())
            .chain(snapshots_dir.as_deref())
            .collect();
        sync_concurrently(&all)
    }

    /// Reads a regular file through a chain (top first) as overlayfs would show it, following
    /// symlinks inside the image. `Ok(None)` when absent.
    pub fn read_file(
        &self,
        chain: &[SnapshotId],
        path: &str,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        let dirs: Vec<PathBuf> = chain.iter().map(|id| self.fs_dir(*id)).collect();
        let Some(found) = resolve(&dirs, path)? else {
            return Ok(None);
        };
        let meta = fs::symlink_metadata(&found).map_err(CacheError::io("stat", &found))?;
        let ft = meta.file_type();
        if !ft.is_file() {
            let kind = if ft.is_dir() {
                "a directory"
            } else {
                "a special file"
            };
            return Err(CacheError::NotAFile {
                path: path.to_string(),
                kind,
            });
        }
        fs::read(&found)
            .map(Some)
            .map_err(CacheError::io("read", &found))
    }

    /// Records a layer blob for a snapshot, replacing the one of the same media type.
    pub fn set_layer(&self, id: SnapshotId, layer: LayerInfo) -> Result<(), CacheError> {
        validate_digest(&layer.diff_id)?;
        validate_digest(&layer.digest)?;
        let txn = self.db.begin_write()?;
        {
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
            let mut table = txn.open_table(LAYERS).map_err(self.db.err("open layers"))?;
            let mut list: Vec<LayerInfo> =
                match table.get(id.0).map_err(self.db.err("read layer info"))? {
                    Some(v) => decode_layers(&self.db, id, v.value())?,
                    None => Vec::new(),
                };
            list.retain(|l| l.media_type != layer.media_type);
            list.push(layer);
            list.sort_by(|a, b| a.media_type.cmp(&b.media_type));
            let bytes = serde_json::to_vec(&list).map_err(|e| CacheError::CorruptJson {
                what: "layer info",
                location: id.to_string(),
                cause: e,
            })?;
            table
                .insert(id.0, bytes.as_slice())
                .map_err(self.db.err("write layer info"))?;
        }
        self.db.commit_lazily(txn)
    }

    /// The layer blobs known for a snapshot (empty when none).
    pub fn layers(&self, id: SnapshotId) -> Result<Vec<LayerInfo>, CacheError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LAYERS).map_err(self.db.err("open layers"))?;
        match table.get(id.0).map_err(self.db.err("read layer info"))? {
            Some(v) => decode_layers(&self.db, id, v.value()),
            None => Ok(Vec::new()),
        }
    }
}

fn decode_layers(db: &Db, id: SnapshotId, bytes: &[u8]) -> Result<Vec<LayerInfo>, CacheError> {
    serde_json::from_slice(bytes).map_err(|e| CacheError::CorruptJson {
        what: "layer info",
        location: format!("{} (snapshot `{id}`)", db.path.display()),
        cause: e,
    })
}

/// Snapshots with at most this many entries are synced file by file (see [`Snapshots::sync`]).
const SYNC_ONE_BY_ONE: usize = 64;

/// The entries below `dir` to sync, in walk order (each directory before what it holds): all
/// but the regular files in `durable`, when there are at most `limit` of them and every entry
/// is a regular file or a directory; `None` otherwise (a symlink's or a device node's inode is
/// not written by syncing its directory).
fn small_plain_tree(
    dir: &Path,
    limit: usize,
    durable: &HashSet<PathBuf>,
) -> Result<Option<Vec<PathBuf>>, CacheError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(CacheError::io("list", &d))? {
            let entry = entry.map_err(CacheError::io("list", &d))?;
            let kind = entry
                .file_type()
                .map_err(CacheError::io("stat", &entry.path()))?;
            if !(kind.is_file() || kind.is_dir()) {
                return Ok(None);
            }
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path.clone());
            } else if durable.contains(&path) {
                continue;
            }
            if out.len() == limit {
                return Ok(None);
            }
            out.push(path);
        }
    }
    Ok(Some(out))
}

/// Threads [`sync_concurrently`] spreads its `fsync`s over.
const SYNC_THREADS: usize = 8;

/// `fsync`s every path, several at once: concurrent `fsync`s share the file system's journal
/// commits and the disk's cache flushes, where one after another each waits for its own (on
/// these ext4 VMs 11 of them one by one took about 2 ms each). Their order does not matter:
/// the snapshot is recorded only once all have returned, and a crash before that leaves a
/// snapshot no record names.
fn sync_concurrently(paths: &[&Path]) -> Result<(), CacheError> {
    let sync = |p: &Path| {
        fs::File::open(p)
            .and_then(|f| f.sync_all())
            .map_err(CacheError::io("sync", p))
    };
    if paths.len() <= 1 {
        return paths.iter().try_for_each(|p| sync(p));
    }
    let chunk = paths.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().try_for_each(|p| sync(p))))
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join().unwrap_or_else(|_| {
                Err(CacheError::io("sync", Path::new("snapshot"))(
                    io::Error::other("a sync thread panicked"),
                ))
            })
        })
    })
}

fn sync_fs(dir: &Path) -> Result<(), CacheError> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(dir).map_err(CacheError::io("open", dir))?;
    nix::unistd::syncfs(f.as_raw_fd())
        .map_err(|e| CacheError::io("sync file system of", dir)(io::Error::from(e)))
}

/// Whether a file in a snapshot's fs dir is an overlay whiteout (a 0/0 character device).
pub fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    [OPAQUE_XATTR, USER_OPAQUE_XATTR]
        .iter()
        .any(|x| matches!(xattr::get(path, x), Ok(Some(v)) if v == b"y"))
}

/// What the merged view holds at exactly `comps` (no symlink following): the real path in the
/// top-most layer that has it.
fn lookup(layers: &[PathBuf], comps: &[String]) -> Option<PathBuf> {
    if comps.is_empty() {
        return layers.first().cloned();
    }
    for layer in layers {
        let mut p = layer.clone();
        let mut hidden_below = false;
        for (i, c) in comps.iter().enumerate() {
            p.push(c);
            let Ok(meta) = fs::symlink_metadata(&p) else {
                break; // not in this layer: look lower, unless hidden
            };
            if is_whiteout(&meta) {
                return None;
            }
            if i + 1 == comps.len() {
                return Some(p);
            }
            if !meta.is_dir() {
                // A non-directory hides whatever lower layers have below this name.
                return None;
            }
            if is_opaque(&p) {
                hidden_below = true;
            }
        }
        if hidden_below {
            return None;
        }
    }
    None
}

/// Resolves `path` in the merged view, following symlinks (relative and absolute, confined to
/// the image root) in every component.
fn resolve(layers: &[PathBuf], path: &str) -> Result<Option<PathBuf>, CacheError> {
    let mut pending: Vec<String> = split(path).into_iter().rev().collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        resolved.push(c);
        let Some(real) = lookup(layers, &resolved) else {
            return Ok(None);
        };
        let meta = fs::symlink_metadata(&real).map_err(CacheError::io("stat", &real))?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return Err(CacheError::NotAFile {
                    path: path.to_string(),
                    kind: "a symlink loop",
                });
            }
            let target = fs::read_link(&real).map_err(CacheError::io("read link", &real))?;
            let target = target.to_string_lossy().into_owned();
            resolved.pop();
            if target.starts_with('/') {
                resolved.clear();
            }
            pending.extend(split(&target).into_iter().rev());
        }
    }
    Ok(lookup(layers, &resolved))
}

/// Splits a path into components, dropping empty ones and `.`; `..` is kept.
fn split(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::tests::FakeMounter;
    use crate::Store;
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};

    /// A store in `dir` whose mounts the returned fake records instead of making.
    fn fake_store(dir: &Path) -> (Store, Arc<FakeMounter>) {
        let fake = Arc::new(FakeMounter::default());
        let store = Store::open_with(
            dir,
            crate::LockWait::Never,
            "test",
            &mut |_| {},
            fake.clone(),
        )
        .unwrap();
        (store, fake)
    }

    #[test]
    fn a_chain_of_501_layers_is_refused_naming_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (store, fake) = fake_store(dir.path());
        let snaps = store.snapshots();
        let mut chain = vec![snaps.create(None).unwrap()];
        for _ in 0..MAX_LAYERS {
            let top = snaps.create(chain.last().copied()).unwrap();
            chain.push(top);
        }
        chain.reverse();
        let target = dir.path().join("mnt");
        fs::create_dir(&target).unwrap();
        let err = snaps.mount(&chain, None, &target).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the filesystem has 501 layers and overlayfs stacks at most 500: use fewer steps \
             (join `RUN` commands with `&&`, copy several files per `COPY`) or squash the base image"
        );
        assert!(fake.log.lock().unwrap().is_empty());
        drop(snaps.mount(&chain[1..], None, &target).unwrap());
    }

    #[test]
    fn removing_a_snapshot_removes_its_memos_its_results_and_their_aliases_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = fake_store(dir.path());
        let snaps = store.snapshots();
        let idx = store.index();
        let gone = snaps.create(None).unwrap();
        let kept = snaps.create(None).unwrap();
        for (id, key) in [(gone, "on-gone"), (kept, "on-kept")] {
            let r = crate::CachedResult {
                snapshot: Some(id),
                created_unix: 1,
            };
            idx.put_aliased(key, &r, Some(&format!("alias-{key}")))
                .unwrap();
            idx.snapshot_meta_put(id, "checksum", key).unwrap();
        }
        snaps.remove(gone).unwrap();
        assert_eq!(idx.get("on-gone").unwrap(), None);
        assert_eq!(idx.alias_get("alias-on-gone").unwrap(), None);
        assert_eq!(idx.snapshot_meta_get(gone, "checksum").unwrap(), None);
        assert_eq!(
            idx.alias_get("alias-on-kept").unwrap().as_deref(),
            Some("on-kept")
        );
        assert_eq!(
            idx.snapshot_meta_get(kept, "checksum").unwrap().as_deref(),
            Some("on-kept")
        );
    }

    #[test]
    fn a_small_plain_snapshot_is_synced_file_by_file_and_any_other_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = fake_store(dir.path());
        let snaps = store.snapshots();
        let small = snaps.create(None).unwrap();
        let fs_dir = snaps.fs_dir(small);
        fs::create_dir_all(fs_dir.join("app/sub")).unwrap();
        fs::write(fs_dir.join("app/sub/f"), "x").unwrap();
        let tree = small_plain_tree(&fs_dir, SYNC_ONE_BY_ONE, &HashSet::new())
            .unwrap()
            .unwrap();
        assert_eq!(tree.len(), 3, "{tree:?}");
        // Each directory comes before what it holds, so syncing in reverse goes bottom-up.
        assert!(
            tree[0].ends_with("app") && tree[2].ends_with("app/sub/f"),
            "{tree:?}"
        );
        snaps.sync(small).unwrap();
        // A symlink (or a whiteout device) needs its own inode written: the whole file system.
        std::os::unix::fs::symlink("f", fs_dir.join("app/link")).unwrap();
        assert!(small_plain_tree(&fs_dir, SYNC_ONE_BY_ONE, &HashSet::new())
            .unwrap()
            .is_none());
        snaps.sync(small).unwrap();
        // So does a large one.
        let large = snaps.create(None).unwrap();
        for i in 0..=SYNC_ONE_BY_ONE {
            fs::write(snaps.fs_dir(large).join(format!("f{i}")), "x").unwrap();
        }
        assert!(
            small_plain_tree(&snaps.fs_dir(large), SYNC_ONE_BY_ONE, &HashSet::new())
                .unwrap()
                .is_none()
        );
        snaps.sync(large).unwrap();
    }

    #[test]
    fn links_to_a_synced_snapshot_are_left_to_their_directories_and_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = fake_store(dir.path());
        let snaps = store.snapshots();
        let old = snaps.create(None).unwrap();
        let new = snaps.create(None).unwrap();
        let (old_dir, new_dir) = (snaps.fs_dir(old), snaps.fs_dir(new));
        fs::create_dir_all(new_dir.join("app")).unwrap();
        let mut durable = HashSet::new();
        for i in 0..2 * SYNC_ONE_BY_ONE {
            let f = format!("f{i}");
            fs::write(old_dir.join(&f), "x").unwrap();
            fs::hard_link(old_dir.join(&f), new_dir.join("app").join(&f)).unwrap();
            durable.insert(new_dir.join("app").join(&f));
        }
        fs::write(new_dir.join("app/changed"), "y").unwrap();
        let tree = small_plain_tree(&new_dir, SYNC_ONE_BY_ONE, &durable)
            .unwrap()
            .unwrap();
        assert_eq!(tree, [new_dir.join("app"), new_dir.join("app/changed")]);
        snaps.sync_with_durable_links(new, &durable).unwrap();
        // Without knowing they are links, the same tree is too large to sync one by one.
        assert!(small_plain_tree(&new_dir, SYNC_ONE_BY_ONE, &HashSet::new())
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_directory_whose_record_a_crash_lost_is_replaced_by_the_next_snapshot_of_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = fake_store(dir.path());
        let snaps = store.snapshots();
        let kept = snaps.create(None).unwrap();
        // What a crash after a lazy record commit leaves: the next number's directory, with
        // files, and no record (nor counter) naming it.
        let next = SnapshotId(kept.0 + 1);
        fs::create_dir_all(snaps.fs_dir(next).join("half")).unwrap();
        fs::write(snaps.fs_dir(next).join("half/written"), "x").unwrap();
        assert!(!snaps.exists(next).unwrap());
        let made = snaps.create(None).unwrap();
        assert_eq!(made, next);
        assert_eq!(fs::read_dir(snaps.fs_dir(made)).unwrap().count(), 0);
    }

    #[test]
    fn a_merged_layer_is_a_diff_against_its_own_chain_not_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = fake_store(dir.path());
        let snaps = store.snapshots();
        let a = snaps.create(None).unwrap();
        let b = snaps.create(Some(a)).unwrap();
        assert_eq!(snaps.diff_lowers(a).unwrap(), []);
        assert_eq!(snaps.diff_lowers(b).unwrap(), [a]);
        // Two layers re-applied on `b`: the first is a diff against nothing, the second against
        // the first only.
        let r1 = snaps.create_over(Some(b), Some(b)).unwrap();
        let r2 = snaps.create_over(Some(r1), Some(b)).unwrap();
        let top = snaps.create(Some(r2)).unwrap();
        assert_eq!(snaps.diff_lowers(r1).unwrap(), []);
        assert_eq!(snaps.diff_lowers(r2).unwrap(), [r1]);
        assert_eq!(snaps.diff_lowers(top).unwrap(), [r2, r1, b, a]);
        let none = snaps.create_over(Some(b), None).unwrap();
        assert_eq!(snaps.diff_lowers(none).unwrap(), []);
        assert_eq!(snaps.chain(r2).unwrap(), [r2, r1, b, a]);
    }

    #[test]
    fn mount_plans_with_snapshot_paths_without_root() {
        let dir = tempfile::tempdir().unwrap();
        let (store, fake) = fake_store(dir.path());
        let snaps = store.snapshots();
        let a = snaps.create(None).unwrap();
        let b = snaps.create(Some(a)).unwrap();
        let c = snaps.create(Some(b)).unwrap();
        let target = dir.path().join("mnt");
        fs::create_dir(&target).unwrap();
        let guard = snaps.mount(&[b, a], Some(c), &target).unwrap();
        let r = store.root().display().to_string();
        let expected = format!(
            "mount Overlay {{ target: {target:?}, options: \"lowerdir={r}/snapshots/2/fs:{r}/snapshots/1/fs,upperdir={r}/snapshots/3/fs,workdir={r}/snapshots/3/work,index=off\" }}"
        );
        assert_eq!(fake.log.lock().unwrap().as_slice(), [expected]);
        assert!(snaps.work_dir(c).is_dir(), "work dir is created beside fs/");
        drop(guard);
        assert_eq!(
            fake.log.lock().unwrap().last().map(String::as_str),
            Some(format!("unmount {}", target.display()).as_str())
        );

        // The upper may not also be a lower, and the target must exist.
        assert!(matches!(
            snaps.mount(&[b, a], Some(b), &target),
            Err(CacheError::MountRequest { .. })
        ));
        assert!(matches!(
            snaps.mount(&[b, a], None, &dir.path().join("missing")),
            Err(CacheError::MountRequest { .. })
        ));
        assert_eq!(fake.log.lock().unwrap().len(), 2);
    }

    #[test]
    fn create_replaces_a_directory_left_by_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // As if a crash hit between mkdir and commit: the dir exists, the record does not.
        fs::create_dir_all(store.root().join("snapshots/1/fs/junk")).unwrap();
        let id = store.snapshots().create(None).unwrap();
        assert_eq!(id, SnapshotId(1));
        assert_eq!(
            fs::read_dir(store.snapshots().fs_dir(id)).unwrap().count(),
            0
        );
    }

    #[test]
    fn concurrent_creates_get_distinct_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|_| store.snapshots().create(None).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ids: Vec<SnapshotId> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 100);
        assert_eq!(store.snapshots().list().unwrap().len(), 100);
    }

    #[test]
    fn a_device_node_in_a_snapshot_opened_through_a_mount() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let snaps = store.snapshots();
        let a = snaps.create(None).unwrap();
        let b = snaps.create(Some(a)).unwrap();
        let c = snaps.create(Some(b)).unwrap();
        // /dev/null's numbers: harmless if the test fails.
        let node = snaps.fs_dir(a).join("null");
        mknod(
            &node,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        )
        .unwrap();
        let target = dir.path().join("mnt");
        fs::create_dir(&target).unwrap();
        // A read-only bind, an overlay of lowers, and an overlay with an upper.
        for (lower, upper) in [(vec![a], None), (vec![b, a], None), (vec![b, a], Some(c))] {
            let _guard = snaps.mount(&lower, upper, &target).unwrap();
            let opened = fs::OpenOptions::new().write(true).open(target.join("null"));
            assert!(
                opened.is_err(),
                "opened a device through {lower:?} {upper:?}"
            );
        }
    }

    #[test]
    fn lookup_rules() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        let low = dir.path().join("low");
        fs::create_dir_all(top.join("d")).unwrap();
        fs::create_dir_all(low.join("d/e")).unwrap();
        fs::write(low.join("d/e/f"), b"x").unwrap();
        let layers = [top.clone(), low.clone()];
        let comps = |s: &str| split(s);
        assert_eq!(lookup(&layers, &comps("d/e/f")), Some(low.join("d/e/f")));
        xattr::set(top.join("d"), OPAQUE_XATTR, b"y").unwrap();
        assert_eq!(lookup(&layers, &comps("d/e/f")), None);
        assert_eq!(lookup(&layers, &comps("d")), Some(top.join("d")));
    }
}

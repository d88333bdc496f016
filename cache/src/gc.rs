//! Garbage collection: drops cache results (too old, least recently used past a size, or all)
//! and cache mounts, then every snapshot and blob that no result, image or caller-named root
//! still reaches. Removal is ordered so that a collection killed at any point leaves a store
//! whose every record names content that is there.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::digest::{validate_digest, Digest};
use crate::du::{disk_usage, Seen};
use crate::index::SnapshotId;
use crate::{CacheError, Store};

/// Where `RUN --mount=type=cache` directories live (made by the solver, one per mount id);
/// each is collected as a whole, like a result. Its `id` file is written on every use.
pub const CACHE_MOUNTS_DIR: &str = "cache-mounts";

/// What to collect. The default keeps every result and cache mount and collects only what
/// nothing reaches.
#[derive(Clone, Debug, Default)]
pub struct GcOptions {
    /// Results and cache mounts last used before this time (unix seconds) are dropped.
    pub drop_unused_before: Option<u64>,
    /// Every result and cache mount is dropped (`kiln prune --all`); tagged images stay whole.
    pub all: bool,
    /// Every cache mount is dropped (results are kept unless another option drops them).
    pub drop_cache_mounts: bool,
    /// Then results and cache mounts are dropped least recently used first until the build
    /// cache (snapshots, blobs no image needs, cache mounts) takes at most this many bytes.
    pub keep_storage: Option<u64>,
    /// Snapshots kept in any case, with their chains (e.g. those of builds in flight).
    pub keep_snapshots: Vec<SnapshotId>,
    /// Blobs kept in any case, with what they reference.
    pub keep_blobs: Vec<Digest>,
    /// Only report what would be removed.
    pub dry_run: bool,
}

/// What a collection removed (or, in a dry run, would remove).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub results_removed: Vec<String>,
    pub snapshots_removed: Vec<SnapshotId>,
    pub blobs_removed: Vec<Digest>,
    /// Bytes of removed blobs.
    pub blob_bytes_freed: u64,
    /// Cache mount directories removed (their names under `cache-mounts/`).
    pub cache_mounts_removed: Vec<String>,
    /// Disk space freed in all (blobs, snapshot directories, cache mounts), as `du` counts it.
    pub bytes_freed: u64,
}

/// Descriptors' digests named by an OCI manifest or index (config, layers, manifests, subject).
fn referenced(bytes: &[u8]) -> Vec<Digest> {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut push = |d: &Value| {
        if let Some(s) = d.get("digest").and_then(Value::as_str) {
            if validate_digest(s).is_ok() {
                out.push(s.to_string());
            }
        }
    };
    for key in ["config", "subject"] {
        if let Some(d) = v.get(key) {
            push(d);
        }
    }
    for key in ["layers", "manifests", "blobs"] {
        if let Some(list) = v.get(key).and_then(Value::as_array) {
            list.iter().for_each(&mut push);
        }
    }
    out
}

/// One cache mount directory and when a build last used it.
struct CacheMount {
    name: String,
    path: PathBuf,
    last_used: u64,
    bytes: u64,
}

/// Something the size-keeping pass may drop, oldest use first.
enum Candidate {
    Result(String),
    Mount(usize),
}

/// Bytes in use on the file system holding `path` (`statvfs`), if it can be asked.
fn file_system_used(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let blocks = st.blocks().saturating_sub(st.blocks_free());
    Some(blocks.saturating_mul(st.fragment_size()))
}

fn mtime_unix(p: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(p)
        .ok()
        .map(|m| u64::try_from(m.mtime()).unwrap_or(0))
}

impl Store {
    /// Blobs reachable from images, named or dangling (and the caller's kept blobs), with what they name.
    pub(crate) fn image_blobs(&self, extra: &[Digest]) -> Result<HashSet<Digest>, CacheError> {
        let mut pending: Vec<Digest> = self
            .images()
            .list_all()?
            .into_iter()
            .map(|r| r.digest)
            .chain(extra.iter().cloned())
            .collect();
        let mut keep: HashSet<Digest> = HashSet::new();
        while let Some(d) = pending.pop() {
            if validate_digest(&d).is_err() || !keep.insert(d.clone()) {
                continue;
            }
            // Only small blobs can be manifests or indexes; never read a layer whole.
            let path = self.content().path(&d)?;
            let small = fs::metadata(&path)
                .map(|m| m.len() <= 4 << 20)
                .unwrap_or(false);
            if small {
                if let Ok(bytes) = self.content().read(&d) {
                    pending.extend(referenced(&bytes));
                }
            }
        }
        Ok(keep)
    }

    fn cache_mounts(&self, seen: &mut Seen) -> Result<Vec<CacheMount>, CacheError> {
        let dir = self.root().join(CACHE_MOUNTS_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CacheError::io("list", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(CacheError::io("list", &dir))?;
            let path = entry.path();
            let last_used = [path.clone(), path.join("id")]
                .iter()
                .filter_map(|p| mtime_unix(p))
                .max()
                .unwrap_or(0);
            let bytes = disk_usage(&path, seen).map_err(CacheError::io("measure", &path))?;
            out.push(CacheMount {
                name: entry.file_name().to_string_lossy().into_owned(),
                path,
                last_used,
                bytes,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Collects garbage. Run it when no build is in flight, or name the in-flight snapshots and
    /// blobs in `opts`: anything unreachable from results, images and those roots is removed.
    /// `meta` values that are digests keep their blobs; `meta` never keeps snapshots, so a
    /// caller mapping names to snapshots there must check [`crate::Snapshots::exists`].
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport, CacheError> {
        let mut report = GcReport::default();
        let snaps = self.snapshots();
        let all: Vec<(SnapshotId, Option<SnapshotId>)> = snaps.list()?;
        let known: HashSet<SnapshotId> = all.iter().map(|(id, _)| *id).collect();
        let parent_of: HashMap<SnapshotId, Option<SnapshotId>> = all.iter().copied().collect();
        let last_used = self.index().last_used()?;
        let mut seen = Seen::new();
        let mounts = self.cache_mounts(&mut seen)?;
        let mut drop_mounts: Vec<bool> = mounts
            .iter()
            .map(|m| {
                opts.all
                    || opts.drop_cache_mounts
                    || opts.drop_unused_before.is_some_and(|t| m.last_used < t)
            })
            .collect();

        // 1. Results: all of them, unused too long, or pointing at a snapshot that is gone.
        let mut live_results = Vec::new();
        for (key, result) in self.index().list()? {
            let used = last_used.get(&key).copied().unwrap_or(result.created_unix);
            let old = opts.drop_unused_before.is_some_and(|t| used < t);
            let dangling = result.snapshot.is_some_and(|s| !known.contains(&s));
            if opts.all || old || dangling {
                report.results_removed.push(key);
            } else {
                live_results.push((key, result, used));
            }
        }

        // 2. Blobs tagged images need: never collected, never counted as build cache.
        let image_blobs = self.image_blobs(&opts.keep_blobs)?;

        // 3. Past `keep_storage`, drop results and mounts least recently used first. Each
        //    snapshot and layer blob counts how many live results reach it; what drops to zero
        //    is freed.
        // The store cannot take more than its file system uses: under the limit, no walk.
        let keep_storage = opts
            .keep_storage
            .filter(|limit| file_system_used(self.root()).is_none_or(|used| used > *limit));
        if let Some(limit) = keep_storage {
            let chain_of = |top: SnapshotId| -> Vec<SnapshotId> {
                let mut out = Vec::new();
                let mut cur = Some(top);
                while let Some(id) = cur {
                    if out.len() > known.len() {
                        break; // a cycle in hostile records; never loop forever
                    }
                    out.push(id);
                    cur = parent_of.get(&id).copied().flatten();
                }
                out
            };
            let mut snap_refs: HashMap<SnapshotId, usize> = HashMap::new();
            for (_, r, _) in &live_results {
                if let Some(top) = r.snapshot {
                    for id in chain_of(top) {
                        *snap_refs.entry(id).or_default() += 1;
                    }
                }
            }
            // Sizes of what is reached, in id order so that a hard link counts with the
            // snapshot that made the file.
            let mut reached: Vec<SnapshotId> = snap_refs.keys().copied().collect();
            reached.sort();
            let mut snap_bytes: HashMap<SnapshotId, u64> = HashMap::new();
            let mut blob_refs: HashMap<Digest, usize> = HashMap::new();
            let mut blob_bytes: HashMap<Digest, u64> = HashMap::new();
            let mut snap_blobs: HashMap<SnapshotId, Vec<Digest>> = HashMap::new();
            let mut total: u64 = mounts
                .iter()
                .zip(&drop_mounts)
                .filter(|(_, d)| !**d)
                .map(|(m, _)| m.bytes)
                .sum();
            for id in &reached {
                let dir = snaps.fs_dir(*id).parent().map(Path::to_path_buf);
                let bytes = match dir {
                    Some(d) => disk_usage(&d, &mut seen).map_err(CacheError::io("measure", &d))?,
                    None => 0,
                };
                snap_bytes.insert(*id, bytes);
                total += bytes;
                let blobs: Vec<Digest> = snaps
                    .layers(*id)?
                    .into_iter()
                    .map(|l| l.digest)
                    .filter(|d| !image_blobs.contains(d) && self.content().has(d))
                    .collect();
                for d in &blobs {
                    let n = blob_refs.entry(d.clone()).or_default();
                    if *n == 0 {
                        let p = self.content().path(d)?;
                        let b = disk_usage(&p, &mut seen).map_err(CacheError::io("measure", &p))?;
                        blob_bytes.insert(d.clone(), b);
                        total += b;
                    }
                    *n += 1;
                }
                snap_blobs.insert(*id, blobs);
            }
            let mut candidates: Vec<(u64, Candidate)> = live_results
                .iter()
                .map(|(k, _, used)| (*used, Candidate::Result(k.clone())))
                .chain(
                    mounts
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !drop_mounts[*i])
                        .map(|(i, m)| (m.last_used, Candidate::Mount(i))),
                )
                .collect();
            candidates.sort_by_key(|(used, _)| *used);
            let snapshot_of: HashMap<String, Option<SnapshotId>> = live_results
                .iter()
                .map(|(k, r, _)| (k.clone(), r.snapshot))
                .collect();
            let mut dropped_keys: HashSet<String> = HashSet::new();
            for (_, candidate) in candidates {
                if total <= limit {
                    break;
                }
                match candidate {
                    Candidate::Mount(i) => {
                        drop_mounts[i] = true;
                        total = total.saturating_sub(mounts[i].bytes);
                    }
                    Candidate::Result(key) => {
                        if let Some(Some(top)) = snapshot_of.get(&key) {
                            for id in chain_of(*top) {
                                let Some(n) = snap_refs.get_mut(&id) else {
                                    continue;
                                };
                                *n -= 1;
                                if *n > 0 {
                                    continue;
                                }
                                total = total.saturating_sub(snap_bytes[&id]);
                                for d in snap_blobs.get(&id).into_iter().flatten() {
                                    if let Some(m) = blob_refs.get_mut(d) {
                                        *m -= 1;
                                        if *m == 0 {
                                            total = total.saturating_sub(blob_bytes[d]);
                                        }
                                    }
                                }
                            }
                        }
                        dropped_keys.insert(key);
                    }
                }
            }
            live_results.retain(|(k, _, _)| {
                if dropped_keys.contains(k) {
                    report.results_removed.push(k.clone());
                    false
                } else {
                    true
                }
            });
        }

        // 4. Snapshots reached by live results and kept roots, whole chains.
        let mut keep_snaps: HashSet<SnapshotId> = HashSet::new();
        let roots = live_results
            .iter()
            .filter_map(|(_, r, _)| r.snapshot)
            .chain(opts.keep_snapshots.iter().copied())
            .filter(|s| known.contains(s));
        for root in roots {
            if keep_snaps.contains(&root) {
                continue;
            }
            keep_snaps.extend(snaps.chain(root)?);
        }
        let mut drop_snaps: Vec<SnapshotId> = all
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !keep_snaps.contains(id))
            .collect();
        // Reported top down: a child always has a larger id than its parent.
        drop_snaps.sort_by(|a, b| b.cmp(a));

        // 5. Blobs reached from images, kept snapshots' layers and meta digests.
        let mut keep_blobs = image_blobs;
        for id in &keep_snaps {
            keep_blobs.extend(snaps.layers(*id)?.into_iter().map(|l| l.digest));
        }
        keep_blobs.extend(
            self.index()
                .meta_list()?
                .into_iter()
                .map(|(_, v)| v)
                .filter(|v| validate_digest(v).is_ok()),
        );
        let drop_blobs: BTreeSet<Digest> = self
            .content()
            .list()?
            .into_iter()
            .filter(|d| !keep_blobs.contains(d))
            .collect();
        // Blobs a doomed snapshot's layer record names go after that record: never before it.
        let mut named_by_records: HashSet<Digest> = HashSet::new();
        for id in &drop_snaps {
            named_by_records.extend(snaps.layers(*id)?.into_iter().map(|l| l.digest));
        }

        report.snapshots_removed = drop_snaps.clone();
        for d in &drop_blobs {
            if let Ok(m) = fs::metadata(self.content().path(d)?) {
                report.blob_bytes_freed += m.len();
            }
        }
        report.blobs_removed = drop_blobs.iter().cloned().collect();
        let doomed_mounts: Vec<&CacheMount> = mounts
            .iter()
            .zip(&drop_mounts)
            .filter(|(_, d)| **d)
            .map(|(m, _)| m)
            .collect();
        report.cache_mounts_removed = doomed_mounts.iter().map(|m| m.name.clone()).collect();
        // What is freed, measured as `du` would after the removal: inodes still reached from
        // what stays (hard links into kept snapshots) are not freed.
        let mut freed_seen = Seen::new();
        let nothing_to_free =
            drop_snaps.is_empty() && drop_blobs.is_empty() && doomed_mounts.is_empty();
        // Walking what stays costs a `du` of the store: only when something goes.
        for id in keep_snaps.iter().filter(|_| !nothing_to_free) {
            if let Some(d) = snaps.fs_dir(*id).parent() {
                disk_usage(d, &mut freed_seen).map_err(CacheError::io("measure", d))?;
            }
        }
        let mut freed = 0;
        for m in &doomed_mounts {
            freed +=
                disk_usage(&m.path, &mut freed_seen).map_err(CacheError::io("measure", &m.path))?;
        }
        for id in &drop_snaps {
            if let Some(d) = snaps.fs_dir(*id).parent() {
                freed += disk_usage(d, &mut freed_seen).map_err(CacheError::io("measure", d))?;
            }
        }
        for d in &drop_blobs {
            let p = self.content().path(d)?;
            freed += disk_usage(&p, &mut freed_seen).map_err(CacheError::io("measure", &p))?;
        }
        report.bytes_freed = freed;
        if opts.dry_run {
            return Ok(report);
        }

        // Removal, in an order a `kill -9` may stop anywhere:
        // a. blobs no record names (orphans, layer variants): on a full disk they make the room
        //    the index's own commits need;
        for d in drop_blobs.iter().filter(|d| !named_by_records.contains(*d)) {
            self.content().remove(d)?;
        }
        // b. results with their aliases, then snapshot records with their layer records and
        //    memos (each one transaction), then their directories: a record never outlives what
        //    it names;
        self.index().remove_many(&report.results_removed)?;
        snaps.remove_many(&drop_snaps)?;
        self.index().forget_unused_records()?;
        // c. the blobs only those records named;
        for d in drop_blobs.iter().filter(|d| named_by_records.contains(*d)) {
            self.content().remove(d)?;
        }
        // d. cache mounts: renamed away first, so a half-removed one is never used again.
        for m in &doomed_mounts {
            let doomed = self.tmp_dir().join(format!("gc-cache-mount-{}", m.name));
            match fs::rename(&m.path, &doomed) {
                Ok(()) => fs::remove_dir_all(&doomed)
                    .map_err(CacheError::io("remove cache mount", &doomed))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CacheError::io("remove cache mount", &m.path)(e)),
            }
        }
        // e. directories no record names, left from a crash between mkdir and commit (or from
        //    an earlier collection that was stopped).
        let dir = self.root().join("snapshots");
        let recorded: HashSet<String> =
            snaps.list()?.iter().map(|(id, _)| id.to_string()).collect();
        for entry in fs::read_dir(&dir).map_err(CacheError::io("list", &dir))? {
            let entry = entry.map_err(CacheError::io("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !recorded.contains(&name) {
                let p = entry.path();
                fs::remove_dir_all(&p).map_err(CacheError::io("remove stale snapshot", &p))?;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CachedResult, ImageRecord, LayerInfo};

    #[test]
    fn finds_references_in_manifests_and_indexes() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let m = serde_json::json!({
            "config": {"digest": d('a')},
            "layers": [{"digest": d('b')}, {"digest": "bogus"}],
            "manifests": [{"digest": d('c')}],
        });
        assert_eq!(
            referenced(m.to_string().as_bytes()),
            vec![d('a'), d('b'), d('c')]
        );
        assert!(referenced(b"\x1f\x8b not json").is_empty());
    }

    #[test]
    fn collects_only_what_nothing_reaches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cs = store.content();
        let snaps = store.snapshots();

        // An image: manifest -> config + layer.
        let (layer, _) = cs.put_bytes(b"layer").unwrap();
        let (config, _) = cs.put_bytes(b"{\"config\":{}}").unwrap();
        let manifest =
            serde_json::json!({"config": {"digest": config}, "layers": [{"digest": layer}]});
        let (mdigest, msize) = cs.put_bytes(manifest.to_string().as_bytes()).unwrap();
        store
            .images()
            .put(&ImageRecord {
                name: "docker.io/library/a:1".into(),
                digest: mdigest.clone(),
                size: msize,
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                created: None,
            })
            .unwrap();
        // A result chain with a layer blob; an old result; an orphan snapshot; an orphan blob.
        let base = snaps.create(None).unwrap();
        let top = snaps.create(Some(base)).unwrap();
        let (base_blob, _) = cs.put_bytes(b"base layer gz").unwrap();
        snaps
            .set_layer(
                base,
                LayerInfo {
                    diff_id: base_blob.clone(),
                    digest: base_blob.clone(),
                    size: 13,
                    media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                },
            )
            .unwrap();
        store
            .index()
            .put(
                "new",
                &CachedResult {
                    snapshot: Some(top),
                    created_unix: 2_000,
                },
            )
            .unwrap();
        let old = snaps.create(None).unwrap();
        store
            .index()
            .put(
                "old",
                &CachedResult {
                    snapshot: Some(old),
                    created_unix: 1_000,
                },
            )
            .unwrap();
        let orphan = snaps.create(None).unwrap();
        let in_flight = snaps.create(Some(orphan)).unwrap();
        let (junk, _) = cs.put_bytes(b"junk").unwrap();
        let (pinned, _) = cs.put_bytes(b"pinned by meta").unwrap();
        store.index().meta_put("image:x", &pinned).unwrap();
        std::fs::create_dir_all(dir.path().join("snapshots/999/fs")).unwrap();
        // Rows memoised for snapshots and aliases of results.
        let idx = store.index();
        idx.snapshot_meta_put(old, "sum", "of old").unwrap();
        idx.snapshot_meta_put(top, "sum", "of top").unwrap();
        idx.alias_put("by-content-of-old", "old").unwrap();
        idx.alias_put("by-content-of-new", "new").unwrap();

        let opts = GcOptions {
            drop_unused_before: Some(1_500),
            keep_snapshots: vec![in_flight],
            dry_run: true,
            ..GcOptions::default()
        };
        let dry = store.gc(&opts).unwrap();
        assert_eq!(dry.results_removed, vec!["old".to_string()]);
        assert_eq!(dry.snapshots_removed, vec![old]);
        assert_eq!(dry.blobs_removed, vec![junk.clone()]);
        assert_eq!(dry.blob_bytes_freed, 4);
        assert!(cs.has(&junk) && snaps.exists(old).unwrap());

        let done = store
            .gc(&GcOptions {
                dry_run: false,
                ..opts
            })
            .unwrap();
        assert_eq!(done, dry);
        assert!(!cs.has(&junk));
        assert!(!snaps.exists(old).unwrap());
        assert!(!dir.path().join("snapshots/999").exists());
        assert_eq!(idx.snapshot_meta_get(old, "sum").unwrap(), None);
        assert_eq!(idx.alias_get("by-content-of-old").unwrap(), None);
        assert_eq!(
            idx.snapshot_meta_get(top, "sum").unwrap().as_deref(),
            Some("of top")
        );
        assert_eq!(
            idx.alias_get("by-content-of-new").unwrap().as_deref(),
            Some("new")
        );
        for d in [&layer, &config, &mdigest, &base_blob, &pinned] {
            assert!(cs.has(d), "{d} was collected");
        }
        for s in [base, top, orphan, in_flight] {
            assert!(snaps.exists(s).unwrap() && snaps.fs_dir(s).is_dir());
        }

        // Without the in-flight root the orphan chain goes, children first.
        let r = store.gc(&GcOptions::default()).unwrap();
        assert_eq!(r.snapshots_removed, vec![in_flight, orphan]);
        assert!(store.index().get("new").unwrap().is_some());
    }
    #[test]
    fn keep_storage_drops_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let snaps = store.snapshots();
        let mut ids = Vec::new();
        for (n, key) in ["oldest", "middle", "newest"].iter().enumerate() {
            let s = snaps.create(None).unwrap();
            std::fs::write(snaps.fs_dir(s).join("f"), vec![n as u8 + 1; 256 << 10]).unwrap();
            store
                .index()
                .put(
                    key,
                    &CachedResult {
                        snapshot: Some(s),
                        created_unix: 1_000 + n as u64,
                    },
                )
                .unwrap();
            ids.push(s);
        }
        assert!(file_system_used(dir.path()).is_some_and(|u| u > 0));
        // A hit makes the oldest the most recently used.
        assert!(store.index().get("oldest").unwrap().is_some());
        let mount = dir.path().join(CACHE_MOUNTS_DIR).join("m1");
        std::fs::create_dir_all(mount.join("data")).unwrap();
        std::fs::write(mount.join("data/x"), vec![9u8; 64 << 10]).unwrap();

        let r = store
            .gc(&GcOptions {
                keep_storage: Some(600 << 10),
                ..GcOptions::default()
            })
            .unwrap();
        // The mount (mtime now) is newer than "middle" (1001) but older than the hit.
        assert_eq!(r.results_removed, vec!["middle".to_string()]);
        assert_eq!(r.snapshots_removed, vec![ids[1]]);
        assert!(r.cache_mounts_removed.is_empty());
        assert!(r.bytes_freed >= 256 << 10, "{}", r.bytes_freed);
        assert!(store.index().get("oldest").unwrap().is_some());

        let r = store
            .gc(&GcOptions {
                keep_storage: Some(0),
                ..GcOptions::default()
            })
            .unwrap();
        assert_eq!(r.results_removed.len(), 2);
        assert_eq!(r.cache_mounts_removed, vec!["m1".to_string()]);
        assert!(!mount.exists());
        assert!(store.index().list().unwrap().is_empty());
        assert_eq!(store.check().unwrap(), crate::CheckReport::default());
    }

    #[test]
    fn all_keeps_what_tagged_images_need() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cs = store.content();
        let (layer, _) = cs.put_bytes(b"layer").unwrap();
        let (config, _) = cs.put_bytes(b"{}").unwrap();
        let manifest =
            serde_json::json!({"config": {"digest": config}, "layers": [{"digest": layer}]});
        let (m, size) = cs.put_bytes(manifest.to_string().as_bytes()).unwrap();
        store
            .images()
            .put(&ImageRecord {
                name: "a".into(),
                digest: m.clone(),
                size,
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                created: None,
            })
            .unwrap();
        let s = store.snapshots().create(None).unwrap();
        store
            .index()
            .put(
                "k",
                &CachedResult {
                    snapshot: Some(s),
                    created_unix: crate::snapshots::now_unix(),
                },
            )
            .unwrap();
        let usage = store.usage().unwrap();
        assert_eq!(usage.images.count, 1);
        assert_eq!(usage.build_cache.count, 1);
        assert!(usage.build_cache.reclaimable > 0);
        let r = store
            .gc(&GcOptions {
                all: true,
                ..GcOptions::default()
            })
            .unwrap();
        assert_eq!(r.results_removed, vec!["k".to_string()]);
        assert_eq!(r.snapshots_removed, vec![s]);
        for d in [&layer, &config, &m] {
            assert!(cs.has(d));
        }
        assert_eq!(store.usage().unwrap().build_cache.reclaimable, 0);
    }
    #[test]
    fn a_removal_killed_before_its_directories_went_is_finished_at_open() {
        use crate::index::{REMOVING, SNAPSHOTS};
        use redb::ReadableTableMetadata;
        let dir = tempfile::tempdir().unwrap();
        let doomed = {
            let store = Store::open(dir.path()).unwrap();
            let s = store.snapshots().create(None).unwrap();
            std::fs::write(store.snapshots().fs_dir(s).join("f"), b"x").unwrap();
            // What `kill -9` after `remove_many`'s commit leaves: no record, the directory,
            // and the journal naming it.
            let db = &store.snapshots().db;
            let txn = db.begin_write().unwrap();
            {
                txn.open_table(SNAPSHOTS).unwrap().remove(s.0).unwrap();
                txn.open_table(REMOVING).unwrap().insert(s.0, 0).unwrap();
            }
            db.commit(txn).unwrap();
            s
        };
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.snapshots().fs_dir(doomed).exists());
        let db = &store.snapshots().db;
        let txn = db.begin_read().unwrap();
        assert!(txn.open_table(REMOVING).unwrap().is_empty().unwrap());
    }
}

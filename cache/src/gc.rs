//! Garbage collection: drops old cache results, then every snapshot and blob that no result,
//! image or caller-named root still reaches.

use std::collections::{BTreeSet, HashSet};
use std::fs;

use serde_json::Value;

use crate::digest::{validate_digest, Digest};
use crate::index::SnapshotId;
use crate::{CacheError, Store};

/// What to collect. The default keeps every result and collects only what nothing reaches.
#[derive(Clone, Debug, Default)]
pub struct GcOptions {
    /// Cache results created before this time (unix seconds) are dropped first.
    pub drop_results_before: Option<u64>,
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
    /// Bytes of removed blobs (snapshot directories are not measured).
    pub blob_bytes_freed: u64,
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

impl Store {
    /// Collects garbage. Run it when no build is in flight, or name the in-flight snapshots and
    /// blobs in `opts`: anything unreachable from results, images and those roots is removed.
    /// `meta` values that are digests keep their blobs; `meta` never keeps snapshots, so a
    /// caller mapping names to snapshots there must check [`crate::Snapshots::exists`].
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport, CacheError> {
        let mut report = GcReport::default();
        let snaps = self.snapshots();
        let all: Vec<(SnapshotId, Option<SnapshotId>)> = snaps.list()?;
        let known: HashSet<SnapshotId> = all.iter().map(|(id, _)| *id).collect();

        // 1. Results: too old, or pointing at a snapshot that is gone.
        let mut live_results = Vec::new();
        for (key, result) in self.index().list()? {
            let old = opts
                .drop_results_before
                .is_some_and(|t| result.created_unix < t);
            let dangling = result.snapshot.is_some_and(|s| !known.contains(&s));
            if old || dangling {
                report.results_removed.push(key);
            } else {
                live_results.push(result);
            }
        }

        // 2. Snapshots reached by live results and kept roots, whole chains.
        let mut keep_snaps: HashSet<SnapshotId> = HashSet::new();
        let roots = live_results
            .iter()
            .filter_map(|r| r.snapshot)
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

        // 3. Blobs reached from images, kept snapshots' layers, meta digests and kept roots.
        let mut pending: Vec<Digest> = self
            .images()
            .list()?
            .into_iter()
            .map(|r| r.digest)
            .chain(opts.keep_blobs.iter().cloned())
            .collect();
        for id in &keep_snaps {
            pending.extend(snaps.layers(*id)?.into_iter().map(|l| l.digest));
        }
        pending.extend(
            self.index()
                .meta_list()?
                .into_iter()
                .map(|(_, v)| v)
                .filter(|v| validate_digest(v).is_ok()),
        );
        let mut keep_blobs: HashSet<Digest> = HashSet::new();
        while let Some(d) = pending.pop() {
            if validate_digest(&d).is_err() || !keep_blobs.insert(d.clone()) {
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
        let drop_blobs: BTreeSet<Digest> = self
            .content()
            .list()?
            .into_iter()
            .filter(|d| !keep_blobs.contains(d))
            .collect();

        report.snapshots_removed = drop_snaps.clone();
        for d in &drop_blobs {
            if let Ok(m) = fs::metadata(self.content().path(d)?) {
                report.blob_bytes_freed += m.len();
            }
        }
        report.blobs_removed = drop_blobs.iter().cloned().collect();
        if opts.dry_run {
            return Ok(report);
        }

        // Blobs first: removing them needs no index write, so on a full disk they make the room
        // the index's own commits need. Nothing kept names them (layer records of doomed
        // snapshots may, and a missing layer blob is made again from its snapshot).
        for d in &drop_blobs {
            self.content().remove(d)?;
        }
        for key in &report.results_removed {
            self.index().remove(key)?;
        }
        // What was memoised for the snapshots and the aliases of the results goes with them.
        let owned = self.index().meta_owned_by(
            &drop_snaps.iter().copied().collect(),
            &report.results_removed.iter().map(String::as_str).collect(),
        )?;
        self.index().meta_remove_many(&owned)?;
        snaps.remove_many(&drop_snaps)?;
        // Directories no record names are left from a crash between mkdir and commit.
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
            drop_results_before: Some(1_500),
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
}

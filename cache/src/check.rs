//! `kiln check`: verifies the whole store and drops what is bad, so nothing left names content
//! that is not there: blobs that no longer hash to their name, the images and records that need
//! them, snapshot records whose directory is gone, and the memo and alias rows of snapshots and
//! results no longer recorded.

use std::collections::{HashMap, HashSet};

use redb::ReadableTable;
use serde_json::Value;

use crate::digest::{validate_digest, Digest};
use crate::index::SnapshotId;
use crate::index::LAYERS;
use crate::snapshots::LayerInfo;
use crate::{CacheError, Store};

/// What [`Store::check`] found and dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Blobs hashed.
    pub blobs_checked: usize,
    /// Corrupt blobs removed: `(name, what the content hashed to)`.
    pub corrupt_blobs: Vec<(Digest, Digest)>,
    /// Images removed because a blob they name is corrupt or missing: `(name, that blob)`.
    pub images_removed: Vec<(String, Digest)>,
    /// Records of layer blobs (per snapshot) that named a blob no longer stored.
    pub layer_records_removed: usize,
    /// Snapshot records removed because their directory is gone (with what builds on them).
    pub snapshots_removed: Vec<SnapshotId>,
    /// `meta` rows removed because the snapshot they memoise (a selection checksum) or the
    /// result they alias (a selection key) is no longer recorded.
    pub meta_rows_removed: usize,
}

/// Manifests and indexes are small; never parse a layer as JSON.
const MAX_MANIFEST: u64 = 4 << 20;

impl Store {
    /// Hashes every blob, removes the corrupt ones, then every image, layer record and `meta`
    /// entry that needs a blob no longer stored, and every snapshot record whose directory is
    /// missing. Run it when no build is in flight.
    pub fn check(&self) -> Result<CheckReport, CacheError> {
        let mut report = CheckReport::default();
        let blobs = self.content().list()?;
        report.blobs_checked = blobs.len();
        for d in &blobs {
            if let Some(actual) = self.content().verify(d)? {
                self.content().remove(d)?;
                report.corrupt_blobs.push((d.clone(), actual));
            }
        }

        let corrupt: HashSet<Digest> = report
            .corrupt_blobs
            .iter()
            .map(|(d, _)| d.clone())
            .collect();
        for image in self.images().list_all()? {
            if let Some(missing) = self.first_missing(&image.digest, &corrupt)? {
                if image.name.is_empty() {
                    // A dangling image is reported by its manifest digest.
                    self.images().remove_dangling(&image.digest)?;
                    report.images_removed.push((image.digest, missing));
                } else {
                    self.images().remove(&image.name)?;
                    report.images_removed.push((image.name, missing));
                }
            }
        }

        report.layer_records_removed = self.drop_dangling_layer_records()?;
        for (key, value) in self.index().meta_list()? {
            // `blob-source:<digest>` and any value naming a dropped blob.
            let names_dropped = corrupt.contains(&value)
                || key
                    .strip_prefix("blob-source:")
                    .is_some_and(|d| corrupt.contains(d));
            if names_dropped {
                self.index().meta_remove(&key)?;
            }
        }

        report.snapshots_removed = self.drop_snapshots_without_dirs()?;
        report.meta_rows_removed = self.drop_dangling_meta()?;
        Ok(report)
    }

    /// The first blob `digest` needs (itself, a manifest's config and layers, an index's stored
    /// manifests and theirs) that is not in the content store. An index's manifest that was not
    /// pulled is not needed, unless it was there and `corrupt` dropped it.
    fn first_missing(
        &self,
        digest: &str,
        corrupt: &HashSet<Digest>,
    ) -> Result<Option<Digest>, CacheError> {
        let mut pending = vec![(digest.to_string(), true)];
        let mut seen = HashSet::new();
        while let Some((d, required)) = pending.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            if validate_digest(&d).is_err() {
                return Ok(Some(d));
            }
            if !self.content().has(&d) {
                if self.index().remote_blob_get(&d)?.is_some() && !corrupt.contains(&d) {
                    // A lazily imported cache layer: fetched when something needs its bytes.
                    continue;
                }
                if required || corrupt.contains(&d) {
                    return Ok(Some(d));
                }
                // A platform an index names but that was not pulled: not needed locally.
                continue;
            }
            let small = std::fs::metadata(self.content().path(&d)?)
                .map(|m| m.len() <= MAX_MANIFEST)
                .unwrap_or(false);
            if !small {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(&self.content().read(&d)?) else {
                continue;
            };
            let digest_of = |x: &Value| x.get("digest").and_then(Value::as_str).map(str::to_string);
            if let Some(c) = v.get("config").and_then(digest_of) {
                pending.push((c, true));
            }
            for l in v
                .get("layers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(l) = digest_of(l) {
                    pending.push((l, true));
                }
            }
            for m in v
                .get("manifests")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(m) = digest_of(m) {
                    pending.push((m, false));
                }
            }
        }
        Ok(None)
    }

    /// Removes, per snapshot, the recorded layer blobs that are not stored; returns how many.
    fn drop_dangling_layer_records(&self) -> Result<usize, CacheError> {
        let remote: HashSet<String> = self
            .index()
            .meta_list()?
            .into_iter()
            .filter_map(|(k, _)| Some(k.strip_prefix("remote-blob:")?.to_string()))
            .collect();
        let db = &self.snapshots().db;
        let mut changed: HashMap<u64, Vec<LayerInfo>> = HashMap::new();
        let mut removed = 0;
        {
            let txn = db.begin_read()?;
            let table = txn.open_table(LAYERS).map_err(db.err("open layers"))?;
            for item in table.iter().map_err(db.err("list layer info"))? {
                let (k, v) = item.map_err(db.err("list layer info"))?;
                let list: Vec<LayerInfo> =
                    serde_json::from_slice(v.value()).map_err(|e| CacheError::CorruptJson {
                        what: "layer info",
                        location: format!("{} (snapshot `{}`)", db.path.display(), k.value()),
                        cause: e,
                    })?;
                let before = list.len();
                let kept: Vec<LayerInfo> = list
                    .into_iter()
                    .filter(|l| self.content().has(&l.digest) || remote.contains(&l.digest))
                    .collect();
                if kept.len() != before {
                    removed += before - kept.len();
                    changed.insert(k.value(), kept);
                }
            }
        }
        if changed.is_empty() {
            return Ok(0);
        }
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(LAYERS).map_err(db.err("open layers"))?;
            for (id, list) in changed {
                let bytes = serde_json::to_vec(&list).map_err(|e| CacheError::CorruptJson {
                    what: "layer info",
                    location: id.to_string(),
                    cause: e,
                })?;
                table
                    .insert(id, bytes.as_slice())
                    .map_err(db.err("write layer info"))?;
            }
        }
        db.commit(txn)?;
        Ok(removed)
    }

    /// Removes the `meta` rows of snapshots and results no longer recorded (left by an older
    /// kiln, which removed records and their rows in two writes); returns how many. A memo of a
    /// missing snapshot is harmless until its id is reused, an alias to a missing result is a
    /// look-up that always misses: neither should stay.
    fn drop_dangling_meta(&self) -> Result<usize, CacheError> {
        let live_snapshots: HashSet<SnapshotId> = self
            .snapshots()
            .list()?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let live_results: HashSet<String> =
            self.index().list()?.into_iter().map(|(k, _)| k).collect();
        let doomed = self.index().meta_dangling(&live_snapshots, &live_results)?;
        self.index().meta_remove_many(&doomed)?;
        Ok(doomed.len())
    }

    /// Removes the records of snapshots whose directory is missing, with every snapshot built on
    /// them (and, through [`crate::Snapshots::remove_many`], the cache results that use them).
    fn drop_snapshots_without_dirs(&self) -> Result<Vec<SnapshotId>, CacheError> {
        let snaps = self.snapshots();
        let all = snaps.list()?;
        let mut doomed: HashSet<SnapshotId> = all
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !snaps.fs_dir(*id).is_dir())
            .collect();
        if doomed.is_empty() {
            return Ok(Vec::new());
        }
        // Children have larger ids than their parents: one pass in id order finds them all.
        let mut ordered = all.clone();
        ordered.sort();
        for (id, parent) in ordered {
            if parent.is_some_and(|p| doomed.contains(&p)) {
                doomed.insert(id);
            }
        }
        let mut out: Vec<SnapshotId> = doomed.into_iter().collect();
        out.sort();
        snaps.remove_many(&out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImageRecord;
    use std::fs;

    #[test]
    fn a_flipped_byte_drops_the_blob_and_the_image_that_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (layer, _) = store.content().put_bytes(b"layer bytes").unwrap();
        let (config, _) = store.content().put_bytes(b"{}").unwrap();
        let manifest = serde_json::json!({
            "config": {"digest": config},
            "layers": [{"digest": layer}],
        })
        .to_string();
        let (m, size) = store.content().put_bytes(manifest.as_bytes()).unwrap();
        let record = |name: &str| ImageRecord {
            name: name.into(),
            digest: m.clone(),
            size,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            created: None,
        };
        store.images().put(&record("a")).unwrap();
        let snap = store.snapshots().create(None).unwrap();
        store
            .snapshots()
            .set_layer(
                snap,
                LayerInfo {
                    diff_id: layer.clone(),
                    digest: layer.clone(),
                    size: 11,
                    media_type: "tar".into(),
                },
            )
            .unwrap();

        assert_eq!(store.check().unwrap().corrupt_blobs, vec![]);
        let path = store.content().path(&layer).unwrap();
        fs::write(&path, b"layer bytez").unwrap();
        let report = store.check().unwrap();
        assert_eq!(report.corrupt_blobs.len(), 1);
        assert_eq!(report.corrupt_blobs[0].0, layer);
        assert_eq!(
            report.images_removed,
            vec![("a".to_string(), layer.clone())]
        );
        assert_eq!(report.layer_records_removed, 1);
        assert!(!store.content().has(&layer));
        assert!(store.images().list().unwrap().is_empty());
        assert!(store.snapshots().layers(snap).unwrap().is_empty());
        // A second run finds nothing more.
        let again = store.check().unwrap();
        assert!(again.corrupt_blobs.is_empty() && again.images_removed.is_empty());
    }

    #[test]
    fn an_index_keeps_platforms_never_pulled_but_not_a_corrupt_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (config, _) = store.content().put_bytes(b"{}").unwrap();
        let child = serde_json::json!({"config": {"digest": config}, "layers": []}).to_string();
        let (child, _) = store.content().put_bytes(child.as_bytes()).unwrap();
        let absent = format!("sha256:{}", "a".repeat(64));
        let index = serde_json::json!({
            "manifests": [{"digest": child}, {"digest": absent}],
        })
        .to_string();
        let (index, size) = store.content().put_bytes(index.as_bytes()).unwrap();
        store
            .images()
            .put(&ImageRecord {
                name: "multi".into(),
                digest: index,
                size,
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                created: None,
            })
            .unwrap();
        assert!(store.check().unwrap().images_removed.is_empty());
        fs::write(store.content().path(&child).unwrap(), b"{}x").unwrap();
        let report = store.check().unwrap();
        assert_eq!(report.images_removed, vec![("multi".to_string(), child)]);
    }

    #[test]
    fn memo_and_alias_rows_of_missing_snapshots_and_results_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let kept = store.snapshots().create(None).unwrap();
        let gone = store.snapshots().create(None).unwrap();
        let index = store.index();
        let result = crate::CachedResult {
            snapshot: Some(kept),
            created_unix: 1,
        };
        index.put("key-kept", &result).unwrap();
        index.snapshot_meta_put(kept, "sum/a", "x").unwrap();
        index.snapshot_meta_put(gone, "sum/a", "y").unwrap();
        // Left by an older kiln, which removed snapshots without their memos.
        let never = crate::SnapshotId(gone.0 + 100);
        index.snapshot_meta_put(never, "sum/a", "w").unwrap();
        index.alias_put("selection/1", "key-kept").unwrap();
        index
            .alias_put("selection/2", "key-never-recorded")
            .unwrap();
        index.meta_put("blob-source:other", "z").unwrap();
        fs::remove_dir_all(store.snapshots().fs_dir(gone)).unwrap();

        let report = store.check().unwrap();
        assert_eq!(report.snapshots_removed, vec![gone]);
        assert_eq!(report.meta_rows_removed, 2);
        assert_eq!(
            index.snapshot_meta_get(kept, "sum/a").unwrap().as_deref(),
            Some("x")
        );
        assert_eq!(index.snapshot_meta_get(gone, "sum/a").unwrap(), None);
        assert_eq!(index.snapshot_meta_get(never, "sum/a").unwrap(), None);
        assert_eq!(
            index.alias_get("selection/1").unwrap().as_deref(),
            Some("key-kept")
        );
        assert_eq!(index.alias_get("selection/2").unwrap(), None);
        assert_eq!(
            index.meta_get("blob-source:other").unwrap().as_deref(),
            Some("z")
        );
        assert_eq!(store.check().unwrap().meta_rows_removed, 0);
    }

    #[test]
    fn a_snapshot_without_its_directory_is_dropped_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.snapshots().create(None).unwrap();
        let b = store.snapshots().create(Some(a)).unwrap();
        let c = store.snapshots().create(None).unwrap();
        fs::remove_dir_all(store.snapshots().fs_dir(a)).unwrap();
        let report = store.check().unwrap();
        assert_eq!(report.snapshots_removed, vec![a, b]);
        assert_eq!(store.snapshots().list().unwrap(), vec![(c, None)]);
    }
}

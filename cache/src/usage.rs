//! `kiln system df`: the store measured by kind (images, build cache, cache mounts, the rest)
//! with what a full prune would free.

use std::fs;
use std::path::Path;

use crate::du::{disk_usage, Seen};
use crate::gc::CACHE_MOUNTS_DIR;
use crate::index::SnapshotId;
use crate::{CacheError, GcOptions, Store};

/// Space taken by one kind of thing in the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindUsage {
    /// How many: images, cache results, cache mounts.
    pub count: usize,
    pub bytes: u64,
    /// What `kiln prune --all` would free of it.
    pub reclaimable: u64,
}

/// `kiln system df`: the store by kind. Every inode under the root is counted once, in the
/// first kind that reaches it, so the kinds add up to `total`, which is what `du` measures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// Blobs tagged images need (manifests, configs, layers).
    pub images: KindUsage,
    /// Snapshots and the blobs no image needs (layers of cached steps, compressed variants).
    pub build_cache: KindUsage,
    /// `RUN --mount=type=cache` directories.
    pub cache_mounts: KindUsage,
    /// The rest: the index, git mirrors, containers of `kiln run`, the image layout's files.
    pub other: u64,
    pub total: u64,
}

impl Store {
    /// Measures the store as `du` does, and what `kiln prune --all` would free (a dry run of
    /// [`Store::gc`]).
    pub fn usage(&self) -> Result<StoreUsage, CacheError> {
        let mut seen = Seen::new();
        let measure = |p: &Path, seen: &mut Seen| -> Result<u64, CacheError> {
            disk_usage(p, seen).map_err(CacheError::io("measure", p))
        };
        let mut usage = StoreUsage::default();
        let image_blobs = self.image_blobs(&[])?;
        usage.images.count = self.images().list()?.len();
        let mut image_list: Vec<&String> = image_blobs.iter().collect();
        image_list.sort();
        for d in image_list {
            if self.content().has(d) {
                usage.images.bytes += measure(&self.content().path(d)?, &mut seen)?;
            }
        }
        usage.build_cache.count = self.index().list()?.len();
        let mut snaps: Vec<SnapshotId> = self
            .snapshots()
            .list()?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        snaps.sort();
        let snap_root = self.root().join("snapshots");
        for id in snaps {
            usage.build_cache.bytes += measure(&snap_root.join(id.to_string()), &mut seen)?;
        }
        // Directories of unrecorded snapshots (left from a crash) are build cache too.
        usage.build_cache.bytes += measure(&snap_root, &mut seen)?;
        usage.build_cache.bytes += measure(&self.root().join("blobs"), &mut seen)?;
        let mounts_dir = self.root().join(CACHE_MOUNTS_DIR);
        let mounts = match fs::read_dir(&mounts_dir) {
            Ok(rd) => rd.filter_map(Result::ok).count(),
            Err(_) => 0,
        };
        usage.cache_mounts.count = mounts;
        usage.cache_mounts.bytes = measure(&mounts_dir, &mut seen)?;
        usage.other = measure(self.root(), &mut seen)?;
        usage.total =
            usage.images.bytes + usage.build_cache.bytes + usage.cache_mounts.bytes + usage.other;

        let dry = self.gc(&GcOptions {
            all: true,
            dry_run: true,
            ..GcOptions::default()
        })?;
        usage.cache_mounts.reclaimable = usage.cache_mounts.bytes;
        // Mount directories themselves (outside the per-mount ones) are not removed.
        let mounts_freed: u64 = dry
            .cache_mounts_removed
            .iter()
            .map(|name| {
                let mut s = Seen::new();
                disk_usage(&mounts_dir.join(name), &mut s).unwrap_or(0)
            })
            .sum();
        usage.cache_mounts.reclaimable = mounts_freed.min(usage.cache_mounts.bytes);
        usage.build_cache.reclaimable = dry
            .bytes_freed
            .saturating_sub(mounts_freed)
            .min(usage.build_cache.bytes);
        Ok(usage)
    }
}

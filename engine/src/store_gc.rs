//! Keeping the store's size: `kiln prune` with its options, `kiln system df`, and the GC policy
//! of the config file, applied after builds when no other build of this engine is running.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use kiln_cache::{GcOptions, GcReport, Store};

use crate::config::GcPolicy;

/// What `kiln prune` collects. The default drops every cache mount and whatever no cache
/// result or image reaches; each option drops cache results too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PruneOptions {
    /// `--all`: every cache result and cache mount (tagged images stay whole).
    pub all: bool,
    /// `--keep-storage SIZE`: least recently used results and cache mounts go until the build
    /// cache takes at most this many bytes.
    pub keep_storage: Option<u64>,
    /// `--filter until=DURATION`: results and cache mounts unused for longer go.
    pub unused_for: Option<Duration>,
}

/// What `kiln prune` (or the GC after a build) removed.
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    pub cache_mounts: usize,
    pub results: usize,
    pub snapshots: usize,
    pub blobs: usize,
    pub blob_bytes: u64,
    /// Disk space freed, as `du` counts it.
    pub bytes_freed: u64,
    /// The clients' context mirrors a daemon removed (none embedded: only a daemon has them).
    pub context_mirrors: usize,
}

impl PruneReport {
    /// One line for the user, as `kiln prune` prints it.
    pub fn summary(&self) -> String {
        let mirrors = match self.context_mirrors {
            0 => String::new(),
            n => format!(", {n} clients' context mirrors"),
        };
        format!(
            "removed {} cache mounts, {} cache results, {} snapshots, {} blobs ({} bytes){mirrors}; freed {}",
            self.cache_mounts,
            self.results,
            self.snapshots,
            self.blobs,
            self.blob_bytes,
            kiln_cache::human_size(self.bytes_freed)
        )
    }
}

impl From<GcReport> for PruneReport {
    fn from(r: GcReport) -> Self {
        PruneReport {
            cache_mounts: r.cache_mounts_removed.len(),
            results: r.results_removed.len(),
            snapshots: r.snapshots_removed.len(),
            blobs: r.blobs_removed.len(),
            blob_bytes: r.blob_bytes_freed,
            bytes_freed: r.bytes_freed,
            context_mirrors: 0,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn gc_options(opts: &PruneOptions) -> GcOptions {
    let filtered = opts.all || opts.keep_storage.is_some() || opts.unused_for.is_some();
    GcOptions {
        all: opts.all,
        drop_cache_mounts: !filtered,
        keep_storage: opts.keep_storage,
        drop_unused_before: opts
            .unused_for
            .map(|d| unix_now().saturating_sub(d.as_secs())),
        ..GcOptions::default()
    }
}

pub(crate) fn prune(store: &Store, opts: &PruneOptions) -> Result<PruneReport> {
    let mut gc = gc_options(opts);
    // A container's image may be gone (or never tagged): its snapshots stay while it exists.
    gc.keep_snapshots.extend(
        crate::containers::snapshots_in_use(store.root())
            .into_iter()
            .map(kiln_cache::SnapshotId),
    );
    let report = store
        .gc(&gc)
        .with_context(|| format!("cannot prune the store `{}`", store.root().display()))?;
    Ok(report.into())
}

/// The config file's `[gc]` policy, as a prune.
pub(crate) fn policy_prune(policy: &GcPolicy) -> PruneOptions {
    PruneOptions {
        all: false,
        keep_storage: policy.keep_storage,
        unused_for: policy.keep_duration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_prune_drops_cache_mounts_and_filters_keep_them_to_the_filter() {
        let plain = gc_options(&PruneOptions::default());
        assert!(plain.drop_cache_mounts && !plain.all && plain.keep_storage.is_none());
        let lru = gc_options(&PruneOptions {
            keep_storage: Some(10),
            ..PruneOptions::default()
        });
        assert!(!lru.drop_cache_mounts && lru.keep_storage == Some(10));
        let until = gc_options(&PruneOptions {
            unused_for: Some(Duration::from_secs(3600)),
            ..PruneOptions::default()
        });
        let cutoff = until.drop_unused_before.unwrap();
        assert!(unix_now() - cutoff >= 3600 && unix_now() - cutoff < 3700);
    }
    #[tokio::test]
    async fn the_policy_waits_for_the_last_build_of_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let engine = crate::Engine::open(
            dir.path(),
            crate::EngineOptions {
                gc: GcPolicy {
                    keep_storage: Some(0),
                    keep_duration: None,
                },
                ..Default::default()
            },
        )
        .unwrap();
        let store = engine.store();
        let snap = store.snapshots().create(None).unwrap();
        let result = kiln_cache::CachedResult {
            snapshot: Some(snap),
            created_unix: 1,
        };
        store.index().put("k", &result).unwrap();
        {
            // Another build of this engine is still running: it may need the result.
            let _other_build = engine.busy.read().await;
            assert!(engine.collect_after_build().await.unwrap().is_none());
            assert!(store.index().get("k").unwrap().is_some());
        }
        let report = engine.collect_after_build().await.unwrap().unwrap();
        assert_eq!((report.results, report.snapshots), (1, 1));
        assert!(store.index().get("k").unwrap().is_none());
    }
}

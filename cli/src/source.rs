//! Where a store command's data comes from: this process's store, or a daemon's (`--host`).
//! The commands format the same engine types either way, so their output does not depend on it.

use anyhow::{Context, Result};
use kiln_engine::{
    BlobProgress, DaemonInfo, Engine, ImageSummary, KindUsage, PruneOptions, PruneReport,
    PullOptions, PushReport, StoreUsage, SystemInfo,
};
use std::path::Path;

pub(crate) enum StoreSource<'a> {
    /// The store at `root`, read without its lock (`kiln images`).
    Unlocked(&'a Path),
    /// The store this process opened (and holds).
    Engine(&'a Engine),
    /// A daemon's store.
    Daemon(&'a kiln_client::Client),
}

impl StoreSource<'_> {
    /// Every image of the store, named ones first, that passes every `--filter` spec.
    pub(crate) async fn images(&self, filters: &[String]) -> Result<Vec<ImageSummary>> {
        let parsed = filters
            .iter()
            .map(|f| kiln_engine::ImageFilter::parse(f))
            .collect::<Result<Vec<_>>>()?;
        let all = match self {
            StoreSource::Unlocked(root) => kiln_engine::all_images(root)?,
            StoreSource::Engine(engine) => kiln_engine::all_images(engine.store().root())?,
            StoreSource::Daemon(client) => {
                // The daemon applies the filters; they were checked above, so a wrong one is
                // reported as embedded `kiln` reports it.
                return Ok(client
                    .list_images(filters)
                    .await?
                    .into_iter()
                    .map(|i| ImageSummary {
                        name: i.name,
                        id: i.id,
                        manifest_digest: i.manifest_digest,
                        manifest_size: i.manifest_size,
                        media_type: i.media_type,
                        created: i.created,
                        size: i.size,
                        platforms: i.platforms,
                    })
                    .collect());
            }
        };
        Ok(kiln_engine::ImageFilter::select(&parsed, all))
    }

    /// `kiln info`'s facts of the engine, its host and its store (and of the daemon serving
    /// it, if one does).
    pub(crate) async fn info(&self) -> Result<SystemInfo> {
        // A few small files: read in place, as `images` reads the store's index.
        match self {
            StoreSource::Unlocked(root) => kiln_engine::system_info(root),
            StoreSource::Engine(engine) => kiln_engine::system_info(engine.store().root()),
            StoreSource::Daemon(client) => {
                let i = client.info().await?;
                Ok(SystemInfo {
                    version: i.version,
                    platform: i.platform,
                    emulated_platforms: i.emulated_platforms,
                    runtimes: i.runtimes,
                    store_root: i.store_root,
                    images: i.images,
                    image_names: i.image_names,
                    dangling_images: i.dangling_images,
                    containers: i.containers,
                    containers_running: i.containers_running,
                    rootless: i.rootless,
                    kernel_release: i.kernel_release,
                    operating_system: i.operating_system,
                    cpus: i.cpus,
                    memory_bytes: i.memory_bytes,
                    daemon: Some(DaemonInfo {
                        pid: i.pid,
                        api_version: i.api_version,
                        addresses: i.addresses,
                        builds_running: i.builds_running,
                    }),
                })
            }
        }
    }

    /// The store's disk usage by kind.
    pub(crate) async fn disk_usage(&self) -> Result<StoreUsage> {
        match self {
            StoreSource::Unlocked(_) => unlocked(),
            StoreSource::Engine(engine) => engine.disk_usage().await,
            StoreSource::Daemon(client) => {
                let u = client.disk_usage().await?;
                let kind = |k: kiln_client::KindUsage| KindUsage {
                    count: usize::try_from(k.count).unwrap_or(usize::MAX),
                    bytes: k.bytes,
                    reclaimable: k.reclaimable,
                };
                Ok(StoreUsage {
                    images: kind(u.images),
                    build_cache: kind(u.build_cache),
                    cache_mounts: kind(u.cache_mounts),
                    other: u.other,
                    total: u.total,
                })
            }
        }
    }

    /// Removes build cache as `kiln prune` says.
    pub(crate) async fn prune(&self, opts: PruneOptions) -> Result<PruneReport> {
        match self {
            StoreSource::Unlocked(_) => unlocked(),
            StoreSource::Engine(engine) => engine.prune(opts).await,
            StoreSource::Daemon(client) => {
                let r = client
                    .prune(kiln_client::PruneRequestOptions {
                        all: opts.all,
                        keep_storage: opts.keep_storage,
                        unused_for: opts.unused_for,
                    })
                    .await?;
                let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
                Ok(PruneReport {
                    cache_mounts: count(r.cache_mounts),
                    results: count(r.results),
                    snapshots: count(r.snapshots),
                    blobs: count(r.blobs),
                    blob_bytes: r.blob_bytes,
                    bytes_freed: r.bytes_freed,
                    context_mirrors: count(r.context_mirrors),
                })
            }
        }
    }
}

impl StoreSource<'_> {
    /// Pulls `reference` (`opts.progress` told of each blob's bytes); the pulled digest.
    pub(crate) async fn pull(&self, reference: &str, opts: PullOptions) -> Result<String> {
        match self {
            StoreSource::Unlocked(_) => unlocked(),
            StoreSource::Engine(engine) => engine.pull_with(reference, opts).await,
            StoreSource::Daemon(client) => {
                let mut progress = forward(opts.progress);
                Ok(client
                    .pull(reference, opts.platform, opts.all_platforms, &mut progress)
                    .await?)
            }
        }
    }

    /// Pushes the stored image `name` to `reference` (default: `name`).
    pub(crate) async fn push(
        &self,
        name: &str,
        reference: Option<&str>,
        progress: Option<BlobProgress>,
    ) -> Result<PushReport> {
        match self {
            StoreSource::Unlocked(_) => unlocked(),
            StoreSource::Engine(engine) => engine.push_with(name, reference, progress).await,
            StoreSource::Daemon(client) => {
                let r = client.push(name, reference, &mut forward(progress)).await?;
                let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
                Ok(PushReport {
                    digest: r.digest,
                    uploaded: count(r.uploaded),
                    already_present: count(r.already_present),
                    mounted: count(r.mounted),
                    platform_manifests: count(r.platform_manifests),
                })
            }
        }
    }
}

/// The daemon's progress events, given to the renderer an embedded transfer reports to.
fn forward(progress: Option<BlobProgress>) -> impl FnMut(&str, u64, u64) + Send {
    move |digest, done, total| {
        if let Some(p) = &progress {
            p(digest, done, total)
        }
    }
}

/// A command that changes or measures the store was given no lock: a bug of the cli's, not
/// the user's.
fn unlocked<T>() -> Result<T> {
    None.context("no store was opened for this command")
}

//! The `System` service's calls: what the daemon is, what its store holds, pull and push.

use crate::{Client, ClientError};
use kiln_api::v1::{
    system_client::SystemClient, transfer_event::Event, DiskUsageRequest, InfoRequest,
    ListImagesRequest, PruneRequest, PullRequest, PushRequest, TransferEvent, VersionRequest,
};
use std::time::Duration;

/// The daemon's version, as `kiln version` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: String,
    pub api_version: String,
    pub platform: String,
}

/// What the daemon, its host and its store are (`System.Info`), as `kiln info` shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerInfo {
    pub version: String,
    pub api_version: String,
    pub platform: String,
    /// Platforms the host runs through a binfmt_misc emulator.
    pub emulated_platforms: Vec<String>,
    pub runtimes: Vec<String>,
    /// The store's directory on the daemon's machine.
    pub store_root: String,
    /// Distinct images, named or dangling.
    pub images: u64,
    pub image_names: u64,
    pub dangling_images: u64,
    pub containers: u64,
    pub containers_running: u64,
    pub rootless: bool,
    pub kernel_release: String,
    pub operating_system: String,
    pub cpus: u64,
    pub memory_bytes: u64,
    /// The daemon's process id.
    pub pid: u32,
    /// The addresses it serves.
    pub addresses: Vec<String>,
    /// Build sessions open now.
    pub builds_running: u64,
}

/// One kind of the store (`kiln system df`'s row).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindUsage {
    pub count: u64,
    pub bytes: u64,
    pub reclaimable: u64,
}

/// The store's disk usage by kind (`System.DiskUsage`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub images: KindUsage,
    pub build_cache: KindUsage,
    pub cache_mounts: KindUsage,
    pub other: u64,
    pub total: u64,
}

/// One image of the daemon's store (`System.ListImages`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// `None` for a dangling image.
    pub name: Option<String>,
    pub id: String,
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub media_type: String,
    pub created: Option<String>,
    pub size: u64,
    /// An index's platforms, or the config's `os/arch` for a single image.
    pub platforms: Vec<String>,
}

/// What `kiln prune` asks the daemon to remove.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PruneRequestOptions {
    pub all: bool,
    pub keep_storage: Option<u64>,
    pub unused_for: Option<Duration>,
}

/// What the daemon's prune removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PruneOutcome {
    pub cache_mounts: u64,
    pub results: u64,
    pub snapshots: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub bytes_freed: u64,
    /// The clients' context mirrors the daemon removed.
    pub context_mirrors: u64,
}

/// What the daemon's push did (`System.Push`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushOutcome {
    pub digest: String,
    pub uploaded: u64,
    pub already_present: u64,
    pub mounted: u64,
    pub platform_manifests: u64,
}

/// Called with each blob's bytes done and total as a pull or push goes.
pub type Progress<'a> = &'a mut (dyn FnMut(&str, u64, u64) + Send);

/// Feeds a transfer's progress events to `progress` and returns its last event.
async fn follow(
    mut stream: tonic::Streaming<TransferEvent>,
    progress: Progress<'_>,
) -> Result<Event, ClientError> {
    while let Some(message) = stream.message().await? {
        match message.event {
            Some(Event::Blob(b)) => progress(&b.digest, b.done, b.total),
            Some(end) => return Ok(end),
            None => {}
        }
    }
    Err(ClientError::Protocol(
        "the transfer ended without saying how",
    ))
}

impl Client {
    /// Pulls `reference` into the daemon's store (`System.Pull`); the pulled digest.
    pub async fn pull(
        &self,
        reference: &str,
        platform: Option<String>,
        all_platforms: bool,
        progress: Progress<'_>,
    ) -> Result<String, ClientError> {
        let stream = self
            .system()
            .pull(PullRequest {
                reference: reference.to_string(),
                platform,
                all_platforms,
            })
            .await?
            .into_inner();
        match follow(stream, progress).await? {
            Event::PullDone(d) => Ok(d.digest),
            _ => Err(ClientError::Protocol("a pull ended as a push")),
        }
    }

    /// Pushes the daemon's image `name` to `reference` (default: `name`) (`System.Push`).
    pub async fn push(
        &self,
        name: &str,
        reference: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<PushOutcome, ClientError> {
        let stream = self
            .system()
            .push(PushRequest {
                name: name.to_string(),
                reference: reference.map(str::to_string),
            })
            .await?
            .into_inner();
        match follow(stream, progress).await? {
            Event::PushDone(d) => Ok(PushOutcome {
                digest: d.digest,
                uploaded: d.uploaded,
                already_present: d.already_present,
                mounted: d.mounted,
                platform_manifests: d.platform_manifests,
            }),
            _ => Err(ClientError::Protocol("a push ended as a pull")),
        }
    }

    fn system(&self) -> SystemClient<tonic::transport::Channel> {
        SystemClient::new(self.channel.clone())
    }

    /// The daemon's version (`System.Version`).
    pub async fn version(&self) -> Result<VersionInfo, ClientError> {
        let v = self.system().version(VersionRequest {}).await?.into_inner();
        Ok(VersionInfo {
            version: v.version,
            api_version: v.api_version,
            platform: v.platform,
        })
    }

    /// What the daemon, its host and its store are (`System.Info`).
    pub async fn info(&self) -> Result<ServerInfo, ClientError> {
        let i = self.system().info(InfoRequest {}).await?.into_inner();
        Ok(ServerInfo {
            version: i.version,
            api_version: i.api_version,
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
            pid: i.pid,
            addresses: i.addresses,
            builds_running: i.builds_running,
        })
    }

    /// The store's disk usage (`System.DiskUsage`).
    pub async fn disk_usage(&self) -> Result<DiskUsage, ClientError> {
        let u = self
            .system()
            .disk_usage(DiskUsageRequest {})
            .await?
            .into_inner();
        let kind = |k: Option<kiln_api::v1::KindUsage>| {
            k.map(|k| KindUsage {
                count: k.count,
                bytes: k.bytes,
                reclaimable: k.reclaimable,
            })
            .unwrap_or_default()
        };
        Ok(DiskUsage {
            images: kind(u.images),
            build_cache: kind(u.build_cache),
            cache_mounts: kind(u.cache_mounts),
            other: u.other,
            total: u.total,
        })
    }

    /// The store's images that pass every `--filter` spec (`System.ListImages`).
    pub async fn list_images(&self, filters: &[String]) -> Result<Vec<Image>, ClientError> {
        let r = self
            .system()
            .list_images(ListImagesRequest {
                filters: filters.to_vec(),
            })
            .await?
            .into_inner();
        Ok(r.images
            .into_iter()
            .map(|i| Image {
                name: i.name,
                id: i.id,
                manifest_digest: i.manifest_digest,
                manifest_size: i.manifest_size,
                media_type: i.media_type,
                created: i.created,
                size: i.size,
                platforms: i.platforms,
            })
            .collect())
    }

    /// Removes build cache as `kiln prune` does (`System.Prune`).
    pub async fn prune(&self, opts: PruneRequestOptions) -> Result<PruneOutcome, ClientError> {
        let r = self
            .system()
            .prune(PruneRequest {
                all: opts.all,
                keep_storage: opts.keep_storage,
                unused_for_ms: opts
                    .unused_for
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            })
            .await?
            .into_inner();
        Ok(PruneOutcome {
            cache_mounts: r.cache_mounts,
            results: r.results,
            snapshots: r.snapshots,
            blobs: r.blobs,
            blob_bytes: r.blob_bytes,
            bytes_freed: r.bytes_freed,
            context_mirrors: r.context_mirrors,
        })
    }
}

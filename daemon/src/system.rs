//! The `System` service: what the daemon is (its version, `kiln info`'s facts) and its store
//! (disk usage, images, prune, pull, push).

use crate::sessions::Sessions;
use crate::OpenBuilds;
use kiln_api::v1::{
    system_server::System, transfer_event::Event, BlobProgress, DiskUsageRequest,
    DiskUsageResponse, Image, InfoRequest, InfoResponse, KindUsage, ListImagesRequest,
    ListImagesResponse, PruneRequest, PruneResponse, PullDone, PullRequest, PushDone, PushRequest,
    TransferEvent, VersionRequest, VersionResponse,
};
use kiln_engine::{Engine, ImageFilter};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

/// The API version this daemon speaks: the proto package.
pub(crate) const API_VERSION: &str = "kiln.v1";

#[derive(Clone)]
pub(crate) struct SystemService {
    engine: Arc<Engine>,
    /// The clients' context mirrors, which `Prune` removes too.
    sessions: Arc<Sessions>,
    /// The addresses this daemon serves, for `kiln info`.
    addresses: Arc<Vec<String>>,
    builds: OpenBuilds,
}

impl SystemService {
    pub(crate) fn new(
        engine: Arc<Engine>,
        sessions: Arc<Sessions>,
        addresses: Vec<String>,
        builds: OpenBuilds,
    ) -> SystemService {
        SystemService {
            engine,
            sessions,
            addresses: Arc::new(addresses),
            builds,
        }
    }
}

/// An engine error as the client prints it: the whole chain, as embedded `kiln` does.
fn failed(e: impl std::fmt::Display) -> Status {
    Status::unknown(format!("{e:#}"))
}

/// The stream of a pull or push: progress events, then the end.
type Transfer = UnboundedReceiverStream<Result<TransferEvent, Status>>;

/// Runs `work` (a pull or push reporting blob progress to the callback it is given) and streams
/// its progress and end to the client. The queue is unbounded because the callback may run on
/// any thread, runtime or not, and must not block the transfer; a client reads as fast as the
/// registry sends. The work is dropped when the client goes away, as Ctrl-C drops it embedded.
fn transfer<F, Fut>(work: F) -> Transfer
where
    F: FnOnce(kiln_engine::BlobProgress) -> Fut,
    Fut: std::future::Future<Output = Result<Event, Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let progress_tx = tx.clone();
    let progress: kiln_engine::BlobProgress =
        Arc::new(move |digest: &str, done: u64, total: u64| {
            let event = Event::Blob(BlobProgress {
                digest: digest.to_string(),
                done,
                total,
            });
            let _ = progress_tx.send(Ok(TransferEvent { event: Some(event) }));
        });
    let fut = work(progress);
    tokio::spawn(async move {
        tokio::select! {
            ended = fut => {
                let _ = tx.send(ended.map(|e| TransferEvent { event: Some(e) }));
            }
            _ = tx.closed() => {}
        }
    });
    UnboundedReceiverStream::new(rx)
}

#[tonic::async_trait]
impl System for SystemService {
    type PullStream = Transfer;
    type PushStream = Transfer;

    async fn pull(&self, request: Request<PullRequest>) -> Result<Response<Transfer>, Status> {
        let r = request.into_inner();
        let engine = self.engine.clone();
        Ok(Response::new(transfer(move |progress| async move {
            let digest = engine
                .pull_with(
                    &r.reference,
                    kiln_engine::PullOptions {
                        platform: r.platform,
                        progress: Some(progress),
                        all_platforms: r.all_platforms,
                    },
                )
                .await
                .map_err(failed)?;
            Ok(Event::PullDone(PullDone { digest }))
        })))
    }

    async fn push(&self, request: Request<PushRequest>) -> Result<Response<Transfer>, Status> {
        let r = request.into_inner();
        let engine = self.engine.clone();
        Ok(Response::new(transfer(move |progress| async move {
            let report = engine
                .push_with(&r.name, r.reference.as_deref(), Some(progress))
                .await
                .map_err(failed)?;
            Ok(Event::PushDone(PushDone {
                digest: report.digest,
                uploaded: report.uploaded as u64,
                already_present: report.already_present as u64,
                mounted: report.mounted as u64,
                platform_manifests: report.platform_manifests as u64,
            }))
        })))
    }

    async fn version(
        &self,
        _: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            api_version: API_VERSION.to_string(),
            platform: format!("{}/{}", std::env::consts::OS, go_arch()),
        }))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let root = self.engine.store().root().to_path_buf();
        // The same reads as embedded `kiln info`; they block on small files only.
        let i = tokio::task::spawn_blocking(move || kiln_engine::system_info(&root))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(failed)?;
        Ok(Response::new(InfoResponse {
            version: i.version,
            api_version: API_VERSION.to_string(),
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
            pid: std::process::id(),
            addresses: self.addresses.to_vec(),
            builds_running: self.builds.count(),
        }))
    }

    async fn disk_usage(
        &self,
        _: Request<DiskUsageRequest>,
    ) -> Result<Response<DiskUsageResponse>, Status> {
        let u = self.engine.disk_usage().await.map_err(failed)?;
        let kind = |k: kiln_engine::KindUsage| KindUsage {
            count: k.count as u64,
            bytes: k.bytes,
            reclaimable: k.reclaimable,
        };
        Ok(Response::new(DiskUsageResponse {
            images: Some(kind(u.images)),
            build_cache: Some(kind(u.build_cache)),
            cache_mounts: Some(kind(u.cache_mounts)),
            other: u.other,
            total: u.total,
        }))
    }

    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let filters = request
            .into_inner()
            .filters
            .iter()
            .map(|f| ImageFilter::parse(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        let root = self.engine.store().root().to_path_buf();
        let all = tokio::task::spawn_blocking(move || kiln_engine::all_images(&root))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(failed)?;
        let images = ImageFilter::select(&filters, all)
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
            .collect();
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn prune(
        &self,
        request: Request<PruneRequest>,
    ) -> Result<Response<PruneResponse>, Status> {
        let r = request.into_inner();
        let unused_for = r.unused_for_ms.map(Duration::from_millis);
        let report = self
            .engine
            .prune(kiln_engine::PruneOptions {
                all: r.all,
                keep_storage: r.keep_storage,
                unused_for,
            })
            .await
            .map_err(failed)?;
        // The mirrors are the daemon's own build cache of its clients' contexts: `--all` and
        // `until` take those no session holds (`--keep-storage` weighs the store's cache only).
        let sessions = self.sessions.clone();
        let scratch = self.engine.store().tmp_dir();
        let mirrors = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&scratch)?;
            sessions.prune(r.all, unused_for, &scratch)
        })
        .await
        .map_err(|e| Status::internal(format!("the prune of the context mirrors stopped: {e}")))?
        .map_err(|e| Status::internal(format!("cannot remove a client's context mirror: {e}")))?;
        Ok(Response::new(PruneResponse {
            cache_mounts: report.cache_mounts as u64,
            results: report.results as u64,
            snapshots: report.snapshots as u64,
            blobs: report.blobs as u64,
            blob_bytes: report.blob_bytes,
            bytes_freed: report.bytes_freed + mirrors.bytes,
            context_mirrors: mirrors.mirrors as u64,
        }))
    }
}

/// This machine's architecture as Go (and so OCI platforms) names it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

//! The `System` service: what the daemon is (its version) and its store (disk usage, images,
//! prune).

use kiln_api::v1::{
    system_server::System, DiskUsageRequest, DiskUsageResponse, Image, KindUsage,
    ListImagesRequest, ListImagesResponse, PruneRequest, PruneResponse, VersionRequest,
    VersionResponse,
};
use kiln_engine::{Engine, ImageFilter};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The API version this daemon speaks: the proto package.
pub(crate) const API_VERSION: &str = "kiln.v1";

#[derive(Clone)]
pub(crate) struct SystemService {
    engine: Arc<Engine>,
}

impl SystemService {
    pub(crate) fn new(engine: Arc<Engine>) -> SystemService {
        SystemService { engine }
    }
}

/// An engine error as the client prints it: the whole chain, as embedded `kiln` does.
fn failed(e: impl std::fmt::Display) -> Status {
    Status::unknown(format!("{e:#}"))
}

#[tonic::async_trait]
impl System for SystemService {
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
            })
            .collect();
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn prune(
        &self,
        request: Request<PruneRequest>,
    ) -> Result<Response<PruneResponse>, Status> {
        let r = request.into_inner();
        let report = self
            .engine
            .prune(kiln_engine::PruneOptions {
                all: r.all,
                keep_storage: r.keep_storage,
                unused_for: r.unused_for_ms.map(Duration::from_millis),
            })
            .await
            .map_err(failed)?;
        Ok(Response::new(PruneResponse {
            cache_mounts: report.cache_mounts as u64,
            results: report.results as u64,
            snapshots: report.snapshots as u64,
            blobs: report.blobs as u64,
            blob_bytes: report.blob_bytes,
            bytes_freed: report.bytes_freed,
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

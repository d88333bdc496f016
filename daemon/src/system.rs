//! The `System` service: what the daemon is (its version).

use kiln_api::v1::{system_server::System, VersionRequest, VersionResponse};
use kiln_engine::Engine;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The API version this daemon speaks: the proto package.
pub(crate) const API_VERSION: &str = "kiln.v1";

#[derive(Clone)]
pub(crate) struct SystemService {
    // The store's services (info, disk usage, images, prune) use it.
    #[allow(dead_code)]
    engine: Arc<Engine>,
}

impl SystemService {
    pub(crate) fn new(engine: Arc<Engine>) -> SystemService {
        SystemService { engine }
    }
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

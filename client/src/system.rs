//! The `System` service's calls: what the daemon is.

use crate::{Client, ClientError};
use kiln_api::v1::{system_client::SystemClient, VersionRequest};

/// The daemon's version, as `kiln version` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: String,
    pub api_version: String,
    pub platform: String,
}

impl Client {
    /// The daemon's version (`System.Version`).
    pub async fn version(&self) -> Result<VersionInfo, ClientError> {
        let v = SystemClient::new(self.channel.clone())
            .version(VersionRequest {})
            .await?
            .into_inner();
        Ok(VersionInfo {
            version: v.version,
            api_version: v.api_version,
            platform: v.platform,
        })
    }
}

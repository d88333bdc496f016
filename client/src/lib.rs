//! kiln-client: the client side of `kiln --host ADDR`. [`Client::connect`] reaches a daemon at a
//! `unix:///PATH` address; each service's calls are methods of [`Client`], one module per
//! service, returning plain types so the cli needs no gRPC.

mod build;
mod system;

pub use build::{ContextSynced, LocalContext, LocalOutput, RemoteBuild};
/// The API's messages, for the build session's request and events.
pub use kiln_api::v1 as api;

pub use system::VersionInfo;

use std::path::PathBuf;
use tonic::transport::{Channel, Endpoint};

/// The API version this client speaks: the proto package.
pub const API_VERSION: &str = "kiln.v1";

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{0}` is not a daemon address: write `unix:///PATH`")]
    BadAddress(String),
    #[error("cannot reach the kiln daemon at `{addr}`: {source}; is `kiln daemon` running there?")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the kiln daemon answered: {}", .0.message())]
    Call(#[from] tonic::Status),
    #[error("the kiln daemon ended the build session without saying how the build ended")]
    SessionClosed,
    #[error("the kiln daemon broke the build session's protocol: {0}")]
    Protocol(&'static str),
    #[error("cannot write the output `{}`: {source}", dest.display())]
    Output {
        dest: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the context `{}`: {source}", dir.display())]
    Context {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A connection to one daemon.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
}

impl Client {
    /// Connects to `addr` (`unix:///PATH`).
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        let path = unix_path(addr).ok_or_else(|| ClientError::BadAddress(addr.to_string()))?;
        // The URI is required but unused: the connector below decides where to connect.
        let endpoint = Endpoint::from_static("http://kiln.sock");
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        Ok(Client { channel })
    }
}

/// The path of a `unix://` address (`unix:///run/kiln/kiln.sock` → `/run/kiln/kiln.sock`).
fn unix_path(addr: &str) -> Option<PathBuf> {
    let path = PathBuf::from(addr.strip_prefix("unix://")?);
    path.is_absolute().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tcp_address_is_refused_by_name_until_tls_is_supported() {
        let Err(e) = Client::connect("tcp://127.0.0.1:1").await else {
            panic!("connected to a tcp address")
        };
        assert_eq!(
            e.to_string(),
            "`tcp://127.0.0.1:1` is not a daemon address: write `unix:///PATH`"
        );
    }

    #[tokio::test]
    async fn a_missing_socket_says_to_start_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("unix://{}/kiln.sock", dir.path().display());
        let Err(e) = Client::connect(&addr).await else {
            panic!("connected to nothing")
        };
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("cannot reach the kiln daemon at `{addr}`")),
            "{text}"
        );
        assert!(text.ends_with("is `kiln daemon` running there?"), "{text}");
    }
}

//! kiln-client: the client side of `kiln --host ADDR`. [`Client::connect`] reaches a daemon at a
//! `unix:///PATH` or (mutual TLS) `tcp://HOST:PORT` address; each service's calls are methods of [`Client`], one module per
//! service, returning plain types so the cli needs no gRPC.

mod build;
mod system;

pub use build::{ContextSynced, LocalContext, LocalOutput, RemoteBuild};
/// The API's messages, for the build session's request and events.
pub use kiln_api::v1 as api;

pub use system::{
    DiskUsage, Image, KindUsage, Progress, PruneOutcome, PruneRequestOptions, PushOutcome,
    ServerInfo, VersionInfo,
};

use std::path::PathBuf;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The API version this client speaks: the proto package.
pub const API_VERSION: &str = "kiln.v1";

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{0}` is not a daemon address: write `unix:///PATH` or `tcp://HOST:PORT`")]
    BadAddress(String),
    #[error("cannot reach the kiln daemon at `{addr}`: {source}; is `kiln daemon` running there?")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot read `{}` for TLS: {source}", path.display())]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the TLS files cannot be used for `{addr}`: {source}")]
    Tls {
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

/// The client's `--tlscert`, `--tlskey` (its identity) and `--tlscacert` (the CA the daemon's
/// certificate must come from), for `tcp://` addresses.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

/// A connection to one daemon.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
}

impl Client {
    /// Connects to `addr`: `unix:///PATH`, or `tcp://HOST:PORT`, over TLS when `tls` names a
    /// CA (without one, in plain text, as to a daemon run with `--insecure-tcp`).
    pub async fn connect(addr: &str, tls: Option<&TlsFiles>) -> Result<Client, ClientError> {
        let connect_failed = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        if let Some(hostport) = addr.strip_prefix("tcp://") {
            let host = hostport
                .rsplit_once(':')
                .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                .ok_or_else(|| ClientError::BadAddress(addr.to_string()))?;
            let tls_config = match tls {
                Some(files) if files.ca.is_some() => Some(client_tls(files, &host)?),
                _ => None,
            };
            let scheme = if tls_config.is_some() {
                "https"
            } else {
                "http"
            };
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{hostport}"))
                .map_err(|_| ClientError::BadAddress(addr.to_string()))?;
            if let Some(config) = tls_config {
                endpoint = endpoint
                    .tls_config(config)
                    .map_err(|source| ClientError::Tls {
                        addr: addr.to_string(),
                        source,
                    })?;
            }
            let channel = endpoint.connect().await.map_err(connect_failed)?;
            return Ok(Client { channel });
        }
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
            .map_err(connect_failed)?;
        Ok(Client { channel })
    }
}

fn client_tls(files: &TlsFiles, host: &str) -> Result<ClientTlsConfig, ClientError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| ClientError::TlsFile {
            path: path.clone(),
            source,
        })
    };
    let mut config = ClientTlsConfig::new().domain_name(host);
    if let Some(ca) = &files.ca {
        config = config.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(config)
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
    async fn an_address_that_is_neither_unix_nor_tcp_is_refused_by_name() {
        for addr in ["http://127.0.0.1:1", "tcp://127.0.0.1", "unix://kiln.sock"] {
            let Err(e) = Client::connect(addr, None).await else {
                panic!("connected to {addr}")
            };
            assert_eq!(
                e.to_string(),
                format!(
                    "`{addr}` is not a daemon address: write `unix:///PATH` or `tcp://HOST:PORT`"
                )
            );
        }
    }

    #[tokio::test]
    async fn a_missing_socket_says_to_start_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("unix://{}/kiln.sock", dir.path().display());
        let Err(e) = Client::connect(&addr, None).await else {
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

//! kiln-daemon: the [`Engine`] served over gRPC (`kiln daemon`), so that many `kiln --host`
//! clients share one store and one engine. The services are the `kiln.v1` ones of `kiln-api`;
//! each listener ([`Listener`]: a unix socket, a tcp port with mutual TLS, a socket systemd
//! passed) serves all of them, and the gRPC health service.

mod build;
mod listen;
mod sessions;
mod system;

pub use listen::{ListenError, Listener, TlsFiles};

use listen::Socket;

use kiln_api::v1::builder_server::BuilderServer;
use kiln_api::v1::system_server::SystemServer;
use kiln_engine::Engine;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;

/// Why the daemon stopped serving before it was told to.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("serving `{addr}` failed: {source}")]
    Transport {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The build sessions open now, for `kiln info`: each holds an [`OpenBuild`] while it runs.
#[derive(Clone, Default)]
struct OpenBuilds(Arc<AtomicU64>);

impl OpenBuilds {
    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn open(&self) -> OpenBuild {
        self.0.fetch_add(1, Ordering::Relaxed);
        OpenBuild(self.0.clone())
    }
}

/// One open build session; dropping it (the session ended, however) counts it out.
struct OpenBuild(Arc<AtomicU64>);

impl Drop for OpenBuild {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long open calls may take to end after shutdown is asked for; then they are dropped
/// (a build is canceled as when its client goes away).
const GRACE: Duration = Duration::from_secs(2);

/// Serves the engine on every listener until `shutdown` resolves (or one listener fails), then
/// stops taking connections, gives the open calls [`GRACE`] to end, and returns. Socket files
/// the listeners made are removed.
pub async fn serve(
    engine: Arc<Engine>,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let stop = CancellationToken::new();
    let builds = OpenBuilds::default();
    let addresses = listeners.iter().map(|l| l.addr().to_string()).collect();
    let sessions = Arc::new(sessions::Sessions::new(engine.store().root()));
    let system =
        system::SystemService::new(engine.clone(), sessions.clone(), addresses, builds.clone());
    let build = build::BuildService::new(engine, sessions, stop.clone(), builds);
    // gRPC health checking: the server ("") and `kiln.v1.System` serve until shutdown.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SystemServer<system::SystemService>>()
        .await;
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        let addr = listener.addr().to_string();
        let (socket, tls, socket_file) = listener.into_parts();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .map_err(|source| ServeError::Transport {
                    addr: addr.clone(),
                    source,
                })?;
        }
        let router = builder
            .add_service(health_service.clone())
            .add_service(SystemServer::new(system.clone()))
            .add_service(BuilderServer::new(build.clone()));
        let stopped = stop.clone().cancelled_owned();
        servers.spawn(async move {
            let served = match socket {
                Socket::Unix(s) => {
                    router
                        .serve_with_incoming_shutdown(UnixListenerStream::new(s), stopped)
                        .await
                }
                Socket::Tcp(s) => {
                    router
                        .serve_with_incoming_shutdown(TcpListenerStream::new(s), stopped)
                        .await
                }
            };
            drop(socket_file);
            served.map_err(|source| ServeError::Transport { addr, source })
        });
    }
    let mut shutdown = std::pin::pin!(shutdown);
    let mut result = Ok(());
    loop {
        tokio::select! {
            _ = &mut shutdown, if !stop.is_cancelled() => {
                stop.cancel();
                health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
                health
                    .set_not_serving::<SystemServer<system::SystemService>>()
                    .await;
                break;
            }
            ended = servers.join_next() => match ended {
                None => return result,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    // One listener failing stops them all: a daemon half-served is worse
                    // than none.
                    if result.is_ok() {
                        result = Err(e);
                    }
                    stop.cancel();
                    break;
                }
                Some(Err(e)) => tracing::error!("a listener's server stopped: {e}"),
            },
        }
    }
    let drained = tokio::time::timeout(GRACE, async {
        while let Some(ended) = servers.join_next().await {
            if let Ok(Err(e)) = ended {
                tracing::error!("{e}");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "calls still open {} s after shutdown was asked for: dropped",
            GRACE.as_secs()
        );
        // Aborting the servers drops their listeners, and so removes their socket files.
        servers.shutdown().await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };

    /// A channel to the unix socket at `path`.
    async fn connect(path: &std::path::Path) -> tonic::transport::Channel {
        let socket = path.to_path_buf();
        tonic::transport::Endpoint::from_static("http://kiln.sock")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn info_names_this_daemon_its_addresses_and_its_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let engine = Engine::open(&store, Default::default()).unwrap();
        let path = dir.path().join("kiln.sock");
        let addr = format!("unix://{}", path.display());
        let listener = Listener::bind(&addr, None, false).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(Arc::new(engine), vec![listener], async {
            let _ = stop_rx.await;
        }));
        let mut system = kiln_api::v1::system_client::SystemClient::new(connect(&path).await);
        let info = system
            .info(kiln_api::v1::InfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.pid, std::process::id());
        assert_eq!(info.addresses, vec![addr]);
        assert_eq!(info.api_version, system::API_VERSION);
        assert_eq!(info.builds_running, 0);
        assert_eq!((info.images, info.containers), (0, 0));
        assert_eq!(
            info.store_root,
            std::fs::canonicalize(&store).unwrap().display().to_string()
        );
        assert_eq!(info.runtimes.first().map(String::as_str), Some("builtin"));
        stop_tx.send(()).unwrap();
        served.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn health_checks_say_serving_and_shutdown_removes_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("store"), Default::default()).unwrap();
        let path = dir.path().join("kiln.sock");
        let listener = Listener::bind(&format!("unix://{}", path.display()), None, false).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(Arc::new(engine), vec![listener], async {
            let _ = stop_rx.await;
        }));
        let mut health = HealthClient::new(connect(&path).await);
        for service in ["", "kiln.v1.System"] {
            let status = health
                .check(HealthCheckRequest {
                    service: service.to_string(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(status, ServingStatus::Serving as i32, "service `{service}`");
        }
        stop_tx.send(()).unwrap();
        served.await.unwrap().unwrap();
        assert!(!path.exists(), "the socket file outlived the daemon");
    }
}

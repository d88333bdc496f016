//! kiln-daemon: the [`Engine`] served over gRPC (`kiln daemon`), so that many `kiln --host`
//! clients share one store and one engine. The services are the `kiln.v1` ones of `kiln-api`;
//! each listener (a unix socket, [`Listener`]) serves all of them.

mod build;
mod listen;
mod system;

pub use listen::{ListenError, Listener};

use kiln_api::v1::builder_server::BuilderServer;
use kiln_api::v1::system_server::SystemServer;
use kiln_engine::Engine;
use std::future::Future;
use std::sync::Arc;
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

/// Serves the engine on every listener until `shutdown` resolves (or one listener fails), then
/// stops taking connections and returns once the open calls have ended.
pub async fn serve(
    engine: Arc<Engine>,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let stop = CancellationToken::new();
    let system = system::SystemService::new(engine.clone());
    let builder = build::BuildService::new(engine, stop.clone());
    let mut servers = Vec::new();
    for listener in listeners {
        let addr = listener.addr().to_string();
        let router = tonic::transport::Server::builder()
            .add_service(SystemServer::new(system.clone()))
            .add_service(BuilderServer::new(builder.clone()));
        let stopped = stop.clone().cancelled_owned();
        servers.push(tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(listener.incoming(), stopped)
                .await
                .map_err(|source| ServeError::Transport { addr, source })
        }));
    }
    let waiter = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        waiter.cancel();
    });
    let mut result = Ok(());
    for server in servers {
        let ended = match server.await {
            Ok(r) => r,
            // A server task panicked: its listener is gone; say so as a transport failure would.
            Err(e) => {
                tracing::error!("a listener's server stopped: {e}");
                Ok(())
            }
        };
        if let Err(e) = ended {
            // One listener failing stops them all: a daemon half-served is worse than none.
            stop.cancel();
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
}

//! `kiln daemon`: serves this process's engine to `kiln --host` clients until SIGINT/SIGTERM.

use anyhow::{bail, Context, Result};
use kiln_engine::Engine;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a root daemon listens when given no `--addr`.
const DEFAULT_ROOT_ADDR: &str = "unix:///run/kiln/kiln.sock";

#[derive(clap::Args)]
pub(crate) struct DaemonArgs {
    /// An address to listen on, `unix:///PATH`; may be repeated. Default:
    /// `unix:///run/kiln/kiln.sock` as root, `unix://$XDG_RUNTIME_DIR/kiln/kiln.sock` rootless.
    #[arg(long = "addr")]
    pub(crate) addrs: Vec<String>,
    /// Serve `tcp://` addresses without TLS: anyone who reaches the port controls the daemon.
    #[arg(long)]
    insecure_tcp: bool,
}

impl DaemonArgs {
    /// The addresses to listen on: those given, or the default one.
    pub(crate) fn addrs(&self) -> Vec<String> {
        if self.addrs.is_empty() {
            vec![default_addr()]
        } else {
            self.addrs.clone()
        }
    }

    /// The daemon's TLS files, all three or none.
    pub(crate) fn tls_files(
        &self,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Option<kiln_daemon::TlsFiles>> {
        match (cert, key, ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(kiln_daemon::TlsFiles { cert, key, ca })),
            (None, None, None) => Ok(None),
            _ => bail!(
                "`kiln daemon` needs all of `--tlscert`, `--tlskey` and `--tlscacert` for mutual TLS, or none of them"
            ),
        }
    }
}

/// Rootless (root only in kiln's user namespace), the daemon's socket is the user's, in their
/// runtime directory; as root, the system's.
fn default_addr() -> String {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if kiln_exec::in_user_namespace() => {
            format!("unix://{}/kiln/kiln.sock", dir.to_string_lossy())
        }
        _ => DEFAULT_ROOT_ADDR.to_string(),
    }
}

pub(crate) async fn run(
    engine: Engine,
    args: DaemonArgs,
    tls: Option<kiln_daemon::TlsFiles>,
) -> Result<i32> {
    // Started by systemd's socket unit, it serves the sockets it is given (and no others,
    // unless `--addr` asks for more).
    let mut listeners = kiln_daemon::Listener::from_systemd()?;
    let addrs = if listeners.is_empty() {
        args.addrs()
    } else {
        args.addrs.clone()
    };
    for l in &listeners {
        eprintln!("kiln daemon listening on {} (from systemd)", l.addr());
    }
    for addr in addrs {
        let listener = kiln_daemon::Listener::bind(&addr, tls.as_ref(), args.insecure_tcp)?;
        eprintln!("kiln daemon listening on {addr}");
        if listener.is_insecure_tcp() {
            eprintln!(
                "warning: serving `{addr}` without TLS (`--insecure-tcp`): anyone who can reach it controls the daemon"
            );
        }
        listeners.push(listener);
    }
    let (code_tx, code_rx) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        let code = crate::interrupt::signalled().await;
        let _ = code_tx.send(code);
    };
    kiln_daemon::serve(Arc::new(engine), listeners, shutdown)
        .await
        .context("`kiln daemon`")?;
    // Stopped by a signal: the daemon did what it was asked, so it ends well.
    let _ = code_rx.await;
    Ok(0)
}

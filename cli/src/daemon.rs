//! `kiln daemon`: serves this process's engine to `kiln --host` clients until SIGINT/SIGTERM.

use anyhow::{Context, Result};
use kiln_engine::Engine;
use std::sync::Arc;

#[derive(clap::Args)]
pub(crate) struct DaemonArgs {
    /// An address to listen on, `unix:///PATH`; may be repeated.
    #[arg(long = "addr", default_value = "unix:///run/kiln/kiln.sock")]
    pub(crate) addrs: Vec<String>,
}

pub(crate) async fn run(engine: Engine, args: DaemonArgs) -> Result<i32> {
    let mut listeners = Vec::new();
    for addr in &args.addrs {
        listeners.push(kiln_daemon::Listener::bind(addr)?);
        eprintln!("kiln daemon listening on {addr}");
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

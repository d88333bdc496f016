//! Ctrl-C (SIGINT) and SIGTERM during a build: the build future is dropped, which kills the
//! running sandboxes (their helpers die with `kill_on_drop`, their inits by `PR_SET_PDEATHSIG`)
//! and records nothing for the steps that did not finish. File steps run on blocking threads that
//! cannot be stopped halfway, so `main` waits for them (bounded) before exiting: they unmount what
//! they mounted, and the store keeps only finished, recorded results.

use std::sync::atomic::{AtomicBool, Ordering};
use tokio::signal::unix::{signal, SignalKind};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How long `main` waits for blocking work after an interrupt before exiting anyway.
pub(crate) const DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Resolves at the first SIGINT or SIGTERM with the exit code it calls for (130 or 143). Never
/// resolves when the handlers cannot be installed (the default action then applies).
pub(crate) async fn signalled() -> i32 {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    let code = tokio::select! {
        _ = int.recv() => 130,
        _ = term.recv() => 143,
    };
    INTERRUPTED.store(true, Ordering::SeqCst);
    code
}

/// True once a build was interrupted.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

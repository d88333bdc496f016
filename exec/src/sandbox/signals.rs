//! Signal forwarding for the helper and the init: SIGTERM, SIGINT... go on to the one child.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};

/// Pid of the process signals are forwarded to; 0 until it exists.
static CHILD: AtomicI32 = AtomicI32::new(0);

const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe and takes plain integers.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn forwarded_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set
}

/// Block the forwarded signals and install the forwarder. Blocked until [`set_child`] so that
/// a signal arriving before the child exists is held, not lost.
pub(crate) fn install() -> Result<(), String> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded_set()), None)
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let action = SigAction::new(
        SigHandler::Handler(forward),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in FORWARDED {
        // SAFETY: the handler only calls kill(2) with an atomic's value.
        unsafe { sigaction(s, &action) }
            .map_err(|e| format!("cannot install a handler for {s}: {e}"))?;
    }
    Ok(())
}

/// Start forwarding to `pid`, then let pending signals through.
pub(crate) fn set_child(pid: nix::unistd::Pid) {
    CHILD.store(pid.as_raw(), Ordering::SeqCst);
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&forwarded_set()), None);
}

/// Give the command a clean slate: default dispositions (SIGPIPE included: Rust ignores it and
/// an ignored disposition survives exec) and nothing blocked.
pub(crate) fn reset_for_exec() {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for s in Signal::iterator() {
        if s == Signal::SIGKILL || s == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: installing the default disposition has no handler code to be unsafe.
        let _ = unsafe { sigaction(s, &default) };
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

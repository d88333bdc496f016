//! The watcher between the engine and an OCI runtime (`kiln __kiln-oci-watch ...`), so that a
//! container dies with the engine that started it.
//!
//! `runc run` and `crun run` outlive a killed parent, and so does their container. The engine
//! cannot give the runtime `PR_SET_PDEATHSIG`: that fires when the engine *thread* that spawned
//! it exits, which is not the engine. So the engine starts this single-threaded watcher instead,
//! which starts the runtime with `PR_SET_PDEATHSIG` (reliable here), forwards signals to it and
//! passes its end on as its own. It holds the read end of an "alive" pipe whose write end only
//! the engine holds: when that reads end-of-file (the engine died, `kill -9` included) it kills
//! the runtime, has it delete the container (`delete --force` kills the container's init, and
//! with it the pid namespace) and unmounts the root the engine had mounted.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::sandbox::{fd_argument, signals, watch};
use crate::wire::SETUP_FAILED;

/// Hidden first argument that turns a kiln binary into the watcher.
pub(crate) const WATCH_ARG: &str = "__kiln-oci-watch";

/// What the watcher needs besides the runtime's command line.
pub(crate) struct Watch<'a> {
    /// The descriptor (in the watcher) of the alive pipe's read end.
    pub alive_fd: i32,
    /// The overlay root the engine mounted for the container.
    pub rootfs: &'a Path,
    /// The runtime's `--root`.
    pub runtime_root: &'a Path,
    /// The container id.
    pub id: &'a str,
}

/// The watcher's arguments (after `exe`) for running `binary runtime_args...`.
pub(crate) fn args(w: &Watch<'_>, binary: &Path, runtime_args: &[OsString]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        WATCH_ARG.into(),
        w.alive_fd.to_string().into(),
        w.rootfs.into(),
        w.runtime_root.into(),
        w.id.into(),
        "--".into(),
        binary.into(),
    ];
    args.extend(runtime_args.iter().cloned());
    args
}

/// Entry point of the watcher (`args` after [`WATCH_ARG`]); returns its exit code, or ends the
/// process with the runtime's signal.
pub(crate) fn main(args: Vec<OsString>) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("kiln: {msg}");
            SETUP_FAILED
        }
    }
}

fn run(args: Vec<OsString>) -> Result<i32, String> {
    let [alive, rootfs, runtime_root, id, sep, binary, runtime_args @ ..] = args.as_slice() else {
        return Err(format!("`{WATCH_ARG}` is internal to kiln: bad arguments"));
    };
    if sep != "--" {
        return Err(format!("`{WATCH_ARG}` is internal to kiln: bad arguments"));
    }
    let engine = fd_argument(Some(alive), WATCH_ARG)?;
    let binary_name = binary.to_string_lossy().into_owned();
    signals::install()?;
    let mut cmd = std::process::Command::new(binary);
    cmd.args(runtime_args);
    if super::cgroups::crun_needs_hiding(&binary_name) {
        super::cgroups::hide_unified_controllers(&mut cmd);
    }
    let watcher = std::process::id() as libc::pid_t;
    // SAFETY: runs in the forked child before exec; `die_with_parent` is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            crate::spawn::die_with_parent(watcher)?;
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `{binary_name}`: {e}"))?;
    let pid = Pid::from_raw(child.id() as i32);
    signals::set_child(pid);
    let orphaned = watch(pid, &engine);
    let status = wait(pid);
    if orphaned {
        let _ = super::delete_command(&binary_name, Path::new(runtime_root), &id.to_string_lossy())
            .status();
        let _ = umount2(&PathBuf::from(rootfs), MntFlags::MNT_DETACH);
    }
    match status {
        WaitStatus::Exited(_, code) => Ok(code),
        WaitStatus::Signaled(_, sig, _) => Ok(die_of(sig)),
        _ => Ok(255),
    }
}

fn wait(pid: Pid) -> WaitStatus {
    loop {
        match waitpid(pid, None) {
            Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return s,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return WaitStatus::Exited(pid, 255),
        }
    }
}

/// End this process with `sig`, as the runtime ended, so that the engine sees the same status;
/// returns the shell's code for it if the signal does not end it.
fn die_of(sig: nix::sys::signal::Signal) -> i32 {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing the default disposition has no handler code to be unsafe.
    let _ = unsafe { sigaction(sig, &default) };
    let mut set = SigSet::empty();
    set.add(sig);
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    let _ = nix::sys::signal::raise(sig);
    128 + sig as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip_to_the_runtime_command() {
        let w = Watch {
            alive_fd: 7,
            rootfs: Path::new("/s/rootfs"),
            runtime_root: Path::new("/s/runtime"),
            id: "kiln-1",
        };
        let args = args(&w, Path::new("/usr/sbin/runc"), &["run".into(), "x".into()]);
        assert_eq!(args[0], WATCH_ARG);
        let rest: Vec<&str> = args[1..].iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            rest,
            [
                "7",
                "/s/rootfs",
                "/s/runtime",
                "kiln-1",
                "--",
                "/usr/sbin/runc",
                "run",
                "x"
            ]
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert_eq!(main(vec!["7".into()]), SETUP_FAILED);
    }
}

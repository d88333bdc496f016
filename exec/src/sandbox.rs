//! The sandbox helper (`kiln __kiln-sandbox FD`): reads the config, unshares the namespaces and
//! waits for the init it forks into them.

pub(crate) mod command;
pub(crate) mod enter;
mod init;
pub(crate) mod mounts;
pub(crate) mod overlay;
mod seccomp_filter;
pub(crate) mod signals;
mod syscalls;

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::wire::{WireConfig, WireResult, RESULT_FILE, SETUP_FAILED};
use crate::Network;

/// The result file, opened before any namespace or root change so that the init can still write
/// it after `pivot_root`.
pub(crate) struct ResultFile(File);

impl ResultFile {
    fn create(state_dir: &Path) -> Result<Self, String> {
        let path = state_dir.join(RESULT_FILE);
        File::create(&path)
            .map(ResultFile)
            .map_err(|e| format!("cannot create `{}`: {e}", path.display()))
    }

    pub(crate) fn write(&self, result: &WireResult) {
        let Ok(bytes) = serde_json::to_vec(result) else {
            return;
        };
        let written = self
            .0
            .set_len(0)
            .and_then(|()| self.0.write_all_at(&bytes, 0));
        if let Err(e) = written {
            eprintln!("kiln sandbox: cannot write the result file: {e}");
        }
    }

    pub(crate) fn fail(&self, created: Vec<std::path::PathBuf>, message: String) {
        self.write(&WireResult {
            created_mountpoints: created,
            error: Some(message),
        });
    }
}

/// The descriptor the engine passed as argument `arg`, owned from now on.
pub(crate) fn fd_argument(arg: Option<&OsString>, mode: &str) -> Result<OwnedFd, String> {
    let fd: i32 = arg
        .and_then(|a| a.to_str())
        .and_then(|a| a.parse().ok())
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| {
            format!(
                "expected a file descriptor number after `{mode}`; this mode is internal to kiln"
            )
        })?;
    // The descriptor must be open (owning a closed number would later close someone else's),
    // and no process the sandbox execs may inherit it.
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| format!("descriptor {fd} given to `{mode}` is not open: {e}"))?;
    // SAFETY: not a syscall; the engine passed this open descriptor to us alone and nothing
    // else in this process uses it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn read_config(fd_arg: Option<OsString>) -> Result<WireConfig, String> {
    let owned = fd_argument(fd_arg.as_ref(), crate::wire::SANDBOX_ARG)?;
    let fd = owned.as_raw_fd();
    let mut bytes = Vec::new();
    File::from(owned)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the config from fd {fd}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("invalid sandbox config: {e}"))
}

/// Entry point of the helper process; returns its exit code.
pub(crate) fn main(fd_arg: Option<OsString>, alive_arg: Option<OsString>) -> i32 {
    let engine = match fd_argument(alive_arg.as_ref(), crate::wire::SANDBOX_ARG) {
        Ok(fd) => fd,
        Err(msg) => {
            eprintln!("kiln sandbox: {msg}");
            return SETUP_FAILED;
        }
    };
    let config = match read_config(fd_arg) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("kiln sandbox: {msg}");
            return SETUP_FAILED;
        }
    };
    let result = match ResultFile::create(&config.state_dir) {
        Ok(r) => r,
        Err(msg) => {
            eprintln!("kiln sandbox: {msg}");
            return SETUP_FAILED;
        }
    };
    match helper(&config, &result, &engine) {
        Ok(code) => code,
        Err(msg) => {
            result.fail(Vec::new(), msg);
            SETUP_FAILED
        }
    }
}

fn helper(config: &WireConfig, result: &ResultFile, engine: &OwnedFd) -> Result<i32, String> {
    signals::install()?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    // A network namespace the spec names by path (a bridge network's, set up by the caller
    // before the sandbox starts) is joined; otherwise `Network::None` makes a new one.
    match crate::spec::network_namespace_path(&config.spec) {
        Some(path) => {
            let ns = File::open(&path).map_err(|e| {
                format!(
                    "cannot open the network namespace `{}`: {e}",
                    path.display()
                )
            })?;
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| {
                format!(
                    "cannot join the network namespace `{}`: {e}",
                    path.display()
                )
            })?;
        }
        None if config.network == Network::None => flags |= CloneFlags::CLONE_NEWNET,
        None => {}
    }
    unshare(flags).map_err(|e| {
        format!("cannot create namespaces (unshare): {e}; kiln must run as root on a kernel with namespaces")
    })?;
    // The init watches this pipe: when its write end (kept here) closes, we are gone.
    let (alive_r, alive_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot create a pipe: {e}"))?;
    // SAFETY: this process is single-threaded (the helper never starts threads), so the child
    // may run arbitrary code after fork.
    match unsafe { fork() } {
        Err(e) => Err(format!("cannot fork the container init: {e}")),
        Ok(ForkResult::Child) => {
            drop(alive_w);
            let code = init::run(config, result, alive_r);
            std::process::exit(code);
        }
        Ok(ForkResult::Parent { child }) => {
            drop(alive_r);
            signals::set_child(child);
            watch(child, engine);
            let code = wait_exit_code(child);
            drop(alive_w);
            Ok(code)
        }
    }
}

/// Return once `child` has ended (without reaping it), or kill it (SIGKILL) as soon as the
/// engine is gone and return `true`: `engine` is the read end of a pipe whose write end only the
/// engine holds, so it reads end-of-file once the engine exits, however it died. (The init is
/// pid 1 of its namespace: its death takes every process of the step with it.)
pub(crate) fn watch(child: Pid, engine: &OwnedFd) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.as_raw(), 0) };
    if raw < 0 {
        // Before Linux 5.3: no way to wait for both; the step then outlives a killed engine.
        return false;
    }
    // SAFETY: not a syscall; pidfd_open returned a fresh descriptor nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    loop {
        let mut fds = [
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(engine.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            // A forwarded signal (SIGTERM, SIGINT...) interrupts the wait.
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
        if fds[0].any().unwrap_or(true) {
            return false;
        }
        if fds[1].any().unwrap_or(true) {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            return true;
        }
    }
}

/// Wait for `pid` and turn its end into a shell-style exit code.
pub(crate) fn wait_exit_code(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

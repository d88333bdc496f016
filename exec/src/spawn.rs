//! The plumbing both runtimes start their helper with: the binary to re-execute, pipes a child
//! inherits, and the pump that carries its output to the caller's sink. Below `run.rs` (the
//! built-in sandbox) and `oci.rs` (runc/crun), which both use it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use tokio::io::AsyncReadExt;

use crate::{ExecError, OutputSink, OutputStream};
/// Environment variable naming the binary to re-execute instead of the current one.
const EXE_ENV: &str = "KILN_SANDBOX_EXE";

pub(crate) fn sandbox_exe() -> Result<PathBuf, ExecError> {
    if let Some(p) = std::env::var_os(EXE_ENV) {
        return Ok(PathBuf::from(p));
    }
    std::env::current_exe().map_err(|source| ExecError::Io {
        what: "cannot find the current executable",
        path: PathBuf::from("/proc/self/exe"),
        cause: source,
    })
}

/// A pipe (read end, write end) for a child: both ends close-on-exec, so concurrent spawns
/// elsewhere in the engine never inherit them, and the read end above 2, as descriptors 0-2 are
/// rewired in the child before a `pre_exec` hook runs. [`inherit`] passes the read end on.
pub(crate) fn child_pipe() -> Result<(OwnedFd, OwnedFd), nix::Error> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    if read_end.as_raw_fd() >= 3 {
        return Ok((read_end, write_end));
    }
    let dup = nix::fcntl::fcntl(
        read_end.as_raw_fd(),
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3),
    )?;
    // SAFETY: not a syscall; `dup` is a fresh descriptor that nothing else owns.
    let dup = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) };
    Ok((dup, write_end))
}

/// Let the child started by `cmd` (alone) inherit `fds`.
pub(crate) fn inherit<const N: usize>(cmd: &mut std::process::Command, fds: [i32; N]) {
    // SAFETY: runs in the forked child before exec; fcntl is async-signal-safe and touches only
    // the child's copy of the descriptor table.
    unsafe {
        cmd.pre_exec(move || {
            for fd in fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Delivers the command's output to `sink`: what it writes to its `terminal` (the master end
/// of [`crate::Stdio::Terminal`]'s pseudo-terminal) when it has one, relaying the caller's
/// terminal to it meanwhile when `relay` says so, else its pipes.
pub(crate) async fn pump_stdio(
    terminal: Option<std::os::fd::OwnedFd>,
    relay: Option<bool>,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
    sink: &mut Option<Box<dyn OutputSink>>,
) {
    match terminal {
        // Read on a blocking thread: the read ends with EIO once every slave end is closed.
        Some(master) => {
            // Without the relay the output is still shown and logged; only keys and resizes
            // would not reach the command.
            let relay = relay.and_then(|input| {
                crate::terminal::CallerRelay::start(&master, input)
                    .map_err(|e| {
                        eprintln!("warning: keys and window size will not reach the container: {e}")
                    })
                    .ok()
            });
            let master = tokio::fs::File::from_std(std::fs::File::from(master));
            pump_output(Some(master), None::<tokio::process::ChildStderr>, sink).await;
            drop(relay);
        }
        None => pump_output(stdout, stderr, sink).await,
    }
}

pub(crate) async fn pump_output<O, E>(
    stdout: Option<O>,
    stderr: Option<E>,
    sink: &mut Option<Box<dyn OutputSink>>,
) where
    O: tokio::io::AsyncRead + Unpin,
    E: tokio::io::AsyncRead + Unpin,
{
    let mut out = stdout;
    let mut err = stderr;
    let mut out_buf = vec![0u8; 32 * 1024];
    let mut err_buf = vec![0u8; 32 * 1024];
    while out.is_some() || err.is_some() {
        tokio::select! {
            r = read_some(&mut out, &mut out_buf), if out.is_some() => match r {
                Some(n) => deliver(sink, OutputStream::Stdout, &out_buf[..n]),
                None => out = None,
            },
            r = read_some(&mut err, &mut err_buf), if err.is_some() => match r {
                Some(n) => deliver(sink, OutputStream::Stderr, &err_buf[..n]),
                None => err = None,
            },
        }
    }
}

/// `None` at end of stream or on a read error (the helper is gone either way).
async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    r: &mut Option<R>,
    buf: &mut [u8],
) -> Option<usize> {
    let reader = r.as_mut()?;
    match reader.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

fn deliver(sink: &mut Option<Box<dyn OutputSink>>, stream: OutputStream, data: &[u8]) {
    if let Some(s) = sink.as_mut() {
        s.output(stream, data);
    }
}

/// A name no other run of this process, or of another process at the same time, has: the pid, a
/// counter, and the clock's nanoseconds (so a pid reused after a crash gets a new name). Names
/// the runtime's container and the run's cgroup.
pub(crate) fn unique_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// For a `pre_exec` hook: the child gets SIGKILL when its parent dies. The signal is tied to the
/// thread that forked, so only a single-threaded parent (or its main thread) may rely on it;
/// `parent` is that process, checked after arming, as it may have died before.
///
/// # Safety
/// Called in the forked child before exec: it makes only async-signal-safe calls (prctl,
/// getppid) on integers.
pub(crate) unsafe fn die_with_parent(parent: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: plain syscalls on integers, async-signal-safe, as the caller's contract requires.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        // The parent died before the signal was armed: it would never come.
        if libc::getppid() != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// File in the state directory holding the pid of the process the engine started (the helper,
/// or the OCI runtime's watcher): signals sent to it are forwarded to the command.
pub const PID_FILE: &str = "pid";

/// Writes the started process's pid to the state directory's [`PID_FILE`], so that a
/// process other than the engine (`kiln stop`, `kiln kill`) can signal the command through it.
/// Best effort: a run whose pid is not recorded only cannot be signalled that way.
pub(crate) fn record_pid(state_dir: &std::path::Path, pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = std::fs::write(state_dir.join(PID_FILE), pid.to_string());
    }
}

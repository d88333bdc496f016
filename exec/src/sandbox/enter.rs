//! `kiln exec`'s helper: one more process in a running built-in sandbox. It joins the sandbox
//! init's cgroups and namespaces (IPC, UTS, network, pid, mount) and root, then becomes the
//! command with the same code the init uses (user, capabilities, rlimits, seccomp).

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sched::{setns, CloneFlags};
use nix::unistd::{fork, ForkResult};

use super::{command, signals};
use crate::wire::{EnterConfig, SETUP_FAILED};

/// Hidden first argument that turns a kiln binary into `kiln exec`'s helper.
pub(crate) const ENTER_ARG: &str = "__kiln-enter";

/// Entry point of the helper; returns its exit code (the command's, or 125 when it could not
/// be started).
pub(crate) fn main(fd_arg: Option<OsString>) -> i32 {
    match enter(fd_arg) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("kiln exec: {msg}");
            SETUP_FAILED
        }
    }
}

fn read_config(fd_arg: Option<OsString>) -> Result<EnterConfig, String> {
    let owned = super::fd_argument(fd_arg.as_ref(), ENTER_ARG)?;
    let mut bytes = Vec::new();
    std::fs::File::from(owned)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the exec config: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("invalid exec config: {e}"))
}

fn open(path: &str, flags: nix::fcntl::OFlag) -> Result<OwnedFd, String> {
    let fd = nix::fcntl::open(
        path,
        flags | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("cannot open `{path}`: {e}; is the container still running?"))?;
    // SAFETY: not a syscall; `open` returned a fresh descriptor nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Moves this process into the cgroups of `pid` that kiln made (`/kiln/...`), so that the
/// container's limits hold for the new process too.
fn join_cgroups(pid: u32) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return;
    };
    let me = std::process::id().to_string();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        if !path.starts_with("/kiln/") || path.contains("..") {
            continue;
        }
        let dirs: Vec<String> = if controllers.is_empty() {
            vec!["/sys/fs/cgroup/unified".into(), "/sys/fs/cgroup".into()]
        } else {
            vec![format!(
                "/sys/fs/cgroup/{}",
                controllers.trim_start_matches("name=")
            )]
        };
        for d in dirs {
            let procs = format!("{d}{path}/cgroup.procs");
            if std::fs::write(&procs, &me).is_ok() {
                break;
            }
        }
    }
}

fn enter(fd_arg: Option<OsString>) -> Result<i32, String> {
    let config = read_config(fd_arg)?;
    let pid = config.init_pid;
    let ro = nix::fcntl::OFlag::O_RDONLY;
    let root = open(
        &format!("/proc/{pid}/root"),
        ro | nix::fcntl::OFlag::O_DIRECTORY,
    )?;
    let kinds = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let namespaces = kinds
        .iter()
        .map(|(name, flag)| Ok((open(&format!("/proc/{pid}/ns/{name}"), ro)?, *flag)))
        .collect::<Result<Vec<_>, String>>()?;
    join_cgroups(pid);
    for (fd, flag) in &namespaces {
        setns(fd.as_fd(), *flag)
            .map_err(|e| format!("cannot join the container's namespaces: {e}"))?;
    }
    nix::unistd::fchdir(root.as_raw_fd())
        .map_err(|e| format!("cannot enter the container's root: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("cannot enter the container's root: {e}"))?;
    drop(root);
    drop(namespaces);

    let mut process = config.process;
    if let Some(user) = &config.user {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let resolved = crate::resolve_user(
            user,
            read("/etc/passwd").as_deref(),
            read("/etc/group").as_deref(),
        )
        .map_err(|e| e.to_string())?;
        let mut u = process.user().clone();
        u.set_uid(resolved.uid);
        u.set_gid(resolved.gid);
        u.set_additional_gids(Some(resolved.additional_gids.clone()));
        process.set_user(u);
        let mut env = process.env().clone().unwrap_or_default();
        env.retain(|e| !e.starts_with("HOME="));
        env.push(format!("HOME={}", resolved.home));
        process.set_env(Some(env));
    }
    signals::install()?;
    let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot create a pipe: {e}"))?;
    // SAFETY: this helper is single-threaded, so the child may run arbitrary code after fork.
    match unsafe { fork() } {
        Err(e) => Err(format!("cannot fork the command: {e}")),
        Ok(ForkResult::Child) => {
            drop(status_r);
            let code = command::exec(&process, config.seccomp.as_ref(), false, status_w);
            std::process::exit(code);
        }
        Ok(ForkResult::Parent { child }) => {
            drop(status_w);
            signals::set_child(child);
            let mut report = Vec::new();
            let _ = std::fs::File::from(status_r).read_to_end(&mut report);
            let code = super::wait_exit_code(child);
            match report.strip_prefix(command::SETUP_ERROR) {
                Some(msg) => Err(String::from_utf8_lossy(msg).into_owned()),
                None => Ok(code),
            }
        }
    }
}

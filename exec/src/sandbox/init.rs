//! The container init (pid 1 of the new pid namespace): builds the root, pivots into it, starts
//! the command, forwards signals to it, reaps orphans and exits with the command's code.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, fork, pivot_root, sethostname, ForkResult, Pid};

use super::mounts::Mounter;
use super::overlay::{mount_overlay, Layers};
use super::{command, signals, ResultFile};
use crate::wire::{WireConfig, WireResult, SETUP_FAILED};
use crate::Network;

/// Run as the init; returns the exit code for the whole container.
pub(crate) fn run(config: &WireConfig, result: &ResultFile, alive: OwnedFd) -> i32 {
    // If the helper dies (the engine dropped the run), take the namespace down with it.
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
        || helper_gone(&alive)
    {
        return SETUP_FAILED;
    }
    drop(alive);

    let mut created = Vec::new();
    if let Err(msg) = setup(config, &mut created) {
        result.fail(created, msg);
        return SETUP_FAILED;
    }
    start_command(config, result, created)
}

/// The helper keeps the write end open for as long as it lives.
fn helper_gone(alive: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(alive.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) => true,
        Err(_) => true,
    }
}

fn setup(config: &WireConfig, created: &mut Vec<PathBuf>) -> Result<(), String> {
    // Nothing we mount may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make mounts private: {e}"))?;

    let target = config.rootfs.target.as_path();
    let read_only = mount_root(config)?;

    if let Some(name) = config.spec.hostname() {
        sethostname(name).map_err(|e| format!("cannot set hostname `{name}`: {e}"))?;
    }
    if let Some(name) = config.spec.domainname() {
        // SAFETY: setdomainname reads `len` bytes from a buffer that outlives the call.
        let r = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
        if r < 0 {
            return Err(format!(
                "cannot set domain name `{name}`: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if config.network == Network::None {
        loopback_up()?;
    }

    let mut mounter = Mounter::new(target);
    let result = apply_mounts(config, &mut mounter);
    created.append(&mut mounter.created);
    result?;

    if read_only {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            // A bind remount sets the mount's flags to exactly these: keep the root `nodev`.
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|e| format!("cannot make the root read-only: {e}"))?;
    }

    chdir(target).map_err(|e| format!("cannot enter `{}`: {e}", target.display()))?;
    // Stack the new root over the old one, then detach the old one from under it.
    pivot_root(".", ".").map_err(|e| format!("pivot_root into `{}`: {e}", target.display()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("cannot detach the old root: {e}"))?;
    chdir("/").map_err(|e| format!("cannot enter the new root: {e}"))?;
    Ok(())
}

fn apply_mounts(config: &WireConfig, mounter: &mut Mounter<'_>) -> Result<(), String> {
    let defaults;
    let mounts = match config.spec.mounts() {
        Some(m) => m,
        None => {
            defaults = crate::spec::default_mounts().map_err(|e| e.to_string())?;
            &defaults
        }
    };
    for m in mounts {
        mounter.apply(m)?;
    }
    if mounter.dev_tmpfs {
        mounter.populate_dev()?;
    }
    if let Some(linux) = config.spec.linux() {
        let mut sysctls: Vec<_> = linux.sysctl().iter().flatten().collect();
        sysctls.sort();
        for (key, value) in sysctls {
            set_sysctl(key, value, config.network)?;
        }
        for p in linux.masked_paths().iter().flatten() {
            mounter.mask(Path::new(p))?;
        }
        for p in linux.readonly_paths().iter().flatten() {
            mounter.make_readonly(Path::new(p))?;
        }
    }
    Ok(())
}

/// Whether `key` is namespaced by what we unshare, so that writing it cannot touch the host.
pub(crate) fn sysctl_is_namespaced(key: &str, network: Network) -> bool {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    IPC.contains(&key)
        || key.starts_with("fs.mqueue.")
        || (network == Network::None && key.starts_with("net."))
}

fn set_sysctl(key: &str, value: &str, network: Network) -> Result<(), String> {
    if !sysctl_is_namespaced(key, network) || key.contains("..") || key.contains('/') {
        return Err(format!(
            "sysctl `{key}` is not isolated in the sandbox (it would change the host); remove it"
        ));
    }
    // These files resolve against the writer's namespaces, which are already the container's.
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|e| format!("cannot set sysctl `{key}` to `{value}`: {e}"))
}

/// Mount the root at the target; returns whether it must end read-only.
fn mount_root(config: &WireConfig) -> Result<bool, String> {
    let rootfs = &config.rootfs;
    let (upper, work, read_only) = match (&rootfs.upper, &rootfs.work) {
        (Some(u), Some(w)) => (u.clone(), w.clone(), false),
        _ => {
            // No layer to write to: a throwaway upper still lets us create mount points, and
            // the root is made read-only once they exist.
            let scratch = config.state_dir.join(crate::wire::SCRATCH_DIR);
            if scratch.exists() {
                std::fs::remove_dir_all(&scratch)
                    .map_err(|e| format!("cannot clear `{}`: {e}", scratch.display()))?;
            }
            let (u, w) = (scratch.join("upper"), scratch.join("work"));
            for d in [&u, &w] {
                std::fs::create_dir_all(d)
                    .map_err(|e| format!("cannot create `{}`: {e}", d.display()))?;
            }
            (u, w, true)
        }
    };
    let spec_ro = config
        .spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let layers = Layers {
        lower: &rootfs.lower,
        upper: &upper,
        work: &work,
        userxattr: crate::rootless::in_user_namespace(),
    };
    mount_overlay(&layers, &rootfs.target)?;
    Ok(read_only || spec_ro)
}

/// A new network namespace starts with `lo` down.
fn loopback_up() -> Result<(), String> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned right after.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(format!(
            "cannot open a socket to configure `lo`: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: not a syscall; `raw` is a fresh descriptor nothing else owns.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of a valid ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(format!(
            "cannot read the flags of `lo`: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: ifru_flags is the member SIOCGIFFLAGS just filled in.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(format!(
            "cannot bring `lo` up: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn start_command(config: &WireConfig, result: &ResultFile, created: Vec<PathBuf>) -> i32 {
    let Some(process) = config.spec.process() else {
        result.fail(created, "the spec has no `process`".into());
        return SETUP_FAILED;
    };
    // The child reports a failure before exec on this pipe; exec closes it (close-on-exec).
    let (status_r, status_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            result.fail(created, format!("cannot create a pipe: {e}"));
            return SETUP_FAILED;
        }
    };
    // SAFETY: the init is single-threaded, so the child may run arbitrary code after fork.
    match unsafe { fork() } {
        Err(e) => {
            result.fail(created, format!("cannot fork the command: {e}"));
            SETUP_FAILED
        }
        Ok(ForkResult::Child) => {
            drop(status_r);
            let seccomp = config
                .spec
                .linux()
                .as_ref()
                .and_then(|l| l.seccomp().as_ref());
            let code = command::exec(process, seccomp, config.own_terminal, status_w);
            std::process::exit(code);
        }
        Ok(ForkResult::Parent { child }) => {
            drop(status_w);
            signals::set_child(child);
            let report = read_report(status_r);
            let error = report
                .strip_prefix(command::SETUP_ERROR)
                .map(|m| String::from_utf8_lossy(m).into_owned());
            let failed = error.is_some();
            result.write(&WireResult {
                created_mountpoints: created,
                error,
            });
            let code = reap_until(child);
            if failed {
                SETUP_FAILED
            } else {
                code
            }
        }
    }
}

fn read_report(fd: OwnedFd) -> Vec<u8> {
    let mut f = std::fs::File::from(fd);
    let mut buf = Vec::new();
    loop {
        match f.read_to_end(&mut buf) {
            Ok(_) => return buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return buf,
        }
    }
}

/// Reap every child (orphans are re-parented to us) until the command itself exits.
fn reap_until(command: Pid) -> i32 {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => return code,
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => return 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return super::wait_exit_code(command),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_namespaced_sysctls_are_allowed() {
        assert!(sysctl_is_namespaced("kernel.shmmax", Network::Host));
        assert!(sysctl_is_namespaced("fs.mqueue.msg_max", Network::Host));
        assert!(sysctl_is_namespaced("net.ipv4.ip_forward", Network::None));
        assert!(!sysctl_is_namespaced("net.ipv4.ip_forward", Network::Host));
        assert!(!sysctl_is_namespaced("kernel.panic", Network::None));
        assert!(!sysctl_is_namespaced("vm.swappiness", Network::None));
    }
}

//! Rootless mode: an unprivileged kiln re-executes itself in a new user and mount namespace in
//! which it is root, so that it can mount overlays and start sandboxes as it does as root.
//!
//! The caller's uid and gid become 0; when `/etc/subuid` and `/etc/subgid` give the user ranges
//! and `newuidmap`/`newgidmap` are installed, ids 1..=N map onto those ranges too (what image
//! files owned by other users and `USER` need). Without them only root exists in the
//! namespace, and whatever needs another id fails with a message saying so.
//!
//! The maps of a user namespace must be written from outside it, and the re-executed kiln must
//! already be root in it when it execs (or it loses its capabilities), so the child stops
//! between `unshare` and `exec` until this process has written them.
//!
//! Every rootless kiln of a store shares one user namespace, as rootless Podman's do (its
//! "pause" process): the first one makes it and starts a *keeper* in it (`kiln
//! __kiln-keeper`, a process that only waits), recorded with its start time in
//! `<store>/userns-keeper`; the next ones join it with `setns`, each with a mount namespace of
//! its own. Network namespaces made by one kiln (a user-defined network's) are then usable by
//! the next, as they belong to the same user namespace. The keeper lives until it is killed.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::ExecError;

/// Set in the re-executed kiln: the namespace is already there.
const CHILD_ENV: &str = "_KILN_ROOTLESS_CHILD";

/// Whether this process runs in a user namespace other than the host's (rootless mode); the
/// check is kiln-sys's, shared with the cache.
pub use kiln_sys::in_user_namespace;

/// Whether ids other than 0 exist in this namespace (subordinate ranges were mapped).
pub fn has_subordinate_ids() -> bool {
    let count = |file: &str| -> u64 {
        std::fs::read_to_string(file)
            .map(|m| {
                m.lines()
                    .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0)
    };
    !in_user_namespace() || count("/proc/self/uid_map") > 1
}

/// One `/etc/subuid`-style range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    start: u64,
    count: u64,
}

/// The first range of `user` (by name or number) in an `/etc/subuid`-style text.
fn subordinate_range(text: &str, name: Option<&str>, id: u32) -> Option<Range> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if Some(who) != name && who != id.to_string() {
            return None;
        }
        let r = Range {
            start: start.trim().parse().ok()?,
            count: count.trim().parse().ok()?,
        };
        (r.count > 0).then_some(r)
    })
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _ = f.next()?;
        (f.next()? == uid.to_string()).then(|| name.to_string())
    })
}

/// Where `tool` is in `PATH` (the first regular file of that name), if anywhere.
pub fn find_program(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// How one id kind (uid or gid) is mapped.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// `newuidmap PID 0 ID 1 1 START COUNT`.
    Helper { tool: PathBuf, range: Range },
    /// `0 ID 1` written to `/proc/PID/{uid,gid}_map` by this process.
    Single,
}

fn plan(kind: &str, id: u32, name: Option<&str>) -> Plan {
    let (file, tool) = if kind == "uid" {
        ("/etc/subuid", "newuidmap")
    } else {
        ("/etc/subgid", "newgidmap")
    };
    let range = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| subordinate_range(&t, name, id));
    match (range, find_program(tool)) {
        (Some(range), Some(tool)) => Plan::Helper { tool, range },
        _ => Plan::Single,
    }
}

fn write_maps(pid: i32, uid: u32, gid: u32, uids: &Plan, gids: &Plan) -> Result<(), String> {
    let helper = |tool: &PathBuf, id: u32, r: &Range| -> Result<(), String> {
        let out = std::process::Command::new(tool)
            .arg(pid.to_string())
            .args(["0", &id.to_string(), "1", "1"])
            .args([r.start.to_string(), r.count.to_string()])
            .output()
            .map_err(|e| format!("cannot run `{}`: {e}", tool.display()))?;
        if !out.status.success() {
            return Err(format!(
                "`{}` failed: {}; check your ranges in /etc/subuid and /etc/subgid",
                tool.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    };
    let proc_write = |file: &str, text: &str| -> Result<(), String> {
        std::fs::write(format!("/proc/{pid}/{file}"), text)
            .map_err(|e| format!("cannot write `/proc/{pid}/{file}`: {e}"))
    };
    match uids {
        Plan::Helper { tool, range } => helper(tool, uid, range)?,
        Plan::Single => proc_write("uid_map", &format!("0 {uid} 1\n"))?,
    }
    match gids {
        Plan::Helper { tool, range } => helper(tool, gid, range)?,
        Plan::Single => {
            // An unprivileged gid map requires giving up setgroups in the namespace.
            proc_write("setgroups", "deny")?;
            proc_write("gid_map", &format!("0 {gid} 1\n"))?;
        }
    }
    Ok(())
}

/// The mapper's error when the child never reached the point of asking for its maps.
const STOPPED: &str = "the child stopped before creating its namespace";

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; it only sends a signal.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn no_namespace(e: std::io::Error) -> ExecError {
    ExecError::Rootless(format!(
        "cannot create a user namespace: {e}; rootless kiln needs unprivileged user namespaces (`sysctl user.max_user_namespaces` above 0, `kernel.unprivileged_userns_clone=1` where it exists), or run it as root"
    ))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ExecError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ExecError::Rootless(format!("cannot create a pipe: {e}")))
}

/// Where an unprivileged kiln keeps its store: `$XDG_DATA_HOME/kiln`, else
/// `$HOME/.local/share/kiln`.
pub fn rootless_store_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("kiln"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".local/share/kiln"))
}

/// Hidden first argument that makes kiln a keeper: a process that only waits, so that the
/// namespaces it is in live on (the store's user namespace, a rootless network's).
pub(crate) const KEEPER_ARG: &str = "__kiln-keeper";
/// The keeper's record in the store: `PID START_TIME`.
const KEEPER_FILE: &str = "userns-keeper";

/// The keeper: a session of its own, waiting forever, so that its user namespace lives on.
pub(crate) fn keeper_main() -> ! {
    let _ = nix::unistd::setsid();
    loop {
        nix::unistd::pause();
    }
}

/// A live process's start time (clock ticks since boot), the guard against a reused pid;
/// `None` for a zombie, whose user namespace can still be opened but must not be joined.
fn start_time(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = text[text.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Records keeper `pid` at `path` as `PID START_TIME`, so that a reused pid is never taken
/// for it.
pub fn record_keeper(path: &std::path::Path, pid: u32) -> std::io::Result<()> {
    let started = start_time(pid as i32).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, format!("process {pid} ended"))
    })?;
    std::fs::write(path, format!("{pid} {started}\n"))
}

/// The pid of the keeper recorded at `path`, when it still runs.
pub fn live_keeper(path: &std::path::Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut f = text.split_whitespace();
    let pid: u32 = f.next()?.parse().ok()?;
    let started: u64 = f.next()?.parse().ok()?;
    (start_time(pid as i32)? == started).then_some(pid)
}

/// The recorded keeper's user namespace, opened, when the keeper still runs.
fn live_user_namespace(store: &std::path::Path) -> Option<OwnedFd> {
    let path = store.join(KEEPER_FILE);
    let pid = live_keeper(&path)?;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/user")).ok()?;
    // Still the same process, now that the namespace is open.
    (live_keeper(&path)? == pid).then(|| OwnedFd::from(ns))
}

/// Starts a keeper in a new network namespace (a rootless user-defined network's, which its
/// containers' veth pairs and its `pasta` join); returns its pid. It lives until killed.
pub fn spawn_network_keeper() -> std::io::Result<u32> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    // SAFETY: unshare is async-signal-safe.
    spawn_keeper(&exe, || unsafe { libc::unshare(libc::CLONE_NEWNET) })
}

/// Spawns `exe` as a keeper, after `enter` (a namespace call, run in the forked child before
/// exec) succeeded; returns its pid. Not waited for: it outlives this process and is then
/// reaped by init.
fn spawn_keeper(
    exe: &std::path::Path,
    enter: impl Fn() -> libc::c_int + Send + Sync + 'static,
) -> std::io::Result<u32> {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(KEEPER_ARG)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: runs in the forked child before exec; `enter` makes one async-signal-safe call.
    unsafe {
        cmd.pre_exec(move || {
            if enter() != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd.spawn()?.id())
}

/// Starts a keeper in the user namespace `ns` and records it in `store`.
fn start_keeper(exe: &std::path::Path, store: &std::path::Path, ns: &OwnedFd) {
    let ns_fd = ns.as_raw_fd();
    // SAFETY: setns is async-signal-safe; `ns_fd` stays open in the parent across the spawn.
    let Ok(pid) = spawn_keeper(exe, move || unsafe {
        libc::setns(ns_fd, libc::CLONE_NEWUSER)
    }) else {
        return;
    };
    let _ = record_keeper(&store.join(KEEPER_FILE), pid);
}

/// Call first thing in `main()` (after [`crate::sandbox_main_if_requested`]), before any thread
/// starts. As root it returns `Ok(None)` at once. Unprivileged, it runs this same command again
/// in a new user and mount namespace where the caller is root, waits for it and returns
/// `Ok(Some(exit code))`: the caller exits with it. `KILN_ROOT` is set for the child to
/// [`rootless_store_dir`] unless already set.
pub fn reexec_rootless_if_unprivileged() -> Result<Option<i32>, ExecError> {
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    if uid == 0 {
        return Ok(None);
    }
    if std::env::var_os(CHILD_ENV).is_some() {
        return Err(ExecError::Rootless(
            "the user namespace was created but kiln is not root in it; this is a bug in kiln's rootless mode".into(),
        ));
    }
    let name = user_name(uid);
    let uids = plan("uid", uid, name.as_deref());
    let gids = plan("gid", gid, name.as_deref());
    let exe = std::fs::read_link("/proc/self/exe").map_err(|source| ExecError::Io {
        what: "cannot find the current executable",
        path: PathBuf::from("/proc/self/exe"),
        cause: source,
    })?;
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let (ready_wfd, go_rfd) = (ready_w.as_raw_fd(), go_r.as_raw_fd());

    let mut cmd = std::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1)).env(CHILD_ENV, "1");
    let store = std::env::var_os("KILN_ROOT")
        .map(PathBuf::from)
        .or_else(rootless_store_dir);
    if std::env::var_os("KILN_ROOT").is_none() {
        if let Some(dir) = &store {
            cmd.env("KILN_ROOT", dir);
        }
    }
    // One kiln at a time finds (or makes) the store's user namespace, so that two first runs
    // do not make two.
    let lock = store.as_deref().and_then(|s| {
        std::fs::create_dir_all(s).ok()?;
        let f = std::fs::File::create(s.join(format!("{KEEPER_FILE}.lock"))).ok()?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).ok()
    });
    let joined = store.as_deref().and_then(live_user_namespace);
    if let Some(ns) = joined {
        drop(lock);
        return run_joined(cmd, &ns);
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: runs in the forked child before exec and only makes async-signal-safe syscalls
    // (prctl, getppid, unshare, getpid, read, write) on integers and descriptors it inherited.
    unsafe {
        cmd.pre_exec(move || {
            // The engine (and so its sandboxes) dies with the kiln the user started and may
            // kill: this process, which spawns it from its main thread (the one that lives as
            // long as the process, as the signal is tied to the spawning thread).
            crate::spawn::die_with_parent(parent)?;
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let pid = libc::getpid().to_ne_bytes();
            if libc::write(ready_wfd, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
                return Err(std::io::Error::last_os_error());
            }
            let mut go = [0u8; 1];
            if libc::read(go_rfd, go.as_mut_ptr().cast(), 1) != 1 || go[0] != b'g' {
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
            Ok(())
        });
    }
    // The maps are written by a thread, as `spawn` returns only once the child has exec'd. It
    // opens the mapped namespace before the child may go (and end), for the keeper.
    let mapper = std::thread::spawn(move || -> Result<Option<OwnedFd>, String> {
        let mut ready = std::fs::File::from(ready_r);
        let mut pid = [0u8; 4];
        let result = ready
            .read_exact(&mut pid)
            .map_err(|_| STOPPED.to_string())
            .and_then(|()| write_maps(i32::from_ne_bytes(pid), uid, gid, &uids, &gids))
            .map(|()| {
                std::fs::File::open(format!("/proc/{}/ns/user", i32::from_ne_bytes(pid)))
                    .ok()
                    .map(OwnedFd::from)
            });
        let mut go = std::fs::File::from(go_w);
        let _ = go.write_all(if result.is_ok() { b"g" } else { b"x" });
        result
    });
    let spawned = cmd.spawn();
    // Our copies: the mapper sees end-of-file if the child died before writing its pid.
    drop(ready_w);
    drop(go_r);
    let mapped = mapper
        .join()
        .unwrap_or_else(|_| Err("the id mapper thread panicked".into()));
    let child = match (spawned, mapped) {
        (Ok(c), Ok(ns)) => {
            if let (Some(ns), Some(store)) = (ns, &store) {
                start_keeper(&exe, store, &ns);
            }
            c
        }
        (Err(e), Err(msg)) if msg == STOPPED => return Err(no_namespace(e)),
        (_, Err(msg)) => {
            return Err(ExecError::Rootless(format!(
                "cannot map your ids into the user namespace: {msg}"
            )))
        }
        (Err(e), Ok(_)) => return Err(no_namespace(e)),
    };
    drop(lock);
    wait_for(child)
}

/// Runs `cmd` (this command again) in the user namespace `ns` that an earlier kiln made, with
/// a mount namespace of its own.
fn run_joined(mut cmd: std::process::Command, ns: &OwnedFd) -> Result<Option<i32>, ExecError> {
    let ns_fd = ns.as_raw_fd();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: runs in the forked child before exec and only makes async-signal-safe syscalls
    // (prctl, getppid, setns, unshare) on integers and a descriptor the parent keeps open.
    unsafe {
        cmd.pre_exec(move || {
            crate::spawn::die_with_parent(parent)?;
            if libc::setns(ns_fd, libc::CLONE_NEWUSER) != 0 || libc::unshare(libc::CLONE_NEWNS) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        ExecError::Rootless(format!(
            "cannot join the user namespace of this store's earlier rootless kiln: {e}"
        ))
    })?;
    wait_for(child)
}

/// Waits for the re-executed kiln, passing on signals, and returns its exit code.
fn wait_for(mut child: std::process::Child) -> Result<Option<i32>, ExecError> {
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    // Ctrl-C reaches the child through the terminal's process group; a `kill` of this process
    // is passed on.
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: installs a handler that only calls kill(2), which is async-signal-safe.
        unsafe {
            libc::signal(sig, forward_signal as *const () as libc::sighandler_t);
        }
    }
    // SAFETY: ignoring SIGINT in this waiting process; the child has its own disposition.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let status = loop {
        match child.wait() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ExecError::Rootless(format!(
                    "cannot wait for the rootless kiln: {e}"
                )))
            }
        }
    };
    Ok(Some(match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 255,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_by_name_or_number() {
        let text = "alice:100000:65536\n1001:200000:1000\nbob:300000:0\n";
        assert_eq!(
            subordinate_range(text, Some("alice"), 1000),
            Some(Range {
                start: 100000,
                count: 65536
            })
        );
        assert_eq!(
            subordinate_range(text, None, 1001),
            Some(Range {
                start: 200000,
                count: 1000
            })
        );
        assert_eq!(subordinate_range(text, Some("bob"), 1002), None);
        assert_eq!(subordinate_range("garbage\n", Some("x"), 1), None);
    }
}

//! A container's network namespace on a bridge network: made and plugged in by its monitor
//! before the sandbox starts (which joins it by path), and taken down when the monitor ends.
//!
//! As root the namespace gets a veth pair into the network's Linux bridge. Rootless kiln can
//! make neither bridges nor veth pairs on the host, so there each container of the default
//! `bridge` network is connected to the host by its own `pasta` (Debian's `passt`), a userland
//! network stack, as rootless Podman does: it gets the address kiln leased it, outbound
//! traffic goes out through `pasta`'s sockets, and its gateway address reaches the host's
//! loopback. Containers cannot reach each other that way, so user-defined networks need root.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use super::commands::{self, Host, Plug};
use super::{Attachment, NetworkRecord};

/// The namespace file in a container's directory (a bind mount of the namespace).
pub(crate) const NETNS_FILE: &str = "netns";
/// Where a rootless container's `pasta` writes its process id, in the container's directory.
const PASTA_PID_FILE: &str = "pasta.pid";

/// A plugged-in namespace; dropping it destroys the namespace and with it the veth pair (or
/// stops its `pasta`).
pub(crate) struct Attached {
    netns: PathBuf,
    pasta: Option<nix::unistd::Pid>,
}

impl Attached {
    pub(crate) fn path(&self) -> &Path {
        &self.netns
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        unbind(&self.netns);
        // `pasta` quits by itself once the namespace file is gone; this is in case it did not
        // see that (its process id is checked to still be a `pasta` first).
        if let Some(pid) = self.pasta {
            if runs(pid.as_raw(), &["pasta", "passt"]) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
    }
}

/// Whether process `pid` runs a program whose name starts with one of `names` (`passt.avx2`
/// is `pasta` too): a recorded pid may have been reused by the time it is signalled.
fn runs(pid: i32, names: &[&str]) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    names.iter().any(|n| comm.trim_end().starts_with(n))
}

/// Unmounts and removes a namespace file (a no-op for one that is not there).
pub(crate) fn unbind(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

/// Whether this process is root of the host's user namespace, as making bridges and veth
/// pairs needs (rootless kiln runs in a namespace of its own).
fn host_root() -> bool {
    nix::unistd::geteuid().is_root()
        && std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
            let f: Vec<&str> = m.split_whitespace().collect();
            f == ["0", "0", "4294967295"]
        })
}

/// Fails with what to do instead when containers cannot join a network here: rootless
/// without a usable `pasta`.
pub(crate) fn check_possible(_net: &NetworkRecord) -> Result<()> {
    if host_root() {
        return Ok(());
    }
    check_pasta_usable(&kiln_exec::find_program("pasta"), Path::new(TUN_DEVICE))
}

/// The device `pasta` makes its tap interface with.
const TUN_DEVICE: &str = "/dev/net/tun";

/// Whether `pasta` (found at `pasta`) can make a tap interface with `tun`.
fn check_pasta_usable(pasta: &Option<PathBuf>, tun: &Path) -> Result<()> {
    if pasta.is_none() {
        bail!("rootless containers on `--network bridge` get their network from `pasta`, which is not installed: install Debian's `passt`, or use `--network host` or `--network none`");
    }
    match std::fs::OpenOptions::new().read(true).write(true).open(tun) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "rootless containers on `--network bridge` need `{}` to be readable and writable by you, as `pasta` makes their interface with it: run `chmod 0666 {0}` as root (Debian's udev rules set that mode), or use `--network host` or `--network none`",
            tun.display()
        ),
        Err(e) => bail!(
            "rootless containers on `--network bridge` need `{}`, which cannot be opened ({e}): load the `tun` module, or use `--network host` or `--network none`",
            tun.display()
        ),
    }
}

/// A new network namespace, bound at `path` so that it outlives the thread that made it.
fn new_namespace(path: &Path) -> Result<()> {
    unbind(path);
    let target = path.to_path_buf();
    let made = std::thread::spawn(move || -> Result<()> {
        // Only this thread moves; it ends right after.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("cannot create a network namespace")?;
        std::fs::File::create(&target)
            .with_context(|| format!("cannot create `{}`", target.display()))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| {
            format!(
                "cannot bind the network namespace at `{}`",
                target.display()
            )
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread making the network namespace panicked"))?;
    if made.is_err() {
        unbind(path);
    }
    made
}

/// Makes the container at `dir` a network namespace plugged into its network's bridge (made
/// first if missing).
pub(crate) fn attach(dir: &Path, a: &Attachment) -> Result<Attached> {
    if !host_root() {
        return attach_through_pasta(dir, a);
    }
    {
        // Two containers starting at once must not both make the bridge.
        let _lock = super::lock(store_of(dir)?)?;
        commands::ensure_bridge(&mut Host, &a.bridge, a.gateway, a.subnet)
            .with_context(|| format!("cannot set up the bridge of network `{}`", a.network))?;
    }
    plug_new_namespace(dir, a, &mut Host, std::process::id())
}

/// The store a container directory is in (`<store>/containers/<id>`).
fn store_of(dir: &Path) -> Result<&Path> {
    dir.parent()
        .and_then(Path::parent)
        .with_context(|| format!("`{}` is not in a store", dir.display()))
}

/// Makes the container at `dir` a network namespace with a veth pair into `a`'s bridge, which
/// is in the network namespace of process `host_pid` and reached through `cmds`.
fn plug_new_namespace(
    dir: &Path,
    a: &Attachment,
    cmds: &mut dyn commands::Commands,
    host_pid: u32,
) -> Result<Attached> {
    let id = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("container");
    let netns = dir.join(NETNS_FILE);
    new_namespace(&netns)?;
    let attached = Attached { netns, pasta: None };
    let host_end = format!("kv{}", &id[..id.len().min(12)]);
    commands::plug(
        cmds,
        &Plug {
            netns: attached.path(),
            host_end: &host_end,
            host_pid,
            bridge: &a.bridge,
            ip: a.ip,
            prefix: a.prefix,
            gateway: a.gateway,
        },
    )
    .with_context(|| format!("cannot plug the container into network `{}`", a.network))?;
    Ok(attached)
}

/// Rootless: makes the container at `dir` a network namespace connected to the host by a
/// `pasta` of its own, with the address and gateway kiln leased it (the default network), or
/// plugged into its user-defined network's bridge inside that network's keeper.
fn attach_through_pasta(dir: &Path, a: &Attachment) -> Result<Attached> {
    if a.network != super::DEFAULT_NETWORK {
        return attach_to_kept_network(dir, a);
    }
    let netns = dir.join(NETNS_FILE);
    new_namespace(&netns)?;
    let mut attached = Attached { netns, pasta: None };
    let pid_file = dir.join(PASTA_PID_FILE);
    let _ = std::fs::remove_file(&pid_file);
    let (ip, prefix, gateway) = (
        a.ip.to_string(),
        a.prefix.to_string(),
        a.gateway.to_string(),
    );
    let address = [
        "--ns-ifname",
        "eth0",
        "-a",
        &ip,
        "-n",
        &prefix,
        "-g",
        &gateway,
    ];
    attached.pasta = start_pasta(attached.path(), &address, &pid_file)?;
    Ok(attached)
}

/// Runs `pasta` into the network namespace at `netns` with `extra` options, writing its pid
/// to `pid_file`; returns once it has configured the namespace (it then runs in the
/// background).
fn start_pasta(netns: &Path, extra: &[&str], pid_file: &Path) -> Result<Option<nix::unistd::Pid>> {
    let out = std::process::Command::new("pasta")
        .args(["--config-net", "--quiet", "--netns"])
        .arg(netns)
        .args(extra)
        // Ports are published by kiln's own proxies (`-p`) only, never by `pasta` forwarding
        // whatever the container happens to listen on.
        .args(["-t", "none", "-u", "none", "-T", "none", "-U", "none", "--pid"])
        .arg(pid_file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("`pasta` is not installed: rootless containers on bridge networks need it (`apt-get install passt`)")
            } else {
                anyhow::anyhow!("cannot start `pasta`: {e}")
            }
        })?;
    let pid = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .map(nix::unistd::Pid::from_raw);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err
            .lines()
            .filter(|l| !l.contains("syslog"))
            .collect::<Vec<_>>()
            .join("; ");
        bail!(
            "`pasta` could not connect the network to the host ({}): {err}",
            out.status
        );
    }
    Ok(pid)
}

/// A rootless user-defined network's keeper: the process whose network namespace holds the
/// network's bridge and NAT and is connected to the host by the network's `pasta`
/// (`networks/<name>/keeper`: `PID START_TIME`).
const KEEPER_FILE: &str = "keeper";
/// The keeper's own address towards the host, and its gateway there, which `pasta` maps to the
/// host's loopback: from TEST-NET-2 (reserved for documentation), so that they never clash
/// with the host's own networks; where traffic really goes is `pasta`'s sockets on the host.
const KEPT_ADDRESS: &str = "198.51.100.2";
const KEPT_GATEWAY: &str = "198.51.100.1";
const NETWORK_PASTA_PID_FILE: &str = "pasta.pid";

/// The network's keeper (started, with its bridge, NAT and `pasta`, when there is none):
/// its pid. Called under the networks lock.
fn ensure_keeper(net_dir: &Path, a: &Attachment) -> Result<u32> {
    if let Some(pid) = kiln_exec::live_keeper(&net_dir.join(KEEPER_FILE)) {
        return Ok(pid);
    }
    let pid = kiln_exec::spawn_network_keeper()
        .with_context(|| format!("cannot start the keeper of network `{}`", a.network))?;
    let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let set_up = (|| -> Result<()> {
        use commands::Commands;
        let mut inside = commands::InNamespace { ns: &ns };
        inside.run("ip", &["link", "set", "lo", "up"], None, None)?;
        commands::ensure_bridge(&mut inside, &a.bridge, a.gateway, a.subnet)?;
        // `pasta` cannot open another process's `/proc/PID/ns/net` (it drops what that
        // needs first), but opens a bind mount of it: one in this process's mount namespace,
        // which `pasta` inherits, and told to outlive it.
        let bound = net_dir.join(NETNS_FILE);
        unbind(&bound);
        std::fs::File::create(&bound)
            .with_context(|| format!("cannot create `{}`", bound.display()))?;
        nix::mount::mount(
            Some(&ns),
            &bound,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("cannot bind the network namespace at `{}`", bound.display()))?;
        let address = ["-a", KEPT_ADDRESS, "-n", "24", "-g", KEPT_GATEWAY];
        start_pasta(
            &bound,
            &[&["--no-netns-quit"][..], &address].concat(),
            &net_dir.join(NETWORK_PASTA_PID_FILE),
        )?;
        Ok(())
    })();
    if let Err(e) = set_up {
        stop_keeper_pid(net_dir, pid);
        return Err(e.context(format!("cannot set up network `{}`", a.network)));
    }
    if let Err(e) = kiln_exec::record_keeper(&net_dir.join(KEEPER_FILE), pid) {
        stop_keeper_pid(net_dir, pid);
        return Err(e)
            .with_context(|| format!("cannot record the keeper of network `{}`", a.network));
    }
    Ok(pid)
}

/// Stops the keeper process `pid` of the network at `net_dir`, and its `pasta`.
fn stop_keeper_pid(net_dir: &Path, pid: u32) {
    let pasta = std::fs::read_to_string(net_dir.join(NETWORK_PASTA_PID_FILE))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok());
    for p in [Some(pid as i32), pasta].into_iter().flatten() {
        if runs(p, &["pasta", "passt", "kiln"]) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = std::fs::remove_file(net_dir.join(KEEPER_FILE));
    let _ = std::fs::remove_file(net_dir.join(NETWORK_PASTA_PID_FILE));
    unbind(&net_dir.join(NETNS_FILE));
}

/// Stops a rootless network's keeper and `pasta`, if it has them (`kiln network rm`).
pub(crate) fn stop_keeper(net_dir: &Path) {
    if let Some(pid) = kiln_exec::live_keeper(&net_dir.join(KEEPER_FILE)) {
        stop_keeper_pid(net_dir, pid);
    }
}

/// Rootless, a user-defined network: the container's namespace gets a veth pair into the
/// network's bridge, which lives in the network's keeper (one `pasta` connects it to the
/// host), so the network's containers reach each other as on a root bridge.
fn attach_to_kept_network(dir: &Path, a: &Attachment) -> Result<Attached> {
    let root = store_of(dir)?;
    let net_dir = super::networks_dir(root).join(&a.network);
    let keeper = {
        let _lock = super::lock(root)?;
        ensure_keeper(&net_dir, a)?
    };
    let ns = PathBuf::from(format!("/proc/{keeper}/ns/net"));
    plug_new_namespace(dir, a, &mut commands::InNamespace { ns: &ns }, keeper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_pasta_or_a_closed_tun_device_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_pasta_usable(&None, Path::new("/dev/null")).unwrap_err();
        assert!(
            err.to_string().contains("install Debian's `passt`"),
            "{err}"
        );
        let pasta = Some(dir.path().join("pasta"));
        let err = check_pasta_usable(&pasta, &dir.path().join("tun")).unwrap_err();
        assert!(err.to_string().contains("load the `tun` module"), "{err}");
        assert!(check_pasta_usable(&pasta, Path::new("/dev/null")).is_ok());
    }
}

//! A container's network namespace on a bridge network: made and plugged in by its monitor
//! before the sandbox starts (which joins it by path), and taken down when the monitor ends.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use super::commands::{self, Host, Plug};
use super::Attachment;

/// The namespace file in a container's directory (a bind mount of the namespace).
pub(crate) const NETNS_FILE: &str = "netns";

/// A plugged-in namespace; dropping it destroys the namespace and with it the veth pair.
pub(crate) struct Attached {
    netns: PathBuf,
}

impl Attached {
    pub(crate) fn path(&self) -> &Path {
        &self.netns
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        unbind(&self.netns);
    }
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

/// Fails with what to do instead when bridge networks cannot work here.
pub(crate) fn check_possible() -> Result<()> {
    if !host_root() {
        bail!("bridge networks need root: rootless kiln does not drive `pasta` or `slirp4netns` yet; use `--network host`, `--network none`, or `-p` (which works without a bridge)");
    }
    Ok(())
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
    check_possible()?;
    let root = dir
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("`{}` is not in a store", dir.display()))?;
    let id = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("container");
    let netns = dir.join(NETNS_FILE);
    new_namespace(&netns)?;
    let attached = Attached { netns };
    {
        // Two containers starting at once must not both make the bridge.
        let _lock = super::lock(root)?;
        commands::ensure_bridge(&mut Host, &a.bridge, a.gateway, a.subnet)
            .with_context(|| format!("cannot set up the bridge of network `{}`", a.network))?;
    }
    let host_end = format!("kv{}", &id[..id.len().min(12)]);
    commands::plug(
        &mut Host,
        &Plug {
            netns: attached.path(),
            host_end: &host_end,
            host_pid: std::process::id(),
            bridge: &a.bridge,
            ip: a.ip,
            prefix: a.prefix,
            gateway: a.gateway,
        },
    )
    .with_context(|| format!("cannot plug the container into network `{}`", a.network))?;
    Ok(attached)
}

//! crun on a host with cgroup v1 and v2 hierarchies both mounted ("hybrid" mode, as systemd
//! hosts of a certain age and many CI containers have them).
//!
//! kiln makes each step's cgroup itself (`cgroups.rs`) and starts the runtime in it, so crun is
//! run with `--cgroup-manager=disabled` to leave the step there. crun still checks,
//! before it looks at the manager, that no controller is enabled in the v2 hierarchy of a
//! hybrid host (`/sys/fs/cgroup/unified/cgroup.controllers` empty) and refuses to start
//! otherwise, although it would then touch no cgroup at all. So on such a host crun is started
//! in a mount namespace of its own where an empty file is bound over that one file: crun sees
//! no v2 controller, the host sees no change, and the container (which gets a fresh `/sys`
//! after `pivot_root`) never sees that namespace's mounts.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::Path;

/// The file crun reads to refuse hybrid hosts.
const UNIFIED_CONTROLLERS: &str = "/sys/fs/cgroup/unified/cgroup.controllers";

/// Whether `binary` is crun and this host is in the hybrid mode crun refuses.
pub(crate) fn crun_needs_hiding(binary: &str) -> bool {
    let is_crun = Path::new(binary).file_name().and_then(|n| n.to_str()) == Some("crun");
    is_crun && hybrid_with_v2_controllers(Path::new("/sys/fs/cgroup"))
}

/// `/sys/fs/cgroup` a tmpfs of v1 hierarchies, with a v2 hierarchy at `unified` that has
/// controllers enabled: crun's own test for the mode it refuses.
fn hybrid_with_v2_controllers(cgroup_root: &Path) -> bool {
    let fs_type = |p: &Path| nix::sys::statfs::statfs(p).map(|s| s.filesystem_type());
    let unified = cgroup_root.join("unified");
    let hybrid = fs_type(cgroup_root).is_ok_and(|t| t == nix::sys::statfs::TMPFS_MAGIC)
        && fs_type(&unified).is_ok_and(|t| t == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    hybrid
        && std::fs::read(unified.join("cgroup.controllers"))
            .is_ok_and(|c| !c.iter().all(u8::is_ascii_whitespace))
}

/// Start `cmd` in a new mount namespace (a slave of the caller's, so that nothing it mounts
/// propagates back) with `/dev/null` bound over [`UNIFIED_CONTROLLERS`].
pub(crate) fn hide_unified_controllers(cmd: &mut std::process::Command) {
    // Allocated before fork: the hook runs in the child of a multi-threaded process.
    let (Ok(root), Ok(null), Ok(target)) = (
        CString::new("/"),
        CString::new("/dev/null"),
        CString::new(UNIFIED_CONTROLLERS),
    ) else {
        return;
    };
    // SAFETY: the hook runs in the forked child before exec and makes only raw syscalls
    // (unshare, mount) on C strings allocated before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let slave = libc::MS_REC | libc::MS_SLAVE;
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                slave,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(
                null.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_crun_on_a_hybrid_host_needs_it() {
        assert!(!crun_needs_hiding("runc"));
        assert!(!crun_needs_hiding("/usr/bin/runc"));
        // A directory that is no cgroup tmpfs is never hybrid.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("unified")).unwrap();
        std::fs::write(dir.path().join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        assert!(!hybrid_with_v2_controllers(dir.path()));
    }
}

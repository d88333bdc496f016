//! Mounts inside the new root: symlink-safe path resolution, mount-point creation and OCI mount options.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Mount;

/// Resolve `path` as the container will see it: symlinks are followed *inside* `root`
/// (absolute targets restart at `root`, `..` stops at it), so an image cannot point a mount at
/// the host. Missing components are kept as written. Returns a path relative to `root`.
pub(crate) fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf, String> {
    let mut pending: VecDeque<OsString> = components(path);
    let mut out = PathBuf::new();
    let mut links = 0;
    while let Some(comp) = pending.pop_front() {
        if comp == ".." {
            out.pop();
            continue;
        }
        let candidate = out.join(&comp);
        let abs = root.join(&candidate);
        match std::fs::symlink_metadata(&abs) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(format!(
                        "`{}`: too many levels of symbolic links in the image",
                        path.display()
                    ));
                }
                let target = std::fs::read_link(&abs)
                    .map_err(|e| format!("cannot read symlink `/{}`: {e}", candidate.display()))?;
                if target.is_absolute() {
                    out = PathBuf::new();
                }
                let mut next = components(&target);
                next.extend(pending);
                pending = next;
            }
            _ => out = candidate,
        }
    }
    Ok(out)
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[derive(Debug, PartialEq)]
pub(crate) struct MountOptions {
    pub flags: MsFlags,
    pub propagation: MsFlags,
    pub bind: bool,
    pub recursive: bool,
    pub data: Vec<String>,
}

/// Split fstab-style options into mount(2) flags and filesystem data, as runc does.
pub(crate) fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        bind: false,
        recursive: false,
        data: Vec::new(),
    };
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                continue;
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let base = match opt.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                o.propagation = if opt.starts_with('r') {
                    base | MsFlags::MS_REC
                } else {
                    base
                };
                continue;
            }
            other => {
                o.data.push(other.to_string());
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
    }
    o
}

/// Applies mounts under one root and remembers what it had to create.
pub(crate) struct Mounter<'a> {
    root: &'a Path,
    /// Rootfs-relative paths created on the root filesystem itself, parents first.
    pub created: Vec<PathBuf>,
    /// Rootfs-relative destinations mounted so far: paths under them are not on the rootfs.
    mounted: Vec<PathBuf>,
    /// Whether /dev is a tmpfs we mounted, to be filled with device nodes.
    pub dev_tmpfs: bool,
}

impl<'a> Mounter<'a> {
    pub(crate) fn new(root: &'a Path) -> Self {
        Mounter {
            root,
            created: Vec::new(),
            mounted: Vec::new(),
            dev_tmpfs: false,
        }
    }

    fn on_rootfs(&self, rel: &Path) -> bool {
        !self.mounted.iter().any(|m| rel.starts_with(m) && rel != m)
    }

    /// Make `rel` exist (directories, and a file at the end when `file`), returning its host path.
    pub(crate) fn ensure(&mut self, rel: &Path, file: bool) -> Result<PathBuf, String> {
        let mut cur = PathBuf::new();
        let parts: Vec<&OsStr> = rel.iter().collect();
        for (i, part) in parts.iter().enumerate() {
            cur.push(part);
            let abs = self.root.join(&cur);
            match std::fs::symlink_metadata(&abs) {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot inspect `/{}`: {e}", cur.display())),
            }
            let last = i + 1 == parts.len();
            let made = if last && file {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&abs)
                    .map(drop)
            } else {
                std::fs::create_dir(&abs)
            };
            made.map_err(|e| {
                format!(
                    "cannot create mount point `/{}` in the root filesystem: {e}",
                    cur.display()
                )
            })?;
            if self.on_rootfs(&cur) {
                self.created.push(cur.clone());
            }
        }
        Ok(self.root.join(rel))
    }

    /// `m`'s destination (checked absolute), type, parsed options and path inside the root, as
    /// both [`Mounter::apply`] and [`Mounter::prepare_point`] read them.
    fn target<'m>(
        &self,
        m: &'m Mount,
    ) -> Result<(&'m Path, &'m str, MountOptions, PathBuf), String> {
        let dest = m.destination();
        if !dest.is_absolute() {
            return Err(format!(
                "mount destination `{}` is not absolute; start it with `/`",
                dest.display()
            ));
        }
        let typ = m.typ().as_deref().unwrap_or("none");
        let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
        let rel = resolve_in_root(self.root, dest)?;
        Ok((dest, typ, opts, rel))
    }

    /// Apply one OCI mount.
    pub(crate) fn apply(&mut self, m: &Mount) -> Result<(), String> {
        let (dest, typ, opts, rel) = self.target(m)?;
        let what = |e: nix::Error| format!("cannot mount {typ} at `{}`: {e}", dest.display());
        if typ == "bind" || opts.bind {
            let source = bind_source(m, dest)?;
            if !source.is_absolute() {
                return Err(format!(
                    "bind mount source `{}` for `{}` is not absolute; give a full host path",
                    source.display(),
                    dest.display()
                ));
            }
            let md = source_metadata(source, dest)?;
            let abs = self.ensure(&rel, !md.is_dir())?;
            let mut flags = MsFlags::MS_BIND;
            if opts.recursive {
                flags |= MsFlags::MS_REC;
            }
            mount(Some(source), &abs, None::<&str>, flags, None::<&str>).map_err(what)?;
            if !opts.flags.is_empty() {
                let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | opts.flags | MsFlags::MS_NODEV;
                mount(None::<&str>, &abs, None::<&str>, flags, None::<&str>).map_err(what)?;
            }
            forbid_devices(&abs, opts.recursive, opts.flags).map_err(what)?;
            propagate(&abs, opts.propagation).map_err(what)?;
        } else {
            let abs = self.ensure(&rel, false)?;
            // cgroup v1 does not exist on current hosts: give the unified hierarchy instead.
            let (fstype, data) = if typ == "cgroup" {
                ("cgroup2", String::new())
            } else {
                (typ, opts.data.join(","))
            };
            let source = m
                .source()
                .as_ref()
                .map(|s| s.as_os_str().to_os_string())
                .unwrap_or_else(|| OsString::from(fstype));
            let data = (!data.is_empty()).then_some(data.as_str());
            // devpts serves the step's own terminals and cannot hold other nodes; every other
            // filesystem (the /dev tmpfs included: its standard nodes are binds) is `nodev`.
            let flags = if fstype == "devpts" {
                opts.flags
            } else {
                opts.flags | MsFlags::MS_NODEV
            };
            let mounted = mount(Some(source.as_os_str()), &abs, Some(fstype), flags, data);
            // Rootless with only root mapped, gid 5 (tty) does not exist: devpts then goes without
            // the option, as rootless runc mounts it.
            let mounted = match mounted {
                Err(nix::errno::Errno::EINVAL) if fstype == "devpts" => {
                    let data: Vec<&str> = opts
                        .data
                        .iter()
                        .map(String::as_str)
                        .filter(|o| !o.starts_with("gid="))
                        .collect();
                    let data = data.join(",");
                    mount(
                        Some(source.as_os_str()),
                        &abs,
                        Some(fstype),
                        flags,
                        Some(data.as_str()),
                    )
                }
                other => other,
            };
            match mounted {
                // A user namespace (rootless mode) may mount sysfs only with a network namespace
                // of its own: with the host's network, show the host's /sys read-only, as
                // rootless runc does.
                Err(nix::errno::Errno::EPERM) if fstype == "sysfs" => {
                    mount(
                        Some("/sys"),
                        &abs,
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None::<&str>,
                    )
                    .map_err(what)?;
                    let ro = MsFlags::MS_BIND
                        | MsFlags::MS_REMOUNT
                        | MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC;
                    mount(None::<&str>, &abs, None::<&str>, ro, None::<&str>).map_err(what)?;
                }
                other => other.map_err(what)?,
            }
            propagate(&abs, opts.propagation).map_err(what)?;
            if rel == Path::new("dev") && fstype == "tmpfs" {
                self.dev_tmpfs = true;
            }
        }
        self.mounted.push(rel);
        Ok(())
    }

    /// Create `m`'s mount point as [`Mounter::apply`] would, without mounting: an external OCI
    /// runtime mounts it, and would otherwise create missing points itself, unrecorded, in the
    /// layer.
    pub(crate) fn prepare_point(&mut self, m: &Mount) -> Result<(), String> {
        let (dest, typ, opts, rel) = self.target(m)?;
        let file = if typ == "bind" || opts.bind {
            let source = bind_source(m, dest)?;
            let md = source_metadata(source, dest)?;
            !md.is_dir()
        } else {
            false
        };
        // Under an earlier mount (`/dev/pts` in the `/dev` tmpfs) the point belongs to that
        // filesystem, which the runtime mounts first: creating it here would reach the layer.
        if self.on_rootfs(&rel) {
            self.ensure(&rel, file)?;
        }
        self.mounted.push(rel);
        Ok(())
    }

    /// Whether `path` (absolute, in the container) lies on the root filesystem itself and is
    /// missing there.
    pub(crate) fn missing_on_rootfs(&self, path: &Path) -> Result<bool, String> {
        let rel = resolve_in_root(self.root, path)?;
        if !self.on_rootfs(&rel) || rel.as_os_str().is_empty() {
            return Ok(false);
        }
        Ok(std::fs::symlink_metadata(self.root.join(rel)).is_err())
    }

    /// Bind the host's basic device nodes into our /dev tmpfs and add the usual symlinks. The
    /// tmpfs is `nodev`, so these binds (which keep the host mount's flags) are the only device
    /// nodes in it that open.
    pub(crate) fn populate_dev(&mut self) -> Result<(), String> {
        for name in crate::spec::STANDARD_DEVICES {
            let host = Path::new("/dev").join(name);
            if !host.exists() {
                continue;
            }
            let rel = Path::new("dev").join(name);
            let abs = self.ensure(&rel, true)?;
            mount(
                Some(&host),
                &abs,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("cannot bind the host's `{}`: {e}", host.display()))?;
        }
        let links = [
            ("ptmx", "pts/ptmx"),
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ];
        for (name, target) in links {
            let abs = self.root.join("dev").join(name);
            if std::fs::symlink_metadata(&abs).is_ok() {
                continue;
            }
            std::os::unix::fs::symlink(target, &abs)
                .map_err(|e| format!("cannot create `/dev/{name}`: {e}"))?;
        }
        Ok(())
    }

    /// Hide a path (Docker's masked paths): /dev/null over files, an empty read-only tmpfs over directories.
    pub(crate) fn mask(&mut self, path: &Path) -> Result<(), String> {
        let rel = resolve_in_root(self.root, path)?;
        let abs = self.root.join(&rel);
        let Ok(md) = std::fs::metadata(&abs) else {
            return Ok(());
        };
        let r = if md.is_dir() {
            mount(
                Some("tmpfs"),
                &abs,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
                None::<&str>,
            )
        } else {
            mount(
                Some("/dev/null"),
                &abs,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        r.map_err(|e| format!("cannot mask `{}`: {e}", path.display()))
    }

    /// Make a path read-only (Docker's readonly paths) by binding it over itself.
    pub(crate) fn make_readonly(&mut self, path: &Path) -> Result<(), String> {
        let rel = resolve_in_root(self.root, path)?;
        let abs = self.root.join(&rel);
        if std::fs::symlink_metadata(&abs).is_err() {
            return Ok(());
        }
        let err = |e: nix::Error| format!("cannot make `{}` read-only: {e}", path.display());
        mount(
            Some(&abs),
            &abs,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err)?;
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        mount(None::<&str>, &abs, None::<&str>, flags, None::<&str>).map_err(err)
    }
}

/// `MOUNT_ATTR_NODEV` of mount_setattr(2) and fsmount(2).
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Make the bind mount at `abs` `nodev`, and with `recursive` every mount below it too (an
/// `rbind` of a directory with a devtmpfs under it would otherwise bring the host's disks in).
/// Only the flag is added: flags the source has locked (rootless) stay as they are.
fn forbid_devices(abs: &Path, recursive: bool, flags: MsFlags) -> Result<(), nix::Error> {
    let path = std::ffi::CString::new(abs.as_os_str().as_encoded_bytes())
        .map_err(|_| nix::errno::Errno::EINVAL)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let at_flags = if recursive {
        libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    // SAFETY: mount_setattr reads a NUL-terminated path and one mount_attr of the size given,
    // both alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            at_flags as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        return Ok(());
    }
    match nix::errno::Errno::last() {
        // Before Linux 5.12: the remount covers the mount itself (not the ones below it).
        nix::errno::Errno::ENOSYS => mount(
            None::<&str>,
            abs,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | MsFlags::MS_NODEV,
            None::<&str>,
        ),
        e => Err(e),
    }
}

/// The host source of bind mount `m` at `dest`, which must have one.
fn bind_source<'m>(m: &'m Mount, dest: &Path) -> Result<&'m Path, String> {
    match m.source() {
        Some(source) => Ok(source),
        None => Err(format!(
            "bind mount at `{}` has no source; give the host path to mount",
            dest.display()
        )),
    }
}

/// The metadata of bind mount source `source` (for `dest`), followed through links.
fn source_metadata(source: &Path, dest: &Path) -> Result<std::fs::Metadata, String> {
    std::fs::metadata(source).map_err(|e| {
        format!(
            "bind mount source `{}` for `{}`: {e}",
            source.display(),
            dest.display()
        )
    })
}

fn propagate(abs: &Path, propagation: MsFlags) -> Result<(), nix::Error> {
    if propagation.is_empty() {
        return Ok(());
    }
    mount(None::<&str>, abs, None::<&str>, propagation, None::<&str>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["nosuid", "ro", "mode=755", "size=1k", "rprivate", "rbind"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = parse_options(&opts);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_RDONLY);
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert!(o.bind && o.recursive);
        assert_eq!(o.data, vec!["mode=755", "size=1k"]);
        let o = parse_options(&["ro".to_string(), "rw".to_string()]);
        assert!(o.flags.is_empty());
    }

    #[test]
    fn resolution_stays_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../real", root.join("real/sub/up")).unwrap();
        std::os::unix::fs::symlink("loop2", root.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/abs/passwd")).unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/real/sub/up/x")).unwrap(),
            PathBuf::from("real/x")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/../../proc")).unwrap(),
            PathBuf::from("proc")
        );
        assert!(resolve_in_root(root, Path::new("/loop1")).is_err());
    }

    #[test]
    fn ensure_reports_only_paths_on_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mounter::new(dir.path());
        m.ensure(Path::new("a/b"), false).unwrap();
        m.mounted.push(PathBuf::from("a"));
        m.ensure(Path::new("a/c/file"), true).unwrap();
        assert!(dir.path().join("a/c/file").is_file());
        assert_eq!(m.created, vec![PathBuf::from("a"), PathBuf::from("a/b")]);
    }
}

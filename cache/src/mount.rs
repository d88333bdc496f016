//! Mounting snapshot stacks: the option string is planned by a pure function and the syscalls
//! sit behind the `Mounter` trait, so the planning is tested without root. Stacks too deep for
//! one page of mount options go through the new mount API (`fsconfig` `lowerdir+`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::CacheError;

/// The kernel takes at most one page of mount data; stay clearly below it.
pub(crate) const MAX_OPTIONS_LEN: usize = 4000;

/// One mount to perform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MountRequest {
    Overlay {
        target: PathBuf,
        options: String,
    },
    /// An overlay configured one layer at a time (`fsopen`/`fsconfig`), for deep stacks.
    OverlayLayers {
        target: PathBuf,
        lower: Vec<PathBuf>,
        upper: Option<(PathBuf, PathBuf)>,
    },
    Bind {
        source: PathBuf,
        target: PathBuf,
        readonly: bool,
    },
}

/// The syscalls, real or recorded.
pub(crate) trait Mounter: Send + Sync + fmt::Debug {
    fn mount(&self, req: &MountRequest) -> Result<(), CacheError>;
    fn unmount(&self, target: &Path) -> Result<(), CacheError>;
}

/// Mounts with nix (`mount(2)` / `umount2(2)`). Every mount of snapshots is `nodev`: a layer
/// may ship device nodes (images do), and none of them may open a host device through kiln.
#[derive(Debug)]
pub(crate) struct RealMounter;

impl Mounter for RealMounter {
    fn mount(&self, req: &MountRequest) -> Result<(), CacheError> {
        use nix::mount::{mount, MsFlags};
        match req {
            MountRequest::Overlay { target, options } => mount(
                Some("overlay"),
                target,
                Some("overlay"),
                MsFlags::MS_NODEV,
                Some(options.as_str()),
            )
            .map_err(|source| CacheError::Mount {
                action: "overlay mount",
                target: target.clone(),
                source,
            }),
            MountRequest::OverlayLayers {
                target,
                lower,
                upper,
            } => fsconfig_overlay(lower, upper.as_ref(), target),
            MountRequest::Bind {
                source,
                target,
                readonly,
            } => {
                mount(
                    Some(source),
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| CacheError::Mount {
                    action: "bind mount",
                    target: target.clone(),
                    source: e,
                })?;
                // A bind mount ignores MS_RDONLY and MS_NODEV on creation; it takes a remount.
                let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV;
                if *readonly {
                    flags |= MsFlags::MS_RDONLY;
                }
                if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
                    let _ = self.unmount(target);
                    return Err(CacheError::Mount {
                        action: "nodev remount",
                        target: target.clone(),
                        source: e,
                    });
                }
                Ok(())
            }
        }
    }

    fn unmount(&self, target: &Path) -> Result<(), CacheError> {
        nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).map_err(|source| {
            CacheError::Mount {
                action: "unmount",
                target: target.to_path_buf(),
                source,
            }
        })
    }
}

// From <linux/mount.h>; libc has the syscall numbers but not these flags.
const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;

fn cpath(p: &Path, target: &Path) -> Result<std::ffi::CString, CacheError> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| CacheError::MountRequest {
        target: target.to_path_buf(),
        reason: format!("path `{}` holds a NUL byte", p.display()),
    })
}

/// Takes ownership of a descriptor returned by a raw syscall, or reports its errno.
fn owned_fd(
    ret: libc::c_long,
    action: &'static str,
    target: &Path,
) -> Result<std::os::fd::OwnedFd, CacheError> {
    use std::os::fd::FromRawFd;
    if ret < 0 {
        return Err(CacheError::Mount {
            action,
            target: target.to_path_buf(),
            source: nix::Error::last(),
        });
    }
    let fd = libc::c_int::try_from(ret).map_err(|_| CacheError::Mount {
        action,
        target: target.to_path_buf(),
        source: nix::Error::EBADF,
    })?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Mounts an overlay with one `lowerdir+` per layer, so the stack depth is not limited by the
/// size of a mount option string (Linux 6.8+).
fn fsconfig_overlay(
    lower: &[PathBuf],
    upper: Option<&(PathBuf, PathBuf)>,
    target: &Path,
) -> Result<(), CacheError> {
    use std::os::fd::AsRawFd;
    // SAFETY: fsopen reads a NUL-terminated name that outlives the call.
    let ret = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) };
    let fs_fd = owned_fd(ret, "fsopen(overlay)", target)?;
    let set = |key: &std::ffi::CStr, value: &std::ffi::CStr| -> Result<(), CacheError> {
        // SAFETY: a live fs context fd, NUL-terminated key and value that outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs_fd.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        if r < 0 {
            return Err(CacheError::Mount {
                action: "fsconfig of the overlay",
                target: target.to_path_buf(),
                source: nix::Error::last(),
            });
        }
        Ok(())
    };
    for l in lower {
        set(c"lowerdir+", &cpath(l, target)?)?;
    }
    if let Some((fs, work)) = upper {
        set(c"upperdir", &cpath(fs, target)?)?;
        set(c"workdir", &cpath(work, target)?)?;
    }
    set(c"index", c"off")?;
    if crate::snapshots::in_user_namespace() {
        set(c"redirect_dir", c"nofollow")?;
        set_flag(&fs_fd, c"userxattr", target)?;
    }
    // SAFETY: a live fs context fd; CMD_CREATE takes no key or value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs_fd.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if r < 0 {
        return Err(CacheError::Mount {
            action: "creating the overlay",
            target: target.to_path_buf(),
            source: nix::Error::last(),
        });
    }
    // SAFETY: a created fs context fd and plain attribute flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs_fd.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_NODEV,
        )
    };
    let mnt_fd = owned_fd(ret, "fsmount of the overlay", target)?;
    let target_c = cpath(target, target)?;
    // SAFETY: a live mount fd, an empty NUL-terminated from-path (F_EMPTY_PATH) and a
    // NUL-terminated target path, all outliving the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt_fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(CacheError::Mount {
            action: "move_mount of the overlay",
            target: target.to_path_buf(),
            source: nix::Error::last(),
        });
    }
    Ok(())
}

/// `fsconfig(FSCONFIG_SET_FLAG, key)`.
fn set_flag(
    fs_fd: &std::os::fd::OwnedFd,
    key: &std::ffi::CStr,
    target: &Path,
) -> Result<(), CacheError> {
    use std::os::fd::AsRawFd;
    // SAFETY: a live fs context fd and a NUL-terminated key that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs_fd.as_raw_fd(),
            libc::FSCONFIG_SET_FLAG,
            key.as_ptr(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    };
    if r < 0 {
        return Err(CacheError::Mount {
            action: "fsconfig of the overlay",
            target: target.to_path_buf(),
            source: nix::Error::last(),
        });
    }
    Ok(())
}

/// Checks a directory can be named inside overlay options (`,` and `:` are separators there).
fn option_path(p: &Path, target: &Path) -> Result<String, CacheError> {
    let s = p.to_str().ok_or_else(|| CacheError::MountRequest {
        target: target.to_path_buf(),
        reason: format!(
            "path `{}` is not UTF-8; use a plain `KILN_ROOT`",
            p.display()
        ),
    })?;
    if s.contains([',', ':', '\\']) {
        return Err(CacheError::MountRequest {
            target: target.to_path_buf(),
            reason: format!(
                "path `{s}` holds `,`, `:` or `\\`, which overlay options cannot carry; use a `KILN_ROOT` without them"
            ),
        });
    }
    Ok(s.to_string())
}

/// Plans the mount: `lower` are fs dirs, top first; `upper` is (fs dir, work dir).
pub(crate) fn plan(
    lower: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    target: &Path,
) -> Result<MountRequest, CacheError> {
    match (lower, upper) {
        ([], None) => Err(CacheError::MountRequest {
            target: target.to_path_buf(),
            reason: "no lower and no upper snapshot given; pass at least one".into(),
        }),
        ([], Some((fs, _))) => Ok(MountRequest::Bind {
            source: fs.to_path_buf(),
            target: target.to_path_buf(),
            readonly: false,
        }),
        ([only], None) => Ok(MountRequest::Bind {
            source: only.clone(),
            target: target.to_path_buf(),
            readonly: true,
        }),
        (lower, upper) => {
            let dirs = lower
                .iter()
                .map(|p| option_path(p, target))
                .collect::<Result<Vec<_>, _>>()?;
            let mut options = format!("lowerdir={}", dirs.join(":"));
            if let Some((fs, work)) = upper {
                options.push_str(&format!(
                    ",upperdir={},workdir={}",
                    option_path(fs, target)?,
                    option_path(work, target)?
                ));
            }
            // No inode index: the same lower dirs are shared by many concurrent mounts.
            options.push_str(",index=off");
            if crate::snapshots::in_user_namespace() {
                // Rootless: overlayfs keeps its xattrs in `user.*`, and then refuses to follow
                // redirects.
                options.push_str(",redirect_dir=nofollow,userxattr");
            }
            if options.len() > MAX_OPTIONS_LEN {
                // One page of options is not enough: hand the layers over one by one.
                return Ok(MountRequest::OverlayLayers {
                    target: target.to_path_buf(),
                    lower: lower.to_vec(),
                    upper: upper.map(|(f, w)| (f.to_path_buf(), w.to_path_buf())),
                });
            }
            Ok(MountRequest::Overlay {
                target: target.to_path_buf(),
                options,
            })
        }
    }
}

/// A mounted snapshot stack; unmounted (lazily, `MNT_DETACH`) when dropped.
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
    mounter: Arc<dyn Mounter>,
    mounted: bool,
}

impl MountGuard {
    pub(crate) fn mount(mounter: Arc<dyn Mounter>, req: &MountRequest) -> Result<Self, CacheError> {
        mounter.mount(req)?;
        let target = match req {
            MountRequest::Overlay { target, .. }
            | MountRequest::OverlayLayers { target, .. }
            | MountRequest::Bind { target, .. } => target.clone(),
        };
        Ok(MountGuard {
            target,
            mounter,
            mounted: true,
        })
    }

    /// Where the stack is mounted.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts now, reporting an error that `Drop` would have to swallow.
    pub fn unmount(mut self) -> Result<(), CacheError> {
        self.mounted = false;
        self.mounter.unmount(&self.target)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted {
            // Nothing to report to from a destructor; a detached mount goes away once unused.
            let _ = self.mounter.unmount(&self.target);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what would have been mounted.
    #[derive(Debug, Default)]
    pub(crate) struct FakeMounter {
        pub(crate) log: Mutex<Vec<String>>,
    }

    impl Mounter for FakeMounter {
        fn mount(&self, req: &MountRequest) -> Result<(), CacheError> {
            self.log.lock().unwrap().push(format!("mount {req:?}"));
            Ok(())
        }
        fn unmount(&self, target: &Path) -> Result<(), CacheError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("unmount {}", target.display()));
            Ok(())
        }
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn overlay_options_read_write() {
        let req = plan(
            &[p("/k/snapshots/3/fs"), p("/k/snapshots/1/fs")],
            Some((
                Path::new("/k/snapshots/4/fs"),
                Path::new("/k/snapshots/4/work"),
            )),
            Path::new("/mnt"),
        )
        .unwrap();
        assert_eq!(
            req,
            MountRequest::Overlay {
                target: p("/mnt"),
                options: "lowerdir=/k/snapshots/3/fs:/k/snapshots/1/fs,upperdir=/k/snapshots/4/fs,workdir=/k/snapshots/4/work,index=off".into()
            }
        );
    }

    #[test]
    fn overlay_options_read_only_and_binds() {
        let req = plan(&[p("/a"), p("/b")], None, Path::new("/mnt")).unwrap();
        assert_eq!(
            req,
            MountRequest::Overlay {
                target: p("/mnt"),
                options: "lowerdir=/a:/b,index=off".into()
            }
        );
        assert_eq!(
            plan(&[p("/a")], None, Path::new("/mnt")).unwrap(),
            MountRequest::Bind {
                source: p("/a"),
                target: p("/mnt"),
                readonly: true
            }
        );
        assert_eq!(
            plan(
                &[],
                Some((Path::new("/u"), Path::new("/w"))),
                Path::new("/mnt")
            )
            .unwrap(),
            MountRequest::Bind {
                source: p("/u"),
                target: p("/mnt"),
                readonly: false
            }
        );
        assert!(plan(&[], None, Path::new("/mnt")).is_err());
    }

    #[test]
    fn deep_stacks_use_the_new_mount_api_and_unsafe_paths_are_refused() {
        let many: Vec<PathBuf> = (0..200)
            .map(|i| p(&format!("/var/lib/kiln/snapshots/{i}/fs")))
            .collect();
        let upper = (p("/u/fs"), p("/u/work"));
        let req = plan(&many, Some((&upper.0, &upper.1)), Path::new("/mnt")).unwrap();
        assert_eq!(
            req,
            MountRequest::OverlayLayers {
                target: p("/mnt"),
                lower: many.clone(),
                upper: Some(upper)
            }
        );
        // Just under the limit still uses the option string.
        let few = &many[..100];
        assert!(matches!(
            plan(few, None, Path::new("/mnt")).unwrap(),
            MountRequest::Overlay { options, .. } if options.len() <= MAX_OPTIONS_LEN
        ));
        assert!(plan(&[p("/a:b"), p("/c")], None, Path::new("/mnt")).is_err());
        assert!(plan(&[p("/a,b"), p("/c")], None, Path::new("/mnt")).is_err());
    }

    #[test]
    fn guard_unmounts_on_drop_once() {
        let fake = Arc::new(FakeMounter::default());
        let req = plan(&[p("/a"), p("/b")], None, Path::new("/mnt")).unwrap();
        let guard = MountGuard::mount(fake.clone(), &req).unwrap();
        assert_eq!(guard.path(), Path::new("/mnt"));
        drop(guard);
        let guard = MountGuard::mount(fake.clone(), &req).unwrap();
        guard.unmount().unwrap();
        let log = fake.log.lock().unwrap();
        assert_eq!(log.len(), 4);
        assert!(log[0].starts_with("mount Overlay"));
        assert_eq!(log[1], "unmount /mnt");
        assert_eq!(log[3], "unmount /mnt");
    }
}

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
                cause: source,
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
                    cause: e,
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
                        cause: e,
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
                cause: source,
            }
        })
    }
}

/// Mounts an overlay with one `lowerdir+` per layer, so the stack depth is not limited by the
/// size of a mount option string (Linux 6.8+). The calls are kiln-sys's, shared with the sandbox.
fn fsconfig_overlay(
    lower: &[PathBuf],
    upper: Option<&(PathBuf, PathBuf)>,
    target: &Path,
) -> Result<(), CacheError> {
    use kiln_sys::{OverlayError, OverlayParam, OverlayStep};
    let mut params = vec![OverlayParam::String("index", "off")];
    if kiln_sys::in_user_namespace() {
        params.push(OverlayParam::String("redirect_dir", "nofollow"));
        params.push(OverlayParam::Flag("userxattr"));
    }
    let upper = upper.map(|(fs, work)| (fs.as_path(), work.as_path()));
    kiln_sys::mount_overlay_layers(lower, upper, &params, target).map_err(|e| match e {
        OverlayError::NulInPath(p) => CacheError::MountRequest {
            target: target.to_path_buf(),
            reason: format!("path `{}` holds a NUL byte", p.display()),
        },
        OverlayError::Syscall { step, source } => CacheError::Mount {
            action: match step {
                OverlayStep::Open => "fsopen(overlay)",
                OverlayStep::Config { .. } => "fsconfig of the overlay",
                OverlayStep::Create => "creating the overlay",
                OverlayStep::Mount => "fsmount of the overlay",
                OverlayStep::Move => "move_mount of the overlay",
            },
            target: target.to_path_buf(),
            cause: nix::Error::from_raw(source.raw_os_error().unwrap_or(0)),
        },
    })
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
            if kiln_sys::in_user_namespace() {
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

//! Mounts the overlay root: mount(2) when the options fit in a page, else the new mount API
//! (`fsconfig` `lowerdir+`, one layer per call), which has no length or character limits.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

/// Options that keep the upper directory a plain layer diff (whiteouts and opaque xattrs only):
/// no index, no redirect or metacopy xattrs that an exporter would have to understand.
const PLAIN_DIFF: [(&str, &str); 3] = [
    ("index", "off"),
    ("redirect_dir", "off"),
    ("metacopy", "off"),
];

/// [`PLAIN_DIFF`] as a user namespace may have it: there `redirect_dir=off` means `follow`
/// (on kernels built to always follow redirects), which `userxattr` refuses; `nofollow` is
/// the same for a plain diff (no redirects made or read).
fn plain_diff(userxattr: bool) -> [(&'static str, &'static str); 3] {
    PLAIN_DIFF.map(|(k, v)| match (k, userxattr) {
        ("redirect_dir", true) => (k, "nofollow"),
        _ => (k, v),
    })
}

/// The root is `nodev`: a node a step creates (`mknod`), or one an image ships, may exist in the
/// layer but never opens the device it names. Standard devices come from binds in `/dev`.
const ROOT_FLAGS: MsFlags = MsFlags::MS_NODEV;

/// mount(2) copies at most one page of options.
const MAX_LEGACY_DATA: usize = 4095;

pub(crate) struct Layers<'a> {
    pub lower: &'a [PathBuf],
    pub upper: &'a Path,
    pub work: &'a Path,
    /// Keep overlayfs's metadata in `user.overlay.*` xattrs: the only kind a user namespace
    /// (rootless mode) may set.
    pub userxattr: bool,
}

/// Legacy option string, or `None` when some path cannot be written in it or it is too long.
pub(crate) fn legacy_data(l: &Layers<'_>) -> Option<String> {
    let plain = |p: &Path| {
        let s = p.to_str()?;
        (p.is_absolute() && !s.contains([',', ':', '\\', '\n'])).then(|| s.to_string())
    };
    let lowers = l
        .lower
        .iter()
        .map(|p| plain(p))
        .collect::<Option<Vec<_>>>()?;
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        plain(l.upper)?,
        plain(l.work)?
    );
    for (k, v) in plain_diff(l.userxattr) {
        data.push_str(&format!(",{k}={v}"));
    }
    if l.userxattr {
        data.push_str(",userxattr");
    }
    (data.len() <= MAX_LEGACY_DATA).then_some(data)
}

pub(crate) fn mount_overlay(l: &Layers<'_>, target: &Path) -> Result<(), String> {
    if let Some(data) = legacy_data(l) {
        return mount(
            Some("overlay"),
            target,
            Some("overlay"),
            ROOT_FLAGS,
            Some(data.as_str()),
        )
        .map_err(|e| {
            format!(
                "cannot mount the overlay root at `{}`: {e} ({data})",
                target.display()
            )
        });
    }
    mount_with_fsconfig(l, target).map_err(|e| {
        format!(
            "cannot mount the overlay root ({} layers) at `{}`: {e}",
            l.lower.len(),
            target.display()
        )
    })
}

fn cpath(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| format!("path `{}` contains a NUL byte", p.display()))
}

fn last_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn set_string(fs: &OwnedFd, key: &str, value: &CString) -> Result<(), String> {
    let ckey = CString::new(key).map_err(|_| "bad key".to_string())?;
    // SAFETY: fsconfig reads two NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            libc::FSCONFIG_SET_STRING,
            ckey.as_ptr(),
            value.as_ptr(),
            0,
        )
    };
    if r < 0 {
        return Err(last_error(&format!(
            "fsconfig `{key}={}`",
            value.to_string_lossy()
        )));
    }
    Ok(())
}

fn mount_with_fsconfig(l: &Layers<'_>, target: &Path) -> Result<(), String> {
    let name = CString::new("overlay").map_err(|_| "bad name".to_string())?;
    // SAFETY: fsopen reads one NUL-terminated string.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), libc::FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(last_error("fsopen(overlay)"));
    }
    // SAFETY: not a syscall; fsopen returned a fresh descriptor nothing else owns.
    let fs = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    for lower in l.lower {
        set_string(&fs, "lowerdir+", &cpath(lower)?)?;
    }
    set_string(&fs, "upperdir", &cpath(l.upper)?)?;
    set_string(&fs, "workdir", &cpath(l.work)?)?;
    for (k, v) in plain_diff(l.userxattr) {
        set_string(
            &fs,
            k,
            &CString::new(v).map_err(|_| "bad value".to_string())?,
        )?;
    }
    if l.userxattr {
        let key = CString::new("userxattr").map_err(|_| "bad key".to_string())?;
        // SAFETY: fsconfig reads one NUL-terminated key that outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                libc::FSCONFIG_SET_FLAG,
                key.as_ptr(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        };
        if r < 0 {
            return Err(last_error("fsconfig `userxattr`"));
        }
    }
    // SAFETY: fsconfig with a command and no pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            libc::FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if r < 0 {
        return Err(last_error("creating the overlay (fsconfig)"));
    }
    // SAFETY: fsmount takes the fs context descriptor and flags.
    let m = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            super::mounts::MOUNT_ATTR_NODEV,
        )
    };
    if m < 0 {
        return Err(last_error("fsmount"));
    }
    // SAFETY: not a syscall; fsmount returned a fresh descriptor nothing else owns.
    let mnt = unsafe { OwnedFd::from_raw_fd(m as i32) };
    let empty = CString::new("").map_err(|_| "bad path".to_string())?;
    let ctarget = cpath(target)?;
    // SAFETY: move_mount reads two NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            ctarget.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(last_error("move_mount"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_data_only_when_it_fits() {
        let lower = vec![PathBuf::from("/a"), PathBuf::from("/b")];
        let l = Layers {
            lower: &lower,
            upper: Path::new("/u"),
            work: Path::new("/w"),
            userxattr: false,
        };
        assert_eq!(
            legacy_data(&l).as_deref(),
            Some("lowerdir=/a:/b,upperdir=/u,workdir=/w,index=off,redirect_dir=off,metacopy=off")
        );
        let odd = vec![PathBuf::from("/a:b")];
        let l2 = Layers { lower: &odd, ..l };
        assert_eq!(legacy_data(&l2), None);
        let many: Vec<PathBuf> = (0..300)
            .map(|i| PathBuf::from(format!("/layer/{i:020}")))
            .collect();
        let l3 = Layers {
            lower: &many,
            upper: Path::new("/u"),
            work: Path::new("/w"),
            userxattr: false,
        };
        let l4 = Layers {
            lower: &lower,
            upper: Path::new("/u"),
            work: Path::new("/w"),
            userxattr: true,
        };
        assert!(legacy_data(&l4)
            .unwrap()
            .ends_with(",metacopy=off,userxattr"));
        assert_eq!(legacy_data(&l3), None);
    }
}

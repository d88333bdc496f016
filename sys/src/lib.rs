//! kiln-sys: the Linux calls that both `kiln-cache` (mounting snapshot stacks) and `kiln-exec`
//! (mounting a sandbox's root) make, written once. Neither of those crates may depend on the
//! other (docs/architecture.md, "The arrows"), so the shared wrappers live below both, as youki
//! keeps its syscalls in one module. It knows nothing of snapshots or specs: each caller picks
//! its own overlay options and words its own errors.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Whether this process runs in the host's (initial) user namespace, whose uid map is the
/// identity over every id; `None` when `/proc/self/uid_map` cannot be read.
pub fn in_initial_user_namespace() -> Option<bool> {
    let map = std::fs::read_to_string("/proc/self/uid_map").ok()?;
    Some(map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
}

/// Whether this process runs in a user namespace other than the host's (rootless kiln). An
/// unreadable uid map counts as the host's.
pub fn in_user_namespace() -> bool {
    in_initial_user_namespace() == Some(false)
}

/// One `fsconfig` call on the overlay's context, after its layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverlayParam<'a> {
    /// `FSCONFIG_SET_STRING key=value`, e.g. `index=off`.
    String(&'a str, &'a str),
    /// `FSCONFIG_SET_FLAG key`, e.g. `userxattr`.
    Flag(&'a str),
}

/// The call of [`mount_overlay_layers`] that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverlayStep {
    /// `fsopen("overlay")`.
    Open,
    /// `fsconfig` of a layer directory (`lowerdir+`, `upperdir`, `workdir`) or a parameter.
    Config { key: String, value: Option<String> },
    /// `fsconfig(FSCONFIG_CMD_CREATE)`: the kernel checked the whole configuration.
    Create,
    /// `fsmount`.
    Mount,
    /// `move_mount` onto the target.
    Move,
}

/// Why [`mount_overlay_layers`] failed.
#[derive(Debug)]
pub enum OverlayError {
    /// A path holds a NUL byte, so no syscall can name it.
    NulInPath(PathBuf),
    /// A call failed with this error.
    Syscall {
        step: OverlayStep,
        source: std::io::Error,
    },
}

impl std::fmt::Display for OverlayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverlayError::NulInPath(p) => write!(f, "path `{}` holds a NUL byte", p.display()),
            OverlayError::Syscall { step, source } => match step {
                OverlayStep::Open => write!(f, "fsopen(overlay): {source}"),
                OverlayStep::Config { key, value: None } => {
                    write!(f, "fsconfig `{key}`: {source}")
                }
                OverlayStep::Config {
                    key,
                    value: Some(v),
                } => write!(f, "fsconfig `{key}={v}`: {source}"),
                OverlayStep::Create => write!(f, "creating the overlay: {source}"),
                OverlayStep::Mount => write!(f, "fsmount of the overlay: {source}"),
                OverlayStep::Move => write!(f, "move_mount of the overlay: {source}"),
            },
        }
    }
}

impl std::error::Error for OverlayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OverlayError::NulInPath(_) => None,
            OverlayError::Syscall { source, .. } => Some(source),
        }
    }
}

fn cpath(p: &Path) -> Result<CString, OverlayError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| OverlayError::NulInPath(p.to_path_buf()))
}

fn cstr(s: &str) -> Result<CString, OverlayError> {
    CString::new(s).map_err(|_| OverlayError::NulInPath(PathBuf::from(s)))
}

fn failed(step: OverlayStep) -> OverlayError {
    OverlayError::Syscall {
        step,
        source: std::io::Error::last_os_error(),
    }
}

/// Mounts an overlay at `target` through the new mount API: one `lowerdir+` per layer (`lower`,
/// top first), so the stack depth is not limited by the one page of mount(2) options nor its
/// separators (Linux 6.8+); then `upperdir`/`workdir` from `upper`, then `params` in order. The
/// mount is `nodev`: a layer may ship device nodes, and none may open a host device.
pub fn mount_overlay_layers(
    lower: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    params: &[OverlayParam<'_>],
    target: &Path,
) -> Result<(), OverlayError> {
    let mut config: Vec<(CString, Option<CString>)> = Vec::new();
    for l in lower {
        config.push((cstr("lowerdir+")?, Some(cpath(l)?)));
    }
    if let Some((dir, work)) = upper {
        config.push((cstr("upperdir")?, Some(cpath(dir)?)));
        config.push((cstr("workdir")?, Some(cpath(work)?)));
    }
    for p in params {
        config.push(match p {
            OverlayParam::String(k, v) => (cstr(k)?, Some(cstr(v)?)),
            OverlayParam::Flag(k) => (cstr(k)?, None),
        });
    }
    let target_c = cpath(target)?;

    // SAFETY: fsopen reads a NUL-terminated name that outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), libc::FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(failed(OverlayStep::Open));
    }
    // SAFETY: not a syscall; fsopen returned a fresh descriptor nothing else owns.
    let fs = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    for (key, value) in &config {
        let (cmd, value_ptr) = match value {
            Some(v) => (libc::FSCONFIG_SET_STRING, v.as_ptr()),
            None => (libc::FSCONFIG_SET_FLAG, std::ptr::null()),
        };
        // SAFETY: a live fs context fd; NUL-terminated key and value (or null for a flag)
        // that outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                cmd,
                key.as_ptr(),
                value_ptr,
                0,
            )
        };
        if r < 0 {
            return Err(failed(OverlayStep::Config {
                key: key.to_string_lossy().into_owned(),
                value: value.as_ref().map(|v| v.to_string_lossy().into_owned()),
            }));
        }
    }
    // SAFETY: a live fs context fd; CMD_CREATE takes no key or value.
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
        return Err(failed(OverlayStep::Create));
    }
    // SAFETY: a created fs context fd and plain attribute flags.
    let m = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            libc::MOUNT_ATTR_NODEV,
        )
    };
    if m < 0 {
        return Err(failed(OverlayStep::Mount));
    }
    // SAFETY: not a syscall; fsmount returned a fresh descriptor nothing else owns.
    let mnt = unsafe { OwnedFd::from_raw_fd(m as i32) };
    // SAFETY: a live mount fd, an empty NUL-terminated from-path (F_EMPTY_PATH) and a
    // NUL-terminated target path, all outliving the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(failed(OverlayStep::Move));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_byte_in_a_layer_is_refused_before_any_syscall() {
        let lower = vec![PathBuf::from("/a\0b")];
        let err = mount_overlay_layers(&lower, None, &[], Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(err, OverlayError::NulInPath(ref p) if p == Path::new("/a\0b")));
        assert_eq!(err.to_string(), "path `/a\0b` holds a NUL byte");
    }
}

//! Removes the mount stubs a run created in the upper directory, as BuildKit's stub cleaner
//! does, so that a step that did not touch `/etc` leaves no `etc/` in its layer.
//!
//! A mount point missing from the image (`/etc/hosts`, a `RUN --mount` target) is created in the overlay before the mount, and overlayfs copies every
//! existing directory above it up into the upper directory. Removing the stub alone leaves
//! those copied-up directories behind, and the layer differ sees `etc/` (or `var/`, ...)
//! changed in every step. So after the stubs, each of their ancestors in the upper directory is
//! removed too when it is no more than an untouched copy: empty, not opaque, and with the mode,
//! owner and extended attributes of the directory it copies in the layers below. Only its
//! modification time may differ, and that the stub's creation and removal changed anyway.
//!
//! `/dev`, `/proc` and `/sys` are the exception: runc creates them (mode 0755) for its own
//! mounts and leaves them, and BuildKit's stub cleaner only knows the build's mounts, so a
//! `RUN` on a root filesystem without them leaves them in its layer. Kiln keeps them too.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The mount points runc leaves in the root filesystem (see the module's header).
const RUNTIME_MOUNT_POINTS: [&str; 3] = ["dev", "proc", "sys"];

/// Remove `created` (paths relative to the root, parents before children, as the sandbox
/// reports them) from `upper`, each only if it is still an empty directory or an empty file,
/// then the copied-up directories above them that the step left untouched. The runtime's own
/// mount points are kept, with runc's mode.
pub(crate) fn remove(lower: &[PathBuf], upper: &Path, created: &[PathBuf]) {
    let (kept, created): (Vec<PathBuf>, Vec<PathBuf>) = created
        .iter()
        .cloned()
        .partition(|p| RUNTIME_MOUNT_POINTS.iter().any(|r| p.as_os_str() == *r));
    for rel in kept {
        use std::os::unix::fs::PermissionsExt;
        let abs = upper.join(rel);
        if std::fs::symlink_metadata(&abs).is_ok_and(|md| md.is_dir()) {
            let _ = std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(0o755));
        }
    }
    let mut ordered: Vec<&PathBuf> = created.iter().collect();
    ordered.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for rel in &ordered {
        let abs = upper.join(rel);
        match std::fs::symlink_metadata(&abs) {
            Ok(md) if md.is_dir() => {
                let _ = std::fs::remove_dir(&abs);
            }
            Ok(md) if md.is_file() && md.len() == 0 => {
                let _ = std::fs::remove_file(&abs);
            }
            _ => {}
        }
    }
    // Deepest first, so that a parent is looked at once its children are gone.
    let mut parents: Vec<PathBuf> = created
        .iter()
        .flat_map(|p| p.ancestors().skip(1))
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect();
    parents.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    parents.dedup();
    for rel in parents {
        if untouched_copy(lower, upper, &rel) {
            let _ = std::fs::remove_dir(upper.join(&rel));
        }
    }
}

/// Whether `upper/rel` is an empty directory that only repeats the one the lower layers show.
fn untouched_copy(lower: &[PathBuf], upper: &Path, rel: &Path) -> bool {
    let dir = upper.join(rel);
    let Ok(md) = std::fs::symlink_metadata(&dir) else {
        return false;
    };
    let empty = std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_none());
    if !md.is_dir() || !empty || is_opaque(&dir) || hidden_below(upper, rel) {
        return false;
    }
    let Some(original) = visible_in_lower(lower, rel) else {
        return false;
    };
    let Ok(orig) = std::fs::symlink_metadata(&original) else {
        return false;
    };
    orig.mode() == md.mode()
        && orig.uid() == md.uid()
        && orig.gid() == md.gid()
        && matches!((xattrs(&original), xattrs(&dir)), (Some(a), Some(b)) if a == b)
}

/// The directory the merged view shows at `rel` from the lower layers (top first), if any and
/// if nothing above it in those layers (a whiteout, an opaque directory) hides it.
fn visible_in_lower(lower: &[PathBuf], rel: &Path) -> Option<PathBuf> {
    for layer in lower {
        let p = layer.join(rel);
        if let Ok(md) = std::fs::symlink_metadata(&p) {
            return (md.is_dir()).then_some(p);
        }
        if hidden_below(layer, rel) {
            return None;
        }
    }
    None
}

/// Whether, in `layer`, an ancestor of `rel` is a whiteout or an opaque directory (or not a
/// directory at all), which hides `rel` in every layer below.
fn hidden_below(layer: &Path, rel: &Path) -> bool {
    rel.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .any(|a| {
            let p = layer.join(a);
            match std::fs::symlink_metadata(&p) {
                Ok(md) if md.is_dir() => is_opaque(&p),
                // A whiteout, a file or a symlink in place of the directory.
                Ok(_) => true,
                Err(_) => false,
            }
        })
}

const OPAQUE: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

fn is_opaque(dir: &Path) -> bool {
    OPAQUE
        .iter()
        .any(|name| get_xattr(dir, OsStr::new(name)).is_some_and(|v| v == b"y"))
}

/// The extended attributes of `p` (not followed if a symlink) other than overlayfs's own,
/// sorted by name; `None` when they cannot be read (then nothing is removed).
fn xattrs(p: &Path) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let c_path = CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: llistxattr writes at most `names.len()` bytes into the buffer we own.
    let n = unsafe { libc::llistxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        let unsupported = std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTSUP);
        return unsupported.then(Vec::new);
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") {
            continue;
        }
        let value = get_xattr(p, OsStr::from_bytes(name))?;
        out.push((name.to_vec(), value));
    }
    out.sort();
    Some(out)
}

fn get_xattr(p: &Path, name: &OsStr) -> Option<Vec<u8>> {
    let c_path = CString::new(p.as_os_str().as_bytes()).ok()?;
    let c_name = CString::new(name.as_bytes()).ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: lgetxattr writes at most `buf.len()` bytes into the buffer we own.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Layers {
        _dir: tempfile::TempDir,
        lower: Vec<PathBuf>,
        upper: PathBuf,
    }

    /// `n` lower layers and an upper directory, all empty.
    fn layers(n: usize) -> Layers {
        let dir = tempfile::tempdir().unwrap();
        let lower = (0..n)
            .map(|i| {
                let p = dir.path().join(format!("lower{i}"));
                std::fs::create_dir(&p).unwrap();
                p
            })
            .collect();
        let upper = dir.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        Layers {
            _dir: dir,
            lower,
            upper,
        }
    }

    fn mkdir(p: &Path, mode: u32) {
        std::fs::create_dir_all(p).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Mark `dir` opaque as overlayfs does (`trusted.*` needs root); false when refused.
    fn set_opaque(dir: &Path) -> bool {
        let path = CString::new(dir.as_os_str().as_bytes()).unwrap();
        let name = CString::new(OPAQUE[0]).unwrap();
        // SAFETY: setxattr reads two C strings and one byte of value, all alive for the call.
        let r = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        r == 0
    }

    fn paths(ps: &[&str]) -> Vec<PathBuf> {
        ps.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn etc_stubs_leaked_into_first_run_layer() {
        // The image has /etc without `hosts`: the stub's creation copied `etc/` up.
        let l = layers(1);
        mkdir(&l.lower[0].join("etc"), 0o755);
        std::fs::write(l.lower[0].join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        mkdir(&l.upper.join("etc"), 0o755);
        std::fs::write(l.upper.join("etc/hosts"), "").unwrap();
        mkdir(&l.upper.join("x"), 0o755);
        remove(&l.lower, &l.upper, &paths(&["etc/hosts"]));
        assert!(!l.upper.join("etc").exists(), "etc/ left in the layer");
        assert!(l.upper.join("x").is_dir(), "the step's own change is kept");
    }

    #[test]
    fn copied_up_dirs_the_step_changed_stay() {
        let l = layers(1);
        for d in ["etc", "var", "opt"] {
            mkdir(&l.lower[0].join(d), 0o755);
        }
        // A file written next to the stub.
        mkdir(&l.upper.join("etc"), 0o755);
        std::fs::write(l.upper.join("etc/hosts"), "").unwrap();
        std::fs::write(l.upper.join("etc/motd"), "hi").unwrap();
        // A changed mode.
        mkdir(&l.upper.join("var/cache/thing"), 0o755);
        std::fs::set_permissions(l.upper.join("var"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        // A stub the step wrote into: not a stub any more.
        mkdir(&l.upper.join("opt"), 0o755);
        std::fs::write(l.upper.join("opt/data"), "written").unwrap();
        remove(
            &l.lower,
            &l.upper,
            &paths(&["etc/hosts", "var/cache", "var/cache/thing", "opt/data"]),
        );
        assert!(!l.upper.join("etc/hosts").exists());
        assert!(l.upper.join("etc/motd").exists());
        assert!(!l.upper.join("var/cache").exists());
        assert!(l.upper.join("var").is_dir(), "a chmod'ed dir is a change");
        assert!(l.upper.join("opt/data").exists());
    }

    #[test]
    fn dirs_new_in_the_upper_layer_are_not_copies() {
        let l = layers(2);
        // `etc` exists only as a file in the top lower layer: hidden below, and `var` is opaque
        // in the top layer, hiding `var/cache` of the layer under it.
        std::fs::write(l.lower[0].join("etc"), "").unwrap();
        mkdir(&l.lower[1].join("etc"), 0o755);
        mkdir(&l.lower[0].join("var"), 0o755);
        let opaque = set_opaque(&l.lower[0].join("var"));
        mkdir(&l.lower[1].join("var/cache"), 0o755);
        mkdir(&l.upper.join("etc"), 0o755);
        std::fs::write(l.upper.join("etc/hosts"), "").unwrap();
        mkdir(&l.upper.join("var/cache/x"), 0o755);
        remove(&l.lower, &l.upper, &paths(&["etc/hosts", "var/cache/x"]));
        assert!(l.upper.join("etc").is_dir(), "etc/ was new, not a copy");
        if opaque {
            assert!(l.upper.join("var/cache").is_dir(), "var/cache was new");
        }
        assert!(!l.upper.join("var/cache/x").exists());
    }

    #[test]
    fn an_opaque_upper_dir_is_a_replacement() {
        let l = layers(1);
        mkdir(&l.lower[0].join("etc"), 0o755);
        mkdir(&l.upper.join("etc"), 0o755);
        if !set_opaque(&l.upper.join("etc")) {
            println!("skipped: cannot set trusted xattrs here (needs root)");
            return;
        }
        std::fs::write(l.upper.join("etc/hosts"), "").unwrap();
        remove(&l.lower, &l.upper, &paths(&["etc/hosts"]));
        assert!(l.upper.join("etc").is_dir());
    }
}

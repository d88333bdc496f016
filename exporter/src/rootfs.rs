//! The final file system of an image, from its snapshot chain: each snapshot directory (overlay
//! upper-dir form) applied in order onto a destination directory, whiteouts and opaque
//! directories honoured. Used by `type=local` and, through a staging directory, `type=tar`.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::ExportError;

/// Applies the snapshot directories `layers` (bottom first) onto `dest`, which is created when
/// missing. Ownership is kept when running as root; otherwise files belong to the caller.
pub(crate) fn apply_layers(layers: &[PathBuf], dest: &Path) -> Result<(), ExportError> {
    fs::create_dir_all(dest).map_err(|e| ExportError::write(format!("`{}`", dest.display()), e))?;
    for layer in layers {
        apply_layer(layer, dest)?;
    }
    Ok(())
}

fn werr(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |e| ExportError::write(format!("`{}`", path.display()), e)
}

fn apply_layer(src_root: &Path, dest_root: &Path) -> Result<(), ExportError> {
    let md = fs::symlink_metadata(src_root).map_err(|source| ExportError::SnapshotDir {
        path: src_root.to_path_buf(),
        cause: source,
    })?;
    if !md.is_dir() {
        return Err(ExportError::SnapshotDir {
            path: src_root.to_path_buf(),
            cause: io::Error::other("not a directory"),
        });
    }
    // Directory metadata is set last, deepest first, since adding children changes mtimes.
    let mut dirs: Vec<(PathBuf, PathBuf, Metadata)> = Vec::new();
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack: Vec<(PathBuf, std::vec::IntoIter<OsString>)> =
        vec![(PathBuf::new(), sorted_children(src_root)?.into_iter())];
    while let Some((rel_dir, children)) = stack.last_mut() {
        let Some(name) = children.next() else {
            stack.pop();
            continue;
        };
        let rel = rel_dir.join(&name);
        let src = src_root.join(&rel);
        let dest = dest_root.join(&rel);
        let md = fs::symlink_metadata(&src).map_err(|e| ExportError::read("stat", &src, e))?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            remove_any(&dest)?;
            continue;
        }
        if ft.is_socket() {
            continue;
        }
        if ft.is_dir() {
            let existing = fs::symlink_metadata(&dest).ok();
            let opaque = is_opaque(&src);
            match existing {
                Some(m) if m.is_dir() && !opaque => {}
                Some(_) => {
                    remove_any(&dest)?;
                    fs::create_dir(&dest).map_err(werr(&dest))?;
                }
                None => fs::create_dir(&dest).map_err(werr(&dest))?,
            }
            dirs.push((src.clone(), dest, md));
            let kids = sorted_children(&src)?;
            stack.push((rel, kids.into_iter()));
            continue;
        }
        remove_any(&dest)?;
        if md.nlink() > 1 && !ft.is_dir() {
            let key = (md.dev(), md.ino());
            if let Some(first) = links.get(&key) {
                fs::hard_link(first, &dest).map_err(werr(&dest))?;
                continue;
            }
            links.insert(key, dest.clone());
        }
        if ft.is_file() {
            copy_sparse(&src, &dest).map_err(werr(&dest))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&src).map_err(|e| ExportError::read("read", &src, e))?;
            std::os::unix::fs::symlink(&target, &dest).map_err(werr(&dest))?;
        } else {
            mknod(&dest, md.mode(), md.rdev()).map_err(werr(&dest))?;
        }
        set_meta(&src, &dest, &md)?;
    }
    for (src, dest, md) in dirs.iter().rev() {
        set_meta(src, dest, md)?;
    }
    Ok(())
}

fn sorted_children(dir: &Path) -> Result<Vec<OsString>, ExportError> {
    let rd = fs::read_dir(dir).map_err(|e| ExportError::read("list", dir, e))?;
    let mut names = Vec::new();
    for ent in rd {
        names.push(
            ent.map_err(|e| ExportError::read("list", dir, e))?
                .file_name(),
        );
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn is_opaque(path: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|n| matches!(xattr::get(path, n), Ok(Some(v)) if v == b"y"))
}

fn remove_any(path: &Path) -> Result<(), ExportError> {
    let r = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    r.map_err(werr(path))
}

/// Copies a regular file's data regions only (`SEEK_DATA`/`SEEK_HOLE`), so a sparse file stays
/// sparse: `fs::copy` (`copy_file_range`) fills holes with written zeros on most file systems.
/// Where the source cannot say where its holes are, the whole file is copied.
fn copy_sparse(src: &Path, dest: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let from = fs::File::open(src)?;
    let len = from.metadata()?.len();
    let to = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dest)?;
    let mut off = 0u64;
    while off < len {
        let Some(data) = seek(&from, off, libc::SEEK_DATA)? else {
            break; // Only a hole is left: `set_len` below makes it.
        };
        let end = seek(&from, data, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        let (mut a, mut b) = (data as libc::loff_t, data as libc::loff_t);
        while (a as u64) < end {
            let want = (end - a as u64).min(1 << 30) as usize;
            // SAFETY: both descriptors are open for the call, and `a`/`b` are valid offsets the
            // kernel advances.
            let n = unsafe {
                libc::copy_file_range(from.as_raw_fd(), &mut a, to.as_raw_fd(), &mut b, want, 0)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                ) {
                    // Another file system type, or one that cannot: copy through a buffer.
                    copy_range(&from, &to, a as u64, end)?;
                    break;
                }
                return Err(e);
            }
            if n == 0 {
                break; // The file shrank under us; the length set below is the one we saw.
            }
        }
        off = end;
    }
    to.set_len(len)
}

/// Copies bytes `start..end` at the same offsets with `pread`/`pwrite`.
fn copy_range(from: &fs::File, to: &fs::File, start: u64, end: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (end - start).min(1 << 20) as usize];
    let mut at = start;
    while at < end {
        let want = (end - at).min(buf.len() as u64) as usize;
        let n = from.read_at(&mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        to.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// `lseek(fd, off, whence)`; `None` for `ENXIO` (no data at or after `off`). A file system
/// without `SEEK_DATA` support treats the whole file as data, which is what we then want.
fn seek(f: &fs::File, off: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    // SAFETY: `f` is an open descriptor for the call; lseek touches no memory.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(r as u64))
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn mknod(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Owner, mode, the xattrs a layer carries, and mtime; ownership and xattr errors that only mean
/// "not root" are ignored so that rootless exports still work.
fn set_meta(src: &Path, dest: &Path, md: &Metadata) -> Result<(), ExportError> {
    let ft = md.file_type();
    match std::os::unix::fs::lchown(dest, Some(md.uid()), Some(md.gid())) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        Err(e) => return Err(werr(dest)(e)),
    }
    if !ft.is_symlink() {
        // After chown, which clears setuid/setgid bits.
        fs::set_permissions(dest, fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(werr(dest))?;
    }
    if let Ok(names) = xattr::list(src) {
        for name in names {
            let n = name.as_bytes();
            let wanted = n == b"security.capability"
                || (n.starts_with(b"user.") && !n.starts_with(b"user.overlay."));
            if !wanted {
                continue;
            }
            if let Ok(Some(v)) = xattr::get(src, &name) {
                match xattr::set(dest, OsStr::from_bytes(n), &v) {
                    Ok(()) => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOTSUP)) => {}
                    Err(e) => return Err(werr(dest)(e)),
                }
            }
        }
    }
    let c = cpath(dest).map_err(werr(dest))?;
    let ts = [
        libc::timespec {
            tv_sec: md.atime() as libc::time_t,
            tv_nsec: md.atime_nsec() as _,
        },
        libc::timespec {
            tv_sec: md.mtime() as libc::time_t,
            tv_nsec: md.mtime_nsec() as _,
        },
    ];
    // SAFETY: `c` is a valid NUL-terminated path and `ts` two initialised timespecs, both alive
    // for the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(werr(dest)(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_file_was_written_in_full() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("src"), t.path().join("dest"));
        let len = 256u64 << 20;
        {
            use std::os::unix::fs::FileExt;
            let f = fs::File::create(&src).unwrap();
            f.set_len(len).unwrap();
            f.write_all_at(&[7u8; 4096], 128 << 20).unwrap();
            f.write_all_at(b"tail", len - 4).unwrap();
        }
        copy_sparse(&src, &dest).unwrap();
        let md = fs::metadata(&dest).unwrap();
        assert_eq!(md.len(), len);
        assert!(
            md.blocks() * 512 <= 1 << 20,
            "{} bytes on disk",
            md.blocks() * 512
        );
        assert!(
            fs::read(&src).unwrap() == fs::read(&dest).unwrap(),
            "content differs"
        );
        // Through the buffer path too (another file system type).
        let dest2 = t.path().join("dest2");
        let to = fs::File::create(&dest2).unwrap();
        copy_range(&fs::File::open(&src).unwrap(), &to, 0, len).unwrap();
        assert!(fs::read(&src).unwrap() == fs::read(&dest2).unwrap());
    }

    #[test]
    fn later_layers_win_and_whiteouts_remove() {
        let t = tempfile::tempdir().unwrap();
        let l1 = t.path().join("l1");
        let l2 = t.path().join("l2");
        let out = t.path().join("out");
        fs::create_dir_all(l1.join("d/sub")).unwrap();
        fs::write(l1.join("d/sub/old"), "old").unwrap();
        fs::write(l1.join("keep"), "1").unwrap();
        fs::write(l1.join("gone"), "1").unwrap();
        fs::write(l1.join("f"), "v1").unwrap();
        std::os::unix::fs::symlink("keep", l1.join("link")).unwrap();
        fs::create_dir_all(l2.join("d")).unwrap();
        fs::write(l2.join("d/new"), "new").unwrap();
        fs::write(l2.join("f"), "v2").unwrap();
        fs::create_dir(l2.join("link")).unwrap();
        fs::hard_link(l2.join("f"), l2.join("f2")).unwrap();
        let whiteout = mknod(&l2.join("gone"), libc::S_IFCHR | 0o600, 0);
        apply_layers(&[l1.clone(), l2.clone()], &out).unwrap();
        assert_eq!(fs::read_to_string(out.join("f")).unwrap(), "v2");
        assert_eq!(fs::read_to_string(out.join("d/new")).unwrap(), "new");
        assert_eq!(fs::read_to_string(out.join("d/sub/old")).unwrap(), "old");
        assert!(out.join("link").symlink_metadata().unwrap().is_dir());
        assert_eq!(
            fs::metadata(out.join("f")).unwrap().ino(),
            fs::metadata(out.join("f2")).unwrap().ino()
        );
        if whiteout.is_ok() {
            assert!(!out.join("gone").exists());
        } else {
            eprintln!("whiteout part skipped: cannot mknod here");
        }
    }
}

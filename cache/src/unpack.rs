//! kiln's own layer extractor: every entry type the tar crate's unpacker drops (devices, fifos,
//! xattrs, whiteouts) is kept, and nothing is ever written outside the snapshot directory.

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use crate::CacheError;

/// The xattr overlayfs reads to hide a lower directory's contents (value `y`).
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// The same in a user namespace (rootless kiln), where overlayfs runs with `userxattr` and
/// `trusted.*` cannot be set.
pub const USER_OPAQUE_XATTR: &str = "user.overlay.opaque";

/// The opaque xattr overlayfs uses here: [`USER_OPAQUE_XATTR`] when rootless.
pub fn opaque_xattr() -> &'static str {
    if kiln_sys::in_user_namespace() {
        USER_OPAQUE_XATTR
    } else {
        OPAQUE_XATTR
    }
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// The granularity of hole detection: a file system block on the usual file systems. A zero run
/// shorter than this, or not aligned to it, is written as data.
const HOLE_BLOCK: usize = 4096;
/// How much of a file's data is read at once; a multiple of [`HOLE_BLOCK`].
const DATA_CHUNK: usize = 1 << 20;

/// Copies `r` into the new, empty file `f`, skipping (not writing) every aligned block of zeros,
/// so a sparse file in a layer stays sparse on disk: a 1 GiB file with 4 KiB of data takes 4 KiB,
/// not 1 GiB. The file's length is set at the end, which makes a trailing hole too. The content
/// read back is exactly the entry's.
fn write_sparse(r: &mut impl Read, f: &fs::File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; DATA_CHUNK];
    let mut pos = 0u64;
    loop {
        // Whole chunks, so block boundaries stay aligned to the file's offsets.
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        let data = &buf[..n];
        let mut i = 0;
        while i < n {
            let block_end = (i + HOLE_BLOCK).min(n);
            if is_zero(&data[i..block_end]) {
                i = block_end;
                continue;
            }
            let start = i;
            i = block_end;
            while i < n {
                let e = (i + HOLE_BLOCK).min(n);
                if is_zero(&data[i..e]) {
                    break;
                }
                i = e;
            }
            f.write_all_at(&data[start..i], pos + start as u64)?;
        }
        pos += n as u64;
        if n < buf.len() {
            break;
        }
    }
    f.set_len(pos)
}

fn is_zero(block: &[u8]) -> bool {
    // An OR over the whole block without an early exit: the compiler vectorises it, which an
    // `all(|b| b == 0)` with its per-byte branch does not.
    block.iter().fold(0u8, |acc, &b| acc | b) == 0
}

/// Ownership, mode, time and xattrs of one entry, as the tar header says.
struct Attrs {
    uid: u64,
    gid: u64,
    mode: u32,
    mtime: (i64, i64),
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Splits a tar path into safe components: absolute paths become relative, `.` and empty
/// components vanish, and `..` is refused.
fn components(entry: &str, raw: &[u8]) -> Result<Vec<OsString>, CacheError> {
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(CacheError::bad_layer(
                    entry,
                    "path contains `..`; the layer is hostile or broken, it was not unpacked",
                ))
            }
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

/// Walks `comps` below `root` without following any symlink: each existing component must be
/// a real directory; missing ones are created (mode 0755) when `create` is set.
fn walk_dirs(
    root: &Path,
    comps: &[OsString],
    create: bool,
    entry: &str,
) -> Result<PathBuf, CacheError> {
    let mut p = root.to_path_buf();
    for c in comps {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(CacheError::bad_layer(
                    entry,
                    format!(
                        "its parent `{}` is a symlink in this layer; kiln never writes through symlinks, the layer was not unpacked",
                        String::from_utf8_lossy(p.strip_prefix(root).unwrap_or(&p).as_os_str().as_bytes())
                    ),
                ))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(CacheError::bad_layer(
                    entry,
                    format!(
                        "its parent `{}` is not a directory in this layer",
                        String::from_utf8_lossy(p.strip_prefix(root).unwrap_or(&p).as_os_str().as_bytes())
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&p).map_err(CacheError::io("create directory", &p))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                    .map_err(CacheError::io("set mode of", &p))?;
            }
            Err(e) => return Err(CacheError::io("inspect", &p)(e)),
        }
    }
    Ok(p)
}

/// Removes whatever is at `p` (never following a symlink), if anything.
fn clear(p: &Path) -> Result<(), CacheError> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(CacheError::io("replace", p)),
        Ok(_) => fs::remove_file(p).map_err(CacheError::io("replace", p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CacheError::io("inspect", p)(e)),
    }
}

fn parse_pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        let n: i64 = digits.parse().ok()?;
        n * 10i64.pow(9 - digits.len() as u32)
    };
    Some((secs, if secs < 0 { 0 } else { nanos }))
}

/// The tar stream itself failed (a broken download, a bad compressed stream).
fn unreadable_tar(cause: io::Error) -> CacheError {
    CacheError::LayerRead {
        entry: "(archive)".into(),
        what: "cannot read the tar".into(),
        cause,
    }
}

fn attrs<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Attrs, CacheError> {
    let bad = |what: &str, cause: io::Error| CacheError::LayerRead {
        entry: name.to_string(),
        what: format!("bad {what}"),
        cause,
    };
    let h = entry.header();
    let uid = h.uid().map_err(|e| bad("uid", e))?;
    let gid = h.gid().map_err(|e| bad("gid", e))?;
    let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
    let mut mtime = (
        i64::try_from(h.mtime().map_err(|e| bad("mtime", e))?).unwrap_or(i64::MAX),
        0,
    );
    let mut xattrs = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(|e| bad("PAX header", e))? {
        for ext in exts {
            let ext = ext.map_err(|e| bad("PAX header", e))?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                if let Some(t) = parse_pax_time(ext.value_bytes()) {
                    mtime = t;
                }
            } else if let Some(xname) = key.strip_prefix(b"SCHILY.xattr.") {
                // overlayfs's own attributes inside a layer would change how the stack is read.
                if xname.starts_with(b"trusted.overlay.") {
                    continue;
                }
                xattrs.push((
                    OsStr::from_bytes(xname).to_os_string(),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
    }
    Ok(Attrs {
        uid,
        gid,
        mode,
        mtime,
        xattrs,
    })
}

fn set_owner_xattrs(p: &Path, a: &Attrs) -> Result<(), CacheError> {
    let id = |v: u64| u32::try_from(v).ok();
    std::os::unix::fs::lchown(p, id(a.uid), id(a.gid))
        .map_err(CacheError::io("set owner of", p))?;
    for (name, value) in &a.xattrs {
        xattr::set(p, name, value).map_err(CacheError::io("set xattr on", p))?;
    }
    Ok(())
}

fn set_mode(p: &Path, a: &Attrs) -> Result<(), CacheError> {
    // After chown: chown clears setuid/setgid, so the mode goes last.
    fs::set_permissions(p, fs::Permissions::from_mode(a.mode))
        .map_err(CacheError::io("set mode of", p))
}

fn set_mtime(p: &Path, a: &Attrs) -> Result<(), CacheError> {
    let t = TimeSpec::new(a.mtime.0, a.mtime.1);
    utimensat(None, p, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| CacheError::io("set mtime of", p)(io::Error::from(e)))
}

/// Unpacks an uncompressed tar stream into `root` (an empty snapshot fs dir).
pub(crate) fn unpack(root: &Path, reader: impl Read) -> Result<(), CacheError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(unreadable_tar)?;
    // Directory modes and mtimes are applied last: creating children would change them.
    let mut dirs: Vec<(Vec<OsString>, Attrs)> = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(unreadable_tar)?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let comps = components(&name, &raw)?;
        let Some((last, parents)) = comps.split_last() else {
            if kind.is_dir() {
                let a = attrs(&mut entry, &name)?;
                set_owner_xattrs(root, &a)?;
                dirs.push((Vec::new(), a));
                continue;
            }
            return Err(CacheError::bad_layer(
                &name,
                "a non-directory entry names the layer root",
            ));
        };
        let parent = walk_dirs(root, parents, true, &name)?;
        let last_bytes = last.as_bytes();

        if last_bytes == OPAQUE_MARKER {
            xattr::set(&parent, opaque_xattr(), b"y")
                .map_err(CacheError::io("mark opaque", &parent))?;
            continue;
        }
        if let Some(hidden) = last_bytes.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
                return Err(CacheError::bad_layer(&name, "whiteout of an invalid name"));
            }
            let dst = parent.join(OsStr::from_bytes(hidden));
            clear(&dst)?;
            mknod(&dst, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(|e| CacheError::io("create whiteout", &dst)(io::Error::from(e)))?;
            continue;
        }

        let dst = parent.join(last);
        let existing = fs::symlink_metadata(&dst).ok();
        if kind.is_dir() {
            match existing {
                Some(m) if m.is_dir() => {}
                _ => {
                    clear(&dst)?;
                    fs::create_dir(&dst).map_err(CacheError::io("create directory", &dst))?;
                }
            }
            let a = attrs(&mut entry, &name)?;
            set_owner_xattrs(&dst, &a)?;
            dirs.push((comps.clone(), a));
            continue;
        }
        if existing.is_some() {
            clear(&dst)?;
        }
        let a = attrs(&mut entry, &name)?;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&dst)
                    .map_err(CacheError::io("create file", &dst))?;
                write_sparse(&mut entry, &f).map_err(CacheError::io("write file", &dst))?;
                set_owner_xattrs(&dst, &a)?;
                set_mode(&dst, &a)?;
                set_mtime(&dst, &a)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| CacheError::bad_layer(&name, "symlink without a target"))?
                    .into_owned();
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &dst)
                    .map_err(CacheError::io("create symlink", &dst))?;
                set_owner_xattrs(&dst, &a)?;
                set_mtime(&dst, &a)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| CacheError::bad_layer(&name, "hard link without a target"))?
                    .into_owned();
                let tcomps = components(&name, &target)?;
                let Some((tlast, tparents)) = tcomps.split_last() else {
                    return Err(CacheError::bad_layer(&name, "hard link to the layer root"));
                };
                let src = walk_dirs(root, tparents, false, &name)
                    .map_err(|_| {
                        CacheError::bad_layer(
                            &name,
                            format!(
                                "hard link target `{}` is not in this layer",
                                String::from_utf8_lossy(&target)
                            ),
                        )
                    })?
                    .join(tlast);
                match fs::symlink_metadata(&src) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(CacheError::bad_layer(
                            &name,
                            format!(
                                "hard link target `{}` is not a file of this layer",
                                String::from_utf8_lossy(&target)
                            ),
                        ))
                    }
                }
                // linkat without AT_SYMLINK_FOLLOW: a symlink target is linked, not followed.
                fs::hard_link(&src, &dst).map_err(CacheError::io("create hard link", &dst))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let h = entry.header();
                let dev = |r: io::Result<Option<u32>>| -> Result<u64, CacheError> {
                    r.map(|v| u64::from(v.unwrap_or(0)))
                        .map_err(|cause| CacheError::LayerRead {
                            entry: name.clone(),
                            what: "bad device number".into(),
                            cause,
                        })
                };
                let (sflag, rdev) = match kind {
                    EntryType::Char => (
                        SFlag::S_IFCHR,
                        makedev(dev(h.device_major())?, dev(h.device_minor())?),
                    ),
                    EntryType::Block => (
                        SFlag::S_IFBLK,
                        makedev(dev(h.device_major())?, dev(h.device_minor())?),
                    ),
                    _ => (SFlag::S_IFIFO, 0),
                };
                mknod(&dst, sflag, Mode::from_bits_truncate(a.mode), rdev)
                    .map_err(|e| CacheError::io("create device node", &dst)(io::Error::from(e)))?;
                set_owner_xattrs(&dst, &a)?;
                set_mode(&dst, &a)?;
                set_mtime(&dst, &a)?;
            }
            other => {
                return Err(CacheError::bad_layer(
                    &name,
                    format!(
                        "unsupported tar entry type `{:?}`; rebuild the layer with a standard tar",
                        other
                    ),
                ))
            }
        }
    }
    // Read to EOF: the tar crate stops at the first zero block, and a caller hashing the stream
    // for the layer's diff ID must see every byte, trailing padding included.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(unreadable_tar)?;
    for (comps, a) in &dirs {
        // A later entry may have replaced this directory (or a parent, with a symlink):
        // re-check the whole path so nothing outside the snapshot is touched.
        let Ok(p) = walk_dirs(root, comps, false, "") else {
            continue;
        };
        if !fs::symlink_metadata(&p)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            continue;
        }
        set_mode(&p, a)?;
        set_mtime(&p, a)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that breaks off after its first bytes, as a cut download does.
    struct BrokenStream(&'static [u8]);

    impl Read for BrokenStream {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the peer hung up",
                ));
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_broken_layer_stream_keeps_its_io_error_and_says_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let err = unpack(dir.path(), BrokenStream(&[0u8; 100])).unwrap_err();
        let CacheError::LayerRead { cause, .. } = &err else {
            panic!("not a LayerRead: {err}");
        };
        assert_eq!(cause.kind(), io::ErrorKind::ConnectionReset);
        // Printed in the text, not again as a source (a chain would print it twice).
        assert!(std::error::Error::source(&err).is_none());
        assert_eq!(
            err.to_string(),
            "layer tar entry `(archive)`: cannot read the tar: the peer hung up"
        );
    }

    #[test]
    fn components_are_made_safe() {
        let c = components("x", b"/a//./b/").unwrap();
        assert_eq!(c, vec![OsString::from("a"), OsString::from("b")]);
        assert!(components("x", b"a/../../b").is_err());
        assert!(components("x", b"./").unwrap().is_empty());
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"junk"), None);
    }

    /// A reader that hands out at most `step` bytes per call, as a decompressor may.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn sparse_round_trip(data: &[u8], step: usize) -> (Vec<u8>, u64) {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = fs::File::create(&p).unwrap();
        write_sparse(&mut Trickle { data, step }, &f).unwrap();
        drop(f);
        (
            fs::read(&p).unwrap(),
            fs::metadata(&p).unwrap().blocks() * 512,
        )
    }

    #[test]
    fn a_sparse_file_was_written_in_full() {
        // 64 MiB with 4 KiB of data in the middle and 3 bytes at the very end.
        let mut data = vec![0u8; 64 << 20];
        data[(32 << 20)..(32 << 20) + 4096].fill(0xab);
        let n = data.len();
        data[n - 3..].copy_from_slice(b"end");
        for step in [usize::MAX, 1000] {
            let (back, on_disk) = sparse_round_trip(&data, step);
            assert!(back == data, "content changed (reads of {step} bytes)");
            assert!(on_disk <= 64 * 1024, "{on_disk} bytes on disk");
        }
    }

    #[test]
    fn trailing_holes_short_files_and_unaligned_data_round_trip() {
        for data in [
            Vec::new(),
            b"x".to_vec(),
            vec![0u8; 10],
            vec![0u8; DATA_CHUNK + 1],
            [
                vec![1u8; 5000],
                vec![0u8; 3 * HOLE_BLOCK + 17],
                vec![2u8; 9],
            ]
            .concat(),
        ] {
            let (back, _) = sparse_round_trip(&data, 777);
            assert_eq!(back, data);
        }
    }
}

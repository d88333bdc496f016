//! Shared test helpers: build a snapshot tree in overlayfs upper-dir form and describe trees.
#![allow(dead_code)]

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

pub const T0: i64 = 1_600_000_000;

pub fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | 0o644, libc::makedev(major, minor)) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

pub fn set_mtime(path: &Path, t: i64) {
    filetime::set_symlink_file_times(
        path,
        filetime::FileTime::from_unix_time(t, 0),
        filetime::FileTime::from_unix_time(t, 0),
    )
    .unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn long_name() -> String {
    format!("{}-{}", "n".repeat(120), "end")
}

/// The bytes of a non-UTF-8 name.
pub fn bad_name() -> &'static [u8] {
    b"bad\xffname"
}

pub fn long_bad_name() -> Vec<u8> {
    let mut v = b"x".repeat(110);
    v.extend_from_slice(b"\xfe\xff");
    v
}

/// A version 2 `security.capability` value granting CAP_NET_BIND_SERVICE.
pub fn capability() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    v.extend_from_slice(&(1u32 << 10).to_le_bytes());
    v.extend_from_slice(&[0u8; 12]);
    v
}

/// Builds a snapshot dir with every kind of entry. With `fixed_times`, every mtime is set.
pub fn make_tree(root: &Path, fixed_times: bool) {
    let p = |rel: &str| root.join(rel);
    for d in [
        "bin",
        "dev",
        "etc",
        "run",
        "tmp",
        "var/cache",
        "long",
        "sub/deeper",
    ] {
        fs::create_dir_all(p(d)).unwrap();
    }
    fs::write(p("bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    chmod(&p("bin/tool"), 0o4755);
    fs::write(p("bin/sg"), b"sg").unwrap();
    chmod(&p("bin/sg"), 0o2711);
    chmod(&p("tmp"), 0o1777);
    xattr::set(p("bin/tool"), "user.note", b"hello").unwrap();
    xattr::set(p("bin/tool"), "security.capability", &capability()).unwrap();
    fs::write(p("etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\n").unwrap();
    xattr::set(p("etc/passwd"), "trusted.overlay.origin", b"ignored").unwrap();
    fs::hard_link(p("etc/passwd"), p("etc/passwd-link")).unwrap();
    chown(&p("etc/passwd"), 1000, 1001);
    std::os::unix::fs::symlink("usr/lib", p("lib")).unwrap();
    mknod(&p("dev/null"), libc::S_IFCHR, 1, 3);
    mknod(&p("dev/loop0"), libc::S_IFBLK, 7, 0);
    mknod(&p("run/fifo"), libc::S_IFIFO, 0, 0);
    // Overlay whiteout for a deleted file and an opaque directory.
    mknod(&p("etc/removed"), libc::S_IFCHR, 0, 0);
    xattr::set(p("var/cache"), "trusted.overlay.opaque", b"y").unwrap();
    fs::write(p("var/cache/new"), vec![7u8; 70_000]).unwrap();
    let long = long_name();
    fs::write(p(&format!("long/{long}")), b"long").unwrap();
    let long_dir = p(&format!("long/{}", "d".repeat(150)));
    fs::create_dir(&long_dir).unwrap();
    fs::write(long_dir.join("f".repeat(120)), b"deep").unwrap();
    std::os::unix::fs::symlink("t".repeat(150), p("long/symlink")).unwrap();
    fs::write(root.join(OsStr::from_bytes(bad_name())), b"bad").unwrap();
    fs::write(
        p("long").join(OsStr::from_bytes(&long_bad_name())),
        b"long bad",
    )
    .unwrap();
    fs::write(p("sub/deeper/x"), b"x").unwrap();
    fs::write(p("sub/deeper-sibling"), b"y").unwrap();
    chown(&p("sub"), 4_000_000, 5);
    if fixed_times {
        set_times(root, T0);
    }
}

/// Sets every mtime under `root` (children first, so directory times stick).
pub fn set_times(root: &Path, t: i64) {
    let mut all: Vec<_> = walk(root).into_iter().map(|(rel, _)| rel).collect();
    all.reverse();
    for rel in all {
        set_mtime(&root.join(OsStr::from_bytes(&rel)), t);
    }
}

/// Every path under root (relative bytes), parents first, sorted.
pub fn walk(root: &Path) -> Vec<(Vec<u8>, fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![Vec::<u8>::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(OsStr::from_bytes(&rel))
        };
        let mut names: Vec<Vec<u8>> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect();
        names.sort();
        for n in names.into_iter().rev() {
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(&n);
            let md = fs::symlink_metadata(root.join(OsStr::from_bytes(&r))).unwrap();
            if md.is_dir() {
                stack.push(r.clone());
            }
            out.push((r, md));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// One line per path: type, mode, owner, mtime, content or target, kept xattrs.
/// With `as_layer`, whiteouts and opaque dirs are shown as the tar entries they become.
pub fn describe(root: &Path, as_layer: bool) -> Vec<String> {
    let mut lines = Vec::new();
    for (rel, md) in walk(root) {
        let full = root.join(OsStr::from_bytes(&rel));
        let name = String::from_utf8_lossy(&rel).to_string();
        let ft = md.file_type();
        let own = format!("{}:{} t={}", md.uid(), md.gid(), md.mtime());
        if as_layer && ft.is_char_device() && md.rdev() == 0 {
            let (parent, base) = match name.rfind('/') {
                Some(i) => (&name[..=i], &name[i + 1..]),
                None => ("", &name[..]),
            };
            lines.push(format!(
                "{parent}.wh.{base} file 600 {own} len=0 sum={} x=[]",
                checksum(&[])
            ));
            continue;
        }
        let mut xs: Vec<String> = xattr::list(&full)
            .unwrap()
            .filter_map(|n| {
                let s = n.to_string_lossy().to_string();
                (s.starts_with("user.") || s == "security.capability").then(|| {
                    let v = xattr::get(&full, &n).unwrap().unwrap_or_default();
                    format!("{s}={}", hex_str(&v))
                })
            })
            .collect();
        xs.sort();
        let mode = md.mode() & 0o7777;
        let what = if ft.is_dir() {
            format!("dir {mode:o} {own}")
        } else if ft.is_symlink() {
            let t = fs::read_link(&full).unwrap();
            format!("symlink -> {}", t.display())
        } else if ft.is_file() {
            let data = fs::read(&full).unwrap();
            format!(
                "file {mode:o} {own} len={} sum={}",
                data.len(),
                checksum(&data)
            )
        } else if ft.is_char_device() || ft.is_block_device() {
            let k = if ft.is_char_device() { "char" } else { "block" };
            format!(
                "{k} {}:{} {mode:o} {own}",
                libc::major(md.rdev()),
                libc::minor(md.rdev())
            )
        } else if ft.is_fifo() {
            format!("fifo {mode:o} {own}")
        } else {
            "other".into()
        };
        lines.push(format!("{name} {what} x={xs:?}"));
        if as_layer
            && ft.is_dir()
            && xattr::get(&full, "trusted.overlay.opaque")
                .ok()
                .flatten()
                .as_deref()
                == Some(b"y")
        {
            lines.push(format!(
                "{name}/.wh..wh..opq file {:o} {own} len=0 sum={} x=[]",
                mode & 0o777,
                checksum(&[])
            ));
        }
    }
    lines.sort();
    lines
}

fn hex_str(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(1469598103934665603u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(1099511628211)
    })
}

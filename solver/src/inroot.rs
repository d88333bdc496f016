//! Resolving a path inside a root directory as the kernel would if that directory were `/`:
//! the one rule for every path kiln looks up in a build context, a snapshot or an archive's
//! destination. A symlink to `/etc` means `<root>/etc`, `..` stops at the root, and a chain of
//! links is followed link by link, so nothing a context or an image holds can name a host path.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Links followed while resolving one path before giving up: Linux's own limit (`ELOOP`).
const MAX_LINKS: usize = 40;

/// Resolves `path` (absolute or relative: both start at `root`) inside `root`, component by
/// component: `..` never climbs above `root`, an absolute link target restarts at `root`, a
/// relative one at the link's directory. The last component is followed only when
/// `follow_last` says so. Components that do not exist are kept as written, so the caller's
/// own lookup of the result reports "not found". Fails on a loop (more than 40 links).
///
/// Nothing outside `root` is ever looked at, and the result is always `root` or below it, free
/// of symlinks but for the last component when it is not followed.
pub fn resolve_in_root(
    root: &Path,
    path: impl AsRef<Path>,
    follow_last: bool,
) -> io::Result<PathBuf> {
    let path = path.as_ref();
    let mut todo = parts(path.as_os_str());
    let mut done = root.to_path_buf();
    // How many components of `done` are below `root`: `..` pops only those.
    let mut depth = 0usize;
    let mut links = 0usize;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            if depth > 0 {
                done.pop();
                depth -= 1;
            }
            continue;
        }
        done.push(&c);
        if todo.is_empty() && !follow_last {
            break;
        }
        match std::fs::symlink_metadata(&done) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links resolving `{}`",
                        path.display()
                    )));
                }
                let target = std::fs::read_link(&done)?;
                done.pop();
                if target.is_absolute() {
                    done = root.to_path_buf();
                    depth = 0;
                }
                let mut next = parts(target.as_os_str());
                next.append(&mut todo);
                todo = next;
            }
            _ => depth += 1,
        }
    }
    Ok(done)
}

/// The components of `p`, without empty ones and `.` (`..` is kept: it means the parent of what
/// is resolved so far, not of what is written).
fn parts(p: &OsStr) -> VecDeque<OsString> {
    p.as_bytes()
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsStr::from_bytes(c).to_os_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), "f").unwrap();
        t
    }

    #[test]
    fn absolute_links_restart_at_the_root() {
        let t = tree();
        let root = t.path();
        symlink("/usr/bin", root.join("bin")).unwrap();
        symlink("/etc", root.join("etcdir")).unwrap();
        let r = |p| resolve_in_root(root, p, true).unwrap();
        assert_eq!(r("/bin/sh"), root.join("usr/bin/sh"));
        assert_eq!(r("bin/sh"), root.join("usr/bin/sh"));
        // `/etc` of the host is never meant: `<root>/etc`, which does not exist.
        assert_eq!(r("etcdir/shadow"), root.join("etc/shadow"));
        assert_eq!(r("etcdir"), root.join("etc"));
    }

    #[test]
    fn dot_dot_in_paths_and_link_targets_stops_at_the_root() {
        let t = tree();
        let root = t.path();
        symlink("../../../../etc", root.join("escape")).unwrap();
        symlink("../../..", root.join("a/b/up")).unwrap();
        symlink("b/../../../../x", root.join("a/climb")).unwrap();
        let r = |p| resolve_in_root(root, p, true).unwrap();
        assert_eq!(r("escape/passwd"), root.join("etc/passwd"));
        assert_eq!(r("../../x"), root.join("x"));
        assert_eq!(r("a/b/up"), root.to_path_buf());
        assert_eq!(r("a/b/up/a/b/f"), root.join("a/b/f"));
        assert_eq!(r("a/climb"), root.join("x"));
        // `..` after a link is the parent of where the link led, not of the link.
        symlink("a/b", root.join("deep")).unwrap();
        assert_eq!(r("deep/.."), root.join("a"));
    }

    #[test]
    fn self_links_chains_and_loops() {
        let t = tree();
        let root = t.path();
        symlink(".", root.join("selfdir")).unwrap();
        symlink("l2", root.join("l1")).unwrap();
        symlink("/l3", root.join("l2")).unwrap();
        symlink("a/b", root.join("l3")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        symlink("me", root.join("me")).unwrap();
        let r = |p| resolve_in_root(root, p, true);
        assert_eq!(r("selfdir/selfdir/a").unwrap(), root.join("a"));
        assert_eq!(r("selfdir").unwrap(), root.to_path_buf());
        assert_eq!(r("l1/f").unwrap(), root.join("a/b/f"));
        let e = r("loop1/x").unwrap_err().to_string();
        assert!(e.contains("too many levels of symbolic links"), "{e}");
        assert!(r("me").is_err());
    }

    #[test]
    fn the_last_component_is_followed_only_when_asked() {
        let t = tree();
        let root = t.path();
        symlink("/a", root.join("link")).unwrap();
        symlink("/a", root.join("a/b/inner")).unwrap();
        assert_eq!(
            resolve_in_root(root, "link", false).unwrap(),
            root.join("link")
        );
        assert_eq!(resolve_in_root(root, "link", true).unwrap(), root.join("a"));
        // Links before the last component are always followed.
        assert_eq!(
            resolve_in_root(root, "link/b/inner", false).unwrap(),
            root.join("a/b/inner")
        );
        // A trailing `/` or `.` does not make a last component of its own.
        assert_eq!(
            resolve_in_root(root, "link/./", false).unwrap(),
            root.join("link")
        );
    }

    #[test]
    fn missing_components_are_kept_as_written() {
        let t = tree();
        let root = t.path();
        symlink("/nowhere/deeper", root.join("dangling")).unwrap();
        let r = |p| resolve_in_root(root, p, true).unwrap();
        assert_eq!(r("dangling/x"), root.join("nowhere/deeper/x"));
        assert_eq!(r("a/b/f/g"), root.join("a/b/f/g"));
        assert_eq!(r(""), root.to_path_buf());
        assert_eq!(r("/"), root.to_path_buf());
    }

    #[test]
    fn names_that_are_not_utf8_resolve_unchanged() {
        let t = tree();
        let root = t.path();
        let name = OsStr::from_bytes(b"caf\xe9");
        std::fs::create_dir(root.join(name)).unwrap();
        symlink(Path::new("/").join(name), root.join("l")).unwrap();
        assert_eq!(
            resolve_in_root(root, "l/x", true).unwrap(),
            root.join(name).join("x")
        );
    }

    #[test]
    fn every_result_stays_under_the_root() {
        // Links of every shape, absolute and relative, climbing and looping: whatever a path
        // names, the result starts with the root.
        let t = tree();
        let root = t.path();
        let targets = [
            "/",
            "/etc",
            "..",
            "../..",
            "../../etc",
            ".",
            "a/../..",
            "/a/b/../../..",
            "x/../../y",
        ];
        for (i, target) in targets.iter().enumerate() {
            symlink(target, root.join(format!("t{i}"))).unwrap();
        }
        for i in 0..targets.len() {
            for tail in ["", "/..", "/../..", "/etc/passwd", "/t0/t1"] {
                let p = format!("t{i}{tail}");
                for follow in [true, false] {
                    let got = resolve_in_root(root, &p, follow).unwrap();
                    assert!(got.starts_with(root), "{p} -> {}", got.display());
                }
            }
        }
    }
}

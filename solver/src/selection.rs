//! Checksums of what an op selects from a snapshot input (`COPY --from=stage /x`, `COPY
//! --from=stage /out/*.txt`, `RUN --mount=from=stage,source=/x`): the key a step's result is
//! also found under when the input's own key changed but the selected content did not, as
//! BuildKit's content-based cache keys.
//! A committed snapshot never changes, so a checksum is memoised in the index by snapshot and
//! selector: a warm build reads one row instead of hashing again.

use crate::{inroot, SolveError};
use kiln_cache::{SnapshotId, Store};
use kiln_llb::{file_action::Action, op::Kind, MountType, Op};
use rayon::prelude::*;
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A path an op reads from a snapshot input (a copy's may hold wildcards), and whether a
/// symlink as its last component is followed.
pub(crate) type Selector = (String, bool);

/// The paths op `op` reads of its input `index`, when it reads nothing else of it: a file op's
/// copy sources (the input is no action's base; wildcards allowed, as the copy expands them),
/// an exec op's bind mounts that keep no output. `None` when it reads the input whole or in a
/// way a path cannot say (the root, a bind mount's wildcard).
pub(crate) fn selectors(op: &Op, index: i64) -> Option<Vec<Selector>> {
    let mut picked = Vec::new();
    match &op.kind {
        Some(Kind::File(f)) => {
            if f.base == index {
                return None;
            }
            for a in &f.actions {
                if let Some(Action::Copy(c)) = &a.action {
                    if c.src_input == index {
                        picked.push((copy_path(&c.src)?, c.follow_symlinks));
                    }
                }
            }
        }
        Some(Kind::Exec(e)) => {
            for m in e.mounts.iter().filter(|m| m.input == index) {
                if m.mount_type != MountType::Bind as i32 || m.output >= 0 {
                    return None;
                }
                picked.push((plain_path(&m.selector)?, true));
            }
        }
        _ => return None,
    }
    if picked.is_empty() {
        return None;
    }
    picked.sort();
    picked.dedup();
    Some(picked)
}

/// `path` with one leading `/`, unless it is the root (`/`, `.`, `./`) or has a wildcard
/// character.
fn plain_path(path: &str) -> Option<String> {
    let p = path.trim_matches('/');
    let root = p.split('/').all(|c| c.is_empty() || c == ".");
    (!root && !p.contains(['*', '?', '[', '\\'])).then(|| format!("/{p}"))
}

/// A copy source as a selector: [`plain_path`], or the pattern when it has wildcards (matched
/// as the copy matches them, see [`hash_selection`]). A `\` without a wildcard is left to the
/// whole input, as [`plain_path`] leaves it.
fn copy_path(path: &str) -> Option<String> {
    if !crate::glob::has_wildcard(path) {
        return plain_path(path);
    }
    let p = path.trim_matches('/');
    Some(format!("/{p}"))
}

/// The checksum of what `selectors` pick of snapshot `snap` (its whole chain, as mounted),
/// memoised in the index.
pub(crate) fn checksum(
    store: &Store,
    snap: SnapshotId,
    selectors: &[Selector],
) -> Result<String, SolveError> {
    let mut h = blake3::Hasher::new();
    h.update(b"kiln-selection-v1\0");
    let mut missing = Vec::new();
    let mut sums = HashMap::new();
    for sel in selectors {
        match store.index().snapshot_meta_get(snap, &memo_name(sel))? {
            Some(sum) => {
                sums.insert(sel.clone(), sum);
            }
            None => missing.push(sel.clone()),
        }
    }
    if !missing.is_empty() {
        for (sel, sum) in hash_selections(store, snap, &missing)? {
            if let Err(e) = store
                .index()
                .snapshot_meta_put(snap, &memo_name(&sel), &sum)
            {
                tracing::warn!(%snap, "cannot memoise a snapshot checksum: {e}");
            }
            sums.insert(sel, sum);
        }
    }
    for sel in selectors {
        let sum = sums
            .get(sel)
            .ok_or_else(|| SolveError::Op(format!("no checksum of `{}`", sel.0)))?;
        h.update(sel.0.as_bytes());
        h.update(&[0, u8::from(sel.1)]);
        h.update(sum.as_bytes());
    }
    Ok(h.finalize().to_hex().to_string())
}

fn memo_name((path, follow): &Selector) -> String {
    format!("selection-sum-v1/{}{path}", u8::from(*follow))
}

/// Mounts the snapshot's chain read-only and hashes each selection.
fn hash_selections(
    store: &Store,
    snap: SnapshotId,
    selectors: &[Selector],
) -> Result<Vec<(Selector, String)>, SolveError> {
    let snaps = store.snapshots();
    let chain = snaps.chain(snap)?;
    let tmp = tempfile::Builder::new()
        .prefix("selection-")
        .tempdir_in(store.tmp_dir())
        .map_err(SolveError::io("cannot make a temp dir"))?;
    let guard = snaps.mount(&chain, None, tmp.path())?;
    let root = guard.path();
    selectors
        .iter()
        .map(|sel| Ok((sel.clone(), hash_selection(root, sel)?)))
        .collect()
}

/// The checksum of one selected path below `root`: where it resolves to (symlinks inside the
/// root), then every entry from there down, sorted by path, with type, permission bits, owner,
/// xattrs, content or link target, device number and hard-link group. mtimes are left out, as
/// BuildKit's content checksums leave them out. A pattern with wildcards is expanded as the
/// copy expands it (`fileops::resolve_dir_sources`); its checksum is each match's path and
/// checksum, in order, so a change elsewhere leaves it alone, as BuildKit's `ChecksumWildcard`.
fn hash_selection(root: &Path, (path, follow): &Selector) -> Result<String, SolveError> {
    if crate::glob::has_wildcard(path) {
        let matches = crate::fileops::resolve_dir_sources(root, path, *follow)?;
        let mut h = blake3::Hasher::new();
        h.update(b"wildcard\0");
        for (abs, _, rel) in matches {
            h.update(rel.as_bytes());
            h.update(b"\0");
            h.update(hash_resolved(root, &abs, &rel)?.as_bytes());
        }
        return Ok(h.finalize().to_hex().to_string());
    }
    let resolved = inroot::resolve_in_root(root, path, *follow)
        .map_err(SolveError::io(format!("cannot resolve `{path}`")))?;
    hash_resolved(root, &resolved, path)
}

/// [`hash_selection`] of a path already resolved inside `root`; `path` names it in errors.
fn hash_resolved(root: &Path, resolved: &Path, path: &str) -> Result<String, SolveError> {
    let rel = resolved
        .strip_prefix(root)
        .map_err(|_| SolveError::Op(format!("`{path}` resolved outside its root")))?;
    let mut h = blake3::Hasher::new();
    h.update(rel.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    let mut entries = Vec::new();
    match std::fs::symlink_metadata(resolved) {
        Ok(meta) => walk(resolved, meta, &mut entries)?,
        // Absent: the step fails when it runs; the key says only that it is absent.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            h.update(b"absent");
            return Ok(h.finalize().to_hex().to_string());
        }
        Err(e) => {
            return Err(SolveError::Io {
                what: format!("cannot stat `{path}`"),
                source: e,
            })
        }
    }
    entries.sort_by(|a, b| a.rel.cmp(&b.rel));
    // File contents and xattrs in parallel; the combining is in walk order.
    let sums: Vec<[u8; 32]> = entries
        .par_iter()
        .map(|e| entry_sum(resolved, e))
        .collect::<Result<_, _>>()?;
    let mut first_of_inode: HashMap<(u64, u64), usize> = HashMap::new();
    for (n, (e, sum)) in entries.iter().zip(&sums).enumerate() {
        h.update(&sum[..]);
        if e.meta.is_file() && e.meta.nlink() > 1 {
            let first = *first_of_inode
                .entry((e.meta.dev(), e.meta.ino()))
                .or_insert(n);
            h.update(&(first as u64).to_le_bytes());
        }
        h.update(b"\xff");
    }
    Ok(h.finalize().to_hex().to_string())
}

struct Entry {
    /// Below the selected path (empty for itself).
    rel: PathBuf,
    meta: std::fs::Metadata,
}

/// Every entry from `top` down (`meta` is `top`'s), without recursion: a stage's tree may be
/// deeper than a thread's stack.
fn walk(top: &Path, meta: std::fs::Metadata, out: &mut Vec<Entry>) -> Result<(), SolveError> {
    let mut todo = vec![Entry {
        rel: PathBuf::new(),
        meta,
    }];
    while let Some(entry) = todo.pop() {
        if entry.meta.is_dir() {
            let dir = below(top, &entry.rel);
            let read = std::fs::read_dir(&dir)
                .map_err(SolveError::io(format!("cannot read `{}`", dir.display())))?;
            for item in read {
                let item =
                    item.map_err(SolveError::io(format!("cannot read `{}`", dir.display())))?;
                let rel = entry.rel.join(item.file_name());
                let path = below(top, &rel);
                let meta = std::fs::symlink_metadata(&path)
                    .map_err(SolveError::io(format!("cannot stat `{}`", path.display())))?;
                todo.push(Entry { rel, meta });
            }
        }
        out.push(entry);
    }
    Ok(())
}

/// `top/rel`, without the trailing `/` that joining an empty `rel` adds (a file is no directory).
fn below(top: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        top.to_path_buf()
    } else {
        top.join(rel)
    }
}

fn entry_sum(top: &Path, e: &Entry) -> Result<[u8; 32], SolveError> {
    let path = below(top, &e.rel);
    let io_err = |what: &str| SolveError::io(format!("cannot {what} `{}`", path.display()));
    let mut h = blake3::Hasher::new();
    h.update(e.rel.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    h.update(&e.meta.permissions().mode().to_le_bytes());
    h.update(&e.meta.uid().to_le_bytes());
    h.update(&e.meta.gid().to_le_bytes());
    let ft = e.meta.file_type();
    if ft.is_file() {
        let mut f = std::fs::File::open(&path).map_err(io_err("open"))?;
        let mut content = blake3::Hasher::new();
        io::copy(&mut f, &mut content).map_err(io_err("read"))?;
        h.update(content.finalize().as_bytes());
    } else if ft.is_symlink() {
        let target = std::fs::read_link(&path).map_err(io_err("read the link"))?;
        h.update(target.as_os_str().as_encoded_bytes());
    } else if !ft.is_dir() {
        h.update(&e.meta.rdev().to_le_bytes());
    }
    // Symlinks' xattrs are not followed: `xattr::list` reads the link itself.
    let mut names: Vec<_> = xattr::list(&path)
        .map_err(io_err("list the xattrs of"))?
        .collect();
    names.sort();
    for name in names {
        let value = xattr::get(&path, &name).map_err(io_err("read an xattr of"))?;
        h.update(b"\0x");
        h.update(name.as_encoded_bytes());
        h.update(b"\0");
        h.update(value.as_deref().unwrap_or_default());
    }
    Ok(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_llb::{ExecOp, FileAction, FileCopy, FileOp, Mount};

    fn copy_of(base: i64, srcs: &[&str]) -> Op {
        Op {
            inputs: vec![],
            kind: Some(Kind::File(FileOp {
                base,
                actions: srcs
                    .iter()
                    .map(|s| FileAction {
                        action: Some(Action::Copy(FileCopy {
                            src_input: 1,
                            src: (*s).into(),
                            dest: "/d/".into(),
                            follow_symlinks: true,
                            ..Default::default()
                        })),
                    })
                    .collect(),
            })),
        }
    }

    fn exec_mounting(selector: &str, output: i64) -> Op {
        let mut m = Mount::rootfs(1);
        m.selector = selector.into();
        m.dest = "/m".into();
        m.output = output;
        Op {
            inputs: vec![],
            kind: Some(Kind::Exec(ExecOp {
                meta: None,
                mounts: vec![Mount::rootfs(0), m],
                network: 0,
            })),
        }
    }

    #[test]
    fn a_copy_or_a_bind_selects_its_paths_of_a_stage() {
        let sel = |p: &str| (p.to_string(), true);
        assert_eq!(
            selectors(&copy_of(0, &["out/bin", "/etc/"]), 1),
            Some(vec![sel("/etc"), sel("/out/bin")])
        );
        assert_eq!(
            selectors(&exec_mounting("/x", -1), 1),
            Some(vec![sel("/x")])
        );
        // A copy's wildcard selects what it matches.
        assert_eq!(
            selectors(&copy_of(0, &["out/*.so"]), 1),
            Some(vec![sel("/out/*.so")])
        );
        // Read whole: the root, a bind mount's wildcard, the base of the file op, the rootfs
        // mount, a mount that keeps its changes.
        assert_eq!(selectors(&copy_of(0, &["/"]), 1), None);
        assert_eq!(selectors(&copy_of(0, &["./"]), 1), None);
        assert_eq!(selectors(&exec_mounting(".", -1), 1), None);
        assert_eq!(selectors(&exec_mounting("/out/*.so", -1), 1), None);
        assert_eq!(selectors(&copy_of(1, &["/out"]), 1), None);
        assert_eq!(selectors(&exec_mounting("/x", -1), 0), None);
        assert_eq!(selectors(&exec_mounting("/x", 1), 1), None);
        // An input the op does not read.
        assert_eq!(selectors(&copy_of(0, &["/out"]), 2), None);
    }

    fn sum_of(root: &Path, path: &str) -> String {
        hash_selection(root, &(path.into(), true)).unwrap()
    }

    #[test]
    fn a_wildcard_sum_covers_its_matches_only() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("out")).unwrap();
        std::fs::write(root.join("out/a.txt"), b"a").unwrap();
        std::fs::write(root.join("out/b.bin"), b"b").unwrap();
        let before = sum_of(root, "/out/*.txt");

        std::fs::write(root.join("out/b.bin"), b"b2").unwrap();
        std::fs::write(root.join("other"), b"x").unwrap();
        assert_eq!(sum_of(root, "/out/*.txt"), before, "what it does not match");

        std::fs::write(root.join("out/c.txt"), b"c").unwrap();
        let more = sum_of(root, "/out/*.txt");
        assert_ne!(more, before, "a new match");

        std::fs::write(root.join("out/a.txt"), b"a2").unwrap();
        assert_ne!(sum_of(root, "/out/*.txt"), more, "a match's content");

        // The same content under another matched name is another selection.
        std::fs::remove_file(root.join("out/c.txt")).unwrap();
        std::fs::write(root.join("out/a.txt"), b"a").unwrap();
        assert_eq!(sum_of(root, "/out/*.txt"), before);
        std::fs::rename(root.join("out/a.txt"), root.join("out/z.txt")).unwrap();
        assert_ne!(sum_of(root, "/out/*.txt"), before, "a renamed match");
        // No match at all is a selection too (the copy fails or copies nothing).
        assert_ne!(sum_of(root, "/out/*.none"), sum_of(root, "/out/*.txt"));
    }

    #[test]
    fn a_selection_sum_covers_content_modes_and_owners_but_not_mtimes_or_other_paths() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("out/sub")).unwrap();
        std::fs::write(root.join("out/sub/bin"), b"one").unwrap();
        std::fs::write(root.join("other"), b"x").unwrap();
        let before = sum_of(root, "/out");

        std::fs::write(root.join("other"), b"y").unwrap();
        filetime::set_file_mtime(
            root.join("out/sub/bin"),
            filetime::FileTime::from_unix_time(1, 0),
        )
        .unwrap();
        assert_eq!(sum_of(root, "/out"), before, "another path or an mtime");

        std::fs::write(root.join("out/sub/bin"), b"two").unwrap();
        let content = sum_of(root, "/out");
        assert_ne!(content, before, "content");

        std::fs::set_permissions(root.join("out/sub/bin"), PermissionsExt::from_mode(0o700))
            .unwrap();
        let mode = sum_of(root, "/out");
        assert_ne!(mode, content, "mode");

        std::os::unix::fs::lchown(root.join("out/sub/bin"), Some(1234), None).unwrap();
        let owner = sum_of(root, "/out");
        assert_ne!(owner, mode, "owner");

        // A link is followed to what it leads to (`checksum` adds the name it was selected by).
        std::os::unix::fs::symlink("out", root.join("link")).unwrap();
        assert_eq!(sum_of(root, "/link"), owner);
        std::os::unix::fs::symlink("sub/bin", root.join("out/link")).unwrap();
        assert_ne!(sum_of(root, "/out"), owner, "a new link below");
    }
}

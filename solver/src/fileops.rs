//! File operations (`COPY`, `WORKDIR`'s mkdir, heredoc files, `rm`) applied to a mounted
//! snapshot. Every path is resolved inside the root it belongs to, so a symlink in an image or a
//! context can never make a copy write or read outside it.

mod archive;
mod batch;
pub(crate) mod direct;
mod filter;
pub(crate) mod reuse;

use crate::context::{self, LocalContext};
use crate::glob;
use crate::inroot::resolve_in_root;
use crate::SolveError;
use kiln_llb::{file_action::Action, Chown, FileCopy};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where a copy reads from.
pub(crate) enum CopySource<'a> {
    /// A local context (its `.dockerignore` applies).
    Local(&'a dyn LocalContext),
    /// A mounted snapshot chain, or an empty directory for scratch.
    Dir(&'a Path),
}

/// Numeric owner for created files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// The owner a file has on disk.
    fn of(meta: &std::fs::Metadata) -> Owner {
        Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

/// The owner copied entries get when the copy names none. BuildKit resets a local context's
/// owners to root (its file sync maps every uid/gid to 0) but keeps a stage's or an image's, so
/// `COPY --from=stage` preserves ownership as `docker build` does; `--chown` overrides both.
/// `None` in the result means "keep each source entry's owner".
pub(crate) fn copy_owner(source: &CopySource<'_>, chown: Option<Owner>) -> Option<Owner> {
    match source {
        CopySource::Local(_) => Some(chown.unwrap_or_default()),
        CopySource::Dir(_) => chown,
    }
}

/// Resolves a `--chown` against the base's `/etc/passwd` and `/etc/group`. As Docker does, a user
/// without a group uses the same number as its gid.
pub(crate) fn resolve_owner(
    chown: Option<&Chown>,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<Option<Owner>, SolveError> {
    let Some(c) = chown else { return Ok(None) };
    if c.user.is_empty() && c.group.is_empty() {
        return Ok(None);
    }
    // As BuildKit's `readUser` (solver/llbsolver/ops/user_linux.go): a numeric user is its own
    // gid; a name takes uid and gid from `/etc/passwd`, or 0:0 when the file lacks it; a group
    // name the image's `/etc/group` lacks keeps the user's gid.
    let user = if c.user.is_empty() { "0" } else { &c.user };
    let (uid, user_gid) = if let Ok(id) = user.parse::<u32>() {
        (id, id)
    } else {
        match kiln_exec::resolve_user(user, passwd, group) {
            Ok(u) => (u.uid, u.gid),
            Err(kiln_exec::ExecError::UnknownUser { kind: "user", .. }) => (0, 0),
            Err(e) => return Err(SolveError::from(e)),
        }
    };
    let gid = if c.group.is_empty() {
        user_gid
    } else if let Ok(id) = c.group.parse::<u32>() {
        id
    } else {
        match kiln_exec::resolve_user(&format!("0:{}", c.group), passwd, group) {
            Ok(u) => u.gid,
            Err(kiln_exec::ExecError::UnknownUser { kind: "group", .. }) => user_gid,
            Err(e) => return Err(SolveError::from(e)),
        }
    };
    Ok(Some(Owner { uid, gid }))
}

/// Applies one action to the mounted `root`.
pub(crate) fn apply(
    root: &Path,
    action: &Action,
    source: Option<&CopySource<'_>>,
    owner: Option<Owner>,
) -> Result<(), SolveError> {
    match action {
        Action::Mkdir(m) => {
            let dst = resolve_in_root(root, &m.path, true)
                .map_err(SolveError::io(format!("`{}`", m.path)))?;
            if dst.is_dir() {
                return Ok(());
            }
            if m.make_parents {
                mkdir_parents(root, &dst, owner)?;
            }
            std::fs::create_dir(&dst).map_err(SolveError::io(format!("`{}`", m.path)))?;
            set_meta(&dst, mode_of(m.mode, 0o755), owner, None)?;
            Ok(())
        }
        Action::Mkfile(m) => {
            let dst = resolve_in_root(root, &m.path, false)
                .map_err(SolveError::io(format!("`{}`", m.path)))?;
            // Only a heredoc `COPY` makes files: its parents are the `--chown` owner's, as the
            // copy BuildKit makes of it gives them.
            if let Some(parent) = dst.parent() {
                mkdir_parents(root, &parent.join("x"), owner)?;
            }
            std::fs::write(&dst, &m.data).map_err(SolveError::io(format!("`{}`", m.path)))?;
            set_meta(&dst, mode_of(m.mode, 0o644), owner, None)
        }
        Action::Rm(r) => {
            let dst = resolve_in_root(root, &r.path, false)
                .map_err(SolveError::io(format!("`{}`", r.path)))?;
            match std::fs::symlink_metadata(&dst) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&dst),
                Ok(_) => std::fs::remove_file(&dst),
                Err(e) if e.kind() == io::ErrorKind::NotFound && r.allow_not_found => Ok(()),
                Err(e) => Err(e),
            }
            .map_err(SolveError::io(format!("`{}`", r.path)))
        }
        Action::Copy(c) => {
            let source = source.ok_or_else(|| SolveError::Op("copy has no source".into()))?;
            copy(root, c, source, owner)
        }
    }
}

fn copy(
    root: &Path,
    c: &FileCopy,
    source: &CopySource<'_>,
    chown: Option<Owner>,
) -> Result<(), SolveError> {
    let owner = copy_owner(source, chown);
    // Sources: (absolute path on the host, name used under a directory destination).
    let sources: Vec<(PathBuf, String, String)> = match source {
        CopySource::Local(ctx) => context::resolve_sources(*ctx, &c.src, c.follow_symlinks)?
            .into_iter()
            .map(|s| (ctx.root().join(&s.rel), s.name().to_string(), s.rel))
            .collect(),
        CopySource::Dir(dir) => resolve_dir_sources(dir, &c.src, c.follow_symlinks)?,
    };
    if sources.is_empty() {
        if c.allow_empty_wildcard && glob::has_wildcard(&c.src) {
            return Ok(());
        }
        return Err(SolveError::Op(format!(
            "`{}` not found: check the path is inside the build context (or the source stage) and not excluded by `.dockerignore`",
            c.src
        )));
    }
    let wildcard = glob::has_wildcard(&c.src);
    let dest_is_dir = c.dest.ends_with('/') || sources.len() > 1 || wildcard;
    // `--exclude` and include patterns apply below the named source; an entry a wildcard
    // matched is itself subject to them by its name.
    let filter = filter::Filter::new(&c.include_patterns, &c.exclude_patterns);
    let dest =
        resolve_in_root(root, &c.dest, true).map_err(SolveError::io(format!("`{}`", c.dest)))?;
    let mode = if c.mode >= 0 {
        Some(c.mode as u32)
    } else {
        None
    };
    // One batch for every source: hard-link groups span the whole copy, as in BuildKit's copier
    // (a wildcard's matches stay linked to each other).
    let mut batch = batch::Batch::default();
    for (abs, name, rel) in &sources {
        let meta =
            std::fs::symlink_metadata(abs).map_err(SolveError::io(format!("`{}`", c.src)))?;
        if wildcard && !filter.keeps(name) && !(meta.is_dir() && filter.walk_anyway(name)) {
            continue;
        }
        let frel = if wildcard { name.as_str() } else { "" };
        let excluded = |r: &str| match source {
            CopySource::Local(ctx) => ctx.excluded(r),
            CopySource::Dir(_) => false,
        };
        if meta.is_dir() {
            // COPY dir/ dest copies the directory's contents.
            mkdir_parents(root, &dest.join("x"), owner)?;
            let created = !dest.exists();
            if created {
                std::fs::create_dir(&dest).map_err(SolveError::io(format!("`{}`", c.dest)))?;
                set_meta(&dest, meta.mode() & 0o7777, owner, None)?;
            }
            let walk = DirWalk {
                root,
                excluded: &excluded,
                filter: &filter,
                owner,
                mode,
            };
            walk.copy_contents(&mut batch, abs, rel, frel, &dest, created)?;
            batch.flush(owner, mode)?;
        } else if c.attempt_unpack && meta.is_file() {
            // ADD: a tar archive is unpacked into the destination directory, anything else
            // copied.
            match archive::detect(abs)? {
                Some(compression) => {
                    mkdir_parents(root, &dest.join("x"), owner)?;
                    // A tar's own owners stay unless `--chown` was given.
                    archive::unpack(root, &dest, abs, compression, chown)?;
                }
                None => {
                    let target = copy_target(root, c, &dest, dest_is_dir, name, owner)?;
                    copy_entry(&mut batch, abs, meta, target, name, owner, mode)?;
                }
            }
        } else {
            let target = copy_target(root, c, &dest, dest_is_dir, name, owner)?;
            copy_entry(&mut batch, abs, meta, target, name, owner, mode)?;
        }
    }
    Ok(())
}

/// Where a non-directory source named `name` is copied: under `dest` (created, with its
/// parents, when missing) when the destination is a directory, else `dest` itself, with its
/// parents created.
fn copy_target(
    root: &Path,
    c: &FileCopy,
    dest: &Path,
    dest_is_dir: bool,
    name: &str,
    owner: Option<Owner>,
) -> Result<PathBuf, SolveError> {
    Ok(if dest_is_dir || dest.is_dir() {
        mkdir_parents(root, &dest.join("x"), owner)?;
        if !dest.exists() {
            std::fs::create_dir(dest).map_err(SolveError::io(format!("`{}`", c.dest)))?;
            set_meta(dest, 0o755, owner, None)?;
        }
        dest.join(name)
    } else {
        // As BuildKit's `MkdirAll` with the copy's chown: the parents this copy creates are the
        // `--chown` owner's; existing ones keep theirs.
        mkdir_parents(root, dest, owner)?;
        dest.to_path_buf()
    })
}

/// Sources in a mounted snapshot: the path resolved inside it. Wildcards may be in any
/// component, as BuildKit's `ResolveWildcards` takes them: the path up to the first wildcard is
/// resolved inside the root, and below it every entry whose components match the rest of the
/// pattern is a source, found by walking real directories only (a link is never descended into,
/// though a match that is a link is followed when the copy follows links). Matches come in path
/// order; the name a match gets under a directory destination is its last component.
pub(crate) fn resolve_dir_sources(
    dir: &Path,
    src: &str,
    follow: bool,
) -> Result<Vec<(PathBuf, String, String)>, SolveError> {
    let clean = context::clean_rel(src);
    if clean.is_empty() {
        return Ok(vec![(dir.to_path_buf(), String::new(), String::new())]);
    }
    let parts: Vec<&str> = clean.split('/').collect();
    let last_name = |rel: &str| rel.rsplit('/').next().unwrap_or(rel).to_string();
    let Some(first_wild) = parts.iter().position(|p| glob::has_wildcard(p)) else {
        let p =
            resolve_in_root(dir, &clean, follow).map_err(SolveError::io(format!("`{}`", src)))?;
        if std::fs::symlink_metadata(&p).is_err() {
            return Ok(Vec::new());
        }
        return Ok(vec![(p, last_name(&clean), clean.clone())]);
    };
    let prefix = parts[..first_wild].join("/");
    let base = resolve_in_root(dir, &prefix, true).map_err(SolveError::io(format!("`{}`", src)))?;
    // (path on the host, path as written with the matched names)
    let mut found = vec![(base, prefix)];
    for part in &parts[first_wild..] {
        let mut next = Vec::new();
        for (abs, rel) in &found {
            if !std::fs::symlink_metadata(abs).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            if !glob::has_wildcard(part) {
                let p = abs.join(part);
                if std::fs::symlink_metadata(&p).is_ok() {
                    next.push((p, context::join_rel(rel, part)));
                }
                continue;
            }
            let Ok(rd) = std::fs::read_dir(abs) else {
                continue;
            };
            let mut names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| glob::matches(part, name))
                .collect();
            names.sort();
            for name in names {
                next.push((abs.join(&name), context::join_rel(rel, &name)));
            }
        }
        found = next;
    }
    let mut out = Vec::with_capacity(found.len());
    for (abs, rel) in found {
        let p = if follow {
            resolve_in_root(dir, &rel, true).map_err(SolveError::io(format!("`{}`", src)))?
        } else {
            abs
        };
        out.push((p, last_name(&rel), rel));
    }
    Ok(out)
}

/// A recursive directory copy and what it skips.
struct DirWalk<'a> {
    root: &'a Path,
    /// `.dockerignore` of a local context, by path relative to the context root.
    excluded: &'a dyn Fn(&str) -> bool,
    /// The copy's own include/exclude patterns, by path relative to the copied source.
    filter: &'a filter::Filter,
    owner: Option<Owner>,
    mode: Option<u32>,
}

impl DirWalk<'_> {
    /// Copies the contents of `src` (at `rel` in its context, `frel` below the copied source)
    /// into `dest`: directories now, in order, leaves into `batch` for a parallel flush. `fresh`
    /// says this copy created `dest`, so nothing is in the way below it. Returns whether
    /// anything was placed in `dest`.
    fn copy_contents(
        &self,
        batch: &mut batch::Batch,
        src: &Path,
        rel: &str,
        frel: &str,
        dest: &Path,
        fresh: bool,
    ) -> Result<bool, SolveError> {
        let (root, owner, mode) = (self.root, self.owner, self.mode);
        let rd = std::fs::read_dir(src).map_err(SolveError::io(format!("`{}`", src.display())))?;
        let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        let mut placed = false;
        for entry in entries {
            let name = entry.file_name();
            let name_s = name.to_string_lossy().into_owned();
            let child_rel = context::join_rel(rel, &name_s);
            let child_frel = context::join_rel(frel, &name_s);
            let child = entry.path();
            // An lstat relative to the open directory: no walk of the whole path again.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let kept = self.filter.keeps(&child_frel);
            if !(kept || meta.is_dir() && self.filter.walk_anyway(&child_frel)) {
                continue;
            }
            let is_excluded = (self.excluded)(&child_rel) || !kept;
            let mut target = dest.join(&name);
            if meta.is_dir() {
                // An existing symlink to a directory in the destination is followed, inside the
                // root. It may alias another directory of this copy, so what goes through it is
                // copied in order with the rest: flush before and after.
                let aliased = !fresh
                    && std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink());
                if aliased {
                    batch.flush(owner, mode)?;
                    let rel_t = target
                        .strip_prefix(root)
                        .unwrap_or(&target)
                        .to_string_lossy()
                        .into_owned();
                    target = resolve_in_root(root, &rel_t, true)
                        .map_err(SolveError::io(format!("`{}`", rel_t)))?;
                }
                let mut created = false;
                if fresh || !target.is_dir() {
                    if !fresh {
                        let _ = std::fs::remove_file(&target);
                    }
                    std::fs::create_dir(&target)
                        .map_err(SolveError::io(format!("`{}`", child_rel)))?;
                    created = true;
                    // A directory walked only for what it may hold keeps its source mode.
                    let m = if is_excluded {
                        meta.mode() & 0o7777
                    } else {
                        mode.unwrap_or(meta.mode() & 0o7777)
                    };
                    set_meta(&target, m, owner.or(Some(Owner::of(&meta))), None)?;
                }
                let inner =
                    self.copy_contents(batch, &child, &child_rel, &child_frel, &target, created)?;
                if created && is_excluded && !inner {
                    // Nothing below it was selected: it is not part of the copy.
                    std::fs::remove_dir(&target)
                        .map_err(SolveError::io(format!("`{}`", child_rel)))?;
                } else {
                    placed = true;
                    if created {
                        // Copying children moves its mtime: set it once they are in place.
                        batch.dir_time(
                            target,
                            filetime::FileTime::from_last_modification_time(&meta),
                        );
                    }
                }
                if aliased {
                    batch.flush(owner, mode)?;
                }
            } else if !is_excluded {
                batch.push(batch::Leaf {
                    src: child,
                    meta,
                    dst: target,
                    fresh,
                    frel: child_frel,
                });
                placed = true;
            }
        }
        Ok(placed)
    }
}

/// Copies one non-directory source to `dst`, replacing what is there, at once: through the
/// copy's batch, so a name of an inode an earlier source of the copy had becomes a link to it.
fn copy_entry(
    batch: &mut batch::Batch,
    src: &Path,
    meta: std::fs::Metadata,
    dst: PathBuf,
    name: &str,
    owner: Option<Owner>,
    mode: Option<u32>,
) -> Result<(), SolveError> {
    batch.push(batch::Leaf {
        src: src.to_path_buf(),
        meta,
        dst,
        fresh: false,
        frel: name.to_string(),
    });
    batch.flush(owner, mode)
}

/// Sets owner (root when none is given, as `COPY` does), permission bits and, when copying,
/// the source's mtime.
fn set_meta(
    path: &Path,
    mode: u32,
    owner: Option<Owner>,
    src: Option<&std::fs::Metadata>,
) -> Result<(), SolveError> {
    let err = SolveError::io(format!("`{}`", path.display()));
    let o = owner.unwrap_or_default();
    std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid)).map_err(&err)?;
    // chown clears setuid bits, so permissions come after it.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(&err)?;
    if let Some(m) = src {
        let mtime = filetime::FileTime::from_last_modification_time(m);
        // Never opens the path (a fifo would block the copy).
        filetime::set_symlink_file_times(path, mtime, mtime).map_err(&err)?;
    }
    Ok(())
}

/// Creates the missing parents of `path` (not `path` itself), owned by `owner`, mode 0755.
fn mkdir_parents(root: &Path, path: &Path, owner: Option<Owner>) -> Result<(), SolveError> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    if parent.is_dir() || parent == root {
        return Ok(());
    }
    mkdir_parents(root, parent, owner)?;
    if !parent.is_dir() {
        std::fs::create_dir(parent).map_err(SolveError::io(format!("`{}`", parent.display())))?;
        set_meta(parent, 0o755, owner, None)?;
    }
    Ok(())
}

fn mode_of(mode: i32, default: u32) -> u32 {
    if mode > 0 {
        mode as u32
    } else {
        default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_action(src: &str, dest: &str, include: &[&str], exclude: &[&str]) -> Action {
        Action::Copy(FileCopy {
            src_input: 0,
            src: src.into(),
            dest: dest.into(),
            mode: -1,
            follow_symlinks: true,
            dir_contents_only: true,
            create_dest_path: true,
            allow_wildcard: true,
            allow_empty_wildcard: true,
            include_patterns: include.iter().map(|s| s.to_string()).collect(),
            exclude_patterns: exclude.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    fn files_under(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                if p.is_dir() {
                    out.push(format!("{rel}/"));
                    todo.push(p);
                } else {
                    out.push(rel);
                }
            }
        }
        out.sort();
        out
    }

    fn source_tree() -> tempfile::TempDir {
        let src = tempfile::tempdir().unwrap();
        for f in [
            "app/main.rs",
            "app/notes.txt",
            "app/sub/deep.txt",
            "app/sub/lib.rs",
            "app/target/out.bin",
            "home.txt",
            "home.rs",
        ] {
            let p = src.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        src
    }

    #[test]
    fn copy_exclude_patterns_were_ignored() {
        let src = source_tree();
        let dst = tempfile::tempdir().unwrap();
        let source = CopySource::Dir(src.path());
        let action = copy_action("/app", "/out/", &[], &["*.txt", "target"]);
        apply(dst.path(), &action, Some(&source), None).unwrap();
        assert_eq!(
            files_under(dst.path()),
            [
                "out/",
                "out/main.rs",
                "out/sub/",
                "out/sub/deep.txt",
                "out/sub/lib.rs"
            ]
        );
        // An entry a wildcard matched is excluded by its name, as `COPY --exclude=*.txt hom* /`.
        let dst = tempfile::tempdir().unwrap();
        let action = copy_action("/hom*", "/w/", &[], &["*.txt"]);
        apply(dst.path(), &action, Some(&source), None).unwrap();
        assert_eq!(files_under(dst.path()), ["w/", "w/home.rs"]);
        // `!` re-includes below an excluded directory.
        let dst = tempfile::tempdir().unwrap();
        let action = copy_action("/app", "/o/", &[], &["sub", "!sub/lib.rs", "**/*.bin"]);
        apply(dst.path(), &action, Some(&source), None).unwrap();
        assert_eq!(
            files_under(dst.path()),
            [
                "o/",
                "o/main.rs",
                "o/notes.txt",
                "o/sub/",
                "o/sub/lib.rs",
                "o/target/"
            ]
        );
    }

    #[test]
    fn copy_include_patterns_were_ignored() {
        let src = source_tree();
        let dst = tempfile::tempdir().unwrap();
        let source = CopySource::Dir(src.path());
        let action = copy_action("/", "/p/", &["app/*/*.rs", "home.rs"], &[]);
        apply(dst.path(), &action, Some(&source), None).unwrap();
        assert_eq!(
            files_under(dst.path()),
            [
                "p/",
                "p/app/",
                "p/app/sub/",
                "p/app/sub/lib.rs",
                "p/home.rs"
            ]
        );
    }

    #[test]
    fn parallel_copy_keeps_contents_modes_times_and_links() {
        let src = tempfile::tempdir().unwrap();
        let old = filetime::FileTime::from_unix_time(1_000_000_000, 0);
        for d in 0..8 {
            let dir = src.path().join(format!("d{d}/sub"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..40 {
                let p = dir.join(format!("f{f}"));
                std::fs::write(&p, format!("{d}-{f}")).unwrap();
                let mode = if f % 2 == 0 { 0o4755 } else { 0o600 };
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
                filetime::set_file_times(&p, old, old).unwrap();
            }
            std::os::unix::fs::symlink("sub/f0", src.path().join(format!("d{d}/link"))).unwrap();
            filetime::set_file_times(&dir, old, old).unwrap();
        }
        let dst = tempfile::tempdir().unwrap();
        let source = CopySource::Dir(src.path());
        let action = copy_action("/", "/out/", &[], &[]);
        apply(dst.path(), &action, Some(&source), None).unwrap();
        for d in 0..8 {
            let dir = dst.path().join(format!("out/d{d}/sub"));
            let dm = std::fs::metadata(&dir).unwrap();
            assert_eq!(filetime::FileTime::from_last_modification_time(&dm), old);
            for f in 0..40 {
                let p = dir.join(format!("f{f}"));
                assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{d}-{f}"));
                let m = std::fs::metadata(&p).unwrap();
                let want = if f % 2 == 0 { 0o4755 } else { 0o600 };
                assert_eq!(m.mode() & 0o7777, want, "{}", p.display());
                assert_eq!(filetime::FileTime::from_last_modification_time(&m), old);
            }
            let link = dst.path().join(format!("out/d{d}/link"));
            assert_eq!(std::fs::read_link(link).unwrap(), Path::new("sub/f0"));
        }
    }

    #[test]
    fn hard_links_in_a_copy_became_independent_files() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("d/sub")).unwrap();
        // Enough leaves that the flush runs on the pool.
        for i in 0..40 {
            std::fs::write(src.path().join(format!("d/f{i}")), format!("{i}")).unwrap();
        }
        std::fs::hard_link(src.path().join("d/f7"), src.path().join("d/sub/again")).unwrap();
        std::fs::hard_link(src.path().join("d/f7"), src.path().join("d/z7")).unwrap();
        let source = CopySource::Dir(src.path());
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        for (from, to, names) in [
            ("/d", "/out/", vec!["out/f7", "out/sub/again", "out/z7"]),
            // A wildcard's matches are one copy: linked to each other too.
            ("/d/*7", "/w/", vec!["w/f7", "w/z7"]),
        ] {
            let dst = tempfile::tempdir().unwrap();
            apply(
                dst.path(),
                &copy_action(from, to, &[], &[]),
                Some(&source),
                None,
            )
            .unwrap();
            let first = dst.path().join(names[0]);
            for n in &names {
                let p = dst.path().join(n);
                assert_eq!(ino(&p), ino(&first), "{n}");
                assert_eq!(std::fs::read_to_string(&p).unwrap(), "7");
            }
            let m = std::fs::metadata(&first).unwrap();
            assert_eq!(m.nlink(), names.len() as u64);
            // Files of one name stay their own inodes.
            let other = dst.path().join(to.trim_start_matches('/')).join("f17");
            assert_eq!(std::fs::metadata(&other).unwrap().nlink(), 1);
        }
    }

    #[test]
    fn stage_wildcards_past_the_last_component_matched_nothing() {
        let src = tempfile::tempdir().unwrap();
        for f in ["a/t/x", "b/t/y", "b/u/z"] {
            let p = src.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        // Walked as BuildKit walks: a link to a directory is matched but never descended into.
        std::os::unix::fs::symlink("/a", src.path().join("l")).unwrap();
        std::os::unix::fs::symlink("../../b/t/y", src.path().join("a/t/w")).unwrap();
        let got = resolve_dir_sources(src.path(), "/*/t/*", true).unwrap();
        let rels: Vec<(&str, &str)> = got
            .iter()
            .map(|(_, n, r)| (n.as_str(), r.as_str()))
            .collect();
        assert_eq!(rels, [("w", "a/t/w"), ("x", "a/t/x"), ("y", "b/t/y")]);
        // The matched link is followed inside the root.
        assert_eq!(got[0].0, src.path().join("b/t/y"));
        let got = resolve_dir_sources(src.path(), "/l/*", true).unwrap();
        assert_eq!(got.len(), 1, "a link before the first wildcard is followed");
        assert!(resolve_dir_sources(src.path(), "/nope/*/x", true)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn copy_through_a_destination_symlink_stays_in_source_order() {
        // `a` in the destination is a symlink to `b`: the file `a/x` lands in `b/x` first, then
        // the directory `b/x` replaces it, as a one-at-a-time copy would leave it.
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("a")).unwrap();
        std::fs::write(src.path().join("a/x"), "file").unwrap();
        std::fs::create_dir_all(src.path().join("b/x")).unwrap();
        std::fs::write(src.path().join("b/x/y"), "y").unwrap();
        let dst = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dst.path().join("b")).unwrap();
        std::os::unix::fs::symlink("/b", dst.path().join("a")).unwrap();
        let source = CopySource::Dir(src.path());
        apply(
            dst.path(),
            &copy_action("/", "/", &[], &[]),
            Some(&source),
            None,
        )
        .unwrap();
        assert!(dst.path().join("b/x").is_dir());
        assert_eq!(
            std::fs::read_to_string(dst.path().join("b/x/y")).unwrap(),
            "y"
        );
    }

    #[test]
    fn chown_without_group_uses_uid_as_gid() {
        let passwd = "app:x:1000:1000::/home/app:/bin/sh\n";
        let group = "staff:x:50:\n";
        let o = resolve_owner(
            Some(&Chown {
                user: "app".into(),
                group: String::new(),
            }),
            Some(passwd),
            Some(group),
        )
        .unwrap();
        assert_eq!(
            o,
            Some(Owner {
                uid: 1000,
                gid: 1000
            })
        );
        let o = resolve_owner(
            Some(&Chown {
                user: "app".into(),
                group: "staff".into(),
            }),
            Some(passwd),
            Some(group),
        )
        .unwrap();
        assert_eq!(o, Some(Owner { uid: 1000, gid: 50 }));
    }

    /// KNOWN.md `copy-chown-unknown-user`: kiln failed the build.
    #[test]
    fn copy_chown_unknown_user() {
        let passwd = "app:x:1000:1000::/home/app:/bin/sh\n";
        let group = "staff:x:50:\n";
        let chown = |user: &str, group: &str| Chown {
            user: user.into(),
            group: group.into(),
        };
        let o = resolve_owner(Some(&chown("nosuchuser", "")), Some(passwd), Some(group));
        assert_eq!(o.unwrap(), Some(Owner { uid: 0, gid: 0 }));
        let o = resolve_owner(
            Some(&chown("nosuchuser", "staff")),
            Some(passwd),
            Some(group),
        );
        assert_eq!(o.unwrap(), Some(Owner { uid: 0, gid: 50 }));
        // No `/etc/passwd` at all (a scratch base) reads the same.
        let o = resolve_owner(Some(&chown("nosuchuser", "")), None, None);
        assert_eq!(o.unwrap(), Some(Owner { uid: 0, gid: 0 }));
    }

    #[test]
    fn copy_chown_name_takes_the_users_gid_and_an_unknown_group_keeps_it() {
        let passwd = "app:x:1000:1001::/home/app:/bin/sh\n";
        let group = "staff:x:50:\n";
        let chown = |user: &str, group: &str| Chown {
            user: user.into(),
            group: group.into(),
        };
        let o = |u: &str, g: &str| resolve_owner(Some(&chown(u, g)), Some(passwd), Some(group));
        assert_eq!(
            o("app", "").unwrap(),
            Some(Owner {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(
            o("1000", "").unwrap(),
            Some(Owner {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(
            o("app", "nosuchgroup").unwrap(),
            Some(Owner {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(
            o("app", "staff").unwrap(),
            Some(Owner { uid: 1000, gid: 50 })
        );
        assert_eq!(o("app", "7").unwrap(), Some(Owner { uid: 1000, gid: 7 }));
    }
}

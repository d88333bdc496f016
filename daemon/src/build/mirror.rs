//! A client's context as the daemon keeps it: a directory made equal to the client's metadata,
//! asking only for the files whose metadata changed. Everything the client sends is hostile:
//! paths are relative and plain, each entry's parent is a directory the client declared
//! before it, nothing is written through a symlink, and nothing lands outside the mirror.

use kiln_api::v1::{Entry, EntryKind};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Why a client's context cannot be mirrored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MirrorError {
    #[error(
        "the client sent the path `{0}`, which is not a plain relative path inside the context"
    )]
    BadPath(String),
    #[error("the client sent `{0}` before its parent directory (or under a non-directory)")]
    Orphan(String),
    #[error("the client sent `{0}` twice")]
    Duplicate(String),
    #[error("the client sent more bytes for `{0}` than the size it declared")]
    TooLong(String),
    #[error("cannot write the context mirror at `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MirrorError + '_ {
    move |source| MirrorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks a client path: non-empty `/`-separated normal components, no NUL.
fn check_path(p: &str) -> Result<(), MirrorError> {
    let bad = p.is_empty()
        || p.contains('\0')
        || p.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(MirrorError::BadPath(p.to_string()));
    }
    Ok(())
}

/// The entries of one sync, checked, with the files the mirror lacks.
pub(crate) struct Plan {
    root: PathBuf,
    entries: Vec<Entry>,
    /// Indexes into `entries` of the files to ask the client for, in order.
    pub(crate) wanted: Vec<usize>,
    pub(crate) removed: u64,
}

/// Checks `entries` and makes the mirror at `root` hold exactly them, except the content of
/// the files returned in [`Plan::wanted`]: what the client no longer has is removed, directories
/// and symlinks are made. Blocking.
pub(crate) fn plan(root: &Path, entries: Vec<Entry>) -> Result<Plan, MirrorError> {
    let mut kinds: HashMap<&str, EntryKind> = HashMap::with_capacity(entries.len());
    for e in &entries {
        check_path(&e.path)?;
        if let Some((parent, _)) = e.path.rsplit_once('/') {
            if kinds.get(parent) != Some(&EntryKind::Dir) {
                return Err(MirrorError::Orphan(e.path.clone()));
            }
        }
        if kinds.insert(&e.path, e.kind()).is_some() {
            return Err(MirrorError::Duplicate(e.path.clone()));
        }
    }
    std::fs::create_dir_all(root).map_err(io(root))?;
    let mut removed = 0;
    remove_unlisted(root, "", &kinds, &mut removed)?;
    let mut wanted = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let path = root.join(&e.path);
        let existing = std::fs::symlink_metadata(&path).ok();
        match e.kind() {
            EntryKind::Dir => {
                if existing.is_none() {
                    std::fs::create_dir(&path).map_err(io(&path))?;
                }
            }
            EntryKind::Symlink => {
                let same = existing.is_some()
                    && std::fs::read_link(&path)
                        .is_ok_and(|t| t.as_os_str() == e.link_target.as_str());
                if !same {
                    if existing.is_some() {
                        std::fs::remove_file(&path).map_err(io(&path))?;
                    }
                    std::os::unix::fs::symlink(&e.link_target, &path).map_err(io(&path))?;
                }
                chown(&path, e, true)?;
            }
            EntryKind::File => match existing {
                Some(m) if same_content(&m, e) => {
                    // Only the owner changed (or the daemon may not set it): no bytes needed.
                    if m.uid() != e.uid || m.gid() != e.gid {
                        chown(&path, e, false)?;
                    }
                }
                _ => wanted.push(i),
            },
        }
    }
    Ok(Plan {
        root: root.to_path_buf(),
        entries,
        wanted,
        removed,
    })
}

/// Removes what is under `dir` (relative `rel`) and not listed with the same kind.
fn remove_unlisted(
    dir: &Path,
    rel: &str,
    kinds: &HashMap<&str, EntryKind>,
    removed: &mut u64,
) -> Result<(), MirrorError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let child = match name.to_str() {
            Some(n) if rel.is_empty() => n.to_string(),
            Some(n) => format!("{rel}/{n}"),
            // The client cannot name it: never listed.
            None => String::new(),
        };
        let ft = entry.file_type().map_err(io(&path))?;
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else {
            EntryKind::File
        };
        let keep = ft.is_dir() || ft.is_symlink() || ft.is_file();
        if keep && kinds.get(child.as_str()) == Some(&kind) {
            if kind == EntryKind::Dir {
                remove_unlisted(&path, &child, kinds, removed)?;
            }
            continue;
        }
        *removed += 1;
        if ft.is_dir() {
            // Does not follow symlinks inside.
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        } else {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Whether the mirror's file has the client's content, as its metadata tells (the owner is
/// compared apart: it changes without new bytes).
fn same_content(m: &std::fs::Metadata, e: &Entry) -> bool {
    m.file_type().is_file()
        && m.len() == e.size
        && m.mtime() == e.mtime_sec
        && m.mtime_nsec() == i64::from(e.mtime_nsec)
        && m.mode() & 0o7777 == e.mode & 0o7777
}

/// Gives `path` the client's owner; a daemon that may not (rootless, an unmapped id) keeps its
/// own.
fn chown(path: &Path, e: &Entry, is_link: bool) -> Result<(), MirrorError> {
    let r = if is_link {
        std::os::unix::fs::lchown(path, Some(e.uid), Some(e.gid))
    } else {
        std::os::unix::fs::chown(path, Some(e.uid), Some(e.gid))
    };
    match r {
        Err(err)
            if matches!(
                err.raw_os_error(),
                Some(code) if code == 1 /* EPERM */ || code == 22 /* EINVAL */
            ) =>
        {
            Ok(())
        }
        other => other.map_err(io(path)),
    }
}

fn mtime(e: &Entry) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(e.mtime_nsec.min(999_999_999)));
    if e.mtime_sec >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(e.mtime_sec.unsigned_abs()) + nanos
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(e.mtime_sec.unsigned_abs()) + nanos
    }
}

/// One wanted file being received: written to a new file beside it, renamed over it when
/// complete (so a symlink in its place is replaced, never followed).
pub(crate) struct Incoming {
    tmp: PathBuf,
    target: PathBuf,
    file: File,
    left: u64,
    index: usize,
}

impl Plan {
    pub(crate) fn entry(&self, index: usize) -> &Entry {
        &self.entries[index]
    }

    /// Starts receiving the wanted file `index` (into `entries`).
    pub(crate) fn receive(&self, index: usize) -> Result<Incoming, MirrorError> {
        let e = &self.entries[index];
        let target = self.root.join(&e.path);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = target.with_file_name(format!(".kiln-sync.{}.{name}", std::process::id()));
        // A leftover of a killed daemon.
        let _ = std::fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        Ok(Incoming {
            tmp,
            target,
            file,
            left: e.size,
            index,
        })
    }

    /// Appends `data` to `incoming`.
    pub(crate) fn write(&self, incoming: &mut Incoming, data: &[u8]) -> Result<(), MirrorError> {
        let n = data.len() as u64;
        if n > incoming.left {
            let _ = std::fs::remove_file(&incoming.tmp);
            return Err(MirrorError::TooLong(
                self.entries[incoming.index].path.clone(),
            ));
        }
        incoming.left -= n;
        incoming.file.write_all(data).map_err(io(&incoming.tmp))
    }

    /// Gives the received file its mode, owner and time and puts it in place.
    pub(crate) fn finish(&self, incoming: Incoming) -> Result<(), MirrorError> {
        let e = &self.entries[incoming.index];
        let f = &incoming.file;
        let tmp = &incoming.tmp;
        f.set_permissions(std::fs::Permissions::from_mode(e.mode & 0o7777))
            .map_err(io(tmp))?;
        chown(tmp, e, false)?;
        f.set_modified(mtime(e)).map_err(io(tmp))?;
        std::fs::rename(tmp, &incoming.target).map_err(io(&incoming.target))
    }

    /// After the files: each directory gets its mode, owner and time, deepest first (writing
    /// into a directory changes its time).
    pub(crate) fn finish_dirs(&self) -> Result<(), MirrorError> {
        for e in self.entries.iter().rev() {
            if e.kind() != EntryKind::Dir {
                continue;
            }
            let path = self.root.join(&e.path);
            let dir = File::open(&path).map_err(io(&path))?;
            if !dir.metadata().map_err(io(&path))?.is_dir() {
                continue;
            }
            dir.set_permissions(std::fs::Permissions::from_mode(e.mode & 0o7777))
                .map_err(io(&path))?;
            chown(&path, e, false)?;
            dir.set_modified(mtime(e)).map_err(io(&path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind, size: u64) -> Entry {
        Entry {
            path: path.to_string(),
            kind: kind as i32,
            mode: 0o644,
            size,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 5,
            uid: 0,
            gid: 0,
            link_target: String::new(),
        }
    }

    fn receive_all(plan: &Plan, content: &[u8]) {
        for &i in &plan.wanted {
            let mut inc = plan.receive(i).unwrap();
            plan.write(&mut inc, content).unwrap();
            plan.finish(inc).unwrap();
        }
        plan.finish_dirs().unwrap();
    }

    #[test]
    fn hostile_paths_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("mirror");
        for bad in [
            "../escape",
            "/etc/passwd",
            "a/../../x",
            "a//b",
            "./a",
            "",
            "a\0b",
        ] {
            let err = plan(&root, vec![entry(bad, EntryKind::File, 1)])
                .err()
                .unwrap_or_else(|| panic!("`{bad:?}` accepted"));
            assert!(matches!(err, MirrorError::BadPath(_)), "{bad:?}: {err}");
        }
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn a_file_under_a_client_symlink_is_refused_so_nothing_is_written_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let root = dir.path().join("mirror");
        let mut link = entry("link", EntryKind::Symlink, 0);
        link.link_target = outside.to_str().unwrap().to_string();
        let err = plan(
            &root,
            vec![link.clone(), entry("link/pwned", EntryKind::File, 4)],
        )
        .err()
        .expect("a file under a symlink was accepted");
        assert!(matches!(err, MirrorError::Orphan(_)), "{err}");
        // Declaring it a directory first and a symlink after is a duplicate.
        let err = plan(
            &root,
            vec![
                entry("link", EntryKind::Dir, 0),
                link,
                entry("link/pwned", EntryKind::File, 4),
            ],
        )
        .err()
        .expect("a path declared twice was accepted");
        assert!(matches!(err, MirrorError::Duplicate(_)), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn a_symlink_left_in_the_mirror_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("victim");
        std::fs::write(&outside, "keep").unwrap();
        let root = dir.path().join("mirror");
        let mut link = entry("f", EntryKind::Symlink, 0);
        link.link_target = outside.to_str().unwrap().to_string();
        receive_all(&plan(&root, vec![link]).unwrap(), b"");
        assert!(std::fs::symlink_metadata(root.join("f"))
            .unwrap()
            .is_symlink());
        // Now `f` is a file: its content must replace the link, not go where it points.
        let p = plan(&root, vec![entry("f", EntryKind::File, 5)]).unwrap();
        assert_eq!(p.wanted, vec![0]);
        receive_all(&p, b"pwned");
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(root.join("f")).unwrap(), "pwned");
    }

    #[test]
    fn more_bytes_than_declared_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(dir.path(), vec![entry("f", EntryKind::File, 2)]).unwrap();
        let mut inc = p.receive(0).unwrap();
        assert!(matches!(
            p.write(&mut inc, b"abc"),
            Err(MirrorError::TooLong(_))
        ));
    }

    #[test]
    fn a_second_sync_wants_only_what_changed_and_removes_what_went() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("m");
        let first = vec![
            entry("d", EntryKind::Dir, 0),
            entry("d/a", EntryKind::File, 3),
            entry("b", EntryKind::File, 3),
            entry("gone", EntryKind::File, 3),
        ];
        let p = plan(&root, first.clone()).unwrap();
        assert_eq!(p.wanted.len(), 3);
        receive_all(&p, b"abc");
        let p = plan(&root, first[..3].to_vec()).unwrap();
        assert!(p.wanted.is_empty(), "unchanged files asked for again");
        assert_eq!(p.removed, 1);
        assert!(!root.join("gone").exists());
        let mut changed = first[..3].to_vec();
        changed[1].mtime_sec += 1;
        let p = plan(&root, changed).unwrap();
        assert_eq!(p.wanted, vec![1]);
    }

    #[test]
    fn an_owner_change_alone_needs_no_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("m");
        let mut f = entry("f", EntryKind::File, 3);
        receive_all(&plan(&root, vec![f.clone()]).unwrap(), b"abc");
        f.uid = 4242;
        f.gid = 4343;
        let p = plan(&root, vec![f]).unwrap();
        assert!(p.wanted.is_empty(), "the content was asked for again");
        // Applied in place (the tests run as root).
        let m = std::fs::metadata(root.join("f")).unwrap();
        assert_eq!((m.uid(), m.gid()), (4242, 4343));
    }
}

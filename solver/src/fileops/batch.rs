//! The parallel half of a directory copy. The walk creates directories in order (so every parent
//! exists before its children), and queues the leaf entries (files, symlinks, devices) here; a
//! flush copies them on rayon's pool, then gives the new directories back their source mtimes,
//! which copying into them moved. A COPY of tens of thousands of small files is bound by per-file
//! syscalls, so spreading them over the cores is what makes it fast.
//!
//! Hard links stay links, as BuildKit's copier keeps them: within one copy, a regular file whose
//! source inode an earlier leaf already had is not copied but linked to that leaf's destination,
//! after the flush that placed it.

use super::Owner;
use crate::SolveError;
use rayon::prelude::*;
use std::collections::hash_map::{Entry, HashMap};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One leaf entry to create.
pub(super) struct Leaf {
    pub src: PathBuf,
    pub meta: Metadata,
    pub dst: PathBuf,
    /// The destination's parent was created by this copy, so nothing can be in the way.
    pub fresh: bool,
    /// The path below the copied source (and so below the destination), slash-separated.
    pub frel: String,
}

/// Leaves waiting to be copied and directories waiting for their mtime. One batch serves one
/// copy action (all its sources), since hard-link groups span it.
#[derive(Default)]
pub(super) struct Batch {
    leaves: Vec<Leaf>,
    /// Leaves whose source inode an earlier leaf has, with that leaf's destination: linked to it
    /// once it is placed. They are not in `leaves`, so a reuse plan neither links them from an
    /// earlier snapshot nor records them in its manifest: only the first name of a group is.
    links: Vec<(Leaf, PathBuf)>,
    /// The destination of the first leaf of each source (dev, inode) with more than one name.
    firsts: HashMap<(u64, u64), PathBuf>,
    dir_times: Vec<(PathBuf, filetime::FileTime)>,
}

impl Batch {
    pub(super) fn push(&mut self, leaf: Leaf) {
        // As BuildKit, only regular files: a hard-linked symlink or device is copied per name.
        if leaf.meta.is_file() && leaf.meta.nlink() > 1 {
            match self.firsts.entry((leaf.meta.dev(), leaf.meta.ino())) {
                Entry::Occupied(first) => {
                    let first = first.get().clone();
                    self.links.push((leaf, first));
                    return;
                }
                Entry::Vacant(v) => {
                    v.insert(leaf.dst.clone());
                }
            }
        }
        self.leaves.push(leaf);
    }

    /// Records that `dir`, created by the copy, gets `mtime` once its contents are in place.
    pub(super) fn dir_time(&mut self, dir: PathBuf, mtime: filetime::FileTime) {
        self.dir_times.push((dir, mtime));
    }

    /// The leaves queued so far, in the order a flush hands them to a [`Place`].
    pub(super) fn leaves(&self) -> &[Leaf] {
        &self.leaves
    }

    /// Copies every queued leaf, in parallel, then sets the recorded directory mtimes.
    pub(super) fn flush(
        &mut self,
        owner: Option<Owner>,
        mode: Option<u32>,
    ) -> Result<(), SolveError> {
        self.flush_with(owner, mode, None)
    }

    /// As [`Batch::flush`], with a plan that may place leaf `i` (of [`Batch::leaves`]) as a
    /// hard link to an equal file of an earlier snapshot instead of copying it.
    pub(super) fn flush_with(
        &mut self,
        owner: Option<Owner>,
        mode: Option<u32>,
        plan: Option<&dyn Place>,
    ) -> Result<(), SolveError> {
        let leaves = std::mem::take(&mut self.leaves);
        let place = |(i, l): (usize, &Leaf)| match plan {
            Some(p) => p.place(i, l, owner, mode),
            None => copy_leaf(l, owner, mode).map(|_| ()),
        };
        // Below a few entries, handing work to the pool costs more than it saves.
        if leaves.len() < 16 {
            leaves.iter().enumerate().try_for_each(place)?;
        } else {
            leaves.par_iter().enumerate().try_for_each(place)?;
        }
        // Every first name is in place now (in this flush or an earlier one).
        for (leaf, first) in std::mem::take(&mut self.links) {
            link_leaf(&leaf, &first, owner, mode)?;
        }
        for (dir, mtime) in std::mem::take(&mut self.dir_times) {
            filetime::set_file_times(&dir, mtime, mtime)
                .map_err(SolveError::io(format!("`{}`", dir.display())))?;
        }
        Ok(())
    }
}

/// Places a flush's leaves other than by copying (the reuse plan links equal files from an
/// earlier snapshot); defined here so that the batch needs nothing of its users.
pub(super) trait Place: Sync {
    /// Places leaf `i` (of [`Batch::leaves`]) at its destination.
    fn place(
        &self,
        i: usize,
        l: &Leaf,
        owner: Option<Owner>,
        mode: Option<u32>,
    ) -> Result<(), SolveError>;
}

/// Copies one leaf; true when it is a regular file whose source did not change while it was
/// copied (see [`create_entry`]).
pub(super) fn copy_leaf(
    l: &Leaf,
    owner: Option<Owner>,
    mode: Option<u32>,
) -> Result<bool, SolveError> {
    if !l.fresh {
        clear_target(&l.dst, &l.meta)?;
    }
    create_entry(&l.src, &l.meta, &l.dst, owner, mode)
}

/// Places `l` as a second name of `first`, the destination of an earlier leaf with the same
/// source inode. The inode already has the content and metadata a copy of `l` would get (same
/// source, same owner and mode). When the link cannot be made (`EMLINK`, or the first name was
/// replaced by a later entry of the copy), `l` is copied, as it would be without the link.
fn link_leaf(
    l: &Leaf,
    first: &Path,
    owner: Option<Owner>,
    mode: Option<u32>,
) -> Result<(), SolveError> {
    if !l.fresh {
        clear_target(&l.dst, &l.meta)?;
    }
    let first_is_file = std::fs::symlink_metadata(first).is_ok_and(|m| m.is_file());
    if first_is_file && std::fs::hard_link(first, &l.dst).is_ok() {
        return Ok(());
    }
    create_entry(&l.src, &l.meta, &l.dst, owner, mode).map(|_| ())
}

/// Removes what is in the way of a non-directory at `dst`.
pub(super) fn clear_target(dst: &Path, meta: &Metadata) -> Result<(), SolveError> {
    let err = SolveError::io(format!("`{}`", dst.display()));
    if let Ok(m) = std::fs::symlink_metadata(dst) {
        if m.is_dir() && !meta.is_dir() {
            std::fs::remove_dir_all(dst).map_err(&err)?;
        } else if !m.is_dir() {
            std::fs::remove_file(dst).map_err(&err)?;
        }
    }
    Ok(())
}

/// Creates `dst` (which must not exist) as a copy of the non-directory `src`: owner (the
/// source's when none is given: see [`super::copy_owner`]), permission bits (`mode` or the source's) and the source's mtime.
///
/// Returns true for a regular file whose source, looked at through the open descriptor once
/// the data is copied, still has the size, times and inode `meta` says: then what was copied is
/// the content the walk saw (any write to the source moves its ctime before it changes a byte),
/// which is what lets [`super::reuse`] record the copy's content hash.
pub(super) fn create_entry(
    src: &Path,
    meta: &Metadata,
    dst: &Path,
    owner: Option<Owner>,
    mode: Option<u32>,
) -> Result<bool, SolveError> {
    let err = SolveError::io(format!("`{}`", dst.display()));
    let ft = meta.file_type();
    let o = owner.unwrap_or(Owner {
        uid: meta.uid(),
        gid: meta.gid(),
    });
    let mtime = filetime::FileTime::from_last_modification_time(meta);
    if ft.is_symlink() {
        let target = std::fs::read_link(src).map_err(&err)?;
        std::os::unix::fs::symlink(&target, dst).map_err(&err)?;
        std::os::unix::fs::lchown(dst, Some(o.uid), Some(o.gid)).map_err(&err)?;
        filetime::set_symlink_file_times(dst, mtime, mtime).map_err(&err)?;
        return Ok(false);
    }
    let perm = mode.unwrap_or(meta.mode() & 0o7777);
    if ft.is_file() {
        // Everything through the two descriptors: no further path lookups on the overlay.
        let mut from = File::open(src).map_err(SolveError::io(format!("`{}`", src.display())))?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dst)
            .map_err(&err)?;
        // std's File-to-File copy uses copy_file_range (reflinks or in-kernel copies).
        io::copy(&mut from, &mut to).map_err(&err)?;
        std::os::unix::fs::fchown(&to, Some(o.uid), Some(o.gid)).map_err(&err)?;
        // chown clears setuid bits, so permissions come after it.
        to.set_permissions(std::fs::Permissions::from_mode(perm))
            .map_err(&err)?;
        filetime::set_file_handle_times(&to, Some(mtime), Some(mtime)).map_err(&err)?;
        let after = from
            .metadata()
            .map_err(SolveError::io(format!("`{}`", src.display())))?;
        return Ok(same_file_state(meta, &after));
    }
    // Devices, fifos and sockets are recreated, not read.
    let c = std::ffi::CString::new(dst.as_os_str().as_encoded_bytes())
        .map_err(|_| SolveError::Op(format!("path `{}` contains a NUL byte", dst.display())))?;
    // SAFETY: `c` is a valid NUL-terminated path; mknod does not retain the pointer.
    let rc = unsafe { libc::mknod(c.as_ptr(), meta.mode(), meta.rdev() as libc::dev_t) };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    std::os::unix::fs::lchown(dst, Some(o.uid), Some(o.gid)).map_err(&err)?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(perm)).map_err(&err)?;
    // Not `set_file_times`: it may open the path, and opening a fifo blocks until a writer comes.
    filetime::set_symlink_file_times(dst, mtime, mtime).map_err(&err)?;
    Ok(false)
}

/// Whether two looks at one file show it unchanged in between: same inode, size, mtime and
/// ctime (to the nanosecond).
pub(super) fn same_file_state(a: &Metadata, b: &Metadata) -> bool {
    (a.dev(), a.ino(), a.size(), a.mtime(), a.mtime_nsec())
        == (b.dev(), b.ino(), b.size(), b.mtime(), b.mtime_nsec())
        && (a.ctime(), a.ctime_nsec()) == (b.ctime(), b.ctime_nsec())
}

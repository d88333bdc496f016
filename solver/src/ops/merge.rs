//! MergeOp (`COPY --link`): stacks the snapshot chains of its inputs, later ones on top. The first
//! input's chain is reused as it is; every snapshot of each later chain is re-applied on top as a
//! new snapshot holding the same diff (files hard-linked, directories, symlinks, whiteouts and
//! opaque markers recreated), so each keeps its own layer, byte for byte the same whatever the
//! base: a linked layer's blob does not change when the image below it does.

use super::{Inputs, Operation};
use crate::{Output, SolveError, VertexTask};
use futures::future::{BoxFuture, FutureExt};
use kiln_cache::{MutableSnapshot, Store};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

pub(super) struct Merge<'a>(pub &'a kiln_llb::MergeOp);

impl Operation for Merge<'_> {
    /// Merges the op's `inputs` (indices into the vertex's inputs).
    fn execute<'a>(
        &'a self,
        v: &'a VertexTask,
        inputs: &'a Inputs,
    ) -> BoxFuture<'a, Result<Output, SolveError>> {
        async move {
            let outputs: Vec<Output> = self
                .0
                .inputs
                .iter()
                .map(|i| super::input_output(inputs, *i))
                .collect::<Result<_, _>>()?;
            let store = v.solver.inner.store.clone();
            tokio::task::spawn_blocking(move || merge(&store, &outputs))
                .await
                .map_err(SolveError::from)?
        }
        .boxed()
    }
}

fn merge(store: &Store, inputs: &[Output]) -> Result<Output, SolveError> {
    let mut tops = Vec::new();
    for o in inputs {
        match o {
            Output::Scratch => {}
            Output::Snapshot(s) => tops.push(*s),
            Output::Local(_) => {
                return Err(SolveError::Unsupported(
                    "merging a local context (copy it into a stage first)".into(),
                ))
            }
        }
    }
    let Some((&base, rest)) = tops.split_first() else {
        return Ok(Output::Scratch);
    };
    let snaps = store.snapshots();
    let mut top = base;
    // Removed again unless the whole merge succeeds, children before their parents.
    let mut created = Made(Vec::new());
    for &upper in rest {
        let mut chain = snaps.chain(upper)?;
        // Bottom first.
        chain.reverse();
        // Each re-applied layer is a diff against the input's own layers below it, never
        // against the base, so its blob is the same on any base (as BuildKit's merge keeps
        // the input's blobs).
        let floor = top;
        for layer in chain {
            let snap = snaps.create_over_mutable(Some(top), Some(floor))?;
            let (from, to) = (snaps.fs_dir(layer), snap.fs_dir());
            top = snap.id();
            created.0.push(snap);
            copy_tree(&from, &to).map_err(SolveError::io(format!(
                "cannot re-apply snapshot `{layer}` (`{}`) in a merge",
                from.display()
            )))?;
            snaps.sync(top)?;
        }
    }
    created.commit();
    Ok(Output::Snapshot(top))
}

/// The snapshots a merge made, each on the one before: dropped, they are removed newest first
/// (a snapshot with a child cannot be removed).
struct Made(Vec<MutableSnapshot>);

impl Made {
    fn commit(mut self) {
        for s in std::mem::take(&mut self.0) {
            s.commit();
        }
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        while let Some(s) = self.0.pop() {
            drop(s);
        }
    }
}

/// Recreates the diff directory `from` in the (existing, empty) `to`: regular files are
/// hard-linked (snapshots are never written once committed), everything else recreated with
/// its owner, mode, xattrs and mtime.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    let mut names: Vec<_> = std::fs::read_dir(from)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let (src, dst) = (from.join(&name), to.join(&name));
        let m = std::fs::symlink_metadata(&src)?;
        let ft = m.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
        } else if ft.is_file() {
            if std::fs::hard_link(&src, &dst).is_err() {
                // Another file system or too many links: a copy holds the same bytes.
                std::fs::copy(&src, &dst)?;
                set_attrs(&src, &dst, &m)?;
            }
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
            set_attrs(&src, &dst, &m)?;
        } else {
            // Whiteouts (0/0 character devices), devices, fifos and sockets.
            mknod(&dst, &m)?;
            set_attrs(&src, &dst, &m)?;
        }
    }
    set_attrs(from, to, &meta)
}

fn mknod(dst: &Path, m: &std::fs::Metadata) -> io::Result<()> {
    let ft = m.file_type();
    if !(ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket()) {
        return Err(io::Error::other("unknown file type"));
    }
    let c = std::ffi::CString::new(dst.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other("path contains a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated path; mknod does not retain the pointer.
    let rc = unsafe { libc::mknod(c.as_ptr(), m.mode(), m.rdev() as libc::dev_t) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Owner, xattrs (overlay's opaque marker among them), permissions and mtime of `src` onto
/// `dst`, in the order that keeps each (chown clears setuid bits).
fn set_attrs(src: &Path, dst: &Path, m: &std::fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::lchown(dst, Some(m.uid()), Some(m.gid()))?;
    if let Ok(names) = xattr::list(src) {
        for name in names {
            if let Ok(Some(v)) = xattr::get(src, &name) {
                xattr::set(dst, &name, &v)?;
            }
        }
    }
    if !m.file_type().is_symlink() {
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
    }
    // Without following: a whiteout device cannot be opened, and a symlink keeps its own time.
    let mtime = filetime::FileTime::from_last_modification_time(m);
    filetime::set_symlink_file_times(dst, mtime, mtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tree_keeps_whiteouts_opaque_dirs_links_and_times() {
        let t = tempfile::tempdir().unwrap();
        let (from, to) = (t.path().join("from"), t.path().join("to"));
        std::fs::create_dir_all(from.join("d")).unwrap();
        std::fs::create_dir(&to).unwrap();
        std::fs::write(from.join("d/f"), b"data").unwrap();
        std::os::unix::fs::symlink("d/f", from.join("l")).unwrap();
        let wh = std::ffi::CString::new(from.join("gone").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid path; creating an overlay whiteout (needs root, as the suite runs).
        assert_eq!(unsafe { libc::mknod(wh.as_ptr(), libc::S_IFCHR, 0) }, 0);
        xattr::set(from.join("d"), kiln_cache::OPAQUE_XATTR, b"y").unwrap();
        let old = filetime::FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_times(from.join("d"), old, old).unwrap();
        copy_tree(&from, &to).unwrap();
        assert_eq!(std::fs::read(to.join("d/f")).unwrap(), b"data");
        assert_eq!(std::fs::read_link(to.join("l")).unwrap(), Path::new("d/f"));
        assert!(kiln_cache::is_whiteout(
            &std::fs::symlink_metadata(to.join("gone")).unwrap()
        ));
        assert_eq!(
            xattr::get(to.join("d"), kiln_cache::OPAQUE_XATTR).unwrap(),
            Some(b"y".to_vec())
        );
        let m = std::fs::metadata(to.join("d")).unwrap();
        assert_eq!(filetime::FileTime::from_last_modification_time(&m), old);
    }
}

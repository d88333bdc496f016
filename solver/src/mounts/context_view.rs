//! What a `RUN --mount=type=bind` of the build context shows: only the files `.dockerignore`
//! lets through, as BuildKit (which transfers only those) shows them.
//!
//! Copying the context for every step would be slow, so the bind becomes an overlay: the
//! context itself as the bottom layer and, above it, a layer of whiteouts (character devices
//! 0:0) for the excluded entries, whose directories carry the context's own metadata so that the
//! merged view keeps the context's modes, owners and times.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::context::join_rel;
use crate::{LocalContext, SolveError};

/// The whiteout layer being built under `layer`, for the context directory `src` (`src_rel`
/// relative to the context root).
struct Hider<'a> {
    ctx: &'a dyn LocalContext,
    src: &'a Path,
    layer: &'a Path,
    whiteouts: usize,
}

impl Hider<'_> {
    /// Create `rel` (relative to `src`) and its parents in the layer, each with the metadata of
    /// the same directory in the context.
    fn ensure_dir(&self, rel: &Path) -> Result<(), SolveError> {
        let mut cur = PathBuf::new();
        for part in rel.iter() {
            cur.push(part);
            let dst = self.layer.join(&cur);
            if dst.exists() {
                continue;
            }
            let md = std::fs::symlink_metadata(self.src.join(&cur)).map_err(SolveError::io(
                format!("cannot read `{}`", self.src.join(&cur).display()),
            ))?;
            std::fs::create_dir(&dst)
                .map_err(SolveError::io(format!("cannot create `{}`", dst.display())))?;
            copy_metadata(&dst, &md)?;
        }
        Ok(())
    }

    fn whiteout(&mut self, rel: &Path) -> Result<(), SolveError> {
        if let Some(parent) = rel.parent() {
            self.ensure_dir(parent)?;
        }
        let path = self.layer.join(rel);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            SolveError::Op(format!(
                "cannot create a whiteout `{}`: the path has a NUL byte",
                path.display()
            ))
        })?;
        // SAFETY: mknod(2) reads one NUL-terminated path that outlives the call.
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
            return Err(SolveError::io(format!(
                "cannot create a whiteout `{}`",
                path.display()
            ))(std::io::Error::last_os_error()));
        }
        self.whiteouts += 1;
        Ok(())
    }

    /// Hide the excluded entries below `rel` (relative to `src`; `ctx_rel` relative to the
    /// context root). Returns how many entries stay visible in it.
    fn hide_in(&mut self, rel: &Path, ctx_rel: &str) -> Result<usize, SolveError> {
        let dir = self.src.join(rel);
        let rd = std::fs::read_dir(&dir)
            .map_err(SolveError::io(format!("cannot read `{}`", dir.display())))?;
        let mut visible = 0;
        for entry in rd {
            let entry =
                entry.map_err(SolveError::io(format!("cannot read `{}`", dir.display())))?;
            let name = entry.file_name();
            let child_rel = rel.join(&name);
            let child_ctx = join_rel(ctx_rel, &name.to_string_lossy());
            let is_dir = entry
                .file_type()
                .map_err(SolveError::io(format!(
                    "cannot read `{}`",
                    entry.path().display()
                )))?
                .is_dir();
            let excluded = self.ctx.excluded(&child_ctx);
            if excluded && !(is_dir && self.ctx.may_reinclude()) {
                self.whiteout(&child_rel)?;
                continue;
            }
            if is_dir {
                let inside = self.hide_in(&child_rel, &child_ctx)?;
                if excluded && inside == 0 {
                    // Nothing in it was re-included: the directory itself is not sent.
                    let _ = std::fs::remove_dir_all(self.layer.join(&child_rel));
                    self.whiteout(&child_rel)?;
                    continue;
                }
            }
            visible += 1;
        }
        Ok(visible)
    }
}

fn copy_metadata(dst: &Path, md: &std::fs::Metadata) -> Result<(), SolveError> {
    std::os::unix::fs::chown(dst, Some(md.uid()), Some(md.gid()))
        .map_err(SolveError::io(format!("cannot chown `{}`", dst.display())))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(md.mode() & 0o7777))
        .map_err(SolveError::io(format!("cannot chmod `{}`", dst.display())))?;
    let mtime = filetime::FileTime::from_last_modification_time(md);
    let atime = filetime::FileTime::from_last_access_time(md);
    filetime::set_symlink_file_times(dst, atime, mtime).map_err(SolveError::io(format!(
        "cannot set the times of `{}`",
        dst.display()
    )))
}

/// Builds, under `layer` (an empty directory), the whiteouts that hide the context's excluded
/// entries below `src`. Returns `None` when nothing is excluded there: bind `src` as it is.
pub(crate) fn whiteout_layer(
    ctx: &dyn LocalContext,
    src: &Path,
    layer: &Path,
) -> Result<Option<PathBuf>, SolveError> {
    let ctx_rel = src
        .strip_prefix(ctx.root())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !ctx_rel.is_empty() && ctx.excluded(&ctx_rel) && !ctx.may_reinclude() {
        return Err(SolveError::Op(format!(
            "mount source `{ctx_rel}` is excluded by `.dockerignore`, so it is not part of the build context; remove it from `.dockerignore` or mount another path"
        )));
    }
    if !std::fs::metadata(src)
        .map_err(SolveError::io(format!("cannot read `{}`", src.display())))?
        .is_dir()
    {
        return Ok(None);
    }
    std::fs::create_dir_all(layer).map_err(SolveError::io(format!(
        "cannot create `{}`",
        layer.display()
    )))?;
    let mut hider = Hider {
        ctx,
        src,
        layer,
        whiteouts: 0,
    };
    hider.hide_in(Path::new(""), &ctx_rel)?;
    if hider.whiteouts == 0 {
        return Ok(None);
    }
    let md = std::fs::metadata(src)
        .map_err(SolveError::io(format!("cannot read `{}`", src.display())))?;
    copy_metadata(layer, &md)?;
    Ok(Some(layer.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    struct Ctx {
        root: PathBuf,
        excluded: Vec<&'static str>,
        reinclude: bool,
    }

    impl LocalContext for Ctx {
        fn root(&self) -> &Path {
            &self.root
        }
        fn excluded(&self, rel: &str) -> bool {
            self.excluded.contains(&rel)
        }
        fn may_reinclude(&self) -> bool {
            self.reinclude
        }
    }

    fn tree(root: &Path) {
        for d in ["src", "node_modules/pkg", "docs"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "src/main.rs",
            "node_modules/pkg/index.js",
            "secret.env",
            "docs/a.md",
        ] {
            std::fs::write(root.join(f), f).unwrap();
        }
    }

    fn is_whiteout(p: &Path) -> bool {
        std::fs::symlink_metadata(p)
            .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
            .unwrap_or(false)
    }

    #[test]
    fn excluded_entries_become_whiteouts_and_parents_keep_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ctx");
        tree(&root);
        std::fs::set_permissions(
            root.join("node_modules"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        let ctx = Ctx {
            root: root.clone(),
            excluded: vec!["secret.env", "node_modules/pkg"],
            reinclude: false,
        };
        let layer = dir.path().join("layer");
        let got = whiteout_layer(&ctx, &root, &layer).unwrap();
        assert_eq!(got.as_deref(), Some(layer.as_path()));
        assert!(is_whiteout(&layer.join("secret.env")));
        assert!(is_whiteout(&layer.join("node_modules/pkg")));
        let md = std::fs::metadata(layer.join("node_modules")).unwrap();
        assert_eq!(md.mode() & 0o777, 0o750);
        assert!(!layer.join("src").exists());
    }

    #[test]
    fn nothing_excluded_means_a_plain_bind() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ctx");
        tree(&root);
        let ctx = Ctx {
            root: root.clone(),
            excluded: vec!["other"],
            reinclude: false,
        };
        assert_eq!(
            whiteout_layer(&ctx, &root.join("src"), &dir.path().join("l")).unwrap(),
            None
        );
    }

    #[test]
    fn an_excluded_source_is_refused_and_emptied_directories_are_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ctx");
        tree(&root);
        let ctx = Ctx {
            root: root.clone(),
            excluded: vec!["docs"],
            reinclude: false,
        };
        let err = whiteout_layer(&ctx, &root.join("docs"), &dir.path().join("l"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("excluded by `.dockerignore`"), "{err}");
        // With `!` patterns an excluded directory is entered; with nothing re-included in it,
        // it is hidden whole.
        let ctx = Ctx {
            root: root.clone(),
            excluded: vec!["docs", "docs/a.md"],
            reinclude: true,
        };
        let layer = dir.path().join("l2");
        whiteout_layer(&ctx, &root, &layer).unwrap();
        assert!(is_whiteout(&layer.join("docs")));
    }
}

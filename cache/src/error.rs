//! The one error type of the crate: every variant says what failed, where, and what to do next.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong with the store on disk.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file-system call failed.
    #[error("cannot {action} `{}`: {cause}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: io::Error,
    },

    /// Another process owns the store root, and the caller would not wait.
    #[error(
        "store `{}` is in use by {holder}; let it finish and try again (without `--lock-timeout 0`, kiln waits for it), or use another `KILN_ROOT`",
        root.display()
    )]
    Locked { root: PathBuf, holder: LockHolder },

    /// Another process kept the store root longer than the caller would wait.
    #[error(
        "gave up waiting for the store `{}` after {}: {holder} still holds it; let it finish and try again, allow a longer `--lock-timeout`, or use another `KILN_ROOT`",
        root.display(), humantime(*waited)
    )]
    LockTimeout {
        root: PathBuf,
        holder: LockHolder,
        waited: std::time::Duration,
    },

    /// A digest string is not `sha256:<64 lowercase hex>`.
    #[error("invalid digest `{digest}`: {reason}; expected `sha256:` followed by 64 lowercase hex digits")]
    InvalidDigest {
        digest: String,
        reason: &'static str,
    },

    /// Written bytes did not hash to the digest the caller expected.
    #[error("content does not match its digest: expected `{expected}`, got `{actual}`; the source is corrupt or the digest is wrong, nothing was stored")]
    DigestMismatch { expected: String, actual: String },

    /// A stored blob no longer hashes to its name: the disk or someone changed it.
    #[error("blob `{digest}` in the store is corrupt (its content hashes to `{actual}`); run `kiln check` to drop it and what needs it, then pull, import or build the image again")]
    CorruptBlob { digest: String, actual: String },

    /// The file system under the store has no space left (or the user's quota is used up).
    #[error("the disk is full: cannot {action} `{}`; free space on that file system (`kiln prune` removes unused snapshots and blobs) or point `KILN_ROOT` at a larger disk", path.display())]
    DiskFull { action: &'static str, path: PathBuf },

    /// A blob is not in the content store.
    #[error("blob `{digest}` is not in the content store; pull or build it again")]
    BlobNotFound { digest: String },

    /// The redb index failed.
    #[error("cache index `{}`: cannot {action}: {cause}; if the file is corrupt, move it away and the cache is rebuilt", path.display())]
    Db {
        action: &'static str,
        path: PathBuf,
        cause: Box<redb::Error>,
    },

    /// A record in the index or a file of the store does not parse.
    #[error(
        "corrupt {what} at `{location}`: {detail}; remove it (or the whole store) and build again"
    )]
    Corrupt {
        what: &'static str,
        location: String,
        detail: String,
    },

    /// A record of the index or a file of the store that does not encode or decode as JSON.
    ///
    /// Like [`CacheError::Corrupt`], with the JSON error kept typed. It is printed in the text,
    /// before the hint, and is not also the `source()`, which `{:#}` would print a second time.
    #[error(
        "corrupt {what} at `{location}`: {cause}; remove it (or the whole store) and build again"
    )]
    CorruptJson {
        what: &'static str,
        location: String,
        cause: serde_json::Error,
    },

    /// A snapshot id is not recorded in the index.
    #[error("snapshot `{0}` does not exist in the store; its result was removed, build again")]
    SnapshotNotFound(u64),

    /// A snapshot still has children that build on it.
    #[error("snapshot `{id}` is the parent of snapshot `{child}`; remove the children first")]
    SnapshotInUse { id: u64, child: u64 },

    /// A layer tar is malformed or holds an entry kiln refuses to unpack.
    #[error("layer tar entry `{entry}`: {reason}")]
    BadLayer { entry: String, reason: String },

    /// A layer tar cannot be read: the stream (a download, a decompressor) or a header field.
    /// The I/O error is printed in the text (the solver holds a `CacheError` as
    /// text), so it is not also the `source()`.
    #[error("layer tar entry `{entry}`: {what}: {cause}")]
    LayerRead {
        entry: String,
        /// What could not be read: `cannot read the tar`, `bad uid`.
        what: String,
        cause: io::Error,
    },

    /// A snapshot chain deeper than overlayfs can stack.
    #[error(
        "the filesystem has {layers} layers and overlayfs stacks at most {max}: use fewer steps \
         (join `RUN` commands with `&&`, copy several files per `COPY`) or squash the base image"
    )]
    TooManyLayers { layers: usize, max: usize },

    /// A mount request is not possible as asked.
    #[error("cannot mount at `{}`: {reason}", target.display())]
    MountRequest { target: PathBuf, reason: String },

    /// The mount or unmount syscall failed.
    #[error("{action} at `{}` failed: {cause}; kiln needs root (or CAP_SYS_ADMIN), overlayfs, and a `KILN_ROOT` that is not itself on overlayfs", target.display())]
    Mount {
        action: &'static str,
        target: PathBuf,
        cause: nix::Error,
    },

    /// A file asked for through a snapshot chain is not a regular file.
    #[error("`{path}` in the image is not a regular file ({kind})")]
    NotAFile { path: String, kind: &'static str },

    /// An image record cannot be stored as given.
    #[error("image `{name}`: {reason}")]
    BadImage { name: String, reason: String },
}

impl CacheError {
    /// Wraps a file-system error of `action` on `path`; a full disk becomes [`CacheError::DiskFull`].
    pub fn io(action: &'static str, path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        move |source| {
            if is_disk_full(&source) {
                return CacheError::DiskFull { action, path };
            }
            CacheError::Io {
                action,
                path,
                cause: source,
            }
        }
    }

    /// Whether the error is (or wraps) a full disk.
    pub fn is_disk_full(&self) -> bool {
        match self {
            CacheError::DiskFull { .. } => true,
            CacheError::Io { cause: source, .. } => is_disk_full(source),
            _ => false,
        }
    }

    pub(crate) fn db<E: Into<redb::Error>>(
        action: &'static str,
        path: &Path,
    ) -> impl FnOnce(E) -> Self {
        let path = path.to_path_buf();
        move |e| {
            let e: redb::Error = e.into();
            if let redb::Error::Io(io) = &e {
                if is_disk_full(io) {
                    return CacheError::DiskFull { action, path };
                }
            }
            CacheError::Db {
                action,
                path,
                cause: Box::new(e),
            }
        }
    }

    pub(crate) fn bad_layer(entry: impl Into<String>, reason: impl Into<String>) -> Self {
        CacheError::BadLayer {
            entry: entry.into(),
            reason: reason.into(),
        }
    }
}

/// `1.5s`, `2m`, `300ms`: a duration as `--lock-timeout` takes it.
fn humantime(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

/// `ENOSPC` or `EDQUOT`, also when wrapped by a reader or writer adapter.
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        return true;
    }
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<io::Error>())
        .is_some_and(is_disk_full)
}

/// Who holds a store, as its lock file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockHolder {
    /// `None` when the holder has not written its name yet (or the file was damaged).
    pub pid: Option<u32>,
    /// What the holder is, e.g. `kiln build`.
    pub command: String,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, self.command.is_empty()) {
            (Some(pid), false) => write!(f, "process {pid} ({})", self.command),
            (Some(pid), true) => write!(f, "process {pid}"),
            (None, _) => f.write_str("another process"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_reads_once_in_a_chain() {
        let e = CacheError::io("read", "/store/x")(io::Error::from(io::ErrorKind::NotFound));
        // The cause is in the text; were it the source too, `{:#}` would print it twice.
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(e.to_string(), "cannot read `/store/x`: entity not found");
    }
}

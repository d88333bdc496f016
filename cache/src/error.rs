//! The one error type of the crate: every variant says what failed, where, and what to do next.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong with the store on disk.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file-system call failed.
    #[error("cannot {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Another process owns the store root.
    #[error(
        "store `{}` is locked by process {holder}; stop that process (or let it finish) and try again, or use another `KILN_ROOT`",
        root.display()
    )]
    Locked { root: PathBuf, holder: String },

    /// A digest string is not `sha256:<64 lowercase hex>`.
    #[error("invalid digest `{digest}`: {reason}; expected `sha256:` followed by 64 lowercase hex digits")]
    InvalidDigest {
        digest: String,
        reason: &'static str,
    },

    /// Written bytes did not hash to the digest the caller expected.
    #[error("content does not match its digest: expected `{expected}`, got `{actual}`; the source is corrupt or the digest is wrong, nothing was stored")]
    DigestMismatch { expected: String, actual: String },

    /// A blob is not in the content store.
    #[error("blob `{digest}` is not in the content store; pull or build it again")]
    BlobNotFound { digest: String },

    /// The redb index failed.
    #[error("cache index `{}`: cannot {action}: {source}; if the file is corrupt, move it away and the cache is rebuilt", path.display())]
    Db {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
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

    /// A snapshot id is not recorded in the index.
    #[error("snapshot `{0}` does not exist in the store; its result was removed, build again")]
    SnapshotNotFound(u64),

    /// A snapshot still has children that build on it.
    #[error("snapshot `{id}` is the parent of snapshot `{child}`; remove the children first")]
    SnapshotInUse { id: u64, child: u64 },

    /// A layer tar is malformed or holds an entry kiln refuses to unpack.
    #[error("layer tar entry `{entry}`: {reason}")]
    BadLayer { entry: String, reason: String },

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
    #[error("{action} at `{}` failed: {source}; kiln needs root (or CAP_SYS_ADMIN), overlayfs, and a `KILN_ROOT` that is not itself on overlayfs", target.display())]
    Mount {
        action: &'static str,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },

    /// A file asked for through a snapshot chain is not a regular file.
    #[error("`{path}` in the image is not a regular file ({kind})")]
    NotAFile { path: String, kind: &'static str },

    /// An image record cannot be stored as given.
    #[error("image `{name}`: {reason}")]
    BadImage { name: String, reason: String },
}

impl CacheError {
    pub(crate) fn io(
        action: &'static str,
        path: impl AsRef<Path>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        move |source| CacheError::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn db<E: Into<redb::Error>>(
        action: &'static str,
        path: &Path,
    ) -> impl FnOnce(E) -> Self {
        let path = path.to_path_buf();
        move |e| CacheError::Db {
            action,
            path,
            source: Box::new(e.into()),
        }
    }

    pub(crate) fn bad_layer(entry: impl Into<String>, reason: impl Into<String>) -> Self {
        CacheError::BadLayer {
            entry: entry.into(),
            reason: reason.into(),
        }
    }
}

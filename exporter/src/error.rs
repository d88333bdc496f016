//! The one error type of the crate: each variant says what failed, where, and what to do next.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("snapshot directory `{path}` is missing or not a directory: {cause}; check that the snapshot still exists (it may have been garbage-collected)")]
    SnapshotDir { path: PathBuf, cause: io::Error },

    #[error("cannot {op} `{path}`: {cause}; check that the path exists and is readable")]
    Read {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },

    #[error("`{path}` changed while it was being archived ({expected} bytes expected, {got} read); export again when nothing writes to the snapshot")]
    FileChanged {
        path: PathBuf,
        expected: u64,
        got: u64,
    },

    #[error("device `{path}` has numbers {major}:{minor}, which a tar header cannot hold; remove the device node from the image")]
    DeviceNumber {
        path: PathBuf,
        major: u64,
        minor: u64,
    },

    #[error("cannot write {what}: {cause}; check free space and permissions of the destination")]
    Write { what: String, cause: io::Error },

    #[error("cannot write {what}: the disk is full; free space (`kiln prune` removes unused snapshots and blobs) or write to a larger disk")]
    DiskFull { what: String },

    #[error("image config lists {config} diff_ids but {layers} layers were given; fill `rootfs` from the layers with `fill_rootfs`")]
    LayerCount { config: usize, layers: usize },

    #[error("image config rootfs.diff_ids[{index}] is `{config}` but layer {index} has diffID `{layer}`; fill `rootfs` from the layers with `fill_rootfs`")]
    DiffIdMismatch {
        index: usize,
        config: String,
        layer: String,
    },

    #[error("cannot encode {what} as JSON: {cause}")]
    Json {
        what: &'static str,
        cause: serde_json::Error,
    },

    #[error("invalid OCI data in {what}: {detail}")]
    Oci { what: String, detail: String },

    /// OCI data that does not build or decode: the oci-spec or JSON error is kept typed, and
    /// printed in the text only (a holder prints this error as text; as a `source()` too,
    /// `{:#}` would print it twice).
    #[error("invalid OCI data in {what}: {cause}")]
    OciData {
        what: String,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error(
        "`{digest}` is not a valid sha256 digest (expected `sha256:` and 64 lowercase hex digits)"
    )]
    BadDigest { digest: String },

    #[error("blob `{digest}` is not in the content store; rebuild the image to recreate it")]
    MissingBlob { digest: String },

    #[error("blob `{digest}` in the content store is {actual} bytes but its descriptor says {expected}; the store is damaged: delete the blob and rebuild")]
    BlobSize {
        digest: String,
        expected: u64,
        actual: u64,
    },

    #[error("`{path}` is not a valid OCI layout index: {cause}; choose an empty directory or repair `index.json`")]
    BadLayoutIndex {
        path: PathBuf,
        cause: serde_json::Error,
    },

    #[error("image name `{name}` is not usable as `org.opencontainers.image.ref.name`: {reason}")]
    BadName { name: String, reason: &'static str },

    #[error(transparent)]
    Store(#[from] kiln_cache::CacheError),
}

impl ExportError {
    pub(crate) fn read(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ExportError::Read {
            op,
            path: path.into(),
            cause: source,
        }
    }

    pub(crate) fn write(what: impl Into<String>, source: io::Error) -> Self {
        if is_disk_full(&source) {
            return ExportError::DiskFull { what: what.into() };
        }
        ExportError::Write {
            what: what.into(),
            cause: source,
        }
    }
}

/// `ENOSPC`/`EDQUOT`, also when a writer adapter wrapped it.
fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<io::Error>())
        .is_some_and(is_disk_full)
}

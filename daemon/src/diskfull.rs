//! A full disk under the store: recognise it in any error chain, say so in plain words, and
//! drop what the failed build recorded, so `kiln prune` can free its snapshots.

use kiln_cache::{CacheError, Store};

/// Whether `e` (or anything it wraps) is `ENOSPC`/`EDQUOT`, however a crate worded it.
pub(crate) fn is_disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) {
                return true;
            }
        }
        if cause
            .downcast_ref::<CacheError>()
            .is_some_and(CacheError::is_disk_full)
        {
            return true;
        }
        // Errors that carry their cause as text (the solver's) still name it.
        let text = cause.to_string();
        text.contains("No space left on device")
            || text.contains("Disk quota exceeded")
            || text.contains("the disk is full")
    })
}

/// Drops the cache results recorded at or after `since` (unix seconds): a build that stopped
/// on a full disk must not leave results whose snapshots nothing can use or free.
pub(crate) fn drop_results_since(store: &Store, since: u64) -> Result<usize, CacheError> {
    let mut n = 0;
    for (key, result) in store.index().list()? {
        if result.created_unix >= since {
            store.index().remove(&key)?;
            n += 1;
        }
    }
    Ok(n)
}

/// The words put before a disk-full error.
pub(crate) fn message(store: &Store) -> String {
    format!(
        "the disk holding the store `{}` is full: nothing of this build was kept; free space \
         (`kiln prune` removes unused snapshots and blobs) or point `KILN_ROOT` at a larger disk",
        store.root().display()
    )
}

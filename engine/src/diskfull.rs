//! A full disk under the store: recognise it in any error chain, say so in plain words, and
//! drop what the failed build recorded, so `kiln prune` can free its snapshots.

use kiln_cache::{CacheError, Store};
use kiln_solver::SolveError;

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
        // Errors that carry their cause as text (the solver's) still name it; a step's own
        // output does not count: a full tmpfs inside the container is not the store's disk.
        // A step's cause is shared: it shows up as an `Arc`.
        let solve = cause.downcast_ref::<SolveError>().or_else(|| {
            cause
                .downcast_ref::<std::sync::Arc<SolveError>>()
                .map(|a| a.as_ref())
        });
        match solve {
            Some(e) => solve_is_disk_full(e),
            None => names_disk_full(&cause.to_string()),
        }
    })
}

/// Whether the solver's own part of an error says the disk is full (its sources are looked at
/// by the chain walk).
fn solve_is_disk_full(e: &SolveError) -> bool {
    match e {
        SolveError::Cache(c) => c.is_disk_full(),
        SolveError::Op(text) | SolveError::Image { message: text, .. } => names_disk_full(text),
        SolveError::Sandbox(e) => names_disk_full(&e.to_string()),
        SolveError::Registry { error, .. } => names_disk_full(&error.to_string()),
        SolveError::Shared(inner) => solve_is_disk_full(inner),
        // Its cause is printed in its text, not a source the chain walk sees.
        SolveError::Hinted { cause, .. } => {
            let mut at: Option<&(dyn std::error::Error + 'static)> = Some(cause.as_ref());
            while let Some(c) = at {
                if c.downcast_ref::<std::io::Error>().is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                    )
                }) {
                    return true;
                }
                at = c.source();
            }
            names_disk_full(&e.to_string())
        }
        _ => false,
    }
}

fn names_disk_full(text: &str) -> bool {
    text.contains("No space left on device")
        || text.contains("Disk quota exceeded")
        || text.contains("the disk is full")
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
        "the disk holding the store `{}` is full: the results of this build were dropped; run \
         `kiln prune` to free their space (and other unused snapshots and blobs), or point \
         `KILN_ROOT` at a larger disk",
        store.root().display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_found_in_the_chain_but_not_in_a_step_output() {
        let full = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::StorageFull))
            .context("cannot export the layer");
        assert!(is_disk_full(&full));
        let cache = anyhow::Error::from(SolveError::Cache(CacheError::DiskFull {
            action: "write",
            path: "blob".into(),
        }));
        assert!(is_disk_full(&cache));
        let io = anyhow::Error::from(SolveError::Io {
            what: "`/x`".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        });
        assert!(is_disk_full(&io));
        let hinted = anyhow::Error::from(SolveError::Step {
            name: "ADD https://example.com/x /x".into(),
            location: "Dockerfile:3".into(),
            source: std::sync::Arc::new(SolveError::Hinted {
                what: "download `https://example.com/x`".into(),
                cause: Box::new(std::io::Error::from(std::io::ErrorKind::StorageFull)),
                hint: "free some space".into(),
            }),
        });
        assert!(is_disk_full(&hinted));
        let step = anyhow::Error::from(SolveError::Step {
            name: "RUN dd".into(),
            location: "Dockerfile:2".into(),
            source: std::sync::Arc::new(SolveError::ExecFailed {
                command: "dd of=/dev/shm/x".into(),
                exit_code: 1,
                tail: "dd: No space left on device".into(),
            }),
        });
        assert!(!is_disk_full(&step));
    }
}

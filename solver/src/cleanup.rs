//! Removal of the snapshot a blocking step (a file op) made when its caller stopped waiting (a
//! sibling failed, the build was interrupted): the step cannot be stopped, so its snapshot is
//! removed when it ends. Other steps hold theirs as a `kiln_cache::MutableSnapshot`, removed on
//! drop unless committed.

use crate::{Output, SolveError};
use kiln_cache::{SnapshotId, Store};
use std::sync::{Arc, Mutex};

fn remove(store: &Store, snap: SnapshotId) {
    match store.snapshots().remove(snap) {
        Ok(()) => tracing::debug!(snapshot = %snap, "removed the snapshot of an unfinished step"),
        // `kiln prune` removes it later.
        Err(e) => {
            tracing::warn!(snapshot = %snap, error = %e, "cannot remove the snapshot of an unfinished step")
        }
    }
}

/// Who takes the snapshot a blocking step made.
enum Handoff {
    /// The step is running and its caller waits.
    Waiting,
    /// The caller is gone: the step removes its snapshot itself when it ends.
    Abandoned,
    /// The step ended with this snapshot, which nobody has taken yet.
    Finished(Option<SnapshotId>),
    /// The caller took the result.
    Taken,
}

/// Runs `step` (which makes a new snapshot) on the blocking pool. A blocking task cannot be
/// stopped, so when the caller stops waiting (its future is dropped) the snapshot the step makes
/// is removed as soon as it ends — or at once, if it has already ended.
pub(crate) async fn blocking_snapshot<F>(store: Store, step: F) -> Result<Output, SolveError>
where
    F: FnOnce() -> Result<Output, SolveError> + Send + 'static,
{
    let state = Arc::new(Mutex::new(Handoff::Waiting));
    let task_state = state.clone();
    let task_store = store.clone();
    let handle = tokio::task::spawn_blocking(move || {
        let result = step();
        let snap = match &result {
            Ok(Output::Snapshot(s)) => Some(*s),
            _ => None,
        };
        let mut st = task_state.lock().unwrap_or_else(|p| p.into_inner());
        match *st {
            Handoff::Abandoned => {
                if let Some(s) = snap {
                    remove(&task_store, s);
                }
            }
            _ => *st = Handoff::Finished(snap),
        }
        result
    });
    let abandon = AbandonOnDrop {
        state: state.clone(),
        store,
    };
    let result = handle.await?;
    // No await between the result and this: the caller has it now.
    *abandon.state.lock().unwrap_or_else(|p| p.into_inner()) = Handoff::Taken;
    result
}

struct AbandonOnDrop {
    state: Arc<Mutex<Handoff>>,
    store: Store,
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *st, Handoff::Taken) {
            Handoff::Waiting => *st = Handoff::Abandoned,
            Handoff::Finished(Some(s)) => remove(&self.store, s),
            Handoff::Finished(None) | Handoff::Taken | Handoff::Abandoned => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::time::Duration;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_op_whose_caller_stopped_waiting_left_its_snapshot() {
        let (_dir, store) = store();
        let made = Arc::new(Mutex::new(None));
        let (s2, made2) = (store.clone(), made.clone());
        let fut = blocking_snapshot(store.clone(), move || {
            let snap = s2.snapshots().create(None).map_err(SolveError::from)?;
            *made2.lock().unwrap() = Some(snap);
            std::thread::sleep(Duration::from_millis(200));
            Ok(Output::Snapshot(snap))
        })
        .boxed();
        // The caller stops waiting while the step runs (as a canceled build does).
        let timed_out = tokio::time::timeout(Duration::from_millis(50), fut).await;
        assert!(timed_out.is_err());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let snap = *made.lock().unwrap();
            if let Some(s) = snap {
                if !store.snapshots().fs_dir(s).exists() {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the abandoned step's snapshot is still there"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_finished_file_op_keeps_its_snapshot() {
        let (_dir, store) = store();
        let s2 = store.clone();
        let out = blocking_snapshot(store.clone(), move || {
            Ok(Output::Snapshot(
                s2.snapshots().create(None).map_err(SolveError::from)?,
            ))
        })
        .await
        .unwrap();
        let Output::Snapshot(s) = out else {
            panic!("no snapshot: {out:?}")
        };
        assert!(store.snapshots().fs_dir(s).is_dir());
    }
}

//! Steps running right now, by cache key, shared between the concurrent solves of one engine: a
//! second build that needs a step another build is running waits for that run instead of
//! starting its own, gets its result, and sees its output from then on.
//!
//! The map holds only weak references: when every build waiting for a step is gone (failed or
//! interrupted), the run's future is dropped, which kills its sandbox, and the entry is dead.

use crate::progress::{FanOut, ProgressSink};
use crate::{Output, SolveError};
use futures::future::{BoxFuture, FutureExt, Shared, WeakShared};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What one run of a step produced (recorded in the cache index by the run itself).
#[derive(Clone)]
pub(crate) struct Executed {
    pub output: Output,
    /// When the result was produced (unix seconds).
    pub created_unix: u64,
}

pub(crate) type RunFuture = BoxFuture<'static, Result<Executed, Arc<SolveError>>>;

/// A run that any number of builds may await.
pub(crate) type SharedRun = Shared<RunFuture>;

struct Entry {
    run: WeakShared<RunFuture>,
    progress: Arc<FanOut>,
}

/// The engine's running steps.
#[derive(Default)]
pub(crate) struct InFlight {
    map: Mutex<HashMap<String, Entry>>,
}

impl InFlight {
    /// Joins the live run of `key`, or starts one: `start` gets the sink the run must report to
    /// (every waiting build's own sink, under its own vertex number). Returns the run and whether
    /// it was joined rather than started.
    pub(crate) fn join_or_start(
        self: &Arc<Self>,
        key: &str,
        sink: Arc<dyn ProgressSink>,
        vertex: usize,
        start: impl FnOnce(Arc<dyn ProgressSink>) -> RunFuture,
    ) -> (SharedRun, bool) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get(key) {
            if let Some(run) = entry.run.upgrade() {
                entry.progress.add(sink, vertex);
                return (run, true);
            }
        }
        let progress = Arc::new(FanOut::default());
        progress.add(sink, vertex);
        let body = start(progress.clone());
        let me = Arc::clone(self);
        let k = key.to_string();
        let p = progress.clone();
        let run = async move {
            let r = body.await;
            // Finished: later builds find the result in the cache index instead.
            me.forget(&k, &p);
            r
        }
        .boxed()
        .shared();
        match run.downgrade() {
            Some(weak) => {
                map.insert(
                    key.to_string(),
                    Entry {
                        run: weak,
                        progress,
                    },
                );
            }
            // Only a finished run has no weak handle; a new one never is.
            None => {
                map.remove(key);
            }
        }
        (run, false)
    }

    /// Drops the entry of `key` if it is still the run that reports to `progress`.
    fn forget(&self, key: &str, progress: &Arc<FanOut>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(key)
            .is_some_and(|e| Arc::ptr_eq(&e.progress, progress))
        {
            map.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting_run(count: Arc<AtomicUsize>) -> impl FnOnce(Arc<dyn ProgressSink>) -> RunFuture {
        move |_| {
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Ok(Executed {
                    output: Output::Scratch,
                    created_unix: 7,
                })
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn a_second_waiter_joins_the_running_step() {
        let inflight = Arc::new(InFlight::default());
        let count = Arc::new(AtomicUsize::new(0));
        let (a, joined_a) =
            inflight.join_or_start("k", Arc::new(NoProgress), 1, counting_run(count.clone()));
        let (b, joined_b) =
            inflight.join_or_start("k", Arc::new(NoProgress), 2, counting_run(count.clone()));
        assert!(!joined_a);
        assert!(joined_b);
        let (ra, rb) = futures::join!(a, b);
        assert_eq!(ra.ok().map(|e| e.created_unix), Some(7));
        assert_eq!(rb.ok().map(|e| e.created_unix), Some(7));
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(inflight.len(), 0, "a finished run leaves the map");
    }

    #[tokio::test]
    async fn a_run_nobody_waits_for_is_dropped_and_restarted() {
        let inflight = Arc::new(InFlight::default());
        let count = Arc::new(AtomicUsize::new(0));
        let (a, _) =
            inflight.join_or_start("k", Arc::new(NoProgress), 1, counting_run(count.clone()));
        drop(a);
        let (b, joined) =
            inflight.join_or_start("k", Arc::new(NoProgress), 1, counting_run(count.clone()));
        assert!(!joined, "the dropped run is dead, not joined");
        assert!(b.await.is_ok());
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}

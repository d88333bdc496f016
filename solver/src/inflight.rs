//! Steps running right now, by cache key, shared between the concurrent solves of one engine: a
//! second build that needs a step another build is running waits for that run instead of
//! starting its own, gets its result, and sees its output from then on.
//!
//! The map holds only weak references: when every build waiting for a step is gone (failed or
//! interrupted), the run's future is dropped, which kills its sandbox, and the entry is dead.
//!
//! A build looks the step up in the cache index before it comes here, and a run records its
//! result in the index before it leaves the map: so a build that finds no live run re-checks the
//! index under the map's lock, or a run that finished between its look-up and its arrival here
//! would run the step a second time.

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

/// How a build got a step's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum How {
    /// It started the run.
    Started,
    /// It joined another build's run.
    Joined,
    /// A run finished just before: the result is in the cache index.
    Cached,
}

/// A run a build waits for, and the progress of that run.
pub(crate) struct Waiting {
    pub run: SharedRun,
    pub how: How,
    pub progress: Arc<FanOut>,
}

impl InFlight {
    /// Joins the live run of `key`, or, when `cached` does not find the result in the cache index
    /// (a run may have finished since the build looked), starts one: `start` gets the sink the
    /// run must report to (every waiting build's own sink, under its own vertex number).
    pub(crate) fn join_or_start(
        self: &Arc<Self>,
        key: &str,
        sink: Arc<dyn ProgressSink>,
        vertex: usize,
        cached: impl FnOnce() -> Option<Executed>,
        start: impl FnOnce(Arc<dyn ProgressSink>) -> RunFuture,
    ) -> Waiting {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get(key) {
            if let Some(run) = entry.run.upgrade() {
                entry.progress.add(sink.clone(), vertex);
                return Waiting {
                    run,
                    how: How::Joined,
                    progress: entry.progress.clone(),
                };
            }
        }
        // A run records its result before it leaves the map (under this lock): no live run and
        // no result means no run has finished since the build looked.
        if let Some(done) = cached() {
            return Waiting {
                run: futures::future::ready(Ok(done)).boxed().shared(),
                how: How::Cached,
                progress: Arc::new(FanOut::default()),
            };
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
                        progress: progress.clone(),
                    },
                );
            }
            // Only a finished run has no weak handle; a new one never is.
            None => {
                map.remove(key);
            }
        }
        Waiting {
            run,
            how: How::Started,
            progress,
        }
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
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A run that counts its starts and, like a real one, records its key in `index` when done.
    fn counting_run(
        count: Arc<AtomicUsize>,
        index: Arc<Mutex<HashSet<String>>>,
        key: &str,
    ) -> impl FnOnce(Arc<dyn ProgressSink>) -> RunFuture {
        let key = key.to_string();
        move |_| {
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                index.lock().unwrap().insert(key);
                Ok(Executed {
                    output: Output::Scratch,
                    created_unix: 7,
                })
            }
            .boxed()
        }
    }

    fn lookup(index: &Arc<Mutex<HashSet<String>>>, key: &str) -> impl FnOnce() -> Option<Executed> {
        let hit = index.lock().unwrap().contains(key);
        move || {
            hit.then_some(Executed {
                output: Output::Scratch,
                created_unix: 7,
            })
        }
    }

    fn never() -> Option<Executed> {
        None
    }

    #[tokio::test]
    async fn a_second_waiter_joins_the_running_step() {
        let inflight = Arc::new(InFlight::default());
        let count = Arc::new(AtomicUsize::new(0));
        let index = Arc::new(Mutex::new(HashSet::new()));
        let a = inflight.join_or_start(
            "k",
            Arc::new(NoProgress),
            1,
            never,
            counting_run(count.clone(), index.clone(), "k"),
        );
        let b = inflight.join_or_start(
            "k",
            Arc::new(NoProgress),
            2,
            never,
            counting_run(count.clone(), index.clone(), "k"),
        );
        assert_eq!(a.how, How::Started);
        assert_eq!(b.how, How::Joined);
        let (ra, rb) = futures::join!(a.run, b.run);
        assert_eq!(ra.ok().map(|e| e.created_unix), Some(7));
        assert_eq!(rb.ok().map(|e| e.created_unix), Some(7));
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(inflight.len(), 0, "a finished run leaves the map");
    }

    #[tokio::test]
    async fn a_run_nobody_waits_for_is_dropped_and_restarted() {
        let inflight = Arc::new(InFlight::default());
        let count = Arc::new(AtomicUsize::new(0));
        let index = Arc::new(Mutex::new(HashSet::new()));
        let a = inflight.join_or_start(
            "k",
            Arc::new(NoProgress),
            1,
            never,
            counting_run(count.clone(), index.clone(), "k"),
        );
        drop(a);
        let b = inflight.join_or_start(
            "k",
            Arc::new(NoProgress),
            1,
            never,
            counting_run(count.clone(), index.clone(), "k"),
        );
        assert_eq!(b.how, How::Started, "the dropped run is dead, not joined");
        assert!(b.run.await.is_ok());
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    /// The race: build B looks the step up in the index (a miss: A is still running), then A
    /// finishes (records its result, leaves the map), then B arrives here. B must take A's result
    /// from the index, not run the step again.
    #[tokio::test]
    async fn a_run_finishing_between_the_index_check_and_the_join_ran_the_step_twice() {
        let inflight = Arc::new(InFlight::default());
        let count = Arc::new(AtomicUsize::new(0));
        let index = Arc::new(Mutex::new(HashSet::new()));
        let a = inflight.join_or_start(
            "k",
            Arc::new(NoProgress),
            1,
            lookup(&index, "k"),
            counting_run(count.clone(), index.clone(), "k"),
        );
        // B's own look-up, before A is done: a miss.
        assert!(!index.lock().unwrap().contains("k"));
        assert!(a.run.await.is_ok());
        assert_eq!(inflight.len(), 0);
        // B arrives after A finished; the re-check under the lock finds A's result.
        let index2 = index.clone();
        let b = inflight.join_or_start(
            "k",
            Arc::new(NoProgress),
            2,
            move || lookup(&index2, "k")(),
            counting_run(count.clone(), index.clone(), "k"),
        );
        assert_eq!(b.how, How::Cached);
        assert_eq!(b.run.await.ok().map(|e| e.created_unix), Some(7));
        assert_eq!(count.load(Ordering::SeqCst), 1, "the step ran twice");
    }
}

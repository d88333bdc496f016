//! Progress events the solver emits while it walks a graph; the CLI renders them. Events name a
//! vertex by its number in the build (1-based, the graph's order), so two concurrent builds that
//! share one running step each see it under their own number ([`FanOut`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod lines;
pub(crate) use lines::StepLog;

/// Which output stream a log chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One thing that happened to a vertex.
#[derive(Clone, Debug)]
pub enum Event {
    /// The vertex started running (or being checked).
    Started { vertex: usize, name: String },
    /// The vertex's result came from the cache; it did not run.
    Cached { vertex: usize, name: String },
    /// The vertex ran and finished.
    Done {
        vertex: usize,
        name: String,
        elapsed: Duration,
    },
    /// The vertex failed.
    Failed {
        vertex: usize,
        name: String,
        error: String,
    },
    /// The vertex was running when the build stopped (another step failed, or the build was
    /// interrupted); its sandbox was killed.
    Canceled { vertex: usize, name: String },
    /// One line of a running step's output, with its newline; the last state of a line
    /// redrawn with `\r`. A line still unfinished after a pause, at the end, or longer than
    /// 16 KiB comes without newline, and what follows as the next line.
    Log {
        vertex: usize,
        stream: Stream,
        data: Vec<u8>,
        /// When the line began, counted from the step's start.
        time: Duration,
    },
    /// A local context was checked for the steps that read it: walked (one `stat` per entry),
    /// and the files its checksum memo did not know read and hashed. Not a step that runs: it
    /// happens on every build, while the first steps run.
    Context {
        vertex: usize,
        name: String,
        /// Files checked.
        files: usize,
        /// Files read and hashed (new or changed since the memo saw them).
        hashed: usize,
        /// Bytes read.
        bytes: u64,
        elapsed: Duration,
    },
}

impl Event {
    /// The vertex the event is about.
    pub fn vertex(&self) -> usize {
        match self {
            Event::Started { vertex, .. }
            | Event::Cached { vertex, .. }
            | Event::Done { vertex, .. }
            | Event::Failed { vertex, .. }
            | Event::Canceled { vertex, .. }
            | Event::Log { vertex, .. }
            | Event::Context { vertex, .. } => *vertex,
        }
    }

    /// The same event about vertex `v` (how another build numbers the same step).
    pub(crate) fn with_vertex(mut self, v: usize) -> Event {
        match &mut self {
            Event::Started { vertex, .. }
            | Event::Cached { vertex, .. }
            | Event::Done { vertex, .. }
            | Event::Failed { vertex, .. }
            | Event::Canceled { vertex, .. }
            | Event::Log { vertex, .. }
            | Event::Context { vertex, .. } => *vertex = v,
        }
        self
    }
}

/// Receives events; must be cheap and never block (called from solver tasks).
pub trait ProgressSink: Send + Sync {
    fn event(&self, event: Event);
}

/// A sink that drops everything.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn event(&self, _: Event) {}
}

/// The sink of a step shared by concurrent builds: every event goes to each build that waits for
/// the step, renumbered to that build's vertex number. Builds that join late get what follows,
/// and the step's `Started` event first if it has started, so their view shows it running.
///
/// It also remembers when the step started (its `Started` event: for an exec step, when it got
/// its `--jobs` slot), which is where the step's timer starts, not when it began to wait.
#[derive(Default)]
pub(crate) struct FanOut {
    state: Mutex<FanOutState>,
}

#[derive(Default)]
struct FanOutState {
    sinks: Vec<(Arc<dyn ProgressSink>, usize)>,
    started: Option<(Instant, Event)>,
}

impl FanOut {
    fn lock(&self) -> std::sync::MutexGuard<'_, FanOutState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn add(&self, sink: Arc<dyn ProgressSink>, vertex: usize) {
        let mut st = self.lock();
        // Under the lock, so no event of the step can reach the new sink before its start.
        if let Some((_, e)) = &st.started {
            sink.event(e.clone().with_vertex(vertex));
        }
        st.sinks.push((sink, vertex));
    }

    /// Stops sending to `sink` (a build that stopped waiting for the step).
    pub(crate) fn remove(&self, sink: &Arc<dyn ProgressSink>) {
        let me = Arc::as_ptr(sink) as *const ();
        self.lock()
            .sinks
            .retain(|(s, _)| Arc::as_ptr(s) as *const () != me);
    }

    /// When the step started running, if it has.
    pub(crate) fn started_at(&self) -> Option<Instant> {
        self.lock().started.as_ref().map(|(t, _)| *t)
    }
}

impl ProgressSink for FanOut {
    fn event(&self, event: Event) {
        let sinks = {
            let mut st = self.lock();
            if matches!(event, Event::Started { .. }) && st.started.is_none() {
                st.started = Some((Instant::now(), event.clone()));
            }
            st.sinks.clone()
        };
        for (sink, vertex) in sinks {
            sink.event(event.clone().with_vertex(vertex));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Mutex<Vec<Event>>);

    impl ProgressSink for Collect {
        fn event(&self, e: Event) {
            self.0.lock().unwrap().push(e);
        }
    }

    #[test]
    fn fan_out_renumbers_for_each_build() {
        let a = Arc::new(Collect(Mutex::new(vec![])));
        let b = Arc::new(Collect(Mutex::new(vec![])));
        let fan = FanOut::default();
        fan.add(a.clone(), 3);
        fan.add(b.clone(), 7);
        fan.event(Event::Log {
            vertex: 1,
            stream: Stream::Stdout,
            data: b"hi\n".to_vec(),
            time: Duration::ZERO,
        });
        let a = a.0.lock().unwrap();
        let b = b.0.lock().unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(b.len(), 1);
        assert_eq!(a[0].vertex(), 3);
        assert_eq!(b[0].vertex(), 7);
    }

    #[test]
    fn fan_out_shows_a_late_build_the_running_step_and_its_start_time() {
        let a = Arc::new(Collect(Mutex::new(vec![])));
        let late = Arc::new(Collect(Mutex::new(vec![])));
        let fan = FanOut::default();
        fan.add(a.clone(), 3);
        assert!(fan.started_at().is_none(), "not started before `Started`");
        let before = Instant::now();
        fan.event(Event::Started {
            vertex: 1,
            name: "RUN x".into(),
        });
        let at = fan.started_at().expect("started");
        assert!(at >= before);
        fan.add(late.clone(), 9);
        let late_events = late.0.lock().unwrap().clone();
        assert!(
            matches!(&late_events[..], [Event::Started { vertex: 9, name }] if name == "RUN x"),
            "{late_events:?}"
        );
        // A build that stopped waiting hears nothing more.
        let a_dyn: Arc<dyn ProgressSink> = a.clone();
        fan.remove(&a_dyn);
        fan.event(Event::Log {
            vertex: 1,
            stream: Stream::Stdout,
            data: b"more\n".to_vec(),
            time: Duration::ZERO,
        });
        assert_eq!(a.0.lock().unwrap().len(), 1);
        assert_eq!(late.0.lock().unwrap().len(), 2);
    }
}

//! Progress events the solver emits while it walks a graph; the CLI renders them. Events name a
//! vertex by its number in the build (1-based, the graph's order), so two concurrent builds that
//! share one running step each see it under their own number ([`FanOut`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Output of a running step.
    Log {
        vertex: usize,
        stream: Stream,
        data: Vec<u8>,
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
            | Event::Log { vertex, .. } => *vertex,
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
            | Event::Log { vertex, .. } => *vertex = v,
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
/// the step, renumbered to that build's vertex number. Builds that join late get what follows.
#[derive(Default)]
pub(crate) struct FanOut {
    sinks: Mutex<Vec<(Arc<dyn ProgressSink>, usize)>>,
}

impl FanOut {
    pub(crate) fn add(&self, sink: Arc<dyn ProgressSink>, vertex: usize) {
        self.sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((sink, vertex));
    }
}

impl ProgressSink for FanOut {
    fn event(&self, event: Event) {
        let sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner()).clone();
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
        });
        let a = a.0.lock().unwrap();
        let b = b.0.lock().unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(b.len(), 1);
        assert_eq!(a[0].vertex(), 3);
        assert_eq!(b[0].vertex(), 7);
    }
}

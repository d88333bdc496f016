//! Progress events the solver emits while it walks a graph; the CLI renders them.

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
    /// Output of a running step.
    Log {
        vertex: usize,
        stream: Stream,
        data: Vec<u8>,
    },
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

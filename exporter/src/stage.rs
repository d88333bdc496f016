//! Hands a byte stream to a helper thread in large buffers, so that hashing a layer runs beside
//! the tar walker and the compressor instead of after them on the same thread.
//!
//! A [`Staged`] writer gathers bytes into [`STAGE`]-sized buffers. Each full buffer is first
//! written to `also` on the caller's thread (the compressor, say) and then sent, without a copy,
//! to a scoped worker thread that writes it to `sink` (the diffID hasher). Buffers come back for
//! reuse, so memory stays at a few buffers whatever the stream's length. Where the stream is cut
//! never changes what `also` and `sink` receive, only when.

use std::io::{self, Read, Write};

use crate::tarw::{ReadInto, SinkError};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

/// Bytes per hand-over: large enough that the per-buffer cost (a channel send, a wake-up) is
/// noise next to hashing or compressing it.
pub(crate) const STAGE: usize = 1 << 20;
/// Full buffers queued for the worker: lets the two threads run at uneven paces for a while.
const DEPTH: usize = 4;

/// A writer that also feeds a worker thread; see the module docs. Call [`Staged::finish`] at
/// the end: dropping it instead discards what is still buffered and stops the worker.
pub(crate) struct Staged<'scope, A: Write, S: Write + Send + 'scope> {
    /// Always [`STAGE`] long (allocated zeroed once, then reused): `filled` says how much of it
    /// holds data, so reading into it never needs zeroing first.
    buf: Vec<u8>,
    filled: usize,
    also: A,
    tx: Option<SyncSender<(Vec<u8>, usize)>>,
    recycled: Receiver<Vec<u8>>,
    worker: Option<ScopedJoinHandle<'scope, io::Result<S>>>,
}

impl<'scope, A: Write, S: Write + Send + 'scope> Staged<'scope, A, S> {
    /// Starts the worker that writes every buffer to `sink`, in order.
    pub(crate) fn spawn<'env>(scope: &'scope Scope<'scope, 'env>, also: A, mut sink: S) -> Self {
        let (tx, rx) = sync_channel::<(Vec<u8>, usize)>(DEPTH);
        let (back_tx, recycled) = channel::<Vec<u8>>();
        let worker = scope.spawn(move || {
            for (buf, filled) in rx {
                sink.write_all(&buf[..filled])?;
                // The writer may be gone already (it failed): then the buffer is just freed.
                let _ = back_tx.send(buf);
            }
            Ok(sink)
        });
        Staged {
            buf: vec![0u8; STAGE],
            filled: 0,
            also,
            tx: Some(tx),
            recycled,
            worker: Some(worker),
        }
    }

    fn hand_over(&mut self) -> io::Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        self.also.write_all(&self.buf[..self.filled])?;
        let next = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| vec![0u8; STAGE]);
        let full = std::mem::replace(&mut self.buf, next);
        let filled = std::mem::take(&mut self.filled);
        let sent = match &self.tx {
            Some(tx) => tx.send((full, filled)).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The worker stopped early, which it does only on an error: report that one.
            Err(self.join().err().unwrap_or_else(|| {
                io::Error::other("a layer writer thread stopped before the end of the stream")
            }))
        }
    }

    fn join(&mut self) -> io::Result<S> {
        self.tx = None;
        match self.worker.take() {
            Some(h) => h
                .join()
                .map_err(|_| io::Error::other("a layer writer thread panicked"))?,
            None => Err(io::Error::other(
                "a layer writer thread was already stopped",
            )),
        }
    }

    /// Hands over what is buffered, waits for the worker and returns both sinks, unflushed.
    pub(crate) fn finish(mut self) -> io::Result<(A, S)> {
        self.hand_over()?;
        let sink = self.join()?;
        // No flush of `also`: a compressor flushed here ends a block early, and its output (the
        // layer's digest) would differ from the same bytes compressed in one go.
        Ok((self.also, sink))
    }
}

impl<'scope, A: Write, S: Write + Send + 'scope> Write for Staged<'scope, A, S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(STAGE - self.filled);
        self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == STAGE {
            self.hand_over()?;
        }
        Ok(n)
    }

    /// Buffers stay until full or [`Staged::finish`]: a flush in the middle of a layer (the
    /// compressors never ask for one) would only cost a short hand-over.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'scope, A: Write, S: Write + Send + 'scope> ReadInto for Staged<'scope, A, S> {
    /// Reads straight into the stage buffer: the bytes are copied once, by the kernel.
    fn read_into(&mut self, src: &mut dyn Read, max: usize) -> io::Result<usize> {
        let want = max.min(STAGE - self.filled);
        let n = src.read(&mut self.buf[self.filled..self.filled + want])?;
        self.filled += n;
        if self.filled == STAGE {
            self.hand_over().map_err(SinkError::wrap)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails on the write that would take it past `limit` bytes.
    struct Limited {
        got: Vec<u8>,
        limit: usize,
    }

    impl Write for Limited {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.got.len() + buf.len() > self.limit {
                return Err(io::Error::other("disk full"));
            }
            self.got.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn both_sinks_get_every_byte_in_order() {
        for len in [0, 1, STAGE - 1, STAGE, STAGE + 1, 5 * STAGE + 777] {
            let input = data(len);
            let (also, sink) = std::thread::scope(|s| {
                let mut w = Staged::spawn(s, Vec::new(), Vec::new());
                for piece in input.chunks(100_003) {
                    w.write_all(piece).unwrap();
                }
                w.finish().unwrap()
            });
            assert_eq!(also, input, "also, len {len}");
            assert_eq!(sink, input, "sink, len {len}");
        }
    }

    #[test]
    fn reads_into_the_stage_land_in_both_sinks() {
        let input = data(3 * STAGE + 4321);
        let (also, sink) = std::thread::scope(|s| {
            let mut w = Staged::spawn(s, Vec::new(), Vec::new());
            let mut src = &input[..];
            while w.read_into(&mut src, 300_000).unwrap() > 0 {}
            w.finish().unwrap()
        });
        assert!(also == input && sink == input, "the staged data differs");
    }

    #[test]
    fn a_failing_worker_fails_the_writer_with_its_error() {
        let input = data(20 * STAGE);
        let err = std::thread::scope(|s| {
            let sink = Limited {
                got: Vec::new(),
                limit: 3 * STAGE,
            };
            let mut w = Staged::spawn(s, io::sink(), sink);
            match w.write_all(&input) {
                Err(e) => e,
                Ok(()) => w.finish().err().expect("the sink fails after 3 buffers"),
            }
        });
        assert_eq!(err.to_string(), "disk full");
    }

    #[test]
    fn dropping_the_writer_stops_the_worker() {
        std::thread::scope(|s| {
            let mut w = Staged::spawn(s, io::sink(), io::sink());
            w.write_all(&data(3 * STAGE)).unwrap();
            drop(w);
        });
    }
}

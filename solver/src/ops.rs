//! The ops a vertex can be, one module each behind one trait, [`Operation`]: how the op's result
//! is keyed and how it is made, as BuildKit's `solver/llbsolver/ops` (`CacheMap`, `Exec`). The
//! scheduler (`lib.rs`) asks the op for its key, looks the key up, and runs the op on a miss.

mod exec;
mod file;
pub(crate) mod git;
mod http;
mod image;
mod local;
mod merge;

use crate::progress::Event;
use crate::{prefetch, unwrap_arc, Output, SolveError, VertexResult, VertexTask};
use futures::future::{BoxFuture, FutureExt};
use kiln_cache::{SnapshotId, Store};
use kiln_llb::op::Kind;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// The inputs' results, in the op's input order.
pub(crate) type Inputs = [Arc<VertexResult>];

/// One kind of op.
pub(crate) trait Operation: Send + Sync {
    /// The key the op's result is cached under: by default its digest, its inputs' keys and, for
    /// local inputs, the checksum of exactly what it reads from them ([`content_key`]).
    fn cache_key<'a>(
        &'a self,
        v: &'a VertexTask,
        inputs: &'a Inputs,
    ) -> BoxFuture<'a, Result<String, SolveError>> {
        content_key(v, inputs).boxed()
    }

    /// The whole step, for a source whose result the index cannot answer from `key` alone: one
    /// read in place (local) or one fetched on every build and keyed by what was fetched (git,
    /// unpinned http). `None`: looked up under `key`, run by [`Operation::execute`] on a miss.
    fn resolve<'a>(
        &'a self,
        _v: &'a VertexTask,
        _key: &'a str,
    ) -> Option<BoxFuture<'a, Result<Arc<VertexResult>, SolveError>>> {
        None
    }

    /// Makes the op's result (a cache miss).
    fn execute<'a>(
        &'a self,
        v: &'a VertexTask,
        inputs: &'a Inputs,
    ) -> BoxFuture<'a, Result<Output, SolveError>>;

    /// Whether [`Operation::execute`] reports the step's start itself (an exec step: once it
    /// has its `--jobs` slot) instead of the scheduler before calling it.
    fn reports_start(&self) -> bool {
        false
    }

    /// Whether the snapshot [`Operation::execute`] returns is new and this step's own, to be
    /// removed if recording it fails (a source's snapshot may be an image's, shared).
    fn owns_snapshot(&self) -> bool {
        false
    }

    /// Called once the result `snap` is recorded under the step's key.
    fn recorded(&self, _v: &VertexTask, _inputs: &Inputs, _snap: SnapshotId) {}
}

/// The [`Operation`] that runs `op`.
pub(crate) fn of(op: &kiln_llb::Op) -> Box<dyn Operation + '_> {
    match &op.kind {
        Some(Kind::Source(s)) if s.identifier.starts_with("local://") => Box::new(local::Local(s)),
        Some(Kind::Source(s)) if http::is_http(&s.identifier) => Box::new(http::Http(s)),
        Some(Kind::Source(s)) if git::is_git(&s.identifier) => Box::new(git::Git(s)),
        Some(Kind::Source(s)) => match s.identifier.strip_prefix("docker-image://") {
            Some(name) => Box::new(image::Image(name)),
            None => Box::new(Unrunnable::Unsupported(format!(
                "source `{}`",
                s.identifier
            ))),
        },
        Some(Kind::Exec(e)) => Box::new(exec::Exec(e)),
        Some(Kind::File(f)) => Box::new(file::File(f)),
        Some(Kind::Merge(m)) => Box::new(merge::Merge(m)),
        Some(Kind::Diff(_)) => Box::new(Unrunnable::Unsupported("diff".into())),
        None => Box::new(Unrunnable::NoKind),
    }
}

/// An op kiln cannot run: it fails when run (not when keyed), so a cached result still counts.
enum Unrunnable {
    Unsupported(String),
    NoKind,
}

impl Operation for Unrunnable {
    fn execute<'a>(
        &'a self,
        v: &'a VertexTask,
        _inputs: &'a Inputs,
    ) -> BoxFuture<'a, Result<Output, SolveError>> {
        let e = match self {
            Unrunnable::Unsupported(what) => SolveError::Unsupported(what.clone()),
            Unrunnable::NoKind => SolveError::Graph(format!("op {} has no kind", v.digest)),
        };
        futures::future::ready(Err(e)).boxed()
    }
}

/// The vertex's cache key: its op digest, its inputs' keys, and for local inputs the checksum
/// of exactly what this op reads from them.
pub(crate) async fn content_key(v: &VertexTask, inputs: &Inputs) -> Result<String, SolveError> {
    let mut h = blake3::Hasher::new();
    h.update(b"kiln-cache-v1\0");
    h.update(v.digest.as_bytes());
    for (i, input) in inputs.iter().enumerate() {
        h.update(b"\0input\0");
        h.update(input.key.as_bytes());
        if let Output::Local(ctx) = &input.output {
            // Usually computed ahead, since the solve started (see `prefetch`).
            let sum = match v.prefetched.get(&(i as i64)) {
                Some(ahead) => ahead.clone().await.map_err(unwrap_arc)?,
                None => {
                    let selectors = prefetch::selectors(&v.op, i as i64);
                    let ctx = ctx.clone();
                    let store = v.solver.inner.store.clone();
                    tokio::task::spawn_blocking(move || {
                        prefetch::checksum(ctx.as_ref(), &selectors, &store)
                    })
                    .await
                    .map_err(SolveError::from)??
                    .0
                }
            };
            h.update(b"\0local\0");
            h.update(sum.as_bytes());
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

/// A source that must be fetched before its result's key is known (unpinned http, git): the
/// step's progress events and counters around `fetch`, which says whether its result was
/// already cached. The future is lazy, so it starts after `Started` is reported.
async fn run_fetched(
    v: &VertexTask,
    fetch: impl std::future::Future<Output = Result<(VertexResult, bool), SolveError>>,
) -> Result<Arc<VertexResult>, SolveError> {
    let started = Instant::now();
    v.progress.event(Event::Started {
        vertex: v.vertex,
        name: v.name(),
    });
    match fetch.await {
        Ok((r, cached)) => {
            v.progress.event(if cached {
                Event::Cached {
                    vertex: v.vertex,
                    name: v.name(),
                }
            } else {
                Event::Done {
                    vertex: v.vertex,
                    name: v.name(),
                    elapsed: started.elapsed(),
                }
            });
            if let Ok(mut c) = v.counters.lock() {
                if cached {
                    c.cached += 1;
                } else {
                    c.executed += 1;
                }
            }
            Ok(Arc::new(r))
        }
        Err(e) => Err(v.failed(Arc::new(e))),
    }
}

/// The output of input `index`.
fn input_output(inputs: &Inputs, index: i64) -> Result<Output, SolveError> {
    usize::try_from(index)
        .ok()
        .and_then(|i| inputs.get(i))
        .map(|r| r.output.clone())
        .ok_or_else(|| SolveError::Graph(format!("input index {index} out of range")))
}

/// The snapshot chain of `parent` (empty for scratch), with its `/etc/passwd` and `/etc/group`.
#[allow(clippy::type_complexity)]
fn chain_and_accounts(
    store: &Store,
    parent: Option<SnapshotId>,
) -> Result<(Vec<SnapshotId>, Option<String>, Option<String>), SolveError> {
    let chain = match parent {
        Some(p) => store.snapshots().chain(p).map_err(SolveError::from)?,
        None => vec![],
    };
    let passwd = read_text(store, &chain, "/etc/passwd")?;
    let group = read_text(store, &chain, "/etc/group")?;
    Ok((chain, passwd, group))
}

fn read_text(
    store: &Store,
    chain: &[SnapshotId],
    path: &str,
) -> Result<Option<String>, SolveError> {
    Ok(store
        .snapshots()
        .read_file(chain, path)
        .map_err(SolveError::from)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// The overlay work dir of a snapshot: beside its `fs` dir, on the same filesystem.
fn snap_work_dir(store: &Store, snap: SnapshotId) -> Result<PathBuf, SolveError> {
    let fs = store.snapshots().fs_dir(snap);
    let work = fs
        .parent()
        .map(|p| p.join("work"))
        .ok_or_else(|| SolveError::Op("snapshot dir has no parent".into()))?;
    std::fs::create_dir_all(&work).map_err(SolveError::io(format!(
        "cannot create `{}`",
        work.display()
    )))?;
    Ok(work)
}

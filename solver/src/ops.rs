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
use crate::{prefetch, selection, unwrap_arc, Output, SolveError, VertexResult, VertexTask};
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

    /// Whether [`Operation::execute`] makes its snapshot durable itself; otherwise the solver
    /// syncs it before recording the result.
    fn syncs_its_snapshot(&self) -> bool {
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
            h.update(b"\0local\0");
            h.update(local_sum(v, i, ctx).await?.as_bytes());
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

/// The checksum of what op `v` reads of its local input `i`.
async fn local_sum(
    v: &VertexTask,
    i: usize,
    ctx: &Arc<dyn crate::LocalContext>,
) -> Result<String, SolveError> {
    // Usually computed ahead, since the solve started (see `prefetch`).
    if let Some(ahead) = v.prefetched.get(&(i as i64)) {
        return ahead.clone().await.map_err(unwrap_arc);
    }
    let selectors = prefetch::selectors(&v.op, i as i64);
    let ctx = ctx.clone();
    let store = v.solver.inner.store.clone();
    Ok(
        tokio::task::spawn_blocking(move || prefetch::checksum(ctx.as_ref(), &selectors, &store))
            .await
            .map_err(SolveError::from)??
            .0,
    )
}

/// The op's second key, found on a miss of its own ([`content_key`]): the op without its
/// inputs' op digests, each input counting by its key or, when the op selects part of a stage
/// (`COPY --from=stage /x`, `RUN --mount=from=stage,source=/x`), by the checksum of the selected
/// content. So a step whose stage re-ran to the same bytes there is found, and so are the steps
/// after it: their inputs' keys are the same, though the ops' digests, which name the op of
/// each input, are not. `None` for an op without inputs, or when an input the op reads whole ran
/// again regardless of the cache (`--no-cache-filter`): its bytes may differ under the same key.
pub(crate) async fn selection_key(
    v: &VertexTask,
    inputs: &Inputs,
) -> Result<Option<String>, SolveError> {
    let selected: Vec<Option<(SnapshotId, Vec<selection::Selector>)>> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| match input.output {
            Output::Snapshot(s) => selection::selectors(&v.op, i as i64).map(|sel| (s, sel)),
            _ => None,
        })
        .collect();
    let whole_fresh = inputs
        .iter()
        .zip(&selected)
        .any(|(input, sel)| input.fresh && sel.is_none());
    if whole_fresh || inputs.is_empty() {
        return Ok(None);
    }
    let mut h = blake3::Hasher::new();
    h.update(b"kiln-selection-key-v1\0");
    // The op's digest names its inputs' ops, and a stage that re-ran is a new op: the op is
    // taken without them, each input counting by its key or by what is selected of it.
    let mut own = v.op.clone();
    for input in &mut own.inputs {
        input.digest.clear();
    }
    h.update(own.digest().as_bytes());
    for (i, (input, sel)) in inputs.iter().zip(selected).enumerate() {
        h.update(b"\0input\0");
        match sel {
            Some((snap, selectors)) => {
                let store = v.solver.inner.store.clone();
                let sum = tokio::task::spawn_blocking(move || {
                    selection::checksum(&store, snap, &selectors)
                })
                .await
                .map_err(SolveError::from)?;
                match sum {
                    Ok(sum) => {
                        h.update(b"\0selected\0");
                        h.update(sum.as_bytes());
                    }
                    // Only a second way to find a result: without it the step runs.
                    Err(e) => {
                        tracing::warn!(step = %v.name(), "cannot checksum what the step selects of its input {i}: {}", e.chain_text());
                        return Ok(None);
                    }
                }
            }
            None => {
                h.update(input.key.as_bytes());
                if let Output::Local(ctx) = &input.output {
                    h.update(b"\0local\0");
                    h.update(local_sum(v, i, ctx).await?.as_bytes());
                }
            }
        }
    }
    Ok(Some(h.finalize().to_hex().to_string()))
}

/// The alias under which the index maps a selection key to the key its result was recorded
/// under.
pub(crate) fn selection_alias(selection_key: &str) -> String {
    format!("selection-v1/{selection_key}")
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

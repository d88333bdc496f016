//! kiln-solver: walks an LLB [`Definition`], computes each vertex's content-based cache key,
//! reuses cached results and runs the rest — in parallel where the graph allows, with exec steps
//! bounded by `jobs` — while streaming [`progress`] events.
//!
//! Cache keys (see `docs/cache-keys.md`): `key(v) = blake3("kiln-cache-v1", digest(v),
//! key(input)…, checksum(local parts)…)`. An op's digest covers everything it does; its inputs'
//! keys cover everything it reads, except local contexts, whose key covers only the files that
//! the op selects (a `COPY` keys on the checksum of its sources, a `RUN --mount` on its
//! `source`, the whole context after `.dockerignore` when it mounts all of it). On a miss, a
//! second key counts what the op selects of a stage by content (`ops::selection_key`), so a
//! stage that re-ran to the same bytes leaves the steps after it cached.
//!
//! This file is the API and the scheduler; each kind of op is a module of `ops` behind one trait
//! (`ops::Operation`: its cache key, its execution).

mod cleanup;
mod context;
mod fileops;
mod glob;
pub mod images;
mod inflight;
mod inroot;
pub mod lazy;
mod mounts;
mod nocache;
mod ops;
mod prefetch;
pub mod progress;
mod selection;

pub use context::LocalContext;
pub use images::ImageRef;
pub use inroot::resolve_in_root;
pub use mounts::prune_cache_mounts;
pub use nocache::ignore_cache_for_stages;
pub use ops::git::{checkout_git_context, is_git_context};
pub use progress::{Event, NoProgress, ProgressSink, Stream};

use futures::future::{BoxFuture, FutureExt, Shared};
use kiln_cache::{CachedResult, SnapshotId, Store};
use kiln_llb::{Definition, Input, Op, OpMetadata};
use kiln_registry::{Platform, RegistryClient};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;

/// Errors from solving a graph, one variant per layer that can fail, so a caller can match on
/// them. Step failures carry the step's name and Dockerfile location.
///
/// Std errors (`io`, a blocking task's end) are each a variant's `source`, and the variant's
/// text says only what failed, so the chain (`{:#}`) prints everything once. Errors of kiln's
/// other crates already print their own cause, so they are held as they are (match on them,
/// e.g. `CacheError::is_disk_full`) and printed as the variant's text, not again as a source.
#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    /// The store: index, snapshots, content store.
    #[error("store: {0}")]
    Cache(kiln_cache::CacheError),
    #[error("image `{image}`: {message}")]
    Image { image: String, message: String },
    /// The registry, about an image.
    #[error("image `{image}`: {error}")]
    Registry {
        image: String,
        error: Box<kiln_registry::RegistryError>,
    },
    #[error("build context: `{path}`: {message}")]
    Context { path: String, message: String },
    /// Reading the build context.
    #[error("build context: `{path}`")]
    ContextIo {
        path: String,
        source: std::io::Error,
    },
    /// The sandbox (not the step's command, whose failure is [`SolveError::ExecFailed`]).
    #[error("{0}")]
    Sandbox(kiln_exec::ExecError),
    /// A file system call on what a step reads or writes; `what` names the call and the path.
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// An http source's request or transfer; `what` names the URL.
    #[error("{what}")]
    Http {
        what: String,
        source: reqwest::Error,
    },
    /// An OCI document a step makes or reads: its runtime spec, an image's manifest or config.
    #[error("{what}")]
    Spec {
        what: String,
        source: oci_spec::OciSpecError,
    },
    /// A step's work on a blocking thread panicked or was aborted.
    #[error("the step's work stopped")]
    Task(#[from] tokio::task::JoinError),
    /// A step's failure that has no underlying error: bad input, a missing file, a refused path.
    #[error("{0}")]
    Op(String),
    /// A failure with an underlying error and a hint on what to do: ``download `URL` ``, the
    /// transfer's error, `check the URL and the network`.
    ///
    /// It reads `what: cause: hint`, the cause with all of its own causes. The hint must come
    /// after the cause, and `{:#}` prints a source after its wrapper's text; so the cause is
    /// printed here and is not the `source()` (it would print twice). Match on it through
    /// [`SolveError::cause`].
    #[error("{what}: {}; {hint}", Chain(cause.as_ref()))]
    Hinted {
        what: String,
        cause: Box<dyn std::error::Error + Send + Sync>,
        hint: String,
    },
    #[error("{0} is not supported yet")]
    Unsupported(String),
    #[error("process \"{command}\" did not complete successfully: exit code: {exit_code}{tail}")]
    ExecFailed {
        command: String,
        exit_code: i32,
        tail: String,
    },
    #[error("process \"{command}\" did not complete successfully: out of memory: the step used its {} limit; give it more with `--memory`{tail}", kiln_exec::format_size(*limit))]
    OutOfMemory {
        command: String,
        /// Bytes.
        limit: u64,
        tail: String,
    },
    /// The step that failed, around its error.
    #[error("{location}{sep}{name}", sep = if location.is_empty() { "" } else { ": " })]
    Step {
        name: String,
        location: String,
        source: Arc<SolveError>,
    },
    /// An error several waiters share (one failed step that many steps needed).
    #[error(transparent)]
    Shared(Arc<SolveError>),
    #[error("invalid build graph: {0}")]
    Graph(String),
    #[error("invalid build graph: {0}")]
    InvalidGraph(kiln_llb::LlbError),
}

impl From<kiln_cache::CacheError> for SolveError {
    fn from(e: kiln_cache::CacheError) -> Self {
        SolveError::Cache(e)
    }
}

impl From<kiln_exec::ExecError> for SolveError {
    fn from(e: kiln_exec::ExecError) -> Self {
        SolveError::Sandbox(e)
    }
}

impl SolveError {
    /// A failed file system call on `what` (a path in backticks, with the action when it helps:
    /// ``cannot create `/x` ``).
    pub(crate) fn io(what: impl Into<String>) -> impl Fn(std::io::Error) -> SolveError {
        let what = what.into();
        move |source| SolveError::Io {
            what: what.clone(),
            source,
        }
    }

    /// A failure with a hint on what to do after its cause (see [`SolveError::Hinted`]).
    pub(crate) fn hinted(
        what: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
        hint: impl Into<String>,
    ) -> SolveError {
        SolveError::Hinted {
            what: what.into(),
            cause: Box::new(cause),
            hint: hint.into(),
        }
    }

    /// The underlying error a [`SolveError::Hinted`] prints in its text, for a caller that
    /// matches on it (e.g. an `io::Error` saying the disk is full).
    pub fn cause(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SolveError::Hinted { cause, .. } => Some(cause.as_ref()),
            SolveError::Shared(inner) => inner.cause(),
            _ => None,
        }
    }

    /// The error with its whole chain of causes, as one line of text (what `{:#}` prints).
    pub fn chain_text(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }
}

/// An error and its causes, as `{:#}` prints them: `error: cause: cause's cause`.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// What a vertex produced.
#[derive(Clone)]
pub enum Output {
    /// An empty filesystem.
    Scratch,
    /// A snapshot (with its parents).
    Snapshot(SnapshotId),
    /// A local directory, read in place.
    Local(Arc<dyn LocalContext>),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Scratch => write!(f, "Scratch"),
            Output::Snapshot(s) => write!(f, "Snapshot({s})"),
            Output::Local(l) => write!(f, "Local({})", l.root().display()),
        }
    }
}

/// A solve's inputs.
pub struct SolveRequest {
    pub definition: Definition,
    /// `local://NAME` sources by name.
    pub locals: HashMap<String, Arc<dyn LocalContext>>,
    pub progress: Arc<dyn ProgressSink>,
    /// `RUN --mount=type=secret` sources by id (never part of a cache key).
    pub secrets: HashMap<String, Vec<u8>>,
    /// `RUN --mount=type=ssh` agent sockets by id.
    pub ssh: HashMap<String, PathBuf>,
    /// Every exec step gets a private network with only loopback (`kiln build --network none`).
    pub network_none: bool,
    /// What runs the exec steps: the built-in sandbox or `runc`/`crun` (`kiln build --runtime`).
    pub runtime: kiln_exec::Runtime,
    /// Memory, CPU and pids limits of every exec step (`kiln build --memory --cpus
    /// --pids-limit`); not part of any cache key, as with BuildKit.
    pub limits: kiln_exec::Limits,
}

/// A solve's result.
#[derive(Debug)]
pub struct SolveOutput {
    pub root: Output,
    /// Steps that ran.
    pub executed: usize,
    /// Steps whose result came from the cache.
    pub cached: usize,
    /// When the root's result was first produced (unix seconds).
    pub created_unix: u64,
    /// The cache keys of the steps this solve resolved (ran or found cached), for a cache
    /// export: each names its result in the store's index.
    pub keys: Vec<String>,
}

/// What a solve of several roots produced ([`Solver::solve_roots`]): one result per root, in the
/// order asked, with the steps of all of them counted once.
#[derive(Debug)]
pub struct RootsOutput {
    /// Each root's result and when it was first produced (unix seconds).
    pub roots: Vec<(Output, u64)>,
    pub executed: usize,
    pub cached: usize,
    /// The cache keys of the steps this solve resolved (ran or found cached), for a cache
    /// export: each names its result in the store's index.
    pub keys: Vec<String>,
    /// `keys` and the keys of the steps below a hit, computed and looked up but never needed:
    /// an inline cache records every step of the image, whichever of them this solve reached
    /// (a key may name no result; the caller checks the index).
    pub looked_up_keys: Vec<String>,
}

/// The scheduler. Cheap to clone; one per engine.
#[derive(Clone)]
pub struct Solver {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    registry: RegistryClient,
    platform: Platform,
    exec_slots: Semaphore,
    /// Steps running now, shared by concurrent solves.
    inflight: Arc<inflight::InFlight>,
}

struct VertexResult {
    key: String,
    output: Output,
    /// When the result was first produced (unix seconds): a cached result keeps its time, so
    /// rebuilding unchanged inputs gives the same image.
    created_unix: u64,
    /// Ran because the cache was to be ignored (`--no-cache`, `--no-cache-filter`), here or in an
    /// input: the steps that use it run again too, as they would read a new result.
    fresh: bool,
}

type VertexFuture = Shared<BoxFuture<'static, Result<Arc<VertexResult>, Arc<SolveError>>>>;

/// What a step's key look-up found.
enum Lookup {
    /// The step's result: a cache hit, or a source resolved in place.
    Done(Arc<VertexResult>),
    /// A miss: the key (and whether the step must run regardless of the cache), no output yet.
    Miss(Arc<VertexResult>),
}

#[derive(Default)]
struct Counters {
    executed: usize,
    cached: usize,
}

impl Solver {
    /// `jobs` bounds how many exec steps run at once.
    pub fn new(store: Store, registry: RegistryClient, platform: Platform, jobs: usize) -> Self {
        Solver {
            inner: Arc::new(Inner {
                store,
                registry,
                platform,
                exec_slots: Semaphore::new(jobs.max(1)),
                inflight: Default::default(),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn registry(&self) -> &RegistryClient {
        &self.inner.registry
    }

    pub fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    /// Solves the definition's root. Independent vertices run concurrently; the first failure
    /// cancels the rest (their sandboxes are killed when their futures drop).
    pub async fn solve(&self, req: SolveRequest) -> Result<SolveOutput, SolveError> {
        let root = req.definition.root.clone().unwrap_or_default();
        let mut out = self.solve_roots(req, vec![root]).await?;
        let (root, created_unix) = out.roots.pop().unwrap_or((Output::Scratch, 0));
        Ok(SolveOutput {
            root,
            executed: out.executed,
            cached: out.cached,
            created_unix,
            keys: out.keys,
        })
    }

    /// Solves several roots of one definition in one pass (a multi-platform build: one root
    /// per platform): a vertex they share runs once. The definition's own root is ignored; an
    /// empty digest is scratch.
    pub async fn solve_roots(
        &self,
        req: SolveRequest,
        roots: Vec<Input>,
    ) -> Result<RootsOutput, SolveError> {
        let def = Arc::new(req.definition);
        def.validate().map_err(SolveError::InvalidGraph)?;
        let counters = Arc::new(Mutex::new(Counters::default()));
        let mut futures: HashMap<String, VertexFuture> = HashMap::new();
        let locals = Arc::new(req.locals);
        let session = Arc::new(mounts::Session {
            secrets: req.secrets,
            ssh: req.ssh,
            network_none: req.network_none,
            runtime: req.runtime,
            limits: req.limits,
        });
        // Hashing of the local contexts starts now, beside the pulls and the first steps.
        let prefetch = prefetch::start(&def, &roots, &locals, &self.inner.store, &req.progress);
        let metadata = def.metadata_by_digest();
        let needed = needed_by_roots(&def, &roots);
        // Each vertex is its own task and waits for its inputs' tasks to finish: no future polls
        // another vertex's, so a chain of thousands of steps needs no more stack than one step
        // (nested futures recursed once per vertex and overflowed the stack at ~500 steps).
        // Dropping `tasks` (the solve returned, failed or was dropped) aborts every vertex still
        // running, which kills its sandbox.
        let mut tasks = AbortOnDrop(Vec::new());
        // Keys are looked up top-down, as BuildKit does: a step's key needs only its inputs'
        // keys, so every vertex first computes its key and looks it up; a miss waits until a
        // step that runs (or a root) demands its result, and only then demands its inputs'. A
        // final stage found in the cache so never runs the stages below it (`mode=min` caches).
        let mut keyed: HashMap<String, VertexFuture> = HashMap::new();
        let mut demands: HashMap<String, Arc<tokio::sync::watch::Sender<bool>>> = HashMap::new();
        for (idx, op) in def.ops.iter().enumerate() {
            if !needed.contains(&idx) {
                continue;
            }
            let digest = op.digest();
            let dangling = |d: &str| SolveError::Graph(format!("dangling input {d}"));
            let inputs: Vec<VertexFuture> = op
                .inputs
                .iter()
                .map(|i| {
                    futures
                        .get(&i.digest)
                        .cloned()
                        .ok_or_else(|| dangling(&i.digest))
                })
                .collect::<Result<_, _>>()?;
            let input_keys: Vec<VertexFuture> = op
                .inputs
                .iter()
                .map(|i| {
                    keyed
                        .get(&i.digest)
                        .cloned()
                        .ok_or_else(|| dangling(&i.digest))
                })
                .collect::<Result<_, _>>()?;
            let input_demands: Vec<Arc<tokio::sync::watch::Sender<bool>>> = op
                .inputs
                .iter()
                .map(|i| {
                    demands
                        .get(&i.digest)
                        .cloned()
                        .ok_or_else(|| dangling(&i.digest))
                })
                .collect::<Result<_, _>>()?;
            let (demand, mut demanded) = tokio::sync::watch::channel(false);
            demands.insert(digest.clone(), Arc::new(demand));
            let meta = metadata
                .get(digest.as_str())
                .map(|m| (*m).clone())
                .unwrap_or_default();
            let task = VertexTask {
                solver: self.clone(),
                vertex: idx + 1,
                digest: digest.clone(),
                op: op.clone(),
                meta,
                locals: locals.clone(),
                session: session.clone(),
                progress: req.progress.clone(),
                counters: counters.clone(),
                prefetched: prefetch.for_op(&digest),
            };
            let (done, result) = futures::channel::oneshot::channel();
            let (key_done, key_result) = futures::channel::oneshot::channel();
            tasks.0.push(tokio::spawn(async move {
                let looked_up = match futures::future::try_join_all(input_keys).await {
                    Ok(keys) => task.look_up(keys).await.map_err(Arc::new),
                    Err(e) => Err(e),
                };
                let provisional = match looked_up {
                    Ok(Lookup::Done(r)) => {
                        let _ = key_done.send(Ok(r.clone()));
                        let _ = done.send(Ok(r));
                        return;
                    }
                    Ok(Lookup::Miss(p)) => p,
                    Err(e) => {
                        let _ = key_done.send(Err(e.clone()));
                        let _ = done.send(Err(e));
                        return;
                    }
                };
                let _ = key_done.send(Ok(provisional));
                // Nothing needs this step's result until a step that runs (or a root) says so.
                if demanded.wait_for(|d| *d).await.is_err() {
                    return;
                }
                for d in &input_demands {
                    d.send_replace(true);
                }
                // All inputs at once, so independent branches run in parallel; the first failure
                // returns here at once and the solve cancels everything still running.
                let r = match futures::future::try_join_all(inputs).await {
                    Ok(results) => task.run(results).await.map_err(Arc::new),
                    Err(e) => Err(e),
                };
                let _ = done.send(r);
            }));
            let key_fut = async move {
                key_result.await.unwrap_or_else(|_| {
                    Err(Arc::new(SolveError::Op(
                        "the step's task ended without a key".into(),
                    )))
                })
            }
            .boxed()
            .shared();
            keyed.insert(digest.clone(), key_fut);
            let fut = async move {
                result.await.unwrap_or_else(|_| {
                    Err(Arc::new(SolveError::Op(
                        "the step's task ended without a result".into(),
                    )))
                })
            }
            .boxed()
            .shared();
            futures.insert(digest, fut);
        }
        for root in &roots {
            if let Some(d) = demands.get(&root.digest) {
                d.send_replace(true);
            }
        }
        let mut results = Vec::with_capacity(roots.len());
        for root in &roots {
            if root.digest.is_empty() {
                results.push((Output::Scratch, 0));
                continue;
            }
            let f = futures
                .get(&root.digest)
                .cloned()
                .ok_or_else(|| SolveError::Graph("root is not in the graph".into()))?;
            // The root's task ends when everything it needs has.
            let r = match f.await {
                Ok(r) => r,
                Err(e) => {
                    // Wait for the steps still running to be canceled, so that they report it
                    // and their sandboxes are gone before the build ends.
                    tasks.cancel().await;
                    return Err(unwrap_arc(e));
                }
            };
            results.push((r.output.clone(), r.created_unix));
        }
        let c = counters
            .lock()
            .map(|c| (c.executed, c.cached))
            .unwrap_or((0, 0));
        let mut keys: Vec<String> = futures
            .values()
            .filter_map(|f| f.peek()?.as_ref().ok().map(|r| r.key.clone()))
            .collect();
        keys.sort();
        keys.dedup();
        let mut looked_up_keys: Vec<String> = keyed
            .values()
            .filter_map(|f| f.peek()?.as_ref().ok().map(|r| r.key.clone()))
            .chain(keys.iter().cloned())
            .collect();
        looked_up_keys.sort();
        looked_up_keys.dedup();
        Ok(RootsOutput {
            roots: results,
            executed: c.0,
            cached: c.1,
            keys,
            looked_up_keys,
        })
    }
}

/// The vertex tasks of a solve, aborted when dropped.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    /// Aborts every task and waits until each has ended.
    async fn cancel(&mut self) {
        for task in &self.0 {
            task.abort();
        }
        for task in self.0.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The indexes of the ops the roots need (themselves included), found without recursion.
fn needed_by_roots(def: &Definition, roots: &[Input]) -> std::collections::HashSet<usize> {
    let by_digest: HashMap<String, usize> = def
        .ops
        .iter()
        .enumerate()
        .map(|(i, op)| (op.digest(), i))
        .collect();
    let mut needed = std::collections::HashSet::new();
    let mut todo: Vec<usize> = roots
        .iter()
        .filter_map(|r| by_digest.get(&r.digest).copied())
        .collect();
    while let Some(i) = todo.pop() {
        if !needed.insert(i) {
            continue;
        }
        for input in &def.ops[i].inputs {
            if let Some(&j) = by_digest.get(&input.digest) {
                todo.push(j);
            }
        }
    }
    needed
}

fn unwrap_arc(e: Arc<SolveError>) -> SolveError {
    Arc::try_unwrap(e).unwrap_or_else(SolveError::Shared)
}

#[derive(Clone)]
struct VertexTask {
    solver: Solver,
    vertex: usize,
    digest: String,
    op: Op,
    meta: OpMetadata,
    locals: Arc<HashMap<String, Arc<dyn LocalContext>>>,
    session: Arc<mounts::Session>,
    progress: Arc<dyn ProgressSink>,
    counters: Arc<Mutex<Counters>>,
    /// Checksums of the local contexts this op reads, computed ahead, by input index.
    prefetched: HashMap<i64, prefetch::SumFuture>,
}

impl VertexTask {
    /// Report the step failed with `e`, and the error naming the step and its location.
    fn failed(&self, e: Arc<SolveError>) -> SolveError {
        self.progress.event(Event::Failed {
            vertex: self.vertex,
            name: self.name(),
            error: e.chain_text(),
        });
        SolveError::Step {
            name: self.name(),
            location: self.meta.location.clone(),
            source: e,
        }
    }

    fn name(&self) -> String {
        if self.meta.name.is_empty() {
            self.digest.clone()
        } else {
            self.meta.name.clone()
        }
    }

    /// Computes the step's key from its inputs' keys (`inputs` may be provisional: a miss's
    /// key without its output) and looks it up: a hit, or a source read or fetched on every
    /// build, is the step's result; a miss is the key with which [`VertexTask::run`] continues
    /// once the step's result is demanded.
    async fn look_up(&self, inputs: Vec<Arc<VertexResult>>) -> Result<Lookup, SolveError> {
        let store = &self.solver.inner.store;
        let op = ops::of(&self.op);
        let key = op.cache_key(self, &inputs).await?;
        if let Some(resolved) = op.resolve(self, &key) {
            return resolved.await.map(Lookup::Done);
        }
        let fresh = self.meta.ignore_cache || inputs.iter().any(|i| i.fresh);
        if !fresh {
            if let Some(hit) = cached_result(store, &key)? {
                return Ok(Lookup::Done(self.cached(
                    key,
                    hit.snapshot,
                    hit.created_unix,
                )));
            }
        }
        Ok(Lookup::Miss(Arc::new(VertexResult {
            key,
            output: Output::Scratch,
            created_unix: 0,
            fresh,
        })))
    }

    async fn run(self, inputs: Vec<Arc<VertexResult>>) -> Result<Arc<VertexResult>, SolveError> {
        let store = &self.solver.inner.store;
        let op = ops::of(&self.op);
        let key = op.cache_key(&self, &inputs).await?;
        if let Some(resolved) = op.resolve(&self, &key) {
            return resolved.await;
        }
        let fresh = self.meta.ignore_cache || inputs.iter().any(|i| i.fresh);
        if !fresh {
            if let Some(hit) = cached_result(store, &key)? {
                return Ok(self.cached(key, hit.snapshot, hit.created_unix));
            }
        }
        // The step runs, or its selection key reads what it selects: a lazily imported cache
        // layer below an input is filled now, and only then.
        for input in &inputs {
            if let Output::Snapshot(s) = input.output {
                lazy::materialize(store, &self.solver.inner.registry, s)
                    .await
                    .map_err(|e| self.failed(Arc::new(e)))?;
            }
        }
        // The op's own key missed: what it selects of a stage may still be the same bytes as
        // when it last ran (the stage re-ran to the same output). The step is then that earlier
        // step, under its key, so the steps after it are found too.
        let selection = if self.meta.ignore_cache {
            None
        } else {
            ops::selection_key(&self, &inputs).await?
        };
        if let Some(sk) = &selection {
            let recorded = store
                .index()
                .alias_get(&ops::selection_alias(sk))
                .map_err(SolveError::from)?;
            if let Some(earlier) = recorded {
                if let Some(hit) = cached_result(store, &earlier)? {
                    return Ok(self.cached(earlier, hit.snapshot, hit.created_unix));
                }
            }
        }
        // Until the run ends, dropping this future (a sibling failed, the build was interrupted)
        // reports the step as canceled, if it had started.
        let mut canceled = CancelGuard {
            progress: Some(self.progress.clone()),
            run: None,
            vertex: self.vertex,
            name: self.name(),
        };
        // One run per cache key at a time in this engine: a concurrent build that needs the same
        // step waits for this run (and sees its output) instead of starting another.
        let runner = self.clone();
        let run_inputs = inputs.clone();
        let run_key = key.clone();
        let run_alias = selection.as_deref().map(ops::selection_alias);
        let index_store = store.clone();
        let index_key = key.clone();
        let waiting = self.solver.inner.inflight.join_or_start(
            &key,
            self.progress.clone(),
            self.vertex,
            move || {
                let hit = (!fresh)
                    .then(|| cached_result(&index_store, &index_key).ok().flatten())
                    .flatten()?;
                Some(inflight::Executed {
                    output: hit.snapshot.map_or(Output::Scratch, Output::Snapshot),
                    created_unix: hit.created_unix,
                })
            },
            move |sink| {
                let mut runner = runner;
                runner.progress = sink;
                async move {
                    runner
                        .execute_and_record(&run_key, run_alias.as_deref(), &run_inputs)
                        .await
                }
                .boxed()
            },
        );
        canceled.run = Some(waiting.progress.clone());
        let waited = Instant::now();
        let result = waiting.run.await;
        canceled.progress = None;
        match result {
            Ok(done) if waiting.how == inflight::How::Cached => {
                let snapshot = match done.output {
                    Output::Snapshot(s) => Some(s),
                    _ => None,
                };
                Ok(self.cached(key, snapshot, done.created_unix))
            }
            Ok(done) => {
                // The step's time runs from its start (for an exec step, when it got its
                // `--jobs` slot), not from when this build began to wait for it.
                let started = waiting.progress.started_at().unwrap_or(waited);
                self.progress.event(Event::Done {
                    vertex: self.vertex,
                    name: self.name(),
                    elapsed: started.elapsed(),
                });
                if let Ok(mut c) = self.counters.lock() {
                    c.executed += 1;
                }
                Ok(Arc::new(VertexResult {
                    key,
                    output: done.output,
                    created_unix: done.created_unix,
                    fresh,
                }))
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Reports the step cached and returns the cached result.
    fn cached(
        &self,
        key: String,
        snapshot: Option<SnapshotId>,
        created_unix: u64,
    ) -> Arc<VertexResult> {
        self.progress.event(Event::Cached {
            vertex: self.vertex,
            name: self.name(),
        });
        if let Ok(mut c) = self.counters.lock() {
            c.cached += 1;
        }
        Arc::new(VertexResult {
            key,
            output: snapshot.map_or(Output::Scratch, Output::Snapshot),
            created_unix,
            fresh: false,
        })
    }

    /// Reports that the step starts running now (an exec step: once it has its `--jobs` slot).
    fn started(&self) {
        self.progress.event(Event::Started {
            vertex: self.vertex,
            name: self.name(),
        });
    }

    /// Runs the op and records its result in the cache index under `key`, and `alias` (its
    /// selection key) for it.
    async fn execute_and_record(
        &self,
        key: &str,
        alias: Option<&str>,
        inputs: &[Arc<VertexResult>],
    ) -> Result<inflight::Executed, Arc<SolveError>> {
        let op = ops::of(&self.op);
        if !op.reports_start() {
            self.started();
        }
        let output = op.execute(self, inputs).await.map_err(Arc::new)?;
        let snapshot = match &output {
            Output::Snapshot(s) => Some(*s),
            _ => None,
        };
        // A `RUN`'s or file op's snapshot is new and this step's own: until the index names it,
        // stopping here (canceled while syncing) or failing removes it. (A source's snapshot may
        // be an image's, shared.)
        let owned = snapshot
            .filter(|_| op.owns_snapshot())
            .map(|s| self.solver.inner.store.snapshots().adopt(s));
        if let Some(snap) = snapshot.filter(|_| !op.syncs_its_snapshot()) {
            // The index must never name a snapshot whose files a crash could lose: its files
            // are synced before the result is recorded (`Snapshots::sync`).
            let store = self.solver.inner.store.clone();
            let started = std::time::Instant::now();
            tokio::task::spawn_blocking(move || store.snapshots().sync(snap))
                .await
                .map_err(|e| Arc::new(SolveError::from(e)))?
                .map_err(|e| Arc::new(SolveError::from(e)))?;
            tracing::debug!(snapshot = %snap, elapsed = ?started.elapsed(), "snapshot synced");
        }
        let created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.solver
            .inner
            .store
            .index()
            .put_aliased(
                key,
                &CachedResult {
                    snapshot,
                    created_unix,
                },
                alias,
            )
            .map_err(|e| Arc::new(SolveError::from(e)))?;
        if let Some(g) = owned {
            g.commit();
        }
        if let Some(snap) = snapshot {
            op.recorded(self, inputs, snap);
        }
        Ok(inflight::Executed {
            output,
            created_unix,
        })
    }
}

/// Reports a step as canceled when its future is dropped before it finished (if it had started:
/// a step still waiting for its `--jobs` slot never showed), and stops its output to this build.
struct CancelGuard {
    progress: Option<Arc<dyn ProgressSink>>,
    /// The progress of the run this build waits for.
    run: Option<Arc<progress::FanOut>>,
    vertex: usize,
    name: String,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let Some(p) = self.progress.take() else {
            return;
        };
        let started = match &self.run {
            Some(run) => {
                run.remove(&p);
                run.started_at().is_some()
            }
            None => true,
        };
        if started {
            p.event(Event::Canceled {
                vertex: self.vertex,
                name: std::mem::take(&mut self.name),
            });
        }
    }
}

/// The result recorded under `key`, if its snapshot is still there.
fn cached_result(store: &Store, key: &str) -> Result<Option<CachedResult>, SolveError> {
    let Some(hit) = store.index().get(key).map_err(SolveError::from)? else {
        return Ok(None);
    };
    let usable = match hit.snapshot {
        None => true,
        Some(s) => store.snapshots().fs_dir(s).is_dir(),
    };
    Ok(usable.then_some(hit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a cause of its own, as reqwest's and registry errors have.
    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_hinted_error_prints_its_whole_cause_once_then_the_hint() {
        let e = SolveError::Step {
            name: "ADD https://example.com/x /x".into(),
            location: "Dockerfile:3".into(),
            source: Arc::new(SolveError::hinted(
                "download `https://example.com/x`",
                Outer(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connection refused",
                )),
                "check the URL and the network",
            )),
        };
        let want = "Dockerfile:3: ADD https://example.com/x /x: download `https://example.com/x`: \
                    error sending request: connection refused; check the URL and the network";
        assert_eq!(e.chain_text(), want);
        let cause = e.cause();
        assert!(cause.is_none(), "a step is not the hinted error itself");
        let Some(SolveError::Hinted { .. }) = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<Arc<SolveError>>())
            .map(|a| a.as_ref())
        else {
            panic!("the step's source is not the hinted error");
        };
    }

    #[test]
    fn a_hinted_error_keeps_its_cause_typed() {
        let e = SolveError::hinted(
            "ssh agent `default`: `/tmp/none`",
            std::io::Error::from(std::io::ErrorKind::NotFound),
            "start an agent (`eval $(ssh-agent)`) or pass its socket",
        );
        let io = e.cause().and_then(|c| c.downcast_ref::<std::io::Error>());
        assert_eq!(io.map(|io| io.kind()), Some(std::io::ErrorKind::NotFound));
        assert!(
            std::error::Error::source(&e).is_none(),
            "the cause would print twice"
        );
        assert!(e
            .to_string()
            .ends_with("; start an agent (`eval $(ssh-agent)`) or pass its socket"));
    }
}

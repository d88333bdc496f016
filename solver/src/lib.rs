//! kiln-solver: walks an LLB [`Definition`], computes each vertex's content-based cache key,
//! reuses cached results and runs the rest — in parallel where the graph allows, with exec steps
//! bounded by `jobs` — while streaming [`progress`] events.
//!
//! Cache keys (see `docs/cache-keys.md`): `key(v) = blake3("kiln-cache-v1", digest(v),
//! key(input)…, checksum(local parts)…)`. An op's digest covers everything it does; its inputs'
//! keys cover everything it reads, except local contexts, whose key covers only the files that
//! the op selects (a `COPY` keys on the checksum of its sources, an exec mount on the whole
//! context after `.dockerignore`).

mod cleanup;
mod context;
mod fileops;
mod git;
mod glob;
mod http;
pub mod images;
mod inflight;
mod inroot;
mod merge;
mod mounts;
mod nocache;
mod prefetch;
pub mod progress;

pub use context::LocalContext;
pub use git::{checkout_git_context, is_git_context};
pub use images::ImageRef;
pub use inroot::resolve_in_root;
pub use mounts::prune_cache_mounts;
pub use nocache::ignore_cache_for_stages;
pub use progress::{Event, NoProgress, ProgressSink, Stream};

use futures::future::{BoxFuture, FutureExt, Shared};
use kiln_cache::{CachedResult, SnapshotId, Store};
use kiln_llb::{file_action::Action, op::Kind, Definition, MountType, NetworkMode, Op, OpMetadata};
use kiln_registry::{Platform, RegistryClient};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;

/// Errors from solving a graph. Step failures carry the step's name and Dockerfile location.
#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    #[error("store: {0}")]
    Cache(String),
    #[error("image `{image}`: {message}")]
    Image { image: String, message: String },
    #[error("build context: `{path}`: {message}")]
    Context { path: String, message: String },
    #[error("{0}")]
    Op(String),
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
    #[error("{location}{sep}{name}: {source}", sep = if location.is_empty() { "" } else { ": " })]
    Step {
        name: String,
        location: String,
        source: Arc<SolveError>,
    },
    #[error("invalid build graph: {0}")]
    Graph(String),
}

impl SolveError {
    pub(crate) fn cache(e: kiln_cache::CacheError) -> Self {
        SolveError::Cache(e.to_string())
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
        let def = Arc::new(req.definition);
        def.validate()
            .map_err(|e| SolveError::Graph(e.to_string()))?;
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
        let prefetch = prefetch::start(&def, &locals, &self.inner.store, &req.progress);
        let metadata = def.metadata_by_digest();
        let needed = needed_by_root(&def);
        // Each vertex is its own task and waits for its inputs' tasks to finish: no future polls
        // another vertex's, so a chain of thousands of steps needs no more stack than one step
        // (nested futures recursed once per vertex and overflowed the stack at ~500 steps).
        // Dropping `tasks` (the solve returned, failed or was dropped) aborts every vertex still
        // running, which kills its sandbox.
        let mut tasks = AbortOnDrop(Vec::new());
        for (idx, op) in def.ops.iter().enumerate() {
            if !needed.contains(&idx) {
                continue;
            }
            let digest = op.digest();
            let inputs: Vec<VertexFuture> =
                op.inputs
                    .iter()
                    .map(|i| {
                        futures.get(&i.digest).cloned().ok_or_else(|| {
                            SolveError::Graph(format!("dangling input {}", i.digest))
                        })
                    })
                    .collect::<Result<_, _>>()?;
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
            tasks.0.push(tokio::spawn(async move {
                // All inputs at once, so independent branches run in parallel; the first failure
                // returns here at once and the solve cancels everything still running.
                let r = match futures::future::try_join_all(inputs).await {
                    Ok(results) => task.run(results).await.map_err(Arc::new),
                    Err(e) => Err(e),
                };
                let _ = done.send(r);
            }));
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
        let root = def.root.clone().unwrap_or_default();
        let mut created_unix = 0;
        let output = if root.digest.is_empty() {
            Output::Scratch
        } else {
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
            created_unix = r.created_unix;
            r.output.clone()
        };
        let c = counters
            .lock()
            .map(|c| (c.executed, c.cached))
            .unwrap_or((0, 0));
        Ok(SolveOutput {
            root: output,
            executed: c.0,
            cached: c.1,
            created_unix,
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

/// The indexes of the ops the root needs (itself included), found without recursion.
fn needed_by_root(def: &Definition) -> std::collections::HashSet<usize> {
    let by_digest: HashMap<String, usize> = def
        .ops
        .iter()
        .enumerate()
        .map(|(i, op)| (op.digest(), i))
        .collect();
    let mut needed = std::collections::HashSet::new();
    let mut todo: Vec<usize> = def
        .root
        .as_ref()
        .and_then(|r| by_digest.get(&r.digest).copied())
        .into_iter()
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
    Arc::try_unwrap(e).unwrap_or_else(|e| SolveError::Op(e.to_string()))
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
            error: e.to_string(),
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

    async fn run(self, inputs: Vec<Arc<VertexResult>>) -> Result<Arc<VertexResult>, SolveError> {
        let store = &self.solver.inner.store;
        let key = self.cache_key(&inputs).await?;
        // Local sources are read in place; they have nothing to cache.
        if let Some(Kind::Source(s)) = &self.op.kind {
            if let Some(name) = s.identifier.strip_prefix("local://") {
                let ctx = self.locals.get(name).cloned().ok_or_else(|| {
                    SolveError::Op(format!("build context `{name}` was not provided"))
                })?;
                return Ok(Arc::new(VertexResult {
                    key,
                    output: Output::Local(ctx),
                    created_unix: 0,
                    fresh: false,
                }));
            }
        }
        // An http source without `--checksum` is fetched every time and keyed by its content.
        if let Some(Kind::Source(s)) = &self.op.kind {
            if http::is_http(&s.identifier) && !http::is_pinned(s) {
                return self.run_http(s, key).await;
            }
            // A git source is resolved to a commit every time and keyed by it.
            if git::is_git(&s.identifier) {
                return self.run_git(s, key).await;
            }
        }
        let fresh = self.meta.ignore_cache || inputs.iter().any(|i| i.fresh);
        if !fresh {
            if let Some(hit) = cached_result(store, &key)? {
                return Ok(self.cached(key, hit.snapshot, hit.created_unix));
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
                async move { runner.execute_and_record(&run_key, &run_inputs).await }.boxed()
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

    /// Runs the op and records its result in the cache index under `key`.
    async fn execute_and_record(
        &self,
        key: &str,
        inputs: &[Arc<VertexResult>],
    ) -> Result<inflight::Executed, Arc<SolveError>> {
        // An exec step starts when it gets its `--jobs` slot and says so itself.
        let is_exec = matches!(self.op.kind, Some(Kind::Exec(_)));
        if !is_exec {
            self.started();
        }
        let output = self.execute(inputs).await.map_err(Arc::new)?;
        let snapshot = match &output {
            Output::Snapshot(s) => Some(*s),
            _ => None,
        };
        // A `RUN`'s or file op's snapshot is new and this step's own: until the index names it,
        // stopping here (canceled while syncing) or failing removes it. (A source's snapshot may
        // be an image's, shared.)
        let owned = snapshot
            .filter(|_| is_exec || matches!(self.op.kind, Some(Kind::File(_))))
            .map(|s| cleanup::SnapshotGuard::new(self.solver.inner.store.clone(), s));
        if let Some(snap) = snapshot {
            // The index must never name a snapshot whose files a crash could lose: one syncfs of
            // the snapshot's file system per step, before the result is recorded.
            let store = self.solver.inner.store.clone();
            let started = std::time::Instant::now();
            tokio::task::spawn_blocking(move || store.snapshots().sync(snap))
                .await
                .map_err(|e| Arc::new(SolveError::Op(e.to_string())))?
                .map_err(|e| Arc::new(SolveError::cache(e)))?;
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
            .put(
                key,
                &CachedResult {
                    snapshot,
                    created_unix,
                },
            )
            .map_err(|e| Arc::new(SolveError::cache(e)))?;
        if let Some(g) = owned {
            g.keep();
        }
        if let (Some(snap), Some(Kind::File(_))) = (snapshot, &self.op.kind) {
            // Later runs of this COPY link their unchanged files from this snapshot.
            let identity = self.copy_identity(inputs);
            if let Err(e) = fileops::reuse::remember(&self.solver.inner.store, &identity, snap) {
                tracing::warn!(%snap, "cannot record the snapshot for link reuse: {e}");
            }
        }
        Ok(inflight::Executed {
            output,
            created_unix,
        })
    }

    /// What makes two runs of a file op the same COPY apart from the content it reads (see
    /// `fileops::reuse`).
    fn copy_identity(&self, inputs: &[Arc<VertexResult>]) -> String {
        fileops::reuse::identity(&self.digest, inputs.iter().map(|i| i.key.as_str()))
    }

    /// The vertex's cache key: its op digest, its inputs' keys, and for local inputs the
    /// checksum of exactly what this op reads from them.
    async fn cache_key(&self, inputs: &[Arc<VertexResult>]) -> Result<String, SolveError> {
        let mut h = blake3::Hasher::new();
        h.update(b"kiln-cache-v1\0");
        h.update(self.digest.as_bytes());
        for (i, input) in inputs.iter().enumerate() {
            h.update(b"\0input\0");
            h.update(input.key.as_bytes());
            if let Output::Local(ctx) = &input.output {
                // Usually computed ahead, since the solve started (see `prefetch`).
                let sum = match self.prefetched.get(&(i as i64)) {
                    Some(ahead) => ahead.clone().await.map_err(unwrap_arc)?,
                    None => {
                        let selectors = prefetch::selectors(&self.op, i as i64);
                        let ctx = ctx.clone();
                        let store = self.solver.inner.store.clone();
                        tokio::task::spawn_blocking(move || {
                            prefetch::checksum(ctx.as_ref(), &selectors, &store)
                        })
                        .await
                        .map_err(|e| SolveError::Op(e.to_string()))??
                        .0
                    }
                };
                h.update(b"\0local\0");
                h.update(sum.as_bytes());
            }
        }
        Ok(h.finalize().to_hex().to_string())
    }

    async fn execute(&self, inputs: &[Arc<VertexResult>]) -> Result<Output, SolveError> {
        match &self.op.kind {
            Some(Kind::Source(s)) if http::is_http(&s.identifier) => {
                http::execute(&self.solver.inner.store, s).await
            }
            Some(Kind::Source(s)) => self.source(&s.identifier).await,
            Some(Kind::Exec(e)) => self.exec(e, inputs).await,
            Some(Kind::File(f)) => {
                let f = f.clone();
                let store = self.solver.inner.store.clone();
                let outputs: Vec<Output> = inputs.iter().map(|r| r.output.clone()).collect();
                let op_store = store.clone();
                let identity = self.copy_identity(inputs);
                cleanup::blocking_snapshot(store, move || {
                    file_op(&op_store, &f, &outputs, &identity)
                })
                .await
            }
            Some(Kind::Merge(m)) => merge::execute(&self.solver.inner.store, m, inputs).await,
            Some(Kind::Diff(_)) => Err(SolveError::Unsupported("diff".into())),
            None => Err(SolveError::Graph(format!("op {} has no kind", self.digest))),
        }
    }

    async fn source(&self, identifier: &str) -> Result<Output, SolveError> {
        let Some(name) = identifier.strip_prefix("docker-image://") else {
            return Err(SolveError::Unsupported(format!("source `{identifier}`")));
        };
        let inner = &self.solver.inner;
        let image =
            images::resolve_image(&inner.store, &inner.registry, &inner.platform, name, false)
                .await?;
        images::ensure_layers(&inner.store, &inner.registry, &image).await?;
        let store = inner.store.clone();
        let top = tokio::task::spawn_blocking(move || images::unpack(&store, &image))
            .await
            .map_err(|e| SolveError::Op(e.to_string()))??;
        Ok(top.map_or(Output::Scratch, Output::Snapshot))
    }

    async fn exec(
        &self,
        e: &kiln_llb::ExecOp,
        inputs: &[Arc<VertexResult>],
    ) -> Result<Output, SolveError> {
        let store = &self.solver.inner.store;
        let meta = e.meta.clone().unwrap_or_default();
        let mut rootfs_input: Option<Output> = None;
        for m in &e.mounts {
            if m.dest == "/" && m.mount_type == MountType::Bind as i32 {
                rootfs_input = Some(if m.input < 0 {
                    Output::Scratch
                } else {
                    input_output(inputs, m.input)?
                });
            }
        }
        let parent = match rootfs_input {
            Some(Output::Snapshot(s)) => Some(s),
            Some(Output::Scratch) | None => None,
            Some(Output::Local(_)) => {
                return Err(SolveError::Unsupported(
                    "a local context as the root filesystem".into(),
                ))
            }
        };
        let snaps = store.snapshots();
        let (chain, passwd, group) = chain_and_accounts(store, parent)?;
        let user_spec = if meta.user.is_empty() {
            "0"
        } else {
            &meta.user
        };
        let user = kiln_exec::resolve_user(user_spec, passwd.as_deref(), group.as_deref())
            .map_err(|e| SolveError::Op(e.to_string()))?;
        let network = if e.network == NetworkMode::None as i32 || self.session.network_none {
            kiln_exec::Network::None
        } else {
            kiln_exec::Network::Host
        };
        let spec = kiln_exec::default_spec(&kiln_exec::ProcessSpec {
            args: meta.args.clone(),
            env: meta.env.clone(),
            cwd: if meta.cwd.is_empty() {
                "/".into()
            } else {
                meta.cwd.clone()
            },
            user,
            hostname: if meta.hostname.is_empty() {
                "kiln".into()
            } else {
                meta.hostname.clone()
            },
            network,
            terminal: false,
        })
        .map_err(|e| SolveError::Op(e.to_string()))?;
        // `RUN --mount`s: prepared (and, for `sharing=locked`, waited for) before taking a slot.
        let mount_inputs: Vec<mounts::MountInput> = inputs
            .iter()
            .map(|r| mounts::MountInput {
                output: r.output.clone(),
                key: r.key.clone(),
            })
            .collect();
        let (store2, session, llb_mounts) = (store.clone(), self.session.clone(), e.mounts.clone());
        let extra = tokio::task::spawn_blocking(move || {
            mounts::prepare(&store2, &session, &llb_mounts, &mount_inputs)
        })
        .await
        .map_err(|e| SolveError::Op(e.to_string()))??;
        let mut spec = spec;
        mounts::add_to_spec(&mut spec, &extra)?;
        self.session
            .limits
            .apply_to(&mut spec)
            .map_err(|e| SolveError::Op(e.to_string()))?;
        let snap = snaps.create(parent).map_err(SolveError::cache)?;
        // Removed unless the step succeeds: a failed or canceled `RUN` leaves nothing behind.
        let owned = cleanup::SnapshotGuard::new(store.clone(), snap);
        let scratch = tempfile::Builder::new()
            .prefix("exec-")
            .tempdir_in(store.tmp_dir())
            .map_err(|e| SolveError::Op(format!("cannot make a temp dir: {e}")))?;
        let mut lower: Vec<PathBuf> = chain.iter().map(|s| snaps.fs_dir(*s)).collect();
        if lower.is_empty() {
            let empty = scratch.path().join("empty");
            std::fs::create_dir_all(&empty).map_err(|e| SolveError::Op(e.to_string()))?;
            lower.push(empty);
        }
        let upper = snaps.fs_dir(snap);
        let work = snap_work_dir(store, snap)?;
        let target = scratch.path().join("rootfs");
        let state = scratch.path().join("state");
        for d in [&target, &state] {
            std::fs::create_dir_all(d).map_err(|e| SolveError::Op(e.to_string()))?;
        }
        let config = kiln_exec::SandboxConfig {
            spec,
            rootfs: kiln_exec::RootFs {
                lower,
                upper: Some(upper.clone()),
                work: Some(work),
                target,
            },
            network,
            stdio: kiln_exec::Stdio::Piped,
            state_dir: state,
            runtime: self.session.runtime.clone(),
        };
        let permit = self
            .solver
            .inner
            .exec_slots
            .acquire()
            .await
            .map_err(|e| SolveError::Op(e.to_string()))?;
        self.started();
        let log = progress::StepLog::new(self.vertex, Instant::now(), self.progress.clone());
        let run = kiln_exec::run(config, Some(Box::new(log.clone())));
        tokio::pin!(run);
        // Lines a step leaves unfinished (a prompt before a long download) show after a pause.
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        let outcome = loop {
            tokio::select! {
                o = &mut run => break o,
                _ = tick.tick() => log.flush_stale(),
            }
        };
        log.finish();
        drop(permit);
        drop(extra);
        let outcome = match outcome {
            Ok(o) => o,
            Err(err) => return Err(SolveError::Op(err.to_string())),
        };
        if outcome.exit_code != 0 {
            let mut lines = log.tail();
            // Rootless with only the caller's own ids mapped, every other id is missing: say
            // why `chown`/`setuid` to one fails, as the command's own message cannot.
            if lines.contains("Invalid argument")
                && kiln_exec::in_user_namespace()
                && !kiln_exec::has_subordinate_ids()
            {
                lines.push_str(
                    "\nnote: rootless kiln has only your own user mapped (as root): other user and group ids do not exist here, so changing to them fails with `Invalid argument`; give your user ranges in /etc/subuid and /etc/subgid and install newuidmap/newgidmap (package uidmap), or build as root",
                );
            }
            if let Some(limit) = outcome.out_of_memory {
                return Err(SolveError::OutOfMemory {
                    command: meta.args.join(" "),
                    limit,
                    tail: lines,
                });
            }
            return Err(SolveError::ExecFailed {
                command: meta.args.join(" "),
                exit_code: outcome.exit_code,
                tail: lines,
            });
        }
        // The mount points the sandbox had to create are gone already: `kiln_exec::run` removes
        // them (and the directories copied up only for them) from the upper directory.
        Ok(Output::Snapshot(owned.keep()))
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
    let Some(hit) = store.index().get(key).map_err(SolveError::cache)? else {
        return Ok(None);
    };
    let usable = match hit.snapshot {
        None => true,
        Some(s) => store.snapshots().fs_dir(s).is_dir(),
    };
    Ok(usable.then_some(hit))
}

fn input_output(inputs: &[Arc<VertexResult>], index: i64) -> Result<Output, SolveError> {
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
        Some(p) => store.snapshots().chain(p).map_err(SolveError::cache)?,
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
        .map_err(SolveError::cache)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// The overlay work dir of a snapshot: beside its `fs` dir, on the same filesystem.
fn snap_work_dir(store: &Store, snap: SnapshotId) -> Result<PathBuf, SolveError> {
    let fs = store.snapshots().fs_dir(snap);
    let work = fs
        .parent()
        .map(|p| p.join("work"))
        .ok_or_else(|| SolveError::Op("snapshot dir has no parent".into()))?;
    std::fs::create_dir_all(&work).map_err(|e| SolveError::Op(e.to_string()))?;
    Ok(work)
}

/// Runs a file op: mounts the base with a new snapshot on top, applies the actions, commits.
/// `identity` finds an earlier run of the same COPY to hard-link unchanged files from.
fn file_op(
    store: &Store,
    f: &kiln_llb::FileOp,
    inputs: &[Output],
    identity: &str,
) -> Result<Output, SolveError> {
    let base = if f.base < 0 {
        Output::Scratch
    } else {
        inputs
            .get(f.base as usize)
            .cloned()
            .ok_or_else(|| SolveError::Graph(format!("file op base {} out of range", f.base)))?
    };
    let parent = match base {
        Output::Snapshot(s) => Some(s),
        Output::Scratch => None,
        Output::Local(_) => {
            return Err(SolveError::Unsupported(
                "a file op on a local context".into(),
            ))
        }
    };
    let snaps = store.snapshots();
    let (chain, passwd, group) = chain_and_accounts(store, parent)?;
    // Removed again unless the op succeeds.
    let made = snaps.create_mutable(parent).map_err(SolveError::cache)?;
    let snap = made.id();
    let result = (|| {
        let tmp = tempfile::Builder::new()
            .prefix("fileop-")
            .tempdir_in(store.tmp_dir())
            .map_err(|e| SolveError::Op(format!("cannot make a temp dir: {e}")))?;
        let target = tmp.path().join("root");
        std::fs::create_dir_all(&target).map_err(|e| SolveError::Op(e.to_string()))?;
        let _work = snap_work_dir(store, snap)?;
        let guard = snaps
            .mount(&chain, Some(snap), &target)
            .map_err(SolveError::cache)?;
        let root = guard.path().to_path_buf();
        let mut direct = None;
        for (n, action) in f.actions.iter().enumerate() {
            let Some(action) = &action.action else {
                continue;
            };
            let owner_opt = match action {
                Action::Copy(c) => c.owner.as_ref(),
                Action::Mkdir(m) => m.owner.as_ref(),
                Action::Mkfile(m) => m.owner.as_ref(),
                Action::Rm(_) => None,
            };
            let owner = fileops::resolve_owner(owner_opt, passwd.as_deref(), group.as_deref())?;
            match action {
                Action::Copy(c) => {
                    let src = if c.src_input < 0 {
                        Output::Scratch
                    } else {
                        inputs.get(c.src_input as usize).cloned().ok_or_else(|| {
                            SolveError::Graph(format!("copy source {} out of range", c.src_input))
                        })?
                    };
                    match src {
                        // A lone COPY of a context directory to a new destination: filled in the
                        // snapshot's directory once the overlay is unmounted (`fileops::direct`).
                        Output::Local(ctx) if f.actions.len() == 1 && direct.is_none() => {
                            let held = fileops::direct::Held::Local(ctx);
                            let pending =
                                fileops::direct::prepare(&root, c, &held.source(), owner)?;
                            match pending {
                                Some(p) => direct = Some((p, c, held, owner)),
                                None => fileops::apply(&root, action, Some(&held.source()), owner)?,
                            }
                        }
                        Output::Local(ctx) => {
                            let source = fileops::CopySource::Local(ctx.as_ref());
                            fileops::apply(&root, action, Some(&source), owner)?;
                        }
                        Output::Snapshot(s) => {
                            let src_chain = snaps.chain(s).map_err(SolveError::cache)?;
                            let mnt = tmp.path().join(format!("src-{n}"));
                            std::fs::create_dir_all(&mnt)
                                .map_err(|e| SolveError::Op(e.to_string()))?;
                            let g = snaps
                                .mount(&src_chain, None, &mnt)
                                .map_err(SolveError::cache)?;
                            let held = fileops::direct::Held::Mounted(g);
                            // `COPY --from` a directory to a new destination: direct too.
                            if f.actions.len() == 1 && direct.is_none() {
                                let pending =
                                    fileops::direct::prepare(&root, c, &held.source(), owner)?;
                                if let Some(p) = pending {
                                    direct = Some((p, c, held, owner));
                                    continue;
                                }
                            }
                            fileops::apply(&root, action, Some(&held.source()), owner)?;
                            drop(held);
                        }
                        Output::Scratch => {
                            let empty = tmp.path().join(format!("empty-{n}"));
                            std::fs::create_dir_all(&empty)
                                .map_err(|e| SolveError::Op(e.to_string()))?;
                            let source = fileops::CopySource::Dir(&empty);
                            fileops::apply(&root, action, Some(&source), owner)?;
                        }
                    }
                }
                _ => fileops::apply(&root, action, None, owner)?,
            }
        }
        drop(guard);
        if let Some((pending, c, held, owner)) = direct {
            let dest = pending.dest().to_path_buf();
            // Link reuse needs the content hashes a context checksum memoises.
            let local = matches!(held, fileops::direct::Held::Local(_));
            let previous = local
                .then(|| fileops::reuse::previous(store, identity, &dest))
                .flatten();
            let placed = fileops::direct::finish(
                &snaps.fs_dir(snap),
                pending,
                c,
                &held.source(),
                owner,
                local.then(|| store.index()),
                previous.as_ref(),
            )?;
            drop(held);
            if let Some(placed) = placed {
                tracing::debug!(
                    %snap,
                    from = ?previous.as_ref().map(|p| p.snap),
                    linked = placed.linked,
                    recorded = placed.files.len(),
                    "direct COPY placed"
                );
                fileops::reuse::write_manifest(store, snap, &dest, placed.files)?;
            }
        }
        Ok(())
    })();
    result.map(|()| Output::Snapshot(made.commit()))
}

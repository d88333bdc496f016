//! kiln-engine: the [`Engine`], which owns a store and wires the frontend, solver, exporter and
//! registry together into builds, runs, imports, pulls and pushes. The CLI embeds it; a gRPC
//! service will wrap the same type.

mod build_cache;
mod build_flags;
mod changes;
mod client_context;
mod config;
pub mod containers;
mod context;
mod debug;
mod dir_lock;
mod diskfull;
mod export;
mod images;
mod info;
mod load;
pub mod networks;
mod outputs;
mod platforms;
mod run;
mod sandbox_opts;
mod stdin;
mod store_gc;
mod transfer;
pub mod volumes;

pub use build_cache::{parse_cache_spec, CacheLocation, CacheSpec};
pub use build_flags::BuildFlags;
pub use client_context::{
    client_context, client_named_context, ClientContext, ClientDockerfile, IgnoreRules,
};
pub use config::{default_config_path, parse_duration, Config, GcPolicy};
pub use context::parse_build_context;
pub use debug::{debug_llb, debug_llb_resolved, debug_parse};
pub use images::{
    all_images, familiar_parts, inspect_image_at, short_id, HistoryEntry, ImageFilter,
    ImageSummary, Removed,
};
pub use info::{system_info, DaemonInfo, SystemInfo};
pub use kiln_cache::{dir_usage, human_size, parse_size, KindUsage, StoreUsage};
pub use kiln_cache::{ImageRecord, LockHolder, LockWait};
pub use kiln_registry::LoginStore;
pub use kiln_solver::images::BlobProgress;
pub use kiln_solver::is_git_context;
pub use kiln_solver::{Event, NoProgress, ProgressSink, Stream};
pub use load::Loaded;
pub use run::{
    parse_mount_flag, parse_tmpfs_flag, parse_volume_flag, CreatedContainer, MountKind,
    MountRecord, RunRequest,
};
pub use sandbox_opts::{parse_network, parse_secret, parse_ssh, Secrets};
pub use stdin::{read_stdin_input, StdinInput, StdinKind};
pub use store_gc::{PruneOptions, PruneReport};
pub use transfer::{login, logout, PullOptions, PushReport};

use anyhow::{bail, Context, Result};
use kiln_cache::Store;
use kiln_registry::{ClientOptions, Platform, Reference, RegistryClient};
use kiln_solver::Solver;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Engine settings.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Exec steps run at once (0: number of CPUs).
    pub jobs: usize,
    /// Registries reachable over plain http besides loopback.
    pub insecure_registries: Vec<String>,
    /// Per-registry settings from the config file (mirrors, http, TLS).
    pub registries: std::collections::HashMap<String, kiln_registry::HostOptions>,
    /// The config file's `[gc]`: collected after each build.
    pub gc: GcPolicy,
}

/// The build engine. One per store root (the store holds an exclusive lock).
pub struct Engine {
    store: Store,
    solver: Solver,
    gc: GcPolicy,
    /// Held shared by every build, run, pull and push, and exclusively by a collection: so GC
    /// never runs while something of this engine may need what it would remove (other
    /// processes are kept out by the store's lock).
    busy: tokio::sync::RwLock<()>,
}

pub use kiln_exporter::Compression;
/// Where a build's image goes besides the `-t` tags (`--output`, BuildKit's syntax).
pub use outputs::{ImageFormat, OutputKind, OutputSpec};

/// One `kiln build`.
#[derive(Clone, Debug, Default)]
pub struct BuildRequest {
    pub context: PathBuf,
    /// Defaults to `CONTEXT/Dockerfile`.
    pub dockerfile: Option<PathBuf>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    /// Names to tag the image with in the local store.
    pub tags: Vec<String>,
    pub outputs: Vec<OutputSpec>,
    pub no_cache: bool,
    /// Stages whose steps ignore the cache (`--no-cache-filter`), with the steps that use them.
    pub no_cache_filter: Vec<String>,
    /// Named build contexts, `(NAME, PATH | docker-image://REF)` (`--build-context`).
    pub build_contexts: Vec<(String, String)>,
    /// `--secret`: bytes by id, for `RUN --mount=type=secret`.
    pub secrets: Secrets,
    /// `--ssh`: agent sockets by id, for `RUN --mount=type=ssh`.
    pub ssh: std::collections::HashMap<String, PathBuf>,
    /// `--network none`: every step gets a private network with only loopback.
    pub network_none: bool,
    /// `--runtime`: what runs the RUN steps (built-in sandbox by default).
    pub runtime: kiln_exec::Runtime,
    /// `--memory`, `--cpus`, `--pids-limit`: the limits of every `RUN` step (a default pids
    /// limit without them).
    pub limits: kiln_exec::Limits,
    /// `--pull`: ask the registry what each base image tag names now, even when the local store
    /// has it.
    pub pull: bool,
    /// `--platform os/arch[/variant]`: the platform to build for (default: this host's); picked
    /// from multi-platform base images and given to the Dockerfile as `TARGETPLATFORM` etc.
    pub platform: Option<String>,
    /// `--label K=V`: labels set on the image config, over the Dockerfile's `LABEL`s.
    pub labels: BTreeMap<String, String>,
    /// `--cache-from`: build caches to import before the solve, in order.
    pub cache_from: Vec<CacheSpec>,
    /// `--cache-to`: where to export this build's cache after it.
    pub cache_to: Vec<CacheSpec>,
    /// `SOURCE_DATE_EPOCH` of the environment the build was asked from (a `--build-arg` of
    /// that name wins).
    pub source_date_epoch: Option<String>,
    /// Context directories whose caller vouches for them (the daemon's mirrors): a directory
    /// given again with the same value holds the same files, so its checksums are not walked
    /// again. Keyed by the directory as given in `context` or `build_contexts`.
    pub context_fingerprints: std::collections::HashMap<PathBuf, [u8; 32]>,
}

/// What a build produced.
#[derive(Clone, Debug)]
pub struct BuildResult {
    /// The image the first image output got (the `-t` one when tagged); the index of a
    /// multi-platform build.
    pub manifest_digest: String,
    pub config_digest: String,
    pub manifest_size: u64,
    pub media_type: String,
    pub executed: usize,
    pub cached: usize,
    /// With `--cache-from`: how many layers of the imported caches were downloaded (import is
    /// lazy: only those a step that ran, or an output, needed).
    pub cache_layers_fetched: Option<usize>,
    /// `Dockerfile:LINE: message` warnings from the frontend.
    pub warnings: Vec<String>,
    /// What the config file's GC policy collected after the build, when it ran.
    pub collected: Option<PruneReport>,
}

impl BuildResult {
    /// Whether the build made an image index (or a Docker manifest list): a multi-platform
    /// build. Its `manifest_digest` and `config_digest` are then the index's digest.
    pub fn is_index(&self) -> bool {
        matches!(
            self.media_type.as_str(),
            "application/vnd.oci.image.index.v1+json"
                | "application/vnd.docker.distribution.manifest.list.v2+json"
        )
    }
}

/// `kiln import`.
#[derive(Clone, Debug, Default)]
pub struct ImportRequest {
    /// A directory or a (possibly compressed) tar file.
    pub source: PathBuf,
    pub name: String,
    /// `--change` instructions.
    pub changes: Vec<String>,
    /// `--platform os/arch[/variant]`: the platform the files are for (default: this host's).
    pub platform: Option<String>,
}

/// The images of the store at `root`, without opening it: a listing never waits for a build.
pub fn list_images(root: &Path) -> Result<Vec<ImageRecord>> {
    kiln_cache::read_images(root).with_context(|| {
        format!(
            "cannot list the images of the kiln store `{}`",
            root.display()
        )
    })
}

impl Engine {
    /// Opens (creating if needed) the store at `root`; fails at once if another process has it.
    pub fn open(root: &Path, opts: EngineOptions) -> Result<Engine> {
        Self::open_locked(root, opts, LockWait::Never, "kiln", &mut |_| {})
    }

    /// Opens the store at `root`, waiting for another owner as `wait` says; `command` names
    /// this process to others, `on_wait` hears once who holds the store if this has to wait.
    /// Blocks while it waits: call it before the runtime starts or from a blocking task.
    pub fn open_locked(
        root: &Path,
        opts: EngineOptions,
        wait: LockWait,
        command: &str,
        on_wait: &mut dyn FnMut(&LockHolder),
    ) -> Result<Engine> {
        let store = Store::open_locked(root, wait, command, on_wait)
            .with_context(|| format!("cannot open the kiln store at `{}`", root.display()))?;
        let registry = RegistryClient::new(ClientOptions {
            insecure_registries: opts.insecure_registries.clone(),
            user_agent: format!("kiln/{}", env!("CARGO_PKG_VERSION")),
            hosts: opts.registries.clone(),
            ..ClientOptions::default()
        })?;
        let jobs = if opts.jobs == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            opts.jobs
        };
        let solver = Solver::new(store.clone(), registry, Platform::host(), jobs);
        Ok(Engine {
            store,
            solver,
            gc: opts.gc,
            busy: tokio::sync::RwLock::new(()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The images in the local store.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.store.images().list()?)
    }

    /// Builds a Dockerfile: compile, solve, export to the local store and any outputs. A build
    /// that stops on a full disk drops the cache results it recorded and says the disk is full.
    /// Then, when the config file sets a GC policy and no other build of this engine runs, it
    /// is applied (a failed build is collected after too; its error wins).
    pub async fn build(
        &self,
        req: BuildRequest,
        progress: Arc<dyn ProgressSink>,
    ) -> Result<BuildResult> {
        let busy = self.busy.read().await;
        let built = self.build_recording_usage(req, progress).await;
        drop(busy);
        let collected = self.collect_after_build().await;
        let mut built = built?;
        built.collected = collected?;
        Ok(built)
    }

    async fn build_recording_usage(
        &self,
        req: BuildRequest,
        progress: Arc<dyn ProgressSink>,
    ) -> Result<BuildResult> {
        let built = self.build_cleaning_up(req, progress).await;
        // The hits of this build make their results recently used for the next GC.
        if let Err(e) = self.store.index().flush_usage() {
            tracing::warn!("cannot record which cache results the build used: {e}");
        }
        built
    }

    /// The config file's GC policy, unless another build of this engine is running (the last
    /// one to finish collects).
    async fn collect_after_build(&self) -> Result<Option<PruneReport>> {
        if !self.gc.is_set() {
            return Ok(None);
        }
        let Ok(_alone) = self.busy.try_write() else {
            return Ok(None);
        };
        let store = self.store.clone();
        let opts = store_gc::policy_prune(&self.gc);
        let report = tokio::task::spawn_blocking(move || store_gc::prune(&store, &opts))
            .await?
            .context("the GC policy of the config file (`[gc]`) failed after the build")?;
        Ok(Some(report))
    }

    async fn build_cleaning_up(
        &self,
        req: BuildRequest,
        progress: Arc<dyn ProgressSink>,
    ) -> Result<BuildResult> {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match self.build_inner(req, progress).await {
            Err(e) if diskfull::is_disk_full(&e) => {
                let store = self.store.clone();
                let dropped = tokio::task::spawn_blocking(move || {
                    diskfull::drop_results_since(&store, started)
                })
                .await;
                if !matches!(dropped, Ok(Ok(_))) {
                    tracing::warn!("cannot drop the results of the failed build: {dropped:?}");
                }
                Err(e.context(diskfull::message(&self.store)))
            }
            other => other,
        }
    }

    async fn build_inner(
        &self,
        req: BuildRequest,
        progress: Arc<dyn ProgressSink>,
    ) -> Result<BuildResult> {
        // A git URL as the context is checked out for this build and removed after it.
        let (req, _git_checkout) = context::git_context(&self.store, req).await?;
        let context_dir = context::context_dir(&req)?;
        if !context_dir.is_dir() {
            bail!(
                "build context `{}` is not a directory",
                req.context.display()
            );
        }
        let (dockerfile, text) = context::read_dockerfile(&req, &context_dir)?;
        let dockerfile_name = context::dockerfile_name(&dockerfile);
        let ignore_patterns = context::read_dockerignore(&context_dir, &req.context, &dockerfile)?;
        let local = Arc::new(context::ContextDir::new(
            context_dir.clone(),
            &ignore_patterns,
            context::vouched(&req.context_fingerprints, &context_dir),
        )?);
        let named = context::named_contexts(&req.build_contexts, &req.context_fingerprints)?;
        let platforms =
            platforms::target_platforms(req.platform.as_deref(), self.solver.platform())?;
        if platforms.len() > 1 {
            outputs::check_multi_platform(&req.outputs, &platforms)?;
        }
        let resolver = context::StoreResolver::new(
            self.solver.clone(),
            tokio::runtime::Handle::current(),
            platforms[0].clone(),
            req.pull,
        );
        let mut compiles = Vec::with_capacity(platforms.len());
        for platform in &platforms {
            let opts = kiln_frontend::BuildOptions {
                dockerfile_name: dockerfile_name.clone(),
                build_args: req.build_args.clone(),
                target: req.target.clone(),
                platform: context::frontend_platform(platform),
                context_name: "context".into(),
                exclude_patterns: ignore_patterns.clone(),
                no_cache: req.no_cache,
                named_contexts: named.contexts.clone(),
                prefix_platform: platforms.len() > 1,
            };
            let resolver = resolver.for_platform(platform.clone());
            let text = text.clone();
            let compiled = tokio::task::spawn_blocking(move || {
                kiln_frontend::compile(&text, &opts, &resolver)
            })
            .await??;
            context::check_runs(
                &compiled.runs,
                &dockerfile_name,
                self.solver.platform(),
                &kiln_exec::binfmt_misc_dir(),
            )?;
            compiles.push(compiled);
        }
        let mut warnings: Vec<String> = Vec::new();
        for w in compiles.iter().flat_map(|c| &c.warnings) {
            let w = format!("{dockerfile_name}:{}: {}", w.line, w.message);
            // Every platform's compile warns about the same lines.
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        let (mut definition, roots) = platforms::merge_graphs(
            platforms
                .iter()
                .cloned()
                .zip(
                    compiles
                        .iter_mut()
                        .map(|c| std::mem::take(&mut c.definition)),
                )
                .collect(),
        );
        for stage in kiln_solver::ignore_cache_for_stages(&mut definition, &req.no_cache_filter) {
            warnings.push(format!(
                "`--no-cache-filter {stage}`: no step of this build is in a stage named `{stage}`"
            ));
        }
        let mut locals: std::collections::HashMap<String, Arc<dyn kiln_solver::LocalContext>> =
            Default::default();
        locals.insert("context".into(), local);
        locals.extend(named.locals);
        let fetched_before = kiln_solver::lazy::blobs_fetched();
        // A cache that cannot be read is not the build's failure: it goes on cold.
        for spec in &req.cache_from {
            match build_cache::import(&self.store, self.solver.registry(), spec, &platforms).await {
                Ok(imported) => warnings.extend(
                    imported
                        .warnings
                        .into_iter()
                        .map(|w| format!("the build cache {}: {w}", spec.location)),
                ),
                Err(e) => warnings.push(format!(
                    "cannot import the build cache {}: {e:#}; the steps it lacks are built",
                    spec.location
                )),
            }
        }
        let inline =
            build_cache::inline_wanted(&req.cache_to, &req.tags, &req.outputs, &mut warnings);
        let solved = self
            .solver
            .solve_roots(
                kiln_solver::SolveRequest {
                    definition,
                    locals,
                    progress,
                    secrets: req.secrets.0.clone(),
                    ssh: req.ssh.clone(),
                    network_none: req.network_none,
                    runtime: req.runtime.clone(),
                    limits: req.limits,
                },
                roots,
            )
            .await?;
        let epoch = outputs::source_date_epoch(&req.build_args, req.source_date_epoch.as_deref())?;
        let mut images = Vec::with_capacity(platforms.len());
        let mut final_roots = Vec::new();
        for ((platform, compiled), (root, created_unix)) in
            platforms.iter().zip(compiles).zip(solved.roots)
        {
            if let kiln_solver::Output::Snapshot(s) = &root {
                final_roots.push(*s);
            }
            let mut image_config = compiled.image_config;
            if !req.labels.is_empty() {
                // As `docker build --label`: on the image only, so no step's cache key changes.
                let mut config = image_config.config().clone().unwrap_or_default();
                let mut labels = config.labels().clone().unwrap_or_default();
                labels.extend(req.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                config.set_labels(Some(labels));
                image_config.set_config(Some(config));
            }
            // `--cache-to type=inline`: this platform's records, in its own config.
            let mut top = serde_json::Map::new();
            if inline {
                let snap = match &root {
                    kiln_solver::Output::Snapshot(s) => Some(*s),
                    _ => None,
                };
                let store = self.store.clone();
                let keys = solved.looked_up_keys.clone();
                let cache = tokio::task::spawn_blocking(move || {
                    build_cache::inline_cache(&store, &keys, snap)
                })
                .await?
                .context("cannot make the inline build cache (`--cache-to type=inline`)")?;
                top.insert(build_cache::INLINE_KEY.to_string(), cache);
            }
            let image = export::export_image(
                &self.store,
                &root,
                created_unix,
                image_config,
                &compiled.config_extras,
                &top,
                epoch,
            )
            .await
            .with_context(|| format!("cannot export the {platform} image"))?;
            images.push((platform.clone(), image));
        }
        let delivered = if images.len() == 1 {
            let (_, image) = &images[0];
            outputs::deliver(self, image, &req.tags, &req.outputs).await?
        } else {
            outputs::deliver_platforms(self, &images, &req.tags, &req.outputs).await?
        };
        for spec in &req.cache_to {
            let exported = build_cache::export(
                &self.store,
                self.solver.registry(),
                &solved.keys,
                &final_roots,
                spec,
            )
            .await;
            match exported {
                Ok(()) => {}
                Err(e) if spec.ignore_error => warnings.push(format!(
                    "cannot export the build cache to {}: {e:#}",
                    spec.location
                )),
                Err(e) => {
                    return Err(e.context(format!(
                        "cannot export the build cache to {} (`ignore-error=true` makes this a warning)",
                        spec.location
                    )))
                }
            }
        }
        Ok(BuildResult {
            manifest_digest: delivered.image.manifest_digest,
            config_digest: delivered.image.config_digest,
            manifest_size: delivered.image.manifest_size,
            media_type: delivered.image.media_type,
            executed: solved.executed,
            cached: solved.cached,
            cache_layers_fetched: (!req.cache_from.is_empty())
                .then(|| kiln_solver::lazy::blobs_fetched().saturating_sub(fetched_before)),
            warnings,
            collected: None,
        })
    }

    /// `kiln import`: a single-layer image from a directory or a tar.
    pub async fn import(&self, req: ImportRequest) -> Result<String> {
        let name = normalize_name(&req.name)?;
        let store = self.store.clone();
        let image = tokio::task::spawn_blocking(move || export::import(&store, &req)).await??;
        self.store.images().put(&ImageRecord {
            name,
            digest: image.manifest_digest.clone(),
            size: image.manifest_size,
            media_type: image.media_type.clone(),
            created: image.created.clone(),
        })?;
        Ok(image.manifest_digest)
    }

    /// `kiln load`: the images of a docker-archive or OCI archive (plain, gzip or zstd), read
    /// from `input` (a file, or stdin for `-`).
    pub async fn load_images(&self, input: &Path) -> Result<Vec<Loaded>> {
        let store = self.store.clone();
        let input = input.to_path_buf();
        tokio::task::spawn_blocking(move || {
            if input == Path::new("-") {
                load::load(&store, &mut std::io::stdin().lock())
            } else {
                let mut f = std::fs::File::open(&input)
                    .with_context(|| format!("cannot open `{}`", input.display()))?;
                load::load(&store, &mut f)
            }
            .with_context(|| format!("cannot load `{}`", input.display()))
        })
        .await?
    }

    // `pull`, `push`: see transfer.rs; `tag`, `rmi`, `inspect`, `history`, `save`: images.rs.

    /// `kiln run`'s first half: makes the container (its directory, config and name) from an
    /// image, pulled when absent; `containers::run_foreground` or `start_detached` runs it,
    /// without the engine (so without the store's lock).
    pub async fn create_container(&self, req: RunRequest) -> Result<CreatedContainer> {
        // Held while the image's snapshots are looked up, so the config's `[gc]` policy of a
        // build in this engine does not collect them meanwhile.
        let _busy = self.busy.read().await;
        run::create(&self.store, &self.solver, req).await
    }

    /// `kiln check`: hashes every blob of the store and drops the corrupt ones, the images and
    /// records that need a blob no longer stored, and snapshot records without a directory.
    pub async fn check(&self) -> Result<kiln_cache::CheckReport> {
        let _alone = self.busy.write().await;
        let store = self.store.clone();
        let root = store.root().to_path_buf();
        tokio::task::spawn_blocking(move || store.check())
            .await?
            .with_context(|| format!("cannot check the store `{}`", root.display()))
    }

    /// `kiln prune`: drops cache results and `RUN --mount=type=cache` directories as `opts`
    /// says (by default every cache mount and no result), then the snapshots and blobs no
    /// cache result or image reaches. Waits for this engine's builds to finish.
    pub async fn prune(&self, opts: PruneOptions) -> Result<PruneReport> {
        let _alone = self.busy.write().await;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store_gc::prune(&store, &opts)).await?
    }

    /// `kiln system df`: the store's size by kind, as `du` measures it, with what `kiln prune
    /// --all` would free.
    pub async fn disk_usage(&self) -> Result<StoreUsage> {
        let _alone = self.busy.write().await;
        let store = self.store.clone();
        let root = store.root().to_path_buf();
        tokio::task::spawn_blocking(move || store.usage())
            .await?
            .with_context(|| format!("cannot measure the store `{}`", root.display()))
    }
}

/// `app` → `docker.io/library/app:latest`, as Docker names images.
pub fn normalize_name(name: &str) -> Result<String> {
    Ok(Reference::parse(name)
        .with_context(|| format!("`{name}` is not a valid image name"))?
        .full_name())
}

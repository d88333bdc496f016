//! kiln-daemon: the [`Engine`], which owns a store and wires the frontend, solver, exporter and
//! registry together into builds, runs, imports, pulls and pushes. The CLI embeds it; a gRPC
//! service will wrap the same type.

mod changes;
pub mod containers;
mod context;
mod debug;
mod diskfull;
mod export;
mod outputs;
mod run;
mod sandbox_opts;
mod transfer;
pub mod volumes;

pub use context::parse_build_context;
pub use debug::{debug_llb, debug_llb_resolved, debug_parse};
pub use kiln_cache::{ImageRecord, LockHolder, LockWait};
pub use kiln_registry::LoginStore;
pub use kiln_solver::images::BlobProgress;
pub use kiln_solver::{Event, NoProgress, ProgressSink, Stream};
pub use run::{
    parse_mount_flag, parse_tmpfs_flag, parse_volume_flag, CreatedContainer, MountKind,
    MountRecord, RunRequest,
};
pub use sandbox_opts::{parse_network, parse_secret, parse_ssh, PruneReport, Secrets};
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
}

/// The build engine. One per store root (the store holds an exclusive lock).
pub struct Engine {
    store: Store,
    solver: Solver,
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
}

/// What a build produced.
#[derive(Clone, Debug)]
pub struct BuildResult {
    /// The image the first image output got (the `-t` one when tagged).
    pub manifest_digest: String,
    pub config_digest: String,
    pub manifest_size: u64,
    pub media_type: String,
    pub executed: usize,
    pub cached: usize,
    /// `Dockerfile:LINE: message` warnings from the frontend.
    pub warnings: Vec<String>,
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
        Ok(Engine { store, solver })
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
    pub async fn build(
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
        )?);
        let named = context::named_contexts(&req.build_contexts)?;
        let platform = context::build_platform(req.platform.as_deref(), self.solver.platform())?;
        let opts = kiln_frontend::BuildOptions {
            dockerfile_name: dockerfile_name.clone(),
            build_args: req.build_args.clone(),
            target: req.target.clone(),
            platform: context::frontend_platform(&platform),
            context_name: "context".into(),
            exclude_patterns: ignore_patterns,
            no_cache: req.no_cache,
            named_contexts: named.contexts,
        };
        let resolver = context::StoreResolver::new(
            self.solver.clone(),
            tokio::runtime::Handle::current(),
            platform,
            req.pull,
        );
        let compiled =
            tokio::task::spawn_blocking(move || kiln_frontend::compile(&text, &opts, &resolver))
                .await??;
        context::check_runs(
            &compiled.runs,
            &dockerfile_name,
            self.solver.platform(),
            &kiln_exec::binfmt_misc_dir(),
        )?;
        let mut warnings: Vec<String> = compiled
            .warnings
            .iter()
            .map(|w| format!("{dockerfile_name}:{}: {}", w.line, w.message))
            .collect();
        let mut definition = compiled.definition;
        for stage in kiln_solver::ignore_cache_for_stages(&mut definition, &req.no_cache_filter) {
            warnings.push(format!(
                "`--no-cache-filter {stage}`: no step of this build is in a stage named `{stage}`"
            ));
        }
        let mut locals: std::collections::HashMap<String, Arc<dyn kiln_solver::LocalContext>> =
            Default::default();
        locals.insert("context".into(), local);
        locals.extend(named.locals);
        let solved = self
            .solver
            .solve(kiln_solver::SolveRequest {
                definition,
                locals,
                progress,
                secrets: req.secrets.0.clone(),
                ssh: req.ssh.clone(),
                network_none: req.network_none,
                runtime: req.runtime.clone(),
                limits: req.limits,
            })
            .await?;
        let image = export::export_image(
            &self.store,
            &solved,
            compiled.image_config,
            &compiled.config_extras,
            outputs::source_date_epoch(&req.build_args)?,
        )
        .await?;
        let delivered = outputs::deliver(self, &image, &req.tags, &req.outputs).await?;
        Ok(BuildResult {
            manifest_digest: delivered.image.manifest_digest,
            config_digest: delivered.image.config_digest,
            manifest_size: delivered.image.manifest_size,
            media_type: delivered.image.media_type,
            executed: solved.executed,
            cached: solved.cached,
            warnings,
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

    // `pull`, `push`: see transfer.rs.

    /// `kiln run`'s first half: makes the container (its directory, config and name) from an
    /// image, pulled when absent; `containers::run_foreground` or `start_detached` runs it,
    /// without the engine (so without the store's lock).
    pub async fn create_container(&self, req: RunRequest) -> Result<CreatedContainer> {
        run::create(&self.store, &self.solver, req).await
    }

    /// `kiln check`: hashes every blob of the store and drops the corrupt ones, the images and
    /// records that need a blob no longer stored, and snapshot records without a directory.
    pub async fn check(&self) -> Result<kiln_cache::CheckReport> {
        let store = self.store.clone();
        let root = store.root().to_path_buf();
        tokio::task::spawn_blocking(move || store.check())
            .await?
            .with_context(|| format!("cannot check the store `{}`", root.display()))
    }

    /// `kiln prune`: removes every `RUN --mount=type=cache` directory, then the snapshots and
    /// blobs no cache result or image reaches.
    pub async fn prune(&self) -> Result<PruneReport> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || sandbox_opts::prune(&store)).await?
    }
}

/// `app` → `docker.io/library/app:latest`, as Docker names images.
pub fn normalize_name(name: &str) -> Result<String> {
    Ok(Reference::parse(name)
        .with_context(|| format!("`{name}` is not a valid image name"))?
        .full_name())
}

//! The `kiln` command: parses arguments, opens the engine in-process and renders progress.

/// `println!` for what a command prints on stdout, which ends kiln quietly when stdout is a
/// closed pipe (`kiln images | head -1`), as a process killed by SIGPIPE does, where
/// `println!` panics. (SIGPIPE itself stays ignored: a write to a dead helper's pipe must be an
/// error kiln reports, not its death.)
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` with [`outln!`]'s handling of a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!($($arg)*))
    };
}

mod containers;
mod daemon;
mod debug;
mod flags;
mod images;
mod info;
mod interrupt;
mod login;
mod networks;
mod progress;
mod remote;
mod source;
mod stdout;
mod transfer;
mod version;
mod volumes;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use kiln_engine::{BuildRequest, Engine, EngineOptions, ImportRequest, LockWait};
use source::StoreSource;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Build, run and push container images from Dockerfiles"
)]
struct Cli {
    /// The store directory (default: /var/lib/kiln as root, $XDG_DATA_HOME/kiln otherwise).
    #[arg(long, env = "KILN_ROOT", global = true)]
    root: Option<PathBuf>,
    /// Registries that may be reached over plain http (loopback always may).
    #[arg(long = "insecure-registry", global = true)]
    insecure_registries: Vec<String>,
    /// How long a command that changes the store (build, run, import, pull, push, prune) waits
    /// for another kiln process that holds it: `30s`, `5m`, `1h`, `500ms`; `0` fails at once.
    /// Default: wait as long as it takes. `kiln images` and `kiln info` never wait.
    #[arg(
        long = "lock-timeout",
        env = "KILN_LOCK_TIMEOUT",
        global = true,
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    lock_timeout: Option<Duration>,
    /// The config file (registry mirrors and settings, GC policy). Default:
    /// /etc/kiln/kiln.toml as root, $XDG_CONFIG_HOME/kiln/kiln.toml otherwise, when it exists.
    #[arg(long, env = "KILN_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The kiln daemon to run the command through, `unix:///PATH` (see `kiln daemon`); without
    /// it the engine runs in this process.
    #[arg(long, env = "KILN_HOST", global = true, value_name = "ADDR")]
    host: Option<String>,
    /// TLS certificate: the client's for a `tcp://` `--host`, the daemon's for its `tcp://`
    /// `--addr`.
    #[arg(long, env = "KILN_TLSCERT", global = true, value_name = "FILE")]
    tlscert: Option<PathBuf>,
    /// The key of `--tlscert`.
    #[arg(long, env = "KILN_TLSKEY", global = true, value_name = "FILE")]
    tlskey: Option<PathBuf>,
    /// The CA certificate the other side's certificate must be signed by.
    #[arg(long, env = "KILN_TLSCACERT", global = true, value_name = "FILE")]
    tlscacert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// One value per process, parsed once: boxing the big variant would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Build an image from a Dockerfile.
    Build(Box<BuildArgs>),
    /// Run a command in a new container from an image.
    Run(containers::RunArgs),
    /// List containers.
    Ps(containers::PsArgs),
    /// Print a detached container's output.
    Logs(containers::LogsArgs),
    /// Stop running containers (SIGTERM, then SIGKILL).
    Stop(containers::StopArgs),
    /// Send a signal to running containers (SIGKILL by default).
    Kill(containers::KillArgs),
    /// Start stopped containers again, detached.
    Start(containers::StartArgs),
    /// Remove containers.
    Rm(containers::RmArgs),
    /// Run a command in a running container.
    Exec(containers::ExecArgs),
    /// Wait for containers to stop and print their exit codes.
    Wait(containers::WaitArgs),
    /// Show containers as JSON.
    Inspect(containers::InspectArgs),
    /// Manage containers.
    #[command(subcommand)]
    Container(containers::ContainerCommand),
    /// Manage volumes.
    #[command(subcommand)]
    Volume(volumes::VolumeCommand),
    /// List a container's published ports.
    Port(containers::PortArgs),
    /// Manage bridge networks.
    #[command(subcommand)]
    Network(networks::NetworkCommand),
    /// Make a single-layer image from a root filesystem directory or tar.
    Import {
        /// Apply a Dockerfile instruction to the image config (CMD, ENTRYPOINT, ENV, ...).
        #[arg(short = 'c', long = "change")]
        changes: Vec<String>,
        /// The platform the files are for, os/arch[/variant] (default: this host's).
        #[arg(long)]
        platform: Option<String>,
        /// A directory or a tar file (plain, gzip or zstd).
        source: PathBuf,
        /// NAME[:TAG]
        name: String,
    },
    /// List the images in the local store.
    Images(images::ImagesArgs),
    /// Give an image another name: `kiln tag SOURCE TARGET`.
    Tag(images::TagArgs),
    /// Remove images (a name; the image with its last name).
    Rmi(images::RmiArgs),
    /// Show the history of an image.
    History(images::HistoryArgs),
    /// Write images to a docker-archive (`docker load` reads it).
    Save(images::SaveArgs),
    /// Load images from a docker-archive or OCI archive.
    Load(images::LoadArgs),
    /// Manage images: ls, inspect, rm, tag, history, save, load, prune.
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Pull an image from a registry into the local store.
    Pull(transfer::PullArgs),
    /// Log in to a registry (credentials go where `docker login` puts them).
    Login(login::LoginArgs),
    /// Forget the credentials for a registry.
    Logout(login::LogoutArgs),
    /// Remove build cache: by default every cache mount (`RUN --mount=type=cache`) and the
    /// snapshots and blobs nothing uses; with options, cache results too, least recently used
    /// first. Tagged images always stay whole.
    Prune(PruneArgs),
    /// The store as a whole.
    #[command(subcommand)]
    System(SystemCommand),
    /// Verify every blob of the store; drop corrupt blobs and the images and records that need
    /// them (exit code 1 when something was dropped).
    Check,
    /// Show what kiln makes of a Dockerfile without building it.
    #[command(subcommand)]
    Debug(debug::DebugCommand),
    /// Push a local image to a registry.
    Push(transfer::PushArgs),
    /// Prepare this host for kiln (as root).
    #[command(subcommand)]
    Setup(SetupCommand),
    /// Serve the store to `kiln --host` clients (the daemon holds the store's lock).
    Daemon(daemon::DaemonArgs),
    /// Show the version of this client and, with `--host`, of the daemon.
    Version,
    /// Show what the engine (embedded, or the daemon of `--host`), its host and its store are.
    Info(info::InfoArgs),
}

#[derive(Subcommand)]
enum SetupCommand {
    /// Register QEMU's user-mode emulators (from Debian's `qemu-user-static`) with binfmt_misc,
    /// with the `F` flag, so `RUN` steps and `kiln run` work for foreign platforms such as
    /// linux/arm64. Running it again changes nothing.
    Emulators,
}

#[derive(clap::Args)]
struct PruneArgs {
    /// Remove every cache result and cache mount.
    #[arg(short, long)]
    all: bool,
    /// Keep this much build cache (e.g. `10GB`, `512MB`), removing the least recently used
    /// results and cache mounts beyond it.
    #[arg(long = "keep-storage", value_name = "SIZE", value_parser = parse_size)]
    keep_storage: Option<u64>,
    /// `until=DURATION` (e.g. `until=24h`): remove results and cache mounts unused for longer.
    #[arg(long = "filter", value_name = "FILTER", value_parser = parse_prune_filter)]
    filter: Vec<Duration>,
}

#[derive(Subcommand)]
enum SystemCommand {
    /// Show the store's disk usage by kind, as `du` counts it, and what `kiln prune --all`
    /// would free.
    Df {
        /// Sizes in bytes instead of kB, MB, GB.
        #[arg(long)]
        bytes: bool,
    },
}

fn parse_size(s: &str) -> std::result::Result<u64, String> {
    kiln_engine::parse_size(s)
        .ok_or_else(|| format!("`{s}` is not a size: write e.g. `10GB`, `512MB` or `1048576`"))
}

fn parse_prune_filter(s: &str) -> std::result::Result<Duration, String> {
    let Some(d) = s.strip_prefix("until=") else {
        return Err(format!(
            "unknown filter `{s}`: kiln prune knows `until=DURATION`, e.g. `until=24h`"
        ));
    };
    kiln_engine::parse_duration(d)
        .ok_or_else(|| format!("`{d}` is not a duration: write e.g. `24h`, `30m` or `7d`"))
}

#[derive(clap::Args)]
struct BuildArgs {
    /// Name (and tag) for the image; may be repeated.
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile); `-` reads it from stdin.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Print only the image ID (the config digest) on stdout, and no progress.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Set a label on the image, KEY=VALUE (over the Dockerfile's `LABEL`); may be repeated.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// A build argument, KEY=VALUE (or KEY to take it from the environment).
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// The stage to build.
    #[arg(long)]
    target: Option<String>,
    /// A named build context, NAME=PATH or NAME=docker-image://REF; `FROM NAME` and
    /// `COPY --from=NAME` use it. May be repeated.
    #[arg(long = "build-context")]
    build_contexts: Vec<String>,
    /// Progress output: auto, plain, tty or json (one event per line).
    #[arg(long, env = "KILN_PROGRESS", default_value = "auto")]
    progress: String,
    /// Where the result goes besides the `-t` tags (may be repeated): type=image|registry|oci|
    /// docker|local|tar, with name=, dest= (`-`: stdout), push=, tar=, compression=gzip|zstd|
    /// uncompressed, compression-level=, force-compression=, oci-mediatypes= (BuildKit's syntax).
    #[arg(short = 'o', long = "output")]
    outputs: Vec<String>,
    /// Push the image to the registry of each `-t` name (`--output type=registry`).
    #[arg(long)]
    push: bool,
    /// Write the build's result (image digest, config digest, descriptor) as JSON, as buildx does.
    #[arg(long = "metadata-file")]
    metadata_file: Option<PathBuf>,
    /// Do not use the cache.
    #[arg(long)]
    no_cache: bool,
    /// Ask the registry what each base image tag names now, even when the local store has it.
    #[arg(long)]
    pull: bool,
    /// The platforms to build for, os/arch[/variant][,...] (default: this host's); several give
    /// one image index.
    #[arg(long)]
    platform: Option<String>,
    /// Do not use the cache for these stages (and what uses them): STAGE[,STAGE...].
    #[arg(long = "no-cache-filter", value_delimiter = ',')]
    no_cache_filter: Vec<String>,
    /// Export the build cache: type=registry,ref=REF[,mode=min|max][,ignore-error=true],
    /// type=local,dest=DIR[,tag=TAG], or type=inline (in the image's config). May be repeated.
    #[arg(long = "cache-to")]
    cache_to: Vec<String>,
    /// Import a build cache: type=registry,ref=REF, type=local,src=DIR[,tag=TAG], or an image
    /// reference (a kiln cache, or an image with an inline cache). May be repeated; tried in order.
    #[arg(long = "cache-from")]
    cache_from: Vec<String>,
    /// A secret for `RUN --mount=type=secret`: id=ID,src=FILE or id=ID,env=VAR. May be repeated.
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// An ssh agent for `RUN --mount=type=ssh`: default, ID (uses $SSH_AUTH_SOCK) or ID=SOCKET.
    #[arg(long = "ssh")]
    ssh: Vec<String>,
    /// Network of the RUN steps: default (host), host or none.
    #[arg(long, default_value = "default")]
    network: String,
    /// What runs the RUN steps: builtin (kiln's sandbox), runc or crun.
    #[arg(long, default_value = "builtin")]
    runtime: String,
    /// Memory limit of each `RUN` step, swap included: a size such as `512m` or `1g` (units b, k,
    /// m, g), as Docker reads it; 0 for no limit.
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// CPUs each `RUN` step may use, e.g. `0.5` or `2`; 0 for no limit.
    #[arg(long)]
    cpus: Option<String>,
    /// Most processes (and threads) of each `RUN` step at once: 16384 by default, -1 for no limit.
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pids_limit: Option<String>,
    /// Size of each `RUN` step's `/dev/shm`, e.g. `128m` (default 64m).
    #[arg(long = "shm-size")]
    shm_size: Option<String>,
    /// An rlimit of each `RUN` step, NAME=SOFT[:HARD] (`nofile=1024:2048`); may be repeated.
    #[arg(long = "ulimit")]
    ulimits: Vec<String>,
    /// A line for each `RUN` step's `/etc/hosts`, NAME:IP; may be repeated.
    #[arg(long = "add-host")]
    add_hosts: Vec<String>,
    /// Exec steps to run at once (default: number of CPUs).
    #[arg(long, default_value_t = 0)]
    jobs: usize,
    /// Write the image ID (the config digest) to this file, as `docker build --iidfile` does.
    #[arg(long)]
    iidfile: Option<PathBuf>,
    /// The build context: a directory, a git repository URL
    /// (`https://host/repo.git#ref:subdir`, `git://...`, `git@host:repo.git`), or `-` for a
    /// context tar (plain, gzip or zstd) or a lone Dockerfile on stdin.
    context: PathBuf,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc_geteuid() == 0 }
}

fn default_root() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/kiln");
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("kiln");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/kiln")
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn main() {
    // The sandbox is this same binary re-executed; it must not start any thread first.
    kiln_exec::sandbox_main_if_requested();
    // A detached container's monitor is this binary too.
    kiln_engine::containers::monitor_main_if_requested();
    let cli = Cli::try_parse().unwrap_or_else(|e| flags::exit_on_parse_error(e));
    // Unprivileged, the engine runs again in a user namespace where it is root (rootless mode),
    // with its store under $XDG_DATA_HOME/kiln. Setting up the host needs no engine, and a
    // user namespace's root could not do it anyway: it says to run as root instead.
    // Through a daemon, only the daemon needs it.
    let needs_engine = match &cli.command {
        Command::Setup(_) | Command::Version => false,
        Command::Daemon(_) | Command::Login(_) | Command::Logout(_) => true,
        _ => cli.host.is_none(),
    };
    match needs_engine
        .then(kiln_exec::reexec_rootless_if_unprivileged)
        .unwrap_or(Ok(None))
    {
        Ok(None) => {}
        Ok(Some(code)) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("KILN_LOG"))
        .with_writer(std::io::stderr)
        .init();
    // The store is opened before the runtime starts, since waiting for its lock blocks: Ctrl-C
    // while waiting simply ends the process, which holds nothing yet.
    let root = cli.root.clone().unwrap_or_else(default_root);
    let engine = match open_engine(&cli, &root) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(real_main(cli, engine)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    if interrupt::interrupted() {
        // Let canceled file steps finish and unmount before the process goes.
        runtime.shutdown_timeout(interrupt::DRAIN);
    }
    std::process::exit(code);
}

/// What a command that changes the store calls itself in the lock file; `None` for the
/// commands that need no lock (credentials, `kiln images`, `kiln info`, debug output without
/// `--resolve`).
fn store_writer(command: &Command) -> Option<&'static str> {
    match command {
        Command::Build(_) => Some("kiln build"),
        Command::Run(_) => Some("kiln run"),
        Command::Import { .. } => Some("kiln import"),
        Command::Pull(_) => Some("kiln pull"),
        Command::Push(_) => Some("kiln push"),
        Command::Prune(_) => Some("kiln prune"),
        Command::System(SystemCommand::Df { .. }) => Some("kiln system df"),
        Command::Check => Some("kiln check"),
        Command::Daemon(_) => Some("kiln daemon"),
        Command::Debug(d) if d.needs_store() => Some("kiln debug llb --resolve"),
        Command::Tag(_) => Some("kiln tag"),
        Command::Rmi(_) => Some("kiln rmi"),
        Command::History(_) => Some("kiln history"),
        Command::Save(_) => Some("kiln save"),
        Command::Load(_) => Some("kiln load"),
        Command::Image(c) => c.store_writer(),
        Command::Images(_)
        | Command::Info(_)
        | Command::Login(_)
        | Command::Logout(_)
        | Command::Debug(_)
        | Command::Ps(_)
        | Command::Logs(_)
        | Command::Stop(_)
        | Command::Kill(_)
        | Command::Start(_)
        | Command::Rm(_)
        | Command::Wait(_)
        | Command::Exec(_)
        | Command::Inspect(_)
        | Command::Container(_)
        | Command::Volume(_)
        | Command::Network(_)
        | Command::Port(_)
        | Command::Setup(_)
        | Command::Version => None,
    }
}

/// How `kiln daemon` names itself in the store's lock, followed by its addresses.
const DAEMON_LOCK_NAME: &str = "kiln daemon ";

/// Opens the engine for a command that changes the store, waiting for another kiln that holds
/// it as `--lock-timeout` says and saying once for whom it waits.
fn open_engine(cli: &Cli, root: &Path) -> Result<Option<Engine>> {
    let Some(command) = store_writer(&cli.command) else {
        return Ok(None);
    };
    // The daemon names its addresses in the lock, so an embedded kiln can point at them.
    let command = match &cli.command {
        Command::Daemon(d) => format!("{DAEMON_LOCK_NAME}{}", d.addrs().join(" ")),
        _ => command.to_string(),
    };
    if cli.host.is_some() && !matches!(cli.command, Command::Daemon(_)) {
        return Ok(None);
    }
    let jobs = match &cli.command {
        Command::Build(b) => b.jobs,
        _ => 0,
    };
    let wait = match cli.lock_timeout {
        None => LockWait::Forever,
        Some(d) if d.is_zero() => LockWait::Never,
        Some(d) => LockWait::AtMost(d),
    };
    let config = kiln_engine::Config::load(
        cli.config.as_deref(),
        &kiln_engine::default_config_path(is_root()),
    )?;
    let engine = Engine::open_locked(
        root,
        EngineOptions {
            jobs,
            insecure_registries: cli.insecure_registries.clone(),
            registries: config.registries,
            gc: config.gc,
        },
        wait,
        &command,
        &mut |holder| {
            // A daemon holds its store until it stops: waiting would be waiting forever.
            if let Some(addrs) = holder.command.strip_prefix(DAEMON_LOCK_NAME) {
                let addr = addrs.split_whitespace().next().unwrap_or("ADDR");
                eprintln!(
                    "error: the store `{}` is served by a kiln daemon (process {}): run the \
                     command through it with `kiln --host {addr} ...` (or `KILN_HOST={addr}`), \
                     or stop the daemon",
                    root.display(),
                    holder
                        .pid
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "?".into()),
                );
                std::process::exit(1);
            }
            eprintln!(
                "waiting for the store `{}`: {holder} holds it",
                root.display()
            )
        },
    )?;
    Ok(Some(engine))
}

/// `--lock-timeout`: `0`, `500ms`, `30s`, `5m`, `1h`, or a number of seconds.
fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let bad = || format!("`{s}` is not a duration: write e.g. `30s`, `5m`, `1h`, `500ms` or `0`");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(bad)
}

async fn real_main(cli: Cli, engine: Option<Engine>) -> Result<i32> {
    let tls = kiln_client::TlsFiles {
        cert: cli.tlscert.clone(),
        key: cli.tlskey.clone(),
        ca: cli.tlscacert.clone(),
    };
    if let Command::Version = cli.command {
        return version::run(cli.host.as_deref(), &tls).await;
    }
    if let Some(host) = &cli.host {
        if !matches!(
            cli.command,
            Command::Daemon(_) | Command::Login(_) | Command::Logout(_) | Command::Setup(_)
        ) {
            return remote_main(cli.command, host, &tls).await;
        }
    }
    if let Command::Debug(d) = cli.command {
        return debug::run(d, engine.as_ref()).await;
    }
    // Credentials are not the store's business: no store lock for these.
    if let Command::Login(a) = cli.command {
        return login::login(a, &cli.insecure_registries).await;
    }
    if let Command::Logout(a) = cli.command {
        return login::logout(a).await;
    }
    // The host's set-up is not the store's business either.
    if let Command::Setup(SetupCommand::Emulators) = cli.command {
        return setup_emulators();
    }
    let root = cli.root.clone().unwrap_or_else(default_root);
    // Images are listed, the engine's facts read, and containers read and signalled, without
    // the store's lock.
    match cli.command {
        Command::Images(a) | Command::Image(images::ImageCommand::Ls(a)) => {
            return images::list(&StoreSource::Unlocked(&root), &a).await
        }
        Command::Info(a) => return info::run(&StoreSource::Unlocked(&root), a).await,
        Command::Ps(a) => return containers::ps(&root, a),
        Command::Logs(a) => return containers::logs(&root, a),
        Command::Stop(a) => return Ok(containers::stop(&root, a)),
        Command::Kill(a) => return containers::kill(&root, a),
        Command::Start(a) => return Ok(containers::start(&root, a)),
        Command::Rm(a) => return Ok(containers::rm(&root, a)),
        Command::Wait(a) => return Ok(containers::wait(&root, a)),
        Command::Exec(a) => return Ok(containers::exec(&root, a)),
        Command::Inspect(a) => return containers::inspect(&root, a),
        Command::Container(c) => return containers::container(&root, c),
        Command::Volume(c) => return volumes::volume(&root, c),
        Command::Network(c) => return networks::network(&root, c),
        Command::Port(a) => return containers::port(&root, a),
        _ => {}
    }
    let engine = engine.context("no store was opened for this command")?;
    match cli.command {
        Command::Tag(a) => images::tag(&engine, a),
        Command::Rmi(a) => images::rmi(&engine, a),
        Command::History(a) => images::history(&engine, a),
        Command::Save(a) => images::save(&engine, a).await,
        Command::Load(a) => images::load(&engine, a).await,
        Command::Image(c) => images::image(&engine, c).await,
        Command::Build(b) => build(&engine, *b).await,
        Command::Run(r) => Ok(containers::run(engine, r).await),
        Command::Import {
            changes,
            platform,
            source,
            name,
        } => {
            let digest = engine
                .import(ImportRequest {
                    source,
                    name,
                    changes,
                    platform,
                })
                .await?;
            outln!("{digest}");
            Ok(0)
        }
        Command::Prune(p) => prune(&StoreSource::Engine(&engine), p).await,
        Command::System(SystemCommand::Df { bytes }) => {
            system_df(&StoreSource::Engine(&engine), bytes).await
        }
        Command::Check => {
            let r = engine.check().await?;
            for (digest, actual) in &r.corrupt_blobs {
                outln!("corrupt blob `{digest}` (its content hashes to `{actual}`): removed");
            }
            for (name, digest) in &r.images_removed {
                outln!(
                    "image `{name}` needs blob `{digest}`, which is not stored: removed; pull, import or build it again"
                );
            }
            if !r.snapshots_removed.is_empty() {
                outln!(
                    "{} snapshot records without their directory: removed",
                    r.snapshots_removed.len()
                );
            }
            if r.meta_rows_removed > 0 {
                outln!(
                    "{} memo and alias rows naming a snapshot or cache result that is gone: removed",
                    r.meta_rows_removed
                );
            }
            outln!(
                "checked {} blobs: {} corrupt, {} images removed, {} layer records removed, {} snapshots removed, {} memo and alias rows removed",
                r.blobs_checked,
                r.corrupt_blobs.len(),
                r.images_removed.len(),
                r.layer_records_removed,
                r.snapshots_removed.len(),
                r.meta_rows_removed
            );
            let clean = r.corrupt_blobs.is_empty()
                && r.images_removed.is_empty()
                && r.layer_records_removed == 0
                && r.snapshots_removed.is_empty()
                && r.meta_rows_removed == 0;
            Ok(if clean { 0 } else { 1 })
        }
        Command::Pull(p) => transfer::pull(&StoreSource::Engine(&engine), p).await,
        Command::Daemon(d) => {
            let tls = d.tls_files(cli.tlscert, cli.tlskey, cli.tlscacert)?;
            daemon::run(engine, d, tls).await
        }
        Command::Push(p) => transfer::push(&StoreSource::Engine(&engine), p).await,
        // Handled above, without the store's lock.
        _ => Ok(0),
    }
}

/// A command with `--host`: run through the daemon. The others say in one line that they do
/// not, and end with 125 as a command kiln could not run does.
async fn remote_main(command: Command, host: &str, tls: &kiln_client::TlsFiles) -> Result<i32> {
    let remote = |client| StoreSource::Daemon(client);
    match command {
        Command::Build(b) => remote::build(host, tls, *b).await,
        Command::Images(a) | Command::Image(images::ImageCommand::Ls(a)) => {
            let client = kiln_client::Client::connect(host, Some(tls)).await?;
            images::list(&remote(&client), &a).await
        }
        Command::Prune(p) => {
            let client = kiln_client::Client::connect(host, Some(tls)).await?;
            prune(&remote(&client), p).await
        }
        Command::System(SystemCommand::Df { bytes }) => {
            let client = kiln_client::Client::connect(host, Some(tls)).await?;
            system_df(&remote(&client), bytes).await
        }
        Command::Info(a) => {
            let client = kiln_client::Client::connect(host, Some(tls)).await?;
            info::run(&remote(&client), a).await
        }
        Command::Pull(p) => {
            let client = kiln_client::Client::connect(host, Some(tls)).await?;
            transfer::pull(&remote(&client), p).await
        }
        Command::Push(p) => {
            let client = kiln_client::Client::connect(host, Some(tls)).await?;
            transfer::push(&remote(&client), p).await
        }
        // Only `--resolve` reads the store; the rest never leaves this machine.
        Command::Debug(d) if d.needs_store() => debug::run_remote(d, host, tls).await,
        Command::Debug(d) => debug::run(d, None).await,
        other => {
            let name = store_writer(&other)
                .map(str::to_string)
                .unwrap_or_else(|| format!("kiln {}", command_name()));
            eprintln!(
                "error: `{name}` does not run through a daemon yet: run it without `--host` and \
                 `KILN_HOST` (the daemon at `{host}` holds the store: stop it first)"
            );
            Ok(125)
        }
    }
}

/// The subcommand's name as the user typed it (parsed again: only its error path needs it).
fn command_name() -> String {
    use clap::CommandFactory;
    Cli::command()
        .try_get_matches()
        .ok()
        .and_then(|m| m.subcommand_name().map(str::to_string))
        .unwrap_or_else(|| "this command".to_string())
}

/// `kiln prune`: removes build cache and says what it freed.
async fn prune(source: &StoreSource<'_>, p: PruneArgs) -> Result<i32> {
    let r = source
        .prune(kiln_engine::PruneOptions {
            all: p.all,
            keep_storage: p.keep_storage,
            unused_for: p.filter.into_iter().min(),
        })
        .await?;
    outln!("{}", prune_summary(&r));
    Ok(0)
}

/// `kiln system df`.
async fn system_df(source: &StoreSource<'_>, bytes: bool) -> Result<i32> {
    let u = source.disk_usage().await?;
    out!("{}", df_table(&u, bytes));
    Ok(0)
}

/// `kiln setup emulators`: registers QEMU's handlers and says what it did with each.
fn setup_emulators() -> Result<i32> {
    let binfmt = Path::new(kiln_exec::BINFMT_MISC_DIR);
    let done =
        kiln_exec::register_qemu_handlers(Path::new(kiln_exec::QEMU_BINFMT_CONF_DIR), binfmt)
            .context("`kiln setup emulators`")?;
    for r in &done {
        let what = match r.outcome {
            kiln_exec::RegistrationOutcome::Registered => "registered",
            kiln_exec::RegistrationOutcome::Replaced => "registered again (with the `F` flag)",
            kiln_exec::RegistrationOutcome::AlreadyRegistered => "already registered",
        };
        outln!(
            "{}: {what}, interpreter `{}`",
            r.handler,
            r.interpreter.display()
        );
    }
    let new = done
        .iter()
        .filter(|r| r.outcome != kiln_exec::RegistrationOutcome::AlreadyRegistered)
        .count();
    outln!(
        "{} emulators in `{}` ({new} newly registered)",
        done.len(),
        binfmt.display()
    );
    Ok(0)
}

fn prune_summary(r: &kiln_engine::PruneReport) -> String {
    r.summary()
}

/// `kiln system df`, laid out as `docker system df`.
fn df_table(u: &kiln_engine::StoreUsage, bytes: bool) -> String {
    let size = |n: u64| {
        if bytes {
            n.to_string()
        } else {
            kiln_engine::human_size(n)
        }
    };
    let mut out = format!(
        "{:<14} {:>8} {:>14} {:>14}\n",
        "TYPE", "TOTAL", "SIZE", "RECLAIMABLE"
    );
    for (name, k) in [
        ("Images", u.images),
        ("Build Cache", u.build_cache),
        ("Cache Mounts", u.cache_mounts),
    ] {
        out += &format!(
            "{name:<14} {:>8} {:>14} {:>14}\n",
            k.count,
            size(k.bytes),
            size(k.reclaimable)
        );
    }
    out += &format!(
        "{:<14} {:>8} {:>14} {:>14}\n",
        "Other",
        "",
        size(u.other),
        size(0)
    );
    let reclaimable = u.build_cache.reclaimable + u.cache_mounts.reclaimable;
    out += &format!(
        "{:<14} {:>8} {:>14} {:>14}\n",
        "Total",
        "",
        size(u.total),
        size(reclaimable)
    );
    out
}

/// `--metadata-file`: the keys `docker buildx build --metadata-file` writes for an image.
fn write_metadata(
    path: &std::path::Path,
    r: &kiln_engine::BuildResult,
    tags: &[String],
) -> Result<()> {
    let mut m = serde_json::json!({
        "containerimage.digest": r.manifest_digest,
        "containerimage.descriptor": {
            "mediaType": r.media_type,
            "digest": r.manifest_digest,
            "size": r.manifest_size,
        },
    });
    // BuildKit names a config only for a single image: an index has one per platform.
    if !r.is_index() {
        m["containerimage.config.digest"] = serde_json::Value::String(r.config_digest.clone());
    }
    if !tags.is_empty() {
        m["image.name"] = serde_json::Value::String(tags.join(","));
    }
    let text = serde_json::to_string_pretty(&m)?;
    std::fs::write(path, text).with_context(|| format!("cannot write `{}`", path.display()))
}

/// `kiln build`'s flags as typed.
fn build_flags(b: &BuildArgs) -> kiln_engine::BuildFlags {
    kiln_engine::BuildFlags {
        context: b.context.clone(),
        file: b.file.clone(),
        tags: b.tags.clone(),
        labels: b.labels.clone(),
        build_args: b.build_args.clone(),
        target: b.target.clone(),
        build_contexts: b.build_contexts.clone(),
        outputs: b.outputs.clone(),
        push: b.push,
        no_cache: b.no_cache,
        pull: b.pull,
        platform: b.platform.clone(),
        no_cache_filter: b.no_cache_filter.clone(),
        cache_to: b.cache_to.clone(),
        cache_from: b.cache_from.clone(),
        secrets: b.secrets.clone(),
        ssh: b.ssh.clone(),
        network: b.network.clone(),
        runtime: b.runtime.clone(),
        memory: b.memory.clone(),
        cpus: b.cpus.clone(),
        pids_limit: b.pids_limit.clone(),
        shm_size: b.shm_size.clone(),
        ulimits: b.ulimits.clone(),
        add_hosts: b.add_hosts.clone(),
    }
}

/// The engine's request for `kiln build` flags (also used by `kiln debug llb`).
fn build_request(b: &BuildArgs) -> Result<BuildRequest> {
    build_flags(b).request(&|k| std::env::var(k).ok())
}

/// `kiln build -` and `-f -`: stdin as the context or the Dockerfile; the returned input must
/// outlive the build.
fn stdin_input(
    tmp: &Path,
    b: &BuildArgs,
    request: &mut BuildRequest,
) -> Result<Option<kiln_engine::StdinInput>> {
    let dash = Path::new("-");
    let file_dash = b.file.as_deref() == Some(dash);
    if b.context != dash && !file_dash {
        return Ok(None);
    }
    if b.context == dash && file_dash {
        bail!("stdin cannot be both the context and the Dockerfile: give `-f` a file, or the context a directory");
    }
    let kind = if file_dash {
        kiln_engine::StdinKind::Dockerfile
    } else {
        kiln_engine::StdinKind::ContextOrDockerfile
    };
    let input = kiln_engine::read_stdin_input(tmp, kind, &mut std::io::stdin().lock())?;
    if b.context == dash {
        request.context = input.context();
    }
    if let Some(f) = &input.dockerfile {
        request.dockerfile = Some(f.clone());
    }
    Ok(Some(input))
}

async fn build(engine: &Engine, b: BuildArgs) -> Result<i32> {
    let mut request = build_request(&b)?;
    let _stdin = stdin_input(&engine.store().tmp_dir(), &b, &mut request)?;
    // `-q`: no progress at all; a failure still says which step failed and shows its output.
    let renderer = if b.quiet {
        None
    } else {
        Some(Arc::new(progress::Renderer::new(&b.progress)?))
    };
    let sink: Arc<dyn kiln_engine::ProgressSink> = match &renderer {
        Some(r) => r.clone(),
        None => Arc::new(kiln_engine::NoProgress),
    };
    let finish = || {
        if let Some(r) = &renderer {
            r.finish();
        }
    };
    let started = std::time::Instant::now();
    let mut running = Box::pin(engine.build(request, sink));
    let result = tokio::select! {
        biased;
        code = interrupt::signalled() => {
            // Dropping the build stops its steps (and reports them canceled) before the summary.
            drop(running);
            finish();
            eprintln!(
                "error: the build was interrupted: its running steps were stopped and nothing \
                 was recorded for them; run it again to continue"
            );
            return Ok(code);
        }
        r = &mut running => r,
    };
    drop(running);
    finish();
    let result = result?;
    let collected = result
        .collected
        .as_ref()
        .filter(|r| r.results + r.snapshots + r.blobs + r.cache_mounts > 0)
        .map(|r| r.summary());
    report_build(&b, &result, collected.as_deref(), started)
}

/// What a finished build prints and writes (the same embedded and through a daemon).
fn report_build(
    b: &BuildArgs,
    result: &kiln_engine::BuildResult,
    collected: Option<&str>,
    started: std::time::Instant,
) -> Result<i32> {
    for w in &result.warnings {
        eprintln!("warning: {w}");
    }
    if b.quiet {
        outln!("{}", result.config_digest);
    } else {
        eprintln!(
            "built {} in {:.1}s ({} steps run, {} cached{}){}",
            result.manifest_digest,
            started.elapsed().as_secs_f64(),
            result.executed,
            result.cached,
            match result.cache_layers_fetched {
                Some(n) => format!(", {n} cache layers downloaded"),
                None => String::new(),
            },
            if b.tags.is_empty() {
                String::new()
            } else {
                format!(", tagged {}", b.tags.join(", "))
            }
        );
    }
    if let Some(summary) = collected {
        eprintln!("gc (config file `[gc]`): {summary}");
    }
    if let Some(f) = &b.iidfile {
        // Docker's image ID: the config digest.
        std::fs::write(f, &result.config_digest)
            .with_context(|| format!("cannot write `{}`", f.display()))?;
    }
    if let Some(f) = &b.metadata_file {
        write_metadata(f, result, &b.tags)?;
    }
    Ok(0)
}

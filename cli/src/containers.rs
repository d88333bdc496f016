//! The container commands: `kiln run`'s flags, and `ps`, `logs`, `stop`, `kill`, `start`, `rm`,
//! `wait`, `inspect` and `container prune`, which work without the store's lock.

use anyhow::{bail, Context, Result};
use kiln_engine::containers::{self, Container, Status};
use kiln_engine::{Engine, RunRequest};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Run in the background and print the container's id.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Name of the container (made up when not given).
    #[arg(long)]
    name: Option<String>,
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Tell the process it has a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Set an environment variable, KEY=VALUE (or KEY to pass the caller's).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Read environment variables from a file, one KEY=VALUE (or KEY) a line.
    #[arg(long = "env-file")]
    env_files: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// User to run as: name|uid[:group|gid].
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Replace the image's ENTRYPOINT (and drop its CMD).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Hostname inside the container (default: the first 12 characters of its id).
    #[arg(long)]
    hostname: Option<String>,
    /// Add a line to /etc/hosts: HOST:IP (may be repeated).
    #[arg(long = "add-host")]
    add_hosts: Vec<String>,
    /// Run an init as pid 1 that reaps zombies and forwards signals (kiln always does).
    #[arg(long)]
    init: bool,
    /// Mount the container's root filesystem read-only.
    #[arg(long = "read-only")]
    read_only: bool,
    /// What to do when the command exits: no, on-failure or on-failure:N.
    #[arg(long, default_value = "no")]
    restart: String,
    /// Network: host (default, but none with `-p`), none, bridge (kiln's default bridge
    /// network) or the name of a network from `kiln network create`.
    #[arg(long)]
    network: Option<String>,
    /// Publish a container's port on the host: [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp] (IP
    /// 0.0.0.0 when not given, a free port when HOST_PORT is); the container gets a network
    /// namespace of its own.
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// Publish every port the image exposes on a free host port (`kiln port` shows which).
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// What runs the container: builtin (kiln's sandbox), runc or crun.
    #[arg(long, default_value = "builtin")]
    runtime: String,
    /// Memory limit of the container, swap included: a size such as `512m` or `1g` (units b, k,
    /// m, g), as Docker reads it; 0 for no limit.
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// CPUs the container may use, e.g. `0.5` or `2`; 0 for no limit.
    #[arg(long)]
    cpus: Option<String>,
    /// Most processes (and threads) of the container at once: 16384 by default, -1 for no limit.
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pids_limit: Option<String>,
    /// Add a capability to Docker's default set (`NET_ADMIN`, `ALL`...).
    #[arg(long = "cap-add")]
    cap_add: Vec<String>,
    /// Drop a capability from the set (`CHOWN`, `ALL`...).
    #[arg(long = "cap-drop")]
    cap_drop: Vec<String>,
    /// seccomp=unconfined or no-new-privileges.
    #[arg(long = "security-opt")]
    security_opt: Vec<String>,
    /// Log options: max-size=SIZE (default 10m) caps the log file (one older file is kept).
    #[arg(long = "log-opt")]
    log_opts: Vec<String>,
    /// Bind a host directory or mount a volume: /HOST/PATH:/PATH[:ro], NAME:/PATH[:ro] (a named
    /// volume, made and seeded from the image when new) or /PATH (an anonymous volume).
    #[arg(short = 'v', long = "volume")]
    volumes: Vec<String>,
    /// A mount: type=bind|volume|tmpfs,source=..,target=..[,readonly][,volume-nocopy]
    /// [,tmpfs-size=..][,tmpfs-mode=..].
    #[arg(long = "mount")]
    mounts: Vec<String>,
    /// A tmpfs at /PATH[:size=..,mode=..].
    #[arg(long = "tmpfs")]
    tmpfs: Vec<String>,
    /// The platform to run, os/arch[/variant]: picks it from a multi-platform image; a foreign
    /// one runs through its emulator (`kiln setup emulators`).
    #[arg(long)]
    platform: Option<String>,
    /// The image to run.
    image: String,
    /// Command and arguments (replace the image's CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Lines of an `--env-file`: `KEY=VALUE` or `KEY`; empty lines and `#` comments skipped.
fn read_env_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the env file `{}`", path.display()))?;
    let mut env = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('=') {
            bail!(
                "`{}:{}`: a variable name is missing before `=`",
                path.display(),
                n + 1
            );
        }
        env.push(line.to_string());
    }
    Ok(env)
}

fn log_max_size(opts: &[String]) -> Result<Option<u64>> {
    let mut max = None;
    for o in opts {
        match o.split_once('=') {
            Some(("max-size", v)) => max = Some(kiln_exec::parse_size("--log-opt max-size", v)?),
            _ => bail!("unsupported `--log-opt {o}`: kiln knows `max-size=SIZE`"),
        }
    }
    Ok(max)
}

fn request(r: RunArgs) -> Result<(RunRequest, bool)> {
    let mut ports = Vec::new();
    for p in &r.publish {
        ports.push(containers::parse_publish(p)?);
    }
    let (network_none, bridge_network) = match r.network.as_deref() {
        None => (!ports.is_empty() || r.publish_all, None),
        Some("host" | "default") => (false, None),
        Some("none") => (true, None),
        Some("") => bail!("`--network` needs a value: host, none, bridge or a network's name"),
        Some(name) => (false, Some(name.to_string())),
    };
    let mut env = Vec::new();
    for f in &r.env_files {
        env.extend(read_env_file(f)?);
    }
    env.extend(r.env);
    let mut mounts = Vec::new();
    for v in &r.volumes {
        mounts.push(kiln_engine::parse_volume_flag(v)?);
    }
    for m in &r.mounts {
        mounts.push(kiln_engine::parse_mount_flag(m)?);
    }
    for t in &r.tmpfs {
        mounts.push(kiln_engine::parse_tmpfs_flag(t)?);
    }
    let req = RunRequest {
        image: r.image,
        command: r.command,
        entrypoint: r.entrypoint,
        env,
        workdir: r.workdir,
        user: r.user,
        network_none,
        bridge_network,
        remove: r.rm,
        runtime: r.runtime.parse()?,
        limits: kiln_exec::Limits::parse(
            r.memory.as_deref(),
            r.cpus.as_deref(),
            r.pids_limit.as_deref(),
        )?,
        name: r.name,
        hostname: r.hostname,
        add_hosts: r.add_hosts,
        init: r.init,
        read_only: r.read_only,
        tty: r.tty,
        interactive: r.interactive,
        restart: containers::RestartPolicy::parse(&r.restart)?,
        cap_add: r.cap_add,
        cap_drop: r.cap_drop,
        security_opt: r.security_opt,
        log_max_size: log_max_size(&r.log_opts)?,
        platform: r.platform,
        mounts,
        ports,
        publish_all: r.publish_all,
    };
    Ok((req, r.detach))
}

/// `kiln run`: kiln's own failures exit 125, as `docker run`'s do; otherwise the command's code.
pub(crate) async fn run(engine: Engine, r: RunArgs) -> i32 {
    match run_inner(engine, r).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            125
        }
    }
}

async fn run_inner(engine: Engine, r: RunArgs) -> Result<i32> {
    let (req, detach) = request(r)?;
    // Under an OCI runtime a `-t` command writes to the caller's terminal itself, and the
    // runtime (in the terminal's process group) passes Ctrl-C on; the built-in runtime gives it
    // a terminal of its own, and Ctrl-C reaches it as a byte (`-it`) or through this process.
    let terminal_signals_it = req.tty && !matches!(req.runtime, kiln_exec::Runtime::Builtin);
    let created = engine.create_container(req).await?;
    // The container needs nothing more from the store: other kiln commands may use it now.
    // Closing the index syncs it to disk (tens of milliseconds), so it is closed while the
    // container starts, not before; and waited for before this process exits.
    let closing = tokio::task::spawn_blocking(move || drop(engine));
    if detach {
        let started = tokio::task::spawn_blocking({
            let dir = created.dir.clone();
            move || containers::start_detached(&dir)
        })
        .await;
        let _ = closing.await;
        started??;
        outln!("{}", created.id);
        return Ok(0);
    }
    let forwarder = tokio::spawn(forward_signals(created.dir.clone(), terminal_signals_it));
    let st = containers::run_foreground(&created.dir).await;
    forwarder.abort();
    let _ = closing.await;
    let st = st?;
    if let Some(e) = &st.error {
        // 125: kiln could not run the command; otherwise a limit the container reached.
        let prefix = if st.exit_code == Some(125) {
            "error"
        } else {
            "kiln"
        };
        eprintln!("{prefix}: {e}");
    }
    Ok(st.exit_code.unwrap_or(125))
}

/// Passes the signals `kiln run` gets on to its foreground container, as `docker run`'s
/// sig-proxy does, instead of dying of them (which would take the container down with its exit
/// code). When `terminal_signals_it`, Ctrl-C and Ctrl-backslash already reach the command from
/// the terminal: they are not sent twice.
async fn forward_signals(dir: PathBuf, terminal_signals_it: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        (SignalKind::interrupt(), containers::Signal::SIGINT),
        (SignalKind::terminate(), containers::Signal::SIGTERM),
        (SignalKind::hangup(), containers::Signal::SIGHUP),
        (SignalKind::quit(), containers::Signal::SIGQUIT),
        (SignalKind::user_defined1(), containers::Signal::SIGUSR1),
        (SignalKind::user_defined2(), containers::Signal::SIGUSR2),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (kind, sig) in kinds {
        let Ok(mut stream) = signal(kind) else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    while let Some(sig) = rx.recv().await {
        let from_terminal = matches!(
            sig,
            containers::Signal::SIGINT | containers::Signal::SIGQUIT
        );
        if terminal_signals_it && from_terminal {
            continue;
        }
        let dir = dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            containers::open(&dir).and_then(|c| containers::signal(&c, sig))
        })
        .await;
    }
}

#[derive(clap::Args)]
pub(crate) struct PsArgs {
    /// Show every container (default: only running ones).
    #[arg(short, long)]
    all: bool,
    /// Only print ids.
    #[arg(short, long)]
    quiet: bool,
}

fn ago(secs: i64) -> String {
    let d = (now() - secs).max(0);
    match d {
        0..=1 => "Less than a second".to_string(),
        2..=59 => format!("{d} seconds"),
        60..=119 => "About a minute".to_string(),
        120..=3599 => format!("{} minutes", d / 60),
        3600..=7199 => "About an hour".to_string(),
        7200..=172_799 => format!("{} hours", d / 3600),
        _ => format!("{} days", d / 86_400),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `docker ps`'s STATUS column.
fn status_text(c: &Container) -> String {
    let st = &c.state;
    match st.status {
        Status::Created => "Created".into(),
        Status::Running => format!("Up {}", ago(st.started_at.unwrap_or_else(now))),
        Status::Restarting => format!(
            "Restarting ({}) {} ago",
            st.exit_code.unwrap_or(0),
            ago(st.finished_at.unwrap_or_else(now))
        ),
        Status::Exited => match (st.exit_code, st.finished_at) {
            (Some(code), Some(t)) => format!("Exited ({code}) {} ago", ago(t)),
            (Some(code), None) => format!("Exited ({code})"),
            (None, _) => "Exited (unknown)".into(),
        },
    }
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// `127.0.0.1:8080->80/tcp, ...` for a running container, as `docker ps` shows its ports.
fn ports_text(c: &Container) -> String {
    if !c.state.is_running() {
        return String::new();
    }
    let ports = c
        .config
        .as_ref()
        .map(|cfg| cfg.ports.as_slice())
        .unwrap_or(&[]);
    ports
        .iter()
        .map(|p| {
            format!(
                "{}->{}/{} ",
                p.host_addr(),
                p.container_port,
                p.protocol.as_str()
            )
        })
        .collect::<String>()
        .trim_end()
        .replace(' ', ", ")
}

pub(crate) fn ps(root: &Path, a: PsArgs) -> Result<i32> {
    let all = containers::list(root)?;
    let shown = all.iter().filter(|c| a.all || c.state.is_running());
    if a.quiet {
        for c in shown {
            outln!("{}", c.short_id());
        }
        return Ok(0);
    }
    outln!(
        "{:<14}{:<20}{:<24}{:<24}{:<36}{:<24}NAMES",
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS"
    );
    for c in shown {
        outln!(
            // A space after the ports always: a long list must not run into the name.
            "{:<14}{:<20}{:<24}{:<24}{:<36}{:<23} {}",
            c.short_id(),
            cut(&c.image(), 19),
            cut(&format!("\"{}\"", c.command()), 23),
            c.created()
                .map(|t| format!("{} ago", ago(t)))
                .unwrap_or_default(),
            status_text(c),
            ports_text(c),
            c.name()
        );
    }
    Ok(0)
}

#[derive(clap::Args)]
pub(crate) struct LogsArgs {
    /// Keep printing new output until the container stops.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines (`all` for every line).
    #[arg(short = 'n', long, default_value = "all")]
    tail: String,
    container: String,
}

pub(crate) fn logs(root: &Path, a: LogsArgs) -> Result<i32> {
    let tail = match a.tail.as_str() {
        "all" => None,
        n => Some(n.parse::<usize>().map_err(|_| {
            anyhow::anyhow!("invalid `--tail {n}`: give a number of lines or `all`")
        })?),
    };
    let c = containers::find(root, &a.container)?;
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    containers::logs(&c, tail, a.follow, &mut |l| {
        // A closed pipe (`kiln logs C | head`) ends the output, not kiln with a panic.
        let _ = if l.stream == "stderr" {
            err.write_all(l.log.as_bytes()).and_then(|_| err.flush())
        } else {
            out.write_all(l.log.as_bytes()).and_then(|_| out.flush())
        };
    })?;
    Ok(0)
}

/// Runs `f` on each named container, printing the name given on success (as Docker does) and
/// one error line for each failure; exit code 1 when any failed.
fn each(root: &Path, names: &[String], f: &dyn Fn(&Container) -> Result<()>) -> i32 {
    let mut code = 0;
    for n in names {
        match containers::find(root, n).and_then(|c| f(&c)) {
            Ok(()) => outln!("{n}"),
            Err(e) => {
                eprintln!("error: {e:#}");
                code = 1;
            }
        }
    }
    code
}

#[derive(clap::Args)]
pub(crate) struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    time: u64,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub(crate) fn stop(root: &Path, a: StopArgs) -> i32 {
    each(root, &a.containers, &|c| {
        containers::stop(c, Duration::from_secs(a.time))
    })
}

#[derive(clap::Args)]
pub(crate) struct KillArgs {
    /// The signal to send (name or number).
    #[arg(short = 's', long = "signal", default_value = "KILL")]
    signal: String,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub(crate) fn kill(root: &Path, a: KillArgs) -> Result<i32> {
    let sig = containers::parse_signal(&a.signal)?;
    Ok(each(root, &a.containers, &|c| containers::kill(c, sig)))
}

#[derive(clap::Args)]
pub(crate) struct StartArgs {
    /// Pass on the container's output until it stops, and exit with its code.
    #[arg(short, long)]
    attach: bool,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub(crate) fn start(root: &Path, a: StartArgs) -> i32 {
    if !a.attach {
        return each(root, &a.containers, &|c| containers::start(c));
    }
    if a.containers.len() > 1 {
        eprintln!("error: `kiln start -a` attaches to one container at a time");
        return 1;
    }
    let attached = containers::find(root, &a.containers[0]).and_then(|c| {
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        containers::start_attached(&c, &mut |l| {
            let _ = if l.stream == "stderr" {
                err.write_all(l.log.as_bytes()).and_then(|_| err.flush())
            } else {
                out.write_all(l.log.as_bytes()).and_then(|_| out.flush())
            };
        })
    });
    match attached {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct RmArgs {
    /// Kill a running container first.
    #[arg(short, long)]
    force: bool,
    /// Remove the container's anonymous volumes too.
    #[arg(short = 'v', long = "volumes")]
    volumes: bool,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub(crate) fn rm(root: &Path, a: RmArgs) -> i32 {
    each(root, &a.containers, &|c| {
        for kept in containers::remove(c, a.force, a.volumes)? {
            eprintln!("warning: {kept}");
        }
        Ok(())
    })
}

#[derive(clap::Args)]
pub(crate) struct WaitArgs {
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `kiln wait`: prints each container's exit code once it stops.
pub(crate) fn wait(root: &Path, a: WaitArgs) -> i32 {
    let mut code = 0;
    for n in &a.containers {
        let found = containers::find(root, n).and_then(|c| containers::wait(&c));
        match found {
            Ok(exit) => outln!("{exit}"),
            Err(e) => {
                eprintln!("error: {e:#}");
                code = 1;
            }
        }
    }
    code
}

#[derive(clap::Args)]
pub(crate) struct ExecArgs {
    /// Keep stdin open (kiln passes its stdin in any case).
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Tell the process it has a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Set an environment variable, KEY=VALUE (or KEY to pass the caller's).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// User to run as: name|uid[:group|gid], looked up in the container.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    container: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

/// `kiln exec`: kiln's own failures exit 125 (126/127 come from the command), as `docker exec`.
pub(crate) fn exec(root: &Path, a: ExecArgs) -> i32 {
    let _ = a.interactive;
    let c = match containers::find(root, &a.container) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    let run = {
        containers::exec(
            &c,
            containers::ExecOptions {
                command: a.command,
                env: a.env,
                user: a.user,
                workdir: a.workdir,
                tty: a.tty,
            },
        )
    };
    match run {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            125
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct InspectArgs {
    #[arg(required = true)]
    names: Vec<String>,
}

/// `kiln inspect`: a JSON array, one object per name, as `docker inspect` prints.
pub(crate) fn inspect(root: &Path, a: InspectArgs) -> Result<i32> {
    let mut shown = Vec::new();
    let mut code = 0;
    for n in &a.names {
        match containers::find(root, n) {
            Ok(c) => shown.push(containers::inspect(&c)),
            Err(e) => match inspect_image(root, n) {
                Some(v) => shown.push(v),
                None => {
                    eprintln!("error: {e:#}");
                    code = 1;
                }
            },
        }
    }
    outln!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(code)
}

/// A name that is no container falls through to `kiln image inspect`, as `docker inspect` does.
fn inspect_image(root: &Path, name: &str) -> Option<serde_json::Value> {
    kiln_engine::inspect_image_at(root, name).ok()
}

#[derive(clap::Subcommand)]
pub(crate) enum ContainerCommand {
    /// Remove every container that is not running.
    Prune {
        /// Do not ask (kiln never asks; accepted for Docker's scripts).
        #[arg(short, long)]
        force: bool,
    },
}

pub(crate) fn container(root: &Path, c: ContainerCommand) -> Result<i32> {
    match c {
        ContainerCommand::Prune { force: _ } => {
            let removed = containers::prune(root)?;
            outln!("Deleted Containers:");
            for id in &removed {
                outln!("{id}");
            }
            Ok(0)
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct PortArgs {
    container: String,
    /// Only this container port: PORT, PORT/tcp or PORT/udp.
    port: Option<String>,
}

/// `kiln port C [PORT]`: `80/tcp -> 127.0.0.1:5170` lines, as `docker port` prints them.
pub(crate) fn port(root: &Path, a: PortArgs) -> Result<i32> {
    let c = containers::find(root, &a.container)?;
    let wanted: Option<(u16, &str)> = match &a.port {
        None => None,
        Some(p) => {
            let (n, proto) = p.split_once('/').unwrap_or((p.as_str(), "tcp"));
            let n = n
                .parse()
                .ok()
                .filter(|_| matches!(proto, "tcp" | "udp"))
                .with_context(|| format!("invalid port `{p}`: give PORT, PORT/tcp or PORT/udp"))?;
            Some((n, proto))
        }
    };
    let ports = c
        .config
        .as_ref()
        .map(|cfg| cfg.ports.clone())
        .unwrap_or_default();
    let shown: Vec<_> = ports
        .iter()
        .filter(|p| {
            wanted.is_none_or(|(n, proto)| n == p.container_port && proto == p.protocol.as_str())
        })
        .collect();
    if let (Some((n, proto)), true) = (wanted, shown.is_empty()) {
        anyhow::bail!(
            "no public port `{n}/{proto}` published for container `{}`",
            c.name()
        );
    }
    for p in shown {
        outln!(
            "{}/{} -> {}",
            p.container_port,
            p.protocol.as_str(),
            p.host_addr()
        );
    }
    Ok(0)
}

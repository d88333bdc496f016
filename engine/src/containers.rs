//! Containers: the records `kiln run` leaves in `containers/<id>/` and what `kiln ps`, `logs`,
//! `stop`, `kill`, `start`, `rm`, `wait`, `inspect` and `container prune` do with them. None of
//! these takes the store's lock: a container's monitor owns its state, and the others only read
//! it or signal the monitor's sandbox.

mod logs;
mod monitor;
mod names;
mod ports;
mod state;

pub use logs::{LogLine, DEFAULT_LOG_MAX_SIZE};
pub use monitor::monitor_main_if_requested;
pub use ports::{
    check_free as check_ports_free, choose_free as choose_free_ports, parse_publish, PortMapping,
    Protocol,
};
pub use state::{ContainerConfig, ContainerState, MountKind, MountRecord, RestartPolicy, Status};

pub use nix::sys::signal::Signal;
pub(crate) use state::{write_json, CONFIG_FILE};

use crate::volumes;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Merges `-e` settings over the image's environment (same key: the later one wins).
pub(crate) fn merge_env(image_env: &[String], overrides: &[String]) -> Vec<String> {
    let mut env: Vec<String> = image_env.to_vec();
    for o in overrides {
        let entry = if o.contains('=') {
            o.clone()
        } else {
            match std::env::var(o) {
                Ok(v) => format!("{o}={v}"),
                Err(_) => continue,
            }
        };
        let key = entry.split('=').next().unwrap_or("").to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    }
    env
}

/// One container as `kiln ps -a` sees it.
#[derive(Clone, Debug)]
pub struct Container {
    pub id: String,
    pub dir: PathBuf,
    /// `None` for a directory an older kiln left without a config: listed and removable.
    pub config: Option<ContainerConfig>,
    /// As observed now (a dead monitor reads as exited, code unknown).
    pub state: ContainerState,
}

impl Container {
    pub fn name(&self) -> String {
        match &self.config {
            Some(c) => c.name.clone(),
            None => self.short_id().to_string(),
        }
    }

    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }

    pub fn image(&self) -> String {
        self.config
            .as_ref()
            .map(|c| c.image.clone())
            .unwrap_or_default()
    }

    pub fn created(&self) -> Option<i64> {
        self.config.as_ref().map(|c| c.created)
    }

    /// The command line it runs (argv joined by spaces).
    pub fn command(&self) -> String {
        self.args().join(" ")
    }

    fn args(&self) -> Vec<String> {
        self.config
            .as_ref()
            .and_then(|c| c.spec.process().as_ref())
            .and_then(|p| p.args().clone())
            .unwrap_or_default()
    }

    fn load(dir: PathBuf) -> Option<Container> {
        let id = dir.file_name()?.to_str()?.to_string();
        if id.starts_with('.') {
            return None;
        }
        let config = state::read_config(&dir).ok();
        let mut st = state::read_state(&dir).observed();
        if config.is_none() {
            // Left by a kiln before containers had a monitor: it is not running.
            st.status = Status::Exited;
        }
        Some(Container {
            id,
            dir,
            config,
            state: st,
        })
    }

    /// The container as it is now; one removed meanwhile (`--rm`) reads as exited.
    fn reload(&self) -> Container {
        if !self.dir.exists() {
            let mut gone = self.clone();
            gone.state.status = Status::Exited;
            gone.state.error = Some("it was removed when it exited (`--rm`)".into());
            return gone;
        }
        Container::load(self.dir.clone()).unwrap_or_else(|| self.clone())
    }
}

fn containers_dir(root: &Path) -> PathBuf {
    root.join("containers")
}

/// The container whose directory is `dir`.
pub fn open(dir: &Path) -> Result<Container> {
    Container::load(dir.to_path_buf())
        .with_context(|| format!("`{}` is not a container directory", dir.display()))
}

/// Every container of the store at `root`, newest first.
pub fn list(root: &Path) -> Result<Vec<Container>> {
    let dir = containers_dir(root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list `{}`", dir.display())),
    };
    let mut all: Vec<Container> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Container::load(e.path()))
        .collect();
    all.sort_by(|a, b| b.created().cmp(&a.created()).then(a.id.cmp(&b.id)));
    Ok(all)
}

/// The container named `query`: its full id, its name, or a prefix of its id that only it has.
pub fn find(root: &Path, query: &str) -> Result<Container> {
    let q = query.strip_prefix('/').unwrap_or(query);
    let all = list(root)?;
    if let Some(c) = all.iter().find(|c| c.id == q || c.name() == q) {
        return Ok(c.clone());
    }
    let hex = !q.is_empty() && q.bytes().all(|b| b.is_ascii_hexdigit());
    let matches: Vec<&Container> = if hex {
        all.iter().filter(|c| c.id.starts_with(q)).collect()
    } else {
        Vec::new()
    };
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no container `{query}`: `kiln ps -a` lists them"),
        _ => bail!(
            "`{query}` is the start of {} container ids: give more of the id, or the name",
            matches.len()
        ),
    }
}

/// Whether a container called `name` exists in the store at `root`.
pub(crate) fn name_taken(root: &Path, name: &str) -> bool {
    list(root)
        .map(|all| all.iter().any(|c| c.name() == name))
        .unwrap_or(false)
}

/// A new container's name: `requested` when it is valid and free, else one made up.
pub(crate) fn choose_name(root: &Path, id: &str, requested: Option<&str>) -> Result<String> {
    match requested {
        Some(n) => {
            if !names::valid(n) {
                bail!("invalid container name `{n}`: use letters, digits and `_.-`, starting with a letter or digit");
            }
            if name_taken(root, n) {
                bail!("the container name `{n}` is already in use: remove that container (`kiln rm {n}`) or choose another name");
            }
            Ok(n.to_string())
        }
        None => {
            let existing: Vec<String> = list(root)?.iter().map(Container::name).collect();
            Ok(names::generate(id, &|n| existing.iter().any(|e| e == n)))
        }
    }
}

/// The snapshots containers stand on, which `kiln prune` must keep.
pub(crate) fn snapshots_in_use(root: &Path) -> Vec<u64> {
    list(root)
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.config.as_ref()?.snapshot)
        .collect()
}

/// Runs a created container in this process, its streams the caller's, and returns how it
/// ended (the container dies with this process).
pub async fn run_foreground(dir: &Path) -> Result<ContainerState> {
    monitor::supervise(dir, monitor::Attach::Caller).await
}

/// Starts a created container under a monitor process of its own, its output going to its log.
pub fn start_detached(dir: &Path) -> Result<()> {
    monitor::spawn_detached(dir)
}

/// `kiln start`: runs a stopped container again, detached.
pub fn start(c: &Container) -> Result<()> {
    if c.state.is_running() {
        return Ok(());
    }
    if c.config.is_none() {
        bail!(
            "container `{}` was made by an older kiln and cannot be started again: remove it with `kiln rm {}`",
            c.name(),
            c.short_id()
        );
    }
    start_detached(&c.dir)
}

/// `kiln start -a`: starts the container (a running one is only attached to) and passes on
/// what it writes from then on until it stops; its exit code.
pub fn start_attached(c: &Container, out: &mut dyn FnMut(&LogLine)) -> Result<i32> {
    // Where the log ends now: older output is not shown again, as with `docker start -a`.
    let (_, mut offset) = logs::read_all(&c.dir);
    start(c)?;
    let mut c = c.reload();
    loop {
        let running = c.state.is_running();
        let (more, next) = logs::read_from(&c.dir, offset);
        offset = next;
        for l in &more {
            out(l);
        }
        if !running {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        c = c.reload();
    }
    wait(&c)
}

/// A signal by name (`KILL`, `SIGTERM`) or number, as `docker kill -s` reads it.
pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal> {
    use nix::sys::signal::Signal;
    let bad = || {
        anyhow::anyhow!("invalid signal `{s}`: use a name such as `TERM` or `SIGKILL`, or a number")
    };
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().map_err(|_| bad())
}

/// Sends `sig` to a running container's command (through the sandbox process its monitor
/// started, which forwards it; SIGKILL takes the whole sandbox down).
pub fn signal(c: &Container, sig: nix::sys::signal::Signal) -> Result<()> {
    let not_running = || anyhow::anyhow!("container `{}` is not running", c.name());
    if !c.state.is_running() {
        return Err(not_running());
    }
    let pid_file = state::sandbox_state_dir(&c.dir).join(kiln_exec::PID_FILE);
    let pid: u32 = match std::fs::read_to_string(&pid_file) {
        Ok(t) => t.trim().parse().map_err(|_| not_running())?,
        // Between two runs of `--restart`: nothing to signal.
        Err(_) => return Err(not_running()),
    };
    // The pid file may be older than the current run: only a child of the live monitor counts.
    if state::parent_of(pid) != Some(c.state.monitor_pid) {
        return Err(not_running());
    }
    // Under an OCI runtime the container's first process (a static init that forwards what
    // it gets, and whose death takes the pid namespace down) is signalled directly, as
    // `runc kill` does: the runtime process between it and the helper forwards nothing.
    let oci = c.config.as_ref().filter(|cfg| cfg.runtime != "builtin");
    if let Some(cfg) = oci {
        let deadline = Instant::now() + Duration::from_secs(5);
        let state_dir = state::sandbox_state_dir(&c.dir);
        let init = loop {
            match kiln_exec::oci_container_pid(&cfg.runtime, &state_dir) {
                Some(p) => break p,
                None if Instant::now() > deadline => return Err(not_running()),
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        return nix::sys::signal::kill(nix::unistd::Pid::from_raw(init as i32), sig)
            .with_context(|| format!("cannot signal container `{}`", c.name()));
    }
    // SIGKILL cannot be forwarded: it goes to the sandbox's init (the helper's child), whose
    // death takes the container down and lets the helper report 137, as Docker does.
    // Just after a start the init may still be setting up: killed then it reports nothing,
    // and a signal the helper forwards then interrupts the set-up (exit 125). Wait until its
    // result file says the set-up is done, as `docker kill` after `docker start` reaches the
    // command.
    let result = state::sandbox_state_dir(&c.dir).join(kiln_exec::RESULT_FILE);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut targets;
    loop {
        targets = state::children_of(pid);
        let set_up = std::fs::metadata(&result).is_ok_and(|m| m.len() > 0);
        if (set_up && !targets.is_empty()) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if sig != Signal::SIGKILL {
        targets.clear();
    }
    let targets = if targets.is_empty() {
        vec![pid]
    } else {
        targets
    };
    for t in targets {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(t as i32), sig)
            .with_context(|| format!("cannot signal container `{}`", c.name()))?;
    }
    Ok(())
}

/// `kiln kill`: sends `sig`; SIGKILL also keeps `--restart` from running the container again,
/// and returns once it is down.
pub fn kill(c: &Container, sig: Signal) -> Result<()> {
    if sig != Signal::SIGKILL {
        return signal(c, sig);
    }
    if c.state.is_running() {
        let _ = std::fs::write(c.dir.join(state::STOP_MARKER), b"");
    }
    signal(c, sig)?;
    if !wait_at_most(c, Duration::from_secs(10)) {
        bail!(
            "container `{}` did not die within 10 s of SIGKILL",
            c.name()
        );
    }
    Ok(())
}

/// `kiln exec`'s options.
#[derive(Clone, Debug, Default)]
pub struct ExecOptions {
    pub command: Vec<String>,
    /// `-e K=V` (or `-e K` to pass the caller's value), over the container's environment.
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub tty: bool,
}

/// `kiln exec`: runs one more command in a running container, with this process's streams, and
/// returns its exit code (126/127 when it cannot be run, 125 when kiln cannot start it there).
pub fn exec(c: &Container, opts: ExecOptions) -> Result<i32> {
    let cfg = c
        .config
        .as_ref()
        .with_context(|| format!("container `{}` is not running", c.name()))?;
    if opts.command.is_empty() {
        bail!("`kiln exec` needs a command to run after the container's name");
    }
    let not_running = || anyhow::anyhow!("container `{}` is not running", c.name());
    if c.state.status != Status::Running {
        return Err(not_running());
    }
    let pid_file = state::sandbox_state_dir(&c.dir).join(kiln_exec::PID_FILE);
    let helper: u32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(not_running)?;
    if state::parent_of(helper) != Some(c.state.monitor_pid) {
        return Err(not_running());
    }
    // `kiln run -d` returns once the helper exists; its init may still be setting up (and,
    // under an emulator or on a busy host, for a while): entering it then would join the
    // wrong namespaces. Wait until its result file says the set-up is done.
    let result = state::sandbox_state_dir(&c.dir).join(kiln_exec::RESULT_FILE);
    let deadline = Instant::now() + Duration::from_secs(10);
    let builtin = cfg.runtime == "builtin";
    let init_pid = loop {
        // Under an OCI runtime its `state` says when the container runs, and its pid.
        let (init, set_up) = if builtin {
            let init = state::children_of(helper).first().copied();
            (init, std::fs::metadata(&result).is_ok_and(|m| m.len() > 0))
        } else {
            let pid = kiln_exec::oci_container_pid(&cfg.runtime, &state::sandbox_state_dir(&c.dir));
            (pid, pid.is_some())
        };
        match init {
            Some(pid) if set_up => break pid,
            _ if Instant::now() > deadline => return Err(not_running()),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let mut process = cfg.spec.process().clone().unwrap_or_default();
    let env = merge_env(process.env().as_deref().unwrap_or(&[]), &opts.env);
    process.set_env(Some(env));
    process.set_args(Some(opts.command));
    process.set_terminal(Some(opts.tty));
    if let Some(w) = opts.workdir {
        if !w.starts_with('/') {
            bail!("working directory `{w}` is not absolute; start it with `/`");
        }
        process.set_cwd(PathBuf::from(w));
    }
    let seccomp = cfg.spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    Ok(kiln_exec::enter(kiln_exec::EnterRequest {
        init_pid,
        process,
        seccomp,
        user: opts.user,
    })?)
}

/// `kiln wait`: blocks until the container is not running; its exit code, or why it is unknown.
pub fn wait(c: &Container) -> Result<i32> {
    let mut c = c.clone();
    while c.state.is_running() {
        std::thread::sleep(Duration::from_millis(20));
        c = c.reload();
    }
    c.state.exit_code.with_context(|| {
        format!(
            "container `{}` stopped with its exit code unknown: {}",
            c.name(),
            c.state.error.as_deref().unwrap_or("nothing recorded it")
        )
    })
}

fn wait_at_most(c: &Container, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut c = c.clone();
    while c.state.is_running() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
        c = c.reload();
    }
    true
}

/// `kiln stop`: SIGTERM, then SIGKILL after `grace`; no `--restart` after either.
pub fn stop(c: &Container, grace: Duration) -> Result<()> {
    if !c.state.is_running() {
        return Ok(());
    }
    std::fs::write(c.dir.join(state::STOP_MARKER), b"")
        .with_context(|| format!("cannot stop container `{}`", c.name()))?;
    let _ = signal(c, nix::sys::signal::Signal::SIGTERM);
    if wait_at_most(c, grace) {
        return Ok(());
    }
    let _ = signal(c, nix::sys::signal::Signal::SIGKILL);
    if !wait_at_most(c, Duration::from_secs(10)) {
        bail!(
            "container `{}` did not stop within 10 s of SIGKILL",
            c.name()
        );
    }
    Ok(())
}

/// `kiln rm`: removes a container that is not running; `force` kills a running one first;
/// `volumes` (`-v`) removes its anonymous volumes too, but for one another container uses
/// (returned, with why it was kept).
pub fn remove(c: &Container, force: bool, volumes: bool) -> Result<Vec<String>> {
    if c.state.is_running() {
        if !force {
            bail!(
                "container `{}` is running: stop it first (`kiln stop {}`) or remove it with `kiln rm -f`",
                c.name(),
                c.name()
            );
        }
        let _ = std::fs::write(c.dir.join(state::STOP_MARKER), b"");
        let _ = signal(c, nix::sys::signal::Signal::SIGKILL);
        if !wait_at_most(c, Duration::from_secs(10)) {
            bail!(
                "container `{}` did not die within 10 s of SIGKILL",
                c.name()
            );
        }
    }
    remove_dir(&c.dir);
    if c.dir.exists() {
        bail!("cannot remove `{}`", c.dir.display());
    }
    if let Some(cfg) = &c.config {
        release_address(&c.dir, cfg);
    }
    Ok(match (&c.config, volumes) {
        (Some(cfg), true) => remove_anonymous_volumes(&c.dir, cfg),
        _ => Vec::new(),
    })
}

/// The anonymous volumes of the removed container at `dir` go too (`rm -v`, `--rm`), but for
/// one another container uses; what was kept and why.
pub(crate) fn remove_anonymous_volumes(dir: &Path, cfg: &ContainerConfig) -> Vec<String> {
    let Some(root) = dir.parent().and_then(Path::parent) else {
        return Vec::new();
    };
    let anonymous: Vec<&MountRecord> = cfg
        .mounts
        .iter()
        .filter(|m| m.kind == MountKind::Volume && m.anonymous)
        .collect();
    if anonymous.is_empty() {
        return Vec::new();
    }
    let Ok(lock) = volumes::lock(root) else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    for m in anonymous {
        if let Err(e) = remove_volume(&lock, root, &m.source) {
            kept.push(format!("{e:#}"));
        }
    }
    kept
}

/// A removed container's address on its network goes back to the network.
pub(crate) fn release_address(dir: &Path, cfg: &ContainerConfig) {
    if let (Some(a), Some(root)) = (&cfg.attachment, dir.parent().and_then(Path::parent)) {
        crate::networks::release(root, a, &cfg.id);
    }
}

/// The containers (names) whose mounts use volume `name`.
pub fn volume_users(root: &Path, name: &str) -> Vec<String> {
    list(root)
        .unwrap_or_default()
        .iter()
        .filter(|c| {
            c.config.as_ref().is_some_and(|cfg| {
                cfg.mounts
                    .iter()
                    .any(|m| m.kind == MountKind::Volume && m.source == name)
            })
        })
        .map(Container::name)
        .collect()
}

/// `kiln volume rm`: refuses a volume any container (running or not) uses, as Docker does.
pub fn remove_volume(lock: &volumes::VolumesLock, root: &Path, name: &str) -> Result<()> {
    let v = volumes::find(root, name)?;
    let users = volume_users(root, &v.name);
    if let Some(first) = users.first() {
        let many = users.len() > 1;
        bail!(
            "volume `{}` is in use by container{} `{}`: remove {} first (`kiln rm {first}`)",
            v.name,
            if many { "s" } else { "" },
            users.join("`, `"),
            if many { "them" } else { "it" },
        );
    }
    volumes::delete(lock, root, &v)
}

/// `kiln volume prune`: removes the volumes no container uses, only anonymous ones unless
/// `all` (as Docker 23 does); their names.
pub fn prune_volumes(lock: &volumes::VolumesLock, root: &Path, all: bool) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for v in volumes::list(root)? {
        if (all || v.meta.anonymous) && volume_users(root, &v.name).is_empty() {
            volumes::delete(lock, root, &v)?;
            removed.push(v.name);
        }
    }
    Ok(removed)
}

/// Removes a container's directory, first unmounting a root an OCI runtime's dead monitor left.
/// The directory is first renamed to a hidden name (which `list` skips), so that nobody sees a
/// container half removed.
pub(crate) fn remove_dir(dir: &Path) {
    let _ = nix::mount::umount2(&dir.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
    // A bridge network's namespace a killed monitor left bound.
    crate::networks::unbind(&dir.join(crate::networks::NETNS_FILE));
    let hidden = match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => {
            let mut hidden = std::ffi::OsString::from(".removing-");
            hidden.push(name);
            let hidden = parent.join(hidden);
            std::fs::rename(dir, &hidden).ok().map(|()| hidden)
        }
        _ => None,
    };
    let _ = std::fs::remove_dir_all(hidden.as_deref().unwrap_or(dir));
}

/// `kiln container prune`: removes every container that is not running; their ids.
pub fn prune(root: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for c in list(root)? {
        if !c.state.is_running() {
            remove(&c, false, false)?;
            removed.push(c.id);
        }
    }
    Ok(removed)
}

/// `kiln logs`: calls `out` with each recorded line, the last `tail` only when given; with
/// `follow`, goes on with new lines until the container stops.
pub fn logs(
    c: &Container,
    tail: Option<usize>,
    follow: bool,
    out: &mut dyn FnMut(&LogLine),
) -> Result<()> {
    let (lines, mut offset) = logs::read_all(&c.dir);
    let skip = tail.map_or(0, |n| lines.len().saturating_sub(n));
    for l in &lines[skip..] {
        out(l);
    }
    if !follow {
        return Ok(());
    }
    let mut c = c.clone();
    loop {
        let running = c.state.is_running();
        let (more, next) = logs::read_from(&c.dir, offset);
        offset = next;
        for l in &more {
            out(l);
        }
        if !running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
        c = c.reload();
    }
}

/// `{"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}`, as Docker shows ports.
fn port_bindings(ports: &[PortMapping]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for p in ports {
        let entry = map
            .entry(format!("{}/{}", p.container_port, p.protocol.as_str()))
            .or_insert_with(|| serde_json::json!([]));
        if let Some(list) = entry.as_array_mut() {
            list.push(serde_json::json!({"HostIp": p.host_ip.to_string(), "HostPort": p.host_port.to_string()}));
        }
    }
    serde_json::Value::Object(map)
}

/// `kiln inspect`: the container as `docker inspect` shows one (the fields kiln has).
pub fn inspect(c: &Container) -> serde_json::Value {
    use serde_json::json;
    let time = |t: Option<i64>| {
        t.map(crate::export::rfc3339)
            .unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
    };
    let args = c.args();
    let st = &c.state;
    let mut v = json!({
        "Id": c.id,
        "Created": time(c.created()),
        "Path": args.first().cloned().unwrap_or_default(),
        "Args": args.iter().skip(1).collect::<Vec<_>>(),
        "State": {
            "Status": st.status.as_str(),
            "Running": st.status == Status::Running,
            "Paused": false,
            "Restarting": st.status == Status::Restarting,
            "OOMKilled": st.oom_killed,
            "Dead": false,
            "Pid": if st.is_running() { st.monitor_pid } else { 0 },
            "ExitCode": st.exit_code.unwrap_or(if st.is_running() { 0 } else { -1 }),
            "Error": st.error.clone().unwrap_or_default(),
            "StartedAt": time(st.started_at),
            "FinishedAt": time(st.finished_at),
        },
        "Name": format!("/{}", c.name()),
        "RestartCount": st.restart_count,
        "LogPath": c.dir.join(logs::LOG_FILE),
    });
    if let Some(cfg) = &c.config {
        let process = cfg.spec.process().clone().unwrap_or_default();
        let resources = cfg
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone());
        let memory = resources
            .as_ref()
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .unwrap_or(0);
        let cpu = resources.as_ref().and_then(|r| r.cpu().clone());
        let nano_cpus = match cpu.as_ref().and_then(|c| Some((c.quota()?, c.period()?))) {
            Some((q, p)) if p > 0 && q > 0 => (q as u128 * 1_000_000_000 / p as u128) as i64,
            _ => 0,
        };
        let pids = resources
            .as_ref()
            .and_then(|r| r.pids().as_ref())
            .map(|p| p.limit())
            .unwrap_or(0);
        v["Image"] = json!(cfg.image_digest);
        v["HostConfig"] = json!({
            "Memory": memory,
            "NanoCpus": nano_cpus,
            "PidsLimit": pids,
            "RestartPolicy": {"Name": cfg.restart.name, "MaximumRetryCount": cfg.restart.max_retries},
            "AutoRemove": cfg.auto_remove,
            "ReadonlyRootfs": cfg.read_only,
            "Init": cfg.init,
            "CapAdd": cfg.cap_add,
            "CapDrop": cfg.cap_drop,
            "SecurityOpt": cfg.security_opt,
            "ExtraHosts": cfg.extra_hosts,
            "NetworkMode": match (&cfg.attachment, cfg.network) {
                (Some(a), _) => a.network.as_str(),
                (None, kiln_exec::Network::Host) => "host",
                (None, kiln_exec::Network::None) => "none",
            },
            "PortBindings": port_bindings(&cfg.ports),
            "Runtime": cfg.runtime,
        });
        let mut settings = json!({ "Ports": port_bindings(&cfg.ports) });
        if let Some(a) = &cfg.attachment {
            settings["IPAddress"] = json!(a.ip.to_string());
            settings["Gateway"] = json!(a.gateway.to_string());
            settings["IPPrefixLen"] = json!(a.prefix);
            settings["Networks"] = json!({ a.network.clone(): {
                "IPAddress": a.ip.to_string(),
                "Gateway": a.gateway.to_string(),
                "IPPrefixLen": a.prefix,
            }});
        }
        v["NetworkSettings"] = settings;
        let root = c.dir.parent().and_then(Path::parent);
        v["Mounts"] = json!(cfg
            .mounts
            .iter()
            .map(|m| root.map(|r| m.inspect(r)).unwrap_or_default())
            .collect::<Vec<_>>());
        v["Config"] = json!({
            "Hostname": cfg.spec.hostname().clone().unwrap_or_default(),
            "User": format!("{}:{}", process.user().uid(), process.user().gid()),
            "Env": process.env().clone().unwrap_or_default(),
            "Cmd": args,
            "WorkingDir": process.cwd(),
            "Image": cfg.image,
            "Tty": cfg.tty,
            "OpenStdin": cfg.interactive,
        });
    }
    v
}

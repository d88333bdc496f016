//! Runs a spec with an external OCI runtime (`runc`, `crun`) instead of the built-in sandbox.
//!
//! The overlay root is mounted here, in the engine's mount namespace, and its mount points are
//! created (and recorded) exactly as the built-in sandbox does, so that both runtimes leave the
//! same changes in the upper layer. A bundle (`config.json` from the same spec, `root.path` =
//! the overlay, no hooks) is written to the state directory and `RUNTIME run --bundle DIR ID`
//! runs it with the same standard streams. The runtime keeps its state under the state
//! directory (`--root`), so that nothing is shared between runs.

mod cgroups;
mod init;
pub(crate) mod watch;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::mount::{umount2, MntFlags};
use oci_spec::runtime::{Mount, MountBuilder, Spec};

use crate::sandbox::mounts::Mounter;
use crate::sandbox::overlay::{mount_overlay, Layers};
use crate::{ExecError, OutputSink, RunOutcome, SandboxConfig};

/// What runs a [`SandboxConfig`]'s spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Runtime {
    /// kiln's own sandbox (a re-exec of the current binary).
    #[default]
    Builtin,
    /// An OCI runtime binary (a name looked up in PATH, or a path) that understands
    /// `--root DIR --log FILE --log-format json run --bundle DIR ID`, as `runc` and `crun` do.
    Oci(String),
}

impl FromStr for Runtime {
    type Err = ExecError;

    /// `builtin` (or `kiln`), `runc`, `crun`, or the path of another OCI runtime.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "builtin" | "kiln" => Ok(Runtime::Builtin),
            "runc" | "crun" => Ok(Runtime::Oci(s.to_string())),
            path if path.starts_with('/') => Ok(Runtime::Oci(path.to_string())),
            other => Err(ExecError::InvalidConfig(format!(
                "unknown runtime `{other}`: use `builtin`, `runc`, `crun` or the absolute path of an OCI runtime"
            ))),
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Runtime::Builtin => f.write_str("builtin"),
            Runtime::Oci(b) => f.write_str(b),
        }
    }
}

/// Name of the bundle directory in the state directory.
const BUNDLE_DIR: &str = "bundle";
/// The runtime's own state (`--root`), in the state directory.
const RUNTIME_ROOT: &str = "runtime";
/// The runtime's log (`--log`, JSON lines); its `error` entries are setup failures.
const RUNTIME_LOG: &str = "runtime.log";

/// Unmounts the overlay root when dropped.
struct RootMount {
    target: PathBuf,
}

impl Drop for RootMount {
    fn drop(&mut self) {
        // Detached: a process of a killed container may still hold it for a moment.
        let _ = umount2(&self.target, MntFlags::MNT_DETACH);
    }
}

/// Removes the container (and then unmounts its root) unless the run finished normally.
struct Container {
    binary: String,
    runtime_root: PathBuf,
    id: String,
    root: Option<RootMount>,
    finished: bool,
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The run was abandoned (its future dropped): the runtime process got SIGKILL, but the
        // container it started lives on until deleted. This waits for the runtime (tens of
        // milliseconds) on purpose: an engine that exits right after a cancel (Ctrl-C) must not
        // leave the container running.
        let _ = delete_command(&self.binary, &self.runtime_root, &self.id).status();
        self.root.take();
    }
}

/// `binary ... delete --force id`, silent: it kills the container's init if it still runs (and
/// with it the container's pid namespace) and removes the container.
pub(crate) fn delete_command(binary: &str, runtime_root: &Path, id: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(binary);
    cmd.args(global_args(binary))
        .arg("--root")
        .arg(runtime_root)
        .args(["delete", "--force", id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if cgroups::crun_needs_hiding(binary) {
        cgroups::hide_unified_controllers(&mut cmd);
    }
    cmd
}

/// The pid of the first process of the container the OCI runtime `binary` runs for the sandbox
/// whose state directory is `state_dir` (`kiln exec` joins its namespaces), from the runtime's
/// own `state` of it; `None` when no container of it is running.
pub fn oci_container_pid(binary: &str, state_dir: &Path) -> Option<u32> {
    let runtime_root = state_dir.join(RUNTIME_ROOT);
    let id = std::fs::read_dir(&runtime_root)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| n.starts_with("kiln-"))?;
    let mut cmd = std::process::Command::new(locate(binary)?);
    cmd.args(global_args(binary))
        .arg("--root")
        .arg(&runtime_root)
        .args(["state", &id])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if cgroups::crun_needs_hiding(binary) {
        cgroups::hide_unified_controllers(&mut cmd);
    }
    let out = cmd.output().ok()?;
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    if state["status"] != "running" {
        return None;
    }
    state["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)
}

/// The runtimes `--runtime` can use on this host: the built-in sandbox always, then each OCI
/// runtime kiln knows by name (`runc`, `crun`) that PATH has, found as a run would find it.
pub fn installed_runtimes() -> Vec<Runtime> {
    let mut found = vec![Runtime::Builtin];
    for name in ["runc", "crun"] {
        if locate(name).is_some() {
            found.push(Runtime::Oci(name.to_string()));
        }
    }
    found
}

/// The runtime `binary` as the watcher will run it: a path, or the first match in PATH.
fn locate(binary: &str) -> Option<PathBuf> {
    let is_exe = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|md| md.is_file() && md.permissions().mode() & 0o111 != 0)
    };
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return is_exe(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| is_exe(p))
}

/// Options the runtime `binary` needs before its command. crun is told not to manage cgroups:
/// kiln has put it in the step's cgroup already (`cgroups.rs`), and crun refuses to start at
/// all on a host with cgroup v1 and v2 hierarchies both mounted (hybrid mode: see
/// `oci/cgroups.rs`). runc needs nothing: it makes a cgroup of its own below kiln's, with the
/// spec's `linux.resources`.
fn global_args(binary: &str) -> &'static [&'static str] {
    if runs_without_cgroups(binary) {
        &["--cgroup-manager=disabled"]
    } else {
        &[]
    }
}

/// Whether the runtime `binary` runs containers without cgroups (crun, see [`global_args`]).
fn runs_without_cgroups(binary: &str) -> bool {
    Path::new(binary).file_name().and_then(|n| n.to_str()) == Some("crun")
}

/// Say once per process that a device node an image ships opens under `binary`: it runs
/// without a cgroup manager, so without a device filter, and remounts the root without
/// `nodev`, and kiln could not make a v1 device cgroup for it (a cgroup v2 host, where device
/// rules are an eBPF program kiln does not load). Not rootless: nodes in a user namespace's
/// mounts never open (`SB_I_NODEV`).
fn warn_device_nodes_open(binary: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if crate::rootless::in_user_namespace()
        || WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        return;
    }
    eprintln!(
        "warning: under `{binary}` on this host a device node that a base image ships can be opened by a step (no device cgroup); build untrusted images with the built-in sandbox or `--runtime runc`"
    );
}

/// Without a device cgroup (see [`warn_device_nodes_open`]), and with a root crun remounts
/// without `nodev` (it binds the root onto itself and resets the flags), only seccomp keeps a
/// step from making a device node it could open: see [`crate::seccomp_profile::refuse_device_nodes`].
/// A spec without seccomp gets a profile that allows everything else. Under a device cgroup
/// `mknod` works as with the other runtimes: the node stays in the layer and never opens.
fn refuse_device_nodes(spec: &mut Spec) -> Result<(), ExecError> {
    let Some(mut linux) = spec.linux().clone() else {
        return Ok(());
    };
    let mut profile = match linux.seccomp().clone() {
        Some(p) => p,
        None => oci_spec::runtime::LinuxSeccompBuilder::default()
            .default_action(oci_spec::runtime::LinuxSeccompAction::ScmpActAllow)
            .build()
            .map_err(ExecError::Spec)?,
    };
    crate::seccomp_profile::refuse_device_nodes(&mut profile)?;
    linux.set_seccomp(Some(profile));
    spec.set_linux(Some(linux));
    Ok(())
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ExecError {
    let path = path.to_path_buf();
    move |source| ExecError::Io {
        what,
        path,
        cause: source,
    }
}

/// What [`prepare`] set up: the mounted root, the bundle and the created mount points.
struct Prepared {
    root: RootMount,
    bundle: PathBuf,
    created: Vec<PathBuf>,
}

/// Mounts the root, creates the mount points and writes the bundle with `init` as its process
/// (blocking). `device_cgroup`: the run's cgroup lets only the standard devices open.
fn prepare(
    config: &SandboxConfig,
    init: &Path,
    binary: &str,
    device_cgroup: bool,
) -> Result<Prepared, ExecError> {
    let rootfs = &config.rootfs;
    let (upper, work, scratch) = match (&rootfs.upper, &rootfs.work) {
        (Some(u), Some(w)) => (u.clone(), w.clone(), false),
        _ => {
            // As the built-in sandbox: a throwaway upper holds the mount points of a root that
            // ends read-only.
            let scratch = config.state_dir.join(crate::wire::SCRATCH_DIR);
            let _ = std::fs::remove_dir_all(&scratch);
            let (u, w) = (scratch.join("upper"), scratch.join("work"));
            for d in [&u, &w] {
                std::fs::create_dir_all(d).map_err(io("cannot create", d))?;
            }
            (u, w, true)
        }
    };
    let layers = Layers {
        lower: &rootfs.lower,
        upper: &upper,
        work: &work,
        userxattr: crate::rootless::in_user_namespace(),
    };
    mount_overlay(&layers, &rootfs.target).map_err(ExecError::Setup)?;
    let root = RootMount {
        target: rootfs.target.clone(),
    };

    let mut spec: Spec = config.spec.clone();
    let mounts = match spec.mounts() {
        Some(m) => m.clone(),
        None => crate::spec::default_mounts()?,
    };
    let mounts = if crate::rootless::in_user_namespace() {
        rootless_mounts(mounts, &spec)?
    } else {
        mounts
    };
    // Rootless, the runtime binds the host's nodes itself (a user namespace cannot mknod), and
    // would fail opening ours (`/dev/tty` without a terminal) to bind over them.
    let mut mounts = without_device_nodes(mounts, !crate::rootless::in_user_namespace())?;
    // Last, so that no `RUN --mount` can hide it.
    mounts.push(init::mount(init)?);
    init::wrap(&mut spec);
    let mut mounter = Mounter::new(&rootfs.target);
    let mut points = Ok(());
    for m in &mounts {
        points = mounter.prepare_point(m);
        if points.is_err() {
            break;
        }
    }
    let created = std::mem::take(&mut mounter.created);
    let cleanup = |created: &[PathBuf]| {
        for rel in created.iter().rev() {
            let p = rootfs.target.join(rel);
            let _ = std::fs::remove_dir(&p).or_else(|_| std::fs::remove_file(&p));
        }
    };
    if let Err(msg) = points {
        cleanup(&created);
        return Err(ExecError::Setup(msg));
    }
    // runc and crun create a missing working directory; the built-in sandbox refuses it (the
    // step would otherwise change the layer behind the user's back): refuse it here too.
    if let Some(process) = spec.process() {
        let cwd = process.cwd();
        if mounter.missing_on_rootfs(cwd).map_err(ExecError::Setup)? {
            cleanup(&created);
            return Err(ExecError::Setup(format!(
                "working directory `{}` does not exist in the image; create it first (e.g. `WORKDIR` or `mkdir -p`)",
                cwd.display()
            )));
        }
    }

    let spec_ro = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let root_spec = oci_spec::runtime::RootBuilder::default()
        .path(rootfs.target.clone())
        .readonly(scratch || spec_ro)
        .build()
        .map_err(ExecError::Spec)?;
    spec.set_root(Some(root_spec));
    cap_rlimits(&mut spec);
    if runs_without_cgroups(binary) && !device_cgroup {
        refuse_device_nodes(&mut spec)?;
    }
    spec.set_mounts(Some(mounts));
    spec.set_hooks(None);
    let bundle = config.state_dir.join(BUNDLE_DIR);
    std::fs::create_dir_all(&bundle).map_err(io("cannot create the bundle directory", &bundle))?;
    let json = serde_json::to_vec_pretty(&spec).map_err(|cause| ExecError::Json {
        what: "the spec",
        cause,
    })?;
    let path = bundle.join("config.json");
    std::fs::write(&path, json).map_err(io("cannot write", &path))?;
    Ok(Prepared {
        root,
        bundle,
        created,
    })
}

/// The mounts as rootless runc has them (`runc spec --rootless`): a user namespace may mount
/// sysfs only with a network namespace of its own, so the host's /sys is bound read-only
/// instead; and devpts cannot take `gid=5` when only root is mapped. The built-in sandbox makes
/// the same two changes when the kernel refuses the mounts.
fn rootless_mounts(mounts: Vec<Mount>, spec: &Spec) -> Result<Vec<Mount>, ExecError> {
    let own_netns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
        });
    let subids = crate::rootless::has_subordinate_ids();
    mounts
        .into_iter()
        .map(|m| {
            let typ = m.typ().as_deref().unwrap_or("");
            if typ == "sysfs" && !own_netns {
                return MountBuilder::default()
                    .destination(m.destination().clone())
                    .typ("none".to_string())
                    .source(PathBuf::from("/sys"))
                    .options(
                        ["rbind", "nosuid", "noexec", "nodev", "ro"]
                            .iter()
                            .map(|o| o.to_string())
                            .collect::<Vec<_>>(),
                    )
                    .build()
                    .map_err(ExecError::Spec);
            }
            if typ == "devpts" && !subids {
                let mut m = m;
                let opts: Vec<String> = m
                    .options()
                    .iter()
                    .flatten()
                    .filter(|o| !o.starts_with("gid="))
                    .cloned()
                    .collect();
                m.set_options(Some(opts));
                return Ok(m);
            }
            Ok(m)
        })
        .collect()
}

/// The mounts with `nodev` on every one but devpts, as the built-in sandbox mounts them, and
/// (with `bind_devices`) the host's standard devices bound into a `/dev` tmpfs: a node a step makes (`mknod`) in the
/// root, `/dev` or a cache or bind mount then never opens. crun runs without a cgroup manager
/// (see [`global_args`]), so only kiln's own device cgroup would stop it there, where the host
/// has one (`cgroups.rs`). runc and crun find the standard
/// nodes already in place and keep them (their `mknod` fails with `EEXIST`).
fn without_device_nodes(mounts: Vec<Mount>, bind_devices: bool) -> Result<Vec<Mount>, ExecError> {
    let mut out = Vec::with_capacity(mounts.len() + crate::spec::STANDARD_DEVICES.len());
    for mut m in mounts {
        let typ = m.typ().as_deref().unwrap_or("").to_string();
        let dev_tmpfs = typ == "tmpfs" && m.destination() == Path::new("/dev");
        if typ != "devpts" {
            let mut opts = m.options().clone().unwrap_or_default();
            opts.retain(|o| o != "dev" && o != "rdev");
            // `rnodev` (mount_setattr, recursive) for an `rbind` of a directory: `nodev` alone
            // leaves the mounts below the source as they are (a devtmpfs mounted in the build
            // context). Not for files, which have nothing below them and which crun then fails
            // to open as a directory.
            let recursive = opts.iter().any(|o| o == "rbind")
                && m.source().as_ref().is_some_and(|s| s.is_dir());
            for flag in ["nodev", "rnodev"] {
                if (flag == "nodev" || recursive) && !opts.iter().any(|o| o == flag) {
                    opts.push(flag.to_string());
                }
            }
            m.set_options(Some(opts));
        }
        out.push(m);
        if dev_tmpfs && bind_devices {
            for name in crate::spec::STANDARD_DEVICES {
                let host = Path::new("/dev").join(name);
                if !host.exists() {
                    continue;
                }
                out.push(
                    MountBuilder::default()
                        .destination(host.clone())
                        .typ("bind".to_string())
                        .source(host)
                        .options(vec!["bind".to_string(), "nosuid".to_string()])
                        .build()
                        .map_err(ExecError::Spec)?,
                );
            }
        }
    }
    Ok(out)
}

/// Whether this process may raise hard resource limits: CAP_SYS_RESOURCE counts only in the
/// host's user namespace.
fn can_raise_hard_limits() -> bool {
    let initial_userns = kiln_sys::in_initial_user_namespace() == Some(true);
    let cap_sys_resource = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|eff| eff & (1 << 24) != 0);
    initial_userns && cap_sys_resource
}

/// Lower the spec's hard limits the engine could not grant to its own, as the built-in sandbox
/// does when it gets EPERM: runc and crun would refuse to start instead.
fn cap_rlimits(spec: &mut Spec) {
    if can_raise_hard_limits() {
        return;
    }
    let Some(mut process) = spec.process().clone() else {
        return;
    };
    let Some(mut rlimits) = process.rlimits().clone() else {
        return;
    };
    for limit in rlimits.iter_mut() {
        let Some(resource) = crate::sandbox::command::rlimit_resource(limit.typ()) else {
            continue;
        };
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit struct we own.
        if unsafe { libc::getrlimit(resource, &mut current) } < 0 {
            continue;
        }
        if limit.hard() > current.rlim_max {
            let lowered = oci_spec::runtime::PosixRlimitBuilder::default()
                .typ(limit.typ())
                .hard(current.rlim_max)
                .soft(limit.soft().min(current.rlim_max))
                .build();
            if let Ok(l) = lowered {
                *limit = l;
            }
        }
    }
    process.set_rlimits(Some(rlimits));
    spec.set_process(Some(process));
}

/// The messages of the runtime log's `error` entries.
fn log_errors(log: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(log)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "error")
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .collect()
}

/// Run `config` with the OCI runtime `binary`; see [`crate::run`].
pub(crate) async fn run(
    config: SandboxConfig,
    binary: &str,
    mut sink: Option<Box<dyn OutputSink>>,
) -> Result<RunOutcome, ExecError> {
    let writable = config.rootfs.upper.is_some();
    let layers = (config.rootfs.lower.clone(), config.rootfs.upper.clone());
    let stdio = config.stdio;
    let state_dir = config.state_dir.clone();
    let init = init::find(binary)?;
    let runtime = binary.to_string();
    // The runtime process joins it before it execs, so that the container's limits hold (and
    // an out-of-memory kill is seen) whatever the runtime does with `linux.resources`: crun
    // runs without a cgroup manager here.
    let cgroup = crate::cgroups::Cgroup::create(&config.spec, !runs_without_cgroups(binary));
    let device_cgroup = cgroup.as_ref().is_some_and(|c| c.restricts_devices());
    if runs_without_cgroups(binary) && !device_cgroup {
        warn_device_nodes_open(binary);
    }
    let mut config = config;
    crate::cgroups::Cgroup::keep_enforceable(&mut config.spec, cgroup.as_ref());
    let prepared =
        tokio::task::spawn_blocking(move || prepare(&config, &init, &runtime, device_cgroup))
            .await
            .map_err(|cause| ExecError::Task {
                what: "the bundle preparation stopped",
                cause,
            })??;
    let runtime_root = state_dir.join(RUNTIME_ROOT);
    let log = state_dir.join(RUNTIME_LOG);
    let _ = tokio::fs::remove_file(&log).await;
    let id = format!("kiln-{}", crate::spawn::unique_name());
    let container_rootfs = prepared.root.target.clone();
    let mut container = Container {
        binary: binary.to_string(),
        runtime_root: runtime_root.clone(),
        id: id.clone(),
        root: Some(prepared.root),
        finished: false,
    };

    let not_started = |message: String| ExecError::Runtime {
        runtime: binary.to_string(),
        message,
    };
    let Some(located) = locate(binary) else {
        container.finished = true;
        return Err(not_started(
            "not found; install it (`apt-get install runc`) or leave `--runtime` out to use the built-in sandbox".to_string(),
        ));
    };
    let mut runtime_args: Vec<std::ffi::OsString> =
        global_args(binary).iter().map(|a| a.into()).collect();
    runtime_args.extend([
        "--root".into(),
        runtime_root.clone().into_os_string(),
        "--log".into(),
        log.clone().into_os_string(),
        "--log-format".into(),
        "json".into(),
        "run".into(),
        "--bundle".into(),
        prepared.bundle.clone().into_os_string(),
        id.clone().into(),
    ]);
    // The runtime runs under a watcher that takes the container down if this process dies
    // (see `oci/watch.rs`); `alive` is held until the watcher is gone.
    let (engine_end, alive) = crate::spawn::child_pipe()
        .map_err(|e| not_started(format!("cannot create a pipe: {e}")))?;
    let watch = watch::Watch {
        alive_fd: engine_end.as_raw_fd(),
        rootfs: &container_rootfs,
        runtime_root: &runtime_root,
        id: &id,
    };
    let exe = crate::spawn::sandbox_exe()?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.args(watch::args(&watch, &located, &runtime_args));
    let held = match stdio.apply_to(&mut cmd) {
        Ok(h) => h,
        Err(e) => {
            container.finished = true;
            return Err(e);
        }
    };
    cmd.kill_on_drop(true);
    crate::spawn::inherit(cmd.as_std_mut(), [engine_end.as_raw_fd()]);
    // The watcher (and so the runtime it starts) is in the step's cgroup before it execs.
    if let Some(cg) = &cgroup {
        cg.join_before_exec(cmd.as_std_mut());
    }
    let spawned = cmd.spawn();
    // With it go this side's copies of a terminal's slave end (see `crate::run`).
    drop(cmd);
    drop(engine_end);
    let mut child = match spawned {
        Ok(c) => c,
        Err(source) => {
            container.finished = true;
            return Err(not_started(format!(
                "cannot start it (through `{}`): {source}",
                exe.display()
            )));
        }
    };
    crate::spawn::record_pid(&state_dir, child.id());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    crate::spawn::pump_stdio(held.terminal, held.relay, stdout, stderr, &mut sink).await;
    let status = child.wait().await.map_err(|source| ExecError::Io {
        what: "cannot wait for the OCI runtime",
        path: PathBuf::from(binary),
        cause: source,
    })?;
    drop(alive);
    drop(held.input);
    // `run` (not detached) deletes the container when its process exits; a runtime killed by a
    // signal may not have: then the guard deletes it.
    container.finished = status.code().is_some();
    drop(container);
    if let (lower, Some(upper)) = &layers {
        crate::stubs::remove(lower, upper, &prepared.created);
    }
    if !writable {
        let _ = tokio::fs::remove_dir_all(state_dir.join(crate::wire::SCRATCH_DIR)).await;
    }

    use std::os::unix::process::ExitStatusExt;
    let exit_code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    };
    let out_of_memory = cgroup.as_ref().and_then(|c| c.out_of_memory(exit_code));
    let pids_limit_reached = cgroup.as_ref().and_then(|c| c.pids_limit_reached());
    drop(cgroup);
    if exit_code != 0 {
        let errors = log_errors(&tokio::fs::read(&log).await.unwrap_or_default());
        if !errors.is_empty() {
            return Err(ExecError::Runtime {
                runtime: binary.to_string(),
                message: errors.join("; "),
            });
        }
    }
    Ok(RunOutcome {
        exit_code,
        created_mountpoints: if writable {
            prepared.created
        } else {
            Vec::new()
        },
        out_of_memory,
        pids_limit_reached,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap_or_default()
    }

    #[test]
    fn every_mount_but_devpts_is_nodev_and_dev_gets_the_standard_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, "").unwrap();
        let bind = |dest: &str, source: &Path| {
            MountBuilder::default()
                .destination(PathBuf::from(dest))
                .typ("bind".to_string())
                .source(source.to_path_buf())
                .options(vec!["rbind".to_string(), "dev".to_string()])
                .build()
                .unwrap()
        };
        let mut mounts = crate::spec::default_mounts().unwrap();
        mounts.push(bind("/ctx", dir.path()));
        mounts.push(bind("/etc/hosts", &file));
        let out = without_device_nodes(mounts.clone(), true).unwrap();
        for m in &out {
            let o = opts(m);
            let dest = m.destination().to_string_lossy().into_owned();
            assert!(!o.contains(&"dev".to_string()), "{dest}: {o:?}");
            if m.typ().as_deref() == Some("devpts") {
                assert!(!o.contains(&"nodev".to_string()), "{dest}: {o:?}");
            } else if !dest.starts_with("/dev/") || dest == "/dev/shm" || dest == "/dev/mqueue" {
                assert!(o.contains(&"nodev".to_string()), "{dest}: {o:?}");
            }
            // Only a directory's rbind is made nodev below it: crun fails on files.
            assert_eq!(
                o.contains(&"rnodev".to_string()),
                dest == "/ctx",
                "{dest}: {o:?}"
            );
        }
        let dev = out
            .iter()
            .position(|m| m.destination() == Path::new("/dev"))
            .unwrap();
        let null = out
            .iter()
            .position(|m| m.destination() == Path::new("/dev/null"))
            .expect("/dev/null is bound from the host");
        assert!(null > dev, "bound after the /dev tmpfs is mounted");
        assert!(!opts(&out[null]).contains(&"nodev".to_string()));
        assert_eq!(out[null].source().as_deref(), Some(Path::new("/dev/null")));
        // Rootless, the runtime binds them itself.
        let rootless = without_device_nodes(mounts.clone(), false).unwrap();
        assert_eq!(rootless.len(), mounts.len());
    }

    #[test]
    fn runtime_names_parse() {
        assert_eq!(
            "runc".parse::<Runtime>().unwrap(),
            Runtime::Oci("runc".into())
        );
        assert_eq!(
            "crun".parse::<Runtime>().unwrap(),
            Runtime::Oci("crun".into())
        );
        assert_eq!("builtin".parse::<Runtime>().unwrap(), Runtime::Builtin);
        assert_eq!(
            "/opt/bin/youki".parse::<Runtime>().unwrap(),
            Runtime::Oci("/opt/bin/youki".into())
        );
        let err = "docker".parse::<Runtime>().unwrap_err().to_string();
        assert!(err.contains("unknown runtime `docker`"), "{err}");
    }

    #[test]
    fn only_error_entries_of_the_log_count() {
        let log = br#"{"level":"warning","msg":"cgroup ignored","time":"x"}
{"level":"error","msg":"runc run failed: exec: \"nope\": executable file not found in $PATH","time":"x"}
not json
"#;
        assert_eq!(
            log_errors(log),
            vec!["runc run failed: exec: \"nope\": executable file not found in $PATH".to_string()]
        );
        assert!(log_errors(b"").is_empty());
    }
}

//! The engine side: re-executes the sandbox helper, feeds it the config and collects output and result.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use crate::spawn::{child_pipe, inherit, sandbox_exe};
use crate::wire::{WireConfig, WireResult, RESULT_FILE, SANDBOX_ARG, SCRATCH_DIR};
use crate::{ExecError, OutputSink, RunOutcome, SandboxConfig};

pub(crate) fn validate(config: &SandboxConfig) -> Result<(), ExecError> {
    let invalid = |m: &str| Err(ExecError::InvalidConfig(m.to_string()));
    let Some(process) = config.spec.process() else {
        return invalid("the spec has no `process`; build it with `default_spec`");
    };
    match process.args() {
        Some(a) if !a.is_empty() => {}
        _ => return invalid("`process.args` is empty; give at least the program to run"),
    }
    if !process.cwd().is_absolute() {
        return Err(ExecError::InvalidConfig(format!(
            "`process.cwd` `{}` is not absolute; start it with `/`",
            process.cwd().display()
        )));
    }
    let rootfs = &config.rootfs;
    if rootfs.lower.is_empty() {
        return invalid("`rootfs.lower` is empty; give at least one layer directory");
    }
    if rootfs.lower.len() > crate::MAX_LAYERS {
        // The kernel's own answer would be a bare `Invalid argument` from the mount.
        return Err(ExecError::TooManyLayers {
            layers: rootfs.lower.len(),
            max: crate::MAX_LAYERS,
        });
    }
    if rootfs.upper.is_some() != rootfs.work.is_some() {
        return invalid("`rootfs.upper` and `rootfs.work` must be given together");
    }
    if !rootfs.target.is_dir() {
        return Err(ExecError::InvalidConfig(format!(
            "`rootfs.target` `{}` is not a directory; create an empty one",
            rootfs.target.display()
        )));
    }
    for dir in rootfs
        .lower
        .iter()
        .chain(rootfs.upper.iter())
        .chain(rootfs.work.iter())
    {
        if !dir.is_dir() {
            return Err(ExecError::InvalidConfig(format!(
                "rootfs layer `{}` is not a directory",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Run `config.spec`'s process in a sandbox and wait for it.
///
/// A command that exits non-zero is `Ok` with its code; `Err` means the sandbox itself could not
/// be started or set up. Dropping the future kills the sandbox and everything in it. The helper
/// is `std::env::current_exe()`, or `KILN_SANDBOX_EXE` when set; with [`Stdio::Piped`](crate::Stdio::Piped) and no
/// sink, output is discarded.
pub async fn run(
    config: SandboxConfig,
    mut sink: Option<Box<dyn OutputSink>>,
) -> Result<RunOutcome, ExecError> {
    validate(&config)?;
    let exe = sandbox_exe()?;
    tokio::fs::create_dir_all(&config.state_dir)
        .await
        .map_err(|source| ExecError::Io {
            what: "cannot create the sandbox state directory",
            path: config.state_dir.clone(),
            cause: source,
        })?;
    let mut config = config;
    crate::etc::provide(&mut config.spec, &config.state_dir, config.network)?;
    if let crate::Runtime::Oci(binary) = &config.runtime {
        let binary = binary.clone();
        return crate::oci::run(config, &binary, sink).await;
    }
    let result_path = config.state_dir.join(RESULT_FILE);
    match tokio::fs::remove_file(&result_path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ExecError::Io {
                what: "cannot remove the old sandbox result",
                path: result_path,
                cause: source,
            })
        }
    }

    let writable = config.rootfs.upper.is_some();
    let layers = (config.rootfs.lower.clone(), config.rootfs.upper.clone());
    let mut cgroup = crate::cgroups::Cgroup::create(&config.spec, false);
    let wire = WireConfig {
        spec: config.spec,
        rootfs: config.rootfs,
        network: config.network,
        state_dir: config.state_dir,
        own_terminal: config.stdio.own_terminal(),
    };
    let wire_state_dir = wire.state_dir.clone();
    let payload = serde_json::to_vec(&wire).map_err(|cause| ExecError::Json {
        what: "the spec",
        cause,
    })?;

    let spawn_err = |e: nix::Error| ExecError::Spawn {
        exe: exe.clone(),
        cause: e.into(),
    };
    let (read_end, write_end) = child_pipe().map_err(spawn_err)?;
    let (engine_end, alive) = child_pipe().map_err(spawn_err)?;
    let read_fd = read_end.as_raw_fd();

    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg(SANDBOX_ARG)
        .arg(read_fd.to_string())
        .arg(engine_end.as_raw_fd().to_string());
    let held = config.stdio.apply_to(&mut cmd)?;
    cmd.kill_on_drop(true);
    inherit(cmd.as_std_mut(), [read_fd, engine_end.as_raw_fd()]);
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        exe: exe.clone(),
        cause: source,
    })?;
    // With it go this side's copies of a terminal's slave end: the master then hangs up once
    // the sandbox is gone.
    drop(cmd);
    drop(read_end);
    drop(engine_end);
    crate::spawn::record_pid(&wire_state_dir, child.id());
    // The helper reads its config before it forks anything: moved now, all it starts is in
    // the cgroup from the first instruction.
    if let (Some(cg), Some(pid)) = (&cgroup, child.id()) {
        if !cg.add(pid) {
            cgroup = None;
        }
    }

    let writer = tokio::task::spawn_blocking(move || write_config(write_end, &payload));

    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    crate::spawn::pump_stdio(held.terminal, held.relay, stdout, stderr, &mut sink).await;

    let status = child.wait().await.map_err(|source| ExecError::Io {
        what: "cannot wait for the sandbox helper",
        path: exe.clone(),
        cause: source,
    })?;
    // A write error only means the helper died early; its status and result tell why.
    let _ = writer.await;
    // Held until the helper is gone: its closing (this process exiting, however) is what tells
    // the helper to take the step down.
    drop(alive);
    drop(held.input);

    let exit_code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    };
    let out_of_memory = cgroup.as_ref().and_then(|c| c.out_of_memory(exit_code));
    let pids_limit_reached = cgroup.as_ref().and_then(|c| c.pids_limit_reached());
    drop(cgroup);
    let result = read_result(&result_path).await;
    if !writable {
        let _ = tokio::fs::remove_dir_all(wire_state_dir.join(SCRATCH_DIR)).await;
    }
    match result {
        Some(WireResult {
            error: Some(message),
            ..
        }) => Err(ExecError::Setup(message)),
        Some(WireResult {
            created_mountpoints,
            error: None,
        }) => {
            if let (lower, Some(upper)) = &layers {
                crate::stubs::remove(lower, upper, &created_mountpoints);
            }
            Ok(RunOutcome {
                exit_code,
                // Without an upper layer they were made in a scratch layer: nothing to clean up.
                created_mountpoints: if writable {
                    created_mountpoints
                } else {
                    Vec::new()
                },
                out_of_memory,
                pids_limit_reached,
            })
        }
        None => Err(ExecError::NoResult {
            exe,
            status: status.to_string(),
        }),
    }
}

fn write_config(fd: OwnedFd, payload: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::from(fd);
    f.write_all(payload)
}

async fn read_result(path: &Path) -> Option<WireResult> {
    let bytes = tokio::fs::read(path).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// One more process in a running built-in sandbox (`kiln exec`).
#[derive(Clone, Debug)]
pub struct EnterRequest {
    /// Host pid of the sandbox's init: a child of the helper whose pid [`crate::PID_FILE`] holds.
    pub init_pid: u32,
    /// What to run: args, env, cwd, terminal, capabilities, rlimits (usually the container's
    /// process with the command replaced).
    pub process: oci_spec::runtime::Process,
    /// The container's seccomp profile.
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
    /// `-u`: a user resolved against the container's own `/etc/passwd` and `/etc/group`.
    pub user: Option<String>,
}

/// Runs `req.process` in the namespaces, cgroups and root of a running sandbox, with this
/// process's stdin, stdout and stderr, and waits for it: its exit code, 125 when it could not be
/// started there (the helper says why on stderr). Blocks.
pub fn enter(req: EnterRequest) -> Result<i32, ExecError> {
    let exe = sandbox_exe()?;
    let payload = serde_json::to_vec(&crate::wire::EnterConfig {
        init_pid: req.init_pid,
        process: req.process,
        seccomp: req.seccomp,
        user: req.user,
    })
    .map_err(|cause| ExecError::Json {
        what: "the exec config",
        cause,
    })?;
    let spawn_err = |e: nix::Error| ExecError::Spawn {
        exe: exe.clone(),
        cause: e.into(),
    };
    let (read_end, write_end) = child_pipe().map_err(spawn_err)?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg(crate::sandbox::enter::ENTER_ARG)
        .arg(read_end.as_raw_fd().to_string());
    inherit(&mut cmd, [read_end.as_raw_fd()]);
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        exe: exe.clone(),
        cause: source,
    })?;
    drop(read_end);
    // A write error only means the helper died early; its status says how.
    let _ = write_config(write_end, &payload);
    let status = child.wait().map_err(|source| ExecError::Io {
        what: "cannot wait for the exec helper",
        path: exe.clone(),
        cause: source,
    })?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    })
}

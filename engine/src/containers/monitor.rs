//! The per-container monitor: runs the container's sandbox (again on `--restart`), keeps its
//! log, and records its state, so that the container outlives the `kiln` that started it.
//!
//! A detached container's monitor is `kiln __kiln-monitor DIR`, a new session of its own; a
//! foreground `kiln run` is its own container's monitor (and the container dies with it).

use super::logs::{LogWriter, ShownAndLogged};
use super::state::{self, ContainerState, Status};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Hidden first argument that turns a kiln binary into a container's monitor.
pub(crate) const MONITOR_ARG: &str = "__kiln-monitor";

/// Where the command's standard streams go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attach {
    /// The caller's own (a foreground `kiln run`).
    Caller,
    /// The container's log (a detached container).
    Log,
}

/// Runs the monitor when this process was started as one, and never returns then.
pub fn monitor_main_if_requested() {
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() != Some(std::ffi::OsStr::new(MONITOR_ARG)) {
        return;
    }
    let Some(dir) = args.next().map(PathBuf::from) else {
        std::process::exit(125);
    };
    // A session of its own: no terminal's hang-up or Ctrl-C reaches it. It fails only for a
    // process group leader, which a freshly spawned child is not.
    let _ = nix::unistd::setsid();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            record_failure(&dir, &format!("cannot start the monitor's runtime: {e}"));
            std::process::exit(125);
        }
    };
    let code = match runtime.block_on(supervise(&dir, Attach::Log)) {
        Ok(st) => st.exit_code.unwrap_or(125),
        Err(e) => {
            record_failure(&dir, &format!("{e:#}"));
            125
        }
    };
    std::process::exit(code);
}

fn record_failure(dir: &Path, error: &str) {
    let mut s = state::read_state(dir);
    s.status = Status::Exited;
    s.exit_code = Some(125);
    s.error = Some(error.to_string());
    s.finished_at = Some(state::now());
    let _ = state::write_json(dir, state::STATE_FILE, &s);
}

/// Starts `kiln __kiln-monitor DIR` for a container and returns once its sandbox is started
/// (so that it can be signalled) or it has already exited.
pub(crate) fn spawn_detached(dir: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the kiln binary to start a monitor")?;
    let child = std::process::Command::new(&exe)
        .arg(MONITOR_ARG)
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start the container's monitor `{}`", exe.display()))?;
    let pid = child.id();
    // Not waited for: it outlives this process and is then reaped by init.
    drop(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = state::read_state(dir);
        let sandbox_up = state::sandbox_state_dir(dir)
            .join(kiln_exec::PID_FILE)
            .exists();
        if s.monitor_pid == pid && (sandbox_up || s.status == Status::Exited) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the container's monitor (pid {pid}) did not start within 10 s; see `{}`",
                dir.join(state::STATE_FILE).display()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs the container until it exits for good (restarting it as `--restart` says), recording
/// each change in `state.json`; removes it afterwards with `--rm`. Returns its last state.
pub(crate) async fn supervise(dir: &Path, attach: Attach) -> Result<ContainerState> {
    let config = state::read_config(dir)?;
    let runtime: kiln_exec::Runtime = config.runtime.parse()?;
    let me = std::process::id();
    let mut st = ContainerState {
        monitor_pid: me,
        monitor_start: state::start_time(me).unwrap_or(0),
        ..Default::default()
    };
    let _ = std::fs::remove_file(dir.join(state::STOP_MARKER));
    if !config.ports.is_empty() {
        // The proxies outlive restarts: each connection goes to the init running then.
        let pid_file = state::sandbox_state_dir(dir).join(kiln_exec::PID_FILE);
        let find_init: super::ports::FindInit = std::sync::Arc::new(move || {
            let helper: u32 = std::fs::read_to_string(&pid_file)
                .ok()?
                .trim()
                .parse()
                .ok()?;
            (state::parent_of(helper) == Some(me))
                .then(|| state::children_of(helper).first().copied())
                .flatten()
        });
        super::ports::start_proxies(&config.ports, find_init)?;
    }
    // Plugged in once: the namespace (and its address) outlives restarts, as the ports do.
    let attached: Option<crate::networks::Attached> = match &config.attachment {
        Some(a) => Some(crate::networks::attach(dir, a)?),
        None => None,
    };
    loop {
        st.status = Status::Running;
        st.started_at = Some(state::now());
        st.finished_at = None;
        st.exit_code = None;
        st.error = None;
        st.oom_killed = false;
        // The pid file tells `kiln run -d` (and `kiln kill`) that this run's sandbox exists.
        let _ = std::fs::remove_file(state::sandbox_state_dir(dir).join(kiln_exec::PID_FILE));
        state::write_json(dir, state::STATE_FILE, &st)?;
        // With `-t` the command gets a terminal of its own, relayed to the caller's, so its
        // output is logged as Docker's is. The OCI runtimes start it without one (they would
        // want a console socket), so there it writes to the caller's directly, unlogged.
        let relayed = config.tty && matches!(runtime, kiln_exec::Runtime::Builtin);
        let shown = attach == Attach::Caller && (!config.tty || relayed);
        let sink: Option<Box<dyn kiln_exec::OutputSink>> = match attach {
            Attach::Caller if config.tty && !relayed => None,
            Attach::Caller => Some(Box::new(ShownAndLogged(LogWriter::open(
                dir,
                config.log_max_size,
            )))),
            Attach::Log => Some(Box::new(LogWriter::open(dir, config.log_max_size))),
        };
        let outcome = kiln_exec::run(
            kiln_exec::SandboxConfig {
                spec: config.spec.clone(),
                rootfs: config.rootfs.clone(),
                network: config.network,
                stdio: match attach {
                    Attach::Caller if relayed => kiln_exec::Stdio::CallerTerminal {
                        input: config.interactive,
                    },
                    Attach::Caller if shown => kiln_exec::Stdio::InputPiped,
                    Attach::Caller => kiln_exec::Stdio::Inherit,
                    // As Docker's: `-t` gets a terminal of its own, `-i` an input that stays
                    // open (so `run -dit IMG sh` keeps its shell), and the output is logged.
                    Attach::Log if config.tty => kiln_exec::Stdio::Terminal,
                    Attach::Log if config.interactive => kiln_exec::Stdio::HeldInput,
                    Attach::Log => kiln_exec::Stdio::Piped,
                },
                state_dir: state::sandbox_state_dir(dir),
                runtime: runtime.clone(),
            },
            sink,
        )
        .await;
        let code = match outcome {
            Ok(o) => {
                if let Some(limit) = o.out_of_memory {
                    st.oom_killed = true;
                    st.error = Some(format!(
                        "out of memory: the container used its {} limit; give it more with `--memory`",
                        kiln_exec::format_size(limit)
                    ));
                }
                if let (Some(limit), None) = (o.pids_limit_reached, &st.error) {
                    st.error = Some(format!(
                        "the container reached its limit of {limit} processes: forks failed; raise it with `--pids-limit`"
                    ));
                }
                o.exit_code
            }
            Err(e) => {
                st.error = Some(e.to_string());
                125
            }
        };
        st.exit_code = Some(code);
        st.finished_at = Some(state::now());
        let stopped = dir.join(state::STOP_MARKER).exists();
        if stopped || !config.restart.restarts(code, st.restart_count) {
            st.status = Status::Exited;
            state::write_json(dir, state::STATE_FILE, &st)?;
            break;
        }
        st.restart_count += 1;
        st.status = Status::Restarting;
        state::write_json(dir, state::STATE_FILE, &st)?;
        // Docker's back-off: 100 ms, doubled each time, at most a minute.
        let delay = 100u64.saturating_mul(1 << st.restart_count.min(10)) / 2;
        tokio::time::sleep(Duration::from_millis(delay.min(60_000))).await;
        if dir.join(state::STOP_MARKER).exists() {
            st.status = Status::Exited;
            state::write_json(dir, state::STATE_FILE, &st)?;
            break;
        }
    }
    drop(attached);
    if config.auto_remove {
        super::remove_dir(dir);
        super::release_address(dir, &config);
        // Docker's `--rm` takes the container's anonymous volumes with it.
        super::remove_anonymous_volumes(dir, &config);
    }
    Ok(st)
}

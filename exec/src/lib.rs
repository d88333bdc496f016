//! kiln-exec runs one process in a Linux-namespaced sandbox over stacked directories.
//!
//! It knows nothing of snapshots or caches: it is given an OCI runtime spec
//! ([`oci_spec::runtime::Spec`]) and a [`RootFs`] (overlay lower/upper directories), and runs
//! the spec's process with its own mount, pid, UTS, IPC (and, for [`Network::None`], network)
//! namespaces.
//!
//! The engine is multi-threaded, so it never forks into namespaces itself: [`run`] re-executes
//! the current binary with the hidden argument `__kiln-sandbox` and hands it the spec over a
//! pipe. Every binary that calls [`run`] must therefore call [`sandbox_main_if_requested`] first
//! thing in `main()` (or point `KILN_SANDBOX_EXE` at one that does).
//!
//! With [`Runtime::Oci`] the same spec runs under `runc` or `crun` instead: the engine mounts
//! the overlay root itself and hands the runtime a bundle (see `oci.rs` and `oci/`) whose process is a static
//! `tini` with the command as its argument, so that the command is not pid 1 there either
//! (`oci/init.rs`).
//!
//! Process tree: helper (host pid ns, waits) → init (pid 1 of the new pid ns: mounts, pivots,
//! reaps, forwards SIGTERM/SIGINT) → command. When the init exits the kernel kills everything
//! left in the namespace; when the helper is killed (dropping the [`run`] future) the init gets
//! SIGKILL through `PR_SET_PDEATHSIG`. When the engine itself dies (`kill -9`), the helper sees
//! the engine's end of an "alive" pipe close and kills the init (`PR_SET_PDEATHSIG` on the
//! helper would fire when the engine *thread* that spawned it exits, not the engine).
//!
//! Every run gets a cgroup of its own with the spec's `linux.resources` ([`Limits`]: memory,
//! CPU, and a pids limit even when none is asked for) and, where the v1 `devices` controller
//! exists, Docker's device list (only the standard devices open); the helper (or the OCI
//! runtime) joins it before anything else runs, and it is emptied and removed after the run
//! (`cgroups.rs`).

mod cgroups;
mod emulation;
mod error;
mod etc;
mod extras;
mod oci;
mod rootless;
mod run;
mod sandbox;
mod seccomp_profile;
mod spawn;
mod spec;
mod stubs;
mod terminal;
mod user;
mod wire;

use std::os::fd::OwnedFd;
use std::path::PathBuf;

pub use cgroups::{format_size, parse_shm_size, parse_size, Limits, DEFAULT_PIDS_LIMIT};
pub use emulation::{
    binfmt_misc_dir, emulated_architectures, emulation_for, register_qemu_handlers, Emulation,
    Registration, RegistrationOutcome, BINFMT_MISC_DIR, QEMU_BINFMT_CONF_DIR,
};
pub use error::ExecError;
pub use extras::{parse_add_host, parse_ulimit, Ulimit};
pub use oci::{installed_runtimes, oci_container_pid, Runtime};
pub use rootless::{
    find_program, has_subordinate_ids, in_user_namespace, live_keeper, record_keeper,
    reexec_rootless_if_unprivileged, rootless_store_dir, spawn_network_keeper,
};
pub use run::{enter, run, EnterRequest};
pub use seccomp_profile::default_seccomp;
pub use spawn::PID_FILE;
pub use spec::{
    all_capabilities, default_spec, join_network_namespace, network_namespace_path, Network,
    ProcessSpec, DEFAULT_NOFILE, DEFAULT_PATH,
};
pub use user::{resolve_user, ResolvedUser};
pub use wire::RESULT_FILE;

/// The most read-only layers a root filesystem may stack: overlayfs's `OVL_MAX_STACK`, the same
/// through mount(2) and through `fsconfig` `lowerdir+`.
pub const MAX_LAYERS: usize = 500;

/// The directories stacked as the container's root filesystem.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RootFs {
    /// Read-only layers, top first. At least one.
    pub lower: Vec<PathBuf>,
    /// Where writes land (the new layer). `None`: the root is read-only and writes are refused.
    pub upper: Option<PathBuf>,
    /// overlayfs work directory, on the same filesystem as `upper`; required with `upper`.
    pub work: Option<PathBuf>,
    /// An empty directory used as the mount point of the root.
    pub target: PathBuf,
}

/// Where the command's stdin/stdout/stderr go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdio {
    /// The caller's own stdin, stdout and stderr.
    Inherit,
    /// `/dev/null` for all three.
    Null,
    /// stdin from `/dev/null`; stdout and stderr delivered to the [`OutputSink`].
    Piped,
    /// The caller's stdin; stdout and stderr delivered to the [`OutputSink`] (a foreground
    /// container, whose output is logged as it is shown).
    InputPiped,
    /// stdin a pipe nobody writes to, held open until the command ends (`docker run -d -i`: a
    /// command reading its input waits instead of seeing end of file); stdout and stderr
    /// delivered to the [`OutputSink`].
    HeldInput,
    /// A new pseudo-terminal for all three, and the command's controlling terminal (`-t` of a
    /// detached container); what the command writes to it is delivered to the [`OutputSink`]
    /// as stdout, as with Docker.
    Terminal,
    /// [`Stdio::Terminal`] relayed to the caller's own (`-t` in the foreground): the caller's
    /// window size is mirrored onto it and, with `input` (`-i`), the caller's terminal is put in
    /// raw mode and its keys relayed, so the output can be shown and logged at once.
    CallerTerminal { input: bool },
}

/// What [`Stdio::apply_to`] keeps on this side until the command ends.
#[derive(Default)]
pub(crate) struct HeldStdio {
    /// [`Stdio::Terminal`]'s master end, read as the command's output.
    pub terminal: Option<OwnedFd>,
    /// [`Stdio::HeldInput`]'s write end.
    pub input: Option<OwnedFd>,
    /// [`Stdio::CallerTerminal`]: relay the caller's terminal (and its input, when true).
    pub relay: Option<bool>,
}

impl Stdio {
    /// Whether the command gets a pseudo-terminal of its own (and a session around it).
    pub(crate) fn own_terminal(self) -> bool {
        matches!(self, Stdio::Terminal | Stdio::CallerTerminal { .. })
    }

    /// Set `cmd`'s stdin, stdout and stderr as this says.
    pub(crate) fn apply_to(
        self,
        cmd: &mut tokio::process::Command,
    ) -> Result<HeldStdio, ExecError> {
        use std::process::Stdio as S;
        let mut held = HeldStdio::default();
        let (stdin, stdout, stderr) = match self {
            Stdio::Inherit => (S::inherit(), S::inherit(), S::inherit()),
            Stdio::Null => (S::null(), S::null(), S::null()),
            Stdio::Piped => (S::null(), S::piped(), S::piped()),
            Stdio::InputPiped => (S::inherit(), S::piped(), S::piped()),
            Stdio::HeldInput => {
                let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| ExecError::Io {
                        what: "cannot make the container's input pipe",
                        path: "pipe".into(),
                        cause: e.into(),
                    })?;
                held.input = Some(write_end);
                (S::from(read_end), S::piped(), S::piped())
            }
            Stdio::Terminal | Stdio::CallerTerminal { .. } => {
                if let Stdio::CallerTerminal { input } = self {
                    held.relay = Some(input);
                }
                let pty = terminal::open()?;
                let dup = |fd: &OwnedFd| {
                    fd.try_clone().map_err(|cause| ExecError::Io {
                        what: "cannot share the container's terminal",
                        path: "/dev/ptmx".into(),
                        cause,
                    })
                };
                let (a, b) = (dup(&pty.slave)?, dup(&pty.slave)?);
                held.terminal = Some(pty.master);
                (S::from(pty.slave), S::from(a), S::from(b))
            }
        };
        cmd.stdin(stdin).stdout(stdout).stderr(stderr);
        Ok(held)
    }
}

/// Which output stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputStream {
    /// The command's stdout.
    Stdout,
    /// The command's stderr.
    Stderr,
}

/// Receives the command's output with [`Stdio::Piped`], chunk by chunk, as it is produced.
pub trait OutputSink: Send {
    /// One chunk of output (not necessarily whole lines).
    fn output(&mut self, stream: OutputStream, data: &[u8]);
}

/// Everything needed to run one sandboxed process.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The process, mounts, hostname, capabilities... `root.path` is ignored (see `rootfs`);
    /// `mounts: None` means the default set (/proc, /dev, /sys...).
    pub spec: oci_spec::runtime::Spec,
    /// The root filesystem.
    pub rootfs: RootFs,
    /// Host network or a private one with only `lo`.
    pub network: Network,
    /// Standard streams of the command.
    pub stdio: Stdio,
    /// A private directory for the sandbox's bookkeeping (result file, scratch upper dir).
    pub state_dir: PathBuf,
    /// What runs the spec: the built-in sandbox or an external OCI runtime (`runc`, `crun`).
    pub runtime: Runtime,
}

/// How a sandboxed command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// The command's exit code, or 128 + signal number when it was killed.
    pub exit_code: i32,
    /// Paths (relative to the root, parents before children) that did not exist and were
    /// created as mount points. [`run`] has already removed them from the upper directory
    /// (each that was still empty), with the directories above them that were copied up only
    /// for them, so that they belong to no layer.
    pub created_mountpoints: Vec<PathBuf>,
    /// The memory limit (bytes) when the kernel killed a process of the run for reaching it
    /// (the spec's `linux.resources.memory`, see [`Limits`]).
    pub out_of_memory: Option<u64>,
    /// The pids limit when a process of the run could not fork for reaching it.
    pub pids_limit_reached: Option<u64>,
}

/// Run the sandbox when this process was started as one, and never return then.
///
/// Call it first thing in `main()`: when `argv[1]` is the hidden `__kiln-sandbox` argument it
/// runs the single-threaded sandbox and exits the process (the same for `__kiln-oci-watch`,
/// which watches an OCI runtime for the engine); otherwise it returns at once.
pub fn sandbox_main_if_requested() {
    let mut args = std::env::args_os();
    let mode = args.nth(1);
    if mode.as_deref() == Some(std::ffi::OsStr::new(oci::watch::WATCH_ARG)) {
        std::process::exit(oci::watch::main(args.collect()));
    }
    if mode.as_deref() == Some(std::ffi::OsStr::new(sandbox::enter::ENTER_ARG)) {
        std::process::exit(sandbox::enter::main(args.next()));
    }
    if mode.as_deref() == Some(std::ffi::OsStr::new(rootless::KEEPER_ARG)) {
        rootless::keeper_main();
    }
    if mode.as_deref() != Some(std::ffi::OsStr::new(wire::SANDBOX_ARG)) {
        return;
    }
    let fd_arg = args.next();
    let alive_arg = args.next();
    let code = sandbox::main(fd_arg, alive_arg);
    std::process::exit(code);
}

//! What the engine and the sandbox helper say to each other: the config (over a pipe) and the result file.

use std::path::PathBuf;

use crate::{Network, RootFs};

/// Hidden first argument that turns a kiln binary into the sandbox helper.
pub(crate) const SANDBOX_ARG: &str = "__kiln-sandbox";

/// Name of the result file the sandbox writes into the state directory: empty until the init
/// has set the sandbox up, then its result.
pub const RESULT_FILE: &str = "sandbox-result.json";

/// Directory in the state directory holding the throwaway upper layer of a read-only root.
pub(crate) const SCRATCH_DIR: &str = "scratch";

/// Exit code of the helper when the sandbox could not be set up (as `docker run` uses it).
pub(crate) const SETUP_FAILED: i32 = 125;

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct WireConfig {
    pub spec: oci_spec::runtime::Spec,
    pub rootfs: RootFs,
    pub network: Network,
    pub state_dir: PathBuf,
    /// The command's stdin is a new pseudo-terminal of its own ([`crate::Stdio::Terminal`]):
    /// it starts a session with it as controlling terminal (never with a caller's).
    #[serde(default)]
    pub own_terminal: bool,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct WireResult {
    /// Rootfs-relative, parents first.
    pub created_mountpoints: Vec<PathBuf>,
    /// Set when the sandbox failed before the command could start.
    pub error: Option<String>,
}

/// What `kiln exec`'s helper is told: whose namespaces to join and what to run there.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct EnterConfig {
    /// The host pid of the sandbox's init (pid 1 of the container).
    pub init_pid: u32,
    pub process: oci_spec::runtime::Process,
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
    /// `-u`: resolved inside the container, against its `/etc/passwd` and `/etc/group`.
    pub user: Option<String>,
}

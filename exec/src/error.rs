//! The error type of kiln-exec: every failure a caller or a user can cause, with what to do next.

use std::path::PathBuf;

/// Everything that can go wrong preparing or running a sandboxed process.
///
/// A command that runs and exits non-zero is not an error: see [`crate::RunOutcome::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The [`crate::SandboxConfig`] or its spec cannot describe a runnable process.
    #[error("invalid sandbox config: {0}")]
    InvalidConfig(String),

    /// The root filesystem has more layers than overlayfs can stack.
    #[error(
        "the root filesystem has {layers} layers and overlayfs stacks at most {max}: use fewer \
         steps (join `RUN` commands with `&&`, copy several files per `COPY`) or squash the base \
         image"
    )]
    TooManyLayers {
        /// Layers the root needs.
        layers: usize,
        /// [`crate::MAX_LAYERS`].
        max: usize,
    },

    /// `user[:group]` names a user or group the image does not define.
    #[error("unknown {kind} `{name}`: not found in the image's `{file}`; add it to the image or use a numeric id")]
    UnknownUser {
        /// `user` or `group`.
        kind: &'static str,
        /// The name as written.
        name: String,
        /// The file that was searched (`/etc/passwd` or `/etc/group`).
        file: &'static str,
    },

    /// `user[:group]` is not of that form.
    #[error("invalid user `{spec}`: {reason}; write `user`, `user:group`, `uid` or `uid:gid`")]
    InvalidUser {
        /// The text as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A resource limit (`--memory`, `--cpus`, `--pids-limit`) that cannot be read.
    #[error("invalid `{flag}` value `{value}`: {reason}")]
    InvalidLimit {
        /// The flag, as the user writes it.
        flag: String,
        /// The value as given.
        value: String,
        /// What is wrong and what to give instead.
        reason: String,
    },

    /// The oci-spec builders rejected a value. The oci-spec error is printed in the text
    /// only: the solver prints an `ExecError` as text, and as a `source()` too `{:#}` would
    /// print it twice.
    #[error("cannot build the OCI runtime spec: {0}")]
    Spec(oci_spec::OciSpecError),

    /// What kiln hands to its sandbox helper or the OCI runtime does not encode as JSON.
    #[error("cannot encode {what} as JSON: {cause}")]
    Json {
        /// `the spec`, `the exec config`.
        what: &'static str,
        cause: serde_json::Error,
    },

    /// Preparing the container on a blocking thread panicked or was aborted.
    #[error("sandbox setup failed: {what}: {cause}")]
    Task {
        what: &'static str,
        cause: tokio::task::JoinError,
    },

    /// A file or directory on the host could not be used.
    #[error("{what} `{path}`: {cause}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },

    /// The sandbox helper process could not be started.
    #[error(
        "cannot start the sandbox helper `{exe}`: {cause}; set `KILN_SANDBOX_EXE` to a kiln binary"
    )]
    Spawn {
        /// The executable that was re-executed.
        exe: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },

    /// The sandbox could not set up the container (mounts, ids, working directory...).
    #[error("sandbox setup failed: {0}")]
    Setup(String),

    /// The external OCI runtime (`--runtime`) is missing or could not set the container up.
    #[error("OCI runtime `{runtime}`: {message}")]
    Runtime {
        /// The runtime binary.
        runtime: String,
        /// What it reported, or why it could not start.
        message: String,
    },

    /// Foreign-platform emulation (binfmt_misc) cannot be set up.
    #[error("{0}")]
    Emulation(String),

    /// Rootless mode could not set up its user namespace.
    #[error("rootless mode: {0}")]
    Rootless(String),

    /// The helper exited without reporting a result: it is probably not a kiln binary.
    #[error("sandbox helper `{exe}` exited ({status}) without reporting a result; make sure its `main()` calls `kiln_exec::sandbox_main_if_requested()` first")]
    NoResult {
        /// The executable that was re-executed.
        exe: PathBuf,
        /// How it ended.
        status: String,
    },
}

//! A container's records on disk: `config.json` (what it runs, written once when it is created)
//! and `state.json` (what its monitor last saw), each replaced atomically.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub(crate) const CONFIG_FILE: &str = "config.json";
pub(crate) const STATE_FILE: &str = "state.json";
/// Present while a user asked the container to stop: its monitor does not restart it.
pub(crate) const STOP_MARKER: &str = "stop-requested";

/// `--restart`: what the monitor does when the command exits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// `no` or `on-failure`, as Docker names them.
    pub name: String,
    /// `on-failure:N`: restart at most N times (0: no limit).
    pub max_retries: u32,
}

impl RestartPolicy {
    /// `no`, `on-failure` or `on-failure:N`, as `docker run --restart` reads them.
    pub fn parse(s: &str) -> Result<RestartPolicy> {
        let bad = || {
            anyhow::anyhow!(
                "invalid restart policy `{s}`: use `no`, `on-failure` or `on-failure:N`"
            )
        };
        match s.split_once(':') {
            None if s == "no" || s.is_empty() => Ok(RestartPolicy {
                name: "no".into(),
                max_retries: 0,
            }),
            None if s == "on-failure" => Ok(RestartPolicy {
                name: "on-failure".into(),
                max_retries: 0,
            }),
            Some(("on-failure", n)) => Ok(RestartPolicy {
                name: "on-failure".into(),
                max_retries: n.parse().map_err(|_| bad())?,
            }),
            _ => Err(bad()),
        }
    }

    /// Whether a command that exited with `code` after `restarts` restarts runs again.
    pub(crate) fn restarts(&self, code: i32, restarts: u32) -> bool {
        self.name == "on-failure"
            && code != 0
            && (self.max_retries == 0 || restarts < self.max_retries)
    }
}

/// What a container runs; written once by `kiln run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub id: String,
    pub name: String,
    /// The image as the user named it, and its manifest digest.
    pub image: String,
    pub image_digest: String,
    /// Unix seconds.
    pub created: i64,
    /// The OCI runtime spec the sandbox runs (argv, env, user, limits, capabilities...).
    pub spec: oci_spec::runtime::Spec,
    pub rootfs: kiln_exec::RootFs,
    pub network: kiln_exec::Network,
    /// `builtin`, `runc`, `crun` or a runtime's path.
    pub runtime: String,
    pub restart: RestartPolicy,
    /// `--rm`.
    pub auto_remove: bool,
    /// Bytes the log file may hold before it is rotated (one old file is kept).
    pub log_max_size: u64,
    /// The top of the image's snapshot chain (kept by `kiln prune` while the container exists).
    pub snapshot: Option<u64>,
    pub read_only: bool,
    pub init: bool,
    pub tty: bool,
    pub interactive: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub extra_hosts: Vec<String>,
    /// `-v`, `--mount`, `--tmpfs` (volumes by name; the spec has their mounts).
    #[serde(default)]
    pub mounts: Vec<MountRecord>,
    /// `-p`: served by the monitor's proxy into the container's network namespace.
    #[serde(default)]
    pub ports: Vec<super::ports::PortMapping>,
    /// `--network bridge|NAME`: its address there (the sandbox joins the namespace its monitor
    /// plugs into the network's bridge).
    #[serde(default)]
    pub attachment: Option<crate::networks::Attachment>,
}

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made, never started.
    #[default]
    Created,
    Running,
    /// Between two runs of `--restart`.
    Restarting,
    Exited,
}

impl Status {
    /// Docker's word for it (`docker inspect`'s `State.Status`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Restarting => "restarting",
            Status::Exited => "exited",
        }
    }
}

/// What the monitor last recorded.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ContainerState {
    pub status: Status,
    /// The process that runs the container (`kiln __kiln-monitor`, or the `kiln run` in the
    /// foreground) and its start time in clock ticks since boot: a pid alone may be reused.
    pub monitor_pid: u32,
    pub monitor_start: u64,
    /// Unix seconds.
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// `None` while running, or when the monitor died before it could record one.
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub error: Option<String>,
    pub restart_count: u32,
}

impl ContainerState {
    /// The state as it is now: a running container whose monitor is gone (or is another
    /// process with the same pid) has exited, with its code unknown.
    pub(crate) fn observed(mut self) -> ContainerState {
        let live = matches!(self.status, Status::Running | Status::Restarting);
        if live && !process_is(self.monitor_pid, self.monitor_start) {
            self.status = Status::Exited;
            self.exit_code = None;
            if self.error.is_none() {
                self.error =
                    Some("its monitor died: the exit code of its command is unknown".into());
            }
        }
        self
    }

    pub fn is_running(&self) -> bool {
        matches!(self.status, Status::Running | Status::Restarting)
    }
}

/// `/proc/PID/stat` fields after the command name (field 3 is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// A process's start time (clock ticks since boot), the guard against pid reuse.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// A process's parent pid.
pub(crate) fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// The children of a process (of all its threads).
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut kids = Vec::new();
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            kids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    kids
}

/// Whether `pid` is still the process that started at `start` (and not a zombie).
pub(crate) fn process_is(pid: u32, start: u64) -> bool {
    if pid == 0 {
        return false;
    }
    match stat_fields(pid) {
        Some(f) => {
            f.first().map(String::as_str) != Some("Z")
                && f.get(19).and_then(|s| s.parse().ok()) == Some(start)
        }
        None => false,
    }
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Writes `value` as JSON to `dir/name` through a temporary file and a rename, so that a reader
/// never sees half of it.
pub(crate) fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<()> {
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(value)?;
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write `{}`", tmp.display()))?;
    let dest = dir.join(name);
    std::fs::rename(&tmp, &dest).with_context(|| format!("cannot write `{}`", dest.display()))
}

pub(crate) fn read_config(dir: &Path) -> Result<ContainerConfig> {
    let path = dir.join(CONFIG_FILE);
    let bytes =
        std::fs::read(&path).with_context(|| format!("cannot read `{}`", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("`{}` is not a container config", path.display()))
}

/// The recorded state; a container whose monitor never wrote one is `created`.
pub(crate) fn read_state(dir: &Path) -> ContainerState {
    std::fs::read(dir.join(STATE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The sandbox's private directory of a container.
pub(crate) fn sandbox_state_dir(dir: &Path) -> PathBuf {
    dir.join("state")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Bind,
    Volume,
    Tmpfs,
}

impl MountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Bind => "bind",
            MountKind::Volume => "volume",
            MountKind::Tmpfs => "tmpfs",
        }
    }
}

/// One mount of a container, as `config.json` records it (and `kiln inspect` shows it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub kind: MountKind,
    /// A host path (bind), a volume's name (empty until an anonymous one is made), or empty.
    pub source: String,
    pub destination: String,
    pub read_only: bool,
    /// A volume made for this container (`-v /path`): `kiln rm -v` and `--rm` remove it.
    #[serde(default)]
    pub anonymous: bool,
    /// `volume-nocopy` / `:nocopy`: a new volume is not seeded from the image.
    #[serde(default)]
    pub nocopy: bool,
    /// tmpfs `size=`/`mode=` options.
    #[serde(default)]
    pub options: Vec<String>,
}

impl MountRecord {
    pub(crate) fn new(kind: MountKind, source: &str, destination: &str) -> MountRecord {
        MountRecord {
            kind,
            source: source.to_string(),
            destination: destination.to_string(),
            read_only: false,
            anonymous: false,
            nocopy: false,
            options: Vec::new(),
        }
    }

    /// `docker inspect`'s `Mounts` entry.
    pub fn inspect(&self, root: &Path) -> serde_json::Value {
        let source = match self.kind {
            MountKind::Volume => crate::volumes::find(root, &self.source)
                .map(|v| v.mountpoint.display().to_string())
                .unwrap_or_default(),
            _ => self.source.clone(),
        };
        let mut v = serde_json::json!({
            "Type": self.kind.as_str(),
            "Source": source,
            "Destination": self.destination,
            "Mode": if self.kind == MountKind::Tmpfs { "" } else if self.read_only { "ro" } else { "" },
            "RW": !self.read_only,
        });
        if self.kind == MountKind::Volume {
            v["Name"] = serde_json::json!(self.source);
            v["Driver"] = serde_json::json!("local");
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_read_as_docker_reads_them() {
        assert_eq!(RestartPolicy::parse("no").unwrap().name, "no");
        let p = RestartPolicy::parse("on-failure:3").unwrap();
        assert_eq!((p.name.as_str(), p.max_retries), ("on-failure", 3));
        assert!(p.restarts(1, 2) && !p.restarts(1, 3) && !p.restarts(0, 0));
        assert!(RestartPolicy::parse("on-failure").unwrap().restarts(2, 100));
        let err = RestartPolicy::parse("sometimes").unwrap_err().to_string();
        assert!(err.contains("`sometimes`"), "{err}");
        assert!(RestartPolicy::parse("on-failure:x").is_err());
    }

    #[test]
    fn a_running_state_whose_monitor_is_gone_reads_as_exited_with_no_code() {
        let me = std::process::id();
        let start = start_time(me).unwrap();
        let alive = ContainerState {
            status: Status::Running,
            monitor_pid: me,
            monitor_start: start,
            ..Default::default()
        };
        assert_eq!(alive.clone().observed().status, Status::Running);
        // The same pid with another start time is another process (pid reuse).
        let reused = ContainerState {
            monitor_start: start + 1,
            exit_code: Some(0),
            ..alive
        }
        .observed();
        assert_eq!((reused.status, reused.exit_code), (Status::Exited, None));
        assert!(reused.error.unwrap().contains("monitor died"));
    }
}

//! `kiln info`: what the engine is, what its host can run and what its store holds, from cheap
//! reads only (no walk of the store, which `kiln system df` does), the same for the embedded
//! engine and the daemon.

use anyhow::{Context, Result};
use kiln_registry::Platform;
use serde::Serialize;
use std::collections::HashSet;
use std::path::Path;

/// The facts `kiln info` shows of an engine (its `Server:` section).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SystemInfo {
    /// The engine's kiln version.
    pub version: String,
    /// This host's platform, `linux/amd64`.
    pub platform: String,
    /// The other platforms whose `RUN` steps this host runs through a binfmt_misc emulator
    /// (`kiln setup emulators`).
    pub emulated_platforms: Vec<String>,
    /// What `--runtime` can use here: `builtin`, then `runc`/`crun` when PATH has them.
    pub runtimes: Vec<String>,
    /// The store's directory.
    pub store_root: String,
    /// Distinct images (manifests), named or dangling.
    pub images: u64,
    /// Image names (one image may have several).
    pub image_names: u64,
    /// Images without a name.
    pub dangling_images: u64,
    /// Containers of the store, any state.
    pub containers: u64,
    pub containers_running: u64,
    /// Whether the engine runs in a user namespace (rootless kiln).
    pub rootless: bool,
    /// The kernel's release, as `uname -r` prints it.
    pub kernel_release: String,
    /// `/etc/os-release`'s `PRETTY_NAME`; empty when it has none.
    pub operating_system: String,
    /// CPUs this process may use.
    pub cpus: u64,
    /// The host's memory, in bytes (`MemTotal`).
    pub memory_bytes: u64,
    /// Set by the daemon serving this engine; `None` for the embedded engine.
    pub daemon: Option<DaemonInfo>,
}

/// What a daemon says of itself in `kiln info`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DaemonInfo {
    pub pid: u32,
    /// The API version it speaks, `kiln.v1`.
    pub api_version: String,
    /// The addresses it serves, as `--addr` names them.
    pub addresses: Vec<String>,
    /// Build sessions open now.
    pub builds_running: u64,
}

/// The facts of the store at `root` and of this host, read without the store's lock (as
/// `kiln images` reads it). Blocking: a few small files.
pub fn system_info(root: &Path) -> Result<SystemInfo> {
    let records = kiln_cache::read_all_images(root).with_context(|| {
        format!(
            "cannot list the images of the kiln store `{}`",
            root.display()
        )
    })?;
    let digests: HashSet<&str> = records.iter().map(|r| r.digest.as_str()).collect();
    let named = records.iter().filter(|r| !r.name.is_empty()).count();
    let containers = crate::containers::list(root)?;
    let running = containers.iter().filter(|c| c.state.is_running()).count();
    let host = Platform::host();
    let emulated = kiln_exec::emulated_architectures(&kiln_exec::binfmt_misc_dir())
        .into_iter()
        .map(|architecture| Platform {
            os: host.os.clone(),
            architecture: architecture.to_string(),
            variant: None,
        })
        .filter(|p| !crate::context::runs_natively(&host, p))
        .map(|p| p.to_string())
        .collect();
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    Ok(SystemInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        platform: host.to_string(),
        emulated_platforms: emulated,
        runtimes: kiln_exec::installed_runtimes()
            .iter()
            .map(|r| r.to_string())
            .collect(),
        // As an open store names itself (so the embedded engine and the daemon agree), or as
        // given when no store was made there yet.
        store_root: std::fs::canonicalize(root)
            .unwrap_or_else(|_| root.to_path_buf())
            .display()
            .to_string(),
        images: count(digests.len()),
        image_names: count(named),
        dangling_images: count(records.len() - named),
        containers: count(containers.len()),
        containers_running: count(running),
        rootless: kiln_exec::in_user_namespace(),
        kernel_release: read_trimmed("/proc/sys/kernel/osrelease"),
        operating_system: std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| pretty_name(&t))
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism()
            .map(|n| count(n.get()))
            .unwrap_or(1),
        memory_bytes: std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| mem_total(&t))
            .unwrap_or(0),
        daemon: None,
    })
}

/// A one-line file's text; empty when it cannot be read (the fact is then shown as unknown).
fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .unwrap_or_default()
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let mut words = line.split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// `PRETTY_NAME` of an os-release text, its shell quoting undone.
fn pretty_name(os_release: &str) -> Option<String> {
    let value = os_release
        .lines()
        .find_map(|l| l.trim().strip_prefix("PRETTY_NAME="))?
        .trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
        .unwrap_or(value);
    let mut out = String::new();
    let mut chars = unquoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_bytes() {
        let text = "MemTotal:       16314484 kB\nMemFree:         1234 kB\n";
        assert_eq!(mem_total(text), Some(16314484 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: lots kB\n"), None);
        assert_eq!(mem_total("MemTotal: 1 MB\n"), None);
        assert_eq!(mem_total("MemTotal: 99999999999999999999 kB\n"), None);
    }

    #[test]
    fn pretty_name_is_unquoted() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            pretty_name(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            pretty_name("PRETTY_NAME='Alpine Linux v3.19'\n").as_deref(),
            Some("Alpine Linux v3.19")
        );
        assert_eq!(
            pretty_name("PRETTY_NAME=\"A \\\"quoted\\\" name\"\n").as_deref(),
            Some("A \"quoted\" name")
        );
        assert_eq!(pretty_name("PRETTY_NAME=Plain\n").as_deref(), Some("Plain"));
        assert_eq!(pretty_name("NAME=x\n"), None);
        assert_eq!(pretty_name("PRETTY_NAME=\"\"\n"), None);
    }

    #[test]
    fn an_empty_store_has_no_images_or_containers() {
        let dir = tempfile::tempdir().unwrap();
        let info = system_info(&dir.path().join("never-made")).unwrap();
        assert_eq!(
            (info.images, info.image_names, info.dangling_images),
            (0, 0, 0)
        );
        assert_eq!((info.containers, info.containers_running), (0, 0));
        assert_eq!(info.runtimes.first().map(String::as_str), Some("builtin"));
        assert_eq!(info.platform, Platform::host().to_string());
        assert!(!info.emulated_platforms.contains(&info.platform));
        assert!(info.cpus >= 1);
        assert!(info.daemon.is_none());
    }
}

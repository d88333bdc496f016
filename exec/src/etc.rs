//! `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname` for a sandbox: written to its state
//! directory and bind-mounted over the image's, as Docker does, so that the step sees a working
//! name setup and nothing it writes there reaches the layer.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder, Spec};

use crate::{ExecError, Network};

/// Used when the host has no `/etc/resolv.conf` (Docker's fallback).
const FALLBACK_RESOLV: &str = "nameserver 8.8.8.8\nnameserver 8.8.4.4\n";

fn hosts(hostname: &str) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost");
    if !hostname.is_empty() && hostname != "localhost" {
        s.push('\t');
        s.push_str(hostname);
    }
    s.push_str(
        "\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    s
}

/// The host's resolver configuration. With a private network, loopback name servers (such as
/// systemd-resolved's stub) are dropped: they are unreachable from there anyway.
fn resolv_conf(host: Option<&str>, network: Network) -> String {
    let Some(text) = host else {
        return FALLBACK_RESOLV.to_string();
    };
    if network == Network::Host {
        return text.to_string();
    }
    text.lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            !(words.next() == Some("nameserver")
                && words
                    .next()
                    .is_some_and(|ip| ip.starts_with("127.") || ip == "::1"))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf, ExecError> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|source| ExecError::Io {
        what: "cannot write",
        path: path.clone(),
        cause: source,
    })?;
    Ok(path)
}

/// Writes the three files into `state_dir` and adds bind mounts for those the spec does not
/// already mount.
pub(crate) fn provide(
    spec: &mut Spec,
    state_dir: &Path,
    network: Network,
) -> Result<(), ExecError> {
    let mut mounts = match spec.mounts() {
        Some(m) => m.clone(),
        None => crate::spec::default_mounts()?,
    };
    let has = |dest: &str| mounts.iter().any(|m| m.destination() == Path::new(dest));
    let hostname = spec.hostname().clone().unwrap_or_default();
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").ok();
    let mut hosts_text = hosts(&hostname);
    // `--add-host` lines, put in the spec by `Limits::apply_to`.
    if let Some(extra) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(crate::extras::EXTRA_HOSTS_ANNOTATION))
    {
        hosts_text.push_str(extra);
    }
    let files = [
        ("/etc/hosts", "hosts", hosts_text),
        (
            "/etc/resolv.conf",
            "resolv.conf",
            resolv_conf(host_resolv.as_deref(), network),
        ),
        ("/etc/hostname", "hostname", format!("{hostname}\n")),
    ];
    let mut added: Vec<Mount> = Vec::new();
    for (dest, name, text) in files {
        if has(dest) || (dest == "/etc/hostname" && hostname.is_empty()) {
            continue;
        }
        let source = write(state_dir, name, &text)?;
        added.push(
            MountBuilder::default()
                .destination(PathBuf::from(dest))
                .typ("bind".to_string())
                .source(source)
                .options(vec!["rbind".to_string(), "rprivate".to_string()])
                .build()
                .map_err(ExecError::Spec)?,
        );
    }
    // Before the caller's mounts: a `RUN --mount` at `/etc` must stay on top.
    let split = mounts
        .iter()
        .position(|m| !crate::spec::is_default_mount(m))
        .unwrap_or(mounts.len());
    mounts.splice(split..split, added);
    spec.set_mounts(Some(mounts));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_names_the_container() {
        let h = hosts("box");
        assert!(h.starts_with("127.0.0.1\tlocalhost\tbox\n"), "{h}");
        assert!(h.contains("::1\tlocalhost"));
    }

    #[test]
    fn private_network_drops_loopback_resolvers() {
        let host = "nameserver 127.0.0.53\noptions edns0\nnameserver 10.0.0.1\n";
        assert_eq!(resolv_conf(Some(host), Network::Host), host);
        assert_eq!(
            resolv_conf(Some(host), Network::None),
            "options edns0\nnameserver 10.0.0.1\n"
        );
        assert_eq!(resolv_conf(None, Network::Host), FALLBACK_RESOLV);
    }

    #[test]
    fn mounts_are_added_once_and_before_user_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = crate::default_spec(&crate::ProcessSpec {
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: crate::ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                home: "/root".into(),
            },
            hostname: "box".into(),
            network: Network::Host,
            terminal: false,
        })
        .unwrap();
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(
            MountBuilder::default()
                .destination(PathBuf::from("/etc/resolv.conf"))
                .typ("bind".to_string())
                .source(PathBuf::from("/dev/null"))
                .build()
                .unwrap(),
        );
        spec.set_mounts(Some(mounts));
        provide(&mut spec, dir.path(), Network::Host).unwrap();
        let dests: Vec<String> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(dests.iter().filter(|d| *d == "/etc/resolv.conf").count(), 1);
        let hosts_at = dests.iter().position(|d| d == "/etc/hosts").unwrap();
        let user_at = dests.iter().position(|d| d == "/etc/resolv.conf").unwrap();
        assert!(hosts_at < user_at, "{dests:?}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hostname")).unwrap(),
            "box\n"
        );
    }
}

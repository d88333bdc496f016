//! `kiln run`: an image's command in the sandbox, with Docker's rules for combining the image's
//! ENTRYPOINT/CMD with what the user passes.

use anyhow::{bail, Context, Result};
use kiln_cache::Store;
use kiln_solver::{images, Solver};
use std::path::PathBuf;

mod mounts;

pub use mounts::{parse_mount_flag, parse_tmpfs_flag, parse_volume_flag, MountKind, MountRecord};

/// One `kiln run`.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    pub image: String,
    /// Replaces the image's CMD when not empty.
    pub command: Vec<String>,
    /// `--entrypoint`: replaces the image's ENTRYPOINT and resets its CMD.
    pub entrypoint: Option<String>,
    /// `-e K=V` (or `-e K` to pass the caller's value), `--env-file` lines included.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// `none` for a network namespace with only loopback; the host's otherwise.
    pub network_none: bool,
    /// `--network bridge|NAME`: a namespace of its own on that bridge network (`network_none`
    /// is then ignored).
    pub bridge_network: Option<String>,
    /// Remove the container's directory when it exits.
    pub remove: bool,
    /// `--runtime`: the built-in sandbox (default) or `runc`/`crun`.
    pub runtime: kiln_exec::Runtime,
    /// `--memory`, `--cpus`, `--pids-limit` (a default pids limit without them).
    pub limits: kiln_exec::Limits,
    /// `--name` (made up when not given).
    pub name: Option<String>,
    /// `--hostname` (the id's first 12 characters when not given).
    pub hostname: Option<String>,
    /// `--add-host HOST:IP` lines for `/etc/hosts`.
    pub add_hosts: Vec<String>,
    /// `--init`: recorded only; kiln's sandbox always runs the command under an init.
    pub init: bool,
    /// `--read-only`: the root filesystem refuses writes.
    pub read_only: bool,
    /// `-t`: the process is told it has a terminal.
    pub tty: bool,
    /// `-i`.
    pub interactive: bool,
    pub restart: crate::containers::RestartPolicy,
    /// `--cap-add`, `--cap-drop` (`NET_ADMIN` or `CAP_NET_ADMIN`, or `ALL`).
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// `--security-opt`: `seccomp=unconfined`, `no-new-privileges[:true]`.
    pub security_opt: Vec<String>,
    /// `--log-opt max-size=`: the size cap of the container's log file.
    pub log_max_size: Option<u64>,
    /// `--platform os/arch[/variant]`: the manifest to pick from a multi-platform image, which
    /// a single-platform image must match (default: this host's, any image accepted).
    pub platform: Option<String>,
    /// `-v`, `--mount` and `--tmpfs`, parsed.
    pub mounts: Vec<MountRecord>,
    /// `-p`: the container gets a network namespace of its own (as `--network none`), which
    /// the ports reach through its monitor's proxy.
    pub ports: Vec<crate::containers::PortMapping>,
    /// `-P`: every TCP port the image exposes, on a free host port each.
    pub publish_all: bool,
}

/// A container `Engine::create_container` made: run it in the foreground or detached
/// (`kiln_engine::containers`).
#[derive(Clone, Debug)]
pub struct CreatedContainer {
    pub id: String,
    pub name: String,
    pub dir: PathBuf,
}

/// The argv Docker would run: ENTRYPOINT + (given command, or CMD unless the entrypoint was
/// overridden).
pub(crate) fn command_line(
    image_entrypoint: &[String],
    image_cmd: &[String],
    entrypoint: Option<&str>,
    command: &[String],
) -> Vec<String> {
    let (ep, default_cmd): (Vec<String>, &[String]) = match entrypoint {
        Some("") => (vec![], &[]),
        Some(e) => (vec![e.to_string()], &[]),
        None => (image_entrypoint.to_vec(), image_cmd),
    };
    let cmd = if command.is_empty() {
        default_cmd.to_vec()
    } else {
        command.to_vec()
    };
    ep.into_iter().chain(cmd).collect()
}

pub(crate) async fn create(
    store: &Store,
    solver: &Solver,
    req: RunRequest,
) -> Result<CreatedContainer> {
    if req.remove && req.restart.name != "no" && !req.restart.name.is_empty() {
        bail!("`--restart` and `--rm` conflict: a container removed when it exits cannot restart");
    }
    let wanted = match &req.platform {
        Some(p) => kiln_registry::Platform::parse(p).context("`kiln run --platform`")?,
        None => solver.platform().clone(),
    };
    let reference = crate::images::run_reference(store.root(), &req.image);
    let image = images::resolve_image(store, solver.registry(), &wanted, &reference, false)
        .await
        .with_context(|| format!("cannot find image `{}`", req.image))?;
    let made_for = kiln_registry::Platform {
        os: image.config.os().to_string(),
        architecture: image.config.architecture().to_string(),
        variant: image.config.variant().clone(),
    };
    if !made_for.architecture.is_empty() {
        if req.platform.is_some() && !wanted.matches(&made_for) {
            bail!(
                "`{}` is an image for {made_for}, not {wanted}: drop `--platform`, or pull its \
                 {wanted} image with `kiln pull --platform {wanted} {}`",
                req.image,
                req.image
            );
        }
        let binfmt = kiln_exec::binfmt_misc_dir();
        if let Some(why) = crate::context::cannot_run(solver.platform(), &made_for, &binfmt) {
            bail!("cannot run `{}`, an image for {made_for}: {why}", req.image);
        }
    }
    // Layers of a lazily imported build cache (a built image's) come from that cache, not from
    // the image's name.
    for l in image.manifest.layers() {
        kiln_solver::lazy::fetch_if_lazy(store, solver.registry(), l.digest().as_ref()).await?;
    }
    images::ensure_layers(store, solver.registry(), &image).await?;
    let store2 = store.clone();
    let image2 = image.clone();
    let top = tokio::task::spawn_blocking(move || images::unpack(&store2, &image2)).await??;
    if let Some(t) = top {
        // Layers of a lazily imported build cache are filled now that their files are needed.
        kiln_solver::lazy::materialize(store, solver.registry(), t).await?;
    }
    let cfg = image.config.config().clone().unwrap_or_default();
    let argv = command_line(
        cfg.entrypoint().as_deref().unwrap_or(&[]),
        cfg.cmd().as_deref().unwrap_or(&[]),
        req.entrypoint.as_deref(),
        &req.command,
    );
    if argv.is_empty() {
        bail!(
            "image `{}` has no command: pass one after the image name",
            image.name
        );
    }
    let chain = match top {
        Some(t) => store.snapshots().chain(t)?,
        None => vec![],
    };
    let read = |p: &str| -> Result<Option<String>> {
        Ok(store
            .snapshots()
            .read_file(&chain, p)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    };
    let user_spec = req
        .user
        .clone()
        .or_else(|| cfg.user().clone())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "0".into());
    let user = kiln_exec::resolve_user(
        &user_spec,
        read("/etc/passwd")?.as_deref(),
        read("/etc/group")?.as_deref(),
    )?;
    let mut ports = req.ports.clone();
    if req.publish_all && (req.network_none || req.bridge_network.is_some()) {
        // `-P`: every port the image exposes; on the host's network there is nothing to
        // publish, as Docker ignores it there.
        let mut exposed: Vec<(u16, crate::containers::Protocol)> = cfg
            .exposed_ports()
            .iter()
            .flatten()
            .filter_map(|p| {
                let (n, proto) = p.split_once('/').unwrap_or((p.as_str(), "tcp"));
                let proto = match proto {
                    "tcp" => crate::containers::Protocol::Tcp,
                    "udp" => crate::containers::Protocol::Udp,
                    _ => return None,
                };
                Some((n.parse().ok()?, proto))
            })
            .collect();
        exposed.sort_by_key(|(n, p)| (*n, p.as_str()));
        for (container_port, protocol) in exposed {
            if !ports
                .iter()
                .any(|p| p.container_port == container_port && p.protocol == protocol)
            {
                ports.push(crate::containers::PortMapping {
                    host_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
                    host_port: 0,
                    container_port,
                    protocol,
                });
            }
        }
    }
    let network_none = req.network_none;
    if !ports.is_empty() {
        if !network_none && req.bridge_network.is_none() {
            bail!("`-p` publishes ports of a container with a network of its own: drop `--network host`");
        }
        crate::containers::choose_free_ports(&mut ports)?;
        crate::containers::check_ports_free(&ports)?;
    }
    let bridged = match &req.bridge_network {
        Some(n) => {
            let net = crate::networks::find(store.root(), n)?;
            crate::networks::check_possible(&net)?;
            Some(net)
        }
        None => None,
    };
    let network = if network_none || bridged.is_some() {
        kiln_exec::Network::None
    } else {
        kiln_exec::Network::Host
    };
    let env = crate::containers::merge_env(cfg.env().as_deref().unwrap_or(&[]), &req.env);
    let cwd = req
        .workdir
        .clone()
        .or_else(|| cfg.working_dir().clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let id = container_id();
    let root = store.root().to_path_buf();
    let name = crate::containers::choose_name(&root, &id, req.name.as_deref())?;
    let hostname = req.hostname.clone().unwrap_or_else(|| id[..12].to_string());
    let mut spec = kiln_exec::default_spec(&kiln_exec::ProcessSpec {
        args: argv,
        env,
        cwd,
        user,
        hostname: hostname.clone(),
        network,
        terminal: req.tty,
    })?;
    req.limits.apply_to(&mut spec)?;
    apply_capabilities(&mut spec, &req.cap_add, &req.cap_drop)?;
    apply_security_opts(&mut spec, &req.security_opt)?;
    let dir = store.containers_dir().join(&id);
    let (upper, work, target, state) = (
        dir.join("upper"),
        dir.join("work"),
        dir.join("rootfs"),
        dir.join("state"),
    );
    for d in [&upper, &work, &target, &state] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create `{}`", d.display()))?;
    }
    let mut mounts = req.mounts.clone();
    // As Docker does, each `VOLUME` of the image gets an anonymous volume (seeded from the
    // image) unless the user mounts something there.
    for path in cfg.volumes().clone().unwrap_or_default() {
        let path = path.trim_end_matches('/');
        if !path.starts_with('/') || path.is_empty() {
            continue;
        }
        if mounts
            .iter()
            .any(|m| m.destination.trim_end_matches('/') == path)
        {
            continue;
        }
        let mut m = MountRecord::new(MountKind::Volume, "", path);
        m.anonymous = true;
        mounts.push(m);
    }
    // The address is taken before anything else can fail late, and given back on failure.
    let attachment = match &bridged {
        Some(net) => {
            let lock = crate::networks::lock(&root)?;
            match crate::networks::allocate(&lock, &root, net, &id, &name) {
                Ok(a) => Some(a),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
            }
        }
        None => None,
    };
    let prepared = (|| -> Result<Option<crate::volumes::VolumesLock>> {
        if let Some(a) = &attachment {
            kiln_exec::join_network_namespace(&mut spec, &dir.join(crate::networks::NETNS_FILE))?;
            add_hosts(&mut spec, &state, &hostname, &req.add_hosts, Some(a.ip))?;
        } else if !req.add_hosts.is_empty() {
            add_hosts(&mut spec, &state, &hostname, &req.add_hosts, None)?;
        }
        if mounts.is_empty() {
            return Ok(None);
        }
        add_mounts(store, &chain, &dir, &req.image, &mut mounts, &mut spec).map(Some)
    })();
    // Held until the config that names the container's volumes is written.
    let volumes_lock = match prepared {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            if let Some(a) = &attachment {
                crate::networks::release(&root, a, &id);
            }
            return Err(e);
        }
    };
    let mut lower: Vec<PathBuf> = chain.iter().map(|s| store.snapshots().fs_dir(*s)).collect();
    if lower.is_empty() {
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty)?;
        lower.push(empty);
    }
    let config = crate::containers::ContainerConfig {
        id: id.clone(),
        name: name.clone(),
        image: req.image.clone(),
        image_digest: image.manifest_digest.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        spec,
        rootfs: kiln_exec::RootFs {
            lower,
            upper: (!req.read_only).then_some(upper),
            work: (!req.read_only).then_some(work),
            target,
        },
        network,
        runtime: match &req.runtime {
            kiln_exec::Runtime::Builtin => "builtin".into(),
            kiln_exec::Runtime::Oci(b) => b.clone(),
        },
        restart: if req.restart.name.is_empty() {
            crate::containers::RestartPolicy::parse("no")?
        } else {
            req.restart.clone()
        },
        auto_remove: req.remove,
        log_max_size: req
            .log_max_size
            .unwrap_or(crate::containers::DEFAULT_LOG_MAX_SIZE),
        snapshot: top.map(|t| t.0),
        read_only: req.read_only,
        init: req.init,
        tty: req.tty,
        interactive: req.interactive,
        cap_add: req.cap_add.clone(),
        cap_drop: req.cap_drop.clone(),
        security_opt: req.security_opt.clone(),
        extra_hosts: req.add_hosts.clone(),
        mounts,
        ports,
        attachment: attachment.clone(),
    };
    if let Err(e) = crate::containers::write_json(&dir, crate::containers::CONFIG_FILE, &config) {
        let _ = std::fs::remove_dir_all(&dir);
        if let Some(a) = &attachment {
            crate::networks::release(&root, a, &id);
        }
        return Err(e);
    }
    drop(volumes_lock);
    if let Some(a) = &attachment {
        // This container's name reaches the others of its network, and theirs reach it.
        crate::networks::refresh_hosts(&root, &a.network);
    }
    Ok(CreatedContainer { id, name, dir })
}

/// `-v`/`--mount`/`--tmpfs`: their OCI mounts added to `spec`, checked against the image's
/// files, which are mounted read-only under `dir` for the while (only when a bind or volume
/// needs them). Returns the volumes lock, to be held until the container's config is written.
fn add_mounts(
    store: &Store,
    chain: &[kiln_cache::SnapshotId],
    dir: &std::path::Path,
    image: &str,
    mounts: &mut [MountRecord],
    spec: &mut oci_spec::runtime::Spec,
) -> Result<crate::volumes::VolumesLock> {
    let root = store.root().to_path_buf();
    let lock = crate::volumes::lock(&root)?;
    let needs_image = !chain.is_empty() && mounts.iter().any(|m| m.kind != MountKind::Tmpfs);
    let image_root = dir.join("image");
    let guard = if needs_image {
        std::fs::create_dir_all(&image_root)
            .with_context(|| format!("cannot create `{}`", image_root.display()))?;
        Some(
            store
                .snapshots()
                .mount(chain, None, &image_root)
                .with_context(|| format!("cannot mount the files of `{image}`"))?,
        )
    } else {
        None
    };
    let made = mounts::prepare(
        &lock,
        &root,
        image,
        guard.as_ref().map(|_| image_root.as_path()),
        mounts,
    );
    drop(guard);
    let _ = std::fs::remove_dir(&image_root);
    let mut all = spec.mounts().clone().unwrap_or_default();
    all.extend(made?);
    // Parents before children (stable, so the defaults keep their order): a volume at `/etc`
    // is mounted before the `/etc/hosts` bind lands on it, as in Docker.
    all.sort_by_key(|m| m.destination().components().count());
    spec.set_mounts(Some(all));
    Ok(lock)
}

/// A capability as `--cap-add` names it (`NET_ADMIN`, `cap_net_admin`), or every one for `ALL`.
fn parse_capabilities(names: &[String]) -> Result<Vec<oci_spec::runtime::Capability>> {
    use std::str::FromStr;
    let mut caps = Vec::new();
    for n in names {
        let upper = n.to_ascii_uppercase();
        if upper == "ALL" {
            caps.extend(kiln_exec::all_capabilities());
            continue;
        }
        // oci-spec reads `NET_ADMIN`; Docker takes `CAP_NET_ADMIN` too.
        let short = upper.strip_prefix("CAP_").unwrap_or(&upper);
        let cap = oci_spec::runtime::Capability::from_str(short).map_err(|_| {
            anyhow::anyhow!("unknown capability `{n}`: use a name such as `NET_ADMIN` or `ALL`")
        })?;
        caps.push(cap);
    }
    Ok(caps)
}

/// `--cap-add`/`--cap-drop` over Docker's default set; the seccomp profile follows the new
/// bounding set, as Docker's does.
fn apply_capabilities(
    spec: &mut oci_spec::runtime::Spec,
    add: &[String],
    drop: &[String],
) -> Result<()> {
    if add.is_empty() && drop.is_empty() {
        return Ok(());
    }
    let (add, drop) = (parse_capabilities(add)?, parse_capabilities(drop)?);
    let Some(mut process) = spec.process().clone() else {
        return Ok(());
    };
    let Some(mut caps) = process.capabilities().clone() else {
        return Ok(());
    };
    let root = process.user().uid() == 0;
    let mut bounding = caps.bounding().clone().unwrap_or_default();
    for c in &drop {
        bounding.remove(c);
    }
    bounding.extend(add.iter().copied());
    caps.set_bounding(Some(bounding.clone()));
    if root {
        caps.set_effective(Some(bounding.clone()));
        caps.set_permitted(Some(bounding.clone()));
    }
    process.set_capabilities(Some(caps));
    spec.set_process(Some(process));
    if let Some(mut linux) = spec.linux().clone() {
        if linux.seccomp().is_some() {
            linux.set_seccomp(Some(kiln_exec::default_seccomp(&bounding)?));
        }
        spec.set_linux(Some(linux));
    }
    Ok(())
}

/// `--security-opt seccomp=unconfined` and `no-new-privileges`.
fn apply_security_opts(spec: &mut oci_spec::runtime::Spec, opts: &[String]) -> Result<()> {
    for o in opts {
        match o.as_str() {
            "seccomp=unconfined" | "seccomp:unconfined" => {
                if let Some(mut linux) = spec.linux().clone() {
                    linux.set_seccomp(None);
                    spec.set_linux(Some(linux));
                }
            }
            "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true" => {
                if let Some(mut p) = spec.process().clone() {
                    p.set_no_new_privileges(Some(true));
                    spec.set_process(Some(p));
                }
            }
            other => bail!(
                "unsupported `--security-opt {other}`: kiln knows `seccomp=unconfined` and `no-new-privileges`"
            ),
        }
    }
    Ok(())
}

/// `--add-host` (or a bridge network): the container's `/etc/hosts` with the extra lines and
/// its hostname at its address (`ip` on a bridge network), bound over the image's.
fn add_hosts(
    spec: &mut oci_spec::runtime::Spec,
    state: &std::path::Path,
    hostname: &str,
    extra: &[String],
    ip: Option<std::net::Ipv4Addr>,
) -> Result<()> {
    let mut text =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for h in extra {
        let (host, ip) = h
            .split_once(':')
            .filter(|(host, ip)| !host.is_empty() && ip.parse::<std::net::IpAddr>().is_ok())
            .with_context(|| {
                format!("invalid `--add-host {h}`: write HOST:IP, e.g. `db:10.0.0.5`")
            })?;
        text.push_str(&format!("{ip}\t{host}\n"));
    }
    if !hostname.is_empty() {
        match ip {
            Some(ip) => text.push_str(&format!("{ip}\t{hostname}\n")),
            None => text.push_str(&format!("127.0.1.1\t{hostname}\n")),
        }
    }
    let path = state.join("hosts.extra");
    std::fs::write(&path, text).with_context(|| format!("cannot write `{}`", path.display()))?;
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(
        oci_spec::runtime::MountBuilder::default()
            .destination(PathBuf::from("/etc/hosts"))
            .typ("bind".to_string())
            .source(path)
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()?,
    );
    spec.set_mounts(Some(mounts));
    Ok(())
}

fn container_id() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn docker_rules_for_entrypoint_and_cmd() {
        let ep = v(&["cat"]);
        let cmd = v(&["/srv/a"]);
        assert_eq!(command_line(&ep, &cmd, None, &[]), v(&["cat", "/srv/a"]));
        assert_eq!(
            command_line(&ep, &cmd, None, &v(&["/b"])),
            v(&["cat", "/b"])
        );
        assert_eq!(command_line(&ep, &cmd, Some("ls"), &[]), v(&["ls"]));
        assert_eq!(
            command_line(&ep, &cmd, Some("ls"), &v(&["-l"])),
            v(&["ls", "-l"])
        );
        assert_eq!(
            command_line(&[], &v(&["sh"]), None, &v(&["echo", "x"])),
            v(&["echo", "x"])
        );
    }

    #[test]
    fn env_overrides_replace_by_key() {
        let env = crate::containers::merge_env(&v(&["PATH=/bin", "A=1"]), &v(&["A=2", "B=3"]));
        assert_eq!(env, v(&["PATH=/bin", "A=2", "B=3"]));
    }
}

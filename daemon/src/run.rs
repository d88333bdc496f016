//! `kiln run`: an image's command in the sandbox, with Docker's rules for combining the image's
//! ENTRYPOINT/CMD with what the user passes.

use anyhow::{bail, Context, Result};
use kiln_cache::Store;
use kiln_solver::{images, Solver};
use std::path::PathBuf;

/// One `kiln run`.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    pub image: String,
    /// Replaces the image's CMD when not empty.
    pub command: Vec<String>,
    /// `--entrypoint`: replaces the image's ENTRYPOINT and resets its CMD.
    pub entrypoint: Option<String>,
    /// `-e K=V` (or `-e K` to pass the caller's value).
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// `none` for a network namespace with only loopback; the host's otherwise.
    pub network_none: bool,
    /// Remove the container's directory when it exits.
    pub remove: bool,
    /// `--runtime`: the built-in sandbox (default) or `runc`/`crun`.
    pub runtime: kiln_exec::Runtime,
    /// `--memory`, `--cpus`, `--pids-limit` (a default pids limit without them).
    pub limits: kiln_exec::Limits,
    /// `--platform os/arch[/variant]`: the manifest to pick from a multi-platform image, which
    /// a single-platform image must match (default: this host's, any image accepted).
    pub platform: Option<String>,
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

/// Merges `-e` settings over the image's environment (same key: the later one wins).
pub(crate) fn merge_env(image_env: &[String], overrides: &[String]) -> Vec<String> {
    let mut env: Vec<String> = image_env.to_vec();
    for o in overrides {
        let entry = if o.contains('=') {
            o.clone()
        } else {
            match std::env::var(o) {
                Ok(v) => format!("{o}={v}"),
                Err(_) => continue,
            }
        };
        let key = entry.split('=').next().unwrap_or("").to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    }
    env
}

pub(crate) async fn run(store: &Store, solver: &Solver, req: RunRequest) -> Result<i32> {
    let wanted = match &req.platform {
        Some(p) => kiln_registry::Platform::parse(p).context("`kiln run --platform`")?,
        None => solver.platform().clone(),
    };
    let image = images::resolve_image(store, solver.registry(), &wanted, &req.image, false)
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
    images::ensure_layers(store, solver.registry(), &image).await?;
    let store2 = store.clone();
    let image2 = image.clone();
    let top = tokio::task::spawn_blocking(move || images::unpack(&store2, &image2)).await??;
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
    let network = if req.network_none {
        kiln_exec::Network::None
    } else {
        kiln_exec::Network::Host
    };
    let env = merge_env(cfg.env().as_deref().unwrap_or(&[]), &req.env);
    let cwd = req
        .workdir
        .clone()
        .or_else(|| cfg.working_dir().clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let id = container_id();
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
    let spec = kiln_exec::default_spec(&kiln_exec::ProcessSpec {
        args: argv,
        env,
        cwd,
        user,
        hostname: id[..12].to_string(),
        network,
        terminal: false,
    })?;
    let mut spec = spec;
    req.limits.apply_to(&mut spec)?;
    let mut lower: Vec<PathBuf> = chain.iter().map(|s| store.snapshots().fs_dir(*s)).collect();
    if lower.is_empty() {
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty)?;
        lower.push(empty);
    }
    let outcome = kiln_exec::run(
        kiln_exec::SandboxConfig {
            spec,
            rootfs: kiln_exec::RootFs {
                lower,
                upper: Some(upper),
                work: Some(work),
                target,
            },
            network,
            stdio: kiln_exec::Stdio::Inherit,
            state_dir: state,
            runtime: req.runtime.clone(),
        },
        None,
    )
    .await;
    if req.remove {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        let record = serde_json::json!({
            "id": id,
            "image": image.name,
            "manifest": image.manifest_digest,
            "exit_code": outcome.as_ref().map(|o| o.exit_code).ok(),
        });
        let _ = std::fs::write(
            dir.join("container.json"),
            serde_json::to_vec_pretty(&record)?,
        );
    }
    let outcome = outcome?;
    if let Some(limit) = outcome.out_of_memory {
        eprintln!(
            "kiln: out of memory: the container used its {} limit; give it more with `--memory`",
            kiln_exec::format_size(limit)
        );
    }
    Ok(outcome.exit_code)
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
        let env = merge_env(&v(&["PATH=/bin", "A=1"]), &v(&["A=2", "B=3"]));
        assert_eq!(env, v(&["PATH=/bin", "A=2", "B=3"]));
    }
}

//! `kiln --host ADDR build`: the build run by a daemon. The flags are checked and the secrets
//! read here, as an embedded build does; the contexts are sent as the daemon asks for them, and
//! the progress it streams back goes through the same renderer.

use crate::{interrupt, progress, BuildArgs};
use anyhow::{bail, Context, Result};
use kiln_client::api;
use kiln_engine::{ClientDockerfile, Event, OutputKind, ProgressSink, Stream};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Runs `b` on the daemon at `host`; the exit code, as an embedded build would end.
pub(crate) async fn build(host: &str, tls: &kiln_client::TlsFiles, b: BuildArgs) -> Result<i32> {
    let (remote, _stdin) = session(&b, false)?;
    let client = kiln_client::Client::connect(host, Some(tls)).await?;
    let renderer = if b.quiet {
        None
    } else {
        Some(Arc::new(progress::Renderer::new(&b.progress)?))
    };
    let finish = || {
        if let Some(r) = &renderer {
            r.finish();
        }
    };
    let started = std::time::Instant::now();
    let sink = renderer.clone();
    let mut running = Box::pin(client.build(
        remote,
        move |e| {
            if let (Some(r), Some(e)) = (&sink, engine_event(e)) {
                r.event(e);
            }
        },
        |s| {
            tracing::debug!(
                context = s.context,
                entries = s.entries,
                files_requested = s.files_requested,
                bytes_received = s.bytes_received,
                removed = s.removed,
                "context synced"
            )
        },
    ));
    let finished = tokio::select! {
        biased;
        code = interrupt::signalled() => {
            // Dropping the session tells the daemon, which drops the build.
            drop(running);
            finish();
            eprintln!(
                "error: the build was interrupted: its running steps were stopped and nothing \
                 was recorded for them; run it again to continue"
            );
            return Ok(code);
        }
        r = &mut running => r,
    };
    drop(running);
    finish();
    let f = finished?;
    if !f.error.is_empty() {
        bail!("{}", f.error);
    }
    let result = kiln_engine::BuildResult {
        manifest_digest: f.manifest_digest,
        config_digest: f.config_digest,
        manifest_size: f.manifest_size,
        media_type: f.media_type,
        executed: f.executed as usize,
        cached: f.cached as usize,
        cache_layers_fetched: f.cache_layers_fetched.map(|n| n as usize),
        warnings: f.warnings,
        collected: None,
    };
    crate::report_build(&b, &result, f.collected.as_deref(), started)
}

/// The session that runs `b` on a daemon, and the stdin input that must outlive it. For
/// `kiln debug llb --resolve` (`debug`), the contexts send only the Dockerfile and
/// `.dockerignore` files, under shared keys of their own, and nothing else is asked for.
fn session(
    b: &BuildArgs,
    debug: bool,
) -> Result<(kiln_client::RemoteBuild, Option<kiln_engine::StdinInput>)> {
    let flags = crate::build_flags(b);
    // Checked here first, so a bad flag fails as it does embedded, and the secrets are read
    // from this machine.
    let request = flags.request(&|k| std::env::var(k).ok())?;
    // Outputs to files are written here, from what the daemon sends back (as BuildKit's
    // client does).
    let mut outputs = Vec::new();
    for (i, o) in request.outputs.iter().enumerate() {
        let (dest, dir) = match &o.kind {
            OutputKind::Image { .. } => continue,
            OutputKind::Local { dest } | OutputKind::OciDir { dest, .. } => (dest, true),
            OutputKind::Tar { dest }
            | OutputKind::OciArchive { dest, .. }
            | OutputKind::DockerArchive { dest, .. } => (dest, false),
        };
        outputs.push(kiln_client::LocalOutput {
            index: i as u32,
            dest: dest.clone(),
            dir,
        });
    }
    let mut main_request = request.clone();
    // `kiln build -` and `-f -`: read here as embedded, then sent as any context or Dockerfile.
    let stdin = crate::stdin_input(&std::env::temp_dir(), b, &mut main_request)?;
    // A git context is checked out by the daemon, as BuildKit does.
    let git = main_request
        .context
        .to_str()
        .filter(|c| kiln_engine::is_git_context(c))
        .map(str::to_string);
    let mut contexts = Vec::new();
    let mut synced = Vec::new();
    let dockerfile = match &git {
        Some(_) => match &main_request.dockerfile {
            None => None,
            // An absolute path (`-f -` included) is a file of this machine, as embedded.
            Some(f) if f.is_absolute() => {
                let text = std::fs::read(f)
                    .with_context(|| format!("cannot read the Dockerfile `{}`", f.display()))?;
                Some(api::build_start::Dockerfile::DockerfileText(
                    api::DockerfileText {
                        name: dockerfile_name(f),
                        text,
                        dockerignore: None,
                    },
                ))
            }
            // A relative one is a path in the repository, as embedded.
            Some(f) => Some(api::build_start::Dockerfile::DockerfilePath(
                f.to_string_lossy().into_owned(),
            )),
        },
        None => {
            let main = kiln_engine::client_context(&main_request)?;
            let mut always = vec![".dockerignore".to_string()];
            let dockerfile = match main.dockerfile {
                ClientDockerfile::InContext(rel) => {
                    always.push(format!("{rel}.dockerignore"));
                    always.push(rel.clone());
                    api::build_start::Dockerfile::DockerfilePath(rel)
                }
                ClientDockerfile::Outside {
                    name,
                    text,
                    dockerignore,
                } => api::build_start::Dockerfile::DockerfileText(api::DockerfileText {
                    name,
                    text: text.into_bytes(),
                    dockerignore,
                }),
            };
            synced.push(api::SyncedContext {
                name: String::new(),
                shared_key: shared_key("", &main.dir, debug),
                display: b.context.display().to_string(),
            });
            contexts.push(local_context(main.dir, main.rules, always, debug));
            Some(dockerfile)
        }
    };
    let mut passed_contexts = Vec::new();
    for spec in &b.build_contexts {
        let (name, value) = kiln_engine::parse_build_context(spec)?;
        if value.contains("://") {
            passed_contexts.push(spec.clone());
            continue;
        }
        let (dir, rules) = kiln_engine::client_named_context(&name, &value)?;
        synced.push(api::SyncedContext {
            name: name.clone(),
            shared_key: shared_key(&name, &dir, debug),
            display: value.clone(),
        });
        contexts.push(local_context(
            dir,
            rules,
            vec![".dockerignore".to_string()],
            debug,
        ));
    }
    // A debug session builds nothing: no step asks for a secret, an agent or an output.
    let mut secret_ids: Vec<String> = request.secrets.0.keys().cloned().collect();
    secret_ids.sort();
    let mut ssh_ids: Vec<String> = request.ssh.keys().cloned().collect();
    ssh_ids.sort();
    if debug {
        secret_ids.clear();
        ssh_ids.clear();
        outputs.clear();
    }
    let start = api::BuildStart {
        flags: Some(api::BuildFlags {
            tags: b.tags.clone(),
            labels: b.labels.clone(),
            // Resolved here: the daemon's environment is not this one.
            build_args: request
                .build_args
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            source_date_epoch: request.source_date_epoch.clone(),
            target: b.target.clone(),
            outputs: b.outputs.clone(),
            push: b.push,
            no_cache: b.no_cache,
            pull: b.pull,
            platform: b.platform.clone(),
            no_cache_filter: b.no_cache_filter.clone(),
            cache_to: b.cache_to.clone(),
            cache_from: b.cache_from.clone(),
            network: b.network.clone(),
            runtime: b.runtime.clone(),
            memory: b.memory.clone(),
            cpus: b.cpus.clone(),
            pids_limit: b.pids_limit.clone(),
            shm_size: b.shm_size.clone(),
            ulimits: b.ulimits.clone(),
            add_hosts: b.add_hosts.clone(),
            build_contexts: passed_contexts,
        }),
        contexts: synced,
        dockerfile,
        git_context: git,
        secret_ids,
        ssh_ids,
        debug_llb: debug,
    };
    let remote = kiln_client::RemoteBuild {
        start,
        contexts,
        outputs,
        secrets: request.secrets.0.clone(),
        ssh: request.ssh.clone(),
    };
    Ok((remote, stdin))
}

/// `kiln --host ADDR debug llb --resolve`: the graph as the daemon compiles and resolves it,
/// printed as embedded prints it.
pub(crate) async fn debug_llb(
    host: &str,
    tls: &kiln_client::TlsFiles,
    b: &BuildArgs,
) -> Result<serde_json::Value> {
    let (remote, _stdin) = session(b, true)?;
    let client = kiln_client::Client::connect(host, Some(tls)).await?;
    let f = client.build(remote, |_| {}, |_| {}).await?;
    if !f.error.is_empty() {
        bail!("{}", f.error);
    }
    serde_json::from_str(&f.llb_json).context("the daemon's `debug llb` answer is not JSON")
}

/// A Dockerfile's file name, `Dockerfile` when it has none.
fn dockerfile_name(f: &Path) -> String {
    f.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("Dockerfile")
        .to_string()
}

/// A context as the client sends it; `only_always`: nothing but the `always` paths.
fn local_context(
    dir: std::path::PathBuf,
    rules: kiln_engine::IgnoreRules,
    always: Vec<String>,
    only_always: bool,
) -> kiln_client::LocalContext {
    let may_reinclude = rules.may_reinclude() && !only_always;
    kiln_client::LocalContext {
        dir,
        excluded: Box::new(move |p| only_always || rules.excluded(p)),
        may_reinclude,
        always,
    }
}

/// The key the daemon keeps this directory's last state under: the same directory of the same
/// machine syncs over its last state; another gets its own.
/// `debug`: the key of the Dockerfile-only state a `debug llb` session sends, kept apart so it
/// does not replace the build's.
fn shared_key(name: &str, dir: &Path, debug: bool) -> String {
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let mut h = std::hash::DefaultHasher::new();
    (machine.trim(), name, dir).hash(&mut h);
    let kind = if debug { "debug" } else { "ctx" };
    format!("{kind}-{:016x}", h.finish())
}

/// A streamed event as the renderer takes it.
fn engine_event(e: api::ProgressEvent) -> Option<Event> {
    use api::progress_event::Kind;
    let vertex = e.vertex as usize;
    let us = Duration::from_micros;
    Some(match e.kind? {
        Kind::Started(s) => Event::Started {
            vertex,
            name: s.name,
        },
        Kind::Cached(s) => Event::Cached {
            vertex,
            name: s.name,
        },
        Kind::Done(s) => Event::Done {
            vertex,
            name: s.name,
            elapsed: us(s.elapsed_us),
        },
        Kind::Failed(s) => Event::Failed {
            vertex,
            name: s.name,
            error: s.error,
        },
        Kind::Canceled(s) => Event::Canceled {
            vertex,
            name: s.name,
        },
        Kind::Log(l) => Event::Log {
            vertex,
            stream: if l.stream == 2 {
                Stream::Stderr
            } else {
                Stream::Stdout
            },
            data: l.data,
            time: us(l.time_us),
        },
        Kind::Context(c) => Event::Context {
            vertex,
            name: c.name,
            files: c.files as usize,
            hashed: c.hashed as usize,
            bytes: c.bytes,
            elapsed: us(c.elapsed_us),
        },
    })
}

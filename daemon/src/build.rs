//! The `Builder` service: one build session per stream. It syncs the client's contexts into
//! mirrors kept by shared key (`<store>/sessions/<key>/`), asks for the secrets, runs the build
//! on the shared engine with the mirrors as its contexts, and streams the progress back. The
//! stream ending (Ctrl-C, a killed client) drops the build, which cancels its steps.

mod mirror;
mod outbound;
mod ssh;

use crate::sessions::{ListingDigest, MirrorState, Sessions};
use crate::OpenBuilds;
use kiln_api::v1::{
    build_client_message::Msg as ClientMsg, build_server_message::Msg as ServerMsg,
    build_start::Dockerfile, builder_server::Builder, progress_event::Kind, BuildClientMessage,
    BuildFinished, BuildStart, ContextSynced, FileRequest, OutputData, ProgressEvent,
    SecretRequest,
};
use kiln_engine::{Engine, Event, OutputKind};
use outbound::{Outbound, OutboundStream};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Entries of one context the daemon accepts (a few hundred bytes each in memory).
const MAX_ENTRIES: usize = 4_000_000;

#[derive(Clone)]
pub(crate) struct BuildService {
    engine: Arc<Engine>,
    /// The mirrors, with one lock per shared key: two builds of one context key do not write
    /// its mirror at once (the second waits, then syncs over what the first left). It guards
    /// the digest of the listing the mirror last became, so an unchanged context costs no
    /// walk of the mirror.
    sessions: Arc<Sessions>,
    stop: CancellationToken,
    open: OpenBuilds,
}

impl BuildService {
    pub(crate) fn new(
        engine: Arc<Engine>,
        sessions: Arc<Sessions>,
        stop: CancellationToken,
        open: OpenBuilds,
    ) -> BuildService {
        BuildService {
            engine,
            sessions,
            stop,
            open,
        }
    }
}

fn listing_digest(entries: &[kiln_api::v1::Entry]) -> ListingDigest {
    use prost::Message;
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for e in entries {
        // Length-delimited, so entries cannot run into each other.
        h.update(e.encode_length_delimited_to_vec());
    }
    h.finalize().into()
}

#[tonic::async_trait]
impl Builder for BuildService {
    type BuildStream = OutboundStream;

    async fn build(
        &self,
        request: Request<Streaming<BuildClientMessage>>,
    ) -> Result<Response<Self::BuildStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = outbound::channel();
        let service = self.clone();
        let open = self.open.open();
        tokio::spawn(async move {
            let _open = open;
            let out = tx.clone();
            let stop = service.stop.clone();
            let session = Session {
                service,
                tx: tx.clone(),
                inbound,
            };
            tokio::select! {
                r = session.run() => {
                    if let Err(status) = r {
                        out.fail(status);
                    }
                }
                _ = stop.cancelled() => {
                    out.fail(Status::unavailable("the kiln daemon is shutting down"));
                }
            }
            let dropped = out.dropped_events();
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "a client read its build's progress too slowly: events were dropped"
                );
            }
        });
        Ok(Response::new(rx))
    }
}

struct Session {
    service: BuildService,
    tx: Outbound,
    inbound: Streaming<BuildClientMessage>,
}

/// A shared key names a directory: letters, digits, `-`, `_`, `.`, not starting with `.`.
fn check_key(key: &str) -> Result<(), Status> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && !key.starts_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "`{key}` is not a context shared key: use letters, digits, `-`, `_` and `.`"
        )))
    }
}

fn send(tx: &Outbound, msg: ServerMsg) -> Result<(), Status> {
    tx.send(msg)
}

impl Session {
    async fn next(&mut self) -> Result<ClientMsg, Status> {
        match self.inbound.next().await {
            Some(Ok(BuildClientMessage { msg: Some(m) })) => Ok(m),
            Some(Ok(_)) => Err(Status::invalid_argument("an empty message")),
            Some(Err(s)) => Err(s),
            None => Err(Status::cancelled("the client closed the session")),
        }
    }

    async fn run(mut self) -> Result<(), Status> {
        let ClientMsg::Start(start) = self.next().await? else {
            return Err(Status::invalid_argument(
                "a build session starts with `BuildStart`",
            ));
        };
        // The key locks are held until the build ends: it reads the mirrors.
        let mut held = Vec::new();
        let mut mirrors = Vec::new();
        let mut vouched = HashMap::new();
        // The client sends every context's entries before it answers for files.
        let mut listed = Vec::new();
        for (i, c) in start.contexts.iter().enumerate() {
            check_key(&c.shared_key)?;
            listed.push(self.entries(i as u32).await?);
        }
        let mut keys: Vec<&str> = start
            .contexts
            .iter()
            .map(|c| c.shared_key.as_str())
            .collect();
        // In one order, so two sessions sharing keys cannot each hold one the other waits for.
        keys.sort_unstable();
        keys.dedup();
        let mut by_key = HashMap::new();
        for key in keys {
            by_key.insert(key, held.len());
            held.push(self.service.sessions.lock(key).lock_owned().await);
        }
        for (i, (c, entries)) in start.contexts.iter().zip(listed).enumerate() {
            let dir = self.service.sessions.dir(&c.shared_key);
            let state = &mut *held[by_key[c.shared_key.as_str()]];
            self.sync(i as u32, &dir, entries, state).await?;
            state.last_used = Some(std::time::SystemTime::now());
            // Unwritten until the key's lock is released, after the build.
            vouched.insert(dir.clone(), state.fingerprint);
            mirrors.push(dir);
        }
        if start.debug_llb {
            let finished = debug_llb(&self.service.engine, &start, &mirrors).await;
            drop(held);
            return send(&self.tx, ServerMsg::Finished(finished));
        }
        let mut secrets = HashMap::new();
        for id in &start.secret_ids {
            send(
                &self.tx,
                ServerMsg::Secret(SecretRequest { id: id.clone() }),
            )?;
            match self.next().await? {
                ClientMsg::Secret(s) if &s.id == id => {
                    secrets.insert(s.id, s.value);
                }
                _ => return Err(Status::invalid_argument(format!("expected secret `{id}`"))),
            }
        }
        let scratch = tempdir_in(&self.service.engine.store().tmp_dir())?;
        let (proxy, ssh) = ssh::listen(&start.ssh_ids, scratch.path(), &self.tx)
            .map_err(|e| Status::internal(format!("cannot make the `--ssh` sockets: {e}")))?;
        // From here on the client sends only `--ssh` bytes: its side ending is the cancel
        // signal.
        let gone = CancellationToken::new();
        let watcher = gone.clone();
        let mut inbound = self.inbound;
        let relays = proxy.relays.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = inbound.next().await {
                if let Some(ClientMsg::SshData(d)) = m.msg {
                    relays.deliver(d);
                }
            }
            watcher.cancel();
        });
        let finished = tokio::select! {
            f = build(&self.service.engine, &start, &mirrors, vouched, secrets, ssh, scratch.path(), &self.tx) => f,
            _ = gone.cancelled() => return Ok(()),
        };
        drop(proxy);
        drop(held);
        send(&self.tx, ServerMsg::Finished(finished))
    }

    /// The entries of the client's context number `context`.
    async fn entries(&mut self, context: u32) -> Result<Vec<kiln_api::v1::Entry>, Status> {
        let mut entries = Vec::new();
        loop {
            match self.next().await? {
                ClientMsg::Entries(e) if e.context == context => {
                    entries.extend(e.entries);
                    // A client may not make the daemon hold unbounded metadata.
                    if entries.len() > MAX_ENTRIES {
                        return Err(Status::resource_exhausted(format!(
                            "a context of more than {MAX_ENTRIES} entries cannot be sent"
                        )));
                    }
                    if e.last {
                        break;
                    }
                }
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "expected the entries of context {context}"
                    )))
                }
            }
        }
        Ok(entries)
    }

    /// Makes the mirror at `dir` equal to `entries`, the client's context number `context`.
    /// `state.listing` is the digest of the listing the mirror last became in this daemon: the
    /// same listing again needs no walk of the mirror (only this daemon writes it, under the
    /// key's lock; a restart starts without digests, so a mirror left half-synced is walked).
    async fn sync(
        &mut self,
        context: u32,
        dir: &Path,
        entries: Vec<kiln_api::v1::Entry>,
        state: &mut MirrorState,
    ) -> Result<(), Status> {
        let total = entries.len() as u64;
        let digest = listing_digest(&entries);
        if state.listing == Some(digest) && dir.is_dir() {
            return send(
                &self.tx,
                ServerMsg::Synced(ContextSynced {
                    context,
                    entries: total,
                    files_requested: 0,
                    bytes_received: 0,
                    removed: 0,
                }),
            );
        }
        // Until this sync completes, the mirror is not any listing's; and from its first write
        // on, checksums of it are not what they were.
        state.listing = None;
        state.renew();
        let root = dir.to_path_buf();
        let plan = blocking(move || mirror::plan(&root, entries)).await?;
        let plan = Arc::new(plan);
        let paths = plan
            .wanted
            .iter()
            .map(|&i| plan.entry(i).path.clone())
            .collect::<Vec<_>>();
        let mut received = 0u64;
        if !paths.is_empty() {
            send(&self.tx, ServerMsg::Files(FileRequest { context, paths }))?;
        }
        for &i in &plan.wanted.clone() {
            let ClientMsg::File(first) = self.next().await? else {
                return Err(Status::invalid_argument("expected file data"));
            };
            received += first.data.len() as u64;
            let p = plan.clone();
            if first.eof {
                // Most files come in one piece: one trip to a blocking thread for all of it.
                blocking(move || {
                    let mut incoming = p.receive(i)?;
                    p.write(&mut incoming, &first.data)?;
                    p.finish(incoming)
                })
                .await?;
                continue;
            }
            let mut incoming = blocking(move || {
                let mut incoming = p.receive(i)?;
                p.write(&mut incoming, &first.data)?;
                Ok(incoming)
            })
            .await?;
            loop {
                let ClientMsg::File(data) = self.next().await? else {
                    return Err(Status::invalid_argument("expected file data"));
                };
                received += data.data.len() as u64;
                let p = plan.clone();
                let eof = data.eof;
                incoming = blocking(move || {
                    p.write(&mut incoming, &data.data)?;
                    Ok(incoming)
                })
                .await?;
                if eof {
                    break;
                }
            }
            let p = plan.clone();
            blocking(move || p.finish(incoming)).await?;
        }
        let p = plan.clone();
        blocking(move || p.finish_dirs()).await?;
        send(
            &self.tx,
            ServerMsg::Synced(ContextSynced {
                context,
                entries: total,
                files_requested: plan.wanted.len() as u64,
                bytes_received: received,
                removed: plan.removed,
            }),
        )?;
        state.listing = Some(digest);
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, mirror::MirrorError> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e @ mirror::MirrorError::Io { .. })) => Err(Status::internal(e.to_string())),
        Ok(Err(e)) => Err(Status::invalid_argument(e.to_string())),
        Err(e) => Err(Status::internal(format!("the context sync stopped: {e}"))),
    }
}

fn tempdir_in(dir: &Path) -> Result<tempfile::TempDir, Status> {
    std::fs::create_dir_all(dir)
        .and_then(|_| tempfile::Builder::new().prefix("session-").tempdir_in(dir))
        .map_err(|e| {
            Status::internal(format!(
                "cannot make a directory in `{}`: {e}",
                dir.display()
            ))
        })
}

/// Replaces the mirrors' paths in `text` by the client's names for them.
fn unmirror(start: &BuildStart, mirrors: &[PathBuf], text: String) -> String {
    start.contexts.iter().zip(mirrors).fold(text, |t, (c, m)| {
        t.replace(&m.display().to_string(), &c.display)
    })
}

/// `kiln debug llb --resolve` through the daemon: the graph compiled over the mirrors (which
/// hold the Dockerfile and `.dockerignore` files), base images resolved from this store.
async fn debug_llb(engine: &Engine, start: &BuildStart, mirrors: &[PathBuf]) -> BuildFinished {
    let failed = |e: anyhow::Error| BuildFinished {
        error: unmirror(start, mirrors, format!("{e:#}")),
        ..BuildFinished::default()
    };
    let scratch = match tempdir_in(&engine.store().tmp_dir()) {
        Ok(s) => s,
        Err(e) => return failed(anyhow::anyhow!("{}", e.message())),
    };
    let (request, _) = match request(
        start,
        mirrors,
        HashMap::new(),
        HashMap::new(),
        scratch.path(),
    ) {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    match kiln_engine::debug_llb_resolved(engine, &request).await {
        Ok(doc) => BuildFinished {
            llb_json: unmirror(start, mirrors, doc.to_string()),
            ..BuildFinished::default()
        },
        Err(e) => failed(e),
    }
}

/// Runs the build and says how it ended; the messages name the client's directories, not the
/// mirrors.
#[allow(clippy::too_many_arguments)]
async fn build(
    engine: &Engine,
    start: &BuildStart,
    mirrors: &[PathBuf],
    vouched: HashMap<PathBuf, [u8; 32]>,
    secrets: HashMap<String, Vec<u8>>,
    ssh: HashMap<String, PathBuf>,
    scratch: &Path,
    tx: &Outbound,
) -> BuildFinished {
    let unmirror = |text: String| unmirror(start, mirrors, text);
    let (request, outputs) = match request(start, mirrors, secrets, ssh, scratch) {
        Ok((mut r, outputs)) => {
            r.context_fingerprints = vouched;
            (r, outputs)
        }
        Err(e) => {
            return BuildFinished {
                error: unmirror(format!("{e:#}")),
                ..BuildFinished::default()
            }
        }
    };
    let sink = Arc::new(EventSink { tx: tx.clone() });
    let built = engine.build(request, sink).await;
    if built.is_ok() {
        for (index, path, dir) in outputs {
            if let Err(e) = send_output(tx, index, path, dir).await {
                return BuildFinished {
                    error: format!("cannot send output {index} to the client: {e}"),
                    ..BuildFinished::default()
                };
            }
        }
    }
    match built {
        Ok(r) => BuildFinished {
            error: String::new(),
            manifest_digest: r.manifest_digest,
            config_digest: r.config_digest,
            manifest_size: r.manifest_size,
            media_type: r.media_type,
            executed: r.executed as u64,
            cached: r.cached as u64,
            cache_layers_fetched: r.cache_layers_fetched.map(|n| n as u64),
            warnings: r.warnings.into_iter().map(unmirror).collect(),
            collected: r
                .collected
                .filter(|c| c.results + c.snapshots + c.blobs + c.cache_mounts > 0)
                .map(|c| c.summary()),
            llb_json: String::new(),
        },
        Err(e) => BuildFinished {
            error: unmirror(format!("{e:#}")),
            ..BuildFinished::default()
        },
    }
}

/// Bytes per `OutputData` message.
const CHUNK: usize = 1 << 20;

/// Streams output `index` from `path` (a directory goes as a tar) to the client.
async fn send_output(tx: &Outbound, index: u32, path: PathBuf, dir: bool) -> anyhow::Result<()> {
    let file = if dir {
        let tar = path.with_extension("tar");
        let (src, dst) = (path.clone(), tar.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut b = tar::Builder::new(std::fs::File::create(&dst)?);
            b.follow_symlinks(false);
            b.append_dir_all(".", &src)?;
            b.into_inner()?.sync_all()?;
            Ok(())
        })
        .await??;
        tar
    } else {
        path
    };
    let mut f = tokio::fs::File::open(&file).await?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut n = 0;
        while n < CHUNK {
            match tokio::io::AsyncReadExt::read(&mut f, &mut buf[n..]).await? {
                0 => break,
                k => n += k,
            }
        }
        let eof = n < CHUNK;
        tx.send_bulk(ServerMsg::Output(OutputData {
            output: index,
            data: buf[..n].to_vec(),
            eof,
        }))
        .await?;
        if eof {
            return Ok(());
        }
    }
}

/// What the client writes of a build: (output index, where the daemon wrote it, a directory).
type ClientOutputs = Vec<(u32, PathBuf, bool)>;

/// The engine's request: the client's flags parsed as the embedded cli parses them, over the
/// mirrors; outputs to files go to `scratch`, to be sent to the client.
fn request(
    start: &BuildStart,
    mirrors: &[PathBuf],
    secrets: HashMap<String, Vec<u8>>,
    ssh: HashMap<String, PathBuf>,
    scratch: &Path,
) -> anyhow::Result<(kiln_engine::BuildRequest, ClientOutputs)> {
    let f = start.flags.clone().unwrap_or_default();
    if let Some(url) = &start.git_context {
        anyhow::ensure!(kiln_engine::is_git_context(url), "`{url}` is not a git URL");
    }
    // The main context: the git URL the engine checks out, or the first mirror.
    let (main, named) = match &start.git_context {
        Some(url) => (PathBuf::from(url), 0),
        None => (
            mirrors
                .first()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("the client sent no build context"))?,
            1,
        ),
    };
    let dockerfile = match &start.dockerfile {
        Some(Dockerfile::DockerfilePath(rel)) => {
            mirror_path_check(rel)?;
            // In a git context, the engine finds it in the checkout.
            Some(match &start.git_context {
                Some(_) => PathBuf::from(rel),
                None => main.join(rel),
            })
        }
        Some(Dockerfile::DockerfileText(t)) => {
            mirror_path_check(&t.name)?;
            anyhow::ensure!(!t.name.contains('/'), "a Dockerfile name has no `/`");
            let path = scratch.join(&t.name);
            std::fs::write(&path, &t.text)?;
            if let Some(ignore) = &t.dockerignore {
                std::fs::write(scratch.join(format!("{}.dockerignore", t.name)), ignore)?;
            }
            Some(path)
        }
        None => None,
    };
    let mut build_contexts = f.build_contexts.clone();
    for (c, m) in start.contexts.iter().zip(mirrors).skip(named) {
        build_contexts.push(format!("{}={}", c.name, m.display()));
    }
    let flags = kiln_engine::BuildFlags {
        context: main,
        file: dockerfile,
        tags: f.tags,
        labels: f.labels,
        build_args: f.build_args,
        target: f.target,
        build_contexts,
        outputs: f.outputs,
        push: f.push,
        no_cache: f.no_cache,
        pull: f.pull,
        platform: f.platform,
        no_cache_filter: f.no_cache_filter,
        cache_to: f.cache_to,
        cache_from: f.cache_from,
        secrets: Vec::new(),
        ssh: Vec::new(),
        network: f.network,
        runtime: f.runtime,
        memory: f.memory,
        cpus: f.cpus,
        pids_limit: f.pids_limit,
        shm_size: f.shm_size,
        ulimits: f.ulimits,
        add_hosts: f.add_hosts,
    };
    // The daemon's environment is not the client's: a `--build-arg KEY` the client could not
    // resolve is unset, and `SOURCE_DATE_EPOCH` is the client's.
    let epoch = f.source_date_epoch;
    let mut request = flags.request(&|k| {
        if k == "SOURCE_DATE_EPOCH" {
            epoch.clone()
        } else {
            None
        }
    })?;
    request.secrets = kiln_engine::Secrets(secrets);
    request.ssh = ssh;
    let mut outputs = Vec::new();
    for (i, o) in request.outputs.iter_mut().enumerate() {
        let here = scratch.join(format!("output-{i}"));
        let (dest, dir) = match &mut o.kind {
            OutputKind::Image { .. } => continue,
            OutputKind::Local { dest } | OutputKind::OciDir { dest, .. } => (dest, true),
            OutputKind::Tar { dest }
            | OutputKind::OciArchive { dest, .. }
            | OutputKind::DockerArchive { dest, .. } => (dest, false),
        };
        *dest = here.clone();
        outputs.push((i as u32, here, dir));
    }
    Ok((request, outputs))
}

fn mirror_path_check(rel: &str) -> anyhow::Result<()> {
    let bad = rel.is_empty()
        || rel.contains('\0')
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    anyhow::ensure!(
        !bad,
        "the Dockerfile path `{rel}` is not a plain path inside the context"
    );
    Ok(())
}

/// Sends the solver's events to the client.
struct EventSink {
    tx: Outbound,
}

impl kiln_engine::ProgressSink for EventSink {
    fn event(&self, event: Event) {
        let _ = send(&self.tx, ServerMsg::Event(progress_event(event)));
    }
}

fn progress_event(event: Event) -> ProgressEvent {
    use kiln_api::v1::{
        ContextChecked, VertexCached, VertexCanceled, VertexDone, VertexFailed, VertexLog,
        VertexStarted,
    };
    let vertex = event.vertex() as u64;
    let kind = match event {
        Event::Started { name, .. } => Kind::Started(VertexStarted { name }),
        Event::Cached { name, .. } => Kind::Cached(VertexCached { name }),
        Event::Done { name, elapsed, .. } => Kind::Done(VertexDone {
            name,
            elapsed_us: elapsed.as_micros() as u64,
        }),
        Event::Failed { name, error, .. } => Kind::Failed(VertexFailed { name, error }),
        Event::Canceled { name, .. } => Kind::Canceled(VertexCanceled { name }),
        Event::Log {
            stream, data, time, ..
        } => Kind::Log(VertexLog {
            stream: match stream {
                kiln_engine::Stream::Stdout => 1,
                kiln_engine::Stream::Stderr => 2,
            },
            data,
            time_us: time.as_micros() as u64,
        }),
        Event::Context {
            name,
            files,
            hashed,
            bytes,
            elapsed,
            ..
        } => Kind::Context(ContextChecked {
            name,
            files: files as u64,
            hashed: hashed as u64,
            bytes,
            elapsed_us: elapsed.as_micros() as u64,
        }),
    };
    ProgressEvent {
        vertex,
        kind: Some(kind),
    }
}

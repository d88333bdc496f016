//! The client half of the build session: sends the flags and each context's metadata, answers
//! the daemon's requests for files (only files it listed, never through a symlink) and secrets,
//! and hands the progress events to the caller until the daemon says how the build ended.

use crate::{Client, ClientError};
use kiln_api::v1::{
    build_client_message::Msg as ClientMsg, build_server_message::Msg as ServerMsg,
    builder_client::BuilderClient, BuildClientMessage, BuildFinished, BuildStart, ContextEntries,
    Entry, EntryKind, FileData, ProgressEvent, SecretValue, SshData,
};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// Entries per `ContextEntries` message (well under gRPC's 4 MiB message limit).
const BATCH: usize = 2000;
/// Bytes per `FileData` message.
const CHUNK: usize = 1 << 20;

/// A directory the client syncs to the daemon.
pub struct LocalContext {
    pub dir: PathBuf,
    /// True for a path (relative, `/`-separated) that `.dockerignore` leaves out.
    pub excluded: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// Whether an excluded directory may hold included paths (`!` patterns): then it is walked.
    pub may_reinclude: bool,
    /// Paths sent even when excluded (the Dockerfile and `.dockerignore`, which BuildKit always
    /// reads).
    pub always: Vec<String>,
}

/// An `--output` the client writes: output number `index` of the build's outputs (as the
/// flags list them) goes to `dest` (`-`: stdout), a directory when `dir`.
pub struct LocalOutput {
    pub index: u32,
    pub dest: PathBuf,
    pub dir: bool,
}

/// One build through the daemon. `start.contexts` lists `contexts` in the same order.
pub struct RemoteBuild {
    pub start: BuildStart,
    pub contexts: Vec<LocalContext>,
    pub outputs: Vec<LocalOutput>,
    /// `--secret` values by id, read by the client; sent when the daemon asks.
    pub secrets: HashMap<String, Vec<u8>>,
    /// `--ssh` agent sockets by id, connected when a step connects to the daemon's.
    pub ssh: HashMap<String, PathBuf>,
}

/// What a context sync cost, as the daemon reports it.
pub use kiln_api::v1::ContextSynced;

impl Client {
    /// Runs `build` on the daemon, giving each progress event to `on_event` (and each finished
    /// sync to `on_synced`), and returns how it ended. Dropping the future cancels the build.
    pub async fn build(
        &self,
        build: RemoteBuild,
        mut on_event: impl FnMut(ProgressEvent),
        mut on_synced: impl FnMut(&ContextSynced),
    ) -> Result<BuildFinished, ClientError> {
        let (tx, rx) = mpsc::channel::<BuildClientMessage>(16);
        let send = |tx: &mpsc::Sender<BuildClientMessage>, msg| {
            let tx = tx.clone();
            async move {
                tx.send(BuildClientMessage { msg: Some(msg) })
                    .await
                    .map_err(|_| ClientError::SessionClosed)
            }
        };
        send(&tx, ClientMsg::Start(build.start)).await?;
        let mut response = BuilderClient::new(self.channel.clone())
            .build(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        // The walk runs beside the daemon's answers; the lists are kept to check its requests.
        // Each context's directory and its files with the sizes listed.
        let contexts: Vec<(PathBuf, HashMap<String, u64>)> = {
            let mut listed = Vec::new();
            for (i, c) in build.contexts.into_iter().enumerate() {
                let dir = c.dir.clone();
                let entries = tokio::task::spawn_blocking(move || walk(&c))
                    .await
                    .map_err(|e| ClientError::Context {
                        dir: dir.clone(),
                        source: std::io::Error::other(e.to_string()),
                    })??;
                let files = entries
                    .iter()
                    .filter(|e| e.kind() == EntryKind::File)
                    .map(|e| (e.path.clone(), e.size))
                    .collect();
                let mut batches = entries.chunks(BATCH).peekable();
                if batches.peek().is_none() {
                    send(&tx, entries_msg(i, Vec::new(), true)).await?;
                }
                while let Some(b) = batches.next() {
                    let last = batches.peek().is_none();
                    send(&tx, entries_msg(i, b.to_vec(), last)).await?;
                }
                listed.push((dir, files));
            }
            listed
        };
        let mut writing: HashMap<u32, Sink> = HashMap::new();
        let mut agents: HashMap<u32, tokio::net::unix::OwnedWriteHalf> = HashMap::new();
        loop {
            let Some(msg) = response.message().await? else {
                return Err(ClientError::SessionClosed);
            };
            match msg.msg {
                Some(ServerMsg::Files(req)) => {
                    let (dir, files) = contexts
                        .get(req.context as usize)
                        .ok_or(ClientError::Protocol("a file of an unknown context"))?;
                    for path in req.paths {
                        let Some(&size) = files.get(&path) else {
                            return Err(ClientError::Protocol(
                                "the daemon asked for a file the client did not list",
                            ));
                        };
                        send_file(&tx, dir, &path, size).await?;
                    }
                }
                Some(ServerMsg::Secret(req)) => {
                    let value = build.secrets.get(&req.id).cloned().unwrap_or_default();
                    send(&tx, ClientMsg::Secret(SecretValue { id: req.id, value })).await?;
                }
                Some(ServerMsg::Event(e)) => on_event(e),
                Some(ServerMsg::Synced(s)) => on_synced(&s),
                Some(ServerMsg::Finished(f)) => return Ok(f),
                Some(ServerMsg::SshOpen(open)) => {
                    let conn = open.conn;
                    let agent = match build.ssh.get(&open.id) {
                        Some(path) => tokio::net::UnixStream::connect(path).await.ok(),
                        None => None,
                    };
                    let Some(agent) = agent else {
                        // No agent: the step's connection is closed, as an agent refusing it.
                        let close = SshData {
                            conn,
                            data: Vec::new(),
                            close: true,
                        };
                        send(&tx, ClientMsg::SshData(close)).await?;
                        continue;
                    };
                    let (mut read, write) = agent.into_split();
                    agents.insert(conn, write);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        use tokio::io::AsyncReadExt;
                        let mut buf = vec![0u8; 32 * 1024];
                        loop {
                            let n = read.read(&mut buf).await.unwrap_or(0);
                            let msg = SshData {
                                conn,
                                data: buf[..n].to_vec(),
                                close: n == 0,
                            };
                            let sent = tx
                                .send(BuildClientMessage {
                                    msg: Some(ClientMsg::SshData(msg)),
                                })
                                .await;
                            if sent.is_err() || n == 0 {
                                return;
                            }
                        }
                    });
                }
                Some(ServerMsg::SshData(d)) => {
                    use tokio::io::AsyncWriteExt;
                    if d.close {
                        if let Some(mut w) = agents.remove(&d.conn) {
                            let _ = w.shutdown().await;
                        }
                    } else if let Some(w) = agents.get_mut(&d.conn) {
                        if w.write_all(&d.data).await.is_err() {
                            agents.remove(&d.conn);
                        }
                    }
                }
                Some(ServerMsg::Output(o)) => {
                    let out = build.outputs.iter().find(|l| l.index == o.output).ok_or(
                        ClientError::Protocol("an output the client did not ask for"),
                    )?;
                    let sink = match writing.entry(o.output) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => e.insert(Sink::open(out)?),
                    };
                    sink.write(&o.data).map_err(|e| output_error(out, e))?;
                    if o.eof {
                        if let Some(sink) = writing.remove(&o.output) {
                            sink.finish(out).map_err(|e| output_error(out, e))?;
                        }
                    }
                }
                None => return Err(ClientError::Protocol("an empty message")),
            }
        }
    }
}

fn output_error(out: &LocalOutput, source: std::io::Error) -> ClientError {
    ClientError::Output {
        dest: out.dest.clone(),
        source,
    }
}

/// Where an output's bytes go while they arrive.
enum Sink {
    Stdout,
    File(std::fs::File),
    /// A directory output's tar, unpacked at the end.
    Tar(tempfile::NamedTempFile),
}

impl Sink {
    fn open(out: &LocalOutput) -> Result<Sink, ClientError> {
        let opened = if out.dir {
            tempfile::NamedTempFile::new().map(Sink::Tar)
        } else if out.dest == Path::new("-") {
            Ok(Sink::Stdout)
        } else {
            std::fs::File::create(&out.dest).map(Sink::File)
        };
        opened.map_err(|e| output_error(out, e))
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        match self {
            Sink::Stdout => std::io::stdout().lock().write_all(data),
            Sink::File(f) => f.write_all(data),
            Sink::Tar(t) => t.write_all(data),
        }
    }

    fn finish(self, out: &LocalOutput) -> std::io::Result<()> {
        use std::io::{Seek, Write};
        match self {
            Sink::Stdout => std::io::stdout().lock().flush(),
            Sink::File(f) => f.sync_all(),
            Sink::Tar(mut t) => {
                t.as_file_mut().rewind()?;
                std::fs::create_dir_all(&out.dest)?;
                let mut archive = tar::Archive::new(t.as_file_mut());
                archive.set_preserve_permissions(true);
                archive.set_preserve_mtime(true);
                archive.set_overwrite(true);
                archive.unpack(&out.dest)
            }
        }
    }
}

fn entries_msg(context: usize, entries: Vec<Entry>, last: bool) -> ClientMsg {
    ClientMsg::Entries(ContextEntries {
        context: context as u32,
        entries,
        last,
    })
}

/// Sends one listed file in chunks, at most the `size` listed (a file growing since the walk is
/// cut there; the next build sends it whole); opened without following a symlink put in its
/// place since the walk.
async fn send_file(
    tx: &mpsc::Sender<BuildClientMessage>,
    dir: &Path,
    rel: &str,
    size: u64,
) -> Result<(), ClientError> {
    let path = dir.join(rel);
    let err = |source| ClientError::Context {
        dir: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NOFOLLOW)
        .open(&path)
        .map_err(err)?;
    let mut file = file.take(size);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_full(&mut file, &mut buf).map_err(err)?;
        let eof = n < CHUNK;
        tx.send(BuildClientMessage {
            msg: Some(ClientMsg::File(FileData {
                data: buf[..n].to_vec(),
                eof,
            })),
        })
        .await
        .map_err(|_| ClientError::SessionClosed)?;
        if eof {
            return Ok(());
        }
    }
}

/// `O_NOFOLLOW` on Linux (the same on every architecture kiln builds for).
const O_NOFOLLOW: i32 = 0o400000;

fn read_full(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The context's entries, parents before children, sorted by name; `.dockerignore` applied.
fn walk(c: &LocalContext) -> Result<Vec<Entry>, ClientError> {
    let mut out = Vec::new();
    let always: HashSet<&str> = c.always.iter().map(String::as_str).collect();
    walk_dir(c, &always, &c.dir, "", &mut out)?;
    Ok(out)
}

fn walk_dir(
    c: &LocalContext,
    always: &HashSet<&str>,
    dir: &Path,
    rel: &str,
    out: &mut Vec<Entry>,
) -> Result<(), ClientError> {
    let err = |source| ClientError::Context {
        dir: dir.to_path_buf(),
        source,
    };
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(err)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    names.sort();
    for name in names {
        let Some(name) = name.to_str() else {
            return Err(ClientError::Context {
                dir: dir.join(&name),
                source: std::io::Error::other("the name is not UTF-8, which kiln cannot send"),
            });
        };
        let child = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let path = dir.join(name);
        let meta = std::fs::symlink_metadata(&path).map_err(|source| ClientError::Context {
            dir: path.clone(),
            source,
        })?;
        let ft = meta.file_type();
        let excluded = (c.excluded)(&child) && !always.contains(child.as_str());
        // An always-sent path inside an excluded directory needs that directory too.
        let leads_to_always = always
            .iter()
            .any(|a| a.starts_with(&child) && a[child.len()..].starts_with('/'));
        if excluded && !(ft.is_dir() && (c.may_reinclude || leads_to_always)) {
            continue;
        }
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_file() {
            EntryKind::File
        } else {
            // Sockets, fifos and devices are not context content.
            continue;
        };
        let link_target = if ft.is_symlink() {
            let t = std::fs::read_link(&path).map_err(|source| ClientError::Context {
                dir: path.clone(),
                source,
            })?;
            t.to_str()
                .ok_or_else(|| ClientError::Context {
                    dir: path.clone(),
                    source: std::io::Error::other("the link target is not UTF-8"),
                })?
                .to_string()
        } else {
            String::new()
        };
        out.push(Entry {
            path: child.clone(),
            kind: kind as i32,
            mode: meta.mode() & 0o7777,
            size: if ft.is_file() { meta.len() } else { 0 },
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            link_target,
        });
        if ft.is_dir() {
            walk_dir(c, always, &path, &child, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(dir: &Path, ignored: &'static [&'static str], always: &[&str]) -> LocalContext {
        LocalContext {
            dir: dir.to_path_buf(),
            excluded: Box::new(move |p| ignored.contains(&p)),
            may_reinclude: false,
            always: always.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_walk_lists_parents_first_skips_ignored_and_keeps_links_as_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("src/deep")).unwrap();
        std::fs::write(d.join("src/deep/a.txt"), "a").unwrap();
        std::fs::write(d.join("secret.key"), "k").unwrap();
        std::fs::create_dir(d.join("ignored")).unwrap();
        std::fs::write(d.join("ignored/Dockerfile"), "FROM x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        let c = context(
            d,
            &["secret.key", "ignored", "ignored/Dockerfile"],
            &["ignored/Dockerfile"],
        );
        let entries = walk(&c).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "ignored",
                "ignored/Dockerfile",
                "link",
                "src",
                "src/deep",
                "src/deep/a.txt"
            ]
        );
        let link = &entries[2];
        assert_eq!(link.kind(), EntryKind::Symlink);
        assert_eq!(link.link_target, "/etc/passwd");
        assert_eq!(link.size, 0);
    }
}

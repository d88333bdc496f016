//! `--ssh` through the daemon: a unix socket per id in the session's scratch directory, handed
//! to the build as that id's agent; each connection a step makes is relayed over the session
//! to the client, which connects to its own agent.

use super::{send, Outbound};
use kiln_api::v1::{build_server_message::Msg as ServerMsg, SshData, SshOpen};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::task::JoinHandle;

/// The open connections: what the client sends for each goes to its writer.
#[derive(Clone, Default)]
pub(super) struct Relays {
    writers: Arc<Mutex<HashMap<u32, UnboundedSender<Vec<u8>>>>>,
    next: Arc<AtomicU32>,
}

/// The sockets of one session; dropping it stops them and every relay.
pub(super) struct Proxy {
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    pub(super) relays: Relays,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for t in tasks.iter() {
            t.abort();
        }
    }
}

impl Relays {
    /// Bytes (or the end) the client sent for connection `conn`.
    pub(super) fn deliver(&self, d: SshData) {
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        if d.close {
            // Dropping the sender ends the writer, which shuts the socket's write side.
            writers.remove(&d.conn);
        } else if let Some(w) = writers.get(&d.conn) {
            let _ = w.send(d.data);
        }
    }
}

/// Listens for each id in `dir`; returns the sockets by id for the build request.
pub(super) fn listen(
    ids: &[String],
    dir: &Path,
    tx: &Outbound,
) -> std::io::Result<(Proxy, HashMap<String, PathBuf>)> {
    let proxy = Proxy {
        tasks: Arc::default(),
        relays: Relays::default(),
    };
    let mut sockets = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        // By number: an id is the client's text, a file name is not the place for it.
        let path = dir.join(format!("ssh-{i}.sock"));
        let listener = UnixListener::bind(&path)?;
        sockets.insert(id.clone(), path);
        let (id, tx, relays, tasks) = (
            id.clone(),
            tx.clone(),
            proxy.relays.clone(),
            proxy.tasks.clone(),
        );
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = relays.next.fetch_add(1, Ordering::Relaxed);
                let (mut read, mut write) = stream.into_split();
                let (wtx, mut wrx) = unbounded_channel::<Vec<u8>>();
                relays
                    .writers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(conn, wtx);
                if send(
                    &tx,
                    ServerMsg::SshOpen(SshOpen {
                        id: id.clone(),
                        conn,
                    }),
                )
                .is_err()
                {
                    return;
                }
                let out = tx.clone();
                let reader = tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        let n = read.read(&mut buf).await.unwrap_or(0);
                        let msg = SshData {
                            conn,
                            data: buf[..n].to_vec(),
                            close: n == 0,
                        };
                        if out.send_bulk(ServerMsg::SshData(msg)).await.is_err() || n == 0 {
                            return;
                        }
                    }
                });
                let writer = tokio::spawn(async move {
                    while let Some(data) = wrx.recv().await {
                        if write.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    let _ = write.shutdown().await;
                });
                let mut tasks = tasks.lock().unwrap_or_else(|e| e.into_inner());
                tasks.push(reader);
                tasks.push(writer);
            }
        });
        proxy
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(accept);
    }
    Ok((proxy, sockets))
}

//! `RUN --mount=type=ssh`: a socket of the step's own that forwards every connection to the
//! host's ssh agent, so that the step sees it with the mount's `mode`, `uid` and `gid` (as
//! BuildKit forwards the agent) while the agent's own socket keeps its owner and permissions.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::SolveError;

/// A running forwarder; dropping it stops accepting and removes its socket.
pub(crate) struct SshProxy {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    // Holds the socket's directory: short, under the system temp dir, because a unix socket
    // path is limited to 107 bytes and the store may be deep.
    _dir: tempfile::TempDir,
}

impl SshProxy {
    /// The socket to bind into the step.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so that it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Listen on a new socket owned by `uid:gid` with `mode` and forward to `agent`.
pub(crate) fn start(agent: &Path, uid: u32, gid: u32, mode: u32) -> Result<SshProxy, SolveError> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-ssh-")
        .tempdir()
        .map_err(SolveError::io(
            "cannot make a directory for the ssh agent socket",
        ))?;
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).map_err(SolveError::io(format!(
        "cannot create the ssh agent socket `{}`",
        socket.display()
    )))?;
    std::os::unix::fs::chown(&socket, Some(uid), Some(gid)).map_err(SolveError::io(format!(
        "cannot give the ssh agent socket to {uid}:{gid}"
    )))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode))
        .map_err(SolveError::io("cannot set the ssh agent socket's mode"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let (agent, flag) = (agent.to_path_buf(), stop.clone());
    let acceptor = std::thread::Builder::new()
        .name("kiln-ssh-proxy".into())
        .spawn(move || accept_loop(listener, &agent, &flag))
        .map_err(SolveError::io("cannot start the ssh agent forwarder"))?;
    Ok(SshProxy {
        socket,
        stop,
        acceptor: Some(acceptor),
        _dir: dir,
    })
}

fn accept_loop(listener: UnixListener, agent: &Path, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let client = match conn {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        // An agent that went away only fails this connection: the client sees it closed.
        let Ok(upstream) = UnixStream::connect(agent) else {
            continue;
        };
        let _ = std::thread::Builder::new()
            .name("kiln-ssh-conn".into())
            .spawn(move || forward(client, upstream));
    }
}

/// Copy both ways until either side closes.
fn forward(client: UnixStream, upstream: UnixStream) {
    let (Ok(mut client_r), Ok(mut upstream_r)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let (mut client_w, mut upstream_w) = (client, upstream);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_r, &mut upstream_w);
        let _ = upstream_w.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut upstream_r, &mut client_w);
    let _ = client_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn forwards_both_ways_with_the_mounts_owner_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let agent_path = dir.path().join("agent");
        let agent = UnixListener::bind(&agent_path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = agent.accept().unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"pong").unwrap();
            buf
        });
        let (uid, gid) = (nix_ids().0, nix_ids().1);
        let proxy = start(&agent_path, uid, gid, 0o640).unwrap();
        let md = std::fs::metadata(proxy.socket()).unwrap();
        assert_eq!(md.mode() & 0o777, 0o640);
        assert_eq!((md.uid(), md.gid()), (uid, gid));
        let mut c = UnixStream::connect(proxy.socket()).unwrap();
        c.write_all(b"ping").unwrap();
        let mut reply = [0u8; 4];
        c.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"pong");
        assert_eq!(&server.join().unwrap(), b"ping");
        let socket = proxy.socket().to_path_buf();
        drop(proxy);
        assert!(!socket.exists());
    }

    /// This process's own ids, so the test needs no privilege to chown.
    fn nix_ids() -> (u32, u32) {
        let md = std::fs::metadata("/proc/self").unwrap();
        (md.uid(), md.gid())
    }
}

//! The daemon's listeners: `unix:///path` sockets, created mode 0660 and group `kiln` when that
//! group exists (their parent directory made when missing, a stale socket of a dead daemon
//! replaced, the file removed again at shutdown); `tcp://HOST:PORT` with mutual TLS (or, asked
//! for by name, without it); and the sockets systemd passes (`LISTEN_FDS`).

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Why an address cannot be listened on.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "`{0}` is not an address kiln can listen on: write `unix:///PATH` or `tcp://HOST:PORT`"
    )]
    BadAddress(String),
    #[error("another daemon is listening on `{0}`: stop it, or give another `--addr`")]
    InUse(String),
    #[error("`{0}` is a tcp address: give `--tlscert`, `--tlskey` and `--tlscacert` (clients must then show a certificate of that CA), or `--insecure-tcp` to serve anyone who can reach the port")]
    TcpNeedsTls(String),
    #[error("cannot read `{}` for TLS: {source}", path.display())]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the TLS files cannot be used: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error("`LISTEN_FDS` is `{0}`: systemd passes a number of sockets")]
    BadListenFds(String),
    #[error("cannot listen on `{addr}`: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// The files of `--tlscert`, `--tlskey` and `--tlscacert`: the daemon's certificate and key,
/// and the CA its clients' certificates must come from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    fn server_config(&self) -> Result<ServerTlsConfig, ListenError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| ListenError::TlsFile {
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?))
            .client_ca_root(Certificate::from_pem(read(&self.ca)?))
            .client_auth_optional(false))
    }
}

pub(crate) enum Socket {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

/// A bound listening socket, ready to be served.
pub struct Listener {
    addr: String,
    socket: Socket,
    tls: Option<ServerTlsConfig>,
    made: Option<SocketFile>,
}

/// A socket file this daemon made: removed when dropped, so that a stopped daemon leaves none.
pub(crate) struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Listener {
    /// Binds `addr`: `unix:///PATH`, or `tcp://HOST:PORT` with `tls` (or `insecure_tcp`, when
    /// the network is trusted: [`Listener::is_insecure_tcp`] says so). Must be called inside the runtime.
    pub fn bind(
        addr: &str,
        tls: Option<&TlsFiles>,
        insecure_tcp: bool,
    ) -> Result<Listener, ListenError> {
        if let Some(hostport) = addr.strip_prefix("tcp://") {
            return bind_tcp(addr, hostport, tls, insecure_tcp);
        }
        let path = unix_path(addr).ok_or_else(|| ListenError::BadAddress(addr.to_string()))?;
        let io = |source| ListenError::Io {
            addr: addr.to_string(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        remove_stale_socket(&path, addr)?;
        let std_socket = std::os::unix::net::UnixListener::bind(&path).map_err(io)?;
        let listener = Listener {
            addr: addr.to_string(),
            socket: Socket::Unix(unix_listener(std_socket).map_err(io)?),
            tls: None,
            made: Some(SocketFile(path.clone())),
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
        if let Some(gid) = kiln_group() {
            std::os::unix::fs::chown(&path, None, Some(gid)).map_err(io)?;
        }
        Ok(listener)
    }

    /// The listening sockets systemd passed this process (socket activation: `LISTEN_PID` is
    /// this process, `LISTEN_FDS` sockets from fd 3 on); empty when it passed none.
    pub fn from_systemd() -> Result<Vec<Listener>, ListenError> {
        let for_us = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|p| p == std::process::id());
        let Ok(count) = std::env::var("LISTEN_FDS") else {
            return Ok(Vec::new());
        };
        if !for_us {
            return Ok(Vec::new());
        }
        let n: RawFd = count
            .parse()
            .ok()
            .filter(|n| (0..=64).contains(n))
            .ok_or_else(|| ListenError::BadListenFds(count.clone()))?;
        // The variables stay (removing them races other threads' getenv); a child that
        // inherits them is told of fds that are not its own by `LISTEN_PID`, which names this
        // process, so it ignores them as this check does.
        let mut out = Vec::new();
        for fd in 3..3 + n {
            let addr = format!("fd://{fd}");
            let io = |source| ListenError::Io {
                addr: addr.clone(),
                source,
            };
            // SAFETY: systemd's protocol hands fds 3.. to this process (LISTEN_PID checked
            // above); nothing else in kiln owns them, and each is taken once.
            let std_socket = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
            if std_socket.local_addr().is_err() {
                // Not a socket: the fd is someone else's (a file opened since), never served.
                std::mem::forget(std_socket);
                return Err(ListenError::Io {
                    addr,
                    source: std::io::Error::other("systemd's fd is not a unix socket"),
                });
            }
            out.push(Listener {
                addr: addr.clone(),
                socket: Socket::Unix(unix_listener(std_socket).map_err(io)?),
                tls: None,
                made: None,
            });
        }
        Ok(out)
    }

    /// Whether it serves tcp without TLS (`--insecure-tcp`): the daemon should warn.
    pub fn is_insecure_tcp(&self) -> bool {
        matches!(self.socket, Socket::Tcp(_)) && self.tls.is_none()
    }

    /// The address it was bound as (`fd://N` for a socket systemd passed).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The socket and its TLS settings, for serving, and the socket file to remove once
    /// served.
    pub(crate) fn into_parts(self) -> (Socket, Option<ServerTlsConfig>, Option<SocketFile>) {
        (self.socket, self.tls, self.made)
    }
}

fn unix_listener(s: std::os::unix::net::UnixListener) -> std::io::Result<tokio::net::UnixListener> {
    s.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(s)
}

fn bind_tcp(
    addr: &str,
    hostport: &str,
    tls: Option<&TlsFiles>,
    insecure_tcp: bool,
) -> Result<Listener, ListenError> {
    let sockaddr: SocketAddr = hostport
        .parse()
        .map_err(|_| ListenError::BadAddress(addr.to_string()))?;
    let tls = match (tls, insecure_tcp) {
        (Some(files), _) => Some(files.server_config()?),
        (None, true) => None,
        (None, false) => return Err(ListenError::TcpNeedsTls(addr.to_string())),
    };
    let std_socket = std::net::TcpListener::bind(sockaddr).map_err(|source| ListenError::Io {
        addr: addr.to_string(),
        source,
    })?;
    let socket = std_socket
        .set_nonblocking(true)
        .and_then(|_| tokio::net::TcpListener::from_std(std_socket))
        .map_err(|source| ListenError::Io {
            addr: addr.to_string(),
            source,
        })?;
    Ok(Listener {
        addr: addr.to_string(),
        socket: Socket::Tcp(socket),
        tls,
        made: None,
    })
}

/// The gid of the group `kiln`, whose members may use a root daemon's socket.
fn kiln_group() -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == "kiln").then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// The path of a `unix://` address (`unix:///run/kiln/kiln.sock` → `/run/kiln/kiln.sock`).
fn unix_path(addr: &str) -> Option<PathBuf> {
    let path = Path::new(addr.strip_prefix("unix://")?);
    path.is_absolute().then(|| path.to_path_buf())
}

/// A socket file nobody answers on is a dead daemon's: removed so the new one can bind. One
/// that answers is a live daemon's, and is left alone.
fn remove_stale_socket(path: &Path, addr: &str) -> Result<(), ListenError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::Io {
            addr: addr.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ListenError::InUse(addr.to_string()));
    }
    std::fs::remove_file(path).map_err(|source| ListenError::Io {
        addr: addr.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_unix_addresses_are_accepted() {
        assert_eq!(
            unix_path("unix:///run/kiln/kiln.sock"),
            Some(PathBuf::from("/run/kiln/kiln.sock"))
        );
        assert_eq!(unix_path("unix://kiln.sock"), None);
        assert_eq!(unix_path("/run/kiln/kiln.sock"), None);
        assert_eq!(unix_path("tcp://127.0.0.1:1234"), None);
    }

    #[tokio::test]
    async fn a_live_socket_is_not_taken_over_a_stale_one_is_and_a_dropped_one_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("unix://{}/sub/kiln.sock", dir.path().display());
        let path = dir.path().join("sub/kiln.sock");
        let first = Listener::bind(&addr, None, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        assert!(matches!(
            Listener::bind(&addr, None, false),
            Err(ListenError::InUse(_))
        ));
        drop(first);
        assert!(!path.exists(), "the socket file outlived its listener");
        // A dead daemon's socket file, with nobody behind it, is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        Listener::bind(&addr, None, false).unwrap();
    }

    #[tokio::test]
    async fn tcp_needs_tls_unless_insecure_tcp_is_asked_for() {
        let Err(e) = Listener::bind("tcp://127.0.0.1:0", None, false) else {
            panic!("plain tcp was served")
        };
        assert!(matches!(e, ListenError::TcpNeedsTls(_)), "{e}");
        Listener::bind("tcp://127.0.0.1:0", None, true).unwrap();
        assert!(matches!(
            Listener::bind("tcp://localhost", None, true),
            Err(ListenError::BadAddress(_))
        ));
    }
}

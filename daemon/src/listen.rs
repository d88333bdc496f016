//! The daemon's listeners: `unix:///path` sockets, created mode 0660 (its parent directory
//! made when missing), a stale socket of a dead daemon replaced.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

/// Why an address cannot be listened on.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("`{0}` is not an address kiln can listen on: write `unix:///PATH`")]
    BadAddress(String),
    #[error("another daemon is listening on `{0}`: stop it, or give another `--addr`")]
    InUse(String),
    #[error("cannot listen on `{addr}`: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A bound listening socket, ready to be served.
pub struct Listener {
    addr: String,
    socket: UnixListener,
}

impl Listener {
    /// Binds `addr` (`unix:///PATH`). Must be called inside the runtime.
    pub fn bind(addr: &str) -> Result<Listener, ListenError> {
        let path = unix_path(addr).ok_or_else(|| ListenError::BadAddress(addr.to_string()))?;
        let io = |source| ListenError::Io {
            addr: addr.to_string(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        remove_stale_socket(&path, addr)?;
        let socket = UnixListener::bind(&path).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
        Ok(Listener {
            addr: addr.to_string(),
            socket,
        })
    }

    /// The address it was bound as.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub(crate) fn incoming(self) -> UnixListenerStream {
        UnixListenerStream::new(self.socket)
    }
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
    async fn a_live_socket_is_not_taken_over_and_a_stale_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("unix://{}/sub/kiln.sock", dir.path().display());
        let first = Listener::bind(&addr).unwrap();
        let mode = std::fs::metadata(dir.path().join("sub/kiln.sock"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o660);
        assert!(matches!(Listener::bind(&addr), Err(ListenError::InUse(_))));
        drop(first);
        // The socket file of the dropped listener is still there, with nobody behind it.
        Listener::bind(&addr).unwrap();
    }
}

//! A new pseudo-terminal for a container that asked for one (`-t`) where no caller's terminal
//! can serve (a detached container): its slave end becomes the command's stdin, stdout, stderr
//! and controlling terminal; the engine reads the master end as the command's output and holds
//! it open, so a shell waits for input as under `docker run -dit` instead of seeing end of file.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::ExecError;

/// Docker gives a detached container's terminal no size until a client attaches; 80x24 is
/// what programs assume for a terminal whose size is unknown, and keeps `stty size` sane.
const COLUMNS: u16 = 80;
const ROWS: u16 = 24;

/// Both ends of a new pseudo-terminal. The master end is close-on-exec, so that only the
/// command holds the slave end and the master sees the terminal hang up once it is gone.
pub(crate) struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

pub(crate) fn open() -> Result<Pty, ExecError> {
    let size = nix::pty::Winsize {
        ws_row: ROWS,
        ws_col: COLUMNS,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).map_err(|e| ExecError::Io {
        what: "cannot open a pseudo-terminal for the container",
        path: "/dev/ptmx".into(),
        cause: e.into(),
    })?;
    nix::fcntl::fcntl(
        pty.master.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| ExecError::Io {
        what: "cannot make the terminal's master end close-on-exec",
        path: "/dev/ptmx".into(),
        cause: e.into(),
    })?;
    Ok(Pty {
        master: pty.master,
        slave: pty.slave,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn what_the_slave_end_writes_is_read_from_the_master_end_until_it_hangs_up() {
        let pty = open().unwrap();
        let mut slave = std::fs::File::from(pty.slave);
        assert!(nix::unistd::isatty(slave.as_raw_fd()).unwrap());
        slave.write_all(b"hello\n").unwrap();
        drop(slave);
        let mut master = std::fs::File::from(pty.master);
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match master.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                // EIO: every slave descriptor is closed.
                Err(_) => break,
            }
        }
        // The line discipline turns "\n" into "\r\n", as Docker's logs of a `-t` container show.
        assert_eq!(got, b"hello\r\n");
    }
}

//! A new pseudo-terminal for a container that asked for one (`-t`): its slave end becomes the
//! command's stdin, stdout, stderr and controlling terminal; the engine reads the master end as
//! the command's output (so it is logged) and holds it open, so a shell waits for input as under
//! `docker run -dit` instead of seeing end of file.
//!
//! In the foreground ([`CallerRelay`]) the caller's terminal is put in raw mode and relayed, as
//! `docker run -it` does: keys (Ctrl-C too, which the container's own terminal turns into its
//! SIGINT) go to the master end, and the caller's window size is mirrored onto the container's
//! terminal at the start and on every SIGWINCH.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// How long the input thread waits for a key before it looks whether the command has ended.
const INPUT_POLL_MS: u16 = 50;

/// The caller's terminal relayed to a container's own: see the module docs. Dropping it (once
/// the command has ended) stops the relay and gives the caller's terminal its modes back.
pub(crate) struct CallerRelay {
    stop: Arc<AtomicBool>,
    input: Option<std::thread::JoinHandle<()>>,
    resize: Option<tokio::task::JoinHandle<()>>,
    raw: Option<RawMode>,
}

impl CallerRelay {
    /// Starts relaying to `master`; the caller's stdin is read only with `input` (`-i`).
    pub(crate) fn start(master: &OwnedFd, input: bool) -> Result<CallerRelay, ExecError> {
        let stdin = std::io::stdin();
        let on_terminal = nix::unistd::isatty(stdin.as_raw_fd()).unwrap_or(false);
        let dup = || {
            master.try_clone().map_err(|cause| ExecError::Io {
                what: "cannot share the container's terminal",
                path: "/dev/ptmx".into(),
                cause,
            })
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut relay = CallerRelay {
            stop: stop.clone(),
            input: None,
            resize: None,
            raw: None,
        };
        if on_terminal {
            copy_window_size(&dup()?);
            let target = dup()?;
            relay.resize =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                    .ok()
                    .map(|mut changes| {
                        tokio::spawn(async move {
                            while changes.recv().await.is_some() {
                                copy_window_size(&target);
                            }
                        })
                    });
            if input {
                relay.raw = RawMode::enter();
            }
        }
        if input {
            let target = dup()?;
            relay.input = Some(std::thread::spawn(move || relay_input(&target, &stop)));
        }
        Ok(relay)
    }
}

impl Drop for CallerRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(task) = self.resize.take() {
            task.abort();
        }
        // Joined before the modes go back, so that no key typed after the command ended is
        // swallowed by the relay (it sees `stop` within one poll).
        if let Some(thread) = self.input.take() {
            let _ = thread.join();
        }
        self.raw.take();
    }
}

/// Copies the caller's window size onto the container's terminal (whose foreground process
/// group the kernel then sends SIGWINCH).
fn copy_window_size(master: &OwnedFd) {
    let mut size = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into `size`, which lives across the call.
    if unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut size) } != 0 {
        return;
    }
    // SAFETY: TIOCSWINSZ reads one `winsize` from `size`; `master` is an open pty master.
    unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size);
    }
}

/// Copies the caller's stdin to the container's terminal until `stop` or end of input (which
/// the container's terminal hears as Ctrl-D, its end of file).
fn relay_input(master: &OwnedFd, stop: &AtomicBool) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let stdin = std::io::stdin();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(INPUT_POLL_MS)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        let n = match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
            Ok(0) => {
                let _ = write_all(master, b"\x04");
                return;
            }
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(_) => return,
        };
        if write_all(master, &buf[..n]).is_err() {
            return;
        }
    }
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> nix::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The caller's terminal in raw mode (keys go through unprocessed, Ctrl-C included), and its
/// modes before, put back when dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = nix::sys::termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSADRAIN, &raw)
            .ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        let _ = nix::sys::termios::tcsetattr(
            stdin.as_fd(),
            nix::sys::termios::SetArg::TCSADRAIN,
            &self.saved,
        );
    }
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

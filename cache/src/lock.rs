//! The store's owner lock: an exclusive `flock` on `root/lock`, whose content names the holder
//! (`PID COMMAND\n`) so that a process that finds the store taken can say for whom it waits.
//! One process owns a store at a time because redb opens its file for one process only; a second
//! writer polls for the lock (a blocking `flock` cannot time out or be told to stop) and readers
//! that only need the image list do not take it at all (see [`crate::read_images`]).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::{CacheError, LockHolder};

/// How often a waiting process tries the lock again.
const POLL: Duration = Duration::from_millis(100);
/// How long a waiter waits for the holder to write its name before saying it waits anyway.
const NAME_GRACE: Duration = Duration::from_secs(1);

/// What to do when another process holds the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockWait {
    /// Fail at once with [`CacheError::Locked`].
    Never,
    /// Wait until the holder lets go, however long that takes.
    Forever,
    /// Wait at most this long, then fail with [`CacheError::LockTimeout`].
    AtMost(Duration),
}

/// The lock file's side of [`LockHolder`] (defined with the errors that carry it).
impl LockHolder {
    /// Parses the first line of a lock file; an unfinished line (no newline yet) names no one.
    fn parse(text: &str) -> LockHolder {
        let Some((line, _)) = text.split_once('\n') else {
            return LockHolder::default();
        };
        let (pid, command) = line.split_once(' ').unwrap_or((line, ""));
        match pid.parse::<u32>() {
            Ok(pid) => LockHolder {
                pid: Some(pid),
                command: command.chars().take(200).collect(),
            },
            Err(_) => LockHolder::default(),
        }
    }

    fn read(file: &File) -> LockHolder {
        let mut buf = [0u8; 512];
        let n = file.read_at(&mut buf, 0).unwrap_or(0);
        LockHolder::parse(&String::from_utf8_lossy(&buf[..n]))
    }
}

/// The held lock. Its name is wiped before it is released, so that a waiter never names a
/// process that is gone.
pub(crate) struct OwnerLock(Flock<File>);

impl Drop for OwnerLock {
    fn drop(&mut self) {
        let _ = self.0.set_len(0);
    }
}

/// Takes the lock on `root/lock`, waiting as `wait` says. `on_wait` is called once, when this
/// process starts waiting, with the holder's name (after a short grace for the holder to write
/// it); `command` is written for the next one.
pub(crate) fn take(
    root: &Path,
    wait: LockWait,
    command: &str,
    on_wait: &mut dyn FnMut(&LockHolder),
) -> Result<OwnerLock, CacheError> {
    let path = root.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(CacheError::io("open lock file", &path))?;
    let started = Instant::now();
    let mut told = false;
    let lock = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => break l,
            Err((f, Errno::EWOULDBLOCK)) | Err((f, Errno::EINTR)) => file = f,
            Err((_, e)) => return Err(CacheError::io("lock", &path)(std::io::Error::from(e))),
        }
        let holder = LockHolder::read(&file);
        let waited = started.elapsed();
        let limit = match wait {
            LockWait::Never => Some(Duration::ZERO),
            LockWait::Forever => None,
            LockWait::AtMost(d) => Some(d),
        };
        // A holder that has just taken the lock may not have written its name yet.
        let named = holder.pid.is_some() || waited >= NAME_GRACE;
        if let Some(limit) = limit {
            if waited >= limit && (named || waited >= limit + Duration::from_millis(200)) {
                return Err(if limit.is_zero() {
                    CacheError::Locked {
                        root: root.to_path_buf(),
                        holder,
                    }
                } else {
                    CacheError::LockTimeout {
                        root: root.to_path_buf(),
                        holder,
                        waited: limit,
                    }
                });
            }
        }
        if !told && named && !limit.is_some_and(|l| l.is_zero()) {
            on_wait(&holder);
            told = true;
        }
        let nap = if named { POLL } else { POLL / 5 };
        std::thread::sleep(match limit {
            Some(l) if l > waited => nap.min(l - waited).max(Duration::from_millis(1)),
            _ => nap,
        });
    };
    // The name is written before the old, possibly longer, one is cut: a reader takes only the
    // first line, so it sees either no name or a whole one. Not synced: other processes read it
    // from the page cache, and after a crash the name means nothing (the flock is gone), while
    // a sync costs every command up to hundreds of milliseconds on a busy disk.
    let line = format!("{} {}\n", std::process::id(), one_line(command));
    lock.write_all_at(line.as_bytes(), 0)
        .and_then(|_| lock.set_len(line.len() as u64))
        .map_err(CacheError::io("write the owner to", &path))?;
    Ok(OwnerLock(lock))
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect()
}

/// The default name a process gives itself in the lock file: its program name.
pub(crate) fn default_command() -> String {
    std::env::args()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_lines_parse_only_when_whole() {
        assert_eq!(
            LockHolder::parse("12 kiln build\n"),
            LockHolder {
                pid: Some(12),
                command: "kiln build".into()
            }
        );
        assert_eq!(LockHolder::parse("12 kiln bu"), LockHolder::default());
        assert_eq!(LockHolder::parse(""), LockHolder::default());
        assert_eq!(LockHolder::parse("x y\n"), LockHolder::default());
        // What is left of an older, longer name after the newline is ignored.
        assert_eq!(LockHolder::parse("7 kiln\nld\n").pid, Some(7));
        assert_eq!(
            LockHolder::parse("7 kiln\n").to_string(),
            "process 7 (kiln)"
        );
        assert_eq!(LockHolder::default().to_string(), "another process");
    }
}

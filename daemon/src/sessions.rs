//! The build contexts the daemon keeps for its clients, one mirror per shared key
//! (`<store>/sessions/<key>/`): the lock of each key, what the daemon knows of each mirror, and
//! their removal by `kiln prune`, which never touches a mirror a session holds.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The SHA-256 of a context's entries as the client sent them: collision-resistant, since a
/// client that shares a key must not make the daemon skip another client's changes.
pub(crate) type ListingDigest = [u8; 32];

/// A shared key's lock, guarding what the daemon knows of its mirror. A session holds it from
/// its sync to the end of its build, so the mirror never changes under a build.
pub(crate) type KeyLock = Arc<tokio::sync::Mutex<MirrorState>>;

/// What the daemon knows of a mirror it wrote.
#[derive(Default)]
pub(crate) struct MirrorState {
    /// The digest of the listing the mirror last became (`None`: unknown, or half-synced).
    pub(crate) listing: Option<ListingDigest>,
    /// Changed whenever the mirror is written: the engine's checksums of the mirror hold while
    /// it is the same (see `BuildRequest::context_fingerprints`).
    pub(crate) fingerprint: [u8; 32],
    /// When a session last synced it (`None` since the daemon started: the directory's mtime
    /// then says).
    pub(crate) last_used: Option<SystemTime>,
}

impl MirrorState {
    /// A fingerprint no mirror of this daemon process had before (the engine keeps checksums
    /// by fingerprint in this process only).
    pub(crate) fn renew(&mut self) {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.fingerprint = [0; 32];
        self.fingerprint[..8].copy_from_slice(&n.to_le_bytes());
    }
}

/// The mirrors under one store's `sessions/` directory.
pub(crate) struct Sessions {
    dir: PathBuf,
    keys: Mutex<HashMap<String, KeyLock>>,
}

/// What [`Sessions::prune`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Pruned {
    pub(crate) mirrors: usize,
    pub(crate) bytes: u64,
}

impl Sessions {
    pub(crate) fn new(store_root: &Path) -> Sessions {
        Sessions {
            dir: store_root.join("sessions"),
            keys: Mutex::default(),
        }
    }

    /// The mirror of `key` (a checked shared key).
    pub(crate) fn dir(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    pub(crate) fn lock(&self, key: &str) -> KeyLock {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.entry(key.to_string()).or_default().clone()
    }

    /// Removes the mirrors no session holds: all of them, or (`unused_for`) those last synced
    /// longer ago. A removed mirror's next session sends its whole context again. `scratch`
    /// is a directory of the same file system, where a mirror is moved before it is deleted,
    /// so a half-deleted one is never synced over.
    pub(crate) fn prune(
        &self,
        all: bool,
        unused_for: Option<Duration>,
        scratch: &Path,
    ) -> io::Result<Pruned> {
        let mut pruned = Pruned::default();
        if !all && unused_for.is_none() {
            return Ok(pruned);
        }
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(pruned),
            Err(e) => return Err(e),
        };
        let now = SystemTime::now();
        for entry in entries {
            let entry = entry?;
            let Some(key) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let lock = self.lock(&key);
            // Held by a session: in use, so not unused either.
            let Ok(mut state) = lock.try_lock() else {
                continue;
            };
            let path = entry.path();
            let last_used = match state.last_used {
                Some(t) => t,
                None => std::fs::symlink_metadata(&path)?.modified()?,
            };
            let old =
                unused_for.is_some_and(|d| now.duration_since(last_used).unwrap_or_default() >= d);
            if !(all || old) {
                continue;
            }
            let bytes = kiln_engine::dir_usage(&path)?;
            let doomed = scratch.join(format!("pruned-session-{key}"));
            std::fs::rename(&path, &doomed)?;
            *state = MirrorState::default();
            std::fs::remove_dir_all(&doomed)?;
            pruned.mirrors += 1;
            pruned.bytes += bytes;
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_removes_idle_mirrors_and_keeps_a_held_one() {
        let root = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir_in(root.path()).unwrap();
        let sessions = Sessions::new(root.path());
        for key in ["held", "recent", "old"] {
            std::fs::create_dir_all(sessions.dir(key).join("sub")).unwrap();
            std::fs::write(sessions.dir(key).join("sub/f"), vec![1u8; 10_000]).unwrap();
        }
        let hour = Duration::from_secs(3600);
        sessions.lock("recent").try_lock().unwrap().last_used = Some(SystemTime::now());
        sessions.lock("old").try_lock().unwrap().last_used = Some(SystemTime::now() - 2 * hour);
        let held = sessions.lock("held");
        let mut guard = held.try_lock().unwrap();
        guard.listing = Some([1; 32]);

        let pruned = sessions.prune(false, Some(hour), scratch.path()).unwrap();
        assert_eq!(pruned.mirrors, 1);
        assert!(pruned.bytes >= 10_000, "{pruned:?}");
        assert!(!sessions.dir("old").exists());
        assert!(sessions.dir("recent").exists());

        let pruned = sessions.prune(true, None, scratch.path()).unwrap();
        assert_eq!(pruned.mirrors, 1);
        assert!(!sessions.dir("recent").exists());
        // A session's mirror stays, and so does what the daemon knows of it.
        assert!(sessions.dir("held").exists());
        assert_eq!(guard.listing, Some([1; 32]));
        drop(guard);
        // Without `--all` or `until`, nothing is a candidate.
        assert_eq!(
            sessions.prune(false, None, scratch.path()).unwrap(),
            Pruned::default()
        );
        // A removed mirror forgets its listing: its next sync walks and sends everything.
        assert!(sessions
            .lock("recent")
            .try_lock()
            .unwrap()
            .listing
            .is_none());
    }
}

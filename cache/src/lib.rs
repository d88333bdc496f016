//! kiln-cache owns all state on disk under a store root (`$KILN_ROOT`): the content store,
//! snapshots, the cache index (redb) and the local image store (an OCI layout).
//!
//! ```text
//! root/lock              exclusive owner lock (flock), naming the owner (`PID COMMAND`)
//! root/index.redb        cache keys → results, snapshot records, layer info, memo, meta
//! root/blobs/sha256/<hex> content store
//! root/snapshots/<id>/fs one directory per snapshot (overlay whiteout form); work/ beside it
//! root/images/           OCI image layout; images/blobs -> ../blobs
//! root/containers/<id>/  kiln run
//! root/cache-mounts/<h>/ RUN --mount=type=cache (the solver's; collected whole by GC)
//! root/tmp/              staging for atomic writes (emptied on open)
//! ```

mod check;
mod content;
mod digest;
mod du;
mod error;
mod gc;
mod images;
mod index;
mod lock;
mod mount;
mod snapshots;
mod unpack;
mod usage;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use check::CheckReport;
pub use content::{BlobWriter, ContentStore, VerifyingReader};
pub use digest::{validate_digest, Digest};
pub use du::{dir_usage, human_size, parse_size};
pub use error::{CacheError, LockHolder};
pub use gc::{GcOptions, GcReport, CACHE_MOUNTS_DIR};
pub use images::{
    ImageRecord, ImageStore, CREATED_ANNOTATION, DANGLING_ANNOTATION, REF_NAME_ANNOTATION,
};
pub use index::{CacheIndex, CachedResult, SnapshotId};
pub use lock::LockWait;
pub use mount::MountGuard;
pub use snapshots::{is_whiteout, LayerInfo, MutableSnapshot, Snapshots};
pub use unpack::{opaque_xattr, OPAQUE_XATTR, USER_OPAQUE_XATTR};
pub use usage::{KindUsage, StoreUsage};

use mount::{Mounter, RealMounter};

/// An open store. Cheap to clone; all clones share one lock, one database and one image index.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    content: ContentStore,
    snapshots: Snapshots,
    index: CacheIndex,
    images: ImageStore,
    // Last field, so dropped last: the database is closed before the root is released.
    _lock: lock::OwnerLock,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `root`. Fails at once naming the holder if
    /// another process (or another `Store` in this one) has it open.
    pub fn open(root: &Path) -> Result<Store, CacheError> {
        Self::open_locked(root, LockWait::Never, &lock::default_command(), &mut |_| {})
    }

    /// Like [`Store::open`] but waits for the current owner to let go.
    pub fn open_wait(root: &Path) -> Result<Store, CacheError> {
        Self::open_locked(
            root,
            LockWait::Forever,
            &lock::default_command(),
            &mut |_| {},
        )
    }

    /// Opens the store, waiting for another owner as `wait` says. `command` (e.g. `kiln build`)
    /// is what others are told holds the store; `on_wait` is called once if this call has to
    /// wait, with who holds it. Blocks the calling thread while it waits: call it before an
    /// async runtime starts or from a blocking task.
    pub fn open_locked(
        root: &Path,
        wait: LockWait,
        command: &str,
        on_wait: &mut dyn FnMut(&LockHolder),
    ) -> Result<Store, CacheError> {
        Self::open_with(root, wait, command, on_wait, Arc::new(RealMounter))
    }

    pub(crate) fn open_with(
        root: &Path,
        wait: LockWait,
        command: &str,
        on_wait: &mut dyn FnMut(&LockHolder),
        mounter: Arc<dyn Mounter>,
    ) -> Result<Store, CacheError> {
        fs::create_dir_all(root).map_err(CacheError::io("create store root", root))?;
        let root = fs::canonicalize(root).map_err(CacheError::io("resolve store root", root))?;
        let lock = lock::take(&root, wait, command, on_wait)?;
        for dir in ["blobs/sha256", "snapshots", "containers", "tmp"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(CacheError::io("create directory", &p))?;
        }
        secure_root(&root)?;
        // We own the root now: anything in tmp/ is left from a crash.
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(CacheError::io("list", &tmp))? {
            let entry = entry.map_err(CacheError::io("list", &tmp))?;
            let p = entry.path();
            let _ = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
        let db = Arc::new(index::Db::open(&root.join("index.redb"))?);
        let images = ImageStore::init(&root)?;
        let snapshots = Snapshots::new(&root, db.clone(), mounter);
        // A removal a killed process left half-done is finished before anything reads.
        snapshots.finish_removals()?;
        Ok(Store {
            inner: Arc::new(Inner {
                content: ContentStore::new(&root),
                snapshots,
                index: CacheIndex::new(db),
                images,
                _lock: lock,
                root,
            }),
        })
    }

    /// The store root (absolute).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Staging directory for atomic writes; same file system as the store.
    pub fn tmp_dir(&self) -> PathBuf {
        self.inner.root.join("tmp")
    }

    /// Where `kiln run` keeps its containers.
    pub fn containers_dir(&self) -> PathBuf {
        self.inner.root.join("containers")
    }

    /// The blob store (`blobs/sha256`).
    pub fn content(&self) -> &ContentStore {
        &self.inner.content
    }

    /// Snapshot directories and their records.
    pub fn snapshots(&self) -> &Snapshots {
        &self.inner.snapshots
    }

    /// Cache keys → results, checksum memo, small metadata.
    pub fn index(&self) -> &CacheIndex {
        &self.inner.index
    }

    /// The local image store (an OCI layout).
    pub fn images(&self) -> &ImageStore {
        &self.inner.images
    }
}

/// The images of the store at `root`, read from its OCI layout without taking the lock, so a
/// listing never waits for a build. `index.json` is replaced by rename, so this sees a whole
/// version of it. A store that does not exist yet has no images.
pub fn read_images(root: &Path) -> Result<Vec<ImageRecord>, CacheError> {
    images::list_layout(&root.join("images"))
}

/// [`read_images`] with the dangling images (empty names) after the named ones.
pub fn read_all_images(root: &Path) -> Result<Vec<ImageRecord>, CacheError> {
    images::list_layout_all(&root.join("images"))
}

/// Makes the store root `0700` (an existing one too) and takes write access for others away from
/// the store's own directories and files.
///
/// Snapshot directories hold image content as the image has it: world-writable directories such
/// as `/tmp` (mode 1777) and device nodes with their mode from the layer tar. That is safe only
/// because no other user can reach anything below a `0700` root, and because every mount kiln
/// makes of snapshots is `nodev` (see `mount.rs`). A root another user may traverse would hand
/// them those directories and devices, so the mode is set on every open.
fn secure_root(root: &Path) -> Result<(), CacheError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(root, fs::Permissions::from_mode(0o700))
        .map_err(CacheError::io("set mode of the store root", root))?;
    // Stores made by older versions may have left these writable by others.
    for name in [
        "blobs",
        "blobs/sha256",
        "snapshots",
        "containers",
        "tmp",
        "images",
        "lock",
        "index.redb",
    ] {
        let p = root.join(name);
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.file_type().is_symlink() && mode & 0o002 != 0 {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode & !0o022))
                .map_err(CacheError::io("set mode of", &p))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn store_is_shareable() {
        assert_send_sync::<Store>();
    }

    #[test]
    fn second_open_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        match &err {
            CacheError::Locked { holder, .. } => {
                assert_eq!(holder.pid, Some(std::process::id()))
            }
            other => panic!("expected Locked, got {other}"),
        }
        assert!(err.to_string().contains(&std::process::id().to_string()));
        drop(store);
        Store::open(dir.path()).unwrap();
    }

    #[test]
    fn a_waiting_open_says_once_for_whom_it_waits() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open_locked(dir.path(), LockWait::Never, "kiln build", &mut |_| {}).unwrap();
        let path = dir.path().to_path_buf();
        let t = std::thread::spawn(move || {
            let mut told = Vec::new();
            let s = Store::open_locked(&path, LockWait::Forever, "kiln run", &mut |h| {
                told.push(h.clone())
            });
            (s.map(|_| ()), told)
        });
        std::thread::sleep(std::time::Duration::from_millis(700));
        assert!(!t.is_finished());
        drop(store);
        let (opened, told) = t.join().unwrap();
        assert!(opened.is_ok(), "{opened:?}");
        assert_eq!(
            told,
            vec![LockHolder {
                pid: Some(std::process::id()),
                command: "kiln build".into()
            }]
        );
    }

    #[test]
    fn a_lock_timeout_gives_up_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _store =
            Store::open_locked(dir.path(), LockWait::Never, "kiln build", &mut |_| {}).unwrap();
        let started = std::time::Instant::now();
        let limit = std::time::Duration::from_millis(300);
        let err = Store::open_locked(dir.path(), LockWait::AtMost(limit), "kiln run", &mut |_| {})
            .unwrap_err();
        let waited = started.elapsed();
        assert!(waited >= limit && waited < limit * 5, "{waited:?}");
        assert!(matches!(err, CacheError::LockTimeout { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("process {} (kiln build)", std::process::id())),
            "{msg}"
        );
    }

    #[test]
    fn images_are_read_without_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_images(&dir.path().join("absent")).unwrap(), vec![]);
        let store = Store::open(dir.path()).unwrap();
        let (digest, size) = store.content().put_bytes(b"{}").unwrap();
        let record = ImageRecord {
            name: "docker.io/library/a:latest".into(),
            digest,
            size,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            created: None,
        };
        store.images().put(&record).unwrap();
        // The store stays open (and locked) while another reader lists its images.
        assert_eq!(read_images(dir.path()).unwrap(), vec![record]);
        // Reading creates nothing.
        assert!(!dir.path().join("absent").exists());
    }

    #[test]
    fn open_wait_waits_for_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let path = dir.path().to_path_buf();
        let t = std::thread::spawn(move || Store::open_wait(&path).map(|s| s.root().to_path_buf()));
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!t.is_finished());
        drop(store);
        let reopened = t.join().unwrap();
        assert!(reopened.is_ok(), "{reopened:?}");
    }

    #[test]
    fn layout_is_created_and_tmp_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            fs::write(store.tmp_dir().join("leftover"), b"x").unwrap();
            assert!(store.containers_dir().is_dir());
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        let root = store.root();
        assert!(root.join("index.redb").is_file());
        assert!(root.join("images/oci-layout").is_file());
        assert!(root.join("images/index.json").is_file());
        assert_eq!(
            fs::read_link(root.join("images/blobs")).unwrap(),
            PathBuf::from("../blobs")
        );
        assert_eq!(
            fs::read_to_string(root.join("lock")).unwrap(),
            format!("{} {}\n", std::process::id(), lock::default_command())
        );
        drop(store);
        // A released store names no one.
        assert_eq!(fs::read_to_string(dir.path().join("lock")).unwrap(), "");
    }
}

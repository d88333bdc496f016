//! Content-addressed blob store under `root/blobs/sha256`: atomic writes that are verified
//! before they become visible.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use crate::digest::{sha256_digest, validate_digest, Digest};
use crate::CacheError;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a new, exclusively created file in `dir` with a unique name.
pub(crate) fn create_temp(dir: &Path, prefix: &str) -> Result<(File, PathBuf), CacheError> {
    loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{prefix}-{}-{n}", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            // A leftover from a crashed run with the same pid: pick the next number.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(CacheError::io("create temporary file", &path)(e)),
        }
    }
}

/// Makes a rename inside `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(CacheError::io("sync directory", dir))
}

/// Writes `bytes` to `dest` atomically: temp file in `tmp`, fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let (mut file, temp) = create_temp(tmp, "atomic")?;
    let result = file
        .write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(CacheError::io("write", &temp))
        .and_then(|_| fs::rename(&temp, dest).map_err(CacheError::io("rename into place", dest)));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// The blob store. Obtained from [`crate::Store::content`].
#[derive(Debug)]
pub struct ContentStore {
    dir: PathBuf,
    tmp: PathBuf,
}

impl ContentStore {
    pub(crate) fn new(root: &Path) -> Self {
        ContentStore {
            dir: root.join("blobs").join("sha256"),
            tmp: root.join("tmp"),
        }
    }

    /// The path of a blob (whether or not it exists); the digest is validated first.
    pub fn path(&self, digest: &str) -> Result<PathBuf, CacheError> {
        validate_digest(digest)?;
        Ok(self.dir.join(&digest["sha256:".len()..]))
    }

    /// Whether the blob is stored. An invalid digest is never stored.
    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// A writer that hashes as bytes pass; call [`BlobWriter::commit`] to store the blob.
    pub fn writer(&self) -> Result<BlobWriter, CacheError> {
        let (file, temp) = create_temp(&self.tmp, "blob")?;
        Ok(BlobWriter {
            file: Some(file),
            temp,
            dir: self.dir.clone(),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Stores `bytes`, returning their digest and size.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<(Digest, u64), CacheError> {
        let mut w = self.writer()?;
        w.write_all(bytes)
            .map_err(CacheError::io("write blob", &w.temp))?;
        w.commit(None)
    }

    /// Reads a whole blob.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, CacheError> {
        let path = self.path(digest)?;
        fs::read(&path).map_err(|e| not_found_or(e, digest, &path))
    }

    /// Reads a whole blob and checks that it still hashes to its name; for blobs used as they
    /// are read (manifests, configs), which are small.
    pub fn read_verified(&self, digest: &str) -> Result<Vec<u8>, CacheError> {
        let bytes = self.read(digest)?;
        let actual = sha256_digest(&Sha256::digest(&bytes));
        if actual != digest {
            return Err(CacheError::CorruptBlob {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Hashes a stored blob whole: `Ok(Some(actual))` when it does not match its name.
    pub fn verify(&self, digest: &str) -> Result<Option<Digest>, CacheError> {
        let file = self.open(digest)?;
        let mut r = VerifyingReader::new(io::BufReader::with_capacity(1 << 20, file), digest);
        let path = self.path(digest)?;
        io::copy(&mut r, &mut io::sink()).map_err(CacheError::io("read blob", &path))?;
        match r.finish() {
            Ok(()) => Ok(None),
            Err(CacheError::CorruptBlob { actual, .. }) => Ok(Some(actual)),
            Err(e) => Err(e),
        }
    }

    /// Opens a blob for reading.
    pub fn open(&self, digest: &str) -> Result<File, CacheError> {
        let path = self.path(digest)?;
        File::open(&path).map_err(|e| not_found_or(e, digest, &path))
    }

    /// Removes a blob; `Ok(false)` when it was not there.
    pub fn remove(&self, digest: &str) -> Result<bool, CacheError> {
        let path = self.path(digest)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CacheError::io("remove blob", &path)(e)),
        }
    }

    /// Digests of all stored blobs, for garbage collection.
    pub fn list(&self) -> Result<Vec<Digest>, CacheError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(CacheError::io("list", &self.dir))? {
            let entry = entry.map_err(CacheError::io("list", &self.dir))?;
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if validate_digest(&digest).is_ok() {
                out.push(digest);
            }
        }
        out.sort();
        Ok(out)
    }
}

fn not_found_or(e: io::Error, digest: &str, path: &Path) -> CacheError {
    if e.kind() == io::ErrorKind::NotFound {
        CacheError::BlobNotFound {
            digest: digest.to_string(),
        }
    } else {
        CacheError::io("read blob", path)(e)
    }
}

/// Hashes what is read through it, so a blob is verified in the same pass that uses it: call
/// [`VerifyingReader::finish`] after reading to the end.
#[derive(Debug)]
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    digest: String,
}

impl<R: io::Read> VerifyingReader<R> {
    /// Wraps `inner`, the content of the blob `digest`.
    pub fn new(inner: R, digest: &str) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            digest: digest.to_string(),
        }
    }

    /// Reads what is left (a decompressor may stop before the end of its input), then checks
    /// the digest: [`CacheError::CorruptBlob`] when the content is not the blob's.
    pub fn finish(mut self) -> Result<(), CacheError> {
        io::copy(&mut self, &mut io::sink()).map_err(|e| CacheError::Io {
            action: "read blob",
            path: PathBuf::from(&self.digest),
            cause: e,
        })?;
        let actual = sha256_digest(&std::mem::take(&mut self.hasher).finalize());
        if actual != self.digest {
            return Err(CacheError::CorruptBlob {
                digest: self.digest,
                actual,
            });
        }
        Ok(())
    }
}

impl<R: io::Read> io::Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A blob being written. Dropping it without `commit` removes the temp file.
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<File>,
    temp: PathBuf,
    dir: PathBuf,
    hasher: Sha256,
    size: u64,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Finishes the blob: fsync, verify against `expected` (if given), rename into the store.
    /// On a mismatch the temp file is removed and nothing is stored.
    pub fn commit(mut self, expected: Option<&str>) -> Result<(Digest, u64), CacheError> {
        if let Some(expected) = expected {
            validate_digest(expected)?;
        }
        let file = self.file.take();
        let digest = sha256_digest(&std::mem::take(&mut self.hasher).finalize());
        if let Some(expected) = expected {
            if expected != digest {
                return Err(CacheError::DigestMismatch {
                    expected: expected.to_string(),
                    actual: digest,
                });
            }
        }
        if let Some(mut file) = file {
            file.flush()
                .and_then(|_| file.sync_all())
                .map_err(CacheError::io("sync blob", &self.temp))?;
        }
        let dest = self.dir.join(&digest["sha256:".len()..]);
        fs::rename(&self.temp, &dest).map_err(CacheError::io("rename blob into place", &dest))?;
        sync_dir(&self.dir)?;
        Ok((digest, self.size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already finished"))?;
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful commit the temp path no longer exists; otherwise this cleans up.
        let _ = fs::remove_file(&self.temp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let cs = ContentStore::new(dir.path());
        (dir, cs)
    }

    const HELLO: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn put_and_read_back() {
        let (_d, cs) = store();
        let (digest, size) = cs.put_bytes(b"hello").unwrap();
        assert_eq!(digest, HELLO);
        assert_eq!(size, 5);
        assert!(cs.has(HELLO));
        assert_eq!(cs.read(HELLO).unwrap(), b"hello");
        assert_eq!(cs.list().unwrap(), vec![HELLO.to_string()]);
        // Storing the same content again is fine and idempotent.
        assert_eq!(cs.put_bytes(b"hello").unwrap().0, HELLO);
    }

    #[test]
    fn writer_verifies_expected_digest() {
        let (d, cs) = store();
        let mut w = cs.writer().unwrap();
        w.write_all(b"hel").unwrap();
        w.write_all(b"lo").unwrap();
        assert_eq!(w.size(), 5);
        assert_eq!(w.commit(Some(HELLO)).unwrap(), (HELLO.to_string(), 5));

        let mut w = cs.writer().unwrap();
        w.write_all(b"not hello").unwrap();
        let wrong = format!("{}0", &HELLO[..HELLO.len() - 1]);
        let err = w.commit(Some(&wrong)).unwrap_err();
        assert!(matches!(err, CacheError::DigestMismatch { .. }), "{err}");
        // Nothing was left behind in tmp, and only the good blob exists.
        assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(cs.list().unwrap().len(), 1);
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let (d, cs) = store();
        let mut w = cs.writer().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
        assert!(cs.list().unwrap().is_empty());
    }

    #[test]
    fn missing_and_invalid_digests() {
        let (_d, cs) = store();
        assert!(matches!(
            cs.read(HELLO),
            Err(CacheError::BlobNotFound { .. })
        ));
        assert!(matches!(
            cs.path("sha256:../../etc/passwd"),
            Err(CacheError::InvalidDigest { .. })
        ));
        assert!(!cs.has("sha256:../../etc/passwd"));
        assert!(!cs.remove(HELLO).unwrap());
    }
}

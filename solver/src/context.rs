//! Local build contexts: which files a step may see (after `.dockerignore`) and their content
//! checksum, memoised on disk by (path, size, mtime, ctime, inode) so an unchanged context is
//! re-checked with `stat` alone.

use crate::glob;
use crate::SolveError;
use kiln_cache::CacheIndex;
use rayon::prelude::*;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A local directory given to a build, with its exclusion rules. Implemented by the engine, which
/// owns the `.dockerignore` matcher.
pub trait LocalContext: Send + Sync {
    /// The directory on the host.
    fn root(&self) -> &Path;
    /// True when `rel` (slash-separated, relative to the root) is excluded.
    fn excluded(&self, rel: &str) -> bool;
    /// True when an excluded directory may still hold re-included files (`!` patterns), so the
    /// walk has to enter it.
    fn may_reinclude(&self) -> bool;
}

/// One entry of a context walk.
pub(crate) struct Entry {
    /// Relative to the context root, slash-separated.
    pub rel: String,
    pub abs: PathBuf,
    pub meta: std::fs::Metadata,
}

/// Resolves a `COPY` source path (possibly with wildcards in its last components) against the
/// context: returns the relative paths of the matching top-level entries, sorted.
pub(crate) fn resolve_sources(
    ctx: &dyn LocalContext,
    src: &str,
) -> Result<Vec<String>, SolveError> {
    let clean = clean_rel(src);
    if clean.is_empty() {
        return Ok(vec![String::new()]);
    }
    let mut found = vec![String::new()];
    for part in clean.split('/') {
        let mut next = Vec::new();
        for base in &found {
            let rel = join_rel(base, part);
            if glob::has_wildcard(part) {
                let dir = ctx.root().join(base);
                let Ok(rd) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if glob::matches(part, &name) {
                        let r = join_rel(base, &name);
                        if !ctx.excluded(&r) || ctx.may_reinclude() {
                            next.push(r);
                        }
                    }
                }
            } else if std::fs::symlink_metadata(ctx.root().join(&rel)).is_ok() {
                next.push(rel);
            }
        }
        found = next;
    }
    found.sort();
    found.retain(|r| !ctx.excluded(r) || ctx.may_reinclude());
    Ok(found)
}

/// Every non-excluded entry at and below `rel`, parents before children, sorted by path.
pub(crate) fn walk(ctx: &dyn LocalContext, rel: &str) -> Result<Vec<Entry>, SolveError> {
    let mut out = Vec::new();
    let abs = ctx.root().join(rel);
    let meta = std::fs::symlink_metadata(&abs).map_err(|e| SolveError::Context {
        path: rel.to_string(),
        message: e.to_string(),
    })?;
    walk_into(ctx, rel.to_string(), abs, meta, &mut out)?;
    Ok(out)
}

fn walk_into(
    ctx: &dyn LocalContext,
    rel: String,
    abs: PathBuf,
    meta: std::fs::Metadata,
    out: &mut Vec<Entry>,
) -> Result<(), SolveError> {
    let excluded = !rel.is_empty() && ctx.excluded(&rel);
    if excluded && !(meta.is_dir() && ctx.may_reinclude()) {
        return Ok(());
    }
    let is_dir = meta.is_dir();
    if !excluded {
        out.push(Entry {
            rel: rel.clone(),
            abs: abs.clone(),
            meta,
        });
    }
    if !is_dir {
        return Ok(());
    }
    let rd = std::fs::read_dir(&abs).map_err(|e| SolveError::Context {
        path: rel.clone(),
        message: e.to_string(),
    })?;
    // `DirEntry::metadata` stats relative to the open directory (`statx(dirfd, name)`), which
    // spares the kernel a lookup of the whole path per file: the walk is mostly these calls.
    let mut children: Vec<(std::ffi::OsString, std::fs::Metadata)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok().map(|m| (e.file_name(), m)))
        .collect();
    children.sort_by(|a, b| a.0.cmp(&b.0));
    // Subdirectories are walked in parallel; their entries are spliced back in path order.
    let subdirs: Vec<Option<Result<Vec<Entry>, SolveError>>> = children
        .par_iter()
        .map(|(name, m)| {
            m.is_dir().then(|| {
                let name = name.to_string_lossy();
                let mut sub = Vec::new();
                walk_into(
                    ctx,
                    join_rel(&rel, &name),
                    abs.join(name.as_ref()),
                    m.clone(),
                    &mut sub,
                )
                .map(|()| sub)
            })
        })
        .collect();
    for ((name, m), sub) in children.into_iter().zip(subdirs) {
        match sub {
            Some(entries) => out.extend(entries?),
            None => {
                let name = name.to_string_lossy();
                walk_into(ctx, join_rel(&rel, &name), abs.join(name.as_ref()), m, out)?;
            }
        }
    }
    Ok(())
}

/// What a checksum cost: files checked, and those read and hashed (the memo did not know them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    pub files: usize,
    pub hashed: usize,
    pub bytes: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.files += o.files;
        self.hashed += o.hashed;
        self.bytes += o.bytes;
    }
}

/// Content checksum of the given sources (relative paths, as `resolve_sources` returns) and
/// everything below them. Covers paths, types, permission bits, symlink targets and file
/// contents; not mtimes or owners, so `touch` invalidates nothing.
pub(crate) fn checksum(
    ctx: &dyn LocalContext,
    sources: &[String],
    index: &CacheIndex,
) -> Result<(String, Stats), SolveError> {
    let mut entries = Vec::new();
    for s in sources {
        entries.extend(walk(ctx, s)?);
    }
    let files: Vec<&Entry> = entries.iter().filter(|e| e.meta.is_file()).collect();
    let keys: Vec<Vec<u8>> = files.iter().map(|e| memo_key(e)).collect();
    // Batched, and in parallel chunks (each its own read transaction).
    let memo: Vec<Option<[u8; 32]>> = keys
        .par_chunks(MEMO_CHUNK)
        .map(|chunk| index.memo_get_many(chunk).map_err(SolveError::cache))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let missing: Vec<usize> = (0..files.len()).filter(|&i| memo[i].is_none()).collect();
    let stats = Stats {
        files: files.len(),
        hashed: missing.len(),
        bytes: missing.iter().map(|&i| files[i].meta.len()).sum(),
    };
    let computed: Vec<(usize, [u8; 32])> = missing
        .par_iter()
        .map(|&i| hash_file(&files[i].abs).map(|h| (i, h)))
        .collect::<Result<_, _>>()?;
    if !computed.is_empty() {
        let puts: Vec<(Vec<u8>, [u8; 32])> = computed
            .iter()
            .map(|(i, h)| (keys[*i].clone(), *h))
            .collect();
        index.memo_put_many(&puts).map_err(SolveError::cache)?;
    }
    let mut file_hashes: Vec<Option<[u8; 32]>> = memo;
    for (i, h) in computed {
        file_hashes[i] = Some(h);
    }
    let mut hasher = blake3::Hasher::new();
    let mut fi = 0;
    for e in &entries {
        let mode = e.meta.mode();
        hasher.update(e.rel.as_bytes());
        hasher.update(&[0]);
        hasher.update(&(mode & 0o170777).to_le_bytes());
        if e.meta.is_file() {
            if let Some(h) = file_hashes.get(fi).copied().flatten() {
                hasher.update(&h);
            }
            fi += 1;
        } else if e.meta.file_type().is_symlink() {
            let target = std::fs::read_link(&e.abs).unwrap_or_default();
            hasher.update(target.as_os_str().as_encoded_bytes());
        }
        hasher.update(&[0xff]);
    }
    Ok((hasher.finalize().to_hex().to_string(), stats))
}

/// Memo keys looked up per read transaction.
pub(crate) const MEMO_CHUNK: usize = 2048;

fn memo_key(e: &Entry) -> Vec<u8> {
    memo_key_of(&e.abs, &e.meta)
}

/// The memo key of the file at `abs` (as the walk joins it: context root, then names) with the
/// metadata `m` its walk saw.
pub(crate) fn memo_key_of(abs: &Path, m: &std::fs::Metadata) -> Vec<u8> {
    let mut k = abs.as_os_str().as_encoded_bytes().to_vec();
    k.push(0);
    for v in [
        m.size() as i64,
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.ino() as i64,
        m.dev() as i64,
    ] {
        k.extend_from_slice(&v.to_le_bytes());
    }
    k
}

fn hash_file(path: &Path) -> Result<[u8; 32], SolveError> {
    let err = |e: std::io::Error| SolveError::Context {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(*hasher.finalize().as_bytes())
}

/// `a/./b/` → `a/b`; leading `/` and `./` dropped; `..` cannot climb above the root.
pub(crate) fn clean_rel(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

pub(crate) fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_rel_never_climbs_out() {
        assert_eq!(clean_rel("../../etc/passwd"), "etc/passwd");
        assert_eq!(clean_rel("./a/./b/"), "a/b");
        assert_eq!(clean_rel("/"), "");
        assert_eq!(clean_rel("a/../../b"), "b");
    }
}

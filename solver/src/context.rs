//! Local build contexts: which files a step may see (after `.dockerignore`) and their content
//! checksum, memoised on disk by (path, size, mtime, ctime, inode) so an unchanged context is
//! re-checked with `stat` alone.

use crate::glob;
use crate::inroot::resolve_in_root;
use crate::SolveError;
use kiln_cache::CacheIndex;
use rayon::prelude::*;
use std::collections::HashMap;
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
    /// A value the owner of the directory vouches for: whenever it is the same, so are the
    /// files and the exclusion rules (a daemon's context mirror, written only between builds
    /// and given a new value each time). Checksums of such a context are kept in memory and
    /// not computed again; `None` (a directory anyone may change) walks it every time.
    fn fingerprint(&self) -> Option<[u8; 32]> {
        None
    }
}

/// One entry of a context walk.
pub(crate) struct Entry {
    /// Relative to the context root, slash-separated.
    pub rel: String,
    pub abs: PathBuf,
    pub meta: std::fs::Metadata,
}

/// One source a `COPY` selected in a context.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Source {
    /// The path as the Dockerfile named it, wildcards matched: its last component names the
    /// copy under a directory destination.
    pub named: String,
    /// What it resolves to inside the context, relative to the root: free of symlinks (but for
    /// the last component when links are not followed). `.dockerignore` applies to this path.
    pub rel: String,
}

impl Source {
    /// The name a copy of this source gets under a directory destination.
    pub(crate) fn name(&self) -> &str {
        self.named.rsplit('/').next().unwrap_or("")
    }
}

/// Resolves a `COPY` source path (possibly with wildcards in any component) against the
/// context, as if the context were `/`: a symlink on the way (or the last component, when
/// `follow_last`) is followed inside the context, so `etcdir -> /etc` means `<context>/etc`
/// and nothing outside the context is ever looked at. Returns the matching sources that
/// exist and that `.dockerignore` does not exclude (neither as named nor as resolved), sorted
/// by their named path.
pub(crate) fn resolve_sources(
    ctx: &dyn LocalContext,
    src: &str,
    follow_last: bool,
) -> Result<Vec<Source>, SolveError> {
    let clean = clean_rel(src);
    if clean.is_empty() {
        return Ok(vec![Source {
            named: String::new(),
            rel: String::new(),
        }]);
    }
    let root = ctx.root();
    let kept = |r: &str| !ctx.excluded(r) || ctx.may_reinclude();
    let parts: Vec<&str> = clean.split('/').collect();
    let mut found = vec![Source {
        named: String::new(),
        rel: String::new(),
    }];
    for (i, part) in parts.iter().enumerate() {
        let follow = follow_last || i + 1 < parts.len();
        let wildcard = glob::has_wildcard(part);
        let mut next = Vec::new();
        for base in &found {
            // (name, whether it is known not to be a symlink)
            let names: Vec<(String, bool)> = if wildcard {
                let Ok(rd) = std::fs::read_dir(root.join(&base.rel)) else {
                    continue;
                };
                rd.flatten()
                    .map(|e| {
                        let plain = e.file_type().is_ok_and(|t| !t.is_symlink());
                        (e.file_name().to_string_lossy().into_owned(), plain)
                    })
                    .filter(|(name, _)| glob::matches(part, name))
                    .collect()
            } else {
                vec![(part.to_string(), false)]
            };
            for (name, plain) in names {
                let named = join_rel(&base.named, &name);
                let joined = join_rel(&base.rel, &name);
                // `base.rel` is free of links, so only `name` can be one: a directory entry
                // known not to be a link needs no resolving.
                let rel = if plain {
                    joined
                } else {
                    let abs = match resolve_in_root(root, &joined, follow) {
                        Ok(abs) => abs,
                        // A looping link a wildcard matched leads nowhere, as a dangling one.
                        Err(_) if wildcard => continue,
                        Err(e) => {
                            return Err(SolveError::ContextIo {
                                path: named,
                                source: e,
                            })
                        }
                    };
                    match abs.strip_prefix(root) {
                        Ok(r) => r.to_string_lossy().into_owned(),
                        Err(_) => continue,
                    }
                };
                if std::fs::symlink_metadata(root.join(&rel)).is_err() {
                    continue;
                }
                if kept(&named) && kept(&rel) {
                    next.push(Source { named, rel });
                }
            }
        }
        found = next;
    }
    found.sort();
    Ok(found)
}

/// Every non-excluded entry at and below `rel`, parents before children, sorted by path.
pub(crate) fn walk(ctx: &dyn LocalContext, rel: &str) -> Result<Vec<Entry>, SolveError> {
    let mut out = Vec::new();
    let abs = ctx.root().join(rel);
    let meta = std::fs::symlink_metadata(&abs).map_err(|e| SolveError::ContextIo {
        path: rel.to_string(),
        source: e,
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
    let rd = std::fs::read_dir(&abs).map_err(|e| SolveError::ContextIo {
        path: rel.clone(),
        source: e,
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

/// Content checksum of the given sources (as `resolve_sources` returns them) and everything
/// below them. Covers paths, types, permission bits, symlink targets and file contents; not
/// mtimes or owners, so `touch` invalidates nothing. A source reached through a symlink also
/// covers which name led to which path, since that decides where its copy lands.
pub(crate) fn checksum(
    ctx: &dyn LocalContext,
    sources: &[Source],
    index: &CacheIndex,
) -> Result<(String, Stats), SolveError> {
    let mut rels: Vec<&str> = sources.iter().map(|s| s.rel.as_str()).collect();
    rels.sort_unstable();
    rels.dedup();
    let mut entries = Vec::new();
    for s in rels {
        entries.extend(walk(ctx, s)?);
    }
    let files: Vec<&Entry> = entries.iter().filter(|e| e.meta.is_file()).collect();
    let keys: Vec<Vec<u8>> = files.iter().map(|e| memo_key(e)).collect();
    // Batched, and in parallel chunks (each its own read transaction).
    let memo: Vec<Option<[u8; 32]>> = keys
        .par_chunks(MEMO_CHUNK)
        .map(|chunk| index.memo_get_many(chunk).map_err(SolveError::from))
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
        index.memo_put_many(&puts).map_err(SolveError::from)?;
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
    let sum = hard_link_groups(&entries, hasher.finalize());
    // Without links the sum is what it always was, so existing cache keys stay valid.
    let mut linked: Vec<&Source> = sources.iter().filter(|s| s.named != s.rel).collect();
    if linked.is_empty() {
        return Ok((sum.to_hex().to_string(), stats));
    }
    linked.sort_unstable();
    linked.dedup();
    let mut outer = blake3::Hasher::new();
    outer.update(b"kiln-context-links-v1\0");
    outer.update(sum.as_bytes());
    for s in linked {
        for part in [&s.named, &s.rel] {
            outer.update(&(part.len() as u64).to_le_bytes());
            outer.update(part.as_bytes());
        }
    }
    Ok((outer.finalize().to_hex().to_string(), stats))
}

/// `sum`, covering which selected files are one inode: a copy keeps them linked
/// (`fileops::batch`), so linking two equal files in the context changes what a copy makes.
/// Without hard links inside the selection the sum is unchanged, so existing keys stay valid.
fn hard_link_groups(entries: &[Entry], sum: blake3::Hash) -> blake3::Hash {
    let mut firsts: HashMap<(u64, u64), &str> = HashMap::new();
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for e in entries {
        if !e.meta.is_file() || e.meta.nlink() < 2 {
            continue;
        }
        match firsts.entry((e.meta.dev(), e.meta.ino())) {
            std::collections::hash_map::Entry::Occupied(first) => {
                pairs.push((e.rel.as_str(), first.get()))
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(e.rel.as_str());
            }
        }
    }
    if pairs.is_empty() {
        return sum;
    }
    let mut h = blake3::Hasher::new();
    h.update(b"kiln-context-hardlinks-v1\0");
    h.update(sum.as_bytes());
    for (name, first) in pairs {
        for part in [name, first] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    h.finalize()
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
    let err = |e: std::io::Error| SolveError::ContextIo {
        path: path.display().to_string(),
        source: e,
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

    struct Ctx {
        root: PathBuf,
        excluded: Vec<&'static str>,
    }

    impl LocalContext for Ctx {
        fn root(&self) -> &Path {
            &self.root
        }
        fn excluded(&self, rel: &str) -> bool {
            self.excluded
                .iter()
                .any(|e| rel == *e || rel.starts_with(&format!("{e}/")))
        }
        fn may_reinclude(&self) -> bool {
            false
        }
    }

    /// A context with links in and out, and a host directory beside it holding a secret.
    fn hostile() -> (tempfile::TempDir, Ctx) {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host");
        let root = t.path().join("ctx");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("secret"), "s").unwrap();
        std::fs::create_dir_all(root.join("data/sub")).unwrap();
        std::fs::write(root.join("data/f"), "f").unwrap();
        std::fs::write(root.join("ignored"), "i").unwrap();
        symlink(&host, root.join("hostdir")).unwrap();
        symlink("..", root.join("up")).unwrap();
        symlink(".", root.join("selfdir")).unwrap();
        symlink("/data", root.join("datalink")).unwrap();
        symlink("f", root.join("data/flink")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let ctx = Ctx {
            root,
            excluded: vec!["ignored"],
        };
        (t, ctx)
    }

    fn rels(ctx: &Ctx, src: &str, follow: bool) -> Vec<(String, String)> {
        resolve_sources(ctx, src, follow)
            .unwrap()
            .into_iter()
            .map(|s| (s.named, s.rel))
            .collect()
    }

    fn pair(named: &str, rel: &str) -> (String, String) {
        (named.to_string(), rel.to_string())
    }

    #[test]
    fn sources_through_links_never_leave_the_context() {
        let (_t, ctx) = hostile();
        for src in [
            "hostdir/secret",
            "hostdir",
            "hostdir/*",
            "host*/secret",
            "up/host/secret",
            "up/*/secret",
            "selfdir/up/host/secret",
        ] {
            assert_eq!(rels(&ctx, src, true), vec![], "{src}");
        }
        let e = resolve_sources(&ctx, "loop/x", true)
            .unwrap_err()
            .chain_text();
        assert!(e.contains("too many levels of symbolic links"), "{e}");
    }

    #[test]
    fn links_inside_the_context_resolve_and_dockerignore_applies_to_where_they_lead() {
        let (_t, ctx) = hostile();
        assert_eq!(
            rels(&ctx, "datalink/f", true),
            vec![pair("datalink/f", "data/f")]
        );
        assert_eq!(
            rels(&ctx, "selfdir/data", true),
            vec![pair("selfdir/data", "data")]
        );
        assert_eq!(rels(&ctx, "selfdir", true), vec![pair("selfdir", "")]);
        assert_eq!(
            rels(&ctx, "up/data/f", true),
            vec![pair("up/data/f", "data/f")]
        );
        // The last component is followed only when the copy follows links.
        assert_eq!(
            rels(&ctx, "data/flink", true),
            vec![pair("data/flink", "data/f")]
        );
        assert_eq!(
            rels(&ctx, "data/flink", false),
            vec![pair("data/flink", "data/flink")]
        );
        assert_eq!(
            rels(&ctx, "datalink", false),
            vec![pair("datalink", "datalink")]
        );
        // `.dockerignore` holds whichever way the file is named.
        assert_eq!(rels(&ctx, "ignored", true), vec![]);
        assert_eq!(rels(&ctx, "selfdir/ignored", true), vec![]);
        assert_eq!(rels(&ctx, "selfdir/selfdir/ign*", true), vec![]);
        // Wildcards in any component, through links, named as matched.
        assert_eq!(
            rels(&ctx, "*link/f*", true),
            vec![
                pair("datalink/f", "data/f"),
                pair("datalink/flink", "data/f")
            ]
        );
    }

    #[test]
    fn a_hard_link_added_to_the_context_kept_the_checksum() {
        let (t, ctx) = hostile();
        let store = kiln_cache::Store::open(&t.path().join("store")).unwrap();
        let dir = ctx.root.join("hl");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), "same").unwrap();
        std::fs::write(dir.join("b"), "same").unwrap();
        let sum = || {
            let sources = resolve_sources(&ctx, "hl", true).unwrap();
            checksum(&ctx, &sources, store.index()).unwrap().0
        };
        let separate = sum();
        std::fs::remove_file(dir.join("b")).unwrap();
        std::fs::hard_link(dir.join("a"), dir.join("b")).unwrap();
        let linked = sum();
        assert_ne!(separate, linked);
        // A link to a file outside the selection changes nothing.
        std::fs::remove_file(dir.join("b")).unwrap();
        std::fs::write(dir.join("b"), "same").unwrap();
        assert_eq!(sum(), separate);
        std::fs::hard_link(dir.join("a"), ctx.root.join("outside")).unwrap();
        assert_eq!(sum(), separate);
    }

    #[test]
    fn the_checksum_covers_which_link_led_where() {
        use std::os::unix::fs::symlink;
        let (t, ctx) = hostile();
        let store = kiln_cache::Store::open(&t.path().join("store")).unwrap();
        std::fs::write(ctx.root.join("a"), "same").unwrap();
        std::fs::write(ctx.root.join("b"), "other").unwrap();
        symlink("a", ctx.root.join("ln1")).unwrap();
        symlink("b", ctx.root.join("ln2")).unwrap();
        let sum = |src: &str| {
            let sources = resolve_sources(&ctx, src, true).unwrap();
            checksum(&ctx, &sources, store.index()).unwrap().0
        };
        let before = sum("ln*");
        // Swapped links select the same two files, but each lands under the other name.
        std::fs::remove_file(ctx.root.join("ln1")).unwrap();
        std::fs::remove_file(ctx.root.join("ln2")).unwrap();
        symlink("b", ctx.root.join("ln1")).unwrap();
        symlink("a", ctx.root.join("ln2")).unwrap();
        assert_ne!(before, sum("ln*"));
        // Without links the sum is what it was before links were covered: the plain walk's.
        let plain = resolve_sources(&ctx, "data", true).unwrap();
        assert_eq!(
            plain,
            vec![Source {
                named: "data".into(),
                rel: "data".into()
            }]
        );
        let walked = checksum(&ctx, &plain, store.index()).unwrap().0;
        let through = checksum(
            &ctx,
            &resolve_sources(&ctx, "datalink", true).unwrap(),
            store.index(),
        )
        .unwrap()
        .0;
        assert_ne!(walked, through);
    }
}

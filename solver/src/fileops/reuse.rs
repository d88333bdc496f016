//! Link reuse: a `COPY` that repeats an earlier one with some files changed hard-links every
//! unchanged file from the earlier, immutable snapshot instead of copying it again.
//!
//! A rebuild after one file of a 20,000-file context changed spent most of its `COPY` in the
//! file system allocating 20,000 new inodes. A hard link allocates none, and the layer made from
//! the new snapshot is byte for byte the one a full copy gives, because the linked inode has the
//! content, mode, owner, mtime, size and (no) xattrs the copy would have made.
//!
//! How the earlier snapshot is found and equality proven:
//! - A direct `COPY` (`super::direct`) writes a *manifest* beside its snapshot's `fs` directory
//!   (`snapshots/<id>/copy-manifest`): the destination, and for every regular file it placed,
//!   its path below the destination and the blake3 of its content. A copied file is recorded
//!   only when its source was seen unchanged from the walk's `stat` to the end of the copy
//!   (`batch::create_entry`), so the hash (the context checksum memo's, for that `stat`) is the
//!   hash of the bytes in the snapshot.
//! - The index's meta table maps the COPY's *identity* (its op digest and its inputs' keys, not
//!   the checksum of the content it reads) to the newest snapshot with a manifest.
//! - The next run of that COPY looks it up, and for each file whose memo hash (for its current
//!   `stat`) equals the manifest's, links the earlier snapshot's file into the new snapshot,
//!   then checks through the new link that the inode has exactly the metadata a copy would set
//!   (regular file, permission bits, uid/gid, size, mtime to the nanosecond, no xattrs). On any
//!   doubt (no or unreadable manifest, another destination, a link error such as `EXDEV` or
//!   `EMLINK`, a mismatch) the file is copied as before.
//!
//! Why sharing inodes is safe: nothing writes into a committed snapshot's files. Overlayfs
//! copies a lower file up before any change, the sandbox only removes its own mount stubs from
//! its upper directory, file ops and the tar extractor create their files in a new snapshot,
//! and garbage collection unlinks (the other snapshot keeps its link). The layer writer makes a
//! hard-link entry only for an inode it meets twice in one layer, never from `nlink` alone.

use super::batch::{self, Leaf, Place};
use super::Owner;
use crate::context;
use crate::SolveError;
use kiln_cache::{CacheIndex, SnapshotId, Store};
use rayon::prelude::*;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The manifest's file name, beside the snapshot's `fs` directory.
const MANIFEST: &str = "copy-manifest";
const MAGIC: &[u8] = b"kiln-copy-manifest-v1\n";
/// Prefix of the index meta keys naming the newest snapshot of a COPY identity.
const META_PREFIX: &str = "copy-identity/";

/// The identity of a file op: what makes two runs "the same COPY" apart from the content it
/// reads. Its digest covers the sources, destination, `--chown`, `--chmod` and filters; its
/// inputs' keys the base snapshot and the context (by name and `.dockerignore`), not the
/// context's checksum.
pub(crate) fn identity<'a>(digest: &str, input_keys: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"kiln-copy-identity-v1\0");
    h.update(digest.as_bytes());
    for k in input_keys {
        h.update(b"\0input\0");
        h.update(k.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

fn manifest_path(store: &Store, snap: SnapshotId) -> Option<PathBuf> {
    store
        .snapshots()
        .fs_dir(snap)
        .parent()
        .map(|p| p.join(MANIFEST))
}

/// Makes `snap` the snapshot later runs of `identity` link from, when it has a manifest. Call
/// it once the snapshot is durable and recorded.
pub(crate) fn remember(store: &Store, identity: &str, snap: SnapshotId) -> Result<(), SolveError> {
    if !manifest_path(store, snap).is_some_and(|p| p.is_file()) {
        return Ok(());
    }
    store
        .index()
        .meta_put_hint(&format!("{META_PREFIX}{identity}"), &snap.0.to_string())
        .map_err(SolveError::from)
}

/// The files of an earlier run of this COPY: its destination directory in that snapshot and,
/// by path below it, the content hash of each file.
pub(crate) struct Previous {
    pub(crate) snap: SnapshotId,
    dir: PathBuf,
    files: HashMap<String, [u8; 32]>,
}

/// The earlier run of `identity` that copied to `dest` (relative to the root), if its snapshot
/// and a valid manifest for that destination are still there.
pub(crate) fn previous(store: &Store, identity: &str, dest: &Path) -> Option<Previous> {
    let id = store
        .index()
        .meta_get(&format!("{META_PREFIX}{identity}"))
        .ok()
        .flatten()?;
    let snap = SnapshotId(id.parse().ok()?);
    if !store.snapshots().exists(snap).ok()? {
        return None;
    }
    let bytes = std::fs::read(manifest_path(store, snap)?).ok()?;
    let (mdest, files) = decode(&bytes)?;
    if mdest != dest.as_os_str().as_bytes() {
        tracing::debug!(%snap, "copy manifest is for another destination");
        return None;
    }
    Some(Previous {
        snap,
        dir: store.snapshots().fs_dir(snap).join(dest),
        files,
    })
}

/// Writes the manifest of `snap`, whose COPY placed `files` below `dest`.
pub(crate) fn write_manifest(
    store: &Store,
    snap: SnapshotId,
    dest: &Path,
    mut files: Vec<(String, [u8; 32])>,
) -> Result<(), SolveError> {
    let path = manifest_path(store, snap)
        .ok_or_else(|| SolveError::Op(format!("snapshot `{snap}` has no directory")))?;
    files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let bytes = encode(dest.as_os_str().as_bytes(), &files);
    // Through a temp name: a manifest is whole or absent (the trailer catches the rest).
    let tmp = path.with_extension("tmp");
    let err = SolveError::io(format!("`{}`", path.display()));
    std::fs::write(&tmp, bytes).map_err(&err)?;
    std::fs::rename(&tmp, &path).map_err(&err)
}

/// `MAGIC`, the destination, the entries (path, hash), then the blake3 of all before it.
fn encode(dest: &[u8], files: &[(String, [u8; 32])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + files.len() * 64);
    out.extend_from_slice(MAGIC);
    put_bytes(&mut out, dest);
    out.extend_from_slice(&(files.len() as u64).to_le_bytes());
    for (p, h) in files {
        put_bytes(&mut out, p.as_bytes());
        out.extend_from_slice(h);
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// The destination and the files of a manifest; `None` when it is not one, or damaged.
#[allow(clippy::type_complexity)]
fn decode(bytes: &[u8]) -> Option<(Vec<u8>, HashMap<String, [u8; 32]>)> {
    let body_len = bytes.len().checked_sub(32)?;
    let (body, sum) = bytes.split_at(body_len);
    if blake3::hash(body).as_bytes() != sum {
        return None;
    }
    let mut r = Reader(body.strip_prefix(MAGIC)?);
    let dest = r.bytes()?.to_vec();
    let count = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    // Every entry takes at least 36 bytes: a count beyond that is damage, not a reason to
    // reserve memory.
    let mut files = HashMap::with_capacity(usize::try_from(count).ok()?.min(body.len() / 36));
    for _ in 0..count {
        let path = String::from_utf8(r.bytes()?.to_vec()).ok()?;
        let hash: [u8; 32] = r.take(32)?.try_into().ok()?;
        files.insert(path, hash);
    }
    r.0.is_empty().then_some((dest, files))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        self.take(usize::try_from(n).ok()?)
    }
}

/// What a direct COPY's flush does with its leaves: link the equal ones from `previous`, copy
/// the others, and collect the manifest of the new snapshot.
pub(super) struct Plan<'a> {
    previous: Option<&'a Previous>,
    /// The memo's content hash of each leaf's source, by leaf index (regular files only).
    hashes: Vec<Option<[u8; 32]>>,
    recorded: Mutex<Vec<(String, [u8; 32])>>,
    /// The destinations that were hard-linked from `previous`.
    linked: Mutex<Vec<PathBuf>>,
}

impl<'a> Plan<'a> {
    /// Looks up the content hashes of `leaves` in the checksum memo (the context checksum that
    /// keyed this COPY put them there), batched as the checksum does.
    pub(super) fn new(
        index: &CacheIndex,
        leaves: &[Leaf],
        previous: Option<&'a Previous>,
    ) -> Result<Self, SolveError> {
        let files: Vec<usize> = (0..leaves.len())
            .filter(|&i| leaves[i].meta.is_file())
            .collect();
        let keys: Vec<Vec<u8>> = files
            .iter()
            .map(|&i| context::memo_key_of(&leaves[i].src, &leaves[i].meta))
            .collect();
        let found: Vec<Option<[u8; 32]>> = keys
            .par_chunks(context::MEMO_CHUNK)
            .map(|chunk| index.memo_get_many(chunk).map_err(SolveError::from))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        let mut hashes = vec![None; leaves.len()];
        for (i, h) in files.into_iter().zip(found) {
            hashes[i] = h;
        }
        Ok(Plan {
            previous,
            hashes,
            recorded: Mutex::new(Vec::new()),
            linked: Mutex::new(Vec::new()),
        })
    }

    fn record(&self, frel: &str, h: [u8; 32]) {
        if let Ok(mut r) = self.recorded.lock() {
            r.push((frel.to_string(), h));
        }
    }

    /// The new snapshot's manifest entries, and the files that were linked.
    pub(super) fn finish(self) -> (Vec<(String, [u8; 32])>, Vec<PathBuf>) {
        let linked = self.linked.into_inner().unwrap_or_default();
        let files = self.recorded.into_inner().unwrap_or_default();
        (files, linked)
    }
}

impl Place for Plan<'_> {
    /// Places leaf `i`: a link to the earlier snapshot's equal file, or a copy.
    fn place(
        &self,
        i: usize,
        l: &Leaf,
        owner: Option<Owner>,
        mode: Option<u32>,
    ) -> Result<(), SolveError> {
        let hash = self.hashes.get(i).copied().flatten();
        if let (Some(h), Some(prev)) = (hash, self.previous) {
            if l.fresh && prev.files.get(&l.frel) == Some(&h) && link(prev, l, owner, mode)? {
                if let Ok(mut linked) = self.linked.lock() {
                    linked.push(l.dst.clone());
                }
                self.record(&l.frel, h);
                return Ok(());
            }
        }
        let unchanged = batch::copy_leaf(l, owner, mode)?;
        if let (Some(h), true) = (hash, unchanged) {
            self.record(&l.frel, h);
        }
        Ok(())
    }
}

/// Links the earlier file for `l` into place and checks, through the new link, that the inode
/// is what a copy would have made. False (and nothing left at the destination) when it is not,
/// or the link could not be made: the caller copies instead.
fn link(
    prev: &Previous,
    l: &Leaf,
    owner: Option<Owner>,
    mode: Option<u32>,
) -> Result<bool, SolveError> {
    let old = prev.dir.join(&l.frel);
    if std::fs::hard_link(&old, &l.dst).is_err() {
        // Gone, another file system, too many links: a copy is always right.
        return Ok(false);
    }
    let ok = std::fs::symlink_metadata(&l.dst)
        .is_ok_and(|m| copy_would_match(&m, &l.meta, owner, mode))
        && xattr::list(&l.dst).is_ok_and(|mut names| names.next().is_none());
    if !ok {
        std::fs::remove_file(&l.dst).map_err(SolveError::io(format!("`{}`", l.dst.display())))?;
    }
    Ok(ok)
}

/// Whether `linked` (the inode now at the destination) has the metadata copying `src` there
/// would give it (`batch::create_entry`): a regular file of the same size and mtime, the
/// copy's owner and permission bits.
fn copy_would_match(
    linked: &std::fs::Metadata,
    src: &std::fs::Metadata,
    owner: Option<Owner>,
    mode: Option<u32>,
) -> bool {
    let o = owner.unwrap_or_default();
    let perm = mode.unwrap_or(src.mode() & 0o7777);
    linked.is_file()
        && linked.mode() & 0o7777 == perm
        && (linked.uid(), linked.gid()) == (o.uid, o.gid)
        && linked.size() == src.size()
        && (linked.mtime(), linked.mtime_nsec()) == (src.mtime(), src.mtime_nsec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_reads_back_and_damage_is_refused() {
        let files = vec![
            ("a".to_string(), [1u8; 32]),
            ("sub/b".to_string(), [2u8; 32]),
        ];
        let bytes = encode(b"data", &files);
        let (dest, got) = decode(&bytes).expect("valid manifest");
        assert_eq!(dest, b"data");
        assert_eq!(got.len(), 2);
        assert_eq!(got["sub/b"], [2u8; 32]);
        // Truncated, flipped, or empty: refused, never a panic.
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_none(), "truncated to {n}");
        }
        let mut flipped = bytes.clone();
        flipped[MAGIC.len() + 5] ^= 1;
        assert!(decode(&flipped).is_none());
        // A huge count with a valid trailer is refused without reserving memory for it.
        let mut body = MAGIC.to_vec();
        put_bytes(&mut body, b"d");
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        let sum = blake3::hash(&body);
        body.extend_from_slice(sum.as_bytes());
        assert!(decode(&body).is_none());
    }

    struct Ctx(PathBuf);

    impl crate::context::LocalContext for Ctx {
        fn root(&self) -> &Path {
            &self.0
        }
        fn excluded(&self, _: &str) -> bool {
            false
        }
        fn may_reinclude(&self) -> bool {
            false
        }
    }

    /// One direct COPY of `data` to `/data` into a new snapshot, as `file_op` runs it (minus the
    /// overlay: the destination is new, so the upper directory is all there is to it).
    fn copy_into_snapshot(
        store: &Store,
        ctx: &Ctx,
        mode: i32,
    ) -> (SnapshotId, super::super::direct::Placed) {
        let c = kiln_llb::FileCopy {
            src: "data".into(),
            dest: "/data".into(),
            mode,
            ..Default::default()
        };
        // The context checksum that keys the COPY fills the memo.
        let sources = context::resolve_sources(ctx, "data", true).unwrap();
        context::checksum(ctx, &sources, store.index()).unwrap();
        let snap = store.snapshots().create(None).unwrap();
        let fs = store.snapshots().fs_dir(snap);
        let source = super::super::CopySource::Local(ctx);
        let pending = super::super::direct::prepare(&fs, &c, &source, None)
            .unwrap()
            .expect("direct");
        let dest = pending.dest().to_path_buf();
        let prev = previous(store, "id", &dest);
        let placed = super::super::direct::finish(
            &fs,
            pending,
            &c,
            &source,
            None,
            Some(store.index()),
            prev.as_ref(),
        )
        .unwrap()
        .expect("placed");
        write_manifest(store, snap, &dest, placed.files.clone()).unwrap();
        remember(store, "id", snap).unwrap();
        (snap, placed)
    }

    fn ino(p: &Path) -> u64 {
        std::fs::symlink_metadata(p).unwrap().ino()
    }

    #[test]
    fn a_repeated_copy_links_the_unchanged_files_and_copies_the_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let ctx = Ctx(dir.path().join("ctx"));
        let data = ctx.0.join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        for i in 0..40 {
            std::fs::write(data.join(format!("sub/f{i}")), format!("file {i}")).unwrap();
        }
        std::fs::write(data.join("same-content"), "x").unwrap();
        std::os::unix::fs::symlink("sub/f0", data.join("link")).unwrap();

        let (a, placed) = copy_into_snapshot(&store, &ctx, -1);
        assert_eq!((placed.linked.len(), placed.files.len()), (0, 41));
        let fa = store.snapshots().fs_dir(a).join("data");

        // One file's content changes; another keeps its content but gets a new mtime.
        std::fs::write(data.join("sub/f7"), "changed").unwrap();
        let t = filetime::FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_mtime(data.join("same-content"), t).unwrap();
        let (b, placed) = copy_into_snapshot(&store, &ctx, -1);
        assert_eq!(
            placed.linked.len(),
            39,
            "all but the changed and the touched file"
        );
        assert_eq!(placed.files.len(), 41, "every file is in the new manifest");
        let fb = store.snapshots().fs_dir(b).join("data");
        assert_eq!(ino(&fa.join("sub/f1")), ino(&fb.join("sub/f1")));
        assert_ne!(ino(&fa.join("sub/f7")), ino(&fb.join("sub/f7")));
        assert_ne!(ino(&fa.join("same-content")), ino(&fb.join("same-content")));
        assert_eq!(
            std::fs::read_to_string(fb.join("sub/f7")).unwrap(),
            "changed"
        );
        assert_eq!(
            std::fs::read_to_string(fa.join("sub/f7")).unwrap(),
            "file 7"
        );
        let m = std::fs::metadata(fb.join("same-content")).unwrap();
        assert_eq!(m.mtime(), 1_000_000, "the touched file's new mtime");
        assert_eq!(
            std::fs::read_link(fb.join("link")).unwrap(),
            Path::new("sub/f0")
        );

        // A `--chmod` the earlier files do not have: nothing may be linked.
        let (c, placed) = copy_into_snapshot(&store, &ctx, 0o600);
        assert_eq!(placed.linked.len(), 0);
        let fc = store.snapshots().fs_dir(c).join("data");
        assert_eq!(
            std::fs::metadata(fc.join("sub/f1")).unwrap().mode() & 0o7777,
            0o600
        );

        // Removing the snapshot the links came from leaves the later one whole.
        store.snapshots().remove(a).unwrap();
        assert_eq!(
            std::fs::read_to_string(fb.join("sub/f1")).unwrap(),
            "file 1"
        );
        assert_eq!(std::fs::metadata(fb.join("sub/f1")).unwrap().nlink(), 1);
    }

    #[test]
    fn a_manifest_for_another_destination_or_a_missing_snapshot_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let snap = store.snapshots().create(None).unwrap();
        write_manifest(&store, snap, Path::new("data"), vec![("a".into(), [0; 32])]).unwrap();
        remember(&store, "id", snap).unwrap();
        assert!(previous(&store, "id", Path::new("data")).is_some());
        assert!(previous(&store, "id", Path::new("other")).is_none());
        assert!(previous(&store, "other-id", Path::new("data")).is_none());
        store.snapshots().remove(snap).unwrap();
        assert!(previous(&store, "id", Path::new("data")).is_none());
        // A snapshot without a manifest is not remembered.
        let bare = store.snapshots().create(None).unwrap();
        remember(&store, "bare", bare).unwrap();
        assert!(store
            .index()
            .meta_get("copy-identity/bare")
            .unwrap()
            .is_none());
    }

    #[test]
    fn identity_ignores_nothing_but_the_content() {
        let a = identity("op", ["base", "ctx"]);
        assert_eq!(a, identity("op", ["base", "ctx"]));
        assert_ne!(a, identity("op2", ["base", "ctx"]));
        assert_ne!(a, identity("op", ["base2", "ctx"]));
        assert_ne!(a, identity("op", ["base", "ctx", "x"]));
    }
}

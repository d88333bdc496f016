//! Snapshots end to end: chains, unpacking every entry type, hostile tars, merged reads and
//! real overlay mounts (these tests run as root).

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use kiln_cache::{CacheError, CachedResult, LayerInfo, SnapshotId, Store};
use tar::EntryType;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("root")).unwrap();
    (dir, store)
}

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

#[test]
fn a_mutable_snapshot_is_removed_unless_committed() {
    let (_d, store) = store();
    let snaps = store.snapshots();
    let base = snaps.create(None).unwrap();

    let dropped = snaps.create_mutable(Some(base)).unwrap();
    let (gone, gone_dir) = (dropped.id(), dropped.fs_dir());
    std::fs::write(gone_dir.join("f"), "half made").unwrap();
    drop(dropped);
    assert!(!snaps.exists(gone).unwrap());
    assert!(!gone_dir.exists());

    let kept = snaps.create_mutable(Some(base)).unwrap();
    std::fs::write(kept.fs_dir().join("f"), "done").unwrap();
    let kept = kept.commit();
    assert!(snaps.exists(kept).unwrap());
    assert_eq!(snaps.chain(kept).unwrap(), vec![kept, base]);
    assert_eq!(
        std::fs::read_to_string(snaps.fs_dir(kept).join("f")).unwrap(),
        "done"
    );

    // A committed snapshot taken back (a result the index does not name yet) goes on drop.
    let adopted = snaps.adopt(kept);
    drop(adopted);
    assert!(!snaps.exists(kept).unwrap());
    let made = snaps.create(Some(base)).unwrap();
    assert_eq!(snaps.adopt(made).commit(), made);
    assert!(snaps.exists(made).unwrap());

    // Over a floor, as a merge re-applies a layer: gone on drop, kept once committed.
    let over = snaps.create_over_mutable(Some(made), Some(base)).unwrap();
    let over_id = over.id();
    drop(over);
    assert!(!snaps.exists(over_id).unwrap());
    let over = snaps
        .create_over_mutable(Some(made), Some(base))
        .unwrap()
        .commit();
    assert_eq!(snaps.chain(over).unwrap(), vec![over, made, base]);

    // A layer whose tar is bad leaves no snapshot behind.
    let before = snaps.list().unwrap().len();
    assert!(snaps.unpack_layer(Some(base), &b"not a tar"[..]).is_err());
    assert_eq!(snaps.list().unwrap().len(), before);
}

#[test]
fn chains_parents_and_removal() {
    let (_d, store) = store();
    let snaps = store.snapshots();
    let a = snaps.create(None).unwrap();
    let b = snaps.create(Some(a)).unwrap();
    let c = snaps.create(Some(b)).unwrap();
    assert!(a < b && b < c);
    assert_eq!(c.to_string(), c.0.to_string());
    assert!(snaps.fs_dir(c).is_dir());
    assert_eq!(snaps.parent(c).unwrap(), Some(b));
    assert_eq!(snaps.parent(a).unwrap(), None);
    assert_eq!(snaps.chain(c).unwrap(), vec![c, b, a]);
    assert!(matches!(
        snaps.create(Some(SnapshotId(999))),
        Err(CacheError::SnapshotNotFound(999))
    ));

    // A parent cannot go before its children.
    assert!(matches!(
        snaps.remove(b),
        Err(CacheError::SnapshotInUse { .. })
    ));

    // Results pointing at a removed snapshot go with it.
    store
        .index()
        .put(
            "key-c",
            &CachedResult {
                snapshot: Some(c),
                created_unix: 1,
            },
        )
        .unwrap();
    store
        .index()
        .put(
            "key-b",
            &CachedResult {
                snapshot: Some(b),
                created_unix: 1,
            },
        )
        .unwrap();
    snaps.remove(c).unwrap();
    assert!(!snaps.fs_dir(c).exists());
    assert_eq!(store.index().get("key-c").unwrap(), None);
    assert!(store.index().get("key-b").unwrap().is_some());
    assert!(matches!(
        snaps.chain(c),
        Err(CacheError::SnapshotNotFound(_))
    ));

    // A parent may go together with its children.
    let x = snaps.create(Some(b)).unwrap();
    let y = snaps.create(Some(x)).unwrap();
    assert!(matches!(
        snaps.remove_many(&[x]),
        Err(CacheError::SnapshotInUse { .. })
    ));
    snaps.remove_many(&[x, y]).unwrap();
    assert!(!snaps.exists(x).unwrap() && !snaps.exists(y).unwrap());
    assert!(!snaps.fs_dir(y).exists());

    // Ids are never reused, even across reopen.
    let root = store.root().to_path_buf();
    drop(store);
    let store = Store::open(&root).unwrap();
    let d = store.snapshots().create(Some(b)).unwrap();
    assert!(d > c);
    assert_eq!(store.snapshots().chain(d).unwrap(), vec![d, b, a]);
}

#[test]
fn layer_info_one_per_media_type() {
    let (_d, store) = store();
    let snaps = store.snapshots();
    let s = snaps.create(None).unwrap();
    assert!(snaps.layers(s).unwrap().is_empty());
    let gz = LayerInfo {
        diff_id: digest('a'),
        digest: digest('b'),
        size: 10,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
    };
    let zst = LayerInfo {
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
        digest: digest('c'),
        ..gz.clone()
    };
    snaps.set_layer(s, gz.clone()).unwrap();
    snaps.set_layer(s, zst.clone()).unwrap();
    let gz2 = LayerInfo {
        digest: digest('d'),
        size: 11,
        ..gz.clone()
    };
    snaps.set_layer(s, gz2.clone()).unwrap();
    assert_eq!(snaps.layers(s).unwrap(), vec![gz2, zst]);
    assert!(snaps.set_layer(SnapshotId(77), gz.clone()).is_err());
    let bad = LayerInfo {
        digest: "sha256:nope".into(),
        ..gz
    };
    assert!(matches!(
        snaps.set_layer(s, bad),
        Err(CacheError::InvalidDigest { .. })
    ));
}

#[test]
fn unpack_every_entry_type() {
    let (_d, store) = store();
    let snaps = store.snapshots();
    let layer = tar(&[
        dir("./"),
        Entry { mode: 0o750, uid: 1000, gid: 1001, mtime: 1_111_111_111, ..dir("etc/") },
        Entry { uid: 1000, gid: 1001, mtime: 1_234_567_890, ..file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n") },
        hardlink("etc/passwd-link", "etc/passwd"),
        Entry { mode: 0o4755, ..file("bin/su", b"\x7fELF") },
        Entry { mode: 0o1777, ..dir("tmp/") },
        symlink("etc/sh", "../bin/su"),
        Entry { dev: (1, 3), mode: 0o666, ..e("dev/null", EntryType::Char) },
        Entry { dev: (8, 1), mode: 0o660, ..e("dev/sda1", EntryType::Block) },
        Entry { mode: 0o600, ..e("run/fifo", EntryType::Fifo) },
        Entry {
            xattrs: vec![("user.kiln", b"yes"), ("security.capability", b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")],
            ..file("bin/ping", b"ping")
        },
        Entry { xattrs: vec![("trusted.overlay.redirect", b"/x")], ..file("bin/sneaky", b"") },
        file("etc/.wh.shadow", b""),
        dir("var/cache/"),
        file("var/cache/.wh..wh..opq", b""),
        file("usr/lib/deep/file", b"implicit parents"),
    ]);
    let s = snaps.unpack_layer(None, layer.as_slice()).unwrap();
    let fs_dir = snaps.fs_dir(s);
    let m = |p: &str| fs::symlink_metadata(fs_dir.join(p)).unwrap();

    let etc = m("etc");
    assert!(etc.is_dir());
    assert_eq!(etc.permissions().mode() & 0o7777, 0o750);
    assert_eq!((etc.uid(), etc.gid()), (1000, 1001));
    assert_eq!(etc.mtime(), 1_111_111_111);

    let passwd = m("etc/passwd");
    assert_eq!(
        fs::read(fs_dir.join("etc/passwd")).unwrap(),
        b"root:x:0:0::/root:/bin/sh\n"
    );
    assert_eq!(
        (passwd.uid(), passwd.gid(), passwd.mtime()),
        (1000, 1001, 1_234_567_890)
    );
    assert_eq!(passwd.permissions().mode() & 0o7777, 0o644);
    assert_eq!(m("etc/passwd-link").ino(), passwd.ino());
    assert_eq!(passwd.nlink(), 2);

    assert_eq!(m("bin/su").permissions().mode() & 0o7777, 0o4755);
    assert_eq!(m("tmp").permissions().mode() & 0o7777, 0o1777);
    assert!(m("etc/sh").file_type().is_symlink());
    assert_eq!(
        fs::read_link(fs_dir.join("etc/sh")).unwrap(),
        Path::new("../bin/su")
    );

    let null = m("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(null.permissions().mode() & 0o7777, 0o666);
    let sda = m("dev/sda1");
    assert!(sda.file_type().is_block_device());
    assert_eq!(sda.rdev(), nix::sys::stat::makedev(8, 1));
    assert!(m("run/fifo").file_type().is_fifo());

    assert_eq!(
        xattr::get(fs_dir.join("bin/ping"), "user.kiln")
            .unwrap()
            .as_deref(),
        Some(&b"yes"[..])
    );
    assert!(xattr::get(fs_dir.join("bin/ping"), "security.capability")
        .unwrap()
        .is_some());
    assert_eq!(
        xattr::get(fs_dir.join("bin/sneaky"), "trusted.overlay.redirect").unwrap(),
        None
    );

    let wh = m("etc/shadow");
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!fs_dir.join("etc/.wh.shadow").exists());
    assert_eq!(
        xattr::get(fs_dir.join("var/cache"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!fs_dir.join("var/cache/.wh..wh..opq").exists());
    assert!(m("usr/lib/deep").is_dir());
    assert_eq!(m("usr/lib/deep").permissions().mode() & 0o777, 0o755);
}

/// Every file under `dir`, so a test can prove nothing appeared outside the snapshot.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn hostile_tars_write_nothing_outside() {
    let base = tempfile::tempdir().unwrap();
    // The store lives in base/a/b/root so `..` escapes land in base where we can see them.
    let root = base.path().join("a/b/root");
    let store = Store::open(&root).unwrap();
    let snaps = store.snapshots();
    let outside = base.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o700)).unwrap();
    let before = tree(base.path());
    let escape = outside.display().to_string();
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            tar(&[file("../../../../../../outside/x", b"pwned")]),
        ),
        ("dotdot-mid", tar(&[dir("a/"), file("a/../../x", b"pwned")])),
        (
            "symlink-then-file",
            tar(&[symlink("evil", &escape), file("evil/x", b"pwned")]),
        ),
        (
            "symlink-then-dir",
            tar(&[symlink("evil", &escape), dir("evil/sub/")]),
        ),
        (
            "symlink-then-whiteout",
            tar(&[symlink("evil", &escape), file("evil/.wh.x", b"")]),
        ),
        (
            "symlink-then-opaque",
            tar(&[symlink("evil", &escape), file("evil/.wh..wh..opq", b"")]),
        ),
        (
            "hardlink-outside",
            tar(&[hardlink("x", "../../../../outside/y")]),
        ),
        (
            "hardlink-through-symlink",
            tar(&[symlink("evil", &escape), hardlink("x", "evil/y")]),
        ),
        ("hardlink-missing", tar(&[hardlink("x", "etc/shadow")])),
    ];
    fs::write(outside.join("y"), b"secret").unwrap();
    let before_y = tree(base.path());
    assert_eq!(before.len() + 1, before_y.len());
    for (name, layer) in hostile {
        let err = snaps.unpack_layer(None, layer.as_slice());
        assert!(err.is_err(), "{name} was accepted");
        let msg = err.unwrap_err().to_string();
        assert!(msg.starts_with("layer tar entry `"), "{name}: {msg}");
        assert!(
            snaps.list().unwrap().is_empty(),
            "{name}: snapshot left behind"
        );
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    assert_eq!(fs::read(outside.join("y")).unwrap(), b"secret");
    assert!(!base.path().join("x").exists() && !base.path().join("a/x").exists());

    // A directory later replaced by a symlink must not have its deferred mode applied outside.
    let s = snaps
        .unpack_layer(
            None,
            tar(&[
                Entry {
                    mode: 0o777,
                    ..dir("d/")
                },
                symlink("d", &escape),
            ])
            .as_slice(),
        )
        .unwrap();
    assert_eq!(
        fs::metadata(&outside).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(fs::symlink_metadata(snaps.fs_dir(s).join("d"))
        .unwrap()
        .file_type()
        .is_symlink());

    // Absolute paths are made relative to the snapshot.
    let s = snaps
        .unpack_layer(None, tar(&[file("/etc/hostname", b"kiln\n")]).as_slice())
        .unwrap();
    assert_eq!(
        fs::read(snaps.fs_dir(s).join("etc/hostname")).unwrap(),
        b"kiln\n"
    );

    // A symlink replaced by a regular file of the same name is fine (the link is removed, not followed).
    let s = snaps
        .unpack_layer(
            None,
            tar(&[symlink("f", &format!("{escape}/y")), file("f", b"mine")]).as_slice(),
        )
        .unwrap();
    assert_eq!(fs::read(snaps.fs_dir(s).join("f")).unwrap(), b"mine");
    assert_eq!(fs::read(outside.join("y")).unwrap(), b"secret");
}

#[test]
fn broken_tar_is_an_error_not_a_panic() {
    let (_d, store) = store();
    let mut layer = tar(&[file("a", b"hello")]);
    layer[148] ^= 0x55; // checksum field
    assert!(store
        .snapshots()
        .unpack_layer(None, layer.as_slice())
        .is_err());
    let truncated = &tar(&[file("a", &[7u8; 4000])])[..1024];
    assert!(store.snapshots().unpack_layer(None, truncated).is_err());
    assert!(store.snapshots().list().unwrap().is_empty());
}

#[test]
fn read_file_through_whiteouts_and_opaque_dirs() {
    let (_d, store) = store();
    let snaps = store.snapshots();
    let base = snaps
        .unpack_layer(
            None,
            tar(&[
                dir("etc/"),
                file("etc/passwd", b"base"),
                file("etc/group", b"group"),
                dir("opt/"),
                dir("opt/app/"),
                file("opt/app/old", b"old"),
                file("opt/keep", b"keep"),
                dir("data/"),
                file("data/f", b"under data"),
                symlink("etc2", "/etc"),
                symlink("loop", "loop"),
            ])
            .as_slice(),
        )
        .unwrap();
    let mid = snaps
        .unpack_layer(
            Some(base),
            tar(&[
                file("etc/.wh.group", b""),
                dir("opt/app/"),
                file("opt/app/.wh..wh..opq", b""),
                file("opt/app/new", b"new"),
                file("data", b"now a file"),
            ])
            .as_slice(),
        )
        .unwrap();
    let top = snaps
        .unpack_layer(Some(mid), tar(&[file("etc/passwd", b"top")]).as_slice())
        .unwrap();
    let chain = snaps.chain(top).unwrap();
    assert_eq!(chain, vec![top, mid, base]);
    let read = |p: &str| snaps.read_file(&chain, p).unwrap();
    assert_eq!(read("/etc/passwd").as_deref(), Some(&b"top"[..]));
    assert_eq!(read("etc/passwd").as_deref(), Some(&b"top"[..]));
    assert_eq!(read("/etc2/passwd").as_deref(), Some(&b"top"[..]));
    assert_eq!(read("/etc/group"), None);
    assert_eq!(read("/opt/app/old"), None);
    assert_eq!(read("/opt/app/new").as_deref(), Some(&b"new"[..]));
    assert_eq!(read("/opt/keep").as_deref(), Some(&b"keep"[..]));
    assert_eq!(read("/data/f"), None);
    assert_eq!(read("/data").as_deref(), Some(&b"now a file"[..]));
    assert_eq!(read("/nope"), None);
    // Lower layers alone still see the old state.
    assert_eq!(
        snaps
            .read_file(&[mid, base], "/etc/passwd")
            .unwrap()
            .as_deref(),
        Some(&b"base"[..])
    );
    assert_eq!(
        snaps.read_file(&[base], "/etc/group").unwrap().as_deref(),
        Some(&b"group"[..])
    );
    assert!(matches!(
        snaps.read_file(&chain, "/etc"),
        Err(CacheError::NotAFile { .. })
    ));
    assert!(snaps.read_file(&chain, "/loop").is_err());
}

fn is_mounted(p: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.display().to_string();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

#[test]
fn real_overlay_mount() {
    let (d, store) = store();
    let snaps = store.snapshots();
    let base = snaps
        .unpack_layer(
            None,
            tar(&[dir("etc/"), file("etc/a", b"a"), file("etc/b", b"b")]).as_slice(),
        )
        .unwrap();
    let mid = snaps
        .unpack_layer(
            Some(base),
            tar(&[file("etc/.wh.b", b""), file("etc/c", b"c")]).as_slice(),
        )
        .unwrap();
    let upper = snaps.create(Some(mid)).unwrap();
    let target = d.path().join("mnt");
    fs::create_dir(&target).unwrap();

    let guard = snaps.mount(&[mid, base], Some(upper), &target).unwrap();
    assert_eq!(guard.path(), target);
    assert!(is_mounted(&target));
    assert_eq!(fs::read(target.join("etc/a")).unwrap(), b"a");
    assert_eq!(fs::read(target.join("etc/c")).unwrap(), b"c");
    assert!(!target.join("etc/b").exists());
    fs::write(target.join("etc/new"), b"written").unwrap();
    fs::remove_file(target.join("etc/a")).unwrap();
    drop(guard);
    assert!(!is_mounted(&target));
    let up = snaps.fs_dir(upper);
    assert_eq!(fs::read(up.join("etc/new")).unwrap(), b"written");
    let wh = fs::symlink_metadata(up.join("etc/a")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "deletion became a whiteout"
    );
    let chain = snaps.chain(upper).unwrap();
    assert_eq!(snaps.read_file(&chain, "/etc/a").unwrap(), None);
    assert_eq!(
        snaps.read_file(&chain, "/etc/new").unwrap().as_deref(),
        Some(&b"written"[..])
    );

    // Read-only overlay of several lowers.
    let guard = snaps.mount(&[upper, mid, base], None, &target).unwrap();
    assert_eq!(fs::read(target.join("etc/new")).unwrap(), b"written");
    assert!(fs::write(target.join("x"), b"").is_err());
    guard.unmount().unwrap();

    // One lower: read-only bind.
    let guard = snaps.mount(&[base], None, &target).unwrap();
    assert_eq!(fs::read(target.join("etc/b")).unwrap(), b"b");
    assert!(fs::write(target.join("x"), b"").is_err());
    drop(guard);
    assert!(!is_mounted(&target));

    // No lower, an upper: writable bind of the upper itself.
    let fresh = snaps.create(None).unwrap();
    let guard = snaps.mount(&[], Some(fresh), &target).unwrap();
    fs::write(target.join("hello"), b"hi").unwrap();
    drop(guard);
    assert_eq!(fs::read(snaps.fs_dir(fresh).join("hello")).unwrap(), b"hi");

    assert!(matches!(
        snaps.mount(&[SnapshotId(4242)], None, &target),
        Err(CacheError::SnapshotNotFound(4242))
    ));
}

/// Counts what passes through, like a hashing reader computing a diff ID would.
struct Counting<'a> {
    inner: &'a [u8],
    seen: usize,
}

impl std::io::Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::io::Read::read(&mut self.inner, buf)?;
        self.seen += n;
        Ok(n)
    }
}

#[test]
fn unpack_reads_the_stream_to_the_end() {
    let (_d, store) = store();
    let mut layer = tar(&[file("a", b"x")]);
    layer.extend_from_slice(&[0u8; 8192]); // tar's record padding after the end marker
    let mut r = Counting {
        inner: &layer,
        seen: 0,
    };
    store.snapshots().unpack_layer(None, &mut r).unwrap();
    assert_eq!(r.seen, layer.len());
}

#[test]
fn deep_chain_mounts_past_the_option_page_limit() {
    let (d, store) = store();
    let snaps = store.snapshots();
    let mut parent = None;
    let mut ids = Vec::new();
    for i in 0..180u32 {
        let id = snaps.create(parent).unwrap();
        fs::write(snaps.fs_dir(id).join(format!("f{i}")), i.to_string()).unwrap();
        fs::write(snaps.fs_dir(id).join("top"), i.to_string()).unwrap();
        ids.push(id);
        parent = Some(id);
    }
    let upper = snaps.create(parent).unwrap();
    let chain = snaps.chain(ids[ids.len() - 1]).unwrap();
    let option_bytes: usize = chain
        .iter()
        .map(|id| snaps.fs_dir(*id).as_os_str().len() + 1)
        .sum();
    assert!(
        option_bytes > 4000,
        "the chain must not fit one page ({option_bytes} bytes)"
    );
    let target = d.path().join("mnt");
    fs::create_dir(&target).unwrap();
    let guard = snaps.mount(&chain, Some(upper), &target).unwrap();
    assert_eq!(fs::read_to_string(target.join("f0")).unwrap(), "0");
    assert_eq!(fs::read_to_string(target.join("f179")).unwrap(), "179");
    assert_eq!(fs::read_to_string(target.join("top")).unwrap(), "179");
    fs::write(target.join("new"), b"x").unwrap();
    drop(guard);
    assert!(!is_mounted(&target));
    assert!(snaps.fs_dir(upper).join("new").is_file());
}

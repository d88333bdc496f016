//! Layer tars: determinism, whiteouts, every entry kind, names, xattrs, mtimes, round trips.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use common::*;
use kiln_exporter::{write_layer_blob, write_layer_tar, Compression, ExportError, LayerOptions};
use sha2::{Digest, Sha256};

fn opts(epoch: Option<i64>) -> LayerOptions {
    LayerOptions {
        compression: Compression::Uncompressed,
        source_date_epoch: epoch,
        level: None,
    }
}

fn tar_of(dir: &Path, epoch: Option<i64>) -> Vec<u8> {
    let mut out = Vec::new();
    write_layer_tar(dir, &mut out, &opts(epoch)).unwrap();
    out
}

#[derive(Debug, Clone)]
struct Ent {
    path: Vec<u8>,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    link: Option<Vec<u8>>,
    dev: (u32, u32),
    pax: HashMap<String, Vec<u8>>,
    uname: Vec<u8>,
    data: Vec<u8>,
}

fn entries(bytes: &[u8]) -> Vec<Ent> {
    let mut a = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut pax = HashMap::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                pax.insert(x.key().unwrap().to_string(), x.value_bytes().to_vec());
            }
        }
        let h = e.header().clone();
        let path = e.path_bytes().to_vec();
        let link = e.link_name_bytes().map(|l| l.to_vec());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(Ent {
            path,
            kind: h.entry_type(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            size: h.size().unwrap(),
            link,
            dev: (
                h.device_major().unwrap().unwrap_or(0),
                h.device_minor().unwrap().unwrap_or(0),
            ),
            pax,
            uname: h.username_bytes().unwrap_or_default().to_vec(),
            data,
        });
    }
    out
}

fn find<'a>(ents: &'a [Ent], path: &[u8]) -> &'a Ent {
    ents.iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no entry {}", String::from_utf8_lossy(path)))
}

#[test]
fn same_tree_in_two_dirs_gives_identical_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    make_tree(a.path(), true);
    make_tree(b.path(), true);
    let ta = tar_of(a.path(), None);
    assert_eq!(ta, tar_of(b.path(), None));
    // Built at different times, made equal by the epoch clamp alone.
    let c = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    make_tree(c.path(), false);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    make_tree(d.path(), false);
    assert_eq!(tar_of(c.path(), Some(T0)), tar_of(d.path(), Some(T0)));
    assert_eq!(tar_of(c.path(), Some(T0)), ta);
}

#[test]
fn entries_carry_the_right_metadata() {
    let dir = tempfile::tempdir().unwrap();
    make_tree(dir.path(), true);
    let ents = entries(&tar_of(dir.path(), None));

    for (i, e) in ents.iter().enumerate() {
        assert!(!e.path.starts_with(b"./") && !e.path.starts_with(b"/"));
        assert_eq!(e.kind.is_dir(), e.path.ends_with(b"/"), "{:?}", e.path);
        assert!(e.uname.is_empty(), "no user names");
        assert_eq!(e.mtime, T0 as u64);
        // Parents before children.
        let trimmed = e.path.strip_suffix(b"/").unwrap_or(&e.path);
        if let Some(slash) = trimmed.iter().rposition(|&b| b == b'/') {
            let parent = [&trimmed[..=slash]].concat();
            assert!(
                ents[..i].iter().any(|p| p.path == parent),
                "parent of {} comes first",
                String::from_utf8_lossy(&e.path)
            );
        }
    }

    let wh = find(&ents, b"etc/.wh.removed");
    assert!(wh.kind.is_file() && wh.size == 0 && wh.mode == 0o600);
    assert!(!ents.iter().any(|e| e.path == b"etc/removed"));

    let pos = ents.iter().position(|e| e.path == b"var/cache/").unwrap();
    assert_eq!(ents[pos + 1].path, b"var/cache/.wh..wh..opq");
    assert!(ents[pos + 1].kind.is_file() && ents[pos + 1].size == 0);
    assert!(ents[pos].pax.is_empty(), "overlay xattrs are not exported");
    assert_eq!(find(&ents, b"var/cache/new").data, vec![7u8; 70_000]);

    let passwd = find(&ents, b"etc/passwd");
    assert!(passwd.kind.is_file());
    assert_eq!((passwd.uid, passwd.gid), (1000, 1001));
    assert!(passwd.pax.is_empty(), "trusted.* xattrs are dropped");
    let link = find(&ents, b"etc/passwd-link");
    assert!(link.kind.is_hard_link());
    assert_eq!(link.link.as_deref(), Some(&b"etc/passwd"[..]));
    assert_eq!(link.size, 0);

    let tool = find(&ents, b"bin/tool");
    assert_eq!(tool.mode, 0o4755);
    assert_eq!(tool.pax["SCHILY.xattr.user.note"], b"hello");
    assert_eq!(tool.pax["SCHILY.xattr.security.capability"], capability());
    assert_eq!(tool.data, b"#!/bin/sh\necho tool\n");
    assert_eq!(find(&ents, b"bin/sg").mode, 0o2711);
    assert_eq!(find(&ents, b"tmp/").mode, 0o1777);

    let null = find(&ents, b"dev/null");
    assert!(null.kind.is_character_special());
    assert_eq!(null.dev, (1, 3));
    let lo = find(&ents, b"dev/loop0");
    assert!(lo.kind.is_block_special());
    assert_eq!(lo.dev, (7, 0));
    assert!(find(&ents, b"run/fifo").kind.is_fifo());

    let sym = find(&ents, b"lib");
    assert!(sym.kind.is_symlink());
    assert_eq!(sym.link.as_deref(), Some(&b"usr/lib"[..]));
    let long_sym = find(&ents, b"long/symlink");
    assert_eq!(long_sym.link, Some(b"t".repeat(150)));

    let long = format!("long/{}", long_name());
    assert_eq!(find(&ents, long.as_bytes()).data, b"long");
    let deep = format!("long/{}/{}", "d".repeat(150), "f".repeat(120));
    assert_eq!(find(&ents, deep.as_bytes()).data, b"deep");
    assert_eq!(find(&ents, bad_name()).data, b"bad");
    let long_bad = [&b"long/"[..], &long_bad_name()].concat();
    assert_eq!(find(&ents, &long_bad).data, b"long bad");

    let sub = find(&ents, b"sub/");
    assert_eq!(sub.pax["uid"], b"4000000");
    assert_eq!(sub.gid, 5);

    // Depth-first by name bytes: `sub/deeper/` and its child come before `sub/deeper-sibling`.
    let order: Vec<&[u8]> = ents
        .iter()
        .filter(|e| e.path.starts_with(b"sub/"))
        .map(|e| &e.path[..])
        .collect();
    assert_eq!(
        order,
        vec![
            &b"sub/"[..],
            b"sub/deeper/",
            b"sub/deeper/x",
            b"sub/deeper-sibling"
        ]
    );
}

#[test]
fn mtimes_are_clamped_not_raised() {
    let dir = tempfile::tempdir().unwrap();
    make_tree(dir.path(), true);
    for e in entries(&tar_of(dir.path(), Some(T0 - 100))) {
        assert_eq!(e.mtime, (T0 - 100) as u64);
    }
    for e in entries(&tar_of(dir.path(), Some(T0 + 100))) {
        assert_eq!(e.mtime, T0 as u64);
    }
}

#[test]
fn empty_dir_is_an_empty_layer() {
    let dir = tempfile::tempdir().unwrap();
    let (blob, out) = write_layer_blob(dir.path(), Vec::new(), &opts(None)).unwrap();
    assert_eq!(out, vec![0u8; 1024]);
    assert!(blob.empty);
    assert_eq!(blob.diff_id, blob.digest);
    assert_eq!(
        blob.diff_id,
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
    );
    assert_eq!(blob.media_type, "application/vnd.oci.image.layer.v1.tar");
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

#[test]
fn compressed_blobs_decompress_to_the_tar_and_are_stable() {
    let dir = tempfile::tempdir().unwrap();
    make_tree(dir.path(), true);
    let raw = tar_of(dir.path(), None);
    for (c, media) in [
        (
            Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            Compression::Zstd,
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    ] {
        let o = LayerOptions {
            compression: c,
            ..opts(None)
        };
        let (blob, bytes) = write_layer_blob(dir.path(), Vec::new(), &o).unwrap();
        let (again, bytes2) = write_layer_blob(dir.path(), Vec::new(), &o).unwrap();
        assert_eq!(bytes, bytes2, "{c:?} output is deterministic");
        assert_eq!(blob, again);
        assert_eq!(blob.media_type, media);
        assert!(!blob.empty);
        assert_eq!(blob.diff_id, sha(&raw));
        assert_eq!(blob.digest, sha(&bytes));
        assert_eq!(blob.size, bytes.len() as u64);
        let mut plain = Vec::new();
        match c {
            Compression::Gzip => {
                flate2::read::GzDecoder::new(&bytes[..])
                    .read_to_end(&mut plain)
                    .unwrap();
            }
            _ => {
                plain = zstd::decode_all(&bytes[..]).unwrap();
            }
        }
        assert_eq!(plain, raw);
    }
}

#[test]
fn gnu_tar_extracts_the_same_tree() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path(), true);
    let layer = tempfile::NamedTempFile::new().unwrap();
    write_layer_tar(src.path(), layer.as_file(), &opts(None)).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(layer.path())
        .arg("-C")
        .arg(dst.path())
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(describe(dst.path(), false), describe(src.path(), true));
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(dst.path().join("etc/passwd")).unwrap();
    let b = std::fs::metadata(dst.path().join("etc/passwd-link")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link survives");
}

#[test]
fn sockets_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(dir.path().join("s.sock")).unwrap();
    std::fs::write(dir.path().join("f"), b"1").unwrap();
    let ents = entries(&tar_of(dir.path(), None));
    let paths: Vec<_> = ents.iter().map(|e| e.path.clone()).collect();
    assert_eq!(paths, vec![b"f".to_vec()]);
}

#[test]
fn missing_or_non_dir_snapshot_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = write_layer_tar(&missing, Vec::new(), &opts(None)).unwrap_err();
    assert!(matches!(err, ExportError::SnapshotDir { .. }));
    assert!(
        err.to_string()
            .contains(&format!("`{}`", missing.display())),
        "{err}"
    );
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = write_layer_tar(&file, Vec::new(), &opts(None)).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn a_failing_sink_is_a_write_error() {
    struct Full;
    impl std::io::Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"1").unwrap();
    let err = write_layer_tar(dir.path(), Full, &opts(None)).unwrap_err();
    assert!(matches!(err, ExportError::Write { .. }), "{err}");
    assert!(err.to_string().contains("disk full"));
}

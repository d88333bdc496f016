//! End-to-end tests of link reuse (solver/src/fileops/reuse.rs): a `COPY` rebuilt after one file
//! of its source changed hard-links the unchanged files from its earlier snapshot, its layer is
//! exactly a full copy's, and a later `RUN` that changes a linked file changes neither the
//! earlier snapshot nor the earlier image.

mod common;

use common::{assert_ok, stdout, Kiln};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

/// Older than the epoch, so the tar keeps each file's own mtime; the destination directory the
/// COPY makes (mtime: now) is clamped to the epoch, so two builds can give the same layer.
const EPOCH: &str = "1600000000";
const FILES: usize = 30;

fn context() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("kiln-reuse-")
        .tempdir()
        .unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM busybox\nCOPY data /data\nRUN echo run >> /data/f1\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("data/sub")).unwrap();
    for i in 0..FILES {
        let p = dir.path().join(format!("data/f{i}"));
        std::fs::write(&p, format!("content {i}\n")).unwrap();
        set_mtime(&p, 1_500_000_000 + i as i64);
    }
    std::fs::write(dir.path().join("data/sub/deep"), "deep\n").unwrap();
    std::os::unix::fs::symlink("f3", dir.path().join("data/link")).unwrap();
    set_mtime(&dir.path().join("data/sub/deep"), 1_500_000_100);
    set_mtime(&dir.path().join("data/sub"), 1_500_000_100);
    set_mtime(&dir.path().join("data"), 1_500_000_100);
    dir
}

fn set_mtime(p: &Path, t: i64) {
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t as u64);
    // futimens on a read-only descriptor: the owner (root here) may set times, on a directory too.
    std::fs::File::open(p).unwrap().set_modified(when).unwrap();
}

fn build(k: &Kiln, ctx: &Path, tag: &str) -> Output {
    k.cmd()
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["build", "--progress", "plain", "-t", tag])
        .arg(ctx)
        .output()
        .expect("run kiln build")
}

/// The image's layer diffIDs, from its config in the store's OCI layout.
fn diff_ids(k: &Kiln, tag: &str) -> Vec<String> {
    let layout = format!(
        "oci:{}/images:docker.io/library/{tag}:latest",
        k.root.path().display()
    );
    let config: serde_json::Value =
        serde_json::from_str(&common::tool("skopeo", &["inspect", "--config", &layout])).unwrap();
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no diff_ids in {config}"))
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// `rel` in every snapshot of the store that has it.
fn in_snapshots(k: &Kiln, rel: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(k.root.path().join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("fs").join(rel))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    // In the order they were made: snapshot ids count up.
    out.sort_by_key(|p| snapshot_id(p));
    out
}

fn snapshot_id(p: &Path) -> u64 {
    p.strip_prefix(p.ancestors().find(|a| a.ends_with("snapshots")).unwrap())
        .ok()
        .and_then(|r| r.components().next())
        .and_then(|c| c.as_os_str().to_str()?.parse().ok())
        .unwrap_or_else(|| panic!("not in a snapshot: {}", p.display()))
}

/// The snapshots a `COPY data /data` made: those with the file no `RUN` touches.
fn copy_snapshots(k: &Kiln) -> Vec<PathBuf> {
    in_snapshots(k, "data/f3")
        .into_iter()
        .map(|p| p.parent().unwrap().parent().unwrap().to_path_buf())
        .collect()
}

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

#[test]
fn a_rebuilt_copy_links_unchanged_files_and_its_layer_is_a_full_copys() {
    let ctx = context();
    let k = Kiln::with_busybox();
    assert_ok(&build(&k, ctx.path(), "one"), "first build");
    let before = diff_ids(&k, "one");

    let changed = ctx.path().join("data/f2");
    std::fs::write(&changed, "changed\n").unwrap();
    set_mtime(&changed, 1_500_000_999);
    assert_ok(
        &build(&k, ctx.path(), "two"),
        "rebuild after one file changed",
    );

    let copies = copy_snapshots(&k);
    assert_eq!(copies.len(), 2, "two COPY snapshots: {copies:?}");
    let (old, new) = (&copies[0], &copies[1]);
    for f in ["data/f0", "data/f3", "data/f29", "data/sub/deep"] {
        assert_eq!(
            ino(&old.join(f)),
            ino(&new.join(f)),
            "`{f}` was copied again, not linked"
        );
    }
    assert_ne!(ino(&old.join("data/f2")), ino(&new.join("data/f2")));
    assert_eq!(
        std::fs::read_to_string(new.join("data/f2")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        std::fs::read_to_string(old.join("data/f2")).unwrap(),
        "content 2\n"
    );

    // The same context built from nothing: the same base and COPY layers.
    let fresh = Kiln::with_busybox();
    assert_ok(&build(&fresh, ctx.path(), "two"), "fresh build");
    let (linked, full) = (diff_ids(&k, "two"), diff_ids(&fresh, "two"));
    assert_eq!(linked.len(), 3, "{linked:?}");
    assert_eq!(
        linked[..2],
        full[..2],
        "the COPY layer made with links differs from a full copy's"
    );
    assert_eq!(before[0], linked[0]);
    assert_ne!(before[1], linked[1], "the changed file is in the new layer");
}

#[test]
fn a_run_that_changes_a_linked_file_leaves_the_earlier_snapshot_and_image_alone() {
    let ctx = context();
    let k = Kiln::with_busybox();
    assert_ok(&build(&k, ctx.path(), "one"), "first build");
    std::fs::write(ctx.path().join("data/f9"), "changed\n").unwrap();
    assert_ok(&build(&k, ctx.path(), "two"), "rebuild");

    // `data/f1` is linked between the two COPY snapshots, and each build's `RUN` appended to
    // it: through overlayfs, in the RUN's own upper directory.
    let copies = copy_snapshots(&k);
    assert_eq!(copies.len(), 2, "{copies:?}");
    assert_eq!(
        ino(&copies[0].join("data/f1")),
        ino(&copies[1].join("data/f1"))
    );
    for c in &copies {
        assert_eq!(
            std::fs::read_to_string(c.join("data/f1")).unwrap(),
            "content 1\n",
            "a RUN wrote into the COPY snapshot {}",
            c.display()
        );
    }
    let runs: Vec<PathBuf> = in_snapshots(&k, "data/f1")
        .into_iter()
        .filter(|p| !copies.iter().any(|c| p.starts_with(c)))
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for r in &runs {
        assert_eq!(
            std::fs::read_to_string(r).unwrap(),
            "content 1\nrun\n",
            "{}",
            r.display()
        );
    }
    // A third build of the same Dockerfile links from the second COPY: still one inode. (Before
    // any `kiln run`, which may unpack the images' layers into snapshots of their own.)
    std::fs::write(ctx.path().join("data/f9"), "again\n").unwrap();
    assert_ok(&build(&k, ctx.path(), "three"), "third build");
    let copies = copy_snapshots(&k);
    assert_eq!(copies.len(), 3, "{copies:?}");
    let f1 = ino(&copies[0].join("data/f1"));
    assert!(copies.iter().all(|c| ino(&c.join("data/f1")) == f1));
    assert_eq!(
        std::fs::metadata(copies[0].join("data/f1"))
            .unwrap()
            .nlink(),
        3
    );
    // The images see their own files: the RUN's append once, each build's `f9`.
    for tag in ["one", "two"] {
        let out = k.run(&["run", "--rm", tag, "cat", "/data/f1", "/data/f9"]);
        assert_ok(&out, "kiln run");
        let nine = if tag == "one" {
            "content 9\n"
        } else {
            "changed\n"
        };
        assert_eq!(stdout(&out), format!("content 1\nrun\n{nine}"), "{tag}");
    }
}

/// `COPY --from=stage DIR NEW` is written straight into the snapshot (`fileops/direct.rs`): the
/// image sees the stage's files with their contents, modes, owners (a stage's are kept, as
/// BuildKit keeps them), mtimes and symlinks, and nothing of the stage's other paths.
#[test]
fn copy_from_a_stage_to_a_new_destination_keeps_the_stage_files() {
    let ctx = tempfile::Builder::new()
        .prefix("kiln-from-")
        .tempdir()
        .unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox AS build\n\
         RUN mkdir -p /out/sub/empty && echo one > /out/a && echo two > /out/sub/b \
         && chown 7:8 /out/sub/b && chmod 600 /out/a && chmod 4755 /out/sub/b \
         && ln -s sub/b /out/link && touch -t 200102030405 /out/sub/b /out/a\n\
         FROM busybox\n\
         COPY --from=build /out /opt/app\n",
    )
    .unwrap();
    let k = Kiln::with_busybox();
    let stat =
        "cd $0 && find . | sort | xargs stat -c '%n %A %u:%g %Y %s'; cat a sub/b; readlink link";
    let mut seen = Vec::new();
    for (target, tag, dir) in [("build", "stage", "/out"), ("", "final", "/opt/app")] {
        let mut args = vec!["build", "--progress", "plain", "-t", tag];
        if !target.is_empty() {
            args.extend(["--target", target]);
        }
        args.push(ctx.path().to_str().unwrap());
        assert_ok(&k.run(&args), tag);
        let out = k.run(&["run", "--rm", tag, "sh", "-c", stat, dir]);
        assert_ok(&out, "kiln run stat");
        seen.push(stdout(&out));
    }
    // Directories' mtimes move as the stage writes into them; files' do not.
    let files = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.contains(" d"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(files(&seen[1]), files(&seen[0]));
    assert!(
        seen[0].contains("./sub/b -rwsr-xr-x 7:8 981173100 4"),
        "{}",
        seen[0]
    );
    assert!(
        seen[1].contains("./sub/b -rwsr-xr-x 7:8 981173100 4"),
        "{}",
        seen[1]
    );
    assert!(seen[1].contains("./sub/empty d"), "{}", seen[1]);
    let out = k.run(&["run", "--rm", "final", "ls", "/out"]);
    assert!(
        !out.status.success(),
        "the stage's /out leaked into the image"
    );
}

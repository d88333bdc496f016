//! `COPY`/`ADD` give the file system BuildKit v0.11.6 gives (issue 13 items 1, 3, 4): hard links
//! stay links, `--chown` owns the parents a copy creates, and a source that is a symlink copies
//! what it points to. Each test reads the result three ways where it matters: from a following
//! `RUN`, from `-o type=local`, and from the exported OCI layers.

mod common;

use common::{assert_ok, tool, Kiln};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Builds `ctx` into `out/local` (`type=local`) and `out/oci.tar` (`type=oci`).
fn build(k: &Kiln, ctx: &Path, out: &Path) {
    let local = format!("type=local,dest={}", out.join("local").display());
    let oci = format!("type=oci,dest={}", out.join("oci.tar").display());
    let o = k.run(&[
        "build",
        "--progress",
        "plain",
        "-o",
        &local,
        "-o",
        &oci,
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o, "kiln build");
}

/// `tar -tv` of every layer of the image in `oci.tar`, bottom first.
fn layer_listings(oci_tar: &Path) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    tool(
        "tar",
        &[
            "-xf",
            oci_tar.to_str().unwrap(),
            "-C",
            dir.path().to_str().unwrap(),
        ],
    );
    let blob = |digest: &str| {
        dir.path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(manifest_digest)).unwrap()).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let p = blob(l["digest"].as_str().unwrap());
            tool("tar", &["-tvf", p.to_str().unwrap()])
        })
        .collect()
}

/// (inode, link count) of `p`.
fn ino_nlink(p: &Path) -> (u64, u64) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.ino(), m.nlink())
}

fn assert_linked(a: &Path, b: &Path) {
    let (ia, na) = ino_nlink(a);
    let (ib, nb) = ino_nlink(b);
    assert_eq!(
        (ia, na),
        (ib, nb),
        "{} and {} are not one inode",
        a.display(),
        b.display()
    );
    assert_eq!(na, 2, "{}: link count", a.display());
}

fn write_context(files: &[(&str, &str)]) -> tempfile::TempDir {
    common::temp_context("kiln-fidelity-", files)
}

/// A stage with `/dir/a` and `/dir/sub/b` one inode, and enough other files that the copy goes
/// through the parallel flush.
const LINKED_STAGE: &str = "FROM busybox AS src
RUN mkdir -p /dir/sub && echo linked > /dir/a && ln /dir/a /dir/sub/b \\
 && for i in $(seq 1 30); do echo $i > /dir/f$i; done
";

#[test]
fn copy_from_stage_split_hard_links_into_two_files() {
    let k = Kiln::with_busybox();
    let df = format!(
        "{LINKED_STAGE}
FROM busybox
RUN mkdir /there
# A new destination: the direct write into the snapshot.
COPY --from=src /dir /direct
# An existing destination: the copy through the overlay.
COPY --from=src /dir /there/
RUN stat -c '%i %h' /direct/a /direct/sub/b /there/a /there/sub/b > /seen
"
    );
    let ctx = write_context(&[("Dockerfile", &df)]);
    let out = tempfile::tempdir().unwrap();
    build(&k, ctx.path(), out.path());

    // In the step that follows.
    let seen = std::fs::read_to_string(out.path().join("local/seen")).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.len(), 4, "{seen}");
    assert_eq!(lines[0], lines[1], "direct copy: {seen}");
    assert_eq!(lines[2], lines[3], "overlay copy: {seen}");
    assert!(lines.iter().all(|l| l.ends_with(" 2")), "{seen}");

    // In `type=local`.
    let local = out.path().join("local");
    assert_linked(&local.join("direct/a"), &local.join("direct/sub/b"));
    assert_linked(&local.join("there/a"), &local.join("there/sub/b"));
    assert_eq!(
        std::fs::read_to_string(local.join("there/sub/b")).unwrap(),
        "linked\n"
    );

    // In the layers: the second name is a hard-link entry to the first.
    let all = layer_listings(&out.path().join("oci.tar")).join("\n");
    assert!(
        all.contains("direct/sub/b link to direct/a"),
        "no link entry for the direct copy:\n{all}"
    );
    assert!(
        all.contains("there/sub/b link to there/a"),
        "no link entry for the overlay copy:\n{all}"
    );
}

#[test]
fn copy_of_the_context_split_hard_links_into_two_files() {
    let k = Kiln::with_busybox();
    let df = "FROM busybox
RUN mkdir /there
COPY app /direct
COPY app /there/
COPY app/f* /wild/
";
    let mut files: Vec<(String, String)> = (0..30)
        .map(|i| (format!("app/g{i}"), format!("{i}\n")))
        .collect();
    files.push(("app/f1".into(), "linked\n".into()));
    files.push(("Dockerfile".into(), df.into()));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let ctx = write_context(&refs);
    std::fs::create_dir_all(ctx.path().join("app/sub")).unwrap();
    std::fs::hard_link(ctx.path().join("app/f1"), ctx.path().join("app/sub/f2")).unwrap();
    std::fs::hard_link(ctx.path().join("app/f1"), ctx.path().join("app/f3")).unwrap();
    let out = tempfile::tempdir().unwrap();
    build(&k, ctx.path(), out.path());

    let local = out.path().join("local");
    for d in ["direct", "there"] {
        let (a, b, c) = (
            local.join(d).join("f1"),
            local.join(d).join("sub/f2"),
            local.join(d).join("f3"),
        );
        assert_eq!(ino_nlink(&a), ino_nlink(&b), "{d}");
        assert_eq!(ino_nlink(&a), ino_nlink(&c), "{d}");
        assert_eq!(ino_nlink(&a).1, 3, "{d}");
    }
    // A wildcard copy is one copy: its matches stay linked to each other.
    assert_linked(&local.join("wild/f1"), &local.join("wild/f3"));
    let all = layer_listings(&out.path().join("oci.tar")).join("\n");
    for entry in [
        "direct/sub/f2 link to direct/f1",
        "there/sub/f2 link to there/f1",
        "wild/f3 link to wild/f1",
    ] {
        assert!(all.contains(entry), "no `{entry}` in the layers:\n{all}");
    }

    // A rebuild after one other file changed links the unchanged files from the first build's
    // snapshot (`reuse`): the group is still one inode of its own, and `g1` is not in it.
    std::fs::write(ctx.path().join("app/g0"), "changed\n").unwrap();
    let out2 = tempfile::tempdir().unwrap();
    build(&k, ctx.path(), out2.path());
    let d = out2.path().join("local/direct");
    assert_eq!(ino_nlink(&d.join("f1")), ino_nlink(&d.join("sub/f2")));
    assert_eq!(ino_nlink(&d.join("f1")), ino_nlink(&d.join("f3")));
    assert_eq!(ino_nlink(&d.join("g1")).1, 1);
    assert_eq!(std::fs::read_to_string(d.join("g0")).unwrap(), "changed\n");
    let all = layer_listings(&out2.path().join("oci.tar")).join("\n");
    assert!(all.contains("direct/sub/f2 link to direct/f1"), "{all}");
}

#[test]
fn copy_chown_left_the_parents_it_created_owned_by_root() {
    let k = Kiln::with_busybox();
    let df = "FROM busybox
RUN mkdir -p /old && chown 7:8 /old && chmod 0700 /old
COPY --chown=1000:1000 f /new/sub/f
COPY --chown=1000:1000 f /old/made/f
COPY --chown=1000:1000 d /dnew/deep/
ADD --chown=1000:1000 f /addnew/sub/
ADD --chown=1000:1000 f /addfile/sub/g
COPY --chown=1000:1000 d f /multi/deep/
COPY f /plain/sub/f
COPY --chown=1000:1000 <<EOF /here/doc/f
text
EOF
RUN stat -c '%n %u:%g %a' /here /here/doc /here/doc/f /new /new/sub /new/sub/f /old /old/made /dnew /dnew/deep /multi /multi/deep /addnew /addnew/sub /addfile /addfile/sub /plain /plain/sub > /owners
";
    let ctx = write_context(&[("Dockerfile", df), ("f", "f\n"), ("d/x", "x\n")]);
    std::fs::set_permissions(
        ctx.path().join("d"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    build(&k, ctx.path(), out.path());
    let owners = std::fs::read_to_string(out.path().join("local/owners")).unwrap();
    assert_eq!(
        owners,
        "/here 1000:1000 755
/here/doc 1000:1000 755
/here/doc/f 1000:1000 644
/new 1000:1000 755
/new/sub 1000:1000 755
/new/sub/f 1000:1000 644
/old 7:8 700
/old/made 1000:1000 755
/dnew 1000:1000 755
/dnew/deep 1000:1000 755
/multi 1000:1000 755
/multi/deep 1000:1000 755
/addnew 1000:1000 755
/addnew/sub 1000:1000 755
/addfile 1000:1000 755
/addfile/sub 1000:1000 755
/plain 0:0 755
/plain/sub 0:0 755
"
    );
    // The layer records the same owners.
    let all = layer_listings(&out.path().join("oci.tar")).join("\n");
    for dir in ["new/", "new/sub/", "old/made/", "addnew/sub/"] {
        let line = all
            .lines()
            .find(|l| l.ends_with(&format!(" {dir}")))
            .unwrap_or_else(|| panic!("no `{dir}` in the layers:\n{all}"));
        assert!(line.contains(" 1000/1000 "), "{line}");
    }
}

#[test]
fn copy_from_stage_of_a_symlink_source_copied_the_link() {
    let k = Kiln::with_busybox();
    let df = "FROM busybox AS src
RUN mkdir -p /s/dir/in && echo body > /s/file && chmod 0640 /s/file \\
 && ln -s file /s/flink && ln -s /s/dir /s/dlink && echo i > /s/dir/in/x \\
 && ln -s in/x /s/dir/inner && ln -s ../s/file /s/wlink.txt && ln -s /s/dir /s/wdir
FROM busybox
COPY --from=src /s/flink /out/flink
COPY --from=src /s/dlink /out/dlink
COPY --from=src /s/dlink /out/dlink2/
COPY --from=src /s/wl*.txt /out/w/
COPY --from=src /s/wd* /out/wd/
COPY --from=busybox /bin/sh /out/sh
";
    let ctx = write_context(&[("Dockerfile", df)]);
    let out = tempfile::tempdir().unwrap();
    build(&k, ctx.path(), out.path());
    let o = out.path().join("local/out");
    let regular = |p: &str, body: &str, mode: u32| {
        let m = std::fs::symlink_metadata(o.join(p)).unwrap();
        assert!(m.file_type().is_file(), "{p} is not a regular file");
        assert_eq!(m.mode() & 0o7777, mode, "{p}");
        assert_eq!(std::fs::read_to_string(o.join(p)).unwrap(), body, "{p}");
    };
    regular("flink", "body\n", 0o640);
    regular("w/wlink.txt", "body\n", 0o640);
    for d in ["dlink", "dlink2", "wd"] {
        assert!(
            std::fs::symlink_metadata(o.join(d)).unwrap().is_dir(),
            "{d} is not a directory"
        );
        regular(&format!("{d}/in/x"), "i\n", 0o644);
        // A link inside the copied directory stays a link.
        assert_eq!(
            std::fs::read_link(o.join(d).join("inner")).unwrap(),
            Path::new("in/x"),
            "{d}"
        );
    }
    // From an image: busybox's `/bin/sh` is a link to `busybox`.
    let sh = std::fs::symlink_metadata(o.join("sh")).unwrap();
    assert!(sh.file_type().is_file() && sh.len() > 100_000);
    assert_eq!(sh.mode() & 0o111, 0o111);
}

#[test]
fn copy_from_stage_with_a_wildcard_directory_copied_nothing() {
    let k = Kiln::with_busybox();
    let df = "FROM busybox AS src
RUN mkdir -p /app/a/t /app/b/t /app/b/u && echo 1 > /app/a/t/one.jar && echo 2 > /app/b/t/two.jar \\
 && echo 3 > /app/b/u/three.jar && ln -s two.jar /app/b/t/link.jar
FROM busybox
COPY --from=src /app/*/t/*.jar /out/
";
    let ctx = write_context(&[("Dockerfile", df)]);
    let out = tempfile::tempdir().unwrap();
    build(&k, ctx.path(), out.path());
    let o = out.path().join("local/out");
    let mut names: Vec<String> = std::fs::read_dir(&o)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["link.jar", "one.jar", "two.jar"]);
    assert_eq!(std::fs::read_to_string(o.join("one.jar")).unwrap(), "1\n");
    // A matched link is followed: a regular file with its target's content.
    let m = std::fs::symlink_metadata(o.join("link.jar")).unwrap();
    assert!(m.file_type().is_file());
    assert_eq!(std::fs::read_to_string(o.join("link.jar")).unwrap(), "2\n");
}

#[test]
fn a_hard_link_added_to_the_context_reused_the_unlinked_copy() {
    let k = Kiln::with_busybox();
    let df = "FROM busybox\nCOPY app /app\n";
    let ctx = write_context(&[("Dockerfile", df), ("app/a", "same\n"), ("app/b", "same\n")]);
    let out = tempfile::tempdir().unwrap();
    build(&k, ctx.path(), out.path());
    assert_eq!(ino_nlink(&out.path().join("local/app/a")).1, 1);
    // Same contents, now one inode: the copy is not the cached one.
    std::fs::remove_file(ctx.path().join("app/b")).unwrap();
    std::fs::hard_link(ctx.path().join("app/a"), ctx.path().join("app/b")).unwrap();
    let out2 = tempfile::tempdir().unwrap();
    build(&k, ctx.path(), out2.path());
    let app = out2.path().join("local/app");
    assert_linked(&app.join("a"), &app.join("b"));
}

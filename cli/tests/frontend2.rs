//! End-to-end tests of the second half of the Dockerfile language: `COPY --link` (a merge onto
//! the base whose layer is the same whatever the base), `COPY --exclude` and `--parents`, `ADD`
//! from http(s) URLs (a tiny HTTP server on 127.0.0.1 inside the test) with `--checksum`,
//! `--chown` and `--chmod`, and `RUN` heredocs with a `#!` interpreter. They need root, as CI runs
//! them.

mod common;

use common::*;
use std::path::Path;

fn build(k: &Kiln, ctx: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    k.run(&args)
}

fn blob(k: &Kiln, digest: &str) -> Vec<u8> {
    let hex = digest.trim().trim_start_matches("sha256:").to_string();
    std::fs::read(k.root.path().join("blobs/sha256").join(hex)).unwrap()
}

/// The layer digests of a built image, read from the store through its `--iidfile`.
fn layers(k: &Kiln, iidfile: &Path) -> Vec<String> {
    let digest = std::fs::read_to_string(iidfile).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&blob(k, &digest)).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, content) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

fn run_in(k: &Kiln, image: &str, script: &str) -> String {
    let out = k.run(&["run", "--rm", image, "sh", "-c", script]);
    assert_ok(&out, script);
    stdout(&out)
}

#[test]
fn copy_link_layer_is_the_same_whatever_the_base() {
    let k = Kiln::with_busybox();
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        &[
            ("data/a.txt", "a\n"),
            ("data/skip.tmp", "tmp\n"),
            ("data/sub/b.txt", "b\n"),
            (
                "Dockerfile.one",
                "FROM busybox\nCOPY --link --exclude=*.tmp data /data/\n",
            ),
            (
                "Dockerfile.two",
                "FROM busybox\nRUN echo other > /other.txt\nCOPY --link --exclude=*.tmp data /data/\n",
            ),
        ],
    );
    let mut tops = Vec::new();
    for (n, tag) in [("one", "link-one"), ("two", "link-two")] {
        let iid = ctx.path().join(format!("{n}.iid"));
        let df = ctx.path().join(format!("Dockerfile.{n}"));
        let out = build(
            &k,
            ctx.path(),
            &[
                "-f",
                df.to_str().unwrap(),
                "-t",
                tag,
                "--iidfile",
                iid.to_str().unwrap(),
            ],
        );
        assert_ok(&out, "build with COPY --link");
        let l = layers(&k, &iid);
        assert_eq!(l.len(), if n == "one" { 2 } else { 3 }, "{n}: {l:?}");
        tops.push(l.last().unwrap().clone());
    }
    assert_eq!(tops[0], tops[1], "the linked layer depends on its base");
    let listing = run_in(&k, "link-two", "cat /other.txt && find /data | sort");
    assert_eq!(
        listing,
        "other\n/data\n/data/a.txt\n/data/sub\n/data/sub/b.txt\n"
    );
}

#[test]
fn copy_parents_keeps_the_source_directories() {
    let k = Kiln::with_busybox();
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        &[
            ("src/pkg/x/go.mod", "x\n"),
            ("src/pkg/y/go.mod", "y\n"),
            ("src/pkg/y/main.go", "main\n"),
            ("lib/a.txt", "a\n"),
            (
                "Dockerfile",
                "FROM busybox\nCOPY --parents ./src/./pkg/*/go.mod lib/a.txt /p/\n",
            ),
        ],
    );
    let out = build(&k, ctx.path(), &["-t", "parents"]);
    assert_ok(&out, "build with COPY --parents");
    let listing = run_in(&k, "parents", "cd /p && find . -type f | sort");
    assert_eq!(listing, "./lib/a.txt\n./pkg/x/go.mod\n./pkg/y/go.mod\n");
}

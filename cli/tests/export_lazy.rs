//! End-to-end tests of lazy compression: the local store keeps the layers a build makes
//! uncompressed (a valid OCI layout skopeo reads), a push or an OCI archive compresses them once
//! per layer and compression, and a pulled base layer keeps the blob it came with.

mod common;

use common::{assert_ok, stdout, temp_context, tool, Kiln};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const DOCKERFILE: &str = "FROM busybox:latest\nCOPY data.txt /data.txt\nRUN echo built > /built\n";

fn layer_types(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .expect("a manifest with layers")
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn inspect(transport: &str, what: &str) -> serde_json::Value {
    let text = tool(
        "skopeo",
        &["inspect", what, "--tls-verify=false", transport],
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("skopeo {what} {transport}: {e}"))
}

/// Each stored blob's name and inode: a blob written again (even with the same bytes) is
/// renamed into place and gets a new inode.
fn blobs(root: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(root.join("blobs/sha256"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    Some((
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().ok()?.ino(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Fails when a blob other than a config or manifest (small JSON) was written since `before`:
/// a layer compressed again.
fn assert_no_layer_blob_written(root: &Path, before: &BTreeMap<String, u64>, what: &str) {
    for (name, ino) in blobs(root) {
        if before.get(&name) == Some(&ino) {
            continue;
        }
        let bytes = std::fs::read(root.join("blobs/sha256").join(&name)).unwrap();
        assert!(
            bytes.len() < 16 * 1024 && serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
            "{what} wrote the layer blob sha256:{name} ({} bytes) again",
            bytes.len()
        );
    }
}

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

#[test]
fn build_stores_layers_uncompressed_and_push_compresses_each_once() {
    let (addr, _guard) = common::registry();
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-lazy-",
        &[("Dockerfile", DOCKERFILE), ("data.txt", "one\n")],
    );
    let out = k.run(&["build", "-t", "lazy", ctx.path().to_str().unwrap()]);
    assert_ok(&out, "kiln build -t lazy");
    let local = format!(
        "oci:{}:docker.io/library/lazy:latest",
        k.root.path().join("images").display()
    );
    let stored = inspect(&local, "--raw");
    assert_eq!(layer_types(&stored), [TAR, TAR, TAR], "{stored}");

    let dest = format!("{addr}/{}:v1", common::unique("lazy"));
    let out = k.run(&["push", "lazy", &dest]);
    assert_ok(&out, "kiln push lazy");
    let remote = format!("docker://{dest}");
    let pushed = inspect(&remote, "--raw");
    assert_eq!(layer_types(&pushed), [GZIP, GZIP, GZIP], "{pushed}");
    // Same config, so the same image ID, in the store and in the registry.
    assert_eq!(stored["config"]["digest"], pushed["config"]["digest"]);
    let config = inspect(&remote, "--config");
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().map(Vec::len),
        Some(3)
    );

    // A second push compresses nothing: no new blob in the store, the same manifest pushed.
    let before = blobs(k.root.path());
    let out = k.run(&["push", "lazy", &dest]);
    assert_ok(&out, "kiln push lazy, again");
    assert_no_layer_blob_written(k.root.path(), &before, "the second push");
    assert_eq!(inspect(&remote, "--raw"), pushed);

    // An OCI archive of the same image reuses the gzip layers the push made.
    let archive = ctx.path().join("lazy.tar");
    let out = k.run(&[
        "build",
        "-o",
        &format!("type=oci,dest={}", archive.display()),
        ctx.path().to_str().unwrap(),
    ]);
    assert_ok(&out, "kiln build -o type=oci");
    assert_no_layer_blob_written(k.root.path(), &before, "the OCI archive");
    let archived = inspect(&format!("oci-archive:{}", archive.display()), "--raw");
    assert_eq!(archived["layers"], pushed["layers"]);

    // `compression=` on a store output keeps that compression in the store.
    let out = k.run(&[
        "build",
        "-o",
        "type=image,name=lazy-zstd,compression=zstd",
        ctx.path().to_str().unwrap(),
    ]);
    assert_ok(&out, "kiln build -o type=image,compression=zstd");
    let zstd = inspect(
        &format!(
            "oci:{}:docker.io/library/lazy-zstd:latest",
            k.root.path().join("images").display()
        ),
        "--raw",
    );
    assert_eq!(layer_types(&zstd), [ZSTD, ZSTD, ZSTD], "{zstd}");
}

#[test]
fn pulled_base_layer_keeps_its_blob() {
    let (addr, _guard) = common::registry();
    let base = format!("{addr}/{}:base", common::unique("lazy-base"));
    let k = Kiln::with_busybox();
    assert_ok(&k.run(&["push", "busybox:latest", &base]), "push the base");

    // A fresh store pulls the base (gzip, as pushed) and builds on it.
    let k2 = Kiln::new();
    let dockerfile = format!("FROM {base}\nRUN echo built > /built\n");
    let ctx = temp_context("kiln-lazy-", &[("Dockerfile", &dockerfile)]);
    let dest = format!("{addr}/{}:v1", common::unique("lazy-pulled"));
    let out = k2.run(&[
        "build",
        "--metadata-file",
        ctx.path().join("meta.json").to_str().unwrap(),
        "-o",
        &format!("type=registry,name={dest},compression=zstd"),
        ctx.path().to_str().unwrap(),
    ]);
    assert_ok(&out, "build on a pulled base with compression=zstd");
    let pushed = inspect(&format!("docker://{dest}"), "--raw");
    // Without force-compression the pulled layer is pushed as it was pulled.
    assert_eq!(layer_types(&pushed), [GZIP, ZSTD], "{pushed}");
    // The build reports the digest of what it pushed.
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ctx.path().join("meta.json")).unwrap()).unwrap();
    let digest = tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &format!("docker://{dest}"),
        ],
    );
    assert_eq!(
        meta["containerimage.digest"].as_str(),
        Some(digest.trim()),
        "{}",
        stdout(&out)
    );
}

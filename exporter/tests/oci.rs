//! Through the store: layer export and reuse, image documents, OCI archives and layouts checked
//! with independent tools (`skopeo`, `umoci`) and the store's own unpacker.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use kiln_cache::{SnapshotId, Store};
use kiln_exporter::{
    export_layer, fill_rootfs, write_image, write_oci_archive, write_oci_dir, Compression,
    ExportError, ImageDescriptor, LayerBlob, LayerOptions,
};
use oci_spec::image::{ImageConfiguration, ImageConfigurationBuilder, ImageManifest};

fn gzip() -> LayerOptions {
    LayerOptions {
        compression: Compression::Gzip,
        source_date_epoch: None,
        level: None,
    }
}

/// A base snapshot and an upper one (the full test tree) that deletes and hides base files.
fn two_layers(store: &Store) -> (SnapshotId, SnapshotId) {
    let base = store.snapshots().create(None).unwrap();
    let b = store.snapshots().fs_dir(base);
    fs::create_dir_all(b.join("keep")).unwrap();
    fs::write(b.join("keep/x"), b"kept").unwrap();
    fs::create_dir_all(b.join("etc")).unwrap();
    fs::write(b.join("etc/removed"), b"to be deleted").unwrap();
    fs::create_dir_all(b.join("var/cache")).unwrap();
    fs::write(b.join("var/cache/old"), b"hidden by the opaque dir").unwrap();
    set_times(&b, T0);
    let upper = store.snapshots().create(Some(base)).unwrap();
    make_tree(&store.snapshots().fs_dir(upper), true);
    (base, upper)
}

fn config(layers: &[LayerBlob]) -> ImageConfiguration {
    let mut cfg = ImageConfigurationBuilder::default()
        .architecture("amd64")
        .os("linux")
        .build()
        .unwrap();
    fill_rootfs(&mut cfg, layers).unwrap();
    cfg
}

/// What the merged root file system of the two layers must look like.
fn expected_rootfs(store: &Store, base: SnapshotId, upper: SnapshotId) -> Vec<String> {
    let mut lines: Vec<String> = describe(&store.snapshots().fs_dir(upper), false)
        .into_iter()
        .filter(|l| !l.starts_with("etc/removed "))
        .collect();
    lines.extend(
        describe(&store.snapshots().fs_dir(base), false)
            .into_iter()
            .filter(|l| l.starts_with("keep")),
    );
    lines.sort();
    lines
}

fn image(store: &Store) -> (SnapshotId, SnapshotId, Vec<LayerBlob>, ImageDescriptor) {
    let (base, upper) = two_layers(store);
    let layers = vec![
        export_layer(store, base, &gzip()).unwrap(),
        export_layer(store, upper, &gzip()).unwrap(),
    ];
    let desc = write_image(store, &config(&layers), &layers).unwrap();
    (base, upper, layers, desc)
}

fn tool(name: &str) -> bool {
    let found = Command::new(name).arg("--version").output().is_ok();
    if !found {
        println!("skipping: `{name}` is not installed (apt-get install -y skopeo umoci)");
    }
    found
}

#[test]
fn export_layer_stores_and_then_reuses_the_blob() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let (_, upper) = two_layers(&store);
    let first = export_layer(&store, upper, &gzip()).unwrap();
    assert!(store.content().has(&first.digest));
    assert!(!first.empty);
    let recorded = store.snapshots().layers(upper).unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].digest, first.digest);
    assert_eq!(recorded[0].diff_id, first.diff_id);

    // Change the snapshot behind the record's back: a reused layer does not see it.
    fs::write(store.snapshots().fs_dir(upper).join("new-file"), b"x").unwrap();
    assert_eq!(export_layer(&store, upper, &gzip()).unwrap(), first);

    // Another media type is a different record.
    let z = LayerOptions {
        compression: Compression::Zstd,
        ..gzip()
    };
    let zb = export_layer(&store, upper, &z).unwrap();
    assert_ne!(zb.digest, first.digest);
    assert_ne!(zb.diff_id, first.diff_id, "the tar now has `new-file`");
    assert_eq!(store.snapshots().layers(upper).unwrap().len(), 2);

    // A recorded blob that disappeared from the store is rebuilt.
    fs::remove_file(store.content().path(&first.digest).unwrap()).unwrap();
    let again = export_layer(&store, upper, &gzip()).unwrap();
    assert!(store.content().has(&again.digest));
    assert_eq!(again.diff_id, zb.diff_id);
}

#[test]
fn empty_snapshot_is_flagged() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let s = store.snapshots().create(None).unwrap();
    let blob = export_layer(&store, s, &gzip()).unwrap();
    assert!(blob.empty);
    // And it stays flagged when reused from the record.
    assert!(export_layer(&store, s, &gzip()).unwrap().empty);
}

#[test]
fn image_documents_reference_the_layers() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let (_, _, layers, desc) = image(&store);
    assert_eq!(
        desc.media_type,
        "application/vnd.oci.image.manifest.v1+json"
    );
    let bytes = store.content().read(&desc.manifest_digest).unwrap();
    assert_eq!(bytes.len() as u64, desc.manifest_size);
    let m: ImageManifest = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(m.config().digest().to_string(), desc.config_digest);
    assert_eq!(
        m.config().media_type().to_string(),
        "application/vnd.oci.image.config.v1+json"
    );
    let digests: Vec<String> = m.layers().iter().map(|l| l.digest().to_string()).collect();
    assert_eq!(
        digests,
        layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>()
    );
    let cfg: ImageConfiguration =
        serde_json::from_slice(&store.content().read(&desc.config_digest).unwrap()).unwrap();
    assert_eq!(cfg.rootfs().diff_ids()[1], layers[1].diff_id);
    // Same inputs, same digests.
    let again = write_image(&store, &config(&layers), &layers).unwrap();
    assert_eq!(again, desc);
    // A config that does not match the layers is refused.
    let err = write_image(&store, &config(&layers[..1]), &layers).unwrap_err();
    assert!(matches!(err, ExportError::LayerCount { .. }), "{err}");
}

#[test]
fn store_unpacker_reproduces_the_layer() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let (_, upper) = two_layers(&store);
    let blob = export_layer(&store, upper, &gzip()).unwrap();
    let f = store.content().open(&blob.digest).unwrap();
    let snap = store
        .snapshots()
        .unpack_layer(None, flate2::read::GzDecoder::new(f))
        .unwrap();
    // A whiteout's own mode and time are not carried by `.wh.` files: compare it by kind.
    let split = |v: Vec<String>| -> (Vec<String>, Vec<String>) {
        v.into_iter().partition(|l| l.contains(" char 0:0 "))
    };
    let (src_wh, src) = split(describe(&store.snapshots().fs_dir(upper), false));
    let (got_wh, got) = split(describe(&store.snapshots().fs_dir(snap), false));
    assert_eq!(got, src);
    assert_eq!(src_wh.len(), 1);
    assert!(src_wh[0].starts_with("etc/removed "), "{src_wh:?}");
    // The upper's opaque `var/cache`, over the base's, is written as BuildKit's differ writes
    // it: a whiteout of the base's `old` it hides, unpacked as one.
    assert_eq!(got_wh.len(), 2, "{got_wh:?}");
    assert!(got_wh[0].starts_with("etc/removed char 0:0 "), "{got_wh:?}");
    assert!(
        got_wh[1].starts_with("var/cache/old char 0:0 "),
        "{got_wh:?}"
    );
}

#[test]
fn archive_is_deterministic_and_accepted_by_skopeo() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let (_, _, layers, desc) = image(&store);
    let out = tempfile::tempdir().unwrap();
    let a = out.path().join("a.tar");
    let b = out.path().join("b.tar");
    write_oci_archive(&store, &desc, &["example.com/test:1"], &a).unwrap();
    write_oci_archive(&store, &desc, &["example.com/test:1"], &b).unwrap();
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());

    // The archive holds exactly the layout.
    let mut names: Vec<String> = tar::Archive::new(fs::File::open(&a).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    // oci-layout, index.json, manifest.json (for `docker load`, as BuildKit's), the two blob
    // directories, the manifest, the config and the layers.
    assert_eq!(names.len(), 5 + 2 + layers.len());
    assert!(names.contains(&"oci-layout".to_string()));
    assert!(names.contains(&"manifest.json".to_string()));
    assert!(names.contains(&format!(
        "blobs/sha256/{}",
        &desc.manifest_digest["sha256:".len()..]
    )));

    if !tool("skopeo") {
        return;
    }
    let o = Command::new("skopeo")
        .args(["inspect", &format!("oci-archive:{}", a.display())])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["Digest"], desc.manifest_digest);
    assert_eq!(v["Layers"][1], layers[1].digest);
    // A copy verifies every blob's digest and size.
    let copy = out.path().join("copy");
    let o = Command::new("skopeo")
        .args([
            "copy",
            &format!("oci-archive:{}:1", a.display()),
            &format!("oci:{}:copied", copy.display()),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn layout_dir_unpacks_with_umoci_and_keeps_other_images() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let (base, upper, layers, desc) = image(&store);
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("layout");
    write_oci_dir(&store, &desc, &["example.com/app:latest"], &layout).unwrap();

    // A second image under another name is added; the same name again replaces.
    let one = write_image(&store, &config(&layers[..1]), &layers[..1]).unwrap();
    write_oci_dir(&store, &one, &["example.com/app:base"], &layout).unwrap();
    write_oci_dir(&store, &desc, &["example.com/app:latest"], &layout).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let refs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(refs, vec!["base", "latest"]);

    // A broken index is reported, not overwritten.
    let broken = out.path().join("broken");
    fs::create_dir_all(&broken).unwrap();
    fs::write(broken.join("index.json"), b"{not json").unwrap();
    let err = write_oci_dir(&store, &desc, &["example.com/x:1"], &broken).unwrap_err();
    assert!(matches!(err, ExportError::BadLayoutIndex { .. }), "{err}");

    if !tool("umoci") {
        return;
    }
    let bundle = out.path().join("bundle");
    let o = Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:latest", layout.display())])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = describe(&bundle.join("rootfs"), false);
    let want = expected_rootfs(&store, base, upper);
    let strip_dir_times = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .map(|l| match l.find(" dir ") {
                Some(_) => l.split(" t=").next().unwrap_or(&l).to_string(),
                None => l,
            })
            .collect()
    };
    assert_eq!(strip_dir_times(got), strip_dir_times(want));
    assert!(!Path::new(&bundle.join("rootfs/var/cache/old")).exists());
}

#[test]
fn missing_blobs_are_reported() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let (_, _, layers, desc) = image(&store);
    fs::remove_file(store.content().path(&layers[0].digest).unwrap()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("x.tar");
    let err = write_oci_archive(&store, &desc, &[], &dest).unwrap_err();
    assert!(matches!(err, ExportError::MissingBlob { .. }), "{err}");
    assert!(err.to_string().contains(&layers[0].digest), "{err}");
    assert!(!dest.exists(), "no partial archive is left");
    let err = write_oci_archive(&store, &desc, &["bad name"], &dest).unwrap_err();
    assert!(matches!(err, ExportError::BadName { .. }), "{err}");
}

/// Issue 17 (exporter side): N per-platform images become one OCI index, each entry naming its
/// platform; the OCI archive holds every platform's blobs and no `manifest.json` (BuildKit
/// writes none for an index), and `skopeo copy --all` reads it whole.
#[test]
fn platform_images_become_one_index_in_an_oci_archive() {
    use kiln_exporter::{image_variant, write_image_index, ManifestFormat, VariantOptions};
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let (_, _, layers, amd64) = image(&store);
    let mut arm = config(&layers);
    arm.set_architecture("arm64".into());
    arm.set_variant(Some("v8".into()));
    let arm64 = write_image(&store, &arm, &layers).unwrap();
    let index =
        write_image_index(&store, &[amd64.clone(), arm64.clone()], ManifestFormat::Oci).unwrap();
    assert_eq!(index.media_type, "application/vnd.oci.image.index.v1+json");
    let doc: serde_json::Value =
        serde_json::from_slice(&store.content().read(&index.manifest_digest).unwrap()).unwrap();
    let platforms: Vec<(String, String)> = doc["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["digest"].as_str().unwrap().to_string(),
                m["platform"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        [
            (
                amd64.manifest_digest.clone(),
                r#"{"architecture":"amd64","os":"linux"}"#.to_string()
            ),
            (
                arm64.manifest_digest.clone(),
                r#"{"architecture":"arm64","os":"linux","variant":"v8"}"#.to_string()
            ),
        ]
    );
    // One image per platform.
    let err = write_image_index(&store, &[amd64.clone(), amd64.clone()], ManifestFormat::Oci)
        .unwrap_err();
    assert!(err.to_string().contains("linux/amd64"), "{err}");

    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("multi.tar");
    write_oci_archive(&store, &index, &["docker.io/library/multi:1"], &archive).unwrap();
    let list = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(!list.contains("manifest.json"), "{list}");
    for d in [
        &index.manifest_digest,
        &amd64.manifest_digest,
        &arm64.manifest_digest,
    ] {
        assert!(
            list.contains(d.trim_start_matches("sha256:")),
            "{d}: {list}"
        );
    }
    if tool("skopeo") {
        let raw = Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}:1", archive.display()))
            .output()
            .unwrap();
        assert!(
            raw.status.success(),
            "{}",
            String::from_utf8_lossy(&raw.stderr)
        );
        let raw: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
        assert_eq!(raw, doc);
        let copy = Command::new("skopeo")
            .args(["copy", "--quiet", "--all"])
            .arg(format!("oci-archive:{}:1", archive.display()))
            .arg(format!("oci:{}:copy", t.path().join("copy").display()))
            .output()
            .unwrap();
        assert!(
            copy.status.success(),
            "{}",
            String::from_utf8_lossy(&copy.stderr)
        );
    }

    // A variant of the index is an index of the platforms' variants.
    let zstd = image_variant(
        &store,
        &index,
        &VariantOptions {
            compression: Compression::Zstd,
            force: true,
            ..VariantOptions::default()
        },
    )
    .unwrap();
    assert_ne!(zstd.manifest_digest, index.manifest_digest);
    let doc: serde_json::Value =
        serde_json::from_slice(&store.content().read(&zstd.manifest_digest).unwrap()).unwrap();
    for m in doc["manifests"].as_array().unwrap() {
        let manifest: ImageManifest =
            serde_json::from_slice(&store.content().read(m["digest"].as_str().unwrap()).unwrap())
                .unwrap();
        for l in manifest.layers() {
            assert_eq!(
                l.media_type().to_string(),
                "application/vnd.oci.image.layer.v1.tar+zstd"
            );
        }
    }
    // A docker archive holds one image.
    let err = kiln_exporter::write_docker_archive(&store, &index, &[], &t.path().join("d.tar"))
        .unwrap_err();
    assert!(err.to_string().contains("type=oci"), "{err}");
}

//! Store-level behaviour: the lock across processes, the content store and the image store
//! (read back by skopeo when it is installed).

mod common;

use std::fs;
use std::io::Write;
use std::process::Command;

use kiln_cache::{CacheError, ImageRecord, Store};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[test]
fn lock_error_names_the_holder_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, CacheError::Locked { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("process {}", std::process::id())),
        "{msg}"
    );
    assert!(msg.contains("try again"), "{msg}");
}

#[test]
fn lock_is_held_against_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // flock(1) from util-linux stands in for a second kiln process.
    let Ok(out) = Command::new("flock")
        .args(["--nonblock", "--exclusive"])
        .arg(store.root().join("lock"))
        .arg("true")
        .output()
    else {
        eprintln!("flock(1) not installed; skipping the cross-process check");
        return;
    };
    assert!(!out.status.success(), "another process got the lock");
    drop(store);
    let out = Command::new("flock")
        .args(["--nonblock", "--exclusive"])
        .arg(dir.path().join("lock"))
        .arg("true")
        .output()
        .unwrap();
    assert!(out.status.success(), "lock not released on drop");
}

#[test]
fn content_store_writes_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let cs = store.content();
    let (digest, size) = cs.put_bytes(b"layer bytes").unwrap();
    assert_eq!(size, 11);
    assert_eq!(
        cs.path(&digest).unwrap(),
        store.root().join("blobs/sha256").join(&digest[7..])
    );
    assert_eq!(fs::read(cs.path(&digest).unwrap()).unwrap(), b"layer bytes");

    let mut w = cs.writer().unwrap();
    w.write_all(b"something else").unwrap();
    let err = w.commit(Some(&digest)).unwrap_err();
    assert!(matches!(err, CacheError::DigestMismatch { .. }), "{err}");
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    assert_eq!(cs.list().unwrap(), vec![digest.clone()]);
    assert_eq!(cs.read(&digest).unwrap(), b"layer bytes");
    let mut f = cs.open(&digest).unwrap();
    let mut s = String::new();
    std::io::Read::read_to_string(&mut f, &mut s).unwrap();
    assert_eq!(s, "layer bytes");
}

/// Stores a minimal but complete image (one layer) and returns its manifest record.
fn put_image(store: &Store, name: &str) -> ImageRecord {
    let cs = store.content();
    let layer = common::tar(&[common::file("hello.txt", b"hello\n")]);
    let (layer_digest, layer_size) = cs.put_bytes(&layer).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        // Each name its own image, so that moving a name leaves one behind.
        "config": {"Cmd": ["/bin/sh"], "Labels": {"kiln.test.name": name}},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = cs.put_bytes(config.to_string().as_bytes()).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (digest, size) = cs.put_bytes(manifest.to_string().as_bytes()).unwrap();
    let record = ImageRecord {
        name: name.to_string(),
        digest,
        size,
        media_type: MANIFEST.to_string(),
        created: Some("2024-01-02T03:04:05Z".into()),
    };
    store.images().put(&record).unwrap();
    record
}

#[test]
fn image_store_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let images = store.images();
    assert!(images.list().unwrap().is_empty());
    let app = put_image(&store, "docker.io/library/app:latest");
    let other = put_image(&store, "docker.io/library/other:1");
    assert_eq!(
        images.get("docker.io/library/app:latest").unwrap(),
        Some(app.clone())
    );
    assert_eq!(images.list().unwrap(), vec![app.clone(), other.clone()]);

    // Same name again replaces.
    let newer = ImageRecord {
        created: None,
        ..other.clone()
    };
    let newer = ImageRecord {
        name: app.name.clone(),
        ..newer
    };
    images.put(&newer).unwrap();
    assert_eq!(images.list().unwrap().len(), 2);
    assert_eq!(images.get(&app.name).unwrap(), Some(newer.clone()));
    // The image the name left has no other name: it stays, dangling, as `docker build` leaves
    // a `<none>` image behind.
    let all = images.list_all().unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].name, "");
    assert_eq!(all[2].digest, app.digest);

    // The index on disk is a plain OCI index with the ref-name annotation.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(images.layout_dir().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3);
    assert!(index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["annotations"]["org.opencontainers.image.ref.name"]
            == "docker.io/library/other:1"
            && d["annotations"]["org.opencontainers.image.created"] == "2024-01-02T03:04:05Z"));

    // Survives reopen.
    let root = store.root().to_path_buf();
    drop(store);
    let store = Store::open(&root).unwrap();
    assert_eq!(store.images().list().unwrap().len(), 2);
    assert!(store.images().remove("docker.io/library/other:1").unwrap());
    assert!(!store.images().remove("docker.io/library/other:1").unwrap());
    assert_eq!(
        store.images().get("docker.io/library/other:1").unwrap(),
        None
    );

    // A manifest that is not stored cannot be named.
    let missing = ImageRecord {
        digest: format!("sha256:{}", "0".repeat(64)),
        ..app
    };
    assert!(matches!(
        store.images().put(&missing),
        Err(CacheError::BadImage { .. })
    ));
    assert!(store
        .images()
        .put(&ImageRecord {
            digest: "sha256:x".into(),
            ..missing
        })
        .is_err());
}

#[test]
fn dangling_images_are_kept_until_named_or_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let images = store.images();
    let app = put_image(&store, "docker.io/library/app:1");
    let dangling = ImageRecord {
        name: String::new(),
        ..app.clone()
    };
    // Already named: no second entry.
    images.put_dangling(&dangling).unwrap();
    assert_eq!(images.list_all().unwrap(), vec![app.clone()]);
    // Its last name removed, the image is gone (as `docker rmi` deletes an image with one tag).
    assert!(images.remove(&app.name).unwrap());
    assert!(images.list_all().unwrap().is_empty());
    images.put_dangling(&dangling).unwrap();
    images.put_dangling(&dangling).unwrap();
    assert_eq!(images.list_all().unwrap(), vec![dangling.clone()]);
    assert!(images.list().unwrap().is_empty());
    // Naming it again replaces the dangling entry.
    images.put(&app).unwrap();
    assert_eq!(images.list_all().unwrap(), vec![app.clone()]);
    images.remove(&app.name).unwrap();
    images.put_dangling(&dangling).unwrap();
    assert!(images.remove_dangling(&app.digest).unwrap());
    assert!(!images.remove_dangling(&app.digest).unwrap());
    assert!(images.list_all().unwrap().is_empty());
    // A retag where another name keeps the image leaves nothing dangling.
    images.put(&app).unwrap();
    images
        .put(&ImageRecord {
            name: "docker.io/library/app:2".into(),
            ..app.clone()
        })
        .unwrap();
    let other = put_image(&store, "docker.io/library/other:1");
    images
        .put(&ImageRecord {
            name: app.name.clone(),
            ..other.clone()
        })
        .unwrap();
    assert!(images
        .list_all()
        .unwrap()
        .iter()
        .all(|r| !r.name.is_empty()));
}

#[test]
fn skopeo_reads_the_layout() {
    if which_skopeo().is_none() {
        eprintln!("skopeo not installed; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rec = put_image(&store, "docker.io/library/app:latest");
    let layout = store.images().layout_dir();
    let out = Command::new("skopeo")
        .arg("inspect")
        .arg(format!(
            "oci:{}:docker.io/library/app:latest",
            layout.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Digest"], rec.digest);
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Layers"].as_array().unwrap().len(), 1);

    // And copies the image out of it, reading every blob through images/blobs.
    let copy = dir.path().join("copy");
    let out = Command::new("skopeo")
        .arg("copy")
        .arg(format!(
            "oci:{}:docker.io/library/app:latest",
            layout.display()
        ))
        .arg(format!("oci:{}:x", copy.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which_skopeo() -> Option<()> {
    Command::new("skopeo")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| ())
}

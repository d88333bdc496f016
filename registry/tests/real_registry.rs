//! Push and pull against a real registry (Debian's `docker-registry` on 127.0.0.1), and interop
//! with skopeo when it is installed.

mod common;

use std::path::Path;
use std::process::Command;

use common::{sha256, Registry, TEST_TIMEOUT};
use kiln_registry::{
    media_type, ClientOptions, Platform, PushedBlob, Reference, RegistryClient, RegistryError,
};

fn client() -> RegistryClient {
    RegistryClient::new(ClientOptions::default()).expect("client")
}

/// A real tar with a 3 MiB file, so the transfer spans many chunks.
fn layer_tar(seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i % 251) as u8 ^ seed)
        .collect();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, "data.bin", data.as_slice())
        .expect("tar append");
    b.into_inner().expect("tar finish")
}

struct Pushed {
    manifest_digest: String,
    manifest: Vec<u8>,
    layer: Vec<u8>,
    layer_digest: String,
    config_digest: String,
}

/// Pushes a one-layer image for `arch` under `reference` with our client.
async fn push_image(c: &RegistryClient, dir: &Path, r: &Reference, arch: &str, seed: u8) -> Pushed {
    let layer = layer_tar(seed);
    let layer_digest = sha256(&layer);
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "config": {"Cmd": ["/bin/sh"]}
    })
    .to_string()
    .into_bytes();
    let config_digest = sha256(&config);
    let lp = dir.join(format!("layer-{seed}"));
    let cp = dir.join(format!("config-{seed}"));
    std::fs::write(&lp, &layer).unwrap();
    std::fs::write(&cp, &config).unwrap();
    assert_eq!(
        c.push_blob(r, &layer_digest, layer.len() as u64, &lp)
            .await
            .unwrap(),
        PushedBlob::Uploaded
    );
    assert_eq!(
        c.push_blob(r, &config_digest, config.len() as u64, &cp)
            .await
            .unwrap(),
        PushedBlob::Uploaded
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {"mediaType": media_type::OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": media_type::OCI_LAYER, "digest": layer_digest, "size": layer.len()}]
    })
    .to_string()
    .into_bytes();
    let manifest_digest = c
        .push_manifest(r, media_type::OCI_MANIFEST, &manifest)
        .await
        .unwrap();
    assert_eq!(manifest_digest, sha256(&manifest));
    Pushed {
        manifest_digest,
        manifest,
        layer,
        layer_digest,
        config_digest,
    }
}

#[tokio::test]
async fn push_then_pull_round_trip() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let reg = Registry::start().await;
        let dir = tempfile::tempdir().unwrap();
        let c = client();
        let r = Reference::parse(&format!("{}/kiln/app:v1", reg.host())).unwrap();
        let p = push_image(&c, dir.path(), &r, "amd64", 1).await;

        // HEAD: present now, absent for another digest; a second push is skipped.
        assert!(c.blob_exists(&r, &p.layer_digest).await.unwrap());
        assert!(!c.blob_exists(&r, &sha256(b"nothing")).await.unwrap());
        let lp = dir.path().join("layer-1");
        assert_eq!(
            c.push_blob(&r, &p.layer_digest, p.layer.len() as u64, &lp)
                .await
                .unwrap(),
            PushedBlob::AlreadyPresent
        );

        let m = c
            .resolve(&r, &Platform::parse("linux/amd64").unwrap())
            .await
            .unwrap();
        assert_eq!(m.digest, p.manifest_digest);
        assert_eq!(m.bytes, p.manifest);
        assert_eq!(m.media_type, media_type::OCI_MANIFEST);
        assert_eq!(m.config.digest, p.config_digest);
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.index, None, "a manifest named directly has no index");
        assert_eq!(m.layers[0].digest, p.layer_digest);
        assert_eq!(m.layers[0].size, p.layer.len() as u64);

        let mut out = Vec::new();
        let n = c.fetch_blob(&r, &p.layer_digest, &mut out).await.unwrap();
        assert_eq!(n, p.layer.len() as u64);
        assert_eq!(out, p.layer);

        // Pinned by digest: verified, and the same manifest.
        let pinned = r.with_digest(&p.manifest_digest);
        let m2 = c.resolve(&pinned, &Platform::host()).await.unwrap();
        assert_eq!(m2.digest, p.manifest_digest);
        let by_digest_only =
            Reference::parse(&format!("{}/kiln/app@{}", reg.host(), p.manifest_digest)).unwrap();
        assert_eq!(
            c.resolve(&by_digest_only, &Platform::host())
                .await
                .unwrap()
                .bytes,
            p.manifest
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn wrong_digests_are_rejected() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let reg = Registry::start().await;
        let dir = tempfile::tempdir().unwrap();
        let c = client();
        let r = Reference::parse(&format!("{}/kiln/bad:v1", reg.host())).unwrap();

        // Content that does not hash to the declared digest: kiln stops the upload before its
        // last bytes, so the registry never completes it.
        let f = dir.path().join("blob");
        std::fs::write(&f, b"hello").unwrap();
        let wrong = sha256(b"something else");
        let e = c.push_blob(&r, &wrong, 5, &f).await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, RegistryError::CorruptLocalBlob { .. }), "{msg}");
        assert!(
            msg.contains(&wrong) && msg.contains(&sha256(b"hello")) && msg.contains("kiln/bad"),
            "{msg}"
        );
        assert!(!c.blob_exists(&r, &wrong).await.unwrap());

        // A declared size that is not the file's.
        let e = c.push_blob(&r, &sha256(b"hello"), 6, &f).await.unwrap_err();
        assert!(matches!(e, RegistryError::FileSizeMismatch { .. }), "{e}");

        // Missing blob and missing tag: 404 naming what and where.
        let mut sink = Vec::new();
        let e = c.fetch_blob(&r, &wrong, &mut sink).await.unwrap_err();
        assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
        assert!(
            e.to_string().contains(&wrong) && e.to_string().contains("404"),
            "{e}"
        );
        let e = c.resolve(&r, &Platform::host()).await.unwrap_err();
        assert!(
            e.to_string().contains(&format!("`{r}`")) && e.to_string().contains("404"),
            "{e}"
        );

        // A manifest pinned to a digest that is not its own is refused before upload.
        let p = push_image(&c, dir.path(), &r, "amd64", 2).await;
        let e = c
            .push_manifest(
                &r.with_digest(&sha256(b"x")),
                media_type::OCI_MANIFEST,
                &p.manifest,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn index_selects_platform_and_lists_choices() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let reg = Registry::start().await;
        let dir = tempfile::tempdir().unwrap();
        let c = client();
        let amd = Reference::parse(&format!("{}/kiln/multi:amd64", reg.host())).unwrap();
        let arm = Reference::parse(&format!("{}/kiln/multi:arm64", reg.host())).unwrap();
        let pa = push_image(&c, dir.path(), &amd, "amd64", 3).await;
        let pb = push_image(&c, dir.path(), &arm, "arm64", 4).await;
        for (tag, index_type, entry_type) in [
            ("oci", media_type::OCI_INDEX, media_type::OCI_MANIFEST),
            ("docker", media_type::DOCKER_MANIFEST_LIST, media_type::OCI_MANIFEST),
        ] {
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": index_type,
                "manifests": [
                    {"mediaType": entry_type, "digest": pa.manifest_digest, "size": pa.manifest.len(),
                     "platform": {"os": "linux", "architecture": "amd64"}},
                    {"mediaType": entry_type, "digest": pb.manifest_digest, "size": pb.manifest.len(),
                     "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}
                ]
            })
            .to_string()
            .into_bytes();
            let r = Reference::parse(&format!("{}/kiln/multi:{tag}", reg.host())).unwrap();
            let index_digest = c.push_manifest(&r, index_type, &index).await.unwrap();

            let m = c.resolve(&r, &Platform::parse("linux/arm64").unwrap()).await.unwrap();
            assert_eq!(m.digest, pb.manifest_digest, "{tag}");
            assert_eq!(m.layers[0].digest, pb.layer_digest);
            // The index it was picked from comes along, as sent, for the store to keep.
            let picked_from = m.index.expect("the index of a tag that names one");
            assert_eq!((picked_from.digest, picked_from.bytes), (index_digest.clone(), index.clone()));
            assert_eq!(picked_from.media_type, index_type);
            let m = c.resolve(&r, &Platform::parse("linux/amd64").unwrap()).await.unwrap();
            assert_eq!(m.digest, pa.manifest_digest, "{tag}");
            // Pinning the index digest still selects (and verifies) the platform manifest.
            let m = c.resolve(&r.with_digest(&index_digest), &Platform::parse("linux/arm64/v8").unwrap()).await.unwrap();
            assert_eq!(m.digest, pb.manifest_digest);

            let e = c.resolve(&r, &Platform::parse("linux/s390x").unwrap()).await.unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, RegistryError::NoMatchingPlatform { .. }), "{msg}");
            assert!(msg.contains("linux/amd64, linux/arm64/v8") && msg.contains("linux/s390x"), "{msg}");
        }
    })
    .await
    .expect("test timed out");
}

fn skopeo() -> Option<std::path::PathBuf> {
    let found = which::which("skopeo").ok();
    if found.is_none() {
        eprintln!("skopeo is not installed: interop check skipped (apt-get install -y skopeo)");
    }
    found
}

#[tokio::test]
async fn skopeo_reads_our_push_and_we_read_its_copy() {
    let Some(skopeo) = skopeo() else { return };
    tokio::time::timeout(TEST_TIMEOUT, async {
        let reg = Registry::start().await;
        let dir = tempfile::tempdir().unwrap();
        let c = client();
        let r = Reference::parse(&format!("{}/kiln/interop:v1", reg.host())).unwrap();
        let p = push_image(&c, dir.path(), &r, "amd64", 5).await;

        let skopeo2 = skopeo.clone();
        let host = reg.host();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(&skopeo2)
                .args([
                    "inspect",
                    "--tls-verify=false",
                    &format!("docker://{host}/kiln/interop:v1"),
                ])
                .output()
        })
        .await
        .unwrap()
        .expect("run skopeo inspect");
        assert!(
            out.status.success(),
            "skopeo inspect: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Digest"], p.manifest_digest.as_str());
        assert_eq!(v["Architecture"], "amd64");
        assert_eq!(v["Layers"][0], p.layer_digest.as_str());

        // skopeo pulls every blob we pushed and pushes them again; we resolve its result.
        let host = reg.host();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(&skopeo)
                .args([
                    "copy",
                    "--src-tls-verify=false",
                    "--dest-tls-verify=false",
                    &format!("docker://{host}/kiln/interop:v1"),
                    &format!("docker://{host}/kiln/copied:v2"),
                ])
                .output()
        })
        .await
        .unwrap()
        .expect("run skopeo copy");
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let copied = Reference::parse(&format!("{}/kiln/copied:v2", reg.host())).unwrap();
        let m = c
            .resolve(&copied, &Platform::parse("linux/amd64").unwrap())
            .await
            .unwrap();
        // skopeo compresses an uncompressed layer on the way, so compare through the config.
        assert_eq!(m.layers.len(), 1);
        let mut layer = Vec::new();
        let n = c
            .fetch_blob(&copied, &m.layers[0].digest, &mut layer)
            .await
            .unwrap();
        assert_eq!(n, m.layers[0].size);
        let mut config = Vec::new();
        c.fetch_blob(&copied, &m.config.digest, &mut config)
            .await
            .unwrap();
        let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], p.layer_digest.as_str());
    })
    .await
    .expect("test timed out");
}

//! Fault rules against the real registry behind a fault-injecting proxy: retries with backoff
//! honouring `Retry-After`, a cut download resumed with a Range request, a corrupted blob
//! rejected, an interrupted push that leaves the tag alone and finishes next time without
//! uploading its finished blobs again; chunked uploads and cross-repository mounts.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy};
use common::{sha256, Registry, TEST_TIMEOUT};
use kiln_registry::{
    media_type, ClientOptions, Platform, PushOptions, PushedBlob, Reference, RegistryClient,
    RegistryError,
};

fn client() -> RegistryClient {
    RegistryClient::new(ClientOptions::default()).unwrap()
}

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8 ^ seed).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Pushes an image of the given layers (config last but one, manifest last); its digest.
async fn push_image(
    c: &RegistryClient,
    dir: &Path,
    r: &Reference,
    layers: &[Vec<u8>],
) -> Result<String, RegistryError> {
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256(l)).collect::<Vec<_>>()}})
    .to_string()
    .into_bytes();
    let mut descs = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let p = write(dir, &format!("layer{i}"), l);
        c.push_blob(r, &sha256(l), l.len() as u64, &p).await?;
        descs.push(serde_json::json!({"mediaType": media_type::OCI_LAYER, "digest": sha256(l), "size": l.len()}));
    }
    let p = write(dir, "config", &config);
    c.push_blob(r, &sha256(&config), config.len() as u64, &p)
        .await?;
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
        "config": {"mediaType": media_type::OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": descs})
    .to_string();
    c.push_manifest(r, media_type::OCI_MANIFEST, manifest.as_bytes())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_retries_5xx_and_429_and_resumes_a_cut_body() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let reg = Registry::start().await;
        let proxy = Proxy::start(reg.port).await;
        let dir = tempfile::tempdir().unwrap();
        let layer = blob(3 << 20, 7);
        let d = sha256(&layer);
        let direct = Reference::parse(&format!("{}/f/pull:v1", reg.host())).unwrap();
        push_image(&client(), dir.path(), &direct, std::slice::from_ref(&layer))
            .await
            .unwrap();

        let via = Reference::parse(&format!("127.0.0.1:{}/f/pull:v1", proxy.port)).unwrap();
        proxy.add("GET", &d, Fault::Status(500, None), 1);
        proxy.add("GET", &d, Fault::Status(429, Some(1)), 1);
        proxy.add("GET", &d, Fault::CutResponseAfter(1 << 20), 1);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let progress: kiln_registry::Progress =
            std::sync::Arc::new(move |n| s2.lock().unwrap().push(n));
        let started = Instant::now();
        let mut out = Vec::new();
        let n = client()
            .fetch_blob_with(&via, &d, Some(layer.len() as u64), &mut out, Some(progress))
            .await
            .unwrap();
        assert_eq!(n, layer.len() as u64);
        assert!(out == layer, "resumed bytes differ from the blob");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "Retry-After was not honoured"
        );
        let gets: Vec<_> = proxy
            .seen()
            .into_iter()
            .filter(|s| s.path.contains(&d))
            .collect();
        assert_eq!(gets.len(), 4, "{gets:?}");
        let range = gets[3]
            .range
            .clone()
            .expect("the last request resumes with Range");
        let from: u64 = range
            .trim_start_matches("bytes=")
            .trim_end_matches('-')
            .parse()
            .unwrap();
        assert!(from > 0 && from <= 1 << 20, "{range}");
        assert_eq!(seen.lock().unwrap().last(), Some(&(layer.len() as u64)));

        // Resolve through faults too: the manifest GET fails twice, then answers.
        proxy.add("GET", "/manifests/", Fault::Status(503, None), 2);
        let m = client()
            .resolve(&via, &Platform::parse("linux/amd64").unwrap())
            .await
            .unwrap();
        assert_eq!(m.layers[0].digest, d);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_rejected() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let reg = Registry::start().await;
        let proxy = Proxy::start(reg.port).await;
        let dir = tempfile::tempdir().unwrap();
        let layer = blob(1 << 20, 3);
        let d = sha256(&layer);
        let direct = Reference::parse(&format!("{}/f/corrupt:v1", reg.host())).unwrap();
        push_image(&client(), dir.path(), &direct, std::slice::from_ref(&layer))
            .await
            .unwrap();
        let via = Reference::parse(&format!("127.0.0.1:{}/f/corrupt:v1", proxy.port)).unwrap();
        proxy.add("GET", &d, Fault::Corrupt(4321), 1);
        let e = client()
            .fetch_blob_with(&via, &d, Some(layer.len() as u64), &mut Vec::new(), None)
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
        assert!(e.to_string().contains(&d), "{e}");
        let mut out = Vec::new();
        client().fetch_blob(&via, &d, &mut out).await.unwrap();
        assert!(out == layer);
        // A blob longer than its manifest says is cut off, not stored.
        let e = client()
            .fetch_blob_with(&via, &d, Some(1000), &mut Vec::new(), None)
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::SizeMismatch { .. }), "{e}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_push_keeps_the_tag_and_skips_finished_blobs_next_time() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let reg = Registry::start().await;
        let proxy = Proxy::start(reg.port).await;
        let dir = tempfile::tempdir().unwrap();
        let via = Reference::parse(&format!("127.0.0.1:{}/f/push:latest", proxy.port)).unwrap();
        let c = client();
        let old = push_image(&c, dir.path(), &via, &[blob(1000, 1)])
            .await
            .unwrap();

        let (a, b) = (blob(2 << 20, 2), blob(2 << 20, 3));
        let a_hex = sha256(&a).trim_start_matches("sha256:").to_string();
        let pa = write(dir.path(), "a-first", &a);
        assert_eq!(
            c.push_blob(&via, &sha256(&a), a.len() as u64, &pa)
                .await
                .unwrap(),
            PushedBlob::Uploaded
        );
        // Every upload of B is cut half-way: the push fails after its retries...
        proxy.add("PUT", "/blobs/uploads/", Fault::CutRequestAfter(1 << 20), 4);
        let e = push_image(&c, dir.path(), &via, &[a.clone(), b.clone()])
            .await
            .unwrap_err();
        assert!(
            matches!(e, RegistryError::Connection { attempts: 4, .. }),
            "{e}"
        );
        // ...and the tag still names the old image.
        let m = c
            .resolve(&via, &Platform::parse("linux/amd64").unwrap())
            .await
            .unwrap();
        assert_eq!(m.digest, old, "an interrupted push moved the tag");

        // The next attempt finishes, without uploading A again; the manifest goes last.
        let new = push_image(&c, dir.path(), &via, &[a.clone(), b.clone()])
            .await
            .unwrap();
        let seen = proxy.seen();
        let a_puts = seen
            .iter()
            .filter(|s| s.method == "PUT" && s.path.contains(&a_hex))
            .count();
        assert_eq!(a_puts, 1, "the finished blob A was uploaded again");
        let last = seen.last().unwrap();
        assert!(
            last.method == "PUT" && last.path.contains("/manifests/"),
            "{last:?}"
        );
        let m = c
            .resolve(&via, &Platform::parse("linux/amd64").unwrap())
            .await
            .unwrap();
        assert_eq!((m.digest, m.layers.len()), (new, 2));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_push_leaves_the_tag_untouched() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let reg = Registry::start().await;
        let proxy = Proxy::start(reg.port).await;
        let dir = tempfile::tempdir().unwrap();
        let via = Reference::parse(&format!("127.0.0.1:{}/f/tag:latest", proxy.port)).unwrap();
        let c = client();
        let old = push_image(&c, dir.path(), &via, &[blob(1000, 1)])
            .await
            .unwrap();
        proxy.add(
            "PUT",
            "/blobs/uploads/",
            Fault::CutRequestAfter(512 << 10),
            100,
        );
        let e = push_image(&c, dir.path(), &via, &[blob(1 << 20, 9)])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("attempt"), "{e}");
        proxy.clear();
        let m = c
            .resolve(&via, &Platform::parse("linux/amd64").unwrap())
            .await
            .unwrap();
        assert_eq!(m.digest, old, "a failed push moved the tag");
        let new = push_image(&c, dir.path(), &via, &[blob(1 << 20, 9)])
            .await
            .unwrap();
        let m = c
            .resolve(&via, &Platform::parse("linux/amd64").unwrap())
            .await
            .unwrap();
        assert_eq!(m.digest, new);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_restarts_a_cut_chunk_and_mounts_across_repositories() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let reg = Registry::start().await;
        let proxy = Proxy::start(reg.port).await;
        let dir = tempfile::tempdir().unwrap();
        let c = RegistryClient::new(ClientOptions {
            upload_chunk_size: 1 << 20,
            ..ClientOptions::default()
        })
        .unwrap();
        let layer = blob((3 << 20) + 12345, 5);
        let d = sha256(&layer);
        let p = write(dir.path(), "big", &layer);
        let a = Reference::parse(&format!("127.0.0.1:{}/team/a:v1", proxy.port)).unwrap();
        let patches_before = proxy.seen().len();
        let seen_bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let s2 = seen_bytes.clone();
        let opts = PushOptions {
            mount_from: None,
            progress: Some(std::sync::Arc::new(move |n| {
                s2.store(n, std::sync::atomic::Ordering::Relaxed)
            })),
        };
        assert_eq!(
            c.push_blob_with(&a, &d, layer.len() as u64, &p, &opts)
                .await
                .unwrap(),
            PushedBlob::Uploaded
        );
        assert_eq!(
            seen_bytes.load(std::sync::atomic::Ordering::Relaxed),
            layer.len() as u64
        );
        let patches = proxy.seen()[patches_before..]
            .iter()
            .filter(|s| s.method == "PATCH")
            .count();
        assert_eq!(patches, 4, "3 MiB + 12345 bytes in 1 MiB chunks");
        let mut out = Vec::new();
        c.fetch_blob(&a, &d, &mut out).await.unwrap();
        assert!(out == layer);

        // A chunk cut half-way: that blob's upload starts again and completes.
        proxy.add(
            "PATCH",
            "/blobs/uploads/",
            Fault::CutRequestAfter(100 << 10),
            1,
        );
        let other = blob(2 << 20, 6);
        let po = write(dir.path(), "other", &other);
        assert_eq!(
            c.push_blob(&a, &sha256(&other), other.len() as u64, &po)
                .await
                .unwrap(),
            PushedBlob::Uploaded
        );
        let mut out = Vec::new();
        c.fetch_blob(&a, &sha256(&other), &mut out).await.unwrap();
        assert!(out == other);

        // Into another repository of the same registry: mounted, no upload.
        let b = Reference::parse(&format!("127.0.0.1:{}/team/b:v1", proxy.port)).unwrap();
        let before = proxy.seen().len();
        let mount = PushOptions {
            mount_from: Some("team/a".into()),
            progress: None,
        };
        assert_eq!(
            c.push_blob_with(&b, &d, layer.len() as u64, &p, &mount)
                .await
                .unwrap(),
            PushedBlob::Mounted
        );
        let after = proxy.seen()[before..].to_vec();
        assert!(
            after.iter().any(|s| s.method == "POST"
                && s.path.contains("mount=")
                && s.path.contains("from=team%2Fa")),
            "{after:?}"
        );
        assert!(
            !after
                .iter()
                .any(|s| s.method == "PATCH" || s.method == "PUT"),
            "{after:?}"
        );
        assert!(c.blob_exists(&b, &d).await.unwrap());
        // A source that does not have it: the registry starts a normal upload instead.
        let fresh = blob(5000, 11);
        let pf = write(dir.path(), "fresh", &fresh);
        let wrong = PushOptions {
            mount_from: Some("team/nothing-here".into()),
            progress: None,
        };
        assert_eq!(
            c.push_blob_with(&b, &sha256(&fresh), 5000, &pf, &wrong)
                .await
                .unwrap(),
            PushedBlob::Uploaded
        );
    })
    .await
    .expect("test timed out");
}

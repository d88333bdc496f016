//! Protocol paths a well-behaved registry never takes, against a scripted loopback server:
//! Bearer token challenges, retries on 5xx, wrong bytes, broken connections.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{sha256, FakeServer, Resp, TEST_TIMEOUT};
use kiln_registry::{
    media_type, ClientOptions, Platform, Reference, RegistryClient, RegistryError,
};

fn client() -> RegistryClient {
    RegistryClient::new(ClientOptions::default()).expect("client")
}

#[tokio::test]
async fn bearer_challenge_is_answered_and_token_reused() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let body = b"layer bytes".to_vec();
        let digest = sha256(&body);
        let port = Arc::new(AtomicUsize::new(0));
        let p2 = port.clone();
        let served = body.clone();
        let srv = FakeServer::start(move |req| {
            let realm = format!("http://127.0.0.1:{}/token", p2.load(Ordering::SeqCst));
            if req.path.starts_with("/token") {
                assert!(
                    req.path.contains("scope=repository%3Aorg%2Fapp%3Apull"),
                    "{}",
                    req.path
                );
                assert!(req.path.contains("service=fake"), "{}", req.path);
                return Resp::new(200, r#"{"token":"t0k"}"#);
            }
            if req.headers.get("authorization").map(String::as_str) == Some("Bearer t0k") {
                return Resp::new(200, served.clone());
            }
            Resp::new(
                401,
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            )
            .header(
                "WWW-Authenticate",
                &format!(
                    r#"Bearer realm="{realm}",service="fake",scope="repository:org/app:pull""#
                ),
            )
        })
        .await;
        port.store(srv.port as usize, Ordering::SeqCst);

        let c = client();
        let r = Reference::parse(&format!("127.0.0.1:{}/org/app:v1", srv.port)).unwrap();
        for _ in 0..2 {
            let mut out = Vec::new();
            assert_eq!(
                c.fetch_blob(&r, &digest, &mut out).await.unwrap(),
                body.len() as u64
            );
            assert_eq!(out, body);
        }
        // A clone shares the token cache too.
        assert!(c.clone().blob_exists(&r, &digest).await.unwrap());
        let reqs = srv.requests();
        let tokens = reqs.iter().filter(|q| q.path.starts_with("/token")).count();
        let unauthenticated = reqs
            .iter()
            .filter(|q| !q.headers.contains_key("authorization"))
            .count();
        assert_eq!(tokens, 1, "{reqs:?}");
        // Only the very first request goes without a token (the token request itself is anonymous).
        assert_eq!(unauthenticated, 2, "{reqs:?}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn denied_access_says_how_to_log_in() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let srv = FakeServer::start(|req| {
            if req.path.starts_with("/token") {
                return Resp::new(200, r#"{"access_token":"anon"}"#);
            }
            Resp::new(401, r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#)
                .header("WWW-Authenticate", r#"Bearer realm="http://127.0.0.1:1/unused""#)
        })
        .await;
        // The realm points at a closed port: the token fetch fails and says so.
        let c = client();
        let r = Reference::parse(&format!("127.0.0.1:{}/private/app", srv.port)).unwrap();
        let e = c.resolve(&r, &Platform::host()).await.unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:1") && e.contains(&format!("`{r}`")), "{e}");

        let port = srv.port;
        let srv2 = FakeServer::start(move |req| {
            if req.path.starts_with("/token") {
                return Resp::new(200, r#"{"access_token":"anon"}"#);
            }
            Resp::new(401, r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#)
                .header("WWW-Authenticate", &format!(r#"Bearer realm="http://127.0.0.1:{port}/token""#))
        })
        .await;
        let r = Reference::parse(&format!("127.0.0.1:{}/private/app", srv2.port)).unwrap();
        let e = c.resolve(&r, &Platform::host()).await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, RegistryError::Unauthorized { status: 401, .. }), "{msg}");
        assert!(msg.contains("DENIED") && msg.contains("docker login 127.0.0.1:"), "{msg}");
        assert!(!msg.contains("anon"), "token leaked: {msg}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn server_errors_are_retried_four_times() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let body = b"eventually".to_vec();
        let digest = sha256(&body);
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let served = body.clone();
        let flaky = FakeServer::start(move |_| {
            if n2.fetch_add(1, Ordering::SeqCst) < 2 {
                Resp::new(503, "busy")
            } else {
                Resp::new(200, served.clone())
            }
        })
        .await;
        let c = client();
        let r = Reference::parse(&format!("127.0.0.1:{}/a/b", flaky.port)).unwrap();
        let mut out = Vec::new();
        c.fetch_blob(&r, &digest, &mut out).await.unwrap();
        assert_eq!(out, body);
        assert_eq!(flaky.requests().len(), 3);

        let down = FakeServer::start(|_| Resp::new(500, "internal")).await;
        let r = Reference::parse(&format!("127.0.0.1:{}/a/b", down.port)).unwrap();
        let e = c.blob_exists(&r, &digest).await.unwrap_err();
        assert!(matches!(e, RegistryError::Http { status: 500, .. }), "{e}");
        assert!(e.to_string().contains("tried 4 times"), "{e}");
        assert_eq!(down.requests().len(), 4);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn wrong_bytes_from_the_registry_are_rejected() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::DOCKER_MANIFEST,
            "config": {"mediaType": media_type::DOCKER_CONFIG, "digest": sha256(&config), "size": config.len()},
            "layers": []
        })
        .to_string();
        let m2 = manifest.clone();
        let srv = FakeServer::start(move |req| {
            if req.path.contains("/manifests/") {
                Resp::new(200, m2.clone()).header("Content-Type", media_type::DOCKER_MANIFEST)
            } else {
                Resp::new(200, "tampered")
            }
        })
        .await;
        let c = client();
        let r = Reference::parse(&format!("127.0.0.1:{}/x/y:t", srv.port)).unwrap();

        // A tag resolves, digest computed from what arrived; Docker schema 2 is accepted.
        let m = c.resolve(&r, &Platform::host()).await.unwrap();
        assert_eq!(m.digest, sha256(manifest.as_bytes()));
        assert_eq!(m.media_type, media_type::DOCKER_MANIFEST);
        assert!(m.layers.is_empty());

        // Pinned to another digest: refused.
        let other = sha256(b"other manifest");
        let e = c.resolve(&r.with_digest(&other), &Platform::host()).await.unwrap_err();
        assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
        assert!(e.to_string().contains(&other), "{e}");

        // A blob whose bytes do not hash to what was asked for.
        let mut out = Vec::new();
        let e = c.fetch_blob(&r, &sha256(&config), &mut out).await.unwrap_err();
        assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn unreachable_registry_is_a_clear_error() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // Bind then drop: nothing listens there any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = client();
        let r = Reference::parse(&format!("127.0.0.1:{port}/a:b")).unwrap();
        let e = c.resolve(&r, &Platform::host()).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, RegistryError::Connection { attempts: 4, .. }),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("is running"),
            "{msg}"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn schema1_and_garbage_manifests_are_refused() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let srv = FakeServer::start(|req| {
            if req.path.ends_with("/old") {
                Resp::new(
                    200,
                    r#"{"schemaVersion":1,"name":"x","tag":"old","fsLayers":[]}"#,
                )
                .header(
                    "Content-Type",
                    "application/vnd.docker.distribution.manifest.v1+prettyjws",
                )
            } else {
                Resp::new(200, "<html>captive portal</html>").header("Content-Type", "text/html")
            }
        })
        .await;
        let c = client();
        let old = Reference::parse(&format!("127.0.0.1:{}/x:old", srv.port)).unwrap();
        let e = c.resolve(&old, &Platform::host()).await.unwrap_err();
        assert!(
            matches!(e, RegistryError::UnsupportedMediaType { .. }),
            "{e}"
        );
        let junk = Reference::parse(&format!("127.0.0.1:{}/x:junk", srv.port)).unwrap();
        let e = c.resolve(&junk, &Platform::host()).await.unwrap_err();
        assert!(matches!(e, RegistryError::InvalidManifest { .. }), "{e}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn rate_limit_is_retried_after_the_announced_delay() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let srv = FakeServer::start(move |_| {
            if n2.fetch_add(1, Ordering::SeqCst) == 0 {
                Resp::new(
                    429,
                    r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
                )
                .header("Retry-After", "1")
            } else {
                Resp::new(404, "")
            }
        })
        .await;
        let c = client();
        let r = Reference::parse(&format!("127.0.0.1:{}/a/b", srv.port)).unwrap();
        let started = std::time::Instant::now();
        assert!(!c.blob_exists(&r, &sha256(b"x")).await.unwrap());
        assert!(started.elapsed() >= std::time::Duration::from_millis(900));
        assert_eq!(srv.requests().len(), 2);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // Two seconds ahead, in IMF-fixdate: the wait is between one and two seconds.
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 2;
        let out = std::process::Command::new("date")
            .args(["-u", "-d", &format!("@{at}"), "+%a, %d %b %Y %H:%M:%S GMT"])
            .env("LC_ALL", "C")
            .output()
            .expect("run date");
        let date = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let srv = FakeServer::start(move |_| {
            if n2.fetch_add(1, Ordering::SeqCst) == 0 {
                Resp::new(503, "").header("Retry-After", &date)
            } else {
                Resp::new(404, "")
            }
        })
        .await;
        let c = client();
        let r = Reference::parse(&format!("127.0.0.1:{}/a/b", srv.port)).unwrap();
        let started = std::time::Instant::now();
        assert!(!c.blob_exists(&r, &sha256(b"x")).await.unwrap());
        // The first backoff without the header would be 0.4 s.
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(950),
            "{waited:?}"
        );
        assert_eq!(srv.requests().len(), 2);
    })
    .await
    .expect("test timed out");
}

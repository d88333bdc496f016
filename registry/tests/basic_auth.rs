//! Credentials from a Docker config file: Basic auth and token requests carry them, errors don't.
//! Its own test binary, because it sets `DOCKER_CONFIG` for the whole process.

mod common;

use common::{sha256, FakeServer, Resp, TEST_TIMEOUT};
use kiln_registry::{ClientOptions, Platform, Reference, RegistryClient};

// base64("kiln:s3cret-pw")
const AUTH: &str = "a2lsbjpzM2NyZXQtcHc=";

#[tokio::test]
async fn docker_config_credentials_are_used_and_never_shown() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let body = b"private layer".to_vec();
        let digest = sha256(&body);
        let served = body.clone();
        let basic = FakeServer::start(move |req| match req.headers.get("authorization") {
            Some(a) if a == &format!("Basic {AUTH}") => {
                if req.path.contains("/manifests/") {
                    Resp::new(403, r#"{"errors":[{"code":"DENIED","message":"no"}]}"#)
                } else {
                    Resp::new(200, served.clone())
                }
            }
            _ => Resp::new(401, "").header("WWW-Authenticate", r#"Basic realm="fake""#),
        })
        .await;
        let tokens = FakeServer::start(|req| {
                if req.path.starts_with("/token") {
                    if req.headers.get("authorization").map(String::as_str) == Some(&format!("Basic {AUTH}")) {
                        return Resp::new(200, r#"{"token":"granted"}"#);
                    }
                    return Resp::new(401, "bad credentials");
                }
                Resp::new(404, "")
            })
            .await;
        let token_port = tokens.port;
        let bearer = FakeServer::start(move |req| {
            if req.headers.get("authorization").map(String::as_str) == Some("Bearer granted") {
                return Resp::new(200, b"private layer".to_vec());
            }
            Resp::new(401, "").header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="http://127.0.0.1:{token_port}/token",service="s""#),
            )
        })
        .await;

        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"{{"auths": {{"127.0.0.1:{}": {{"auth": "{AUTH}"}}, "http://127.0.0.1:{}/": {{"auth": "{AUTH}"}}}}}}"#,
            basic.port, bearer.port
        );
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        std::env::set_var("DOCKER_CONFIG", dir.path());
        let c = RegistryClient::new(ClientOptions::default()).unwrap();
        std::env::remove_var("DOCKER_CONFIG");
        assert!(!format!("{c:?}").contains("s3cret"));

        let r = Reference::parse(&format!("127.0.0.1:{}/me/app", basic.port)).unwrap();
        let mut out = Vec::new();
        c.fetch_blob(&r, &digest, &mut out).await.unwrap();
        assert_eq!(out, body);
        let e = c.resolve(&r, &Platform::host()).await.unwrap_err().to_string();
        assert!(e.contains("403") && e.contains("DENIED"), "{e}");
        assert!(!e.contains("s3cret") && !e.contains(AUTH), "credentials leaked: {e}");

        let r = Reference::parse(&format!("127.0.0.1:{}/me/app", bearer.port)).unwrap();
        let mut out = Vec::new();
        c.fetch_blob(&r, &digest, &mut out).await.unwrap();
        assert_eq!(out, body);

        // Without credentials the token service refuses, and the error says so without secrets.
        let anon = RegistryClient::new(ClientOptions::default()).unwrap();
        let e = anon.fetch_blob(&r, &digest, &mut Vec::new()).await.unwrap_err().to_string();
        assert!(e.contains("refused anonymous access") && e.contains("kiln login"), "{e}");
    })
    .await
    .expect("test timed out");
}

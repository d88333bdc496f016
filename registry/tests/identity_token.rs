//! Identity tokens (OAuth2 refresh tokens, as Docker Hub and Azure hand out): a credential
//! helper answering the user name `<token>`, or `identitytoken` in the config's `auths`, makes
//! the client POST the token to the token service as `refresh_token` instead of sending Basic
//! credentials; the token appears in no error. Its own binary: it sets `DOCKER_CONFIG`.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{FakeServer, Resp, TEST_TIMEOUT};
use kiln_registry::{ClientOptions, Platform, Reference, RegistryClient};

const IDENTITY: &str = "identity-r3fresh-secret";
const ACCESS: &str = "access-t0ken";

/// A registry and token service in one: manifests need `Bearer ACCESS`, which the token
/// endpoint grants only for a refresh-token POST carrying [`IDENTITY`].
async fn server() -> FakeServer {
    let port = Arc::new(AtomicUsize::new(0));
    let p2 = port.clone();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", "a".repeat(64)), "size": 2},
        "layers": []
    })
    .to_string();
    let srv = FakeServer::start(move |req| {
        if req.path.starts_with("/token") {
            let form: std::collections::HashMap<String, String> =
                url::form_urlencoded::parse(&req.body)
                    .into_owned()
                    .collect();
            let ok = req.method == "POST"
                && !req.headers.contains_key("authorization")
                && form.get("grant_type").map(String::as_str) == Some("refresh_token")
                && form.get("refresh_token").map(String::as_str) == Some(IDENTITY)
                && form.get("service").map(String::as_str) == Some("fake")
                && form.get("scope").map(String::as_str) == Some("repository:org/app:pull");
            return if ok {
                Resp::new(200, format!(r#"{{"access_token":"{ACCESS}"}}"#))
            } else {
                Resp::new(401, r#"{"details":"invalid refresh token"}"#)
            };
        }
        if req.headers.get("authorization") == Some(&format!("Bearer {ACCESS}")) {
            return Resp::new(200, manifest.clone())
                .header("Content-Type", "application/vnd.oci.image.manifest.v1+json");
        }
        let realm = format!("http://127.0.0.1:{}/token", p2.load(Ordering::SeqCst));
        Resp::new(401, "").header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="{realm}",service="fake",scope="repository:org/app:pull""#),
        )
    })
    .await;
    port.store(srv.port as usize, Ordering::SeqCst);
    srv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_tokens_are_sent_as_refresh_tokens() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let home = tempfile::tempdir().unwrap();
        let config = home.path().join("config.json");
        std::env::set_var("DOCKER_CONFIG", home.path());
        let srv = server().await;
        let host = format!("127.0.0.1:{}", srv.port);
        let r = Reference::parse(&format!("{host}/org/app:v1")).unwrap();
        let resolve = || async {
            RegistryClient::new(ClientOptions::default())
                .unwrap()
                .resolve(&r, &Platform::host())
                .await
        };

        // From a credential helper that answers `<token>`.
        let helper = home.path().join("docker-credential-kilnid");
        std::fs::write(
            &helper,
            format!(
                "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\necho '{{\"ServerURL\":\"'$server'\",\"Username\":\"<token>\",\"Secret\":\"{IDENTITY}\"}}'\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::var("PATH").unwrap_or_default();
        std::env::set_var("PATH", format!("{}:{path}", home.path().display()));
        std::fs::write(
            &config,
            format!(r#"{{"credHelpers": {{"{host}": "kilnid"}}}}"#),
        )
        .unwrap();
        let got = resolve().await.expect("resolve with a helper's identity token");
        assert_eq!(got.layers.len(), 0);

        // From `identitytoken` in `auths`.
        std::fs::write(
            &config,
            format!(r#"{{"auths": {{"{host}": {{"identitytoken": "{IDENTITY}"}}}}}}"#),
        )
        .unwrap();
        resolve().await.expect("resolve with the config's identity token");

        // A token the service refuses: the error says so and does not show it.
        let wrong = "wrong-identity-secret";
        std::fs::write(
            &config,
            format!(r#"{{"auths": {{"{host}": {{"identitytoken": "{wrong}"}}}}}}"#),
        )
        .unwrap();
        let e = resolve().await.unwrap_err().to_string();
        assert!(e.contains("rejected the credentials"), "{e}");
        assert!(!e.contains(wrong) && !e.contains(IDENTITY), "{e}");
        let posts = srv
            .requests()
            .iter()
            .filter(|q| q.path.starts_with("/token"))
            .count();
        assert_eq!(posts, 3, "one token request per client");
        for q in srv.requests() {
            assert!(!q.path.contains(IDENTITY), "the token went into a URL: {}", q.path);
        }
        std::env::set_var("PATH", path);
        std::env::remove_var("DOCKER_CONFIG");
    })
    .await
    .expect("test timed out");
}

//! Authentication against real servers: `docker-registry` with htpasswd Basic auth, and with
//! `auth: token:` and a token server; credentials from the Docker config's `auths` and from a
//! `docker-credential-*` helper, written by `store_login` and removed by `erase_login`.
//! One test in its own binary, because it sets `DOCKER_CONFIG` and `PATH` for the process.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::auth::{htpasswd_config, TokenServer};
use common::{sha256, Registry, TEST_TIMEOUT};
use kiln_registry::{
    erase_login, media_type, store_login, ClientOptions, LoginStore, Platform, PushedBlob,
    Reference, RegistryClient, RegistryError,
};

const USER: &str = "kiln";
const PASS: &str = "pa55-w0rd-s3cret";

fn client() -> RegistryClient {
    RegistryClient::new(ClientOptions::default()).unwrap()
}

/// Pushes a one-blob image and pulls it back; the error, if any, as text.
async fn round_trip(c: &RegistryClient, dir: &Path, r: &Reference) -> Result<(), String> {
    let layer = format!("layer of {r}").into_bytes();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let (ld, cd) = (sha256(&layer), sha256(config));
    std::fs::write(dir.join("l"), &layer).unwrap();
    std::fs::write(dir.join("c"), config).unwrap();
    let e = |e: RegistryError| e.to_string();
    c.push_blob(r, &ld, layer.len() as u64, &dir.join("l"))
        .await
        .map_err(e)?;
    c.push_blob(r, &cd, config.len() as u64, &dir.join("c"))
        .await
        .map_err(e)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
        "config": {"mediaType": media_type::OCI_CONFIG, "digest": cd, "size": config.len()},
        "layers": [{"mediaType": media_type::OCI_LAYER, "digest": ld, "size": layer.len()}]
    })
    .to_string();
    c.push_manifest(r, media_type::OCI_MANIFEST, manifest.as_bytes())
        .await
        .map_err(e)?;
    let m = c
        .resolve(r, &Platform::parse("linux/amd64").unwrap())
        .await
        .map_err(e)?;
    let mut out = Vec::new();
    c.fetch_blob(r, &m.layers[0].digest, &mut out)
        .await
        .map_err(e)?;
    assert_eq!(out, layer);
    Ok(())
}

fn no_secret(text: &str) {
    assert!(!text.contains(PASS), "the password leaked: {text}");
}

const HELPER: &str = r#"#!/bin/sh
store="$(dirname "$0")/helper-store.json"
case "$1" in
  get) read server; if [ -f "$store" ]; then cat "$store"; else echo "credentials not found in native keychain"; exit 1; fi ;;
  store) cat > "$store" ;;
  erase) read server; if [ -f "$store" ]; then rm "$store"; else echo "credentials not found in native keychain"; exit 1; fi ;;
  *) exit 2 ;;
esac
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_token_and_helper_logins_against_real_registries() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let home = tempfile::tempdir().unwrap();
        let config_dir = home.path().join("docker");
        std::env::set_var("DOCKER_CONFIG", &config_dir);
        let work = tempfile::tempdir().unwrap();

        // htpasswd Basic auth: anonymous is refused with a hint, bad passwords are refused.
        let basic = Registry::start_with(|d| htpasswd_config(d, USER, PASS)).await;
        let r = Reference::parse(&format!("{}/team/app:v1", basic.host())).unwrap();
        let e = round_trip(&client(), work.path(), &r).await.unwrap_err();
        assert!(
            e.contains("401") && e.contains(&format!("kiln login {}", basic.host())),
            "{e}"
        );
        let e = client()
            .check_login(&basic.host(), USER, "wrong-guess")
            .await
            .unwrap_err();
        assert!(
            matches!(e, RegistryError::Unauthorized { status: 401, .. }),
            "{e}"
        );
        assert!(!e.to_string().contains("wrong-guess"), "{e}");
        client()
            .check_login(&basic.host(), USER, PASS)
            .await
            .unwrap();

        // Stored in the config's `auths`, privately; a new client pushes and pulls with it.
        let stored = store_login(&basic.host(), USER, PASS).await.unwrap();
        let file = config_dir.join("config.json");
        assert_eq!(stored, LoginStore::File(file.clone()));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "config.json is readable by others: {mode:o}"
        );
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert!(v["auths"][basic.host()]["auth"].is_string(), "{v}");
        let c = client();
        no_secret(&format!("{c:?}"));
        round_trip(&c, work.path(), &r).await.unwrap();

        // Bearer tokens: the token server is asked with the stored credentials, once per scope.
        let tokens = TokenServer::start(USER, PASS).await;
        let tr = Registry::start_with(|_| tokens.registry_config()).await;
        let r2 = Reference::parse(&format!("{}/team/tok:v1", tr.host())).unwrap();
        let e = round_trip(&client(), work.path(), &r2).await.unwrap_err();
        assert!(e.contains("refused anonymous access"), "{e}");
        let e = client()
            .check_login(&tr.host(), USER, "nope-nope")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rejected the credentials") && !e.contains("nope-nope"),
            "{e}"
        );
        client().check_login(&tr.host(), USER, PASS).await.unwrap();
        store_login(&tr.host(), USER, PASS).await.unwrap();
        let before = tokens.token_requests();
        let c = client();
        round_trip(&c, work.path(), &r2).await.unwrap();
        let asked = tokens.token_requests() - before;
        // One token for push (pull,push) and one for pull; reused for every other request.
        assert!(
            (1..=3).contains(&asked),
            "{asked} token requests for one push and pull"
        );
        for req in tokens.server.requests() {
            no_secret(&req.path);
        }

        // Logout removes the entry; the next client is anonymous again.
        assert!(erase_login(&basic.host()).await.unwrap());
        assert!(!erase_login(&basic.host()).await.unwrap());
        let e = round_trip(&client(), work.path(), &r).await.unwrap_err();
        assert!(e.contains("401"), "{e}");

        // A `credsStore` helper: login stores there (not in the file), the client asks it.
        let bin = home.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let helper = bin.join("docker-credential-kilntest");
        std::fs::write(&helper, HELPER).unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::var("PATH").unwrap_or_default();
        std::env::set_var("PATH", format!("{}:{path}", bin.display()));
        std::fs::write(&file, r#"{"credsStore": "kilntest"}"#).unwrap();
        let stored = store_login(&basic.host(), USER, PASS).await.unwrap();
        assert_eq!(
            stored,
            LoginStore::Helper("docker-credential-kilntest".into())
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("auths"), "{text}");
        let c = client();
        round_trip(&c, work.path(), &r).await.unwrap();
        let mut out = Vec::new();
        let layer = format!("layer of {r}").into_bytes();
        assert_eq!(
            c.push_blob(
                &r,
                &sha256(&layer),
                layer.len() as u64,
                &work.path().join("l")
            )
            .await
            .unwrap(),
            PushedBlob::AlreadyPresent
        );
        c.fetch_blob(&r, &sha256(&layer), &mut out).await.unwrap();
        assert!(erase_login(&basic.host()).await.unwrap());
        let e = round_trip(&client(), work.path(), &r).await.unwrap_err();
        assert!(e.contains("401"), "{e}");
        std::env::set_var("PATH", path);
        std::env::remove_var("DOCKER_CONFIG");
    })
    .await
    .expect("test timed out");
}

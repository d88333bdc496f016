//! Authenticated registries for the tests: an htpasswd (bcrypt, from `htpasswd -B`) Basic-auth
//! `docker-registry`, and a small token server whose RS256 tokens (signed with `openssl`, the
//! certificate in the `x5c` header) `docker-registry`'s `auth: token:` accepts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;

use super::{FakeServer, Resp};

/// The `auth:` section for Basic auth with one user.
pub fn htpasswd_config(dir: &Path, user: &str, password: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("run `htpasswd` (install apache2-utils: `cargo xtask setup`)");
    assert!(out.status.success(), "htpasswd failed");
    let file = dir.join("htpasswd");
    std::fs::write(&file, &out.stdout).unwrap();
    format!(
        "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
        file.display()
    )
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token service: grants every requested scope to one user, refuses everyone else.
pub struct TokenServer {
    pub server: FakeServer,
    pub cert: PathBuf,
    _dir: tempfile::TempDir,
}

pub const ISSUER: &str = "kiln-test-issuer";
pub const SERVICE: &str = "kiln-test-registry";

impl TokenServer {
    pub async fn start(user: &str, password: &str) -> TokenServer {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let st = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=kiln-test-token"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(st.success(), "openssl req failed");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("run openssl x509");
        assert!(der.status.success());
        let x5c = base64::engine::general_purpose::STANDARD.encode(&der.stdout);
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let user = user.to_string();
        let server = FakeServer::start(move |req| {
            if !req.path.starts_with("/token") {
                return Resp::new(404, "");
            }
            if req.headers.get("authorization") != Some(&expected) {
                return Resp::new(401, r#"{"details":"bad credentials"}"#);
            }
            let url = url::Url::parse(&format!("http://x{}", req.path)).unwrap();
            let access: Vec<serde_json::Value> = url
                .query_pairs()
                .filter(|(k, _)| k == "scope")
                .filter_map(|(_, v)| {
                    let mut parts = v.splitn(3, ':');
                    let (t, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                    Some(serde_json::json!({
                        "type": t, "name": name,
                        "actions": actions.split(',').collect::<Vec<_>>()
                    }))
                })
                .collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
            let claims = serde_json::json!({
                "iss": ISSUER, "sub": user, "aud": SERVICE,
                "exp": now + 600, "nbf": now - 60, "iat": now,
                "jti": format!("{now}-{}", access.len()), "access": access
            });
            let input = format!(
                "{}.{}",
                b64url(header.to_string().as_bytes()),
                b64url(claims.to_string().as_bytes())
            );
            let mut child = Command::new("openssl")
                .args(["dgst", "-sha256", "-sign"])
                .arg(&key)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            let sig = child.wait_with_output().unwrap().stdout;
            let jwt = format!("{input}.{}", b64url(&sig));
            Resp::new(
                200,
                serde_json::json!({"token": jwt, "expires_in": 600}).to_string(),
            )
        })
        .await;
        TokenServer {
            server,
            cert,
            _dir: dir,
        }
    }

    /// The registry's `auth:` section pointing at this server.
    pub fn registry_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.server.port,
            self.cert.display()
        )
    }

    pub fn token_requests(&self) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/token"))
            .count()
    }
}

//! Registry credentials from `~/.docker/config.json` and the `WWW-Authenticate` challenge parser.
//! Secrets live only here and in request headers: `Debug` redacts them and no error carries them.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    pub(crate) password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The user name that marks the secret as an identity token (Docker's convention, used by
/// credential helpers and for `identitytoken` in the config).
pub(crate) const IDENTITY_TOKEN_USER: &str = "<token>";

impl Credentials {
    /// The identity token (an OAuth2 refresh token, e.g. from Docker Hub or Azure), when these
    /// credentials are one rather than a user and password.
    pub(crate) fn identity_token(&self) -> Option<&str> {
        (self.username == IDENTITY_TOKEN_USER).then_some(self.password.as_str())
    }

    pub(crate) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(rename = "credsStore", default)]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers", default)]
    cred_helpers: HashMap<String, String>,
}

/// What a Docker config file says about credentials: inline `auths`, and the
/// `docker-credential-*` helpers to ask for the registries it does not hold.
#[derive(Debug, Default)]
pub(crate) struct ConfigCredentials {
    pub(crate) auths: HashMap<String, Credentials>,
    /// The helper for every registry (`credsStore`), e.g. `pass` for `docker-credential-pass`.
    pub(crate) creds_store: Option<String>,
    /// Per-registry helpers (`credHelpers`), keyed by normalised host.
    pub(crate) cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(rename = "identitytoken", default)]
    identity_token: Option<String>,
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub(crate) fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// Reads the credentials per registry host. A missing file means anonymous access; an unreadable
/// or broken one is reported in the log and ignored, so that anonymous pulls still work.
pub(crate) fn load_credentials(path: &Path) -> ConfigCredentials {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ConfigCredentials::default(),
        Err(e) => {
            tracing::warn!(
                "cannot read `{}`: {e}; continuing without registry credentials",
                path.display()
            );
            return ConfigCredentials::default();
        }
    };
    parse_config(&text).unwrap_or_else(|reason| {
        tracing::warn!(
            "ignoring `{}`: {reason}; fix the file to use its registry credentials",
            path.display()
        );
        ConfigCredentials::default()
    })
}

#[cfg(test)]
pub(crate) fn parse_credentials(text: &str) -> Result<HashMap<String, Credentials>, String> {
    parse_config(text).map(|c| c.auths)
}

pub(crate) fn parse_config(text: &str) -> Result<ConfigCredentials, String> {
    // The serde error may quote file content, which may be a secret: report the position only.
    let cfg: DockerConfig = serde_json::from_str(text)
        .map_err(|e| format!("not valid JSON (line {}, column {})", e.line(), e.column()))?;
    let mut out = HashMap::new();
    for (key, entry) in cfg.auths {
        let host = normalize_host(&key);
        let creds = if let Some(token) = entry.identity_token.filter(|t| !t.is_empty()) {
            Credentials {
                username: IDENTITY_TOKEN_USER.to_string(),
                password: token,
            }
        } else if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| format!("the `auth` of `{key}` is not base64"))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| format!("the `auth` of `{key}` is not UTF-8"))?;
            let (u, p) = decoded
                .split_once(':')
                .ok_or_else(|| format!("the `auth` of `{key}` is not `user:password`"))?;
            Credentials {
                username: u.to_string(),
                password: p.to_string(),
            }
        } else if let (Some(u), Some(p)) = (entry.username, entry.password) {
            Credentials {
                username: u,
                password: p,
            }
        } else {
            continue;
        };
        out.insert(host, creds);
    }
    Ok(ConfigCredentials {
        auths: out,
        creds_store: cfg.creds_store.filter(|s| !s.is_empty()),
        cred_helpers: cfg
            .cred_helpers
            .into_iter()
            .map(|(k, v)| (normalize_host(&k), v))
            .collect(),
    })
}

/// A registry as users write it, normalised to the host kiln keys credentials by:
/// `https://index.docker.io/v1/` → `docker.io`; `http://reg:5000/x` → `reg:5000`.
pub fn normalize_host(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    Some(Challenge::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    })
}

/// `k="v", k2=v2`; quoted values may hold commas (scopes do: `pull,push`).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.insert(key.trim().to_ascii_lowercase(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            })
        );
        let c = parse_challenge("bearer realm=http://127.0.0.1/t, service=x");
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1/t".into(),
                service: Some("x".into()),
                scope: None
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn reads_docker_config_auths() {
        let text = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYTpzcw=="},
            "reg.example:5000": {"username": "u2", "password": "p2"},
            "ghcr.io": {}
        }, "credsStore": "desktop"}"#;
        let c = parse_credentials(text).unwrap();
        assert_eq!(c["docker.io"].username, "user");
        assert_eq!(c["docker.io"].password, "pa:ss");
        assert_eq!(c["reg.example:5000"].username, "u2");
        assert!(!c.contains_key("ghcr.io"));
        assert_eq!(c["docker.io"].basic_header(), "Basic dXNlcjpwYTpzcw==");
        assert!(!format!("{:?}", c["docker.io"]).contains("pa:ss"));
        let full = parse_config(
            r#"{"credsStore": "desktop", "credHelpers": {"https://gcr.io": "gcloud"}}"#,
        )
        .unwrap();
        assert_eq!(full.creds_store.as_deref(), Some("desktop"));
        assert_eq!(full.cred_helpers["gcr.io"], "gcloud");
    }

    #[test]
    fn config_errors_do_not_leak_secrets() {
        let e = parse_credentials(r#"{"auths": {"x": {"auth": "c2VjcmV0"}}"#).unwrap_err();
        assert!(!e.contains("c2VjcmV0"), "{e}");
        let e = parse_credentials(r#"{"auths": {"x": {"auth": "!!!"}}}"#).unwrap_err();
        assert!(e.contains("not base64") && !e.contains("!!!"), "{e}");
        let e = parse_credentials(r#"{"auths": {"x": {"auth": "c2VjcmV0"}}}"#).unwrap_err();
        assert!(e.contains("user:password") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn normalizes_hosts() {
        assert_eq!(normalize_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize_host("http://reg:5000/x"), "reg:5000");
        assert_eq!(normalize_host("ghcr.io"), "ghcr.io");
    }
}

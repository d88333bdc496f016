//! Where a registry's credentials come from, and where `kiln login` puts them: the Docker
//! config's `credHelpers` and `credsStore` (the `docker-credential-*` programs, asked on demand
//! and remembered for the client's life), then its inline `auths`. Secrets never enter an error
//! or a log line: helper failures report the helper's name and exit status only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::{self, ConfigCredentials, Credentials};
use crate::RegistryError;

const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// The key Docker uses for Docker Hub in `auths` and with credential helpers.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// The credentials a client may use, looked up per registry host.
pub(crate) struct Keychain {
    config: ConfigCredentials,
    /// Helper answers, so a helper runs at most once per registry and client.
    asked: Mutex<HashMap<String, Option<Credentials>>>,
}

impl Keychain {
    pub(crate) fn load() -> Self {
        let config = auth::docker_config_path()
            .map(|p| auth::load_credentials(&p))
            .unwrap_or_default();
        Keychain::new(config)
    }

    pub(crate) fn new(config: ConfigCredentials) -> Self {
        Keychain {
            config,
            asked: Mutex::new(HashMap::new()),
        }
    }

    /// The hosts with inline credentials or a helper (for `Debug`; no secrets).
    pub(crate) fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .config
            .auths
            .keys()
            .chain(self.config.cred_helpers.keys())
            .cloned()
            .collect();
        if let Some(s) = &self.config.creds_store {
            hosts.push(format!("* (docker-credential-{s})"));
        }
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// Credentials for `registry` (a normalised host such as `docker.io` or `127.0.0.1:5000`):
    /// its helper's answer when it has one, else the inline `auths` entry.
    pub(crate) async fn get(&self, registry: &str) -> Option<Credentials> {
        let helper = self
            .config
            .cred_helpers
            .get(registry)
            .or(self.config.creds_store.as_ref());
        if let Some(helper) = helper {
            let cached = self
                .asked
                .lock()
                .ok()
                .and_then(|m| m.get(registry).cloned());
            let found = match cached {
                Some(found) => found,
                None => {
                    let found = match helper_get(helper, registry).await {
                        Ok(found) => found,
                        Err(e) => {
                            tracing::warn!("{e}; trying the `auths` of the Docker config");
                            None
                        }
                    };
                    if let Ok(mut m) = self.asked.lock() {
                        m.insert(registry.to_string(), found.clone());
                    }
                    found
                }
            };
            if found.is_some() {
                return found;
            }
        }
        self.config.auths.get(registry).cloned()
    }
}

/// The server name a helper or `auths` knows a registry by.
fn server_key(registry: &str) -> String {
    if registry == "docker.io" {
        DOCKER_HUB_KEY.to_string()
    } else {
        registry.to_string()
    }
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs `docker-credential-<helper> <verb>` with `input` on stdin; returns its stdout, or `None`
/// when the helper says it has no credentials for the server.
async fn run_helper(
    helper: &str,
    verb: &str,
    registry: &str,
    input: &[u8],
) -> Result<Option<Vec<u8>>, RegistryError> {
    let program = format!("docker-credential-{helper}");
    let fail = |detail: String| RegistryError::CredentialHelper {
        helper: program.clone(),
        verb: verb.to_string(),
        registry: registry.to_string(),
        detail,
    };
    let helper_io = |what: &'static str, cause: std::io::Error| RegistryError::CredentialHelperIo {
        helper: program.clone(),
        verb: verb.to_string(),
        registry: registry.to_string(),
        what,
        cause,
    };
    let mut child = tokio::process::Command::new(&program)
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                fail(format!("`{program}` is not on the PATH: install it or remove it from the Docker config"))
            } else {
                helper_io("cannot start it", e)
            }
        })?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input).await?;
            stdin.shutdown().await?;
        }
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(mut s) = child.stdout.take() {
            s.read_to_end(&mut out).await?;
        }
        if let Some(mut s) = child.stderr.take() {
            s.read_to_end(&mut err).await?;
        }
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out, err))
    };
    let (status, out, err) = tokio::time::timeout(HELPER_TIMEOUT, run)
        .await
        .map_err(|_| {
            fail(format!(
                "it did not answer within {} s",
                HELPER_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| helper_io("talking to it failed", e))?;
    if status.success() {
        return Ok(Some(out));
    }
    // Helpers print this exact text (docker-credential-helpers' `ErrCredentialsNotFound`).
    let said = String::from_utf8_lossy(if err.is_empty() { &out } else { &err }).to_string();
    if said.contains("credentials not found") {
        return Ok(None);
    }
    Err(fail(format!(
        "it failed ({status}); run `{program} {verb}` by hand to see why"
    )))
}

async fn helper_get(helper: &str, registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let Some(out) = run_helper(helper, "get", registry, server_key(registry).as_bytes()).await?
    else {
        return Ok(None);
    };
    let answer: HelperAnswer =
        serde_json::from_slice(&out).map_err(|_| RegistryError::CredentialHelper {
            helper: format!("docker-credential-{helper}"),
            verb: "get".to_string(),
            registry: registry.to_string(),
            detail: "it did not answer with `{\"Username\": …, \"Secret\": …}` JSON".to_string(),
        })?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: answer.username,
        password: answer.secret,
    }))
}

/// Where [`store_login`] put the credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginStore {
    /// A `docker-credential-*` program, by its full name.
    Helper(String),
    /// The `auths` of this Docker config file.
    File(PathBuf),
}

impl std::fmt::Display for LoginStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginStore::Helper(h) => write!(f, "the credential helper `{h}`"),
            LoginStore::File(p) => write!(f, "`{}`", p.display()),
        }
    }
}

fn config_path() -> Result<PathBuf, RegistryError> {
    auth::docker_config_path().ok_or_else(|| RegistryError::Config {
        path: PathBuf::from("~/.docker/config.json"),
        detail: "neither $DOCKER_CONFIG nor $HOME is set: set one of them".to_string(),
    })
}

fn read_config_value(path: &Path) -> Result<serde_json::Value, RegistryError> {
    let bad = |detail: String| RegistryError::Config {
        path: path.to_path_buf(),
        detail,
    };
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(serde_json::json!({})),
        Ok(text) => {
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                bad(format!(
                    "not valid JSON (line {}, column {}): fix or remove the file",
                    e.line(),
                    e.column()
                ))
            })?;
            if v.is_object() {
                Ok(v)
            } else {
                Err(bad("not a JSON object: fix or remove the file".to_string()))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::json!({})),
        Err(cause) => Err(RegistryError::ConfigIo {
            path: path.to_path_buf(),
            what: "cannot read it",
            cause,
        }),
    }
}

/// Writes the config atomically (temp file, fsync, rename) and readable by its owner only.
fn write_config_value(path: &Path, v: &serde_json::Value) -> Result<(), RegistryError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let bad = |detail: String| RegistryError::Config {
        path: path.to_path_buf(),
        detail,
    };
    let config_io = |what: &'static str| {
        move |cause| RegistryError::ConfigIo {
            path: path.to_path_buf(),
            what,
            cause,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(config_io("cannot create its directory"))?;
    let tmp = dir.join(format!(".config.json.{}.tmp", std::process::id()));
    let text = serde_json::to_vec_pretty(v).map_err(|e| bad(e.to_string()))?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        config_io("cannot write it")(e)
    })
}

fn helper_for(v: &serde_json::Value, registry: &str) -> Option<String> {
    let helpers = v.get("credHelpers").and_then(|h| h.as_object());
    if let Some(h) = helpers.and_then(|h| {
        h.iter()
            .find(|(k, _)| auth::normalize_host(k) == registry)
            .and_then(|(_, v)| v.as_str())
    }) {
        return Some(h.to_string());
    }
    v.get("credsStore")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Saves credentials for `registry` (a normalised host) where Docker would: the registry's
/// credential helper when the config names one, else the config's `auths`.
pub async fn store_login(
    registry: &str,
    username: &str,
    password: &str,
) -> Result<LoginStore, RegistryError> {
    let path = config_path()?;
    let mut v = read_config_value(&path)?;
    if let Some(helper) = helper_for(&v, registry) {
        let input = serde_json::json!({
            "ServerURL": server_key(registry),
            "Username": username,
            "Secret": password,
        })
        .to_string();
        run_helper(&helper, "store", registry, input.as_bytes()).await?;
        return Ok(LoginStore::Helper(format!("docker-credential-{helper}")));
    }
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let obj = v.as_object_mut().ok_or_else(|| RegistryError::Config {
        path: path.clone(),
        detail: "not a JSON object: fix or remove the file".to_string(),
    })?;
    let auths = obj.entry("auths").or_insert_with(|| serde_json::json!({}));
    if !auths.is_object() {
        *auths = serde_json::json!({});
    }
    if let Some(a) = auths.as_object_mut() {
        // One entry per registry: drop spellings of the same host (`http://host/`, …).
        a.retain(|k, _| auth::normalize_host(k) != registry);
        a.insert(server_key(registry), serde_json::json!({ "auth": auth }));
    }
    write_config_value(&path, &v)?;
    Ok(LoginStore::File(path))
}

/// Removes the credentials for `registry` from its helper and from the config's `auths`.
/// Returns whether there were any.
pub async fn erase_login(registry: &str) -> Result<bool, RegistryError> {
    let path = config_path()?;
    let mut v = read_config_value(&path)?;
    let mut removed = false;
    if let Some(helper) = helper_for(&v, registry) {
        removed |= run_helper(&helper, "erase", registry, server_key(registry).as_bytes())
            .await?
            .is_some();
    }
    if let Some(a) = v.get_mut("auths").and_then(|a| a.as_object_mut()) {
        let before = a.len();
        a.retain(|k, _| auth::normalize_host(k) != registry);
        if a.len() != before {
            removed = true;
            write_config_value(&path, &v)?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_choice_follows_docker() {
        let v = serde_json::json!({
            "credsStore": "desktop",
            "credHelpers": {"https://gcr.io": "gcloud"}
        });
        assert_eq!(helper_for(&v, "gcr.io").as_deref(), Some("gcloud"));
        assert_eq!(helper_for(&v, "ghcr.io").as_deref(), Some("desktop"));
        assert_eq!(helper_for(&serde_json::json!({}), "ghcr.io"), None);
        assert_eq!(server_key("docker.io"), DOCKER_HUB_KEY);
        assert_eq!(server_key("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn config_is_written_atomically_and_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        let v = serde_json::json!({"auths": {}, "other": 1});
        write_config_value(&path, &v).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_config_value(&path).unwrap(), v);
        std::fs::write(&path, "[1]").unwrap();
        let e = read_config_value(&path).unwrap_err().to_string();
        assert!(e.contains("not a JSON object"), "{e}");
    }
}

//! The config file, `kiln.toml`: per-registry settings (mirrors, plain http, TLS) as
//! `buildkitd.toml` writes them, and the GC policy applied after builds.
//!
//! ```toml
//! [registry."docker.io"]
//! mirrors = ["mirror.internal:5000", "harbor.internal/hub-proxy"]   # in order, then docker.io
//!
//! [registry."mirror.internal:5000"]
//! http = true                          # plain http (loopback always may)
//! # insecure = true                    # https without verifying the certificate
//! # ca = ["/etc/kiln/certs/mirror.pem"] # extra CA certificates (PEM); relative to this file
//!
//! [gc]
//! keep-storage = "10GB"                # build cache kept after each build, LRU beyond
//! keep-duration = "7d"                 # results and cache mounts unused longer go
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln_registry::HostOptions;
use serde::Deserialize;

/// The settings a config file gives the engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The file read, if any.
    pub path: Option<PathBuf>,
    /// Per registry (`host[:port]`, `docker.io` for Docker Hub).
    pub registries: HashMap<String, HostOptions>,
    pub gc: GcPolicy,
}

/// `[gc]`: what is collected after every build. Without either setting, nothing is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcPolicy {
    /// `keep-storage`: the build cache (snapshots, blobs no image needs, cache mounts) is cut
    /// to this many bytes, least recently used first.
    pub keep_storage: Option<u64>,
    /// `keep-duration`: results and cache mounts unused for longer are dropped.
    pub keep_duration: Option<Duration>,
}

impl GcPolicy {
    pub fn is_set(&self) -> bool {
        self.keep_storage.is_some() || self.keep_duration.is_some()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    registry: BTreeMap<String, RegistryEntry>,
    #[serde(default)]
    gc: GcEntry,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RegistryEntry {
    #[serde(default)]
    mirrors: Vec<String>,
    #[serde(default)]
    http: bool,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    ca: Vec<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct GcEntry {
    keep_storage: Option<SizeOrText>,
    keep_duration: Option<String>,
}

/// `keep-storage = 1073741824` or `keep-storage = "1GB"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeOrText {
    Bytes(u64),
    Text(String),
}

/// Where kiln looks for its config when `--config` is not given: `/etc/kiln/kiln.toml` as
/// root, `$XDG_CONFIG_HOME/kiln/kiln.toml` (else `~/.config/kiln/kiln.toml`) rootless.
pub fn default_config_path(root_user: bool) -> PathBuf {
    if root_user {
        return PathBuf::from("/etc/kiln/kiln.toml");
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("kiln/kiln.toml");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".config/kiln/kiln.toml")
}

impl Config {
    /// Reads `explicit` (which must exist), else `default` when it exists, else no settings.
    pub fn load(explicit: Option<&Path>, default: &Path) -> Result<Config> {
        let path = match explicit {
            Some(p) => p,
            None if default.exists() => default,
            None => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the config file `{}`; check the path given to `--config`",
                path.display()
            )
        })?;
        Self::parse(&text, path)
    }

    /// Parses a config file's text; `path` names it in errors and anchors relative `ca` paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let file: File = toml::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "config file `{}`: {}",
                path.display(),
                e.to_string().trim_end()
            )
        })?;
        let here = path.parent().unwrap_or(Path::new("."));
        let mut registries: HashMap<String, HostOptions> = HashMap::new();
        let mut plain_mirrors = Vec::new();
        for (name, entry) in file.registry {
            let host = registry_name(&name).with_context(|| {
                format!("config file `{}`: `[registry.\"{name}\"]`", path.display())
            })?;
            let mut mirrors = Vec::new();
            for m in &entry.mirrors {
                let (mirror, prefix) = mirror_name(m).with_context(|| {
                    format!(
                        "config file `{}`: `[registry.\"{name}\"]` mirror `{m}`",
                        path.display()
                    )
                })?;
                if m.starts_with("http://") {
                    plain_mirrors.push(mirror.clone());
                }
                mirrors.push(match prefix {
                    Some(p) => format!("{mirror}/{p}"),
                    None => mirror,
                });
            }
            let mut ca_certs = Vec::new();
            for ca in &entry.ca {
                let p = here.join(ca);
                let pem = std::fs::read(&p).with_context(|| {
                    format!(
                        "config file `{}`: cannot read the `ca` certificate `{}` of registry `{name}`",
                        path.display(),
                        p.display()
                    )
                })?;
                ca_certs.push(pem);
            }
            if registries.contains_key(&host) {
                bail!(
                    "config file `{}`: registry `{host}` is configured twice (as `{name}` too); merge the sections",
                    path.display()
                );
            }
            registries.insert(
                host,
                HostOptions {
                    mirrors,
                    plain_http: entry.http,
                    insecure: entry.insecure,
                    ca_certs,
                },
            );
        }
        // A mirror written `http://host` is spoken to over plain http.
        for m in plain_mirrors {
            registries.entry(m).or_default().plain_http = true;
        }
        let keep_storage = match file.gc.keep_storage {
            None => None,
            Some(SizeOrText::Bytes(n)) => Some(n),
            Some(SizeOrText::Text(t)) => Some(kiln_cache::parse_size(&t).with_context(|| {
                format!(
                    "config file `{}`: `gc.keep-storage = \"{t}\"` is not a size: write e.g. `\"10GB\"`, `\"512MB\"` or a number of bytes",
                    path.display()
                )
            })?),
        };
        let keep_duration = match file.gc.keep_duration {
            None => None,
            Some(t) => Some(parse_duration(&t).with_context(|| {
                format!(
                    "config file `{}`: `gc.keep-duration = \"{t}\"` is not a duration: write e.g. `\"48h\"`, `\"7d\"` or `\"30m\"`",
                    path.display()
                )
            })?),
        };
        Ok(Config {
            path: Some(path.to_path_buf()),
            registries,
            gc: GcPolicy {
                keep_storage,
                keep_duration,
            },
        })
    }
}

/// A registry as a config file names it: `host`, `host:port`, optionally with a scheme; the
/// name kiln uses for it (`docker.io` for Docker Hub's aliases).
fn registry_name(text: &str) -> Result<String> {
    let bare = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .unwrap_or(text)
        .trim_end_matches('/');
    if bare.is_empty()
        || bare.contains('/')
        || bare
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '@')
    {
        bail!("`{text}` is not a registry: write `host` or `host:port`, without a path");
    }
    Ok(kiln_registry::registry_host(bare))
}

/// A mirror: `host[:port]` with an optional repository path prefix (`harbor.internal/proxy`,
/// as BuildKit's mirrors take it: `/v2/proxy/<repository>` is asked).
fn mirror_name(text: &str) -> Result<(String, Option<String>)> {
    let bare = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .unwrap_or(text)
        .trim_end_matches('/');
    let Some((host, prefix)) = bare.split_once('/') else {
        return Ok((registry_name(text)?, None));
    };
    let plain = prefix.split('/').all(|part| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
    });
    if !plain {
        bail!(
            "`{text}` is not a mirror: write `host[:port]` or `host[:port]/path`, the path in \
             lowercase letters, digits, `.`, `_` and `-`"
        );
    }
    Ok((registry_name(host)?, Some(prefix.to_string())))
}

/// `30s`, `30m`, `48h`, `7d`, or a number of seconds: the `--filter until=` and
/// `gc.keep-duration` syntax (Go's durations plus days).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().ok()?;
    let secs: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(secs).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_and_gc_parse_as_documented() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), b"PEM").unwrap();
        let path = dir.path().join("kiln.toml");
        let c = Config::parse(
            r#"
[registry."index.docker.io"]
mirrors = ["127.0.0.1:5106", "http://mirror.lan:5000/"]

[registry."reg.lan:443"]
insecure = true
ca = ["ca.pem"]

[gc]
keep-storage = "1.5GB"
keep-duration = "7d"
"#,
            &path,
        )
        .unwrap();
        let hub = &c.registries["docker.io"];
        assert_eq!(hub.mirrors, vec!["127.0.0.1:5106", "mirror.lan:5000"]);
        assert!(c.registries["mirror.lan:5000"].plain_http);
        let lan = &c.registries["reg.lan:443"];
        assert!(lan.insecure && !lan.plain_http);
        assert_eq!(lan.ca_certs, vec![b"PEM".to_vec()]);
        assert_eq!(c.gc.keep_storage, Some(3 << 29));
        assert_eq!(c.gc.keep_duration, Some(Duration::from_secs(7 * 86_400)));
        let bytes = Config::parse("[gc]\nkeep-storage = 1000\n", &path).unwrap();
        assert_eq!(bytes.gc.keep_storage, Some(1000));
    }

    #[test]
    fn mistakes_name_the_file_and_what_to_write() {
        let path = Path::new("/etc/kiln/kiln.toml");
        let err = |text: &str| format!("{:#}", Config::parse(text, path).unwrap_err());
        let e = err("[registry.\"docker.io\"]\nmirror = [\"x\"]\n");
        assert!(
            e.contains("/etc/kiln/kiln.toml") && e.contains("mirror") && e.contains("line 2"),
            "{e}"
        );
        let e = err("[gc]\nkeep-storage = \"lots\"\n");
        assert!(
            e.contains("`gc.keep-storage = \"lots\"` is not a size"),
            "{e}"
        );
        let e = err("[gc]\nkeep-duration = \"soon\"\n");
        assert!(e.contains("keep-duration"), "{e}");
        let e = err("[registry.\"docker.io\"]\nmirrors = [\"host/../up\"]\n");
        assert!(e.contains("is not a mirror"), "{e}");
        let e = err("[registry.\"docker.io\"]\nmirrors = [\"host/Path\"]\n");
        assert!(e.contains("lowercase"), "{e}");
        let e = err("[registry.\"docker.io\"]\nmirrors = [\"/path\"]\n");
        assert!(e.contains("not a registry"), "{e}");
        let e = err("[registry.\"docker.io\"]\nca = [\"/nope/ca.pem\"]\n");
        assert!(e.contains("/nope/ca.pem"), "{e}");
        let e = err("[registry.\"docker.io\"]\n[registry.\"index.docker.io\"]\n");
        assert!(e.contains("configured twice"), "{e}");
    }

    #[test]
    fn a_missing_default_file_is_no_settings_but_a_missing_explicit_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("kiln.toml");
        assert_eq!(Config::load(None, &absent).unwrap(), Config::default());
        let e = format!("{:#}", Config::load(Some(&absent), &absent).unwrap_err());
        assert!(e.contains("--config"), "{e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("48h"), Some(Duration::from_secs(48 * 3600)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(2 * 86_400)));
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration(""), None);
    }
}

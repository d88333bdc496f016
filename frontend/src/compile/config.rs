//! The image config as a stage builds it up, and its conversion from and to oci-spec's
//! `ImageConfiguration`. Kept in our own shape so fields oci-spec lacks (healthcheck, ONBUILD,
//! SHELL) still flow from stage to stage.

use oci_spec::image::{Arch, Config, History, ImageConfiguration, Os, RootFs};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// BuildKit's history comment for Dockerfile steps.
pub(crate) const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// The `PATH` BuildKit gives a container whose image sets none.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A `HEALTHCHECK`, in Docker's shape (durations in nanoseconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Healthcheck {
    pub test: Vec<String>,
    pub interval: i128,
    pub timeout: i128,
    pub start_period: i128,
    pub start_interval: i128,
    pub retries: i64,
}

/// Platform of a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: String,
}

impl Platform {
    /// From `os` and `arch[/variant]`.
    pub(crate) fn new(os: &str, arch: &str) -> Self {
        let (arch, variant) = arch.split_once('/').unwrap_or((arch, ""));
        Platform {
            os: os.to_string(),
            arch: arch.to_string(),
            variant: variant.to_string(),
        }
    }

    /// Parses `os/arch[/variant]`.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?;
        let arch = parts.next().filter(|p| !p.is_empty())?;
        let variant = parts.next().unwrap_or("");
        if parts.next().is_some() {
            return None;
        }
        Some(Platform {
            os: os.to_string(),
            arch: arch.to_string(),
            variant: variant.to_string(),
        })
    }

    /// The platform this process runs on, named as Go names it.
    pub(crate) fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "riscv64" => "riscv64",
            "s390x" => "s390x",
            other => other,
        };
        Platform::new(std::env::consts::OS, arch)
    }

    /// As containerd's `platforms.Normalize`: lower-case OS, Go's architecture names and the
    /// variants that name the default dropped (`aarch64` is `arm64`, `arm64/v8` is `arm64`).
    pub(crate) fn normalized(&self) -> Platform {
        let os = self.os.to_ascii_lowercase();
        let (arch, variant) = match (
            self.arch.to_ascii_lowercase().as_str(),
            self.variant.as_str(),
        ) {
            ("i386", _) => ("386", ""),
            ("x86_64" | "x86-64" | "amd64", "v1") => ("amd64", ""),
            ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v),
            ("aarch64" | "arm64", "8" | "v8") => ("arm64", ""),
            ("aarch64" | "arm64", v) => ("arm64", v),
            ("armhf", _) => ("arm", "v7"),
            ("armel", _) => ("arm", "v6"),
            ("arm", "" | "7") => ("arm", "v7"),
            ("arm", "5") => ("arm", "v5"),
            ("arm", "6") => ("arm", "v6"),
            ("arm", "8") => ("arm", "v8"),
            (a, v) => {
                return Platform {
                    os,
                    arch: a.to_string(),
                    variant: v.to_string(),
                }
            }
        };
        Platform {
            os,
            arch: arch.to_string(),
            variant: variant.to_string(),
        }
    }

    /// `os/arch[/variant]`.
    pub(crate) fn spec(&self) -> String {
        if self.variant.is_empty() {
            format!("{}/{}", self.os, self.arch)
        } else {
            format!("{}/{}/{}", self.os, self.arch, self.variant)
        }
    }
}

/// BuildKit's `formatTargetPlatform`: `->arch[/variant]` when `target` is another
/// architecture of the stage's OS, `->os/arch[/variant]` for another OS, else nothing. Empty
/// parts of `target` are the stage's.
pub(crate) fn arrow_to_target(base: &Platform, target: Option<Platform>) -> String {
    let Some(mut target) = target else {
        return String::new();
    };
    if target.os.is_empty() {
        target.os = base.os.clone();
    }
    if target.arch.is_empty() {
        target.arch = base.arch.clone();
    }
    let target = target.normalized();
    if target.os == base.os && target.arch != base.arch {
        if target.variant.is_empty() {
            format!("->{}", target.arch)
        } else {
            format!("->{}/{}", target.arch, target.variant)
        }
    } else if target.os != base.os {
        format!("->{}", target.spec())
    } else {
        String::new()
    }
}

/// The image config of a stage while it is compiled.
#[derive(Clone, Debug, Default)]
pub(crate) struct ImageState {
    pub author: Option<String>,
    /// `KEY=VALUE` entries in the order they were set; see [`ImageState::env`].
    env: Vec<String>,
    /// Each key's first and last slot in `env` (a base image may list a key twice), so that
    /// `ENV` and look-ups stay constant-time however many variables a stage sets.
    env_slots: HashMap<String, (usize, usize)>,
    pub user: String,
    pub working_dir: String,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    pub exposed_ports: BTreeSet<String>,
    pub volumes: BTreeSet<String>,
    pub stop_signal: Option<String>,
    pub healthcheck: Option<Healthcheck>,
    pub onbuild: Vec<String>,
    pub shell: Option<Vec<String>>,
    /// Docker's `ArgsEscaped`: BuildKit sets it on every `CMD` (any form, any platform) and keeps
    /// a base image's value; `ENTRYPOINT` leaves it as it is.
    pub args_escaped: bool,
    pub history: Vec<History>,
}

impl ImageState {
    /// The config of `FROM scratch`: a default `PATH` and `WorkingDir` `/`, as BuildKit's
    /// `emptyImage` sets them.
    pub(crate) fn scratch() -> Self {
        let mut state = ImageState::default();
        state.set_env_list(vec![format!("PATH={DEFAULT_PATH}")]);
        state.working_dir = "/".to_string();
        state
    }

    /// Takes over a base image's config.
    pub(crate) fn from_oci(img: &ImageConfiguration) -> Self {
        let mut state = ImageState {
            author: img.author().clone(),
            history: img.history().clone().unwrap_or_default(),
            ..Default::default()
        };
        if let Some(c) = img.config() {
            state.set_env_list(c.env().clone().unwrap_or_default());
            state.user = c.user().clone().unwrap_or_default();
            state.working_dir = c.working_dir().clone().unwrap_or_default();
            state.cmd = c.cmd().clone();
            state.entrypoint = c.entrypoint().clone();
            state.labels = c
                .labels()
                .as_ref()
                .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            state.exposed_ports = c
                .exposed_ports()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            state.volumes = c
                .volumes()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            state.stop_signal = c.stop_signal().clone();
        }
        state
    }

    /// Takes over the config fields oci-spec cannot hold (`Healthcheck`, `OnBuild`, `Shell`,
    /// `ArgsEscaped`) from a base image's raw config JSON. Malformed fields are ignored, as Docker ignores them.
    pub(crate) fn apply_raw_config(&mut self, raw: &serde_json::Value) {
        let Some(c) = raw.get("config").and_then(|c| c.as_object()) else {
            return;
        };
        let strings = |v: &serde_json::Value| -> Option<Vec<String>> {
            v.as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        if let Some(list) = c.get("OnBuild").and_then(strings) {
            self.onbuild = list;
        }
        if let Some(escaped) = c.get("ArgsEscaped").and_then(|v| v.as_bool()) {
            self.args_escaped = escaped;
        }
        if let Some(list) = c.get("Shell").and_then(strings) {
            if !list.is_empty() {
                self.shell = Some(list);
            }
        }
        if let Some(h) = c.get("Healthcheck").and_then(|h| h.as_object()) {
            let int = |k: &str| h.get(k).and_then(|v| v.as_i64()).unwrap_or(0);
            if let Some(test) = h.get("Test").and_then(strings) {
                self.healthcheck = Some(Healthcheck {
                    test,
                    interval: int("Interval").into(),
                    timeout: int("Timeout").into(),
                    start_period: int("StartPeriod").into(),
                    start_interval: int("StartInterval").into(),
                    retries: int("Retries"),
                });
            }
        }
    }

    /// The config fields oci-spec cannot hold, as Docker writes them: `Healthcheck` (zero
    /// durations and retries left out), `OnBuild`, `Shell` and `ArgsEscaped` (left out when
    /// false, as Go's `omitempty` does).
    pub(crate) fn extras(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::Value;
        let mut m = serde_json::Map::new();
        if let Some(h) = &self.healthcheck {
            let mut o = serde_json::Map::new();
            o.insert("Test".into(), Value::from(h.test.clone()));
            for (k, v) in [
                ("Interval", h.interval),
                ("Timeout", h.timeout),
                ("StartPeriod", h.start_period),
                ("StartInterval", h.start_interval),
            ] {
                if v != 0 {
                    o.insert(k.into(), Value::from(i64::try_from(v).unwrap_or(i64::MAX)));
                }
            }
            if h.retries != 0 {
                o.insert("Retries".into(), Value::from(h.retries));
            }
            m.insert("Healthcheck".into(), Value::Object(o));
        }
        if !self.onbuild.is_empty() {
            m.insert("OnBuild".into(), Value::from(self.onbuild.clone()));
        }
        if let Some(shell) = &self.shell {
            m.insert("Shell".into(), Value::from(shell.clone()));
        }
        if self.args_escaped {
            m.insert("ArgsEscaped".into(), Value::Bool(true));
        }
        m
    }

    /// The `KEY=VALUE` entries in the order they were set.
    pub(crate) fn env(&self) -> &[String] {
        &self.env
    }

    /// Replaces the environment with `env` (a base image's list, as it is).
    fn set_env_list(&mut self, env: Vec<String>) {
        self.env_slots.clear();
        for (i, e) in env.iter().enumerate() {
            self.env_slots
                .entry(env_key(e).to_string())
                .and_modify(|slots| slots.1 = i)
                .or_insert((i, i));
        }
        self.env = env;
    }

    /// The value of an environment variable set in the config (its last entry).
    pub(crate) fn env_get(&self, key: &str) -> Option<&str> {
        let &(_, last) = self.env_slots.get(key)?;
        let e = self.env.get(last)?;
        Some(e.split_once('=').map_or("", |(_, v)| v))
    }

    /// Sets a variable, replacing its first entry in place if already set (as Docker does).
    pub(crate) fn env_set(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self.env_slots.get(key) {
            Some(&(first, _)) => self.env[first] = entry,
            None => {
                self.env_slots
                    .insert(key.to_string(), (self.env.len(), self.env.len()));
                self.env.push(entry);
            }
        }
    }

    /// Appends a history entry as BuildKit writes it.
    pub(crate) fn add_history(&mut self, created_by: String, empty_layer: bool) {
        let mut h = History::default();
        h.set_created_by(Some(created_by));
        h.set_comment(Some(HISTORY_COMMENT.to_string()));
        if empty_layer {
            h.set_empty_layer(Some(true));
        }
        self.history.push(h);
    }

    /// The OCI image config for this state. `rootfs.diff_ids` is left empty for the exporter.
    pub(crate) fn to_oci(&self, platform: &Platform) -> ImageConfiguration {
        let mut config = Config::default();
        let opt_string = |s: &str| (!s.is_empty()).then(|| s.to_string());
        config.set_user(opt_string(&self.user));
        config.set_working_dir(opt_string(&self.working_dir));
        config.set_env((!self.env.is_empty()).then(|| self.env.clone()));
        // `CMD []`/`ENTRYPOINT []` leave the field out, as BuildKit's Go writer does
        // (`omitempty`): the config bytes, and so the image digest, match.
        config.set_cmd(self.cmd.clone().filter(|c| !c.is_empty()));
        config.set_entrypoint(self.entrypoint.clone().filter(|e| !e.is_empty()));
        config.set_exposed_ports(
            (!self.exposed_ports.is_empty()).then(|| self.exposed_ports.iter().cloned().collect()),
        );
        config.set_volumes(
            (!self.volumes.is_empty()).then(|| self.volumes.iter().cloned().collect()),
        );
        config.set_labels((!self.labels.is_empty()).then(|| {
            self.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>()
        }));
        config.set_stop_signal(self.stop_signal.clone());

        let mut img = ImageConfiguration::default();
        img.set_os(Os::from(platform.os.as_str()));
        img.set_architecture(Arch::from(platform.arch.as_str()));
        img.set_variant(opt_string(&platform.variant));
        img.set_author(self.author.clone());
        img.set_config(Some(config));
        img.set_rootfs(RootFs::default());
        img.set_history(Some(self.history.clone()));
        img
    }
}

/// `KEY` of a `KEY=VALUE` entry (all of it when there is no `=`).
fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_set_replaces_in_place() {
        let mut s = ImageState::scratch();
        s.env_set("A", "1");
        s.env_set("PATH", "/bin");
        s.env_set("A", "2");
        assert_eq!(s.env, vec!["PATH=/bin", "A=2"]);
        assert_eq!(s.env_get("A"), Some("2"));
        assert_eq!(s.env_get("B"), None);
    }

    #[test]
    fn extras_round_trip_through_raw_config() {
        let mut s = ImageState::scratch();
        s.onbuild = vec!["RUN echo hi".into()];
        s.shell = Some(vec!["/bin/bash".into(), "-c".into()]);
        s.args_escaped = true;
        s.healthcheck = Some(Healthcheck {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval: 30_000_000_000,
            timeout: 0,
            start_period: 0,
            start_interval: 0,
            retries: 3,
        });
        let extras = s.extras();
        assert_eq!(
            serde_json::Value::Object(extras["Healthcheck"].as_object().unwrap().clone()),
            serde_json::json!({"Test": ["CMD-SHELL", "true"], "Interval": 30_000_000_000i64, "Retries": 3})
        );
        let raw = serde_json::json!({ "config": extras });
        let mut back = ImageState::scratch();
        back.apply_raw_config(&raw);
        assert_eq!(back.onbuild, s.onbuild);
        assert_eq!(back.shell, s.shell);
        assert_eq!(back.healthcheck, s.healthcheck);
        assert!(
            back.args_escaped,
            "a base image's `ArgsEscaped` is inherited"
        );
        // Junk in a base image's config is ignored, not fatal.
        back.apply_raw_config(&serde_json::json!({"config": {"OnBuild": [1], "Healthcheck": 2}}));
        assert_eq!(back.onbuild, s.onbuild);
    }

    #[test]
    fn platform_parsing() {
        let p = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(
            (p.os.as_str(), p.arch.as_str(), p.variant.as_str()),
            ("linux", "arm", "v7")
        );
        assert_eq!(p.spec(), "linux/arm/v7");
        assert!(Platform::parse("linux").is_none());
        assert_eq!(Platform::new("linux", "arm64/v8").variant, "v8");
    }

    #[test]
    fn oci_round_trip_keeps_fields() {
        let mut s = ImageState::scratch();
        s.user = "nobody".into();
        s.cmd = Some(vec!["sh".into()]);
        s.labels.insert("a".into(), "b".into());
        s.exposed_ports.insert("80/tcp".into());
        s.add_history("ENV A=b".into(), true);
        let oci = s.to_oci(&Platform::new("linux", "amd64"));
        let back = ImageState::from_oci(&oci);
        assert_eq!(back.user, "nobody");
        assert_eq!(back.cmd, s.cmd);
        assert_eq!(back.labels, s.labels);
        assert_eq!(back.exposed_ports, s.exposed_ports);
        assert_eq!(back.history.len(), 1);
        assert_eq!(back.history[0].empty_layer(), Some(true));
    }
}

//! `RUN --mount=type=...,target=...`: one mount spec parsed into a [`RunMount`], its values
//! expanded first and its options checked against what the mount type accepts, as BuildKit's
//! `instructions/runmount.go` does.

use crate::util::suggestion;

/// The kind of a `RUN --mount`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MountKind {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            MountKind::Bind => "bind",
            MountKind::Cache => "cache",
            MountKind::Tmpfs => "tmpfs",
            MountKind::Secret => "secret",
            MountKind::Ssh => "ssh",
        }
    }

    /// The options a mount of this kind accepts.
    fn options(self) -> &'static [&'static str] {
        match self {
            MountKind::Bind => &[
                "type",
                "target",
                "dst",
                "destination",
                "source",
                "src",
                "from",
                "rw",
                "readwrite",
                "readonly",
                "ro",
            ],
            MountKind::Cache => &[
                "type",
                "target",
                "dst",
                "destination",
                "id",
                "sharing",
                "from",
                "source",
                "src",
                "mode",
                "uid",
                "gid",
                "readonly",
                "ro",
            ],
            MountKind::Tmpfs => &["type", "target", "dst", "destination", "size"],
            MountKind::Secret => &[
                "type",
                "target",
                "dst",
                "destination",
                "id",
                "env",
                "required",
                "mode",
                "uid",
                "gid",
            ],
            MountKind::Ssh => &[
                "type",
                "target",
                "dst",
                "destination",
                "id",
                "required",
                "mode",
                "uid",
                "gid",
            ],
        }
    }
}

/// How concurrent steps share a cache mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CacheSharing {
    Shared,
    Private,
    Locked,
}

impl CacheSharing {
    pub(crate) fn name(self) -> &'static str {
        match self {
            CacheSharing::Shared => "shared",
            CacheSharing::Private => "private",
            CacheSharing::Locked => "locked",
        }
    }
}

/// One `--mount` of a `RUN`, values expanded. An option given without a value reads as `""`
/// (or `true` for the boolean ones); the last of a repeated option wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunMount {
    pub(crate) kind: MountKind,
    /// `target`, `dst` or `destination`, as written (relative to the working directory).
    pub(crate) target: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) env: Option<String>,
    /// `source` or `src`; `""` when absent.
    pub(crate) source: String,
    pub(crate) from: Option<String>,
    /// `rw` or `readwrite`.
    pub(crate) read_write: bool,
    /// `readonly` or `ro`.
    pub(crate) read_only: bool,
    sharing: Option<String>,
    pub(crate) mode: Option<String>,
    pub(crate) uid: Option<String>,
    pub(crate) gid: Option<String>,
    pub(crate) size: Option<String>,
    pub(crate) required: Option<bool>,
}

impl RunMount {
    /// Parses one spec (`type=cache,target=/root/.cache`), expanding each value with `expand`
    /// first. Errors are the message to show (an expansion error as `expand` words it).
    pub(crate) fn parse(
        spec: &str,
        expand: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Self, String> {
        let mut fields: Vec<(String, Option<String>)> = Vec::new();
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = match part.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(expand(v)?)),
                None => (part.trim().to_ascii_lowercase(), None),
            };
            fields.push((k, v));
        }
        let get = |key: &str| {
            fields
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone().unwrap_or_default())
        };
        let flag_on = |key: &str| {
            fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| {
                v.as_deref()
                    .is_none_or(|v| v.eq_ignore_ascii_case("true") || v == "1")
            })
        };
        let kind = match get("type").as_deref().unwrap_or("bind") {
            "bind" => MountKind::Bind,
            "cache" => MountKind::Cache,
            "tmpfs" => MountKind::Tmpfs,
            "secret" => MountKind::Secret,
            "ssh" => MountKind::Ssh,
            other => {
                return Err(format!(
                    "unknown mount type `{other}`: use `bind`, `cache`, `tmpfs`, `secret` or `ssh`"
                ))
            }
        };
        let allowed = kind.options();
        for (k, _) in &fields {
            if !allowed.contains(&k.as_str()) {
                let hint = suggestion(k, allowed.iter().copied());
                return Err(format!(
                    "unknown `--mount` option `{k}` for type `{}`{hint}",
                    kind.name()
                ));
            }
        }
        Ok(RunMount {
            kind,
            target: get("target")
                .or_else(|| get("dst"))
                .or_else(|| get("destination")),
            id: get("id"),
            env: get("env"),
            source: get("source").or_else(|| get("src")).unwrap_or_default(),
            from: get("from"),
            read_write: flag_on("rw").or(flag_on("readwrite")).unwrap_or(false),
            read_only: flag_on("readonly").or(flag_on("ro")).unwrap_or(false),
            sharing: get("sharing"),
            mode: get("mode"),
            uid: get("uid"),
            gid: get("gid"),
            size: get("size"),
            required: flag_on("required"),
        })
    }

    /// A cache mount's `sharing=` (`shared` when absent). Checked when the mount is compiled,
    /// after its target and source, as kiln always has.
    pub(crate) fn sharing(&self) -> Result<CacheSharing, String> {
        match self.sharing.as_deref().unwrap_or("shared") {
            "shared" => Ok(CacheSharing::Shared),
            "private" => Ok(CacheSharing::Private),
            "locked" => Ok(CacheSharing::Locked),
            other => Err(format!(
                "unknown cache sharing `{other}`: use `shared`, `private` or `locked`"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &str) -> Result<String, String> {
        Ok(s.to_string())
    }

    #[test]
    fn cache_mount_fields() {
        let m = RunMount::parse("type=cache,target=/c,id=x,sharing=locked,ro", &plain).unwrap();
        assert_eq!(m.kind, MountKind::Cache);
        assert_eq!(m.target.as_deref(), Some("/c"));
        assert_eq!(m.id.as_deref(), Some("x"));
        assert_eq!(m.sharing(), Ok(CacheSharing::Locked));
        assert!(m.read_only);
    }

    #[test]
    fn bind_is_the_default_and_dst_is_target() {
        let m = RunMount::parse("dst=/src,from=build,rw=false", &plain).unwrap();
        assert_eq!(m.kind, MountKind::Bind);
        assert_eq!(m.target.as_deref(), Some("/src"));
        assert_eq!(m.from.as_deref(), Some("build"));
        assert!(!m.read_write);
    }

    #[test]
    fn unknown_option_for_the_type_suggests() {
        let err = RunMount::parse("type=tmpfs,target=/t,sise=1m", &plain).unwrap_err();
        assert!(
            err.contains("unknown `--mount` option `sise` for type `tmpfs`"),
            "{err}"
        );
        assert!(err.contains("did you mean `size`"), "{err}");
    }

    #[test]
    fn values_are_expanded_before_the_type_is_read() {
        let expand = |s: &str| Ok(s.replace("$T", "secret"));
        let m = RunMount::parse("type=$T,id=npm", &expand).unwrap();
        assert_eq!(m.kind, MountKind::Secret);
        let err = RunMount::parse("type=nfs", &plain).unwrap_err();
        assert!(err.contains("unknown mount type `nfs`"), "{err}");
    }

    #[test]
    fn bad_sharing_is_an_error() {
        let m = RunMount::parse("type=cache,target=/c,sharing=all", &plain).unwrap();
        assert!(m
            .sharing()
            .unwrap_err()
            .contains("unknown cache sharing `all`"));
    }
}

//! Image references with Docker's normalisation (`busybox` → `docker.io/library/busybox:latest`).

use std::fmt;
use std::str::FromStr;

use crate::{digest, RegistryError};

const DOCKER_HUB: &str = "docker.io";
const MAX_NAME_LEN: usize = 255;

/// A fully normalised image reference: `registry/repository[:tag][@digest]`.
///
/// A reference with neither tag nor digest gets the tag `latest`, as Docker does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`, `[::1]:5000`, `localhost`
    pub registry: String,
    /// `library/busybox`, `user/app`
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`
    pub digest: Option<String>,
}

impl Reference {
    /// Parses and normalises a reference as `docker pull` does.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let bad = |reason: &str| RegistryError::InvalidReference {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(&format!("it contains the character {c:?}")));
        }

        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                let d = digest::validate(d).map_err(|e| bad(&e.to_string()))?;
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };

        // A colon after the last slash separates the tag; earlier colons belong to a port.
        let last_slash = name_tag.rfind('/');
        let (name, tag) = match name_tag.rfind(':') {
            Some(i) if last_slash.is_none_or(|j| i > j) => {
                (&name_tag[..i], Some(&name_tag[i + 1..]))
            }
            _ => (name_tag, None),
        };
        if name.is_empty() {
            return Err(bad("the name before the tag or digest is empty"));
        }
        if let Some(t) = tag {
            validate_tag(t).map_err(|r| bad(&r))?;
        }

        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if looks_like_host(first) => (first, rest),
            _ => (DOCKER_HUB, name),
        };
        let registry = match registry {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
            r => r,
        };
        validate_host(registry).map_err(|r| bad(&r))?;
        validate_path(path).map_err(|r| bad(&r))?;
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(bad(&format!(
                "the name is longer than {MAX_NAME_LEN} characters"
            )));
        }

        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository[:tag][@digest]`, the same as `Display`.
    pub fn full_name(&self) -> String {
        self.to_string()
    }

    /// The same image pinned to `d` (the tag is kept for display).
    pub fn with_digest(&self, d: &str) -> Self {
        Reference {
            digest: Some(d.to_string()),
            ..self.clone()
        }
    }

    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// What the manifest endpoint is asked for: the digest when pinned, else the tag.
    pub(crate) fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .unwrap_or_else(|| self.tag_or_latest())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// Docker's rule: the first component is a host when it has a `.` or `:`, is `localhost`, or has
/// upper case (which a repository never may).
fn looks_like_host(first: &str) -> bool {
    first.contains('.')
        || first.contains(':')
        || first == "localhost"
        || first.chars().any(|c| c.is_ascii_uppercase())
}

fn validate_tag(t: &str) -> Result<(), String> {
    let mut chars = t.chars();
    let ok_first = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok_first
        || t.len() > 128
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(format!(
            "tag `{t}` is invalid (1-128 characters of A-Z a-z 0-9 _ . -, not starting with . or -)"
        ));
    }
    Ok(())
}

fn validate_host(h: &str) -> Result<(), String> {
    let bad =
        || format!("registry host `{h}` is invalid (expected `host[:port]` or `[ipv6][:port]`)");
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or_else(bad)?;
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(bad());
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        (None, port)
    } else {
        match h.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(h), None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
    }
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || !host.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), String> {
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("repository name `{path}` must be lowercase"));
    }
    for comp in path.split('/') {
        if !component_ok(comp) {
            return Err(format!(
                "path component `{comp}` is invalid (lowercase a-z 0-9, separated inside by one `.`, \
                 one or two `_`, or any number of `-`)"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn component_ok(comp: &str) -> bool {
    let b = comp.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &comp[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn r(reg: &str, repo: &str, tag: Option<&str>, digest: Option<&str>) -> Reference {
        Reference {
            registry: reg.into(),
            repository: repo.into(),
            tag: tag.map(Into::into),
            digest: digest.map(Into::into),
        }
    }

    #[test]
    fn parses_the_table() {
        let table: Vec<(String, Reference)> = vec![
            (
                "busybox".into(),
                r("docker.io", "library/busybox", Some("latest"), None),
            ),
            (
                "busybox:1.36".into(),
                r("docker.io", "library/busybox", Some("1.36"), None),
            ),
            (
                "user/app".into(),
                r("docker.io", "user/app", Some("latest"), None),
            ),
            (
                "docker.io/busybox".into(),
                r("docker.io", "library/busybox", Some("latest"), None),
            ),
            (
                "index.docker.io/user/app:v1".into(),
                r("docker.io", "user/app", Some("v1"), None),
            ),
            (
                "ghcr.io/org/team/app:1.0".into(),
                r("ghcr.io", "org/team/app", Some("1.0"), None),
            ),
            (
                "localhost/x".into(),
                r("localhost", "x", Some("latest"), None),
            ),
            (
                "localhost:5000/x:t".into(),
                r("localhost:5000", "x", Some("t"), None),
            ),
            (
                "127.0.0.1:5000/a/b".into(),
                r("127.0.0.1:5000", "a/b", Some("latest"), None),
            ),
            (
                "[::1]:5000/a:v".into(),
                r("[::1]:5000", "a", Some("v"), None),
            ),
            ("[::1]/a".into(), r("[::1]", "a", Some("latest"), None)),
            (
                format!("alpine@{D}"),
                r("docker.io", "library/alpine", None, Some(D)),
            ),
            (
                format!("alpine:3.20@{D}"),
                r("docker.io", "library/alpine", Some("3.20"), Some(D)),
            ),
            (
                format!("reg.io:443/a/b:c@{D}"),
                r("reg.io:443", "a/b", Some("c"), Some(D)),
            ),
            (
                "user/a__b.c-d---e_f".into(),
                r("docker.io", "user/a__b.c-d---e_f", Some("latest"), None),
            ),
            (
                "my-reg.example.com/e".into(),
                r("my-reg.example.com", "e", Some("latest"), None),
            ),
            (
                "localhost:5000".into(),
                r("docker.io", "library/localhost", Some("5000"), None),
            ),
            (
                "MyHost/app".into(),
                r("MyHost", "app", Some("latest"), None),
            ),
            (
                "x:_tag.1-A".into(),
                r("docker.io", "library/x", Some("_tag.1-A"), None),
            ),
        ];
        for (input, want) in table {
            let got = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got, want, "{input}");
            // Display is a fixed point of parse.
            assert_eq!(
                Reference::parse(&got.to_string()).ok(),
                Some(got.clone()),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_invalid_references_with_reasons() {
        let long = format!("a/{}", "b".repeat(300));
        let table: Vec<(&str, &str)> = vec![
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("user/App", "lowercase"),
            ("busybox:", "tag ``"),
            ("busybox:-x", "tag `-x`"),
            ("busybox:a/b", "path component"),
            ("a//b", "path component ``"),
            ("a/b_", "path component `b_`"),
            ("a/b___c", "path component"),
            ("busybox@sha256:abc", "64 hex"),
            ("busybox@md5:abc", "unsupported algorithm"),
            ("bad host.io/x", "character"),
            ("host.io:99999999/x", "registry host"),
            ("host-.io/x", "registry host"),
            ("a.b_c/x", "registry host"),
            ("[zz]:5000/x", "registry host"),
            (":tag", "empty"),
            (
                "@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "empty",
            ),
            (&long, "longer than 255"),
        ];
        for (input, needle) in table {
            match Reference::parse(input) {
                Ok(r) => panic!("{input:?} accepted as {r}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(needle), "{input:?}: {msg}");
                    assert!(msg.contains(&format!("`{input}`")), "{msg}");
                }
            }
        }
    }

    #[test]
    fn helpers() {
        let a = Reference::parse("busybox").unwrap();
        assert_eq!(a.full_name(), "docker.io/library/busybox:latest");
        assert_eq!(a.manifest_ref(), "latest");
        let p = a.with_digest(D);
        assert_eq!(
            p.full_name(),
            format!("docker.io/library/busybox:latest@{D}")
        );
        assert_eq!(p.manifest_ref(), D);
        let d = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(d.tag_or_latest(), "latest");
        let f: Reference = "user/app:v2".parse().unwrap();
        assert_eq!(f.tag_or_latest(), "v2");
    }
}

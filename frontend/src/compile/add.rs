//! The parts of `COPY`/`ADD` that are compiled as BuildKit does them: `ADD` of an http(s) URL (an
//! http source op that downloads one file, copied like any source), `--checksum`, and the
//! `--parents` split of a source into the directory copied and the include pattern kept.

use kiln_llb::{op, KeyValue, Op, SourceOp};

/// Source attribute: the name of the downloaded file (BuildKit's `http.filename`). Empty or
/// absent: the server's `Content-Disposition` name, else `__unnamed__`.
pub(crate) const HTTP_FILENAME: &str = "http.filename";
/// Source attribute: the digest the download must have (BuildKit's `http.checksum`).
pub(crate) const HTTP_CHECKSUM: &str = "http.checksum";

/// Whether an `ADD` source is a URL that is downloaded.
pub(crate) fn is_http_url(src: &str) -> bool {
    let lower = src.get(..8).unwrap_or(src).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// The file name BuildKit gives a URL's download: the last component of its path, if any.
pub(crate) fn url_filename(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    let base = path.rsplit('/').next().unwrap_or("");
    if base.is_empty() || base == "." || base == ".." {
        None
    } else {
        Some(base.to_string())
    }
}

/// Checks a `--checksum` value: `sha256:`, `sha384:` or `sha512:` and the right number of hex
/// digits.
pub(crate) fn validate_checksum(value: &str) -> Result<(), String> {
    let Some((algo, hex)) = value.split_once(':') else {
        return Err(format!(
            "`--checksum={value}` is not a digest: write `--checksum=sha256:<64 hex digits>`"
        ));
    };
    let len = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => {
            return Err(format!(
                "`--checksum={value}`: unsupported digest algorithm `{algo}`; use `sha256`, `sha384` or `sha512`"
            ))
        }
    };
    if hex.len() != len
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "`--checksum={value}`: a `{algo}` digest is {len} lowercase hex digits"
        ));
    }
    Ok(())
}

/// Whether a `# syntax=` image is one of BuildKit's own Dockerfile frontends
/// (`docker/dockerfile[-upstream]` at any tag or digest), whose language kiln implements itself.
pub(crate) fn is_builtin_syntax(image: &str) -> bool {
    let name = image.trim();
    let name = name.split('@').next().unwrap_or(name);
    // Strip a tag (a `:` after the last `/`).
    let name = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    };
    let name = name
        .strip_prefix("docker.io/")
        .or_else(|| name.strip_prefix("index.docker.io/"))
        .unwrap_or(name);
    matches!(name, "docker/dockerfile" | "docker/dockerfile-upstream")
}

/// The http source op of `ADD <url>`.
pub(crate) fn http_source(url: &str, filename: Option<&str>, checksum: Option<&str>) -> Op {
    let mut attrs = Vec::new();
    if let Some(c) = checksum {
        attrs.push(KeyValue {
            key: HTTP_CHECKSUM.into(),
            value: c.into(),
        });
    }
    if let Some(f) = filename {
        attrs.push(KeyValue {
            key: HTTP_FILENAME.into(),
            value: f.into(),
        });
    }
    attrs.sort();
    Op {
        inputs: vec![],
        kind: Some(op::Kind::Source(SourceOp {
            identifier: url.to_string(),
            attrs,
        })),
    }
}

/// `COPY --parents SRC`: the directory the copy starts from and the include pattern below it.
/// A `/./` in the source is BuildKit's pivot: only the part after it is kept in the destination.
pub(crate) fn parents_split(src: &str) -> (String, String) {
    let (dir, pattern) = match src.find("/./") {
        Some(i) => (&src[..i], &src[i + 3..]),
        None => ("/", src),
    };
    let pattern = pattern
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/");
    (dir.to_string(), pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_filenames_as_buildkit_names_them() {
        assert_eq!(
            url_filename("https://example.com/a/b/file.tar.gz?x=1").as_deref(),
            Some("file.tar.gz")
        );
        assert_eq!(url_filename("http://example.com/").as_deref(), None);
        assert_eq!(url_filename("http://example.com").as_deref(), None);
        assert!(is_http_url("HTTPS://x/y"));
        assert!(!is_http_url("./http"));
    }

    #[test]
    fn checksums_are_checked() {
        let ok = format!("sha256:{}", "a".repeat(64));
        assert!(validate_checksum(&ok).is_ok());
        assert!(validate_checksum("sha256:abc")
            .unwrap_err()
            .contains("64 lowercase hex"));
        assert!(validate_checksum("md5:abc").unwrap_err().contains("`md5`"));
        assert!(validate_checksum("abc")
            .unwrap_err()
            .contains("not a digest"));
    }

    #[test]
    fn only_the_dockerfile_frontend_images_are_builtin() {
        for ok in [
            "docker/dockerfile:1",
            "docker/dockerfile:1.7-labs",
            "docker.io/docker/dockerfile:1@sha256:abc",
            "docker/dockerfile",
            "docker/dockerfile-upstream:master",
        ] {
            assert!(is_builtin_syntax(ok), "{ok}");
        }
        for foreign in [
            "ghcr.io/x/frontend:1",
            "tonistiigi/dockerfile:x",
            "localhost:5000/docker/dockerfile2",
        ] {
            assert!(!is_builtin_syntax(foreign), "{foreign}");
        }
    }

    #[test]
    fn parents_pivot() {
        assert_eq!(parents_split("a/*/x.txt"), ("/".into(), "a/*/x.txt".into()));
        assert_eq!(parents_split("./a/./b/c"), ("./a".into(), "b/c".into()));
    }
}

//! `ADD` of a git repository, as BuildKit's Dockerfile frontend does it: which sources are git
//! references (`https://host/repo.git#ref:subdir`, `git://…`, `ssh://…`, `user@host:repo`), and
//! the `git://` source op they compile to, with BuildKit's identifier and attributes.

use kiln_llb::{attr, op, KeyValue, Op, SourceOp};

/// A git reference written as an `ADD` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GitRef {
    /// The remote as written, without the fragment (`https://host/repo.git`, `git@host:repo`).
    pub remote: String,
    /// Host (with port) and path of the remote, the stable part of the source's identifier.
    pub host_path: String,
    /// The branch, tag or commit after `#` (empty: the remote's default branch).
    pub commit: String,
    /// The directory after `#ref:` to take instead of the whole tree (empty: all of it).
    pub subdir: String,
}

/// Parses `src` as BuildKit's `gitutil.ParseGitRef` does; `None` when it is not a git reference
/// (an http(s) URL is one only when its path ends in `.git`; `scp`-like `host:path` needs a user).
pub(crate) fn parse(src: &str) -> Option<GitRef> {
    let (remote, fragment) = match src.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (src, None),
    };
    let host_path = if let Some((scheme, rest)) = remote.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        if !matches!(scheme.as_str(), "http" | "https" | "git" | "ssh") {
            return None;
        }
        let rest = rest.split('?').next().unwrap_or("");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = authority.rsplit('@').next().unwrap_or(authority);
        if host.is_empty() {
            return None;
        }
        if matches!(scheme.as_str(), "http" | "https") && !path.ends_with(".git") {
            return None;
        }
        format!("{host}{}", clean_abs(path))
    } else {
        // `user@host:path`: user and host as BuildKit's scp-style pattern allows them.
        let (user, rest) = remote.split_once('@')?;
        let (host, path) = rest.split_once(':')?;
        let user_ok = !user.is_empty()
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !user_ok || !host_ok || path.is_empty() {
            return None;
        }
        format!("{host}{}", clean_abs(path))
    };
    let (commit, subdir) = match fragment {
        None => (String::new(), String::new()),
        Some(f) => match f.split_once(':') {
            Some((c, s)) => (c.to_string(), s.to_string()),
            None => (f.to_string(), String::new()),
        },
    };
    Some(GitRef {
        remote: remote.to_string(),
        host_path,
        commit,
        subdir,
    })
}

/// `path.Join("/", p)` of Go: absolute, `.`/`..`/empty components resolved.
fn clean_abs(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

/// Source attribute: the commit (a hex prefix of it) the ref must resolve to, from
/// `ADD --checksum` (BuildKit's `git.checksum`).
pub(crate) const GIT_CHECKSUM: &str = "git.checksum";

/// Checks an `ADD --checksum` value for a git source: a commit hash or a prefix of one, in hex,
/// as BuildKit requires.
pub(crate) fn validate_checksum(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "invalid checksum `{value}` for a git source: expected hex commit hash (the commit \
             the ref names, or a prefix of it; `git rev-parse REF` prints it)"
        ));
    }
    Ok(())
}

/// The source op of a git reference: identifier `git://HOST/PATH#REF[:SUBDIR]`, the full remote
/// URL in `git.fullurl`, `git.keepgitdir` when `.git` is kept and `git.checksum` when the commit
/// is pinned.
pub(crate) fn source(r: &GitRef, keep_git_dir: bool, checksum: Option<&str>) -> Op {
    let mut identifier = format!("git://{}", r.host_path);
    let mut fragment = r.commit.clone();
    if !r.subdir.is_empty() {
        fragment.push(':');
        fragment.push_str(&r.subdir);
    }
    if !fragment.is_empty() {
        identifier.push('#');
        identifier.push_str(&fragment);
    }
    let mut attrs = vec![KeyValue {
        key: attr::GIT_FULL_URL.into(),
        value: r.remote.clone(),
    }];
    if keep_git_dir {
        attrs.push(KeyValue {
            key: attr::GIT_KEEP_DIR.into(),
            value: "true".into(),
        });
    }
    if let Some(c) = checksum {
        attrs.push(KeyValue {
            key: GIT_CHECKSUM.into(),
            value: c.to_ascii_lowercase(),
        });
    }
    attrs.sort();
    Op {
        inputs: vec![],
        kind: Some(op::Kind::Source(SourceOp { identifier, attrs })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_checksums_are_hex_commit_hashes() {
        assert!(validate_checksum("0123abcDEF").is_ok());
        assert!(validate_checksum(&"a".repeat(40)).is_ok());
        for bad in ["", "foobar", "sha256:abcd", &"a".repeat(65)] {
            let e = validate_checksum(bad).unwrap_err();
            assert!(e.contains("expected hex commit hash"), "{bad}: {e}");
        }
    }

    fn id(src: &str) -> Option<String> {
        parse(src).map(|r| match source(&r, false, None).kind {
            Some(op::Kind::Source(s)) => s.identifier,
            _ => String::new(),
        })
    }

    #[test]
    fn git_references_as_buildkit_parses_them() {
        assert_eq!(
            id("https://github.com/moby/buildkit.git#v0.10.1:docs").as_deref(),
            Some("git://github.com/moby/buildkit.git#v0.10.1:docs")
        );
        assert_eq!(
            id("http://127.0.0.1:8080/a/../repo.git").as_deref(),
            Some("git://127.0.0.1:8080/repo.git")
        );
        assert_eq!(
            id("git@github.com:moby/buildkit.git#main").as_deref(),
            Some("git://github.com/moby/buildkit.git#main")
        );
        assert_eq!(
            id("git://example.com/repo#:sub").as_deref(),
            Some("git://example.com/repo#:sub")
        );
        assert_eq!(
            id("ssh://git@example.com:2222/r.git").as_deref(),
            Some("git://example.com:2222/r.git")
        );
        let r = parse("https://h/r.git#abc:d/e").unwrap();
        assert_eq!(
            (r.remote.as_str(), r.commit.as_str(), r.subdir.as_str()),
            ("https://h/r.git", "abc", "d/e")
        );
    }

    #[test]
    fn local_paths_and_plain_urls_are_not_git() {
        for src in [
            "https://example.com/file.tar.gz",
            "https://example.com/repo",
            "foo:bar",
            "./repo.git",
            "repo.git",
            "dir/x.git#y",
            "ftp://example.com/repo.git",
            "@host:path",
            "user@:path",
        ] {
            assert_eq!(parse(src), None, "{src}");
        }
    }

    #[test]
    fn git_source_attributes_are_sorted_and_keep_the_full_url() {
        let op = source(&parse("https://h/r.git#main").unwrap(), true, None);
        let Some(op::Kind::Source(s)) = op.kind else {
            panic!("not a source");
        };
        let keys: Vec<_> = s.attrs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["git.fullurl", "git.keepgitdir"]);
        assert_eq!(s.attrs[0].value, "https://h/r.git");
    }
}

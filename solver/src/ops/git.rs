//! git sources (`ADD https://host/repo.git#ref:subdir`), run with the host's `git` as BuildKit
//! does: the ref is resolved to a commit (`git ls-remote`; a full commit hash is used as it is),
//! and the result is keyed by that commit, so a branch that moved re-runs the step and one that
//! did not is a cache hit without any fetch. On a miss the remote is fetched into a bare mirror
//! kept per remote under `$KILN_ROOT/git/` (fetched again, never re-cloned, on later builds) and
//! the commit is checked out into a new snapshot: the whole tree or only `subdir`, without `.git`
//! unless the source has `git.keepgitdir` (then `.git` is a shallow repository of that commit
//! whose `origin` is the remote, as BuildKit leaves it).

use super::{Inputs, Operation};
use crate::{Output, SolveError, VertexResult, VertexTask};
use futures::future::{BoxFuture, FutureExt};
use kiln_cache::{CachedResult, SnapshotId, Store};
use kiln_llb::{attr, SourceOp};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

/// Source attribute: the commit (a hex prefix of it) the ref must resolve to (`ADD --checksum`,
/// BuildKit's `git.checksum`).
const GIT_CHECKSUM: &str = "git.checksum";

/// `ADD --checksum` of a git source: the resolved commit must start with it, checked on every
/// build (cache hit or not) since a ref can move, as BuildKit checks it.
fn verify_checksum(want: &str, spec: &Spec, commit: &str) -> Result<(), SolveError> {
    if commit.starts_with(&want.to_ascii_lowercase()) {
        return Ok(());
    }
    Err(SolveError::Op(format!(
        "expected checksum to match {want}, got {commit}: `{}` of `{}` names another commit now; \
         update `--checksum` if the new commit is the one you want",
        if spec.reference.is_empty() {
            "HEAD"
        } else {
            &spec.reference
        },
        spec.url
    )))
}

/// Whether a source identifier is a git repository.
pub(crate) fn is_git(identifier: &str) -> bool {
    identifier.starts_with("git://")
}

/// What a git source asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    /// The remote git is given (`git.fullurl`, else `https://` and the identifier's host/path).
    url: String,
    /// Branch, tag or commit; empty for the remote's `HEAD`.
    reference: String,
    /// Directory of the tree to take, relative, cleaned; empty for the whole tree.
    subdir: String,
    keep_git_dir: bool,
}

fn attr_value<'a>(s: &'a SourceOp, key: &str) -> Option<&'a str> {
    s.attrs
        .iter()
        .find(|kv| kv.key == key && !kv.value.is_empty())
        .map(|kv| kv.value.as_str())
}

fn spec(s: &SourceOp) -> Result<Spec, SolveError> {
    let rest = s.identifier.strip_prefix("git://").unwrap_or(&s.identifier);
    let (remote, fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let url = match attr_value(s, attr::GIT_FULL_URL) {
        Some(u) => u.to_string(),
        None => format!("https://{remote}"),
    };
    spec_of(
        &s.identifier,
        url,
        reference,
        subdir,
        attr_value(s, attr::GIT_KEEP_DIR) == Some("true"),
    )
}

/// The [`Spec`] of a remote, ref and subdirectory; `shown` names the source in messages.
fn spec_of(
    shown: &str,
    url: String,
    reference: &str,
    subdir: &str,
    keep_git_dir: bool,
) -> Result<Spec, SolveError> {
    // git reads a leading `-` as an option: neither may be one.
    if url.starts_with('-') || reference.starts_with('-') {
        return Err(SolveError::Op(format!(
            "`{shown}` is not a git remote and ref: neither may start with `-`"
        )));
    }
    let mut parts = Vec::new();
    for c in subdir.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(SolveError::Op(format!(
                    "subdirectory `{subdir}` of `{url}` leaves the repository: remove the `..`"
                )))
            }
            c => parts.push(c),
        }
    }
    Ok(Spec {
        url,
        reference: reference.to_string(),
        subdir: parts.join("/"),
        keep_git_dir,
    })
}

/// Whether a build context argument names a git repository, by docker's rule: an `http(s)://`
/// URL whose path ends in `.git` (a `#ref:subdir` fragment may follow), or one starting with
/// `git://`, `git@` or `github.com/`.
pub fn is_git_context(arg: &str) -> bool {
    let remote = arg.split_once('#').map_or(arg, |(r, _)| r);
    let url = arg.starts_with("http://") || arg.starts_with("https://");
    (url && remote.ends_with(".git") && !arg.ends_with('#'))
        || ["git://", "git@", "github.com/"]
            .iter()
            .any(|p| arg.starts_with(p))
}

/// Checks out the git build context `arg` (`URL[#ref[:subdir]]`, see [`is_git_context`]) into
/// the empty directory `dest`: the ref (the remote's `HEAD` when none) is resolved and fetched
/// through the store's mirror of the remote, as for `ADD`, and the tree (or `subdir`) written
/// without `.git`, as BuildKit gives a git context. Returns the commit.
pub fn checkout_git_context(store: &Store, arg: &str, dest: &Path) -> Result<String, SolveError> {
    let (remote, fragment) = arg.split_once('#').unwrap_or((arg, ""));
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let url = match remote.strip_prefix("github.com/") {
        Some(path) => format!("https://github.com/{path}"),
        None => remote.to_string(),
    };
    let spec = spec_of(arg, url, reference, subdir, false)?;
    let resolved = resolve_or_fetch(store, &spec)?;
    let mirror = ensure_mirror(store, &spec.url)?;
    let lock = mirror_lock(&mirror);
    let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
    fetch(&mirror, &spec, Some(&resolved.commit))?;
    checkout(store, &mirror, &spec, &resolved, dest)?;
    Ok(resolved.commit)
}

/// Whether `r` is a full commit hash (sha1 or sha256 object format).
fn is_full_commit(r: &str) -> bool {
    (r.len() == 40 || r.len() == 64) && r.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A `git` command that never prompts and reports in a parseable language.
fn git() -> Command {
    let mut c = Command::new("git");
    c.env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        // A stalled transfer fails instead of hanging the build.
        .args(["-c", "http.lowSpeedLimit=1", "-c", "http.lowSpeedTime=60"])
        .args(["-c", "core.autocrlf=false"])
        .stdin(std::process::Stdio::null());
    if std::env::var_os("GIT_SSH_COMMAND").is_none() {
        c.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    c
}

/// Why a git command failed: git's own message, or that it could not be run.
enum GitFailure {
    NotInstalled,
    /// `git` could not be started.
    Spawn(std::io::Error),
    Failed(String),
}

/// Runs `cmd`, returning its stdout.
fn run(cmd: &mut Command) -> Result<String, GitFailure> {
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            GitFailure::NotInstalled
        } else {
            GitFailure::Spawn(e)
        }
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let msg = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Err(GitFailure::Failed(if msg.is_empty() {
            format!("`git` exited with {}", out.status)
        } else {
            msg
        }))
    }
}

/// Maps a failure to the user's error: `what` failed, and what to do.
fn failure(f: GitFailure, what: &str, hint: &str) -> SolveError {
    match f {
        GitFailure::NotInstalled => SolveError::Op(
            "`git` is not installed on this machine: install it (`apt-get install git`) to ADD \
             git repositories"
                .into(),
        ),
        GitFailure::Spawn(e) => SolveError::hinted(format!("{what}: cannot run `git`"), e, hint),
        GitFailure::Failed(msg) => SolveError::Op(format!("{what}: {msg}: {hint}")),
    }
}

/// A resolved ref: the commit, and the full ref name it came from (none for a commit hash).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    commit: String,
    refname: Option<String>,
}

/// Picks `reference` from `git ls-remote` output in git's own order (`R`, `refs/R`,
/// `refs/tags/R`, `refs/heads/R`), a tag's peeled commit (`^{}`) before the tag object.
fn pick_ref(listing: &str, reference: &str) -> Option<Resolved> {
    let refs: HashMap<&str, &str> = listing
        .lines()
        .filter_map(|l| {
            let (sha, name) = l.split_once('\t')?;
            Some((name.trim(), sha.trim()))
        })
        .collect();
    let reference = if reference.is_empty() {
        "HEAD"
    } else {
        reference
    };
    for base in [
        reference.to_string(),
        format!("refs/{reference}"),
        format!("refs/tags/{reference}"),
        format!("refs/heads/{reference}"),
    ] {
        let peeled = format!("{base}^{{}}");
        if let Some(sha) = refs
            .get(peeled.as_str())
            .or_else(|| refs.get(base.as_str()))
        {
            return Some(Resolved {
                commit: sha.to_string(),
                refname: (base != "HEAD").then_some(base),
            });
        }
    }
    None
}

/// The commit `spec.reference` names on the remote (no network for a full commit hash).
fn resolve(spec: &Spec) -> Result<Option<Resolved>, SolveError> {
    if is_full_commit(&spec.reference) {
        return Ok(Some(Resolved {
            commit: spec.reference.to_ascii_lowercase(),
            refname: None,
        }));
    }
    let listing = run(git().args(["ls-remote", &spec.url])).map_err(|f| {
        failure(
            f,
            &format!("cannot reach the git repository `{}`", spec.url),
            "check the URL, the network and your access to it",
        )
    })?;
    Ok(pick_ref(&listing, &spec.reference))
}

/// One lock per mirror: concurrent builds of this engine fetch into it one at a time.
fn mirror_lock(dir: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let locks = LOCKS.get_or_init(Default::default);
    let mut map = locks.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(dir.to_path_buf()).or_default().clone()
}

/// The bare mirror of `url` under the store, made on first use.
fn ensure_mirror(store: &Store, url: &str) -> Result<PathBuf, SolveError> {
    let base = store.root().join("git");
    let name = blake3::hash(url.as_bytes()).to_hex();
    let dir = base.join(&name.as_str()[..32]);
    if dir.join("HEAD").is_file() {
        return Ok(dir);
    }
    let io = SolveError::io(format!("git mirror `{}`", dir.display()));
    std::fs::create_dir_all(&base).map_err(&io)?;
    let tmp = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(&base)
        .map_err(&io)?;
    let init = |f| failure(f, "cannot make a git mirror", "check the store's disk");
    run(git().args(["init", "--bare", "--quiet"]).arg(tmp.path())).map_err(init)?;
    // Lets `--keep-git-dir` checkouts fetch a commit by hash from the mirror.
    run(git()
        .arg("-C")
        .arg(tmp.path())
        .args(["config", "uploadpack.allowAnySHA1InWant", "true"]))
    .map_err(init)?;
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join("HEAD").is_file() {
            return Err(io(e));
        }
    }
    Ok(dir)
}

fn has_commit(mirror: &Path, commit: &str) -> bool {
    run(git().arg("--git-dir").arg(mirror).args([
        "cat-file",
        "-e",
        &format!("{commit}^{{commit}}"),
    ]))
    .is_ok()
}

/// Fetches the remote's branches and tags into the mirror, then the commit itself when no ref
/// holds it; returns the commit (a short hash is expanded).
fn fetch(mirror: &Path, spec: &Spec, commit: Option<&str>) -> Result<String, SolveError> {
    if let Some(c) = commit {
        if has_commit(mirror, c) {
            return Ok(c.to_string());
        }
    }
    run(git()
        .arg("--git-dir")
        .arg(mirror)
        .args(["fetch", "--quiet", "--force", "--prune", "--no-tags"])
        .arg(&spec.url)
        .args(["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]))
    .map_err(|f| {
        failure(
            f,
            &format!("cannot fetch the git repository `{}`", spec.url),
            "check the URL, the network and your access to it",
        )
    })?;
    let wanted = commit.unwrap_or(&spec.reference);
    if !has_commit(mirror, wanted) && is_full_commit(wanted) {
        // Not on any branch or tag: some servers still serve it by hash.
        let _ = run(git()
            .arg("--git-dir")
            .arg(mirror)
            .args(["fetch", "--quiet", "--no-tags"])
            .arg(&spec.url)
            .arg(wanted));
    }
    run(git().arg("--git-dir").arg(mirror).args([
        "rev-parse",
        "--verify",
        "--quiet",
        &format!("{wanted}^{{commit}}"),
    ]))
    .map(|s| s.trim().to_string())
    .map_err(|_| unknown_ref(spec))
}

fn unknown_ref(spec: &Spec) -> SolveError {
    SolveError::Op(format!(
        "`{}` is not a branch, tag or commit of `{}`: check the ref after `#` (`git ls-remote {}` \
         lists them)",
        spec.reference, spec.url, spec.url
    ))
}

/// Checks out `commit` into the snapshot's directory.
fn checkout(
    store: &Store,
    mirror: &Path,
    spec: &Spec,
    resolved: &Resolved,
    dest: &Path,
) -> Result<(), SolveError> {
    let commit = resolved.commit.as_str();
    let fail = |f| {
        failure(
            f,
            &format!("cannot check out `{commit}` of `{}`", spec.url),
            "check the ref and subdirectory after `#`",
        )
    };
    if spec.keep_git_dir && spec.subdir.is_empty() {
        // A repository of its own with the commit checked out (detached), the ref it was asked
        // by kept as a local ref, and `origin` pointing at the remote, as BuildKit leaves it.
        run(git().args(["init", "--quiet"]).arg(dest)).map_err(fail)?;
        let refspec = match &resolved.refname {
            Some(r) if r.starts_with("refs/heads/") || r.starts_with("refs/tags/") => {
                format!("+{commit}:{r}")
            }
            _ => commit.to_string(),
        };
        let mirror_url = format!("file://{}", mirror.display());
        run(git().arg("-C").arg(dest).args([
            "fetch",
            "--quiet",
            "--no-tags",
            "--depth=1",
            &mirror_url,
            &refspec,
        ]))
        .map_err(fail)?;
        run(git()
            .arg("-C")
            .arg(dest)
            .args(["checkout", "--quiet", "--detach", commit]))
        .map_err(fail)?;
        run(git()
            .arg("-C")
            .arg(dest)
            .args(["remote", "add", "origin", &spec.url]))
        .map_err(fail)?;
        run(git()
            .arg("-C")
            .arg(dest)
            .args(["reflog", "expire", "--all", "--expire=now"]))
        .map_err(fail)?;
        return Ok(());
    }
    // The tree (or the subdirectory's tree) through a private index, so the mirror's own index
    // and HEAD are never touched and concurrent checkouts do not meet.
    let index_dir = tempfile::Builder::new()
        .prefix("git-index-")
        .tempdir_in(store.tmp_dir())
        .map_err(SolveError::io("cannot make a temp dir"))?;
    let tree = if spec.subdir.is_empty() {
        commit.to_string()
    } else {
        format!("{commit}:{}", spec.subdir)
    };
    let with_index = |c: &mut Command| {
        c.env("GIT_INDEX_FILE", index_dir.path().join("index"))
            .arg("--git-dir")
            .arg(mirror)
            .arg("--work-tree")
            .arg(dest);
    };
    let mut read = git();
    with_index(&mut read);
    // `REV:PATH^{tree}` would read `^{tree}` as part of the path: ask for the object's type.
    let kind = run(git()
        .arg("--git-dir")
        .arg(mirror)
        .args(["cat-file", "-t", &tree]));
    if !spec.subdir.is_empty() && kind.map(|k| k.trim() != "tree").unwrap_or(true) {
        return Err(SolveError::Op(format!(
            "`{}` is not a directory in commit `{commit}` of `{}`: check the path after `#{}:`",
            spec.subdir, spec.url, spec.reference
        )));
    }
    run(read.args(["read-tree", &tree])).map_err(fail)?;
    let mut co = git();
    with_index(&mut co);
    run(co.args(["checkout-index", "--all", "--force"])).map_err(fail)?;
    Ok(())
}

/// Makes the snapshot of a resolved source; removed again if anything fails.
fn materialize(store: &Store, spec: &Spec, resolved: &Resolved) -> Result<SnapshotId, SolveError> {
    let mirror = ensure_mirror(store, &spec.url)?;
    let lock = mirror_lock(&mirror);
    let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
    fetch(&mirror, spec, Some(&resolved.commit))?;
    let snaps = store.snapshots();
    let snap = snaps.create_mutable(None).map_err(SolveError::from)?;
    checkout(store, &mirror, spec, resolved, &snap.fs_dir())?;
    snaps.sync(snap.id()).map_err(SolveError::from)?;
    Ok(snap.commit())
}

/// Resolves the source's commit, fetching into the mirror when `ls-remote` does not name it (a
/// short commit hash).
fn resolve_or_fetch(store: &Store, spec: &Spec) -> Result<Resolved, SolveError> {
    if let Some(r) = resolve(spec)? {
        return Ok(r);
    }
    let looks_like_hash = spec.reference.len() >= 4
        && spec.reference.len() < 40
        && spec.reference.bytes().all(|b| b.is_ascii_hexdigit());
    if !looks_like_hash {
        return Err(unknown_ref(spec));
    }
    let mirror = ensure_mirror(store, &spec.url)?;
    let lock = mirror_lock(&mirror);
    let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
    let commit = fetch(&mirror, spec, None)?;
    Ok(Resolved {
        commit,
        refname: None,
    })
}

pub(super) struct Git<'a>(pub &'a SourceOp);

impl Operation for Git<'_> {
    /// Resolved on every build, then keyed by the commit.
    fn resolve<'a>(
        &'a self,
        v: &'a VertexTask,
        key: &'a str,
    ) -> Option<BoxFuture<'a, Result<Arc<VertexResult>, SolveError>>> {
        Some(super::run_fetched(v, fetch_commit(v, self.0, key)).boxed())
    }

    /// The checkout alone (the scheduler runs [`Operation::resolve`] instead).
    fn execute<'a>(
        &'a self,
        v: &'a VertexTask,
        inputs: &'a Inputs,
    ) -> BoxFuture<'a, Result<Output, SolveError>> {
        async move {
            let key = self.cache_key(v, inputs).await?;
            let (result, _cached) = fetch_commit(v, self.0, &key).await?;
            Ok(result.output)
        }
        .boxed()
    }
}

/// Resolves the source's ref and keys its result by the commit: the cached result when there is
/// one for that commit (`true`), else a new checkout, recorded.
async fn fetch_commit(
    v: &VertexTask,
    s: &SourceOp,
    key: &str,
) -> Result<(VertexResult, bool), SolveError> {
    let store = v.solver.inner.store.clone();
    let spec = spec(s)?;
    let (store2, spec2) = (store.clone(), spec.clone());
    let resolved = tokio::task::spawn_blocking(move || resolve_or_fetch(&store2, &spec2))
        .await
        .map_err(SolveError::from)??;
    if let Some(want) = attr_value(s, GIT_CHECKSUM) {
        verify_checksum(want, &spec, &resolved.commit)?;
    }
    let mut h = blake3::Hasher::new();
    h.update(b"kiln-git-v1\0");
    h.update(key.as_bytes());
    h.update(b"\0");
    h.update(resolved.commit.as_bytes());
    let commit_key = h.finalize().to_hex().to_string();
    if !v.meta.ignore_cache {
        if let Some(hit) = store.index().get(&commit_key).map_err(SolveError::from)? {
            if let Some(snap) = hit.snapshot {
                if store.snapshots().fs_dir(snap).is_dir() {
                    let r = VertexResult {
                        key: commit_key,
                        output: Output::Snapshot(snap),
                        created_unix: hit.created_unix,
                        fresh: false,
                    };
                    return Ok((r, true));
                }
            }
        }
    }
    let store2 = store.clone();
    let snap = tokio::task::spawn_blocking(move || materialize(&store2, &spec, &resolved))
        .await
        .map_err(SolveError::from)??;
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    store
        .index()
        .put(
            &commit_key,
            &CachedResult {
                snapshot: Some(snap),
                created_unix,
            },
        )
        .map_err(SolveError::from)?;
    Ok((
        VertexResult {
            key: commit_key,
            output: Output::Snapshot(snap),
            created_unix,
            fresh: v.meta.ignore_cache,
        },
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_llb::KeyValue;

    fn source(identifier: &str, attrs: &[(&str, &str)]) -> SourceOp {
        SourceOp {
            identifier: identifier.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| KeyValue {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn specs_read_the_identifier_and_attributes() {
        let s = spec(&source(
            "git://h/r.git#v1:a/./b/",
            &[
                ("git.fullurl", "http://h/r.git"),
                ("git.keepgitdir", "true"),
            ],
        ))
        .unwrap();
        assert_eq!(
            s,
            Spec {
                url: "http://h/r.git".into(),
                reference: "v1".into(),
                subdir: "a/b".into(),
                keep_git_dir: true,
            }
        );
        let s = spec(&source("git://h/r.git", &[])).unwrap();
        assert_eq!(
            (s.url.as_str(), s.reference.as_str()),
            ("https://h/r.git", "")
        );
        assert!(spec(&source("git://h/r.git#main:../x", &[])).is_err());
        assert!(spec(&source("git://h/r.git#--upload-pack=x", &[])).is_err());
    }

    #[test]
    fn refs_resolve_in_gits_order_with_peeled_tags() {
        let listing = "aaa\tHEAD\nbbb\trefs/heads/main\nccc\trefs/tags/v1\nddd\trefs/tags/v1^{}\n\
                       eee\trefs/heads/v1\nfff\trefs/tags/light\n";
        let commit = |r: &str| pick_ref(listing, r).map(|r| r.commit);
        assert_eq!(commit("").as_deref(), Some("aaa"));
        assert_eq!(commit("main").as_deref(), Some("bbb"));
        assert_eq!(commit("v1").as_deref(), Some("ddd"));
        assert_eq!(commit("light").as_deref(), Some("fff"));
        assert_eq!(commit("refs/heads/v1").as_deref(), Some("eee"));
        assert_eq!(commit("nope"), None);
        assert_eq!(
            pick_ref(listing, "main").and_then(|r| r.refname).as_deref(),
            Some("refs/heads/main")
        );
    }

    #[test]
    fn checksum_is_a_prefix_of_the_resolved_commit() {
        let spec = spec(&source("git://h/r.git#v1", &[])).unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert!(verify_checksum("0123ABCD", &spec, commit).is_err());
        assert!(verify_checksum("0123456789ABCDEF", &spec, commit).is_ok());
        assert!(verify_checksum(commit, &spec, commit).is_ok());
        let e = verify_checksum("fff", &spec, commit)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("expected checksum to match fff, got {commit}"))
                && e.contains("`v1` of `https://h/r.git`"),
            "{e}"
        );
    }

    #[test]
    fn git_contexts_are_recognised_by_dockers_rule() {
        for yes in [
            "https://example.com/repo.git",
            "http://127.0.0.1:8080/a/repo.git#main:sub/dir",
            "git://example.com/repo",
            "git@github.com:user/repo.git",
            "github.com/user/repo",
        ] {
            assert!(is_git_context(yes), "{yes}");
        }
        for no in [
            ".",
            "/srv/ctx",
            "https://example.com/ctx.tar.gz",
            "https://example.com/repo.git/file",
            "repo.git",
        ] {
            assert!(!is_git_context(no), "{no}");
        }
    }

    #[test]
    fn full_commit_hashes_are_recognised() {
        assert!(is_full_commit(&"a".repeat(40)));
        assert!(is_full_commit(&"0".repeat(64)));
        assert!(!is_full_commit("abc123"));
        assert!(!is_full_commit(&"g".repeat(40)));
    }
}

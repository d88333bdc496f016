//! The build context as the solver sees it (a directory filtered by `.dockerignore`), and the
//! image resolver the frontend uses to read base image configs (once per image per build, for
//! the build's platform).

use crate::BuildRequest;
use anyhow::{Context, Result};
use kiln_frontend::IgnoreMatcher;
use kiln_registry::{Platform, Reference};
use kiln_solver::{images, Solver};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A context directory with its `.dockerignore` rules.
pub(crate) struct ContextDir {
    root: PathBuf,
    matcher: IgnoreMatcher,
    /// The caller's vouched value with the rules (see [`BuildRequest::context_fingerprints`]).
    fingerprint: Option<[u8; 32]>,
}

impl ContextDir {
    pub(crate) fn new(
        root: PathBuf,
        patterns: &[String],
        vouched: Option<[u8; 32]>,
    ) -> Result<Self> {
        let matcher =
            IgnoreMatcher::new(patterns).map_err(|e| anyhow::anyhow!("`.dockerignore`: {e}"))?;
        let fingerprint = vouched.map(|v| {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(b"kiln-context-fingerprint-v1\0");
            h.update(v);
            for p in patterns {
                h.update((p.len() as u64).to_le_bytes());
                h.update(p.as_bytes());
            }
            h.finalize().into()
        });
        Ok(ContextDir {
            root,
            matcher,
            fingerprint,
        })
    }
}

/// The value the caller vouches for `dir` with (a canonical directory), if any.
pub(crate) fn vouched(fingerprints: &HashMap<PathBuf, [u8; 32]>, dir: &Path) -> Option<[u8; 32]> {
    fingerprints
        .iter()
        .find(|(given, _)| {
            given.as_path() == dir || given.canonicalize().ok().as_deref() == Some(dir)
        })
        .map(|(_, v)| *v)
}

impl kiln_solver::LocalContext for ContextDir {
    fn root(&self) -> &Path {
        &self.root
    }

    fn excluded(&self, rel: &str) -> bool {
        self.matcher.matches(rel)
    }

    fn may_reinclude(&self) -> bool {
        self.matcher.has_exceptions()
    }

    fn fingerprint(&self) -> Option<[u8; 32]> {
        self.fingerprint
    }
}

/// The `.dockerignore` patterns for a build: `<Dockerfile>.dockerignore` beside a custom
/// Dockerfile wins over the context's `.dockerignore`, as BuildKit does. `context` is the
/// context directory (canonical), `given` the context as the user named it; both files are
/// looked up inside the context as if it were `/` (see [`locate`]).
pub(crate) fn read_dockerignore(
    context: &Path,
    given: &Path,
    dockerfile: &Path,
) -> Result<Vec<String>> {
    let mut candidates = Vec::new();
    if let Some(name) = dockerfile.file_name() {
        let mut n = name.to_os_string();
        n.push(".dockerignore");
        candidates.push(dockerfile.with_file_name(n));
    }
    candidates.push(context.join(".dockerignore"));
    for c in candidates {
        let path = locate(context, given, &c)?;
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok(kiln_frontend::parse_dockerignore(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A link that leads nowhere in the context is refused rather than skipped: the
                // user meant some exclusions, and building without them would send what they
                // meant to keep out.
                if leads_out(&e, &c) {
                    anyhow::bail!(
                        "cannot read `{}`: its symlinks lead to `{}`, which is not in the build context (links in a build context resolve inside it): put the file itself in the context",
                        c.display(),
                        path.display()
                    );
                }
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", c.display())),
        }
    }
    Ok(vec![])
}

/// Where the build reads `path`, a file of its context directory (`context` canonical, `given`
/// as the user named it) or beside it: a path inside the context is resolved as if the context
/// were `/`, so no link in it can lead out. A path outside it (`-f ../Dockerfile`) names its
/// directory on the command line, and the file is resolved as if that directory were `/`, as
/// BuildKit reads a Dockerfile.
pub(crate) fn locate(context: &Path, given: &Path, path: &Path) -> Result<PathBuf> {
    let abs = lexical_absolute(path)?;
    let within = |root: &Path, rel: &Path| {
        kiln_solver::resolve_in_root(root, rel, true)
            .with_context(|| format!("cannot read `{}`", path.display()))
    };
    for root in [lexical_absolute(given)?, context.to_path_buf()] {
        if let Ok(rel) = abs.strip_prefix(&root) {
            return within(context, rel);
        }
    }
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => within(dir, Path::new(name)),
        _ => Ok(abs),
    }
}

/// Whether reading a file failed as missing only because its links were resolved inside the
/// context: looked up on the host as written, something is there.
fn leads_out(e: &std::io::Error, as_written: &Path) -> bool {
    e.kind() == std::io::ErrorKind::NotFound && std::fs::symlink_metadata(as_written).is_ok()
}

/// `path` made absolute against the current directory, `.` and `..` removed by name (not by
/// following links: which directory a path names is the question being answered).
fn lexical_absolute(path: &Path) -> Result<PathBuf> {
    use std::path::Component;
    let abs = std::path::absolute(path)
        .with_context(|| format!("cannot make `{}` absolute", path.display()))?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The platforms this host runs without emulation: its own, and 32-bit x86 on an amd64 host.
pub(crate) fn native_platforms(host: &Platform) -> Vec<Platform> {
    let mut native = vec![host.clone()];
    if host.os == "linux" && host.architecture == "amd64" {
        native.push(Platform {
            os: "linux".into(),
            architecture: "386".into(),
            variant: None,
        });
    }
    native
}

/// Whether this host runs programs made for `p` natively.
pub(crate) fn runs_natively(host: &Platform, p: &Platform) -> bool {
    native_platforms(host).iter().any(|n| n.matches(p))
}

/// Why this host cannot run programs made for `p`, natively or through a binfmt_misc emulator
/// that works inside the sandbox (one with the `F` flag); `None` when it can.
/// `binfmt` is where binfmt_misc lists its handlers ([`kiln_exec::binfmt_misc_dir`]).
pub(crate) fn cannot_run(host: &Platform, p: &Platform, binfmt: &Path) -> Option<String> {
    if runs_natively(host, p) {
        return None;
    }
    if p.os != host.os {
        return Some(format!(
            "this {host} host cannot run {p} programs (no emulator runs another OS's \
             programs); use an image made for {}",
            host.os
        ));
    }
    const INSTALL: &str =
        "install QEMU with `apt-get install qemu-user-static`, then register it with `kiln setup emulators` (as root)";
    match kiln_exec::emulation_for(binfmt, &p.architecture) {
        kiln_exec::Emulation::Ready { .. } => None,
        kiln_exec::Emulation::NotFixBinary { handler } => Some(format!(
            "this {host} host cannot run {p} programs in a sandbox: its binfmt_misc handler \
             `{handler}` lacks the `F` (fix-binary) flag, so its interpreter is looked for inside \
             the image; register it again with `kiln setup emulators` (as root)"
        )),
        kiln_exec::Emulation::Missing => Some(format!(
            "this {host} host cannot run {p} programs: no emulator for {p} is registered with \
             binfmt_misc; {INSTALL}"
        )),
        kiln_exec::Emulation::UnknownArchitecture => Some(format!(
            "this {host} host cannot run {p} programs: kiln knows no emulator for the \
             architecture `{}`",
            p.architecture
        )),
    }
}

/// Refuses a build whose `RUN` steps are for a platform this host cannot run, natively or
/// through a registered emulator, before any step starts: running them would fail with
/// `exec format error` (or run the host's binaries). Steps without `RUN` (COPY, config) build
/// for any platform, as in BuildKit.
pub(crate) fn check_runs(
    runs: &[kiln_frontend::RunStep],
    dockerfile_name: &str,
    host: &Platform,
    binfmt: &Path,
) -> Result<()> {
    let mut checked: Vec<Platform> = Vec::new();
    for r in runs {
        let p = Platform::parse(&r.platform)
            .with_context(|| format!("{dockerfile_name}:{}: RUN", r.line))?;
        if checked.contains(&p) {
            continue;
        }
        if let Some(why) = cannot_run(host, &p, binfmt) {
            anyhow::bail!(
                "{dockerfile_name}:{}: RUN for {p}: {why}; or build for {host}",
                r.line
            );
        }
        checked.push(p);
    }
    Ok(())
}

/// An image config's platform, when it names one.
fn config_platform(config: &oci_spec::image::ImageConfiguration) -> Option<Platform> {
    let architecture = config.architecture().to_string();
    let os = config.os().to_string();
    if architecture.is_empty() || os.is_empty() {
        return None;
    }
    Some(Platform {
        os,
        architecture,
        variant: config.variant().clone(),
    })
}

/// The frontend's `(os, arch[/variant])` for a platform.
pub(crate) fn frontend_platform(p: &Platform) -> (String, String) {
    let arch = match &p.variant {
        Some(v) => format!("{}/{v}", p.architecture),
        None => p.architecture.clone(),
    };
    (p.os.clone(), arch)
}

/// Resolves base images for the frontend, for one build: the local store first (unless
/// `--pull`), then the registry, picking the build's platform from indexes. Each image is
/// resolved once per build however it is spelled (`FROM x`, `FROM x:latest`, `COPY --from=x`,
/// `docker-image://x`), so every use sees the same digest and a tag costs one registry
/// round-trip. Called from a blocking thread, so it may wait on the runtime.
pub(crate) struct StoreResolver {
    solver: Solver,
    handle: tokio::runtime::Handle,
    platform: Platform,
    pull: bool,
    /// Normalised reference and platform → what it resolved to in this build (shared by the
    /// resolvers of every target platform).
    resolved: Arc<Mutex<HashMap<String, kiln_frontend::ResolvedImage>>>,
}

impl StoreResolver {
    pub(crate) fn new(
        solver: Solver,
        handle: tokio::runtime::Handle,
        platform: Platform,
        pull: bool,
    ) -> Self {
        StoreResolver {
            solver,
            handle,
            platform,
            pull,
            resolved: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// This build's resolver for another target platform: the same answers for the same
    /// (name, platform), so every platform's `FROM --platform=$BUILDPLATFORM x` sees one digest.
    pub(crate) fn for_platform(&self, platform: Platform) -> StoreResolver {
        StoreResolver {
            solver: self.solver.clone(),
            handle: self.handle.clone(),
            platform,
            pull: self.pull,
            resolved: self.resolved.clone(),
        }
    }

    fn resolve_uncached(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<kiln_frontend::ResolvedImage, String> {
        let solver = &self.solver;
        let lookup = if self.pull {
            images::Lookup::Remote
        } else {
            images::Lookup::LocalForPlatform
        };
        let image = self
            .handle
            .block_on(images::resolve_image_with(
                solver.store(),
                solver.registry(),
                platform,
                reference,
                lookup,
            ))
            .map_err(|e| e.chain_text())?;
        // A single-platform image is never taken for another platform (BuildKit refuses too):
        // its files would run, or be shipped, under a config that lies about them.
        if let Some(made_for) = config_platform(&image.config) {
            if !platform.matches(&made_for) {
                return Err(format!(
                    "`{}` is an image for {made_for} only, not {platform}; build for \
                     {made_for}, or use an image that has a {platform} variant",
                    image.name
                ));
            }
        }
        // The raw config keeps what oci-spec drops (`OnBuild`, `Healthcheck`, `Shell`).
        let config_digest = image.manifest.config().digest().to_string();
        let raw_config = solver
            .store()
            .content()
            .read(&config_digest)
            .map_err(|e| format!("cannot read the config of `{reference}`: {e}"))
            .and_then(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| {
                    format!("the config of `{reference}` ({config_digest}) is not JSON: {e}")
                })
            })?;
        Ok(kiln_frontend::ResolvedImage {
            reference: format!("{}@{}", image.name, image.manifest_digest),
            config: image.config,
            raw_config,
        })
    }
}

impl StoreResolver {
    /// One resolution per (normalised name, platform) per build.
    fn resolve_cached(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<kiln_frontend::ResolvedImage, String> {
        // An invalid name is not cached: resolve_image_with words its error.
        let name = Reference::parse(reference)
            .map(|r| r.to_string())
            .unwrap_or_else(|_| reference.to_string());
        let key = format!("{name} {platform}");
        let mut cache = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = cache.get(&key) {
            return Ok(hit.clone());
        }
        // The lock is held while resolving: the frontend resolves one image at a time anyway,
        // and two callers of the same name must not both ask the registry.
        let image = self.resolve_uncached(reference, platform)?;
        cache.insert(key, image.clone());
        Ok(image)
    }
}

impl kiln_frontend::ImageResolver for StoreResolver {
    fn resolve(&self, reference: &str) -> Result<kiln_frontend::ResolvedImage, String> {
        self.resolve_cached(reference, &self.platform)
    }

    fn resolve_for_platform(
        &self,
        reference: &str,
        platform: &str,
    ) -> Result<kiln_frontend::ResolvedImage, String> {
        let platform = Platform::parse(platform).map_err(|e| e.to_string())?;
        self.resolve_cached(reference, &platform)
    }
}

/// Named build contexts (`--build-context NAME=VALUE`) as the frontend and the solver see them.
#[derive(Default)]
pub(crate) struct NamedContexts {
    /// For `BuildOptions::named_contexts`.
    pub contexts: std::collections::BTreeMap<String, kiln_frontend::NamedContext>,
    /// The local directories among them, by their `local://` name.
    pub locals: std::collections::HashMap<String, std::sync::Arc<dyn kiln_solver::LocalContext>>,
}

/// Reads `--build-context` values: `docker-image://REF` or a local directory. A local directory's
/// own `.dockerignore` applies to it.
pub(crate) fn named_contexts(
    specs: &[(String, String)],
    fingerprints: &HashMap<PathBuf, [u8; 32]>,
) -> Result<NamedContexts> {
    let mut out = NamedContexts::default();
    for (name, value) in specs {
        if name.is_empty() {
            anyhow::bail!(
                "`--build-context ={value}` has no name: write `--build-context NAME=VALUE`"
            );
        }
        if out.contexts.contains_key(name) {
            anyhow::bail!("`--build-context {name}=...` is given twice: keep one");
        }
        if let Some(reference) = value.strip_prefix("docker-image://") {
            if reference.is_empty() {
                anyhow::bail!(
                    "`--build-context {name}={value}` names no image: write `docker-image://alpine:3.20`"
                );
            }
            out.contexts.insert(
                name.clone(),
                kiln_frontend::NamedContext::Image(reference.to_string()),
            );
            continue;
        }
        if let Some((scheme, _)) = value.split_once("://") {
            anyhow::bail!(
                "`--build-context {name}={value}`: `{scheme}://` contexts are not supported: use \
                 a local directory or `docker-image://REF`"
            );
        }
        let dir = Path::new(value).canonicalize().with_context(|| {
            format!("`--build-context {name}={value}`: the directory does not exist")
        })?;
        if !dir.is_dir() {
            anyhow::bail!("`--build-context {name}={value}`: not a directory");
        }
        let patterns = read_dockerignore(&dir, &dir, &dir.join("Dockerfile"))?;
        let local = format!("named:{name}");
        out.locals.insert(
            local.clone(),
            std::sync::Arc::new(ContextDir::new(
                dir.clone(),
                &patterns,
                vouched(fingerprints, &dir),
            )?),
        );
        out.contexts
            .insert(name.clone(), kiln_frontend::NamedContext::Local(local));
    }
    Ok(out)
}

/// `NAME=VALUE` of a `--build-context` flag.
pub fn parse_build_context(spec: &str) -> Result<(String, String)> {
    match spec.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => anyhow::bail!(
            "`--build-context {spec}`: expected `NAME=PATH` or `NAME=docker-image://REF`"
        ),
    }
}

/// The build context directory of `req`, canonical; it must exist.
pub(crate) fn context_dir(req: &BuildRequest) -> Result<PathBuf> {
    req.context.canonicalize().with_context(|| {
        format!(
            "build context `{}` does not exist: pass an existing directory",
            req.context.display()
        )
    })
}

/// The Dockerfile of `req` (`-f`, else `Dockerfile` in `context_dir`) and its text. Inside the
/// context it is looked up as if the context were `/` (see [`locate`]).
pub(crate) fn read_dockerfile(req: &BuildRequest, context_dir: &Path) -> Result<(PathBuf, String)> {
    let dockerfile = req
        .dockerfile
        .clone()
        .unwrap_or_else(|| context_dir.join("Dockerfile"));
    let path = locate(context_dir, &req.context, &dockerfile)?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        let led = if leads_out(&e, &dockerfile) {
            format!(
                " (its symlinks lead to `{}`: links resolve inside the build context, or inside the Dockerfile's directory when it is elsewhere)",
                path.display()
            )
        } else {
            String::new()
        };
        anyhow::Error::new(e).context(format!(
            "cannot read `{}`{led}: pass the Dockerfile with `-f` or put one in the context",
            dockerfile.display()
        ))
    })?;
    Ok((dockerfile, text))
}

/// A git build context checked out for one build, under the store's temp dir; removed when
/// dropped.
pub(crate) struct GitCheckout {
    dir: PathBuf,
}

impl Drop for GitCheckout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// When `req.context` names a git repository (`https://host/repo.git#ref:subdir`, as `docker
/// build` takes it), checks it out and returns the request with the context pointing at the
/// checkout (and a relative `-f` read inside it, as docker reads it), with the checkout's guard;
/// otherwise the request unchanged.
pub(crate) async fn git_context(
    store: &kiln_cache::Store,
    mut req: BuildRequest,
) -> Result<(BuildRequest, Option<GitCheckout>)> {
    let Some(arg) = req
        .context
        .to_str()
        .filter(|a| kiln_solver::is_git_context(a))
    else {
        return Ok((req, None));
    };
    let arg = arg.to_string();
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = store
        .tmp_dir()
        .join(format!("git-context-{}-{seq}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot make `{}` for the git context", dir.display()))?;
    let guard = GitCheckout { dir: dir.clone() };
    let store = store.clone();
    let dest = dir.clone();
    let shown = arg.clone();
    tokio::task::spawn_blocking(move || kiln_solver::checkout_git_context(&store, &arg, &dest))
        .await?
        .with_context(|| format!("cannot check out the git build context `{shown}`"))?;
    if let Some(f) = req.dockerfile.take() {
        req.dockerfile = Some(if f.is_relative() { dir.join(f) } else { f });
    }
    req.context = dir;
    Ok((req, Some(guard)))
}

/// The file name of a Dockerfile path, as messages name it; `Dockerfile` when it has none.
pub(crate) fn dockerfile_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "Dockerfile".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_pass_for_native_platforms_and_registered_emulators_only() {
        let amd64 = Platform::parse("linux/amd64").unwrap();
        let run = |line, p: &str| kiln_frontend::RunStep {
            line,
            platform: p.into(),
        };
        let none_dir = tempfile::tempdir().unwrap();
        let none = none_dir.path();
        let ok = [
            run(2, "linux/amd64"),
            run(3, "linux/386"),
            run(4, "linux/amd64/v2"),
        ];
        check_runs(&ok, "Dockerfile", &amd64, none).unwrap();
        let arm_runs = [run(2, "linux/amd64"), run(7, "linux/arm64")];
        let err = check_runs(&arm_runs, "Dockerfile", &amd64, none)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "Dockerfile:7: RUN for linux/arm64: this linux/amd64 host cannot run linux/arm64 \
             programs: no emulator for linux/arm64 is registered with binfmt_misc; install QEMU \
             with `apt-get install qemu-user-static`, then register it with `kiln setup \
             emulators` (as root); or build for linux/amd64"
        );
        let handler = |flags: &str| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("qemu-aarch64"),
                format!(
                    "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n\
                     flags: {flags}\noffset 0\nmagic 7f454c460201010000000000000000000200b700\n\
                     mask ffffffffffffff00fffffffffffffffffeffffff\n"
                ),
            )
            .unwrap();
            dir
        };
        check_runs(&arm_runs, "Dockerfile", &amd64, handler("POCF").path()).unwrap();
        let err = check_runs(&arm_runs, "Dockerfile", &amd64, handler("OC").path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`qemu-aarch64` lacks the `F` (fix-binary) flag")
                && err.contains("`kiln setup emulators`"),
            "{err}"
        );
        let err = check_runs(&[run(3, "windows/amd64")], "Dockerfile", &amd64, none)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no emulator runs another OS's programs"),
            "{err}"
        );
        let arm64 = Platform::parse("linux/arm64").unwrap();
        check_runs(&[run(1, "linux/arm64/v8")], "Dockerfile", &arm64, none).unwrap();
        assert!(check_runs(&[run(1, "linux/386")], "Dockerfile", &arm64, none).is_err());
    }

    #[test]
    fn build_context_values() {
        let dir = tempfile_dir();
        let specs = vec![
            ("img".to_string(), "docker-image://alpine:3.20".to_string()),
            ("src".to_string(), dir.display().to_string()),
        ];
        let n = named_contexts(&specs, &HashMap::new()).unwrap();
        assert_eq!(
            n.contexts["img"],
            kiln_frontend::NamedContext::Image("alpine:3.20".into())
        );
        assert_eq!(
            n.contexts["src"],
            kiln_frontend::NamedContext::Local("named:src".into())
        );
        assert!(n.locals.contains_key("named:src"));
        let err = named_contexts(
            &[("x".into(), "git://example/repo".into())],
            &HashMap::new(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("not supported"), "{err}");
        let err = named_contexts(&[("x".into(), "/does/not/exist".into())], &HashMap::new())
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("does not exist"), "{err}");
        assert!(parse_build_context("a=b").is_ok());
        assert!(parse_build_context("a").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dockerfiles_and_dockerignores_resolve_inside_the_context() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let (ctx, host) = (t.path().join("ctx"), t.path().join("host"));
        std::fs::create_dir_all(ctx.join("sub")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("Dockerfile"), "FROM host").unwrap();
        symlink(host.join("Dockerfile"), ctx.join("Dockerfile")).unwrap();
        symlink(&host, ctx.join("hostdir")).unwrap();
        symlink("../../host/Dockerfile", ctx.join("sub/up")).unwrap();
        let inside = |p: &str| locate(&ctx, &ctx, &ctx.join(p)).unwrap();
        assert_eq!(
            inside("Dockerfile"),
            ctx.join(host.join("Dockerfile").strip_prefix("/").unwrap())
        );
        assert_eq!(inside("hostdir/Dockerfile"), inside("Dockerfile"));
        assert_eq!(inside("sub/up"), ctx.join("host/Dockerfile"));
        // Named through the context as the user spelled it (a link to it), the same.
        let alias = t.path().join("alias");
        symlink(&ctx, &alias).unwrap();
        assert_eq!(
            locate(&ctx, &alias, &alias.join("hostdir/Dockerfile")).unwrap(),
            inside("Dockerfile")
        );
        // Outside the context: inside the Dockerfile's own directory.
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        symlink(host.join("Dockerfile"), elsewhere.join("Dockerfile")).unwrap();
        let got = locate(&ctx, &ctx, &elsewhere.join("Dockerfile")).unwrap();
        assert!(got.starts_with(&elsewhere), "{}", got.display());
        assert_eq!(
            locate(&ctx, &ctx, &host.join("Dockerfile")).unwrap(),
            host.join("Dockerfile")
        );
        // A `.dockerignore` link out of the context is refused, one inside it read.
        symlink(host.join("Dockerfile"), ctx.join(".dockerignore")).unwrap();
        let err = read_dockerignore(&ctx, &ctx, &ctx.join("Dockerfile"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("its symlinks lead to"), "{err}");
        std::fs::remove_file(ctx.join(".dockerignore")).unwrap();
        std::fs::write(ctx.join("ignore.list"), "*.log\n").unwrap();
        symlink("/ignore.list", ctx.join(".dockerignore")).unwrap();
        assert_eq!(
            read_dockerignore(&ctx, &ctx, &ctx.join("Dockerfile")).unwrap(),
            vec!["*.log".to_string()]
        );
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-ctx-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

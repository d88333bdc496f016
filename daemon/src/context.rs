//! The build context as the solver sees it (a directory filtered by `.dockerignore`), and the
//! image resolver the frontend uses to read base image configs.

use anyhow::{Context, Result};
use kiln_frontend::IgnoreMatcher;
use kiln_solver::{images, Solver};
use std::path::{Path, PathBuf};

/// A context directory with its `.dockerignore` rules.
pub(crate) struct ContextDir {
    root: PathBuf,
    matcher: IgnoreMatcher,
}

impl ContextDir {
    pub(crate) fn new(root: PathBuf, patterns: &[String]) -> Result<Self> {
        let matcher =
            IgnoreMatcher::new(patterns).map_err(|e| anyhow::anyhow!("`.dockerignore`: {e}"))?;
        Ok(ContextDir { root, matcher })
    }
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
}

/// The `.dockerignore` patterns for a build: `<Dockerfile>.dockerignore` beside a custom
/// Dockerfile wins over the context's `.dockerignore`, as BuildKit does.
pub(crate) fn read_dockerignore(context: &Path, dockerfile: &Path) -> Result<Vec<String>> {
    let mut candidates = Vec::new();
    if let Some(name) = dockerfile.file_name() {
        let mut n = name.to_os_string();
        n.push(".dockerignore");
        candidates.push(dockerfile.with_file_name(n));
    }
    candidates.push(context.join(".dockerignore"));
    for c in candidates {
        match std::fs::read_to_string(&c) {
            Ok(text) => return Ok(kiln_frontend::parse_dockerignore(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", c.display())),
        }
    }
    Ok(vec![])
}

/// Resolves base images for the frontend: local store first, then the registry. Called from a
/// blocking thread, so it may wait on the runtime.
pub(crate) struct StoreResolver {
    pub solver: Solver,
    pub handle: tokio::runtime::Handle,
}

impl kiln_frontend::ImageResolver for StoreResolver {
    fn resolve(&self, reference: &str) -> Result<kiln_frontend::ResolvedImage, String> {
        let solver = &self.solver;
        let image = self
            .handle
            .block_on(images::resolve_image(
                solver.store(),
                solver.registry(),
                solver.platform(),
                reference,
                false,
            ))
            .map_err(|e| e.to_string())?;
        Ok(kiln_frontend::ResolvedImage {
            reference: format!("{}@{}", image.name, image.manifest_digest),
            config: image.config,
        })
    }
}

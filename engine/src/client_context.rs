//! What a `kiln --host` client reads of a build's contexts before it sends them: the Dockerfile
//! (found and read with the same rules and errors as an embedded build) and the `.dockerignore`
//! rules, so the client sends only what the build may read.

use crate::context::{context_dir, read_dockerfile, read_dockerignore};
use crate::BuildRequest;
use anyhow::{Context, Result};
use kiln_frontend::IgnoreMatcher;
use std::path::{Path, PathBuf};

/// A context's `.dockerignore` rules.
pub struct IgnoreRules(IgnoreMatcher);

impl IgnoreRules {
    fn new(patterns: &[String]) -> Result<IgnoreRules> {
        IgnoreMatcher::new(patterns)
            .map(IgnoreRules)
            .map_err(|e| anyhow::anyhow!("`.dockerignore`: {e}"))
    }

    /// Whether `rel` (relative, `/`-separated) is left out.
    pub fn excluded(&self, rel: &str) -> bool {
        self.0.matches(rel)
    }

    /// Whether an excluded directory may hold included paths (`!` patterns).
    pub fn may_reinclude(&self) -> bool {
        self.0.has_exceptions()
    }
}

/// Where the build's Dockerfile is, for the daemon.
pub enum ClientDockerfile {
    /// Inside the context, at this relative `/`-separated path (links resolved).
    InContext(String),
    /// Elsewhere: its file name, its text and the `NAME.dockerignore` beside it.
    Outside {
        name: String,
        text: String,
        dockerignore: Option<Vec<u8>>,
    },
}

/// The main context of a build as a client sends it.
pub struct ClientContext {
    /// The context directory, canonical.
    pub dir: PathBuf,
    pub dockerfile: ClientDockerfile,
    pub rules: IgnoreRules,
}

/// Reads the main context of `req` as an embedded build would (same errors), for a client.
pub fn client_context(req: &BuildRequest) -> Result<ClientContext> {
    let dir = context_dir(req)?;
    let (path, text) = read_dockerfile(req, &dir)?;
    let patterns = read_dockerignore(&dir, &req.context, &path)?;
    let dockerfile = match path.strip_prefix(&dir) {
        Ok(rel) => ClientDockerfile::InContext(slash_path(rel)?),
        Err(_) => {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("Dockerfile")
                .to_string();
            let beside = path.with_file_name(format!("{name}.dockerignore"));
            let dockerignore = match std::fs::read(&beside) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot read `{}`", beside.display()))
                }
            };
            ClientDockerfile::Outside {
                name,
                text,
                dockerignore,
            }
        }
    };
    Ok(ClientContext {
        dir,
        dockerfile,
        rules: IgnoreRules::new(&patterns)?,
    })
}

/// A `--build-context NAME=DIR` directory, canonical, with its own `.dockerignore` rules.
pub fn client_named_context(name: &str, value: &str) -> Result<(PathBuf, IgnoreRules)> {
    let dir = Path::new(value).canonicalize().with_context(|| {
        format!("`--build-context {name}={value}`: the directory does not exist")
    })?;
    if !dir.is_dir() {
        anyhow::bail!("`--build-context {name}={value}`: not a directory");
    }
    let patterns = read_dockerignore(&dir, &dir, &dir.join("Dockerfile"))?;
    Ok((dir, IgnoreRules::new(&patterns)?))
}

fn slash_path(rel: &Path) -> Result<String> {
    let s = rel
        .to_str()
        .with_context(|| format!("the Dockerfile path `{}` is not UTF-8", rel.display()))?;
    Ok(s.to_string())
}

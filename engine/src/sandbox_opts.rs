//! Build options for the sandbox: `--secret`, `--ssh` and `--network` as the CLI writes them,
//! parsed into what the solver takes.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::PathBuf;

/// Secrets by id. Its `Debug` never shows the bytes.
#[derive(Clone, Default)]
pub struct Secrets(pub HashMap<String, Vec<u8>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.0.keys().collect();
        ids.sort();
        write!(f, "Secrets({ids:?}, values redacted)")
    }
}

/// `id=x,src=FILE` | `id=x,env=VAR` | `id=x` (reads `$x`, as BuildKit does) →
/// `(id, bytes)`. `source=` and `type=file|env` are accepted as Docker writes them.
pub fn parse_secret(spec: &str) -> Result<(String, Vec<u8>)> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    let mut typ = None;
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').with_context(|| {
            format!("`--secret {spec}`: expected key=value pairs such as `id=token,src=token.txt`")
        })?;
        match k {
            "id" => id = Some(v.to_string()),
            "src" | "source" => src = Some(v.to_string()),
            "env" => env = Some(v.to_string()),
            "type" => typ = Some(v.to_string()),
            other => bail!("`--secret {spec}`: unknown key `{other}`; use `id`, `src` or `env`"),
        }
    }
    let id = id
        .filter(|i| !i.is_empty())
        .with_context(|| format!("`--secret {spec}`: `id=` is required"))?;
    let (src, env) = match typ.as_deref() {
        None => (src, env),
        Some("file") => (src.or(env), None),
        Some("env") => (None, env.or(src)),
        Some(other) => bail!("`--secret {spec}`: unknown type `{other}`; use `file` or `env`"),
    };
    let bytes = match (src, env) {
        (Some(_), Some(_)) => bail!("`--secret {spec}`: give `src=` or `env=`, not both"),
        (Some(path), None) => std::fs::read(&path).with_context(|| {
            format!("`--secret {spec}`: cannot read `{path}`; give an existing file")
        })?,
        (None, Some(var)) => std::env::var_os(&var)
            .with_context(|| {
                format!("`--secret {spec}`: environment variable `{var}` is not set")
            })?
            .into_encoded_bytes(),
        (None, None) => match std::env::var_os(&id) {
            Some(v) => v.into_encoded_bytes(),
            None => bail!(
                "`--secret {spec}`: give `src=FILE` or `env=VAR` (no environment variable `{id}` either)"
            ),
        },
    };
    Ok((id, bytes))
}

/// `default` | `default=SOCKET` | `id=SOCKET` (`id` alone uses `$SSH_AUTH_SOCK`) →
/// `(id, socket)`.
pub fn parse_ssh(spec: &str) -> Result<(String, PathBuf)> {
    let (id, path) = match spec.split_once('=') {
        Some((id, path)) => (id.to_string(), path.to_string()),
        None => {
            let sock = std::env::var("SSH_AUTH_SOCK").with_context(|| {
                format!("`--ssh {spec}`: `SSH_AUTH_SOCK` is not set; start an agent or write `--ssh {spec}=SOCKET`")
            })?;
            (spec.to_string(), sock)
        }
    };
    if id.is_empty() || path.is_empty() {
        bail!("`--ssh {spec}`: write `default`, `ID` or `ID=SOCKET`");
    }
    if path.contains(',') {
        bail!("`--ssh {spec}`: only one agent socket per id is supported");
    }
    Ok((id, PathBuf::from(path)))
}

/// `kiln build --network`: `default` and `host` keep the host network; `none` gives every step
/// a private network with only loopback. Returns whether it is `none`.
pub fn parse_network(spec: &str) -> Result<bool> {
    match spec {
        "default" | "host" => Ok(false),
        "none" => Ok(true),
        other => bail!("unknown network `{other}`: use `default`, `host` or `none`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_from_files_and_env() {
        let f = std::env::temp_dir().join(format!("kiln-secret-test-{}", std::process::id()));
        std::fs::write(&f, b"hunter2").unwrap();
        let parsed = parse_secret(&format!("id=tok,src={}", f.display()));
        let _ = std::fs::remove_file(&f);
        let (id, v) = parsed.unwrap();
        assert_eq!((id.as_str(), v.as_slice()), ("tok", &b"hunter2"[..]));
        std::env::set_var("KILN_TEST_SECRET_X", "abc");
        let (_, v) = parse_secret("id=x,env=KILN_TEST_SECRET_X").unwrap();
        assert_eq!(v, b"abc");
        assert!(parse_secret("src=/nope").is_err());
        assert!(parse_secret("id=a,src=/definitely/not/here").is_err());
        assert!(parse_secret("id=a,colour=red").is_err());
        let shown = format!(
            "{:?}",
            Secrets(HashMap::from([("a".into(), b"xyz".to_vec())]))
        );
        assert!(!shown.contains("xyz") && shown.contains("\"a\""), "{shown}");
    }

    #[test]
    fn ssh_and_network_specs() {
        assert_eq!(
            parse_ssh("default=/tmp/agent.sock").unwrap(),
            ("default".into(), PathBuf::from("/tmp/agent.sock"))
        );
        assert!(parse_ssh("=x").is_err());
        assert!(parse_network("none").unwrap());
        assert!(!parse_network("host").unwrap());
        assert!(parse_network("bridge").is_err());
    }
}

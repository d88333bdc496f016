//! `kiln build`'s flags as the user typed them, and the [`BuildRequest`] they make: one parser
//! for the embedded cli and the daemon, so both modes accept the same flags with the same errors.

use crate::{BuildRequest, OutputKind, OutputSpec};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The flags of one `kiln build`, unparsed.
#[derive(Clone, Debug, Default)]
pub struct BuildFlags {
    pub context: PathBuf,
    pub file: Option<PathBuf>,
    pub tags: Vec<String>,
    pub labels: Vec<String>,
    /// `KEY=VALUE`, or `KEY` to take it from the environment (see [`BuildFlags::request`]).
    pub build_args: Vec<String>,
    pub target: Option<String>,
    pub build_contexts: Vec<String>,
    pub outputs: Vec<String>,
    pub push: bool,
    pub no_cache: bool,
    pub pull: bool,
    pub platform: Option<String>,
    pub no_cache_filter: Vec<String>,
    pub cache_to: Vec<String>,
    pub cache_from: Vec<String>,
    pub secrets: Vec<String>,
    pub ssh: Vec<String>,
    pub network: String,
    pub runtime: String,
    pub memory: Option<String>,
    pub cpus: Option<String>,
    pub pids_limit: Option<String>,
    pub shm_size: Option<String>,
    pub ulimits: Vec<String>,
    pub add_hosts: Vec<String>,
}

impl BuildFlags {
    /// The engine's request. `SOURCE_DATE_EPOCH` and a `--build-arg KEY` without a value are
    /// looked up with `env` (the
    /// process environment for the embedded cli; the client's, resolved before it is sent, for
    /// the daemon, which never reads its own). `--secret` files and `--ssh` sockets are read
    /// here: a daemon clears those flags and fills the request's secrets from its client.
    pub fn request(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<BuildRequest> {
        let mut build_args = BTreeMap::new();
        for a in &self.build_args {
            match a.split_once('=') {
                Some((k, v)) => {
                    build_args.insert(k.to_string(), v.to_string());
                }
                None => {
                    if let Some(v) = env(a) {
                        build_args.insert(a.clone(), v);
                    }
                }
            }
        }
        let build_contexts = self
            .build_contexts
            .iter()
            .map(|c| crate::parse_build_context(c))
            .collect::<Result<Vec<_>>>()?;
        Ok(BuildRequest {
            context: self.context.clone(),
            dockerfile: self.file.clone(),
            build_args,
            target: self.target.clone(),
            tags: self.tags.clone(),
            outputs: self.parse_outputs()?,
            no_cache: self.no_cache,
            no_cache_filter: self.no_cache_filter.clone(),
            build_contexts,
            secrets: crate::Secrets(
                self.secrets
                    .iter()
                    .map(|s| crate::parse_secret(s))
                    .collect::<Result<_>>()?,
            ),
            ssh: self
                .ssh
                .iter()
                .map(|s| crate::parse_ssh(s))
                .collect::<Result<_>>()?,
            network_none: crate::parse_network(&self.network)?,
            runtime: self.runtime.parse()?,
            limits: kiln_exec::Limits {
                shm_size: self
                    .shm_size
                    .as_deref()
                    .map(kiln_exec::parse_shm_size)
                    .transpose()?,
                ulimits: self
                    .ulimits
                    .iter()
                    .map(|u| kiln_exec::parse_ulimit(u))
                    .collect::<Result<_, _>>()?,
                extra_hosts: self
                    .add_hosts
                    .iter()
                    .map(|h| kiln_exec::parse_add_host(h))
                    .collect::<Result<_, _>>()?,
                ..kiln_exec::Limits::parse(
                    self.memory.as_deref(),
                    self.cpus.as_deref(),
                    self.pids_limit.as_deref(),
                )?
            },
            pull: self.pull,
            platform: self.platform.clone(),
            labels: self
                .labels
                .iter()
                .map(|l| match l.split_once('=') {
                    Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                    _ => bail!("`--label {l}` is not KEY=VALUE"),
                })
                .collect::<Result<_>>()?,
            cache_from: self
                .cache_from
                .iter()
                .map(|s| crate::parse_cache_spec(s, false))
                .collect::<Result<_>>()?,
            cache_to: self
                .cache_to
                .iter()
                .map(|s| crate::parse_cache_spec(s, true))
                .collect::<Result<_>>()?,
            source_date_epoch: env("SOURCE_DATE_EPOCH"),
            // Only the daemon vouches for its directories; it adds them after.
            context_fingerprints: Default::default(),
        })
    }

    /// `--output` specs and the `--push` shortcut.
    fn parse_outputs(&self) -> Result<Vec<OutputSpec>> {
        let mut outputs = self
            .outputs
            .iter()
            .map(|o| OutputSpec::parse(o))
            .collect::<Result<Vec<_>>>()?;
        if self.push {
            if self.tags.is_empty() {
                bail!("`--push` needs a name to push to: add `-t REGISTRY/NAME[:TAG]`");
            }
            outputs.push(OutputSpec::new(OutputKind::Image {
                names: self.tags.clone(),
                push: true,
            }));
        }
        Ok(outputs)
    }
}

//! `RUN --mount`: a parsed [`RunMount`] compiled into an exec mount, its target resolved against
//! the working directory and its `from=` source added to the op's inputs.

use super::stage::CopySource;
use super::{Compiler, Dispatch};
use crate::ast::Instruction;
use crate::instructions::{MountKind, RunMount};
use crate::util::{clean_path, join_abs};
use crate::FrontendError;
use kiln_llb::{KeyValue, Mount};

impl Compiler<'_> {
    /// One `RUN --mount=type=...,target=...` as an exec mount; `from=` sources are added to
    /// `inputs`.
    pub(super) fn run_mount(
        &mut self,
        d: &Dispatch,
        instr: &Instruction,
        spec: &str,
        cwd: &str,
        inputs: &mut Vec<kiln_llb::Input>,
    ) -> Result<Mount, FrontendError> {
        // Not an UndefinedVar site: BuildKit checks no part of `RUN`.
        let expand = |v: &str| {
            crate::expand_word(v, &|n| d.lookup(n), self.df.escape).map_err(|e| e.to_string())
        };
        let m = RunMount::parse(spec, &expand).map_err(|msg| self.fail(instr, msg))?;
        let kind = m.kind.name();
        let id = m.id.clone();
        let target = match (m.kind, m.target.clone()) {
            (_, Some(t)) if !t.is_empty() => join_abs(cwd, &t),
            // BuildKit: with `env=` and no target the secret is only the variable, no file.
            (MountKind::Secret, None)
                if m.env.as_ref().is_some_and(|e| !e.is_empty())
                    && id.as_ref().is_some_and(|i| !i.is_empty()) =>
            {
                String::new()
            }
            (MountKind::Secret, None) => match &id {
                Some(id) if !id.is_empty() => format!("/run/secrets/{id}"),
                _ => {
                    return Err(self.fail(
                        instr,
                        "a secret mount needs an `id` or a `target`: write `--mount=type=secret,id=NAME`",
                    ))
                }
            },
            (MountKind::Ssh, None) => "/run/buildkit/ssh_agent.0".to_string(),
            _ => {
                return Err(self.fail(
                    instr,
                    format!("a `{kind}` mount needs a target: write `--mount=type={kind},target=/path`"),
                ))
            }
        };
        if target == "/" {
            return Err(self.fail(
                instr,
                "a mount cannot target `/`: choose a directory below it",
            ));
        }
        let source = m.source.clone();
        let mut from_input =
            |this: &mut Self, default_context: bool| -> Result<i64, FrontendError> {
                let src_ref = match m.from.clone() {
                    Some(f) if !f.is_empty() => match this.copy_source(d, instr, &f)? {
                        CopySource::Context => Some(this.context_source()),
                        CopySource::Stage(s) => s,
                        CopySource::Image(s) => Some(s),
                    },
                    _ if default_context => Some(this.context_source()),
                    _ => return Ok(-1),
                };
                Ok(match src_ref {
                    None => -1,
                    Some(r) => {
                        let input = r.input();
                        match inputs.iter().position(|i| *i == input) {
                            Some(i) => i as i64,
                            None => {
                                inputs.push(input);
                                inputs.len() as i64 - 1
                            }
                        }
                    }
                })
            };
        let mut options = Vec::new();
        let mut opt = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                options.push(KeyValue {
                    key: k.to_string(),
                    value: v,
                });
            }
        };
        let mount = match m.kind {
            MountKind::Bind => {
                let input = from_input(self, true)?;
                let rw = m.read_write;
                Mount {
                    input,
                    selector: clean_path(&format!("/{source}")),
                    dest: target,
                    output: -1,
                    readonly: !rw,
                    mount_type: kiln_llb::MountType::Bind as i32,
                    options: vec![],
                }
            }
            MountKind::Cache => {
                let input = from_input(self, false)?;
                let sharing = m.sharing().map_err(|msg| self.fail(instr, msg))?;
                opt(
                    "id",
                    Some(
                        id.filter(|i| !i.is_empty())
                            .unwrap_or_else(|| target.clone()),
                    ),
                );
                opt("sharing", Some(sharing.name().to_string()));
                opt("mode", m.mode.clone());
                opt("uid", m.uid.clone());
                opt("gid", m.gid.clone());
                Mount {
                    input,
                    selector: if input >= 0 {
                        clean_path(&format!("/{source}"))
                    } else {
                        String::new()
                    },
                    dest: target,
                    output: -1,
                    readonly: m.read_only,
                    mount_type: kiln_llb::MountType::Cache as i32,
                    options: vec![],
                }
            }
            MountKind::Tmpfs => {
                opt("size", m.size.clone());
                Mount {
                    input: -1,
                    selector: String::new(),
                    dest: target,
                    output: -1,
                    readonly: false,
                    mount_type: kiln_llb::MountType::Tmpfs as i32,
                    options: vec![],
                }
            }
            other @ (MountKind::Secret | MountKind::Ssh) => {
                let default_id = if other == MountKind::Ssh {
                    Some("default".to_string())
                } else {
                    None
                };
                let id = id
                    .filter(|i| !i.is_empty())
                    .or(default_id)
                    .unwrap_or_else(|| target.rsplit('/').next().unwrap_or_default().to_string());
                opt("id", Some(id));
                opt("env", m.env.clone());
                opt("required", m.required.map(|b| b.to_string()));
                opt("mode", m.mode.clone());
                opt("uid", m.uid.clone());
                opt("gid", m.gid.clone());
                Mount {
                    input: -1,
                    selector: String::new(),
                    dest: target,
                    output: -1,
                    readonly: true,
                    mount_type: if other == MountKind::Ssh {
                        kiln_llb::MountType::Ssh as i32
                    } else {
                        kiln_llb::MountType::Secret as i32
                    },
                    options: vec![],
                }
            }
        };
        options.sort();
        Ok(Mount { options, ..mount })
    }
}

//! `RUN`: the command (shell or exec form, heredocs, a `#!` heredoc run as a script), its
//! environment and mounts, as one exec op.

use super::{Compiler, Dispatch, RunStep};
use crate::ast::{Heredoc, Instruction};
use crate::instructions::{display, RunCommand, RunNetwork};
use crate::FrontendError;
use kiln_llb::{
    file_action, op, ExecMeta, ExecOp, FileAction, FileMkfile, FileOp, Mount, NetworkMode, Op,
};

impl Compiler<'_> {
    pub(super) fn dispatch_run(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
        cmd: RunCommand,
    ) -> Result<(), FrontendError> {
        self.runs.push(RunStep {
            line: instr.start_line,
            platform: d.platform.spec(),
        });
        let network = match cmd.network {
            RunNetwork::Default | RunNetwork::Host => NetworkMode::Host,
            RunNetwork::None => NetworkMode::None,
        };
        let line = cmd.args.first().map(String::as_str).unwrap_or("");
        let shebang = if cmd.json {
            None
        } else {
            shebang_heredoc(&cmd.heredocs, line)
        };
        let args = if let Some(h) = &shebang {
            // As BuildKit: the heredoc becomes an executable file, mounted read-only at
            // `/dev/pipes/`, and run by the interpreter its `#!` line names.
            vec![format!("/dev/pipes/{}", h.name)]
        } else if cmd.json {
            cmd.args.clone()
        } else {
            let mut a = d.shell();
            a.push(heredoc_script(&cmd.heredocs, line));
            a
        };
        let cwd = if d.image.working_dir.is_empty() {
            "/".to_string()
        } else {
            d.image.working_dir.clone()
        };
        let (mut inputs, base) = d.base_inputs();
        let mut mounts = vec![Mount::rootfs(base)];
        if let Some(h) = &shebang {
            let file = Op {
                inputs: vec![],
                kind: Some(op::Kind::File(FileOp {
                    base: -1,
                    actions: vec![FileAction {
                        action: Some(file_action::Action::Mkfile(FileMkfile {
                            path: format!("/{}", h.name),
                            mode: 0o755,
                            data: h.content.clone().into_bytes(),
                            owner: None,
                        })),
                    }],
                })),
            };
            let name = format!("[internal] heredoc `{}` as a script", h.name);
            let script = self.add_op(file, name, instr, &d.meta_stage);
            inputs.push(script.input());
            mounts.push(Mount {
                input: inputs.len() as i64 - 1,
                selector: "/".into(),
                dest: "/dev/pipes".into(),
                output: -1,
                readonly: true,
                mount_type: kiln_llb::MountType::Bind as i32,
                options: vec![],
            });
        }
        for spec in &cmd.mounts {
            let m = self.run_mount(d, instr, spec, &cwd, &mut inputs)?;
            if mounts.iter().any(|x| x.dest == m.dest) {
                return Err(self.fail(
                    instr,
                    format!(
                        "two mounts target `{}`: give each `--mount` its own `target`",
                        m.dest
                    ),
                ));
            }
            mounts.push(m);
        }
        let name = d.step_name(&display(instr));
        let op = Op {
            inputs,
            kind: Some(op::Kind::Exec(ExecOp {
                meta: Some(ExecMeta {
                    args: args.clone(),
                    env: d.exec_env(&self.opts.build_args),
                    cwd,
                    user: d.image.user.clone(),
                    hostname: String::new(),
                }),
                mounts,
                network: network as i32,
            })),
        };
        d.state = Some(self.add_op(op, name, instr, &d.meta_stage));
        let created_by = format!("RUN {} # buildkit", d.run_command_string(&args));
        d.image.add_history(created_by, false);
        Ok(())
    }
}

/// The heredoc of a shell-form `RUN <<EOF` whose body starts with a `#!` line: BuildKit runs
/// such a body as an executable file rather than feeding it to the shell.
fn shebang_heredoc<'h>(heredocs: &'h [Heredoc], line: &str) -> Option<&'h Heredoc> {
    let [h] = heredocs else {
        return None;
    };
    let marker = line
        .trim()
        .strip_prefix("<<")
        .map(|m| m.strip_prefix('-').unwrap_or(m))?;
    (marker.trim_matches(|c| c == '"' || c == '\'') == h.name && h.content.starts_with("#!"))
        .then_some(h)
}

/// The shell script of a shell-form RUN, with heredoc bodies put back in place (the shell
/// reads them itself) or, for a lone `RUN <<EOF`, the body alone, as BuildKit does.
fn heredoc_script(heredocs: &[Heredoc], cmd: &str) -> String {
    if heredocs.is_empty() {
        return cmd.to_string();
    }
    let lone = heredocs.len() == 1 && {
        let h = &heredocs[0];
        let t = cmd.trim();
        let marker = t
            .strip_prefix("<<")
            .map(|m| m.strip_prefix('-').unwrap_or(m));
        marker.is_some_and(|m| m.trim_matches(|c| c == '"' || c == '\'') == h.name)
    };
    if lone {
        let h = &heredocs[0];
        return if h.chomp {
            h.content
                .lines()
                .map(|l| l.trim_start_matches('\t'))
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
        } else {
            h.content.clone()
        };
    }
    let mut script = cmd.to_string();
    script.push('\n');
    for h in heredocs {
        script.push_str(&h.content);
        script.push_str(&h.name);
        script.push('\n');
    }
    script
}

//! The instructions that change only the image config and its history: ARG, ENV, LABEL, USER,
//! CMD, ENTRYPOINT, EXPOSE, VOLUME, STOPSIGNAL, SHELL, HEALTHCHECK, MAINTAINER and ONBUILD.

use super::config::Healthcheck;
use super::{Compiler, Dispatch};
use crate::ast::Instruction;
use crate::instructions::{
    ArgCommand, CmdCommand, EntrypointCommand, EnvCommand, ExposeCommand, HealthcheckCommand,
    KeyValuePair, LabelCommand, MaintainerCommand, OnbuildCommand, ShellCommand, StopSignalCommand,
    UserCommand, VolumeCommand,
};
use crate::util::{go_duration, go_list, go_quote, go_quote_list, go_quote_rune, parse_port_spec};
use crate::FrontendError;
use std::collections::BTreeSet;

impl Compiler<'_> {
    pub(super) fn dispatch_arg(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
        cmd: ArgCommand,
    ) -> Result<(), FrontendError> {
        let mut commit = Vec::new();
        for (name, default) in cmd.args {
            // Each default sees the ARGs declared before it, on this line too.
            let default = match default {
                Some(raw) => Some(self.expand(d, instr, &raw)?),
                None => None,
            };
            commit.push(match &default {
                Some(v) => format!("{name}={v}"),
                None => name.clone(),
            });
            self.consumed_args.insert(name.clone());
            let value = if let Some(v) = self.opts.build_args.get(&name) {
                Some(v.clone())
            } else if default.is_some() {
                default
            } else if let Some((_, v)) = self.platform_args.iter().find(|(k, _)| *k == name) {
                Some(v.clone())
            } else {
                self.global_value(&name)
            };
            d.push_arg(name, value);
        }
        d.image
            .add_history(format!("ARG {}", commit.join(" ")), true);
        Ok(())
    }

    /// Expanded key/value pairs of ENV or LABEL.
    fn pairs(
        &self,
        d: &Dispatch,
        instr: &Instruction,
        pairs: &[KeyValuePair],
        usage: &str,
    ) -> Result<Vec<(String, String)>, FrontendError> {
        let kw = instr.name.to_ascii_uppercase();
        let mut out = Vec::new();
        for p in pairs {
            let key = self.expand(d, instr, &p.key)?;
            if key.is_empty() {
                return Err(self.fail(instr, format!("`{kw}` has an empty name: write `{usage}`")));
            }
            let value = self.expand(d, instr, &p.value)?;
            out.push((key, value));
        }
        Ok(out)
    }

    pub(super) fn dispatch_env(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
        cmd: EnvCommand,
    ) -> Result<(), FrontendError> {
        let mut commit = String::from("ENV");
        // Each pair sees the ones before it (`ENV A=1 B=$A`) only from the next instruction on,
        // as in Docker: expand all first, then set.
        let pairs = self.pairs(d, instr, &cmd.pairs, "ENV KEY=value")?;
        for (k, v) in pairs {
            commit.push_str(&format!(" {k}={v}"));
            d.image.env_set(&k, &v);
        }
        d.image.add_history(commit, true);
        Ok(())
    }

    pub(super) fn dispatch_label(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
        cmd: LabelCommand,
    ) -> Result<(), FrontendError> {
        let mut commit = String::from("LABEL");
        for (k, v) in self.pairs(d, instr, &cmd.pairs, "LABEL key=value")? {
            commit.push_str(&format!(" {k}={v}"));
            d.image.labels.insert(k, v);
        }
        d.image.add_history(commit, true);
        Ok(())
    }

    pub(super) fn dispatch_user(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
        cmd: UserCommand,
    ) -> Result<(), FrontendError> {
        let user = self.expand(d, instr, &cmd.user)?;
        d.image.user = user.clone();
        d.image.add_history(format!("USER {user}"), true);
        Ok(())
    }

    /// The argv of CMD or ENTRYPOINT: exec form as written, shell form run by the stage's shell.
    fn command_args(d: &Dispatch, args: Vec<String>, json: bool) -> Vec<String> {
        if json {
            args
        } else {
            let mut a = d.shell();
            a.push(args.into_iter().next().unwrap_or_default());
            a
        }
    }

    pub(super) fn dispatch_cmd(
        &mut self,
        d: &mut Dispatch,
        cmd: CmdCommand,
    ) -> Result<(), FrontendError> {
        let args = Self::command_args(d, cmd.args, cmd.json);
        d.image
            .add_history(format!("CMD {}", go_quote_list(&args)), true);
        d.image.cmd = Some(args);
        // BuildKit v0.11 (and later) marks every `CMD`, exec form too, for Docker's image spec.
        d.image.args_escaped = true;
        d.cmd_set = true;
        Ok(())
    }

    pub(super) fn dispatch_entrypoint(
        &mut self,
        d: &mut Dispatch,
        cmd: EntrypointCommand,
    ) -> Result<(), FrontendError> {
        let args = Self::command_args(d, cmd.args, cmd.json);
        d.image
            .add_history(format!("ENTRYPOINT {}", go_quote_list(&args)), true);
        d.image.entrypoint = Some(args);
        if !d.cmd_set {
            d.image.cmd = None;
        }
        Ok(())
    }

    pub(super) fn dispatch_expose(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
        cmd: ExposeCommand,
    ) -> Result<(), FrontendError> {
        let mut added = BTreeSet::new();
        for raw in &cmd.ports {
            let spec = self.expand(d, instr, raw)?;
            for word in spec.split_whitespace() {
                for port in parse_port_spec(word).map_err(|m| self.fail(instr, m))? {
                    added.insert(port);
                }
            }
        }
        let listed: Vec<String> = added.iter().map(|p| format!("{p}:{{}}")).collect();
        d.image
            .add_history(format!("EXPOSE map[{}]", listed.join(" ")), true);
        d.image.exposed_ports.extend(added);
        Ok(())
    }

    pub(super) fn dispatch_volume(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
        cmd: VolumeCommand,
    ) -> Result<(), FrontendError> {
        let mut vols = Vec::new();
        for raw in &cmd.paths {
            let v = self.expand(d, instr, raw)?;
            if v.trim().is_empty() {
                return Err(self.fail(instr, "`VOLUME` has an empty path: write `VOLUME /data`"));
            }
            vols.push(v);
        }
        d.image
            .add_history(format!("VOLUME {}", go_list(&vols)), true);
        d.image.volumes.extend(vols);
        Ok(())
    }

    pub(super) fn dispatch_stopsignal(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
        cmd: StopSignalCommand,
    ) -> Result<(), FrontendError> {
        let sig = self.expand(d, instr, &cmd.signal)?;
        let valid = !sig.is_empty()
            && sig
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-');
        if !valid {
            return Err(self.fail(
                instr,
                format!("`{sig}` is not a signal: write a name like `SIGTERM` or a number"),
            ));
        }
        d.image.stop_signal = Some(sig.clone());
        d.image.add_history(format!("STOPSIGNAL {sig}"), true);
        Ok(())
    }

    pub(super) fn dispatch_shell(
        &mut self,
        d: &mut Dispatch,
        cmd: ShellCommand,
    ) -> Result<(), FrontendError> {
        d.image
            .add_history(format!("SHELL {}", go_list(&cmd.shell)), true);
        d.image.shell = Some(cmd.shell);
        Ok(())
    }

    pub(super) fn dispatch_healthcheck(
        &mut self,
        d: &mut Dispatch,
        cmd: HealthcheckCommand,
    ) -> Result<(), FrontendError> {
        let hc = Healthcheck {
            test: cmd.test,
            interval: cmd.interval,
            timeout: cmd.timeout,
            start_period: cmd.start_period,
            start_interval: cmd.start_interval,
            retries: cmd.retries,
        };
        let created_by = format!(
            "HEALTHCHECK &{{{} {} {} {} {} {}}}",
            go_quote_list(&hc.test),
            go_quote(&go_duration(hc.interval)),
            go_quote(&go_duration(hc.timeout)),
            go_quote(&go_duration(hc.start_period)),
            go_quote(&go_duration(hc.start_interval)),
            go_quote_rune(hc.retries),
        );
        d.image.healthcheck = Some(hc);
        d.image.add_history(created_by, true);
        Ok(())
    }

    pub(super) fn dispatch_maintainer(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
        cmd: MaintainerCommand,
    ) -> Result<(), FrontendError> {
        let who = self.expand(d, instr, &cmd.name)?;
        d.image.author = Some(who.clone());
        d.image.labels.insert("maintainer".into(), who.clone());
        d.image.add_history(format!("MAINTAINER {who}"), true);
        Ok(())
    }

    pub(super) fn dispatch_onbuild(
        &mut self,
        d: &mut Dispatch,
        cmd: OnbuildCommand,
    ) -> Result<(), FrontendError> {
        d.image.onbuild.push(cmd.expression.clone());
        d.image
            .add_history(format!("ONBUILD {}", cmd.expression), true);
        Ok(())
    }
}

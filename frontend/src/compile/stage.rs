//! Stages: splitting the file at each `FROM` (global ARGs first), compiling the target and the
//! stages it needs in order, starting a stage from its base (an image, an earlier stage, a named
//! context, with ONBUILD triggers), and resolving `--from` references.

use super::config::{ImageState, Platform};
use super::{image_source, Compiled, Compiler, Dispatch, NamedContext, PROXY_ARGS};
use crate::ast::Instruction;
use crate::instructions::{self, Command, Keyword};
use crate::util::{did_you_mean, suggestion};
use crate::FrontendError;
use kiln_llb::{file_action, op, FileAction, FileCopy, FileOp, Op, OutputRef};
use std::collections::HashMap;
use std::rc::Rc;

/// How deeply stage compilations may nest (`COPY --from=a` in `b`, `COPY --from=b` in `c`, ...).
/// Each level costs stack (up to 64 KiB in debug builds; 16 levels fit in half of the 2 MiB of a
/// tokio thread, where the daemon compiles); `FROM` chains do not nest at all.
const MAX_STAGE_NESTING: usize = 16;

/// One `FROM` and the instructions under it.
pub(super) struct StageDef<'a> {
    /// Lower-cased `AS` name.
    name: Option<String>,
    /// The base name after expansion with the global ARGs.
    base: String,
    /// `FROM --platform=...`, expanded.
    platform: Option<Platform>,
    from: &'a Instruction,
    commands: &'a [Instruction],
}

/// A compiled stage, as later stages see it.
pub(super) struct StageOut {
    state: Option<OutputRef>,
    image: ImageState,
    platform: Platform,
}

pub(super) enum Status {
    Pending,
    InProgress,
    /// Shared: every `COPY --from` of the stage reads it, and cloning its config each time made
    /// many such lines quadratic.
    Done(Rc<StageOut>),
}

/// Where a COPY reads from.
pub(super) enum CopySource {
    Context,
    Stage(Option<OutputRef>),
    Image(OutputRef),
}

impl Compiler<'_> {
    /// Global ARGs, then one [`StageDef`] per FROM, with base names expanded.
    pub(super) fn split_stages(&mut self) -> Result<(), FrontendError> {
        let instrs = &self.df.instructions;
        let is_from = |i: &Instruction| Keyword::of(i) == Some(Keyword::From);
        let first_from = instrs.iter().position(is_from);
        let Some(first_from) = first_from else {
            return match instrs.first() {
                Some(i) => Err(self.fail(
                    i,
                    "the Dockerfile has no `FROM`: start a build stage with `FROM <image>` \
                     (only `ARG` may come before it)",
                )),
                None => Err(FrontendError::Other(format!(
                    "`{}` is empty: write at least a `FROM <image>` line",
                    self.opts.dockerfile_name
                ))),
            };
        };
        for instr in &instrs[..first_from] {
            if Keyword::of(instr) != Some(Keyword::Arg) {
                return Err(self.fail(
                    instr,
                    format!(
                        "`{}` comes before the first `FROM`: only `ARG` may precede it; \
                         move it into a build stage",
                        instr.name.to_ascii_uppercase()
                    ),
                ));
            }
            let arg = instructions::parse_arg(instr).map_err(|m| self.fail(instr, m))?;
            for (name, default) in arg.args {
                self.consumed_args.insert(name.clone());
                let value = match self.opts.build_args.get(&name) {
                    Some(v) => Some(v.clone()),
                    None => match default {
                        Some(d) => Some(self.expand_with(instr, &d, &|n| self.global_value(n))?),
                        None => None,
                    },
                };
                self.global_slots.insert(name.clone(), self.globals.len());
                self.globals.push((name, value));
            }
        }

        let mut starts: Vec<usize> = instrs
            .iter()
            .enumerate()
            .filter(|(_, i)| is_from(i))
            .map(|(n, _)| n)
            .collect();
        starts.push(instrs.len());
        let globals = self.globals.clone();
        let global_slots = self.global_slots.clone();
        let lookup = move |n: &str| {
            global_slots
                .get(n)
                .and_then(|&i| globals.get(i))
                .and_then(|(_, v)| v.clone())
        };
        for w in starts.windows(2) {
            let from = &instrs[w[0]];
            let commands = &instrs[w[0] + 1..w[1]];
            let cmd = instructions::parse_from(from).map_err(|m| self.fail(from, m))?;
            let base = self.expand_with(from, &cmd.base, &lookup)?;
            if base.is_empty() {
                return Err(self.fail(
                    from,
                    format!(
                        "the base image `{}` expands to nothing: \
                         give the ARG a default or pass `--build-arg`",
                        cmd.base
                    ),
                ));
            }
            let platform = match &cmd.platform {
                Some(raw) => {
                    let p = self.expand_with(from, raw, &lookup)?;
                    Some(Platform::parse(&p).ok_or_else(|| {
                        self.fail(
                            from,
                            format!("`{p}` is not a platform: write `os/arch[/variant]`, like `linux/amd64`"),
                        )
                    })?)
                }
                None => None,
            };
            let name = cmd.name;
            self.stages.push(StageDef {
                name,
                base,
                platform,
                from,
                commands,
            });
        }
        // The latest stage of the base's name before each stage, as BuildKit links them.
        let mut named = HashMap::new();
        for (i, def) in self.stages.iter().enumerate() {
            self.parents
                .push(named.get(&def.base.to_ascii_lowercase()).copied());
            if let Some(n) = &def.name {
                named.insert(n.clone(), i);
            }
        }
        self.last_stage_named = named;
        self.status = self.stages.iter().map(|_| Status::Pending).collect();
        self.multi_stage = self.stages.len() > 1;
        Ok(())
    }

    fn stage_names(&self) -> Vec<&str> {
        self.stages
            .iter()
            .filter_map(|s| s.name.as_deref())
            .collect()
    }

    /// Compiles the target and what it needs; also returns the UndefinedVar checks.
    #[allow(clippy::type_complexity)]
    pub(super) fn run(
        mut self,
    ) -> Result<(Compiled, Vec<(usize, &'static str, String)>), FrontendError> {
        let target = match &self.opts.target {
            None => self.stages.len() - 1,
            Some(t) => {
                let lower = t.to_ascii_lowercase();
                // The last stage of a name wins, as in BuildKit (DuplicateStageName warns).
                match self.last_stage_named.get(&lower) {
                    Some(&i) => i,
                    None => {
                        let names = self.stage_names();
                        let hint = suggestion(&lower, names.iter().copied());
                        let known = if names.is_empty() {
                            "the Dockerfile names no stages (`FROM <image> AS <name>`)".to_string()
                        } else {
                            let list: Vec<String> =
                                names.iter().map(|n| format!("`{n}`")).collect();
                            format!("stages are {}", list.join(", "))
                        };
                        return Err(FrontendError::Other(format!(
                            "{}: target stage `{t}` not found{hint}; {known}",
                            self.opts.dockerfile_name
                        )));
                    }
                }
            }
        };
        let from = self.stages[target].from;
        let out = self.stage(target, from)?;

        let unused: Vec<&str> = self
            .opts
            .build_args
            .keys()
            .filter(|k| !self.consumed_args.contains(*k) && !PROXY_ARGS.contains(&k.as_str()))
            .map(String::as_str)
            .collect();
        if !unused.is_empty() {
            let list: Vec<String> = unused.iter().map(|k| format!("`{k}`")).collect();
            let message = format!(
                "build args {} were not consumed: no `ARG` of the built stages declares them",
                list.join(", ")
            );
            self.warn(0, message);
        }

        let image_config = out.image.to_oci(&out.platform);
        let compiled = Compiled {
            definition: self.builder.build(out.state.clone()),
            image_config,
            config_extras: out.image.extras(),
            warnings: self.warnings,
            runs: self.runs,
        };
        Ok((compiled, self.undefined.into_checks()))
    }

    /// The compiled stage `idx`, compiling it (and what it needs) on first use.
    ///
    /// A stage's `FROM <earlier stage>` chain is compiled first, from its far end, in a loop: a
    /// chain of hundreds of `FROM sN AS sN+1` stages then never nests. The order of the ops is
    /// the same as when each stage compiles its parent first. Other references (`COPY --from`,
    /// `RUN --mount=from=`) still nest, at most [`MAX_STAGE_NESTING`] deep.
    pub(super) fn stage(
        &mut self,
        idx: usize,
        referrer: &Instruction,
    ) -> Result<Rc<StageOut>, FrontendError> {
        let mut chain = Vec::new();
        let mut at = self.base_stage(idx);
        while let Some(p) = at {
            if !matches!(self.status[p], Status::Pending) {
                break;
            }
            chain.push(p);
            at = self.base_stage(p);
        }
        for &p in chain.iter().rev() {
            let from = self.stages[p].from;
            self.stage_once(p, from)?;
        }
        if self.nesting >= MAX_STAGE_NESTING && matches!(self.status[idx], Status::Pending) {
            return Err(self.fail(
                referrer,
                format!(
                    "stages refer to each other (`COPY --from`, `RUN --mount=from=`) more than \
                     {MAX_STAGE_NESTING} deep: copy from fewer stages in a row"
                ),
            ));
        }
        self.nesting += 1;
        let out = self.stage_once(idx, referrer);
        self.nesting -= 1;
        out
    }

    /// The earlier stage that stage `idx` starts `FROM`, unless a named build context replaces
    /// the stage or its base.
    fn base_stage(&self, idx: usize) -> Option<usize> {
        let def = &self.stages[idx];
        if let Some(own) = &def.name {
            if self.opts.named_contexts.contains_key(own) {
                return None;
            }
        }
        self.parents.get(idx).copied().flatten()
    }

    /// [`Compiler::stage`] without the look ahead along the `FROM` chain.
    fn stage_once(
        &mut self,
        idx: usize,
        referrer: &Instruction,
    ) -> Result<Rc<StageOut>, FrontendError> {
        match &self.status[idx] {
            Status::Done(out) => return Ok(out.clone()),
            Status::InProgress => {
                let name = self.stage_label(idx);
                return Err(self.fail(
                    referrer,
                    format!(
                        "stage `{name}` depends on itself (a `FROM` or `COPY --from` cycle): \
                         break the cycle"
                    ),
                ));
            }
            Status::Pending => {}
        }
        self.status[idx] = Status::InProgress;
        let out = self.compile_stage(idx)?;
        let out = Rc::new(out);
        self.status[idx] = Status::Done(out.clone());
        Ok(out)
    }

    fn stage_label(&self, idx: usize) -> String {
        self.stages[idx]
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{idx}"))
    }

    fn compile_stage(&mut self, idx: usize) -> Result<StageOut, FrontendError> {
        let def = &self.stages[idx];
        let from = def.from;
        let commands = def.commands;
        let base = def.base.clone();
        let meta_stage = self.stage_label(idx);
        let label = if self.multi_stage {
            meta_stage.clone()
        } else {
            String::new()
        };
        // Typed once, here; a command that does not parse fails when its turn comes, so the
        // steps before it compile (and fail) as they did.
        let commands: Vec<(&Instruction, Result<Command, String>)> = commands
            .iter()
            .map(|c| (c, instructions::parse(c)))
            .collect();
        let ops_in_stage = commands
            .iter()
            .filter(|(_, c)| c.as_ref().is_ok_and(Command::is_step))
            .count();

        let platform = self.stages[idx]
            .platform
            .clone()
            .unwrap_or_else(|| self.target_platform.clone());
        let mut d = Dispatch {
            label,
            meta_stage,
            state: None,
            image: ImageState::scratch(),
            args: Vec::new(),
            arg_slots: HashMap::new(),
            cmd_set: false,
            cmd_index: 0,
            cmd_total: ops_in_stage,
            platform,
            prefix_platform: self.opts.prefix_platform,
        };
        // A named context of the stage's own name replaces the whole stage, as in BuildKit.
        if let Some(own) = self.stages[idx].name.clone() {
            if let Some(nc) = self.opts.named_contexts.get(&own).cloned() {
                d.cmd_total = 1;
                self.named_base(&mut d, &nc, &own, from)?;
                return Ok(StageOut {
                    state: d.state,
                    image: d.image,
                    platform: d.platform,
                });
            }
        }
        // The latest stage of that name before this one, as BuildKit links them.
        let parent = self.base_stage(idx);
        let mut triggers = Vec::new();
        if let Some(p) = parent {
            // A stage is a base like an image (BuildKit clones only its image config): its
            // `CMD` counts as inherited, so `ENTRYPOINT` here clears it, and its ONBUILD
            // triggers run here, first, and go no further.
            let out = self.stage(p, from)?;
            d.state = out.state.clone();
            d.image = out.image.clone();
            if self.stages[idx].platform.is_none() {
                d.platform = out.platform.clone();
            }
            triggers = self.onbuild_triggers(&d.image.onbuild, from)?;
            d.image.onbuild.clear();
            d.cmd_total += triggers.len();
        } else if let Some(nc) = self.opts.named_contexts.get(&base).cloned() {
            d.cmd_total += 1;
            self.named_base(&mut d, &nc, &base, from)?;
            // An image given as a named context is a base image like any other.
            triggers = self.onbuild_triggers(&d.image.onbuild, from)?;
            d.image.onbuild.clear();
            d.cmd_total += triggers.len();
        } else if base != "scratch" {
            d.cmd_total += 1;
            let resolved = self.resolve(&base, &d.platform.clone(), from)?;
            d.image = ImageState::from_oci(&resolved.config);
            d.image.apply_raw_config(&resolved.raw_config);
            // The base image's ONBUILD triggers run first, then are dropped from the config.
            // BuildKit counts every trigger in the stage's step total, before naming any step
            // (so the `FROM` step already shows it).
            triggers = self.onbuild_triggers(&d.image.onbuild, from)?;
            d.image.onbuild.clear();
            d.cmd_total += triggers.len();
            let name = d.base_step_name(&format!("FROM {}", resolved.reference));
            let source = image_source(&resolved.reference, &d.platform);
            d.state = Some(self.add_op(source, name, from, &d.meta_stage));
        }

        for instr in &triggers {
            self.dispatch(&mut d, instr)?;
        }
        for (instr, command) in commands {
            let command = command.map_err(|m| self.fail(instr, m))?;
            self.dispatch_command(&mut d, instr, command)?;
        }
        Ok(StageOut {
            state: d.state,
            image: d.image,
            platform: d.platform,
        })
    }

    /// Parses a base image's ONBUILD triggers into instructions located at the `FROM` line.
    fn onbuild_triggers(
        &self,
        triggers: &[String],
        from: &Instruction,
    ) -> Result<Vec<Instruction>, FrontendError> {
        if triggers.is_empty() {
            return Ok(Vec::new());
        }
        let text = triggers.join("\n");
        let parsed = crate::parse(&text)
            .and_then(|df| instructions::check_words(&df).map(|()| df))
            .map_err(|e| {
                self.fail(
                    from,
                    format!(
                    "the base image's `ONBUILD` trigger cannot be parsed ({}): rebuild the base \
                     image with a valid `ONBUILD` instruction",
                    e.message
                ),
                )
            })?;
        let mut out = Vec::new();
        for mut instr in parsed.instructions {
            if Keyword::of(&instr).is_some_and(|k| !k.may_trigger()) {
                return Err(self.fail(
                    from,
                    format!(
                        "the base image has an `ONBUILD {}` trigger, which is not allowed: \
                         rebuild the base image without it",
                        instr.name.to_ascii_uppercase()
                    ),
                ));
            }
            instr.original = format!("ONBUILD {}", instr.original);
            instr.start_line = from.start_line;
            instr.end_line = from.end_line;
            out.push(instr);
        }
        Ok(out)
    }

    /// Starts a stage from a named build context.
    fn named_base(
        &mut self,
        d: &mut Dispatch,
        nc: &NamedContext,
        name: &str,
        from: &Instruction,
    ) -> Result<(), FrontendError> {
        match nc {
            NamedContext::Image(reference) => {
                let resolved = self.resolve(reference, &d.platform.clone(), from)?;
                d.image = ImageState::from_oci(&resolved.config);
                d.image.apply_raw_config(&resolved.raw_config);
                let step = d.base_step_name(&format!("FROM {}", resolved.reference));
                let source = image_source(&resolved.reference, &d.platform);
                d.state = Some(self.add_op(source, step, from, &d.meta_stage));
            }
            NamedContext::Local(local) => {
                // A local directory becomes a snapshot (a copy of it onto scratch), so that
                // `RUN` and file ops can work on top of it.
                let src = self.local_source(local);
                let op = Op {
                    inputs: vec![src.input()],
                    kind: Some(op::Kind::File(FileOp {
                        base: -1,
                        actions: vec![FileAction {
                            action: Some(file_action::Action::Copy(FileCopy {
                                src_input: 0,
                                src: "/".into(),
                                dest: "/".into(),
                                owner: None,
                                mode: -1,
                                follow_symlinks: false,
                                dir_contents_only: true,
                                create_dest_path: true,
                                allow_wildcard: false,
                                allow_empty_wildcard: false,
                                include_patterns: vec![],
                                exclude_patterns: vec![],
                                mtime: 0,
                                attempt_unpack: false,
                            })),
                        }],
                    })),
                };
                let step = d.base_step_name(&format!("FROM context `{name}`"));
                d.state = Some(self.add_op(op, step, from, &d.meta_stage));
            }
        }
        Ok(())
    }

    /// Resolves `COPY --from=X`: a stage by name or index, else an image.
    pub(super) fn copy_source(
        &mut self,
        d: &Dispatch,
        instr: &Instruction,
        raw: &str,
    ) -> Result<CopySource, FrontendError> {
        let from = self.expand(d, instr, raw)?;
        if from.is_empty() {
            return Err(self.fail(
                instr,
                "`--from` is empty: name a stage, a stage index or an image",
            ));
        }
        let lower = from.to_ascii_lowercase();
        // The last stage of that name in the file, as BuildKit resolves `--from`.
        if let Some(&i) = self.last_stage_named.get(&lower) {
            let out = self.stage(i, instr)?;
            return Ok(CopySource::Stage(out.state.clone()));
        }
        if !from.is_empty() && from.chars().all(|c| c.is_ascii_digit()) {
            let idx: usize = from
                .parse()
                .map_err(|_| self.fail(instr, format!("stage index `{from}` is too large")))?;
            if idx >= self.stages.len() {
                return Err(self.fail(
                    instr,
                    format!(
                        "no stage with index {idx}: the Dockerfile has {} stages, numbered from 0",
                        self.stages.len()
                    ),
                ));
            }
            let out = self.stage(idx, instr)?;
            return Ok(CopySource::Stage(out.state.clone()));
        }
        if let Some(nc) = self.opts.named_contexts.get(&from).cloned() {
            return Ok(match nc {
                NamedContext::Local(local) => CopySource::Image(self.local_source(&local)),
                NamedContext::Image(reference) => {
                    let resolved = self.resolve(&reference, &d.platform.clone(), instr)?;
                    let src = image_source(&resolved.reference, &d.platform);
                    CopySource::Image(self.add_op(
                        src,
                        format!("FROM {}", resolved.reference),
                        instr,
                        &d.meta_stage,
                    ))
                }
            });
        }
        // A bare word close to a stage name is far more likely a typo than an image.
        let plain = !from.contains(['/', ':', '@', '.']);
        if plain {
            let names = self.stage_names();
            if let Some(best) = did_you_mean(&lower, names.iter().copied()) {
                return Err(self.fail(
                    instr,
                    format!(
                        "no stage named `{from}` (did you mean `{best}`?); to copy from an image \
                         of that name, write its tag, like `--from={from}:latest`"
                    ),
                ));
            }
        }
        let resolved = self.resolve(&from, &d.platform.clone(), instr)?;
        let src = image_source(&resolved.reference, &d.platform);
        let out = self.add_op(
            src,
            format!("FROM {}", resolved.reference),
            instr,
            &d.meta_stage,
        );
        Ok(CopySource::Image(out))
    }
}

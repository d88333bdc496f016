//! Parsed Dockerfile → LLB definition plus the image config it produces, following BuildKit's
//! dockerfile2llb: stages, ARG scoping, base images through an [`ImageResolver`], one op per
//! filesystem-changing instruction and one history entry per instruction. Each instruction is
//! first parsed into its typed command (`crate::instructions`); the compiler matches on those.
//!
//! Split by concern: `stage` (stages, their order and `--from` references), `run` and
//! `run_mount` (`RUN`), `copy` (`COPY`/`ADD`), `workdir`, `metadata` (the instructions that only
//! change the image config), `config` (the image config itself), and the helpers `add` (URLs),
//! `git`, `lint` and `undefined` (build checks).

mod add;
mod config;
mod copy;
mod git;
mod lint;
mod metadata;
mod run;
mod run_mount;
mod stage;
mod undefined;
mod workdir;

use crate::ast::{Dockerfile, Instruction};
use crate::instructions::{self, Command};
use crate::FrontendError;
use config::{ImageState, Platform, DEFAULT_PATH};
use kiln_llb::{
    op, Chown, Definition, DefinitionBuilder, KeyValue, Op, OpMetadata, OutputRef, SourceOp,
};
use stage::{StageDef, Status};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What to build and with which inputs.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The Dockerfile's name, for messages and op locations (`Dockerfile:12`).
    pub dockerfile_name: String,
    /// `--build-arg NAME=VALUE` overrides.
    pub build_args: BTreeMap<String, String>,
    /// The stage to build (`--target`); the last stage when `None`.
    pub target: Option<String>,
    /// `(os, arch)` of the image, e.g. `("linux", "amd64")`; `arch` may carry a variant
    /// (`arm/v7`).
    pub platform: (String, String),
    /// The local source name: the context is `local://<context_name>`.
    pub context_name: String,
    /// `.dockerignore` patterns, put on the context source.
    pub exclude_patterns: Vec<String>,
    /// Ignore cached results for every op (`--no-cache`).
    pub no_cache: bool,
    /// Named build contexts (`--build-context NAME=...`): they replace a stage of that name, an
    /// image of that name in `FROM`, or the source of `COPY --from=NAME`.
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// Put each stage's platform in its step names (`[linux/amd64->arm64 build 2/3] RUN ...`),
    /// as BuildKit's `PrefixPlatform` does for a build of several platforms.
    pub prefix_platform: bool,
}

/// What a named build context is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory, provided to the solver as `local://<name>` under this name.
    Local(String),
    /// An image reference, resolved like a `FROM` image.
    Image(String),
}

impl Default for BuildOptions {
    fn default() -> Self {
        let host = Platform::host();
        let arch = if host.variant.is_empty() {
            host.arch
        } else {
            format!("{}/{}", host.arch, host.variant)
        };
        BuildOptions {
            dockerfile_name: "Dockerfile".into(),
            build_args: BTreeMap::new(),
            target: None,
            platform: (host.os, arch),
            context_name: "context".into(),
            exclude_patterns: Vec::new(),
            no_cache: false,
            named_contexts: BTreeMap::new(),
            prefix_platform: false,
        }
    }
}

/// Looks up base images: the caller decides how (registry, local store, a fake in tests).
pub trait ImageResolver: Sync {
    /// Resolves `reference` as written in the Dockerfile (`busybox`, `alpine:3.20`, ...). The
    /// error is a message shown to the user after the Dockerfile location.
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, String>;

    /// Resolves `reference` for another platform than the build's (`FROM --platform=os/arch`).
    /// Resolvers that know only one platform (fakes, `kiln debug llb`) keep the default.
    fn resolve_for_platform(
        &self,
        reference: &str,
        platform: &str,
    ) -> Result<ResolvedImage, String> {
        let _ = platform;
        self.resolve(reference)
    }
}

/// A resolved base image.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The canonical, digest-pinned name, used as `docker-image://<reference>`.
    pub reference: String,
    /// The image's config: env, workdir, user, cmd, entrypoint, history, ... are inherited.
    pub config: oci_spec::image::ImageConfiguration,
    /// The config exactly as stored, for the fields oci-spec drops (`OnBuild`, `Healthcheck`,
    /// `Shell`); `Null` when unknown.
    pub raw_config: serde_json::Value,
}

/// Something worth telling the user that does not stop the build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// 1-based Dockerfile line, or 0 when the warning concerns no line.
    pub line: usize,
    pub message: String,
}

/// The result of compiling a Dockerfile.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The build graph; its root is the target stage's filesystem.
    pub definition: Definition,
    /// The image config of the target stage. `rootfs.diff_ids` is empty: the exporter fills it.
    /// History entries without `empty_layer` match the Exec/File ops of the target's chain in
    /// order, after the base image's own entries.
    pub image_config: oci_spec::image::ImageConfiguration,
    /// Config fields oci-spec cannot hold (`Healthcheck`, `OnBuild`, `Shell`), to be merged into
    /// the image config's `config` object by the exporter.
    pub config_extras: serde_json::Map<String, serde_json::Value>,
    pub warnings: Vec<Warning>,
    /// Every `RUN` the build needs, with the platform it runs for: the caller refuses the
    /// platforms it cannot run before anything starts.
    pub runs: Vec<RunStep>,
}

/// A compiled `RUN` (or a `RUN` ONBUILD trigger, located at its `FROM`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunStep {
    pub line: usize,
    /// `os/arch[/variant]` of its stage.
    pub platform: String,
}

/// Parses and compiles `dockerfile`.
pub fn compile(
    dockerfile: &str,
    opts: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Result<Compiled, FrontendError> {
    let df = crate::parse(dockerfile)?;
    instructions::check_words(&df)?;
    if let Some(d) = df.directives.iter().find(|d| d.name == "syntax") {
        if !add::is_builtin_syntax(&d.value) {
            return Err(FrontendError::Instruction {
                file: opts.dockerfile_name.clone(),
                line: d.line,
                instruction: format!("# syntax={}", d.value),
                message: format!(
                    "`{}` is a custom frontend image, which kiln cannot run (it builds with its \
                     own Dockerfile frontend): remove the `# syntax=` line or name \
                     `docker/dockerfile:1`",
                    d.value
                ),
            });
        }
    }
    let (mut compiled, undefined_vars) = Compiler::new(&df, opts, resolver)?.run()?;
    // BuildKit's build checks, unless `# check=skip=...` silences them.
    let config = df
        .directives
        .iter()
        .find(|d| d.name == "check")
        .map(|d| lint::CheckConfig::parse(&d.value))
        .unwrap_or_default();
    let mut failed = Vec::new();
    let checks = lint::check(&df)
        .into_iter()
        .chain(lint::empty_continuations(&df))
        .chain(lint::from_args(&df))
        .chain(lint::copy_ignored(&df, &opts.exclude_patterns))
        .chain(lint::duplicate_stage_names(&df))
        .chain(undefined_vars);
    for (line, rule, message) in checks {
        if config.skips(rule) {
            continue;
        }
        if config.error {
            failed.push(format!(
                "{}:{line}: {rule}: {message}",
                opts.dockerfile_name
            ));
        }
        compiled.warnings.push(Warning {
            line,
            message: format!("{rule}: {message}"),
        });
    }
    if !failed.is_empty() {
        return Err(FrontendError::Other(format!(
            "build checks failed (`# check=error=true`):\n  {}\nfix them, or skip a rule with `# check=skip=RULE`",
            failed.join("\n  ")
        )));
    }
    compiled.warnings.sort_by_key(|w| w.line);
    for w in &mut compiled.warnings {
        if let std::borrow::Cow::Owned(m) = crate::clip::clip_message(&w.message) {
            w.message = m;
        }
    }
    Ok(compiled)
}

/// Build args BuildKit passes to `RUN` without an `ARG` and keeps out of the history.
const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The state of the stage being compiled.
struct Dispatch {
    /// Label in step names: `""` when the file has one stage, else the name or `stage-N`.
    label: String,
    /// Stage name recorded in op metadata.
    meta_stage: String,
    state: Option<OutputRef>,
    image: ImageState,
    /// ARGs in scope, in declaration order.
    args: Vec<(String, Option<String>)>,
    /// The last slot of each name in `args`, so that look-ups cost the same however many ARGs a
    /// stage declares.
    arg_slots: HashMap<String, usize>,
    cmd_set: bool,
    cmd_index: usize,
    cmd_total: usize,
    platform: Platform,
    /// See [`BuildOptions::prefix_platform`].
    prefix_platform: bool,
}

impl Dispatch {
    /// A variable as expansion sees it: ENV wins over ARG of the same name.
    fn lookup(&self, name: &str) -> Option<String> {
        if let Some(v) = self.image.env_get(name) {
            return Some(v.to_string());
        }
        self.arg(name).and_then(|v| v.clone())
    }

    /// The value of the last `ARG name` in scope: `None` when there is none, `Some(None)` when it
    /// has no value.
    fn arg(&self, name: &str) -> Option<&Option<String>> {
        let &i = self.arg_slots.get(name)?;
        self.args.get(i).map(|(_, v)| v)
    }

    fn push_arg(&mut self, name: String, value: Option<String>) {
        self.arg_slots.insert(name.clone(), self.args.len());
        self.args.push((name, value));
    }

    /// `[platform label i/n] text`, counting this step: BuildKit's `prefixCommand`, with the
    /// target from the stage's `TARGET*` variables when it differs (`linux/amd64->arm64`).
    fn step_name(&mut self, text: &str) -> String {
        let platform = self.prefix_platform.then(|| {
            let target = self.target_from_env();
            format!(
                "{}{}",
                self.platform.spec(),
                config::arrow_to_target(&self.platform, target)
            )
        });
        self.counted_step_name(platform, text)
    }

    /// The `FROM` step's name: BuildKit names it before the stage has an environment, so it
    /// never shows a target.
    fn base_step_name(&mut self, text: &str) -> String {
        let platform = self.prefix_platform.then(|| self.platform.spec());
        self.counted_step_name(platform, text)
    }

    fn counted_step_name(&mut self, platform: Option<String>, text: &str) -> String {
        self.cmd_index += 1;
        let width = self.cmd_total.to_string().len();
        let counter = format!("{:>width$}/{}", self.cmd_index, self.cmd_total);
        let mut out = String::from("[");
        for part in [platform.unwrap_or_default(), self.label.clone()] {
            if !part.is_empty() {
                out.push_str(&part);
                out.push(' ');
            }
        }
        format!("{out}{counter}] {text}")
    }

    /// The platform the stage's `TARGETPLATFORM` (else `TARGETOS`, `TARGETARCH`,
    /// `TARGETVARIANT`) names, as BuildKit's `platformFromEnv` reads them; `None` when unset.
    fn target_from_env(&self) -> Option<Platform> {
        if let Some(p) = self
            .lookup("TARGETPLATFORM")
            .and_then(|v| Platform::parse(&v))
        {
            return Some(p);
        }
        let [os, arch, variant] =
            ["TARGETOS", "TARGETARCH", "TARGETVARIANT"].map(|k| self.lookup(k));
        if os.is_none() && arch.is_none() && variant.is_none() {
            return None;
        }
        Some(Platform {
            os: os.unwrap_or_default(),
            arch: arch.unwrap_or_default(),
            variant: variant.unwrap_or_default(),
        })
    }

    fn shell(&self) -> Vec<String> {
        self.image
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    /// The environment of a `RUN`: the image's env, then ARGs with a value not shadowed by an
    /// ENV, then proxy build args, then a default `PATH`.
    fn exec_env(&self, build_args: &BTreeMap<String, String>) -> Vec<String> {
        let mut env = self.image.env().to_vec();
        let key_of = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
        let env_keys: BTreeSet<String> = env.iter().map(|e| key_of(e)).collect();
        let mut arg_slots: HashMap<String, usize> = HashMap::new();
        for (k, v) in &self.args {
            let Some(v) = v else { continue };
            if env_keys.contains(k) {
                continue;
            }
            let entry = format!("{k}={v}");
            match arg_slots.get(k) {
                Some(&i) => env[i] = entry,
                None => {
                    arg_slots.insert(k.clone(), env.len());
                    env.push(entry);
                }
            }
        }
        for p in PROXY_ARGS {
            if let Some(v) = build_args.get(*p) {
                if !env.iter().any(|e| key_of(e) == *p) {
                    env.push(format!("{p}={v}"));
                }
            }
        }
        if !env.iter().any(|e| key_of(e) == "PATH") {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        env
    }

    /// BuildKit's `runCommandString`: `|N A=1 B=2 args...` for the ARGs in scope.
    fn run_command_string(&self, args: &[String]) -> String {
        let mut pairs: Vec<String> = Vec::new();
        let mut slots: HashMap<&str, usize> = HashMap::new();
        for (k, v) in &self.args {
            let value = self
                .image
                .env_get(k)
                .map(str::to_string)
                .or_else(|| v.clone())
                .unwrap_or_default();
            let entry = format!("{k}={value}");
            match slots.get(k.as_str()) {
                Some(&i) => pairs[i] = entry,
                None => {
                    slots.insert(k, pairs.len());
                    pairs.push(entry);
                }
            }
        }
        let mut parts = Vec::new();
        if !pairs.is_empty() {
            parts.push(format!("|{}", pairs.len()));
            parts.extend(pairs);
        }
        parts.extend(args.iter().cloned());
        parts.join(" ")
    }

    /// The owner of directories WORKDIR creates: the current USER.
    fn user_chown(&self) -> Option<Chown> {
        if self.image.user.is_empty() {
            None
        } else {
            Some(parse_chown(&self.image.user))
        }
    }

    /// `(inputs, base index)` for an op on top of the current state.
    fn base_inputs(&self) -> (Vec<kiln_llb::Input>, i64) {
        match &self.state {
            Some(s) => (vec![s.input()], 0),
            None => (vec![], -1),
        }
    }
}

fn parse_chown(spec: &str) -> Chown {
    let (user, group) = spec.split_once(':').unwrap_or((spec, ""));
    Chown {
        user: user.to_string(),
        group: group.to_string(),
    }
}

struct Compiler<'a> {
    df: &'a Dockerfile,
    opts: &'a BuildOptions,
    resolver: &'a dyn ImageResolver,
    builder: DefinitionBuilder,
    warnings: Vec<Warning>,
    /// Global ARGs (before the first FROM) and the automatic platform args, with values.
    globals: Vec<(String, Option<String>)>,
    /// The last slot of each name in `globals`.
    global_slots: HashMap<String, usize>,
    /// The automatic platform args, only visible in a stage once declared.
    platform_args: Vec<(String, String)>,
    stages: Vec<StageDef<'a>>,
    status: Vec<Status>,
    context: Option<OutputRef>,
    images: HashMap<String, ResolvedImage>,
    consumed_args: BTreeSet<String>,
    target_platform: Platform,
    multi_stage: bool,
    /// UndefinedVar findings of the instructions compiled so far.
    undefined: undefined::UndefinedVars,
    runs: Vec<RunStep>,
    /// How many stage compilations are open (one stage's `COPY --from` compiling another).
    nesting: usize,
    /// For each stage, the earlier stage its `FROM` names.
    parents: Vec<Option<usize>>,
    /// The last stage of each (lower-case) name.
    last_stage_named: HashMap<String, usize>,
}

impl<'a> Compiler<'a> {
    fn new(
        df: &'a Dockerfile,
        opts: &'a BuildOptions,
        resolver: &'a dyn ImageResolver,
    ) -> Result<Self, FrontendError> {
        let target_platform = Platform::new(&opts.platform.0, &opts.platform.1);
        let build_platform = Platform::host();
        let platform_args = vec![
            ("TARGETPLATFORM".to_string(), target_platform.spec()),
            ("TARGETOS".to_string(), target_platform.os.clone()),
            ("TARGETARCH".to_string(), target_platform.arch.clone()),
            ("TARGETVARIANT".to_string(), target_platform.variant.clone()),
            ("BUILDPLATFORM".to_string(), build_platform.spec()),
            ("BUILDOS".to_string(), build_platform.os.clone()),
            ("BUILDARCH".to_string(), build_platform.arch.clone()),
            ("BUILDVARIANT".to_string(), build_platform.variant.clone()),
        ];
        let mut c = Compiler {
            df,
            opts,
            resolver,
            builder: DefinitionBuilder::default(),
            // The parser's notes (empty continuation lines) are reported as build checks.
            warnings: Vec::new(),
            globals: platform_args
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
            global_slots: platform_args
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect(),
            platform_args,
            stages: Vec::new(),
            status: Vec::new(),
            context: None,
            images: HashMap::new(),
            consumed_args: BTreeSet::new(),
            target_platform,
            multi_stage: false,
            undefined: undefined::UndefinedVars::default(),
            runs: Vec::new(),
            nesting: 0,
            parents: Vec::new(),
            last_stage_named: HashMap::new(),
        };
        c.split_stages()?;
        Ok(c)
    }

    fn fail(&self, instr: &Instruction, message: impl Into<String>) -> FrontendError {
        FrontendError::Instruction {
            file: self.opts.dockerfile_name.clone(),
            line: instr.start_line,
            instruction: instr.original.trim().to_string(),
            message: message.into(),
        }
    }

    fn warn(&mut self, line: usize, message: impl Into<String>) {
        self.warnings.push(Warning {
            line,
            message: message.into(),
        });
    }

    fn expand_with(
        &self,
        instr: &Instruction,
        word: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, FrontendError> {
        crate::expand_word(word, lookup, self.df.escape)
            .map_err(|e| self.fail(instr, e.to_string()))
    }

    fn global_value(&self, name: &str) -> Option<String> {
        self.global_slots
            .get(name)
            .and_then(|&i| self.globals.get(i))
            .and_then(|(_, v)| v.clone())
    }

    /// The `local://NAME` source of a named build context.
    fn local_source(&mut self, local: &str) -> OutputRef {
        let op = Op {
            inputs: vec![],
            kind: Some(op::Kind::Source(SourceOp {
                identifier: format!("local://{local}"),
                attrs: vec![KeyValue {
                    key: kiln_llb::attr::SHARED_KEY.into(),
                    value: local.to_string(),
                }],
            })),
        };
        let meta = OpMetadata {
            digest: String::new(),
            name: format!("[internal] load build context `{local}`"),
            location: String::new(),
            ignore_cache: self.opts.no_cache,
            stage: String::new(),
        };
        self.builder.add(op, meta)
    }

    /// Resolves a base image for `platform`, once per (name, platform) per build.
    fn resolve(
        &mut self,
        name: &str,
        platform: &Platform,
        instr: &Instruction,
    ) -> Result<ResolvedImage, FrontendError> {
        let other = *platform != self.target_platform;
        let key = if other {
            format!("{name}\0{}", platform.spec())
        } else {
            name.to_string()
        };
        if let Some(r) = self.images.get(&key) {
            return Ok(r.clone());
        }
        let r = if other {
            self.resolver.resolve_for_platform(name, &platform.spec())
        } else {
            self.resolver.resolve(name)
        }
        .map_err(|e| self.fail(instr, format!("cannot resolve image `{name}`: {e}")))?;
        self.images.insert(key, r.clone());
        Ok(r)
    }

    fn add_op(&mut self, op: Op, name: String, instr: &Instruction, stage: &str) -> OutputRef {
        let meta = OpMetadata {
            digest: String::new(),
            name,
            location: format!("{}:{}", self.opts.dockerfile_name, instr.start_line),
            ignore_cache: self.opts.no_cache,
            stage: stage.to_string(),
        };
        self.builder.add(op, meta)
    }

    fn context_source(&mut self) -> OutputRef {
        if let Some(c) = &self.context {
            return c.clone();
        }
        let mut attrs = vec![KeyValue {
            key: kiln_llb::attr::SHARED_KEY.into(),
            value: self.opts.context_name.clone(),
        }];
        if !self.opts.exclude_patterns.is_empty() {
            attrs.push(KeyValue {
                key: kiln_llb::attr::EXCLUDE_PATTERNS.into(),
                value: serde_json::Value::from(self.opts.exclude_patterns.clone()).to_string(),
            });
        }
        attrs.sort();
        let op = Op {
            inputs: vec![],
            kind: Some(op::Kind::Source(SourceOp {
                identifier: format!("local://{}", self.opts.context_name),
                attrs,
            })),
        };
        let meta = OpMetadata {
            digest: String::new(),
            name: "[internal] load build context".into(),
            location: String::new(),
            ignore_cache: self.opts.no_cache,
            stage: String::new(),
        };
        let out = self.builder.add(op, meta);
        self.context = Some(out.clone());
        out
    }

    fn expand(
        &self,
        d: &Dispatch,
        instr: &Instruction,
        word: &str,
    ) -> Result<String, FrontendError> {
        self.expand_with(instr, word, &|n| self.checked_lookup(d, instr, n))
    }

    /// `d.lookup(name)`, noting an UndefinedVar finding when the stage neither has an ENV nor
    /// declares an ARG of that name (an ARG without a value is declared: it expands to nothing).
    fn checked_lookup(&self, d: &Dispatch, instr: &Instruction, name: &str) -> Option<String> {
        let declared = d.image.env_get(name).is_some() || d.arg(name).is_some();
        self.undefined.record(
            instr.start_line,
            name,
            declared,
            d.image
                .env()
                .iter()
                .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k))
                .chain(d.args.iter().map(|(k, _)| k.as_str())),
        );
        d.lookup(name)
    }

    /// Compiles one instruction of a stage onto `d`.
    fn dispatch(&mut self, d: &mut Dispatch, instr: &Instruction) -> Result<(), FrontendError> {
        let command = instructions::parse(instr).map_err(|m| self.fail(instr, m))?;
        self.dispatch_command(d, instr, command)
    }

    /// Compiles one typed instruction of a stage onto `d`.
    fn dispatch_command(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
        command: Command,
    ) -> Result<(), FrontendError> {
        match command {
            Command::Arg(c) => self.dispatch_arg(d, instr, c),
            Command::Env(c) => self.dispatch_env(d, instr, c),
            Command::Label(c) => self.dispatch_label(d, instr, c),
            Command::Workdir(c) => self.dispatch_workdir(d, instr, c),
            Command::Run(c) => self.dispatch_run(d, instr, c),
            Command::Copy(c) | Command::Add(c) => self.dispatch_copy(d, instr, c),
            Command::User(c) => self.dispatch_user(d, instr, c),
            Command::Cmd(c) => self.dispatch_cmd(d, c),
            Command::Entrypoint(c) => self.dispatch_entrypoint(d, c),
            Command::Expose(c) => self.dispatch_expose(d, instr, c),
            Command::Volume(c) => self.dispatch_volume(d, instr, c),
            Command::StopSignal(c) => self.dispatch_stopsignal(d, instr, c),
            Command::Shell(c) => self.dispatch_shell(d, c),
            Command::Healthcheck(c) => self.dispatch_healthcheck(d, c),
            Command::Maintainer(c) => self.dispatch_maintainer(d, instr, c),
            Command::Onbuild(c) => self.dispatch_onbuild(d, c),
            Command::From => Err(self.fail(instr, "internal: FROM inside a stage")),
        }
    }
}

/// `docker-image://REF` pinned to a platform.
fn image_source(reference: &str, platform: &Platform) -> Op {
    Op {
        inputs: vec![],
        kind: Some(op::Kind::Source(SourceOp {
            identifier: format!("docker-image://{reference}"),
            attrs: vec![KeyValue {
                key: kiln_llb::attr::IMAGE_PLATFORM.into(),
                value: platform.spec(),
            }],
        })),
    }
}

#[cfg(test)]
mod tests;

//! Parsed Dockerfile → LLB definition plus the image config it produces, following BuildKit's
//! dockerfile2llb: stages, ARG scoping, base images through an [`ImageResolver`], one op per
//! filesystem-changing instruction and one history entry per instruction.

mod add;
mod config;
mod flags;
mod git;
mod lint;
mod undefined;
mod util;

use crate::ast::{Dockerfile, Instruction};
use crate::FrontendError;
use config::{Healthcheck, ImageState, Platform, DEFAULT_PATH};
use flags::Flags;
use kiln_llb::{
    file_action, op, Chown, Definition, DefinitionBuilder, ExecMeta, ExecOp, FileAction, FileCopy,
    FileMkdir, FileMkfile, FileOp, KeyValue, MergeOp, Mount, NetworkMode, Op, OpMetadata,
    OutputRef, SourceOp,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use util::{clean_path, go_duration, go_list, go_quote_list, go_quote_rune, join_abs, suggestion};

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

/// How deeply stage compilations may nest (`COPY --from=a` in `b`, `COPY --from=b` in `c`, ...).
/// Each level costs stack (up to 64 KiB in debug builds; 16 levels fit in half of the 2 MiB of a
/// tokio thread, where the daemon compiles); `FROM` chains do not nest at all.
const MAX_STAGE_NESTING: usize = 16;

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

/// One `FROM` and the instructions under it.
struct StageDef<'a> {
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
struct StageOut {
    state: Option<OutputRef>,
    image: ImageState,
    platform: Platform,
}

enum Status {
    Pending,
    InProgress,
    /// Shared: every `COPY --from` of the stage reads it, and cloning its config each time made
    /// many such lines quadratic.
    Done(Rc<StageOut>),
}

/// Where a COPY reads from.
enum CopySource {
    Context,
    Stage(Option<OutputRef>),
    Image(OutputRef),
}

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

    /// `[label i/n] text`, counting this step.
    fn step_name(&mut self, text: &str) -> String {
        self.cmd_index += 1;
        let width = self.cmd_total.to_string().len();
        let counter = format!("{:>width$}/{}", self.cmd_index, self.cmd_total);
        if self.label.is_empty() {
            format!("[{counter}] {text}")
        } else {
            format!("[{} {counter}] {text}", self.label)
        }
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

/// `run make` → `RUN make`: the instruction as written, keyword upper-cased.
fn display(instr: &Instruction) -> String {
    let text = instr.original.trim();
    match text.split_once(char::is_whitespace) {
        Some((kw, rest)) => format!("{} {}", kw.to_ascii_uppercase(), rest.trim_start()),
        None => text.to_ascii_uppercase(),
    }
}

/// `NAME=default` or `NAME` from an ARG word.
fn split_arg(word: &str) -> (&str, Option<&str>) {
    match word.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (word, None),
    }
}

/// Whether a stage name is one BuildKit accepts: `[a-z][a-z0-9-_.]*`.
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
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

    fn flag<T>(&self, instr: &Instruction, r: Result<T, String>) -> Result<T, FrontendError> {
        r.map_err(|m| self.fail(instr, m))
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

    /// Global ARGs, then one [`StageDef`] per FROM, with base names expanded.
    fn split_stages(&mut self) -> Result<(), FrontendError> {
        let instrs = &self.df.instructions;
        let first_from = instrs.iter().position(|i| i.name == "from");
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
            if instr.name != "arg" {
                return Err(self.fail(
                    instr,
                    format!(
                        "`{}` comes before the first `FROM`: only `ARG` may precede it; \
                         move it into a build stage",
                        instr.name.to_ascii_uppercase()
                    ),
                ));
            }
            Flags::parse("arg", &instr.flags, &[]).map_err(|m| self.fail(instr, m))?;
            if instr.args.is_empty() {
                return Err(self.fail(instr, "`ARG` needs a name: write `ARG NAME[=default]`"));
            }
            for word in &instr.args {
                let (name, default) = split_arg(word);
                if name.is_empty() {
                    return Err(self.fail(instr, "`ARG` needs a name: write `ARG NAME[=default]`"));
                }
                self.consumed_args.insert(name.to_string());
                let value = match self.opts.build_args.get(name) {
                    Some(v) => Some(v.clone()),
                    None => match default {
                        Some(d) => Some(self.expand_with(instr, d, &|n| self.global_value(n))?),
                        None => None,
                    },
                };
                self.global_slots
                    .insert(name.to_string(), self.globals.len());
                self.globals.push((name.to_string(), value));
            }
        }

        let mut starts: Vec<usize> = instrs
            .iter()
            .enumerate()
            .filter(|(_, i)| i.name == "from")
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
            let flags =
                Flags::parse("from", &from.flags, &["platform"]).map_err(|m| self.fail(from, m))?;
            let (base_raw, name) = match from.args.as_slice() {
                [base] => (base, None),
                [base, kw, name] if kw.eq_ignore_ascii_case("as") => {
                    (base, Some(name.to_ascii_lowercase()))
                }
                _ => {
                    return Err(self.fail(
                        from,
                        "`FROM` takes an image and an optional stage name: \
                         write `FROM <image> [AS <name>]`",
                    ))
                }
            };
            let base = self.expand_with(from, base_raw, &lookup)?;
            if base.is_empty() {
                return Err(self.fail(
                    from,
                    format!(
                        "the base image `{base_raw}` expands to nothing: \
                         give the ARG a default or pass `--build-arg`"
                    ),
                ));
            }
            if let Some(n) = &name {
                if !valid_stage_name(n) {
                    return Err(self.fail(
                        from,
                        format!(
                            "`{n}` is not a valid stage name: start with a letter and use only \
                             letters, digits, `-`, `_` and `.`"
                        ),
                    ));
                }
            }
            let platform = match flags.string("platform").map_err(|m| self.fail(from, m))? {
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
    fn run(mut self) -> Result<(Compiled, Vec<(usize, &'static str, String)>), FrontendError> {
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
    fn stage(&mut self, idx: usize, referrer: &Instruction) -> Result<Rc<StageOut>, FrontendError> {
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
        let ops_in_stage = commands
            .iter()
            .filter(|c| matches!(c.name.as_str(), "run" | "copy" | "add" | "workdir"))
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
            let name = d.step_name(&format!("FROM {}", resolved.reference));
            let source = image_source(&resolved.reference, &d.platform);
            d.state = Some(self.add_op(source, name, from, &d.meta_stage));
        }

        for instr in triggers.iter().chain(commands) {
            self.dispatch(&mut d, instr)?;
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
        let parsed = crate::parse(&text).map_err(|e| {
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
            if matches!(instr.name.as_str(), "onbuild" | "from" | "maintainer") {
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
                let step = d.step_name(&format!("FROM {}", resolved.reference));
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
                let step = d.step_name(&format!("FROM context `{name}`"));
                d.state = Some(self.add_op(op, step, from, &d.meta_stage));
            }
        }
        Ok(())
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

    fn one_arg<'i>(&self, instr: &'i Instruction, usage: &str) -> Result<&'i str, FrontendError> {
        match instr.args.as_slice() {
            [a] if !a.trim().is_empty() => Ok(a.as_str()),
            _ => Err(self.fail(
                instr,
                format!(
                    "`{}` takes exactly one argument: write `{usage}`",
                    instr.name.to_ascii_uppercase()
                ),
            )),
        }
    }

    fn dispatch(&mut self, d: &mut Dispatch, instr: &Instruction) -> Result<(), FrontendError> {
        // RUN, COPY/ADD and HEALTHCHECK parse their own flags; every other instruction takes none.
        if !matches!(instr.name.as_str(), "run" | "copy" | "add" | "healthcheck") {
            Flags::parse(&instr.name, &instr.flags, &[]).map_err(|m| self.fail(instr, m))?;
        }
        match instr.name.as_str() {
            "arg" => self.dispatch_arg(d, instr),
            "env" => self.dispatch_env(d, instr),
            "label" => self.dispatch_label(d, instr),
            "workdir" => self.dispatch_workdir(d, instr),
            "run" => self.dispatch_run(d, instr),
            "copy" | "add" => self.dispatch_copy(d, instr),
            "user" => {
                let raw = self.one_arg(instr, "USER <user>[:<group>]")?;
                let user = self.expand(d, instr, raw)?;
                d.image.user = user.clone();
                d.image.add_history(format!("USER {user}"), true);
                Ok(())
            }
            "cmd" | "entrypoint" => self.dispatch_cmd(d, instr),
            "expose" => self.dispatch_expose(d, instr),
            "volume" => self.dispatch_volume(d, instr),
            "stopsignal" => {
                let raw = self.one_arg(instr, "STOPSIGNAL <signal>")?;
                let sig = self.expand(d, instr, raw)?;
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
            "shell" => {
                if !instr.json || instr.args.is_empty() {
                    return Err(self.fail(
                        instr,
                        "`SHELL` takes a JSON array: write `SHELL [\"/bin/bash\", \"-c\"]`",
                    ));
                }
                d.image.shell = Some(instr.args.clone());
                d.image
                    .add_history(format!("SHELL {}", go_list(&instr.args)), true);
                Ok(())
            }
            "healthcheck" => self.dispatch_healthcheck(d, instr),
            "maintainer" => {
                let raw = self.one_arg(instr, "MAINTAINER <name>")?;
                let who = self.expand(d, instr, raw)?;
                d.image.author = Some(who.clone());
                d.image.labels.insert("maintainer".into(), who.clone());
                d.image.add_history(format!("MAINTAINER {who}"), true);
                Ok(())
            }
            "onbuild" => {
                let Some(next) = &instr.next else {
                    return Err(self.fail(
                        instr,
                        "`ONBUILD` needs an instruction: write `ONBUILD RUN ...`",
                    ));
                };
                if matches!(next.name.as_str(), "onbuild" | "from" | "maintainer") {
                    return Err(self.fail(
                        instr,
                        format!(
                            "`ONBUILD {}` is not allowed: ONBUILD cannot trigger `ONBUILD`, `FROM` or `MAINTAINER`",
                            next.name.to_ascii_uppercase()
                        ),
                    ));
                }
                let expr = display(next);
                d.image.onbuild.push(expr.clone());
                d.image.add_history(format!("ONBUILD {expr}"), true);
                Ok(())
            }
            "from" => Err(self.fail(instr, "internal: FROM inside a stage")),
            other => Err(self.fail(
                instr,
                format!("unknown instruction `{}`", other.to_ascii_uppercase()),
            )),
        }
    }

    fn dispatch_arg(&mut self, d: &mut Dispatch, instr: &Instruction) -> Result<(), FrontendError> {
        if instr.args.is_empty() {
            return Err(self.fail(instr, "`ARG` needs a name: write `ARG NAME[=default]`"));
        }
        let mut commit = Vec::new();
        for word in &instr.args {
            let (name, default) = split_arg(word);
            if name.is_empty() {
                return Err(self.fail(instr, "`ARG` needs a name: write `ARG NAME[=default]`"));
            }
            let default = match default {
                Some(raw) => Some(self.expand(d, instr, raw)?),
                None => None,
            };
            commit.push(match &default {
                Some(v) => format!("{name}={v}"),
                None => name.to_string(),
            });
            self.consumed_args.insert(name.to_string());
            let value = if let Some(v) = self.opts.build_args.get(name) {
                Some(v.clone())
            } else if default.is_some() {
                default
            } else if let Some((_, v)) = self.platform_args.iter().find(|(k, _)| k == name) {
                Some(v.clone())
            } else {
                self.global_value(name)
            };
            d.push_arg(name.to_string(), value);
        }
        d.image
            .add_history(format!("ARG {}", commit.join(" ")), true);
        Ok(())
    }

    /// Expanded key/value pairs of ENV or LABEL (triples in the AST).
    fn pairs(
        &self,
        d: &Dispatch,
        instr: &Instruction,
        usage: &str,
    ) -> Result<Vec<(String, String)>, FrontendError> {
        let kw = instr.name.to_ascii_uppercase();
        if instr.args.is_empty() || !instr.args.chunks_exact(3).remainder().is_empty() {
            return Err(self.fail(
                instr,
                format!("`{kw}` needs `KEY=value` pairs: write `{usage}`"),
            ));
        }
        let mut out = Vec::new();
        for t in instr.args.chunks(3) {
            let (key, value, sep) = (&t[0], &t[1], &t[2]);
            if sep.is_empty() && value.is_empty() {
                return Err(self.fail(
                    instr,
                    format!("`{kw} {key}` has no value: write `{kw} {key}=value`"),
                ));
            }
            let key = self.expand(d, instr, key)?;
            if key.is_empty() {
                return Err(self.fail(instr, format!("`{kw}` has an empty name: write `{usage}`")));
            }
            let value = self.expand(d, instr, value)?;
            out.push((key, value));
        }
        Ok(out)
    }

    fn dispatch_env(&mut self, d: &mut Dispatch, instr: &Instruction) -> Result<(), FrontendError> {
        let mut commit = String::from("ENV");
        // Each pair sees the ones before it (`ENV A=1 B=$A`) only from the next instruction on,
        // as in Docker: expand all first, then set.
        let pairs = self.pairs(d, instr, "ENV KEY=value")?;
        for (k, v) in pairs {
            commit.push_str(&format!(" {k}={v}"));
            d.image.env_set(&k, &v);
        }
        d.image.add_history(commit, true);
        Ok(())
    }

    fn dispatch_label(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
    ) -> Result<(), FrontendError> {
        let mut commit = String::from("LABEL");
        for (k, v) in self.pairs(d, instr, "LABEL key=value")? {
            commit.push_str(&format!(" {k}={v}"));
            d.image.labels.insert(k, v);
        }
        d.image.add_history(commit, true);
        Ok(())
    }

    fn dispatch_workdir(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
    ) -> Result<(), FrontendError> {
        let raw = self.one_arg(instr, "WORKDIR <path>")?;
        let path = self.expand(d, instr, raw)?;
        let current = if d.image.working_dir.is_empty() {
            "/".to_string()
        } else {
            d.image.working_dir.clone()
        };
        let wd = join_abs(&current, &path);
        d.image.working_dir = wd.clone();
        let name = d.step_name(&format!("WORKDIR {path}"));
        let with_layer = wd != "/";
        if with_layer {
            let (inputs, base) = d.base_inputs();
            let op = Op {
                inputs,
                kind: Some(op::Kind::File(FileOp {
                    base,
                    actions: vec![FileAction {
                        action: Some(file_action::Action::Mkdir(FileMkdir {
                            path: wd.clone(),
                            mode: 0o755,
                            make_parents: true,
                            owner: d.user_chown(),
                        })),
                    }],
                })),
            };
            d.state = Some(self.add_op(op, name, instr, &d.meta_stage));
        }
        d.image.add_history(format!("WORKDIR {wd}"), !with_layer);
        Ok(())
    }

    fn dispatch_run(&mut self, d: &mut Dispatch, instr: &Instruction) -> Result<(), FrontendError> {
        self.runs.push(RunStep {
            line: instr.start_line,
            platform: d.platform.spec(),
        });
        let flags = Flags::parse("run", &instr.flags, &["network", "mount", "security"])
            .map_err(|m| self.fail(instr, m))?;
        let network = match flags.string("network").map_err(|m| self.fail(instr, m))? {
            None | Some("default") | Some("host") => NetworkMode::Host,
            Some("none") => NetworkMode::None,
            Some(other) => {
                return Err(self.fail(
                    instr,
                    format!("unknown network `{other}`: use `default`, `none` or `host`"),
                ))
            }
        };
        match flags.string("security").map_err(|m| self.fail(instr, m))? {
            None | Some("sandbox") => {}
            Some(other) => {
                return Err(self.fail(
                    instr,
                    format!("`--security={other}` is not supported: kiln runs steps sandboxed"),
                ))
            }
        }
        let shebang = if instr.json {
            None
        } else {
            self.shebang_heredoc(instr)
        };
        let args = if let Some(h) = &shebang {
            // As BuildKit: the heredoc becomes an executable file, mounted read-only at
            // `/dev/pipes/`, and run by the interpreter its `#!` line names.
            vec![format!("/dev/pipes/{}", h.name)]
        } else if instr.json {
            instr.args.clone()
        } else {
            let cmd = instr.args.first().map(String::as_str).unwrap_or("");
            let script = self.heredoc_script(instr, cmd)?;
            let mut a = d.shell();
            a.push(script);
            a
        };
        if args.is_empty() || (instr.json && args.iter().all(|a| a.is_empty())) {
            return Err(self.fail(instr, "`RUN` needs a command: write `RUN <command>`"));
        }
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
        for spec in self.flag(instr, flags.all("mount"))? {
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

    /// One `RUN --mount=type=...,target=...` as an exec mount; `from=` sources are added to
    /// `inputs`.
    fn run_mount(
        &mut self,
        d: &Dispatch,
        instr: &Instruction,
        spec: &str,
        cwd: &str,
        inputs: &mut Vec<kiln_llb::Input>,
    ) -> Result<Mount, FrontendError> {
        let mut fields: Vec<(String, Option<String>)> = Vec::new();
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = match part.split_once('=') {
                Some((k, v)) => (
                    k.trim().to_ascii_lowercase(),
                    // Not an UndefinedVar site: BuildKit checks no part of `RUN`.
                    Some(self.expand_with(instr, v, &|n| d.lookup(n))?),
                ),
                None => (part.trim().to_ascii_lowercase(), None),
            };
            fields.push((k, v));
        }
        let get = |key: &str| {
            fields
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone().unwrap_or_default())
        };
        let flag_on = |key: &str| {
            fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| {
                v.as_deref()
                    .is_none_or(|v| v.eq_ignore_ascii_case("true") || v == "1")
            })
        };
        let kind = get("type").unwrap_or_else(|| "bind".into());
        let allowed: &[&str] = match kind.as_str() {
            "bind" => &[
                "type",
                "target",
                "dst",
                "destination",
                "source",
                "src",
                "from",
                "rw",
                "readwrite",
                "readonly",
                "ro",
            ],
            "cache" => &[
                "type",
                "target",
                "dst",
                "destination",
                "id",
                "sharing",
                "from",
                "source",
                "src",
                "mode",
                "uid",
                "gid",
                "readonly",
                "ro",
            ],
            "tmpfs" => &["type", "target", "dst", "destination", "size"],
            "secret" => &[
                "type",
                "target",
                "dst",
                "destination",
                "id",
                "env",
                "required",
                "mode",
                "uid",
                "gid",
            ],
            "ssh" => &[
                "type",
                "target",
                "dst",
                "destination",
                "id",
                "required",
                "mode",
                "uid",
                "gid",
            ],
            other => {
                return Err(self.fail(
                    instr,
                    format!(
                    "unknown mount type `{other}`: use `bind`, `cache`, `tmpfs`, `secret` or `ssh`"
                ),
                ))
            }
        };
        for (k, _) in &fields {
            if !allowed.contains(&k.as_str()) {
                let hint = suggestion(k, allowed.iter().copied());
                return Err(self.fail(
                    instr,
                    format!("unknown `--mount` option `{k}` for type `{kind}`{hint}"),
                ));
            }
        }
        let target = get("target")
            .or_else(|| get("dst"))
            .or_else(|| get("destination"));
        let id = get("id");
        let target = match (kind.as_str(), target) {
            (_, Some(t)) if !t.is_empty() => join_abs(cwd, &t),
            // BuildKit: with `env=` and no target the secret is only the variable, no file.
            ("secret", None)
                if get("env").is_some_and(|e| !e.is_empty())
                    && id.as_ref().is_some_and(|i| !i.is_empty()) =>
            {
                String::new()
            }
            ("secret", None) => match &id {
                Some(id) if !id.is_empty() => format!("/run/secrets/{id}"),
                _ => {
                    return Err(self.fail(
                        instr,
                        "a secret mount needs an `id` or a `target`: write `--mount=type=secret,id=NAME`",
                    ))
                }
            },
            ("ssh", None) => "/run/buildkit/ssh_agent.0".to_string(),
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
        let source = get("source").or_else(|| get("src")).unwrap_or_default();
        let mut from_input =
            |this: &mut Self, default_context: bool| -> Result<i64, FrontendError> {
                let src_ref = match get("from") {
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
        let mount = match kind.as_str() {
            "bind" => {
                let input = from_input(self, true)?;
                let rw = flag_on("rw").or(flag_on("readwrite")).unwrap_or(false);
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
            "cache" => {
                let input = from_input(self, false)?;
                let sharing = get("sharing").unwrap_or_else(|| "shared".into());
                if !matches!(sharing.as_str(), "shared" | "private" | "locked") {
                    return Err(self.fail(
                        instr,
                        format!("unknown cache sharing `{sharing}`: use `shared`, `private` or `locked`"),
                    ));
                }
                opt(
                    "id",
                    Some(
                        id.filter(|i| !i.is_empty())
                            .unwrap_or_else(|| target.clone()),
                    ),
                );
                opt("sharing", Some(sharing));
                opt("mode", get("mode"));
                opt("uid", get("uid"));
                opt("gid", get("gid"));
                Mount {
                    input,
                    selector: if input >= 0 {
                        clean_path(&format!("/{source}"))
                    } else {
                        String::new()
                    },
                    dest: target,
                    output: -1,
                    readonly: flag_on("readonly").or(flag_on("ro")).unwrap_or(false),
                    mount_type: kiln_llb::MountType::Cache as i32,
                    options: vec![],
                }
            }
            "tmpfs" => {
                opt("size", get("size"));
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
            other => {
                let default_id = if other == "ssh" {
                    Some("default".to_string())
                } else {
                    None
                };
                let id = id
                    .filter(|i| !i.is_empty())
                    .or(default_id)
                    .unwrap_or_else(|| target.rsplit('/').next().unwrap_or_default().to_string());
                opt("id", Some(id));
                opt("env", get("env"));
                opt("required", flag_on("required").map(|b| b.to_string()));
                opt("mode", get("mode"));
                opt("uid", get("uid"));
                opt("gid", get("gid"));
                Mount {
                    input: -1,
                    selector: String::new(),
                    dest: target,
                    output: -1,
                    readonly: true,
                    mount_type: if other == "ssh" {
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

    /// The heredoc of a shell-form `RUN <<EOF` whose body starts with a `#!` line: BuildKit runs
    /// such a body as an executable file rather than feeding it to the shell.
    fn shebang_heredoc<'i>(&self, instr: &'i Instruction) -> Option<&'i crate::Heredoc> {
        let [h] = instr.heredocs.as_slice() else {
            return None;
        };
        let cmd = instr.args.first().map(String::as_str).unwrap_or("").trim();
        let marker = cmd
            .strip_prefix("<<")
            .map(|m| m.strip_prefix('-').unwrap_or(m))?;
        (marker.trim_matches(|c| c == '"' || c == '\'') == h.name && h.content.starts_with("#!"))
            .then_some(h)
    }

    /// The shell script of a shell-form RUN, with heredoc bodies put back in place (the shell
    /// reads them itself) or, for a lone `RUN <<EOF`, the body alone, as BuildKit does.
    fn heredoc_script(&self, instr: &Instruction, cmd: &str) -> Result<String, FrontendError> {
        if instr.heredocs.is_empty() {
            return Ok(cmd.to_string());
        }
        let lone = instr.heredocs.len() == 1 && {
            let h = &instr.heredocs[0];
            let t = cmd.trim();
            let marker = t
                .strip_prefix("<<")
                .map(|m| m.strip_prefix('-').unwrap_or(m));
            marker.is_some_and(|m| m.trim_matches(|c| c == '"' || c == '\'') == h.name)
        };
        if lone {
            let h = &instr.heredocs[0];
            let body = if h.chomp {
                h.content
                    .lines()
                    .map(|l| l.trim_start_matches('\t'))
                    .collect::<Vec<_>>()
                    .join("\n")
                    + "\n"
            } else {
                h.content.clone()
            };
            return Ok(body);
        }
        let mut script = cmd.to_string();
        script.push('\n');
        for h in &instr.heredocs {
            script.push_str(&h.content);
            script.push_str(&h.name);
            script.push('\n');
        }
        Ok(script)
    }

    fn dispatch_copy(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
    ) -> Result<(), FrontendError> {
        let is_add = instr.name == "add";
        let kw = if is_add { "ADD" } else { "COPY" };
        let allowed: &[&str] = if is_add {
            &[
                "chown",
                "chmod",
                "link",
                "exclude",
                "checksum",
                "keep-git-dir",
            ]
        } else {
            &["from", "chown", "chmod", "link", "exclude", "parents"]
        };
        let flags =
            Flags::parse(&instr.name, &instr.flags, allowed).map_err(|m| self.fail(instr, m))?;
        let parents = self.flag(instr, flags.bool("parents"))?;
        // Validated below, once the sources say whether it is a digest or a git commit.
        let checksum = match self.flag(instr, flags.string("checksum"))? {
            None => None,
            Some(raw) => Some(self.expand(d, instr, raw)?),
        };
        // Only git sources have a `.git` to keep; BuildKit ignores the flag for the others.
        let keep_git_dir = self.flag(instr, flags.bool("keep-git-dir"))?;
        // --link: the files are copied onto scratch and the result merged onto the base, so the
        // layer does not depend on (and need not be rebuilt for) what is below it.
        let link = self.flag(instr, flags.bool("link"))?;
        let excludes: Vec<String> = self
            .flag(instr, flags.all("exclude"))?
            .into_iter()
            .map(|e| self.expand(d, instr, e))
            .collect::<Result<_, _>>()?;
        let mode = match self.flag(instr, flags.string("chmod"))? {
            None => -1,
            Some(raw) => {
                let m = self.expand(d, instr, raw)?;
                match u32::from_str_radix(&m, 8) {
                    Ok(v) if v <= 0o7777 && !m.is_empty() => v as i32,
                    _ => {
                        return Err(self.fail(
                            instr,
                            format!(
                                "`--chmod={m}` is not an octal mode: write it like `--chmod=0755`"
                            ),
                        ))
                    }
                }
            }
        };
        let owner = match self.flag(instr, flags.string("chown"))? {
            None => None,
            Some(raw) => {
                let c = self.expand(d, instr, raw)?;
                if c.is_empty() {
                    return Err(
                        self.fail(instr, "`--chown` is empty: write `--chown=user[:group]`")
                    );
                }
                Some(parse_chown(&c))
            }
        };
        let heredoc_names: BTreeSet<&str> =
            instr.heredocs.iter().map(|h| h.name.as_str()).collect();
        if instr.args.len() < 2 {
            return Err(self.fail(
                instr,
                format!("`{kw}` needs a source and a destination: write `{kw} <src>... <dest>`"),
            ));
        }
        let (dest_raw, srcs_raw) = match instr.args.split_last() {
            Some((dest, srcs)) => (dest, srcs),
            None => {
                return Err(self.fail(instr, format!("`{kw}` needs a source and a destination")))
            }
        };
        let dest_expanded = self.expand(d, instr, dest_raw)?;
        let mut srcs = Vec::new();
        for s in srcs_raw {
            if !instr.json {
                let marker = s
                    .strip_prefix("<<")
                    .map(|m| m.strip_prefix('-').unwrap_or(m));
                if let Some(m) = marker {
                    let m = m.trim_matches(|c| c == '"' || c == '\'');
                    if heredoc_names.contains(m) {
                        srcs.push((true, m.to_string()));
                        continue;
                    }
                }
            }
            srcs.push((false, self.expand(d, instr, s)?));
        }
        if srcs.len() > 1 && !dest_expanded.ends_with('/') {
            return Err(self.fail(
                instr,
                format!(
                    "`{kw}` with more than one source needs a directory destination ending in `/`: \
                     write `{dest_expanded}/`"
                ),
            ));
        }
        let current = if d.image.working_dir.is_empty() {
            "/".to_string()
        } else {
            d.image.working_dir.clone()
        };
        let mut dest = join_abs(&current, &dest_expanded);
        if (dest_expanded.is_empty() || dest_expanded == "." || dest_expanded.ends_with('/'))
            && !dest.ends_with('/')
        {
            dest.push('/');
        }

        let source = match self.flag(instr, flags.string("from"))? {
            None => CopySource::Context,
            Some(raw) => self.copy_source(d, instr, raw)?,
        };
        let (mut inputs, base) = if link { (vec![], -1) } else { d.base_inputs() };
        // A git reference is checked first: `https://host/repo.git` is one, not a download.
        let git_ref = |heredoc: bool, s: &str| {
            if is_add && !heredoc {
                git::parse(s)
            } else {
                None
            }
        };
        let urls: Vec<&str> = srcs
            .iter()
            .filter(|(heredoc, s)| {
                is_add && !heredoc && add::is_http_url(s) && git_ref(*heredoc, s).is_none()
            })
            .map(|(_, s)| s.as_str())
            .collect();
        let all_git = srcs
            .iter()
            .all(|(heredoc, s)| git_ref(*heredoc, s).is_some());
        if let Some(c) = &checksum {
            if all_git {
                // The commit the ref must resolve to, as BuildKit checks it.
                git::validate_checksum(c).map_err(|m| self.fail(instr, m))?;
            } else if urls.is_empty() || urls.len() != srcs.len() {
                return Err(self.fail(
                    instr,
                    "`--checksum` applies to http(s) URL sources only (and git sources, as a \
                     commit hash): remove it, or add the file from its URL",
                ));
            } else {
                add::validate_checksum(c).map_err(|m| self.fail(instr, m))?;
            }
        }
        let needs_context = srcs.iter().any(|(heredoc, s)| {
            !(*heredoc || is_add && add::is_http_url(s) || git_ref(*heredoc, s).is_some())
        });
        let src_ref = match &source {
            CopySource::Context => {
                if needs_context {
                    Some(self.context_source())
                } else {
                    None
                }
            }
            CopySource::Stage(s) => s.clone(),
            CopySource::Image(s) => Some(s.clone()),
        };
        let src_input = match &src_ref {
            None => -1,
            Some(r) if !link && d.state.as_ref() == Some(r) => 0,
            Some(r) => {
                inputs.push(r.input());
                inputs.len() as i64 - 1
            }
        };

        // What every copy of this instruction shares: the destination, owner and mode, and
        // Docker's rules (follow symlinks, copy a directory's contents, make the destination).
        let copy = |src_input: i64, src: String| FileCopy {
            src_input,
            src,
            dest: dest.clone(),
            owner: owner.clone(),
            mode,
            follow_symlinks: true,
            dir_contents_only: true,
            create_dest_path: true,
            ..Default::default()
        };
        let mut actions = Vec::new();
        for (heredoc, src) in &srcs {
            if *heredoc {
                let Some(h) = instr.heredocs.iter().find(|h| &h.name == src) else {
                    return Err(self.fail(instr, format!("heredoc `{src}` has no body")));
                };
                let data = if h.expand {
                    let lookup = |n: &str| self.checked_lookup(d, instr, n);
                    crate::expand_heredoc(&h.content, &lookup, self.df.escape).map_err(|e| {
                        self.fail(instr, format!("cannot expand heredoc `{}`: {e}", h.name))
                    })?
                } else {
                    h.content.clone()
                };
                let path = if dest.ends_with('/') {
                    format!("{dest}{}", h.name)
                } else {
                    dest.clone()
                };
                actions.push(FileAction {
                    action: Some(file_action::Action::Mkfile(FileMkfile {
                        path,
                        mode: if mode >= 0 { mode } else { 0o644 },
                        data: data.into_bytes(),
                        owner: owner.clone(),
                    })),
                });
                continue;
            }
            if let Some(r) = git_ref(false, src) {
                // The repository is its own source op (checked out at the resolved commit, keyed
                // by it), copied whole onto the destination like BuildKit's `llb.Git` state.
                let repo = self.add_op(
                    git::source(&r, keep_git_dir, checksum.as_deref()),
                    format!("[internal] git {src}"),
                    instr,
                    &d.meta_stage,
                );
                inputs.push(repo.input());
                actions.push(FileAction {
                    action: Some(file_action::Action::Copy(FileCopy {
                        exclude_patterns: excludes.clone(),
                        ..copy(inputs.len() as i64 - 1, "/".into())
                    })),
                });
                continue;
            }
            if is_add && add::is_http_url(src) {
                // The download is its own source op; the file it holds is copied like any
                // other, but never unpacked (as Docker does for remote archives).
                let named = add::url_filename(src);
                let filename = match (&named, dest.ends_with('/')) {
                    (Some(f), _) => Some(f.clone()),
                    // Into a directory: the server's Content-Disposition may name it.
                    (None, true) => None,
                    (None, false) => Some("__unnamed__".to_string()),
                };
                let http = add::http_source(src, filename.as_deref(), checksum.as_deref());
                let http_ref = self.add_op(
                    http,
                    format!("[internal] download {src}"),
                    instr,
                    &d.meta_stage,
                );
                inputs.push(http_ref.input());
                actions.push(FileAction {
                    action: Some(file_action::Action::Copy(copy(
                        inputs.len() as i64 - 1,
                        format!("/{}", filename.as_deref().unwrap_or("")),
                    ))),
                });
                continue;
            }
            let (copy_src, include_patterns) = if parents {
                let (dir, pattern) = add::parents_split(src);
                (clean_path(&format!("/{dir}")), vec![pattern])
            } else {
                (clean_path(&format!("/{src}")), vec![])
            };
            if parents && !dest.ends_with('/') {
                return Err(self.fail(
                    instr,
                    format!("`{kw} --parents` copies into a directory: write the destination as `{dest_expanded}/`"),
                ));
            }
            actions.push(FileAction {
                action: Some(file_action::Action::Copy(FileCopy {
                    allow_wildcard: !parents,
                    allow_empty_wildcard: true,
                    include_patterns,
                    exclude_patterns: excludes.clone(),
                    attempt_unpack: is_add,
                    ..copy(src_input, copy_src)
                })),
            });
        }
        let name = d.step_name(&display(instr));
        let op = Op {
            inputs,
            kind: Some(op::Kind::File(FileOp { base, actions })),
        };
        let copied = self.add_op(op, name.clone(), instr, &d.meta_stage);
        d.state = match (link, d.state.take()) {
            (true, Some(below)) => {
                let merge = Op {
                    inputs: vec![below.input(), copied.input()],
                    kind: Some(op::Kind::Merge(MergeOp { inputs: vec![0, 1] })),
                };
                Some(self.add_op(merge, format!("{name} (link)"), instr, &d.meta_stage))
            }
            _ => Some(copied),
        };
        let mut created_by = String::from(kw);
        for (heredoc, s) in &srcs {
            created_by.push(' ');
            if *heredoc {
                created_by.push_str("<<");
            }
            created_by.push_str(s);
        }
        created_by.push_str(&format!(" {dest_expanded} # buildkit"));
        d.image.add_history(created_by, false);
        Ok(())
    }

    /// Resolves `COPY --from=X`: a stage by name or index, else an image.
    fn copy_source(
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
            if let Some(best) = util::did_you_mean(&lower, names.iter().copied()) {
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

    fn dispatch_cmd(&mut self, d: &mut Dispatch, instr: &Instruction) -> Result<(), FrontendError> {
        let kw = instr.name.to_ascii_uppercase();
        let args = if instr.json {
            instr.args.clone()
        } else {
            let mut a = d.shell();
            a.push(instr.args.first().cloned().unwrap_or_default());
            a
        };
        d.image
            .add_history(format!("{kw} {}", go_quote_list(&args)), true);
        if instr.name == "cmd" {
            d.image.cmd = Some(args);
            // BuildKit v0.11 (and later) marks every `CMD`, exec form too, for Docker's image spec.
            d.image.args_escaped = true;
            d.cmd_set = true;
        } else {
            d.image.entrypoint = Some(args);
            if !d.cmd_set {
                d.image.cmd = None;
            }
        }
        Ok(())
    }

    fn dispatch_expose(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
    ) -> Result<(), FrontendError> {
        if instr.args.is_empty() {
            return Err(self.fail(
                instr,
                "`EXPOSE` needs a port: write `EXPOSE 80` or `EXPOSE 53/udp`",
            ));
        }
        let mut added = BTreeSet::new();
        for raw in &instr.args {
            let spec = self.expand(d, instr, raw)?;
            for word in spec.split_whitespace() {
                for port in util::parse_port_spec(word).map_err(|m| self.fail(instr, m))? {
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

    fn dispatch_volume(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
    ) -> Result<(), FrontendError> {
        if instr.args.is_empty() {
            return Err(self.fail(instr, "`VOLUME` needs a path: write `VOLUME /data`"));
        }
        let mut vols = Vec::new();
        for raw in &instr.args {
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

    fn dispatch_healthcheck(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
    ) -> Result<(), FrontendError> {
        let flags = Flags::parse(
            "healthcheck",
            &instr.flags,
            &[
                "interval",
                "timeout",
                "start-period",
                "start-interval",
                "retries",
            ],
        )
        .map_err(|m| self.fail(instr, m))?;
        let kind = instr
            .args
            .first()
            .map(|k| k.to_ascii_uppercase())
            .unwrap_or_default();
        let hc = match kind.as_str() {
            "NONE" => {
                if instr.args.len() > 1 || !instr.flags.is_empty() {
                    return Err(self.fail(instr, "`HEALTHCHECK NONE` takes no arguments or flags"));
                }
                Healthcheck {
                    test: vec!["NONE".into()],
                    interval: 0,
                    timeout: 0,
                    start_period: 0,
                    start_interval: 0,
                    retries: 0,
                }
            }
            "CMD" => {
                let test = if instr.json {
                    let mut t = vec!["CMD".to_string()];
                    t.extend(instr.args[1..].iter().cloned());
                    t
                } else {
                    let cmd = instr.args[1..].join(" ");
                    vec!["CMD-SHELL".to_string(), cmd]
                };
                if test.len() < 2 || test[1].trim().is_empty() {
                    return Err(self.fail(
                        instr,
                        "`HEALTHCHECK CMD` needs a command: write `HEALTHCHECK CMD <command>`",
                    ));
                }
                let dur = |name: &str| -> Result<i128, FrontendError> {
                    let Some(v) = flags.string(name).map_err(|m| self.fail(instr, m))? else {
                        return Ok(0);
                    };
                    let ns = util::parse_go_duration(v)
                        .map_err(|m| self.fail(instr, format!("`--{name}`: {m}")))?;
                    if ns != 0 && ns < 1_000_000 {
                        return Err(self.fail(
                            instr,
                            format!("`--{name}={v}` is too short: use at least `1ms`, or `0` for the default"),
                        ));
                    }
                    Ok(ns)
                };
                let retries = match flags.string("retries").map_err(|m| self.fail(instr, m))? {
                    None => 0,
                    Some(r) => match r.parse::<i64>() {
                        Ok(n) if n >= 0 => n,
                        _ => {
                            return Err(self.fail(
                                instr,
                                format!("`--retries={r}` is not a count: write a whole number like `--retries=3`"),
                            ))
                        }
                    },
                };
                Healthcheck {
                    test,
                    interval: dur("interval")?,
                    timeout: dur("timeout")?,
                    start_period: dur("start-period")?,
                    start_interval: dur("start-interval")?,
                    retries,
                }
            }
            "" => return Err(self.fail(instr, "`HEALTHCHECK` needs `CMD <command>` or `NONE`")),
            other => {
                return Err(self.fail(
                    instr,
                    format!("unknown `HEALTHCHECK` type `{other}`: use `CMD <command>` or `NONE`"),
                ))
            }
        };
        let created_by = format!(
            "HEALTHCHECK &{{{} {} {} {} {} {}}}",
            go_quote_list(&hc.test),
            util::go_quote(&go_duration(hc.interval)),
            util::go_quote(&go_duration(hc.timeout)),
            util::go_quote(&go_duration(hc.start_period)),
            util::go_quote(&go_duration(hc.start_interval)),
            go_quote_rune(hc.retries),
        );
        d.image.healthcheck = Some(hc);
        d.image.add_history(created_by, true);
        Ok(())
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

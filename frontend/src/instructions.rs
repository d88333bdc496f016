//! Typed instructions: each parsed [`Instruction`] becomes one command type with its flags
//! checked and its arguments in named fields, as BuildKit's `frontend/dockerfile/instructions`
//! package does. What needs the build's variables (expansion, and the checks on expanded words)
//! is left to compilation.

mod flags;
mod run_mount;

use crate::ast::{Dockerfile, Heredoc, Instruction};
use crate::util::parse_go_duration;
use crate::ParseError;
use flags::Flags;
pub(crate) use run_mount::{MountKind, RunMount};

/// The instructions kiln knows, lower-case.
const INSTRUCTIONS: &[&str] = &[
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// What an instruction is, from its word: the first step of typing it, which cannot fail once
/// [`check_words`] has accepted the file. The compiler decides on it (where stages start, what
/// may come before the first `FROM`), not on the word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Keyword {
    Add,
    Arg,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    Expose,
    From,
    Healthcheck,
    Label,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    StopSignal,
    User,
    Volume,
    Workdir,
}

impl Keyword {
    /// The instruction's keyword; `None` for a word kiln does not know.
    pub(crate) fn of(instr: &Instruction) -> Option<Keyword> {
        Self::from_word(&instr.name)
    }

    fn from_word(word: &str) -> Option<Keyword> {
        Some(match word {
            "add" => Keyword::Add,
            "arg" => Keyword::Arg,
            "cmd" => Keyword::Cmd,
            "copy" => Keyword::Copy,
            "entrypoint" => Keyword::Entrypoint,
            "env" => Keyword::Env,
            "expose" => Keyword::Expose,
            "from" => Keyword::From,
            "healthcheck" => Keyword::Healthcheck,
            "label" => Keyword::Label,
            "maintainer" => Keyword::Maintainer,
            "onbuild" => Keyword::Onbuild,
            "run" => Keyword::Run,
            "shell" => Keyword::Shell,
            "stopsignal" => Keyword::StopSignal,
            "user" => Keyword::User,
            "volume" => Keyword::Volume,
            "workdir" => Keyword::Workdir,
            _ => return None,
        })
    }

    /// Whether `ONBUILD` may trigger it (not `ONBUILD`, `FROM` or `MAINTAINER`).
    pub(crate) fn may_trigger(self) -> bool {
        !matches!(self, Keyword::Onbuild | Keyword::From | Keyword::Maintainer)
    }
}

/// One instruction of a stage, typed.
pub(crate) enum Command {
    Arg(ArgCommand),
    Env(EnvCommand),
    Label(LabelCommand),
    Workdir(WorkdirCommand),
    Run(RunCommand),
    Copy(CopyCommand),
    Add(CopyCommand),
    User(UserCommand),
    Cmd(CmdCommand),
    Entrypoint(EntrypointCommand),
    Expose(ExposeCommand),
    Volume(VolumeCommand),
    StopSignal(StopSignalCommand),
    Shell(ShellCommand),
    Healthcheck(HealthcheckCommand),
    Maintainer(MaintainerCommand),
    Onbuild(OnbuildCommand),
    /// `FROM` inside a stage: the stage splitter never leaves one there.
    From,
}

impl Command {
    /// Whether the instruction is a step of its own (an op, numbered in `[stage n/total]`).
    pub(crate) fn is_step(&self) -> bool {
        matches!(
            self,
            Command::Run(_) | Command::Copy(_) | Command::Add(_) | Command::Workdir(_)
        )
    }
}

/// `ARG NAME[=default] ...`: names and unexpanded defaults.
pub(crate) struct ArgCommand {
    pub(crate) args: Vec<(String, Option<String>)>,
}

/// A `KEY=value` pair of ENV or LABEL, unexpanded.
pub(crate) struct KeyValuePair {
    pub(crate) key: String,
    pub(crate) value: String,
}

/// `ENV KEY=value ...`.
pub(crate) struct EnvCommand {
    pub(crate) pairs: Vec<KeyValuePair>,
}

/// `LABEL key=value ...`.
pub(crate) struct LabelCommand {
    pub(crate) pairs: Vec<KeyValuePair>,
}

/// `WORKDIR <path>`, unexpanded.
pub(crate) struct WorkdirCommand {
    pub(crate) path: String,
}

/// `RUN --network=...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunNetwork {
    Default,
    None,
    Host,
}

/// `RUN [flags] <command>`.
pub(crate) struct RunCommand {
    pub(crate) network: RunNetwork,
    /// `--mount=...` specs as written: their values are expanded, then parsed into
    /// [`RunMount`]s, by compilation.
    pub(crate) mounts: Vec<String>,
    /// Shell form: one argument, the command line; exec form: the decoded elements.
    pub(crate) args: Vec<String>,
    pub(crate) json: bool,
    pub(crate) heredocs: Vec<Heredoc>,
}

/// A source of COPY or ADD.
pub(crate) enum CopySourceArg {
    /// `<<NAME`: the body of the heredoc of that name.
    Heredoc(String),
    /// A path, URL or git reference, unexpanded.
    Path(String),
}

/// `COPY` or `ADD` with their flags; values unexpanded.
pub(crate) struct CopyCommand {
    /// `ADD` rather than `COPY`.
    pub(crate) add: bool,
    pub(crate) from: Option<String>,
    pub(crate) chown: Option<String>,
    pub(crate) chmod: Option<String>,
    pub(crate) link: bool,
    pub(crate) parents: bool,
    pub(crate) excludes: Vec<String>,
    pub(crate) checksum: Option<String>,
    pub(crate) keep_git_dir: bool,
    pub(crate) sources: Vec<CopySourceArg>,
    pub(crate) dest: String,
    pub(crate) heredocs: Vec<Heredoc>,
}

impl CopyCommand {
    /// `COPY` or `ADD`, as the user wrote it in upper case.
    pub(crate) fn keyword(&self) -> &'static str {
        if self.add {
            "ADD"
        } else {
            "COPY"
        }
    }
}

/// `USER <user>[:<group>]`, unexpanded.
pub(crate) struct UserCommand {
    pub(crate) user: String,
}

/// `CMD`: shell form is one argument, exec form the decoded elements.
pub(crate) struct CmdCommand {
    pub(crate) args: Vec<String>,
    pub(crate) json: bool,
}

/// `ENTRYPOINT`, like [`CmdCommand`].
pub(crate) struct EntrypointCommand {
    pub(crate) args: Vec<String>,
    pub(crate) json: bool,
}

/// `EXPOSE <port>[/proto] ...`, unexpanded.
pub(crate) struct ExposeCommand {
    pub(crate) ports: Vec<String>,
}

/// `VOLUME <path> ...`, unexpanded.
pub(crate) struct VolumeCommand {
    pub(crate) paths: Vec<String>,
}

/// `STOPSIGNAL <signal>`, unexpanded.
pub(crate) struct StopSignalCommand {
    pub(crate) signal: String,
}

/// `SHELL ["executable", "parameters"]`.
pub(crate) struct ShellCommand {
    pub(crate) shell: Vec<String>,
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [flags] CMD <command>`; durations in nanoseconds.
pub(crate) struct HealthcheckCommand {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    pub(crate) test: Vec<String>,
    pub(crate) interval: i128,
    pub(crate) timeout: i128,
    pub(crate) start_period: i128,
    pub(crate) start_interval: i128,
    pub(crate) retries: i64,
}

/// `MAINTAINER <name>`, unexpanded.
pub(crate) struct MaintainerCommand {
    pub(crate) name: String,
}

/// `ONBUILD <instruction>`: the trigger as the image config records it.
pub(crate) struct OnbuildCommand {
    pub(crate) expression: String,
}

/// `FROM [--platform=...] <image> [AS <name>]`.
pub(crate) struct FromCommand {
    /// The base, unexpanded.
    pub(crate) base: String,
    /// Lower-cased stage name, checked.
    pub(crate) name: Option<String>,
    /// `--platform`, unexpanded.
    pub(crate) platform: Option<String>,
}

/// Checks what BuildKit's parser accepts but its instruction parsing rejects, for the whole
/// file at once: unknown instruction words, an empty instruction, forbidden ONBUILD triggers.
/// The errors read as parse errors (`Dockerfile:LINE: ...`).
pub(crate) fn check_words(df: &Dockerfile) -> Result<(), ParseError> {
    for instr in &df.instructions {
        check_word(instr).map_err(|message| ParseError {
            line: instr.start_line,
            message,
        })?;
    }
    Ok(())
}

fn check_word(instr: &Instruction) -> Result<(), String> {
    match instr.name.as_str() {
        "" => Err("expected an instruction such as `FROM` or `RUN`".to_string()),
        "onbuild" => match &instr.next {
            Some(next) => match next.name.as_str() {
                "onbuild" => {
                    Err("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".to_string())
                }
                "from" | "maintainer" => Err(format!(
                    "`{}` isn't allowed as an ONBUILD trigger",
                    next.name.to_ascii_uppercase()
                )),
                _ => check_word(next),
            },
            None => Ok(()),
        },
        name if INSTRUCTIONS.contains(&name) => Ok(()),
        other => Err(unknown_instruction(other)),
    }
}

fn unknown_instruction(word: &str) -> String {
    let upper = word.to_ascii_uppercase();
    let best = INSTRUCTIONS
        .iter()
        .map(|known| (strsim::jaro_winkler(word, known), *known))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((score, known)) if score >= 0.8 => format!(
            "unknown instruction `{upper}`: did you mean `{}`?",
            known.to_ascii_uppercase()
        ),
        _ => format!(
            "unknown instruction `{upper}`: use one of {}",
            INSTRUCTIONS
                .iter()
                .map(|k| format!("`{}`", k.to_ascii_uppercase()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `run make` → `RUN make`: the instruction as written, keyword upper-cased.
pub(crate) fn display(instr: &Instruction) -> String {
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

/// The one argument of USER, WORKDIR, STOPSIGNAL or MAINTAINER.
fn one_arg(instr: &Instruction, usage: &str) -> Result<String, String> {
    match instr.args.as_slice() {
        [a] if !a.trim().is_empty() => Ok(a.clone()),
        _ => Err(format!(
            "`{}` takes exactly one argument: write `{usage}`",
            instr.name.to_ascii_uppercase()
        )),
    }
}

/// Parses the `ARG` instruction's words; `ARG` takes no flags.
pub(crate) fn parse_arg(instr: &Instruction) -> Result<ArgCommand, String> {
    Flags::parse("arg", &instr.flags, &[])?;
    const USAGE: &str = "`ARG` needs a name: write `ARG NAME[=default]`";
    if instr.args.is_empty() {
        return Err(USAGE.to_string());
    }
    let mut args = Vec::new();
    for word in &instr.args {
        let (name, default) = split_arg(word);
        if name.is_empty() {
            return Err(USAGE.to_string());
        }
        args.push((name.to_string(), default.map(str::to_string)));
    }
    Ok(ArgCommand { args })
}

/// Parses a `FROM`.
pub(crate) fn parse_from(instr: &Instruction) -> Result<FromCommand, String> {
    let flags = Flags::parse("from", &instr.flags, &["platform"])?;
    let (base, name) = match instr.args.as_slice() {
        [base] => (base, None),
        [base, kw, name] if kw.eq_ignore_ascii_case("as") => {
            (base, Some(name.to_ascii_lowercase()))
        }
        _ => {
            return Err("`FROM` takes an image and an optional stage name: \
                        write `FROM <image> [AS <name>]`"
                .to_string())
        }
    };
    if let Some(n) = &name {
        if !valid_stage_name(n) {
            return Err(format!(
                "`{n}` is not a valid stage name: start with a letter and use only \
                 letters, digits, `-`, `_` and `.`"
            ));
        }
    }
    let platform = flags.string("platform")?.map(str::to_string);
    Ok(FromCommand {
        base: base.clone(),
        name,
        platform,
    })
}

/// Parses an instruction of a stage (anything but `FROM`, which starts one).
pub(crate) fn parse(instr: &Instruction) -> Result<Command, String> {
    let name = instr.name.as_str();
    let Some(keyword) = Keyword::of(instr) else {
        return Err(format!(
            "unknown instruction `{}`",
            name.to_ascii_uppercase()
        ));
    };
    // RUN, COPY/ADD and HEALTHCHECK parse their own flags; every other instruction takes none.
    if !matches!(
        keyword,
        Keyword::Run | Keyword::Copy | Keyword::Add | Keyword::Healthcheck
    ) {
        Flags::parse(name, &instr.flags, &[])?;
    }
    Ok(match keyword {
        Keyword::Arg => Command::Arg(parse_arg(instr)?),
        Keyword::Env => Command::Env(EnvCommand {
            pairs: pairs(instr, "ENV KEY=value")?,
        }),
        Keyword::Label => Command::Label(LabelCommand {
            pairs: pairs(instr, "LABEL key=value")?,
        }),
        Keyword::Workdir => Command::Workdir(WorkdirCommand {
            path: one_arg(instr, "WORKDIR <path>")?,
        }),
        Keyword::Run => Command::Run(parse_run(instr)?),
        Keyword::Copy => Command::Copy(parse_copy(instr, false)?),
        Keyword::Add => Command::Add(parse_copy(instr, true)?),
        Keyword::User => Command::User(UserCommand {
            user: one_arg(instr, "USER <user>[:<group>]")?,
        }),
        Keyword::Cmd => Command::Cmd(CmdCommand {
            args: instr.args.clone(),
            json: instr.json,
        }),
        Keyword::Entrypoint => Command::Entrypoint(EntrypointCommand {
            args: instr.args.clone(),
            json: instr.json,
        }),
        Keyword::Expose => {
            if instr.args.is_empty() {
                return Err("`EXPOSE` needs a port: write `EXPOSE 80` or `EXPOSE 53/udp`".into());
            }
            Command::Expose(ExposeCommand {
                ports: instr.args.clone(),
            })
        }
        Keyword::Volume => {
            if instr.args.is_empty() {
                return Err("`VOLUME` needs a path: write `VOLUME /data`".into());
            }
            Command::Volume(VolumeCommand {
                paths: instr.args.clone(),
            })
        }
        Keyword::StopSignal => Command::StopSignal(StopSignalCommand {
            signal: one_arg(instr, "STOPSIGNAL <signal>")?,
        }),
        Keyword::Shell => {
            if !instr.json || instr.args.is_empty() {
                return Err(
                    "`SHELL` takes a JSON array: write `SHELL [\"/bin/bash\", \"-c\"]`".into(),
                );
            }
            Command::Shell(ShellCommand {
                shell: instr.args.clone(),
            })
        }
        Keyword::Healthcheck => Command::Healthcheck(parse_healthcheck(instr)?),
        Keyword::Maintainer => Command::Maintainer(MaintainerCommand {
            name: one_arg(instr, "MAINTAINER <name>")?,
        }),
        Keyword::Onbuild => {
            let Some(next) = &instr.next else {
                return Err("`ONBUILD` needs an instruction: write `ONBUILD RUN ...`".into());
            };
            if Keyword::of(next).is_some_and(|k| !k.may_trigger()) {
                return Err(format!(
                    "`ONBUILD {}` is not allowed: ONBUILD cannot trigger `ONBUILD`, `FROM` or `MAINTAINER`",
                    next.name.to_ascii_uppercase()
                ));
            }
            Command::Onbuild(OnbuildCommand {
                expression: display(next),
            })
        }
        Keyword::From => Command::From,
    })
}

/// ENV or LABEL pairs (triples in the AST).
fn pairs(instr: &Instruction, usage: &str) -> Result<Vec<KeyValuePair>, String> {
    let kw = instr.name.to_ascii_uppercase();
    if instr.args.is_empty() || !instr.args.chunks_exact(3).remainder().is_empty() {
        return Err(format!("`{kw}` needs `KEY=value` pairs: write `{usage}`"));
    }
    let mut out = Vec::new();
    for t in instr.args.chunks(3) {
        let (key, value, sep) = (&t[0], &t[1], &t[2]);
        if sep.is_empty() && value.is_empty() {
            return Err(format!(
                "`{kw} {key}` has no value: write `{kw} {key}=value`"
            ));
        }
        out.push(KeyValuePair {
            key: key.clone(),
            value: value.clone(),
        });
    }
    Ok(out)
}

fn parse_run(instr: &Instruction) -> Result<RunCommand, String> {
    let flags = Flags::parse("run", &instr.flags, &["network", "mount", "security"])?;
    let network = match flags.string("network")? {
        None | Some("default") => RunNetwork::Default,
        Some("host") => RunNetwork::Host,
        Some("none") => RunNetwork::None,
        Some(other) => {
            return Err(format!(
                "unknown network `{other}`: use `default`, `none` or `host`"
            ))
        }
    };
    match flags.string("security")? {
        None | Some("sandbox") => {}
        Some(other) => {
            return Err(format!(
                "`--security={other}` is not supported: kiln runs steps sandboxed"
            ))
        }
    }
    // Shell form always has a command (the shell's); exec form needs a non-empty element.
    if instr.json && instr.args.iter().all(|a| a.is_empty()) {
        return Err("`RUN` needs a command: write `RUN <command>`".into());
    }
    let mounts = flags
        .all("mount")?
        .into_iter()
        .map(str::to_string)
        .collect();
    Ok(RunCommand {
        network,
        mounts,
        args: instr.args.clone(),
        json: instr.json,
        heredocs: instr.heredocs.clone(),
    })
}

fn parse_copy(instr: &Instruction, add: bool) -> Result<CopyCommand, String> {
    let allowed: &[&str] = if add {
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
    let flags = Flags::parse(&instr.name, &instr.flags, allowed)?;
    let parents = flags.bool("parents")?;
    let checksum = flags.string("checksum")?.map(str::to_string);
    let keep_git_dir = flags.bool("keep-git-dir")?;
    let link = flags.bool("link")?;
    let excludes = flags
        .all("exclude")?
        .into_iter()
        .map(str::to_string)
        .collect();
    let chmod = flags.string("chmod")?.map(str::to_string);
    let chown = flags.string("chown")?.map(str::to_string);
    let from = flags.string("from")?.map(str::to_string);
    let kw = if add { "ADD" } else { "COPY" };
    let Some((dest, srcs)) = instr.args.split_last().filter(|(_, s)| !s.is_empty()) else {
        return Err(format!(
            "`{kw}` needs a source and a destination: write `{kw} <src>... <dest>`"
        ));
    };
    let sources = srcs
        .iter()
        .map(|s| match heredoc_marker(instr, s) {
            Some(name) => CopySourceArg::Heredoc(name),
            None => CopySourceArg::Path(s.clone()),
        })
        .collect();
    Ok(CopyCommand {
        add,
        from,
        chown,
        chmod,
        link,
        parents,
        excludes,
        checksum,
        keep_git_dir,
        sources,
        dest: dest.clone(),
        heredocs: instr.heredocs.clone(),
    })
}

/// The heredoc a shell-form source `<<NAME` (or `<<-NAME`, quoted or not) stands for.
fn heredoc_marker(instr: &Instruction, s: &str) -> Option<String> {
    if instr.json {
        return None;
    }
    let m = s
        .strip_prefix("<<")
        .map(|m| m.strip_prefix('-').unwrap_or(m))?;
    let m = m.trim_matches(|c| c == '"' || c == '\'');
    instr
        .heredocs
        .iter()
        .any(|h| h.name == m)
        .then(|| m.to_string())
}

fn parse_healthcheck(instr: &Instruction) -> Result<HealthcheckCommand, String> {
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
    )?;
    let kind = instr
        .args
        .first()
        .map(|k| k.to_ascii_uppercase())
        .unwrap_or_default();
    match kind.as_str() {
        "NONE" => {
            if instr.args.len() > 1 || !instr.flags.is_empty() {
                return Err("`HEALTHCHECK NONE` takes no arguments or flags".into());
            }
            Ok(HealthcheckCommand {
                test: vec!["NONE".into()],
                interval: 0,
                timeout: 0,
                start_period: 0,
                start_interval: 0,
                retries: 0,
            })
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
                return Err(
                    "`HEALTHCHECK CMD` needs a command: write `HEALTHCHECK CMD <command>`".into(),
                );
            }
            let dur = |name: &str| -> Result<i128, String> {
                let Some(v) = flags.string(name)? else {
                    return Ok(0);
                };
                let ns = parse_go_duration(v).map_err(|m| format!("`--{name}`: {m}"))?;
                if ns != 0 && ns < 1_000_000 {
                    return Err(format!(
                        "`--{name}={v}` is too short: use at least `1ms`, or `0` for the default"
                    ));
                }
                Ok(ns)
            };
            let retries = match flags.string("retries")? {
                None => 0,
                Some(r) => match r.parse::<i64>() {
                    Ok(n) if n >= 0 => n,
                    _ => {
                        return Err(format!(
                        "`--retries={r}` is not a count: write a whole number like `--retries=3`"
                    ))
                    }
                },
            };
            Ok(HealthcheckCommand {
                test,
                interval: dur("interval")?,
                timeout: dur("timeout")?,
                start_period: dur("start-period")?,
                start_interval: dur("start-interval")?,
                retries,
            })
        }
        "" => Err("`HEALTHCHECK` needs `CMD <command>` or `NONE`".into()),
        other => Err(format!(
            "unknown `HEALTHCHECK` type `{other}`: use `CMD <command>` or `NONE`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(text: &str) -> Instruction {
        crate::parse(text).unwrap().instructions.remove(0)
    }

    #[test]
    fn run_flags_become_fields() {
        let Ok(Command::Run(run)) = parse(&first(
            "RUN --network=none --mount=type=cache,target=/c --mount=type=tmpfs,target=/t make",
        )) else {
            panic!("not a RUN");
        };
        assert_eq!(run.network, RunNetwork::None);
        assert_eq!(run.mounts, ["type=cache,target=/c", "type=tmpfs,target=/t"]);
        assert_eq!(run.args, ["make"]);
        assert!(!run.json);
    }

    #[test]
    fn run_rejects_unknown_network_and_empty_exec_form() {
        let err = parse(&first("RUN --network=bridge make")).err().unwrap();
        assert!(err.contains("unknown network `bridge`"), "{err}");
        let err = parse(&first("RUN [\"\"]")).err().unwrap();
        assert!(err.contains("`RUN` needs a command"), "{err}");
    }

    #[test]
    fn copy_fields_and_heredoc_sources() {
        let Ok(Command::Copy(copy)) = parse(&first(
            "COPY --from=build --chown=1:2 --link --exclude=*.md a <<EOF /dst/\nbody\nEOF\n",
        )) else {
            panic!("not a COPY");
        };
        assert_eq!(copy.from.as_deref(), Some("build"));
        assert_eq!(copy.chown.as_deref(), Some("1:2"));
        assert!(copy.link);
        assert_eq!(copy.excludes, ["*.md"]);
        assert_eq!(copy.dest, "/dst/");
        assert!(
            matches!(&copy.sources[..], [CopySourceArg::Path(a), CopySourceArg::Heredoc(h)]
            if a == "a" && h == "EOF")
        );
    }

    #[test]
    fn add_has_no_from_flag() {
        let err = parse(&first("ADD --from=build a /b")).err().unwrap();
        assert!(err.contains("unknown flag `--from`"), "{err}");
        let err = parse(&first("COPY onlyone")).err().unwrap();
        assert!(err.contains("needs a source and a destination"), "{err}");
    }

    #[test]
    fn from_checks_its_stage_name_and_platform_flag() {
        let from = parse_from(&first("FROM --platform=$P busybox AS Build")).unwrap();
        assert_eq!(from.base, "busybox");
        assert_eq!(from.name.as_deref(), Some("build"));
        assert_eq!(from.platform.as_deref(), Some("$P"));
        let err = parse_from(&first("FROM busybox AS 1st")).err().unwrap();
        assert!(err.contains("`1st` is not a valid stage name"), "{err}");
        let err = parse_from(&first("FROM busybox AS")).err().unwrap();
        assert!(err.contains("`FROM` takes an image"), "{err}");
    }

    #[test]
    fn healthcheck_durations_and_retries() {
        let Ok(Command::Healthcheck(hc)) = parse(&first(
            "HEALTHCHECK --interval=1m30s --retries=3 CMD curl -f http://localhost/",
        )) else {
            panic!("not a HEALTHCHECK");
        };
        assert_eq!(hc.test, ["CMD-SHELL", "curl -f http://localhost/"]);
        assert_eq!(hc.interval, 90_000_000_000);
        assert_eq!(hc.retries, 3);
        let err = parse(&first("HEALTHCHECK --timeout=1us CMD true"))
            .err()
            .unwrap();
        assert!(err.contains("too short"), "{err}");
    }

    #[test]
    fn instructions_without_flags_reject_them() {
        let err = parse(&first("ENV --x=1 A=b")).err().unwrap();
        assert!(err.contains("`ENV` takes no flags"), "{err}");
    }

    #[test]
    fn onbuild_records_its_trigger() {
        let Ok(Command::Onbuild(o)) = parse(&first("onbuild run echo hi")) else {
            panic!("not an ONBUILD");
        };
        assert_eq!(o.expression, "RUN echo hi");
    }

    #[test]
    fn every_known_word_has_a_keyword() {
        for word in INSTRUCTIONS {
            assert!(
                Keyword::from_word(word).is_some(),
                "`{word}` has no keyword"
            );
        }
        assert_eq!(Keyword::from_word("frm"), None);
    }

    #[test]
    fn the_steps_of_a_stage_are_run_copy_add_and_workdir() {
        let steps: Vec<&str> = [
            "RUN x",
            "COPY a b",
            "ADD a b",
            "WORKDIR /w",
            "ENV A=b",
            "ARG X",
        ]
        .into_iter()
        .filter(|t| parse(&first(t)).is_ok_and(|c| c.is_step()))
        .collect();
        assert_eq!(steps, ["RUN x", "COPY a b", "ADD a b", "WORKDIR /w"]);
    }
}

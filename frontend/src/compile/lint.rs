//! BuildKit's build checks (`docker build --check`) that can be decided from the parsed
//! Dockerfile alone, with their rule names and wording, and the `# check=skip=...;error=true`
//! directive that silences them or turns them into errors.

use crate::ast::{Dockerfile, Instruction};

/// `# check=` settings.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CheckConfig {
    /// Rules to skip; `all` skips every rule.
    pub skip: Vec<String>,
    /// Fail the build when a check does not pass.
    pub error: bool,
}

impl CheckConfig {
    /// Parses the value of a `# check=` directive (`skip=A,B;error=true`). Unknown keys are
    /// ignored, as BuildKit ignores them.
    pub(crate) fn parse(value: &str) -> CheckConfig {
        let mut c = CheckConfig::default();
        for part in value.split(';') {
            let Some((k, v)) = part.split_once('=') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "skip" => c.skip.extend(
                    v.split(',')
                        .map(|r| r.trim().to_string())
                        .filter(|r| !r.is_empty()),
                ),
                "error" => c.error = v.trim().eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        c
    }

    pub(crate) fn skips(&self, rule: &str) -> bool {
        self.skip
            .iter()
            .any(|s| s.eq_ignore_ascii_case("all") || s.eq_ignore_ascii_case(rule))
    }
}

/// Runs the checks over every instruction of the file, in order.
pub(crate) fn check(df: &Dockerfile) -> Vec<(usize, &'static str, String)> {
    let mut out = Vec::new();
    let mut push = |line: usize, rule: &'static str, msg: String| out.push((line, rule, msg));

    // ConsistentInstructionCasing: compare each keyword with the majority's casing.
    let keyword = |i: &Instruction| -> String {
        i.original
            .split(|c: char| c.is_whitespace())
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let (mut upper, mut lower) = (0, 0);
    for i in &df.instructions {
        let k = keyword(i);
        if k == k.to_ascii_uppercase() {
            upper += 1;
        } else if k == k.to_ascii_lowercase() {
            lower += 1;
        }
    }
    let majority_upper = upper >= lower;

    let mut stage_counts: [usize; 3] = [0; 3];
    let mut workdir_abs = false;
    for i in &df.instructions {
        let kw = keyword(i);
        let line = i.start_line;
        let wrong_case = if majority_upper {
            kw != kw.to_ascii_uppercase()
        } else {
            kw != kw.to_ascii_lowercase()
        };
        if wrong_case {
            push(
                line,
                "ConsistentInstructionCasing",
                format!(
                    "Command '{kw}' should match the case of the command majority ({})",
                    if majority_upper {
                        "uppercase"
                    } else {
                        "lowercase"
                    }
                ),
            );
        }
        match i.name.as_str() {
            "from" => {
                stage_counts = [0; 3];
                workdir_abs = false;
                from_checks(i, &kw, &mut push);
            }
            "env" | "label" => {
                if i.args.chunks(3).any(|t| t.get(2).is_some_and(|s| s.is_empty())) {
                    let k = i.name.to_ascii_uppercase();
                    push(
                        line,
                        "LegacyKeyValueFormat",
                        format!(
                            "\"{k} key=value\" should be used instead of legacy \"{k} key value\" format"
                        ),
                    );
                }
                if i.name == "env" {
                    for t in i.args.chunks(3) {
                        secret_check(line, "ENV", &t[0], &mut push);
                    }
                }
            }
            "arg" => {
                for word in &i.args {
                    let name = word.split_once('=').map_or(word.as_str(), |(k, _)| k);
                    secret_check(line, "ARG", name, &mut push);
                }
            }
            "maintainer" => push(
                line,
                "MaintainerDeprecated",
                format!(
                    "Maintainer instruction is deprecated in favor of using label: write `LABEL maintainer=\"{}\"` instead",
                    i.args.first().map(String::as_str).unwrap_or_default()
                ),
            ),
            "cmd" | "entrypoint" | "healthcheck" => {
                let slot = match i.name.as_str() {
                    "cmd" => 0,
                    "entrypoint" => 1,
                    _ => 2,
                };
                stage_counts[slot] += 1;
                if stage_counts[slot] == 2 {
                    push(
                        line,
                        "MultipleInstructionsDisallowed",
                        format!(
                            "Multiple {} instructions should not be used in the same stage because only the last one will be used",
                            i.name.to_ascii_uppercase()
                        ),
                    );
                }
                if i.name != "healthcheck" && !i.json && !i.args.is_empty() {
                    push(
                        line,
                        "JSONArgsRecommended",
                        format!(
                            "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                            i.name.to_ascii_uppercase()
                        ),
                    );
                }
            }
            "workdir" => {
                let path = i.args.first().map(String::as_str).unwrap_or_default();
                if path.starts_with('/') || path.starts_with('$') {
                    workdir_abs = true;
                } else if !workdir_abs {
                    push(
                        line,
                        "WorkdirRelativePath",
                        format!(
                            "Relative workdir \"{path}\" can have unexpected results if the base image changes"
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    out
}

/// The automatic platform args, declared in the global scope without an `ARG`.
const PLATFORM_ARGS: &[&str] = &[
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

/// NoEmptyContinuation, from the parser's notes: an empty line inside a continued instruction.
pub(crate) fn empty_continuations(df: &Dockerfile) -> Vec<(usize, &'static str, String)> {
    df.warnings
        .iter()
        .filter(|(_, m)| m.starts_with("empty continuation line"))
        .map(|(line, _)| {
            (
                *line,
                "NoEmptyContinuation",
                "Empty continuation line".to_string(),
            )
        })
        .collect()
}

/// UndefinedArgInFrom and InvalidDefaultArgInFrom: a `FROM` (image or `--platform`) that uses an
/// ARG no global `ARG` declares, or whose global defaults give an empty or invalid image name.
pub(crate) fn from_args(df: &Dockerfile) -> Vec<(usize, &'static str, String)> {
    let mut out = Vec::new();
    let mut declared: Vec<String> = PLATFORM_ARGS.iter().map(|a| a.to_string()).collect();
    // Global defaults as the file gives them (build args may override them: hence a warning).
    let mut defaults: Vec<(String, Option<String>)> = Vec::new();
    let mut seen_from = false;
    for i in &df.instructions {
        match i.name.as_str() {
            "arg" if !seen_from => {
                for word in &i.args {
                    let (name, value) = match word.split_once('=') {
                        Some((k, v)) => (k, Some(v)),
                        None => (word.as_str(), None),
                    };
                    let lookup = |n: &str| lookup_default(&defaults, n);
                    let value = value.map(|v| {
                        crate::expand_word(v, &lookup, df.escape).unwrap_or_else(|_| v.to_string())
                    });
                    declared.push(name.to_string());
                    defaults.push((name.to_string(), value));
                }
            }
            "from" => {
                seen_from = true;
                let image = i.args.first().map(String::as_str).unwrap_or_default();
                let platforms = i.flags.iter().filter_map(|f| f.strip_prefix("--platform="));
                let mut undeclared: Vec<String> = Vec::new();
                for word in std::iter::once(image).chain(platforms) {
                    let missing = std::cell::RefCell::new(Vec::new());
                    let lookup = |n: &str| {
                        if !declared.iter().any(|d| d == n) {
                            missing.borrow_mut().push(n.to_string());
                        }
                        None
                    };
                    let _ = crate::expand_word(word, &lookup, df.escape);
                    for m in missing.into_inner() {
                        if !undeclared.contains(&m) {
                            undeclared.push(m);
                        }
                    }
                }
                for name in &undeclared {
                    let hint = crate::util::did_you_mean(name, declared.iter().map(String::as_str))
                        .map(|c| format!(" (did you mean {c}?)"))
                        .unwrap_or_default();
                    out.push((
                        i.start_line,
                        "UndefinedArgInFrom",
                        format!("FROM argument '{name}' is not declared{hint}"),
                    ));
                }
                if undeclared.is_empty() && image.contains('$') {
                    let lookup = |n: &str| lookup_default(&defaults, n);
                    let valid = crate::expand_word(image, &lookup, df.escape)
                        .is_ok_and(|v| is_valid_image_name(&v));
                    if !valid {
                        out.push((
                            i.start_line,
                            "InvalidDefaultArgInFrom",
                            format!(
                                "Default value for ARG {image} results in empty or invalid base image name"
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn lookup_default(defaults: &[(String, Option<String>)], name: &str) -> Option<String> {
    if PLATFORM_ARGS.contains(&name) {
        // Always set at build time; any value makes a valid name here.
        return Some("x".into());
    }
    defaults
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.clone())
}

/// Whether `r` reads as an image reference: `name[:tag][@digest]`, the name lowercase path
/// components (a registry host may carry a port), the tag `[\w][\w.-]*`.
fn is_valid_image_name(r: &str) -> bool {
    let (rest, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    if let Some(d) = digest {
        let Some((algo, hex)) = d.split_once(':') else {
            return false;
        };
        if algo.is_empty() || hex.is_empty() {
            return false;
        }
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let mut chars = t.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !first_ok
            || t.len() > 128
            || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return false;
        }
    }
    if name.is_empty() {
        return false;
    }
    name.split('/').enumerate().all(|(n, c)| {
        let host = n == 0 && name.contains('/') && (c.contains('.') || c.contains(':'));
        !c.is_empty()
            && c.chars().all(|ch| {
                ch.is_ascii_lowercase()
                    || ch.is_ascii_digit()
                    || "._-".contains(ch)
                    || (host && (ch == ':' || ch.is_ascii_uppercase()))
            })
    })
}

/// DuplicateStageName: a `FROM ... AS name` whose name an earlier stage already has. BuildKit
/// warns and builds: a later `FROM name` takes the latest stage of that name before it, and
/// `COPY --from=name` and `--target` the last one in the file.
pub(crate) fn duplicate_stage_names(df: &Dockerfile) -> Vec<(usize, &'static str, String)> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for i in df.instructions.iter().filter(|i| i.name == "from") {
        let [_, as_kw, name] = i.args.as_slice() else {
            continue;
        };
        if !as_kw.eq_ignore_ascii_case("as") {
            continue;
        }
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            out.push((
                i.start_line,
                "DuplicateStageName",
                format!(
                    "Duplicate stage name {}, stage names should be unique",
                    crate::util::go_quote(&name)
                ),
            ));
        } else {
            seen.push(name);
        }
    }
    out
}

/// CopyIgnoredFile: a `COPY`/`ADD` from the build context of a path `.dockerignore` excludes.
pub(crate) fn copy_ignored(
    df: &Dockerfile,
    exclude_patterns: &[String],
) -> Vec<(usize, &'static str, String)> {
    let mut out = Vec::new();
    if exclude_patterns.is_empty() {
        return out;
    }
    let Ok(matcher) = crate::dockerignore::IgnoreMatcher::new(exclude_patterns) else {
        return out;
    };
    for i in &df.instructions {
        let verb = match i.name.as_str() {
            "copy" => "Copy",
            "add" => "Add",
            _ => continue,
        };
        if i.flags.iter().any(|f| f.starts_with("--from")) {
            continue;
        }
        let Some((_, srcs)) = i.args.split_last() else {
            continue;
        };
        for src in srcs {
            let remote = src.contains("://") || src.starts_with("git@") || src.starts_with("<<");
            if remote || src.contains('$') {
                continue;
            }
            if matcher.matches(src) {
                out.push((
                    i.start_line,
                    "CopyIgnoredFile",
                    format!(
                        "Attempting to {verb} file \"{src}\" that is excluded by .dockerignore"
                    ),
                ));
            }
        }
    }
    out
}

fn from_checks(i: &Instruction, kw: &str, push: &mut impl FnMut(usize, &'static str, String)) {
    let line = i.start_line;
    if let [_, as_kw, name] = i.args.as_slice() {
        let kw_upper = kw == kw.to_ascii_uppercase();
        let as_upper = as_kw == &as_kw.to_ascii_uppercase();
        if kw_upper != as_upper {
            push(
                line,
                "FromAsCasing",
                format!("'{as_kw}' and '{kw}' keywords' casing do not match"),
            );
        }
        if name != &name.to_ascii_lowercase() {
            push(
                line,
                "StageNameCasing",
                format!("Stage name '{name}' should be lowercase"),
            );
        }
        if matches!(name.to_ascii_lowercase().as_str(), "scratch" | "context") {
            push(
                line,
                "ReservedStageName",
                format!("'{name}' is reserved and should not be used as a stage name"),
            );
        }
    }
    for f in &i.flags {
        let Some(value) = f.strip_prefix("--platform=") else {
            continue;
        };
        if value == "$TARGETPLATFORM" || value == "${TARGETPLATFORM}" {
            push(
                line,
                "RedundantTargetPlatform",
                "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior".to_string(),
            );
        } else if !value.contains('$') {
            push(
                line,
                "FromPlatformFlagConstDisallowed",
                format!("FROM --platform flag should not use constant value \"{value}\""),
            );
        }
    }
}

/// SecretsUsedInArgOrEnv: a name with a word like `password` or `token` in it.
fn secret_check(
    line: usize,
    kind: &str,
    name: &str,
    push: &mut impl FnMut(usize, &'static str, String),
) {
    const WORDS: &[&str] = &[
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    let lower = name.to_ascii_lowercase();
    if lower.contains("public") {
        return;
    }
    if lower.split(['_', '-']).any(|w| WORDS.contains(&w)) {
        push(
            line,
            "SecretsUsedInArgOrEnv",
            format!("Do not use ARG or ENV instructions for sensitive data ({kind} \"{name}\")"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<(usize, &'static str)> {
        let df = crate::parse(text).unwrap();
        check(&df).into_iter().map(|(l, r, _)| (l, r)).collect()
    }

    #[test]
    fn buildkit_rules_fire_where_buildkit_fires_them() {
        let got = rules(
            "FROM --platform=linux/amd64 busybox as Build\nENV A 1\nARG API_TOKEN\nARG PUBLIC_KEY\nWORKDIR app\nCMD echo a\nCMD [\"b\"]\nrun true\nMAINTAINER me\n",
        );
        assert_eq!(
            got,
            vec![
                (1, "FromAsCasing"),
                (1, "StageNameCasing"),
                (1, "FromPlatformFlagConstDisallowed"),
                (2, "LegacyKeyValueFormat"),
                (3, "SecretsUsedInArgOrEnv"),
                (5, "WorkdirRelativePath"),
                (6, "JSONArgsRecommended"),
                (7, "MultipleInstructionsDisallowed"),
                (8, "ConsistentInstructionCasing"),
                (9, "MaintainerDeprecated"),
            ]
        );
        assert!(
            rules("FROM busybox AS build\nENV A=1\nWORKDIR /a\nWORKDIR b\nCMD [\"a\"]\n")
                .is_empty()
        );
        assert_eq!(
            rules("FROM --platform=$TARGETPLATFORM busybox\n"),
            vec![(1, "RedundantTargetPlatform")]
        );
    }

    #[test]
    fn from_args_are_checked_against_the_global_args_and_their_defaults() {
        let df = crate::parse(
            "ARG TAG\nARG IMAGE=busybox\nARG GOOD=1.36\nFROM ${IMAG}\nFROM busybox:${TAG}\n\
             FROM ${IMAGE}:${GOOD}\nFROM --platform=$BUILDPLATFORM ${IMAGE}\nARG LATER\n\
             FROM ${LATER}\nFROM --platform=${PLAT} busybox\n",
        )
        .unwrap();
        let got: Vec<(usize, &str, String)> = from_args(&df);
        assert_eq!(
            got,
            vec![
                (
                    4,
                    "UndefinedArgInFrom",
                    "FROM argument 'IMAG' is not declared (did you mean IMAGE?)".to_string()
                ),
                (
                    5,
                    "InvalidDefaultArgInFrom",
                    "Default value for ARG busybox:${TAG} results in empty or invalid base image name"
                        .to_string()
                ),
                (
                    9,
                    "UndefinedArgInFrom",
                    "FROM argument 'LATER' is not declared".to_string()
                ),
                (
                    10,
                    "UndefinedArgInFrom",
                    "FROM argument 'PLAT' is not declared".to_string()
                ),
            ]
        );
    }

    #[test]
    fn image_names_are_validated_like_references() {
        for ok in [
            "busybox",
            "busybox:1.36",
            "localhost:5000/a/b:c",
            "Example.com/x",
            "busybox@sha256:abc",
        ] {
            assert!(is_valid_image_name(ok), "{ok}");
        }
        for bad in [
            "", "busybox:", ":tag", "Busybox", "a//b", "busybox@", "a:b:c",
        ] {
            assert!(!is_valid_image_name(bad), "{bad}");
        }
    }

    #[test]
    fn empty_continuation_and_ignored_copies_are_reported() {
        let df = crate::parse("FROM busybox\nRUN a \\\n\n  b\nCOPY secret.txt app/ /x/\nCOPY --from=busybox secret.txt /y\n").unwrap();
        let got: Vec<_> = empty_continuations(&df)
            .into_iter()
            .chain(copy_ignored(&df, &["*.txt".to_string()]))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    2,
                    "NoEmptyContinuation",
                    "Empty continuation line".to_string()
                ),
                (
                    5,
                    "CopyIgnoredFile",
                    "Attempting to Copy file \"secret.txt\" that is excluded by .dockerignore"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn duplicate_stage_names_warn_on_each_repeat() {
        let df = crate::parse(
            "FROM busybox AS base\nFROM busybox AS Base\nFROM busybox AS other\nFROM base AS base\n",
        )
        .unwrap();
        let got: Vec<(usize, &str, String)> = duplicate_stage_names(&df);
        let msg = "Duplicate stage name \"base\", stage names should be unique".to_string();
        assert_eq!(
            got,
            vec![
                (2, "DuplicateStageName", msg.clone()),
                (4, "DuplicateStageName", msg)
            ]
        );
    }

    #[test]
    fn check_directive_parses() {
        let c = CheckConfig::parse("skip=JSONArgsRecommended, StageNameCasing;error=true");
        assert!(c.error);
        assert!(c.skips("jsonargsrecommended"));
        assert!(c.skips("StageNameCasing"));
        assert!(!c.skips("FromAsCasing"));
        assert!(CheckConfig::parse("skip=all").skips("Anything"));
    }
}

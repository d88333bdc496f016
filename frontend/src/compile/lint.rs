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
    fn check_directive_parses() {
        let c = CheckConfig::parse("skip=JSONArgsRecommended, StageNameCasing;error=true");
        assert!(c.error);
        assert!(c.skips("jsonargsrecommended"));
        assert!(c.skips("StageNameCasing"));
        assert!(!c.skips("FromAsCasing"));
        assert!(CheckConfig::parse("skip=all").skips("Anything"));
    }
}

//! The UndefinedVar build check, as BuildKit's dispatcher runs it: every variable an
//! instruction's own expansion looks up (ENV, LABEL, WORKDIR, USER, COPY/ADD sources, flags and
//! heredocs, ARG defaults, EXPOSE, VOLUME, STOPSIGNAL, ...) must be an ENV of the stage (its base
//! image's included, so `PATH` always is) or an `ARG` declared in the stage. `RUN` is not checked:
//! its shell expands its variables, not the Dockerfile.
//!
//! Like BuildKit, a use with a default (`${v:-d}`, `${v-d}`, `${v:+a}`) counts: BuildKit's lexer
//! records every failed look-up, whatever the modifier.

use std::cell::RefCell;

/// Build args BuildKit reads itself and never warns about.
const NON_ENV_ARGS: &[&str] = &["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// Findings collected while compiling: `(line, variable, suggestion)`, at most one per variable
/// and line.
#[derive(Default)]
pub(crate) struct UndefinedVars {
    found: RefCell<Vec<(usize, String, Option<String>)>>,
}

impl UndefinedVars {
    /// Records `name`, used on `line`, unless `declared` says the stage has it; `known` are the
    /// names in scope, for the suggestion.
    pub(crate) fn record<'k>(
        &self,
        line: usize,
        name: &str,
        declared: bool,
        known: impl IntoIterator<Item = &'k str>,
    ) {
        if declared || NON_ENV_ARGS.contains(&name) {
            return;
        }
        let mut found = self.found.borrow_mut();
        if found.iter().any(|(l, n, _)| *l == line && n == name) {
            return;
        }
        let hint = super::util::did_you_mean(name, known).map(str::to_string);
        found.push((line, name.to_string(), hint));
    }

    /// The findings as build checks, in the order they were found.
    pub(crate) fn into_checks(self) -> Vec<(usize, &'static str, String)> {
        self.found
            .into_inner()
            .into_iter()
            .map(|(line, name, hint)| (line, "UndefinedVar", message(&name, hint.as_deref())))
            .collect()
    }
}

/// BuildKit's wording: `Usage of undefined variable '$foo' (did you mean $fo?)`.
fn message(name: &str, hint: Option<&str>) -> String {
    match hint {
        Some(h) => format!("Usage of undefined variable '${name}' (did you mean ${h}?)"),
        None => format!("Usage of undefined variable '${name}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_finding_per_variable_and_line_with_a_close_name() {
        let u = UndefinedVars::default();
        u.record(3, "VERSOIN", false, ["VERSION", "PATH"]);
        u.record(3, "VERSOIN", false, ["VERSION", "PATH"]);
        u.record(4, "VERSION", true, ["VERSION"]);
        u.record(5, "BUILDKIT_SBOM_SCAN_STAGE", false, []);
        u.record(6, "zzz", false, ["PATH"]);
        assert_eq!(
            u.into_checks(),
            vec![
                (
                    3,
                    "UndefinedVar",
                    "Usage of undefined variable '$VERSOIN' (did you mean $VERSION?)".to_string()
                ),
                (
                    6,
                    "UndefinedVar",
                    "Usage of undefined variable '$zzz'".to_string()
                ),
            ]
        );
    }
}

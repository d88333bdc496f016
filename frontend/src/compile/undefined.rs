//! The UndefinedVar build check, as BuildKit's dispatcher runs it: every variable an
//! instruction's own expansion looks up (ENV, LABEL, WORKDIR, USER, COPY/ADD sources, flags and
//! heredocs, ARG defaults, EXPOSE, VOLUME, STOPSIGNAL, ...) must be an ENV of the stage (its base
//! image's included, so `PATH` always is) or an `ARG` declared in the stage. `RUN` is not checked:
//! its shell expands its variables, not the Dockerfile.
//!
//! Like BuildKit, a use with a default (`${v:-d}`, `${v-d}`, `${v:+a}`) counts: BuildKit's lexer
//! records every failed look-up, whatever the modifier.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;

/// Build args BuildKit reads itself and never warns about.
const NON_ENV_ARGS: &[&str] = &["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// How many names all suggestions together may compare (a comparison costs about a
/// microsecond): enough for any real Dockerfile, while one with 100,000 undefined variables and
/// 100,000 ENVs stays linear (beyond the budget, findings come without a suggestion).
const SUGGESTION_BUDGET: usize = 1_000_000;

/// Findings collected while compiling: `(line, variable, suggestion)`, at most one per variable
/// and line.
pub(crate) struct UndefinedVars {
    found: RefCell<Vec<(usize, String, Option<String>)>>,
    /// `(line, variable)` of the findings, to keep one of each in constant time.
    seen: RefCell<HashSet<(usize, String)>>,
    /// Comparisons left for suggestions.
    budget: Cell<usize>,
}

impl Default for UndefinedVars {
    fn default() -> Self {
        UndefinedVars {
            found: RefCell::default(),
            seen: RefCell::default(),
            budget: Cell::new(SUGGESTION_BUDGET),
        }
    }
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
        if !self.seen.borrow_mut().insert((line, name.to_string())) {
            return;
        }
        let budget = self.budget.get();
        let mut compared = 0;
        let candidates = known.into_iter().take(budget).inspect(|_| compared += 1);
        let hint = crate::util::did_you_mean(name, candidates).map(str::to_string);
        self.budget.set(budget - compared);
        self.found.borrow_mut().push((line, name.to_string(), hint));
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

    #[test]
    fn suggestions_stop_when_the_budget_is_spent() {
        let u = UndefinedVars::default();
        let known: Vec<String> = (0..1000).map(|i| format!("VERSION{i}")).collect();
        for line in 0..SUGGESTION_BUDGET / 1000 {
            u.record(line, "VERSION0x", false, known.iter().map(String::as_str));
        }
        u.record(0, "VERSION1x", false, known.iter().map(String::as_str));
        let checks = u.into_checks();
        assert_eq!(checks.len(), SUGGESTION_BUDGET / 1000 + 1);
        assert!(
            checks[0].2.contains("did you mean $VERSION0?"),
            "{:?}",
            checks[0]
        );
        assert_eq!(
            checks.last().unwrap().2,
            "Usage of undefined variable '$VERSION1x'"
        );
    }
}

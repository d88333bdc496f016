//! `COPY --exclude` / `--parents` selection: a copy's include and exclude patterns, matched with
//! moby's patternmatcher semantics against paths relative to the copied source (`**` spans
//! directories, other components use Go `filepath.Match`, a pattern that matches a directory
//! matches everything below it, `!pattern` re-includes, the last matching pattern decides).

use crate::glob;

/// A compiled pattern: its components, and whether it is a `!` exception.
#[derive(Clone, Debug)]
struct Pattern {
    parts: Vec<String>,
    negated: bool,
}

impl Pattern {
    fn new(raw: &str) -> Option<Pattern> {
        let raw = raw.trim();
        let (negated, body) = match raw.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        let parts: Vec<String> = body
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .map(str::to_string)
            .collect();
        if parts.is_empty() {
            return None;
        }
        Some(Pattern { parts, negated })
    }

    /// Whether the pattern matches `path` itself or one of its parent directories.
    fn matches_or_parent(&self, path: &[&str]) -> bool {
        (1..=path.len()).any(|n| match_parts(&self.parts, &path[..n]))
    }

    /// Whether some path below the directory `dir` could match (so it must be walked).
    fn may_match_below(&self, dir: &[&str]) -> bool {
        prefix_parts(&self.parts, dir)
    }
}

/// Full match of pattern components against path components; `**` spans zero or more.
fn match_parts(p: &[String], n: &[&str]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some((first, rest)) if first == "**" => (0..=n.len()).any(|i| match_parts(rest, &n[i..])),
        Some((first, rest)) => match n.split_first() {
            Some((name, more)) => glob::matches(first, name) && match_parts(rest, more),
            None => false,
        },
    }
}

/// Whether the path components `n` are a proper prefix of something the pattern matches.
fn prefix_parts(p: &[String], n: &[&str]) -> bool {
    match (p.split_first(), n.split_first()) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some((first, _)), Some(_)) if first == "**" => true,
        (Some((first, rest)), Some((name, more))) => {
            glob::matches(first, name) && prefix_parts(rest, more)
        }
    }
}

/// What a copy keeps of its source.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
    exceptions: bool,
}

impl Filter {
    pub(crate) fn new(include: &[String], exclude: &[String]) -> Filter {
        let exclude: Vec<Pattern> = exclude.iter().filter_map(|p| Pattern::new(p)).collect();
        Filter {
            include: include.iter().filter_map(|p| Pattern::new(p)).collect(),
            exceptions: exclude.iter().any(|p| p.negated),
            exclude,
        }
    }

    /// Whether `rel` (slash-separated, relative to the copied source) is copied.
    pub(crate) fn keeps(&self, rel: &str) -> bool {
        let parts: Vec<&str> = split(rel);
        if parts.is_empty() {
            return true;
        }
        if !self.include.is_empty() && !self.include.iter().any(|p| p.matches_or_parent(&parts)) {
            return false;
        }
        !self.excluded(&parts)
    }

    fn excluded(&self, parts: &[&str]) -> bool {
        let mut excluded = false;
        for p in &self.exclude {
            // As in moby: an exception cannot affect a path that is not excluded, nor an
            // exclusion a path already excluded.
            if p.negated != excluded {
                continue;
            }
            if p.matches_or_parent(parts) {
                excluded = !p.negated;
            }
        }
        excluded
    }

    /// Whether the directory `rel`, which is not itself kept, must still be walked because
    /// something below it may be kept.
    pub(crate) fn walk_anyway(&self, rel: &str) -> bool {
        let parts: Vec<&str> = split(rel);
        let included = self.include.is_empty()
            || self.include.iter().any(|p| p.matches_or_parent(&parts))
            || self.include.iter().any(|p| p.may_match_below(&parts));
        if !included {
            return false;
        }
        !self.excluded(&parts) || self.exceptions
    }
}

fn split(rel: &str) -> Vec<&str> {
    rel.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Filter;

    fn f(include: &[&str], exclude: &[&str]) -> Filter {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Filter::new(&s(include), &s(exclude))
    }

    #[test]
    fn exclude_matches_files_and_whole_directories() {
        let x = f(&[], &["*.txt", "build", "**/*.log"]);
        assert!(!x.keeps("a.txt"));
        assert!(x.keeps("sub/a.txt"), "`*.txt` matches the top level only");
        assert!(!x.keeps("build/out.bin"));
        assert!(!x.keeps("deep/er/x.log"));
        assert!(x.keeps("main.rs"));
        assert!(!x.walk_anyway("build"));
    }

    #[test]
    fn exception_re_includes_inside_an_excluded_directory() {
        let x = f(&[], &["docs", "!docs/keep.md"]);
        assert!(!x.keeps("docs/a.md"));
        assert!(x.keeps("docs/keep.md"));
        assert!(x.walk_anyway("docs"));
    }

    #[test]
    fn include_keeps_matches_their_contents_and_walks_their_parents() {
        let x = f(&["a/*/file.txt", "lib"], &[]);
        assert!(x.keeps("a/b/file.txt"));
        assert!(!x.keeps("a/b/other.txt"));
        assert!(x.keeps("lib/x/y.rs"));
        assert!(!x.keeps("a"));
        assert!(x.walk_anyway("a"));
        assert!(x.walk_anyway("a/b"));
        assert!(!x.walk_anyway("c"));
        let all = f(&["**/*.go"], &[]);
        assert!(all.keeps("x/y/z.go"));
        assert!(all.walk_anyway("x/y"));
    }
}

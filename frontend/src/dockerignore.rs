//! `.dockerignore` reading and matching with moby's semantics (`moby/patternmatcher` and its
//! `ignorefile`): patterns are cleaned like Go's `filepath.Clean`, `*` and `?` stop at `/`, `**`
//! crosses directories, a pattern that matches a directory excludes everything below it, and a
//! later `!pattern` re-includes what it matches, even inside an excluded directory.

/// Reads the patterns of a `.dockerignore` file: one per line, `#` comment lines and blank lines
/// skipped, surrounding whitespace trimmed, paths cleaned, a leading `/` (or `./`) removed; `!`
/// exceptions keep their `!`.
pub fn parse_dockerignore(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        out.push(cleaned);
    }
    out
}

/// Decides which paths of a build context a list of `.dockerignore` patterns excludes.
#[derive(Clone, Debug)]
pub struct IgnoreMatcher {
    patterns: Vec<Pattern>,
    exceptions: bool,
}

#[derive(Clone, Debug)]
struct Pattern {
    exclusion: bool,
    cleaned: String,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Exact,
    /// `dir/**`: everything starting with the text before `**`.
    Prefix(String),
    /// `**/name`: everything ending with the text after `**`.
    Suffix(String),
    Glob(Vec<Tok>),
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Lit(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**` before more pattern: nothing, or anything ending in `/`.
    Dirs,
    /// `**` at the end: anything.
    All,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl IgnoreMatcher {
    /// Compiles the patterns (as [`parse_dockerignore`] returns them). Fails on a malformed
    /// pattern (a lone `!`, an unclosed `[`, a trailing `\`), naming it.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut out = Vec::new();
        let mut exceptions = false;
        for raw in patterns {
            let p = raw.trim();
            if p.is_empty() {
                continue;
            }
            let mut p = clean(p);
            let exclusion = p.starts_with('!');
            if exclusion {
                if p.len() == 1 {
                    return Err(
                        "illegal exclusion pattern `!` in .dockerignore: write `!path` to re-include a path"
                            .to_string(),
                    );
                }
                p.remove(0);
                exceptions = true;
            }
            validate(&p).map_err(|why| {
                format!("bad .dockerignore pattern `{raw}`: {why}: fix or remove the line")
            })?;
            let kind = compile(&p);
            out.push(Pattern {
                exclusion,
                cleaned: p,
                kind,
            });
        }
        Ok(IgnoreMatcher {
            patterns: out,
            exceptions,
        })
    }

    /// True when `rel_path` (slash-separated, relative to the context root) is excluded: the last
    /// pattern that matches it or one of its parent directories decides.
    pub fn matches(&self, rel_path: &str) -> bool {
        let file = clean(rel_path.trim_start_matches('/'));
        if file == "." || file.is_empty() {
            // The context root itself is never excluded.
            return false;
        }
        let parent = match file.rfind('/') {
            Some(i) => clean(&file[..i]),
            None => ".".to_string(),
        };
        let parent_dirs: Vec<&str> = parent.split('/').collect();
        let mut matched = false;
        for pattern in &self.patterns {
            // An inclusion cannot change an already excluded path, nor an exception an
            // included one.
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matches(&file);
            if !hit && parent != "." {
                hit = (1..=parent_dirs.len()).any(|n| pattern.matches(&parent_dirs[..n].join("/")));
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// True when some pattern is a `!` exception: an excluded directory must then still be
    /// walked, since files below it may be re-included.
    pub fn has_exceptions(&self) -> bool {
        self.exceptions
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.cleaned,
            Kind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Kind::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            Kind::Glob(toks) => {
                let text: Vec<char> = path.chars().collect();
                glob_match(toks, &text)
            }
        }
    }
}

/// Classifies a cleaned pattern the way patternmatcher does: plain text is an exact match,
/// `text/**` a prefix match, `**text` a suffix match, anything else a glob.
fn compile(pattern: &str) -> Kind {
    #[derive(PartialEq)]
    enum Detected {
        Exact,
        Prefix,
        Suffix,
        Glob,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::new();
    let mut detected = Detected::Exact;
    let mut i = 0;
    let mut first = true;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        let was_first = first;
        first = false;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    if detected == Detected::Exact {
                        detected = Detected::Prefix;
                    } else {
                        toks.push(Tok::All);
                        detected = Detected::Glob;
                    }
                } else {
                    toks.push(Tok::Dirs);
                    detected = Detected::Glob;
                }
                if was_first {
                    detected = Detected::Suffix;
                }
            }
            '*' => {
                toks.push(Tok::Star);
                detected = Detected::Glob;
            }
            '?' => {
                toks.push(Tok::One);
                detected = Detected::Glob;
            }
            '\\' => match chars.get(i) {
                Some(&c) => {
                    toks.push(Tok::Lit(c));
                    i += 1;
                    detected = Detected::Glob;
                }
                None => toks.push(Tok::Lit('\\')),
            },
            '[' => {
                detected = Detected::Glob;
                match parse_class(&chars, i) {
                    Ok((tok, next)) => {
                        toks.push(tok);
                        i = next;
                    }
                    // `validate` has rejected unclosed classes already.
                    Err(_) => toks.push(Tok::Lit('[')),
                }
            }
            c => toks.push(Tok::Lit(c)),
        }
    }
    match detected {
        Detected::Exact => Kind::Exact,
        Detected::Prefix => Kind::Prefix(pattern[..pattern.len() - 2].to_string()),
        Detected::Suffix => Kind::Suffix(pattern[2..].to_string()),
        Detected::Glob => Kind::Glob(toks),
    }
}

/// Parses a `[...]` class whose body starts at `start`, with Go `filepath.Match` rules: `^`
/// negates, `\` escapes, and an unescaped `-` or `]` cannot be a range end.
fn parse_class(chars: &[char], start: usize) -> Result<(Tok, usize), &'static str> {
    let mut i = start;
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        match chars.get(i) {
            None => return Err("unclosed `[`"),
            Some(']') if !first => return Ok((Tok::Class { negated, ranges }, i + 1)),
            _ => {}
        }
        first = false;
        let (lo, next) = class_char(chars, i)?;
        i = next;
        if chars.get(i) == Some(&'-') {
            let (hi, next) = class_char(chars, i + 1)?;
            if lo > hi {
                return Err("range out of order in `[...]`");
            }
            i = next;
            ranges.push((lo, hi));
        } else {
            ranges.push((lo, lo));
        }
    }
}

fn class_char(chars: &[char], i: usize) -> Result<(char, usize), &'static str> {
    match chars.get(i) {
        None => Err("unclosed `[`"),
        Some('-' | ']') => Err("`-` or `]` must be escaped in `[...]`"),
        Some('\\') => match chars.get(i + 1) {
            Some(&c) => Ok((c, i + 2)),
            None => Err("trailing `\\`"),
        },
        Some(&c) => Ok((c, i + 1)),
    }
}

/// The syntax check patternmatcher gets from `filepath.Match`.
fn validate(pattern: &str) -> Result<(), &'static str> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                if i + 1 >= chars.len() {
                    return Err("trailing `\\`");
                }
                i += 2;
            }
            '[' => {
                let (_, next) = parse_class(&chars, i + 1)?;
                i = next;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Whole-string match of `toks` against `text`, a token at a time from the last: tokens ×
/// characters of work, two rows of memory and no recursion, however long a hostile pattern is.
fn glob_match(toks: &[Tok], text: &[char]) -> bool {
    let n = text.len();
    // Each of these eats one character: a pattern with more of them than the path has
    // characters cannot match, and a long hostile pattern costs nothing per path.
    let eating = toks
        .iter()
        .filter(|t| matches!(t, Tok::One | Tok::Lit(_) | Tok::Class { .. }))
        .count();
    if eating > n {
        return false;
    }
    // `next[p]`: whether the tokens after the current one match `text[p..]`.
    let mut next: Vec<bool> = (0..=n).map(|p| p == n).collect();
    for tok in toks.iter().rev() {
        let mut row = vec![false; n + 1];
        match tok {
            Tok::All => row.fill(next[n]),
            Tok::Star => {
                // `*` stops at a `/`: the rest matches here, or one more non-`/` is eaten.
                row[n] = next[n];
                for p in (0..n).rev() {
                    row[p] = next[p] || (text[p] != '/' && row[p + 1]);
                }
            }
            Tok::Dirs => {
                // The rest matches here or just after some later `/`.
                let mut after_a_slash = false;
                row[n] = next[n];
                for p in (0..n).rev() {
                    after_a_slash |= text[p] == '/' && next[p + 1];
                    row[p] = next[p] || after_a_slash;
                }
            }
            Tok::One => {
                for p in 0..n {
                    row[p] = text[p] != '/' && next[p + 1];
                }
            }
            Tok::Lit(c) => {
                for p in 0..n {
                    row[p] = text[p] == *c && next[p + 1];
                }
            }
            Tok::Class { negated, ranges } => {
                for p in 0..n {
                    let inside = ranges
                        .iter()
                        .any(|&(lo, hi)| lo <= text[p] && text[p] <= hi);
                    row[p] = inside != *negated && next[p + 1];
                }
            }
        }
        next = row;
    }
    next[0]
}

/// Go's `path.Clean`: one `/` between elements, no `.` elements, `..` resolved lexically, no
/// trailing `/`; an empty result is `.`.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|&last| last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(patterns: &[&str]) -> IgnoreMatcher {
        let patterns: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        IgnoreMatcher::new(&patterns).unwrap()
    }

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum M {
        Fail,
        Exact,
        Inexact,
    }

    /// patternmatcher_test.go `TestMatches`: `Exact` and `Inexact` both match once parent
    /// directories count (MatchesOrParentMatches), `Fail` never does.
    #[test]
    fn moby_matches_table() {
        use M::*;
        let cases: &[(&str, &str, M)] = &[
            ("**", "file", Exact),
            ("**", "file/", Exact),
            ("**/", "file", Exact),
            ("**/", "file/", Exact),
            // moby also lists ("**", "/") and ("**/", "/"): here `/` is the context root,
            // which is never excluded (see `root_is_never_excluded`).
            ("**", "dir/file", Exact),
            ("**/", "dir/file", Exact),
            ("**", "dir/file/", Exact),
            ("**/", "dir/file/", Exact),
            ("**/**", "dir/file", Exact),
            ("**/**", "dir/file/", Exact),
            ("dir/**", "dir/file", Exact),
            ("dir/**", "dir/file/", Exact),
            ("dir/**", "dir/dir2/file", Exact),
            ("dir/**", "dir/dir2/file/", Exact),
            ("**/dir", "dir", Exact),
            ("**/dir", "dir/file", Inexact),
            ("**/dir2/*", "dir/dir2/file", Exact),
            ("**/dir2/*", "dir/dir2/file/", Inexact),
            ("**/dir2/**", "dir/dir2/dir3/file", Exact),
            ("**/dir2/**", "dir/dir2/dir3/file/", Exact),
            ("**file", "file", Exact),
            ("**file", "dir/file", Exact),
            ("**/file", "dir/file", Exact),
            ("**file", "dir/dir/file", Exact),
            ("**/file", "dir/dir/file", Exact),
            ("**/file*", "dir/dir/file", Exact),
            ("**/file*", "dir/dir/file.txt", Exact),
            ("**/file*txt", "dir/dir/file.txt", Exact),
            ("**/file*.txt", "dir/dir/file.txt", Exact),
            ("**/file*.txt*", "dir/dir/file.txt", Exact),
            ("**/**/*.txt", "dir/dir/file.txt", Exact),
            ("**/**/*.txt2", "dir/dir/file.txt", Fail),
            ("**/*.txt", "file.txt", Exact),
            ("**/**/*.txt", "file.txt", Exact),
            ("a**/*.txt", "a/file.txt", Exact),
            ("a**/*.txt", "a/dir/file.txt", Exact),
            ("a**/*.txt", "a/dir/dir/file.txt", Exact),
            ("a/*.txt", "a/dir/file.txt", Fail),
            ("a/*.txt", "a/file.txt", Exact),
            ("a/*.txt**", "a/file.txt", Exact),
            ("a[b-d]e", "ae", Fail),
            ("a[b-d]e", "ace", Exact),
            ("a[b-d]e", "aae", Fail),
            ("a[^b-d]e", "aze", Exact),
            (".*", ".foo", Exact),
            (".*", "foo", Fail),
            ("abc.def", "abcdef", Fail),
            ("abc.def", "abc.def", Exact),
            ("abc.def", "abcZdef", Fail),
            ("abc?def", "abcZdef", Exact),
            ("abc?def", "abcdef", Fail),
            ("**/foo/bar", "foo/bar", Exact),
            ("**/foo/bar", "dir/foo/bar", Exact),
            ("**/foo/bar", "dir/dir2/foo/bar", Exact),
            ("abc/**", "abc", Fail),
            ("abc/**", "abc/def", Exact),
            ("abc/**", "abc/def/ghi", Exact),
            ("**/.foo", ".foo", Exact),
            ("**/.foo", "bar.foo", Fail),
            ("a(b)c/def", "a(b)c/def", Exact),
            ("a(b)c/def", "a(b)c/xyz", Fail),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", Exact),
            (
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                Exact,
            ),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                Exact,
            ),
            ("a\\\\", "a\\", Exact),
            ("a\\*b", "a*b", Exact),
        ];
        let mut failures = Vec::new();
        for &(pattern, text, want) in cases {
            let m = matcher(&[pattern]);
            if m.matches(text) != (want != Fail) {
                failures.push(format!("{pattern:?} vs {text:?}: want {want:?}"));
            }
            // Exact cases match the path itself, without help from a parent directory.
            let exact = m.patterns[0].matches(text);
            if exact != (want == Exact) {
                failures.push(format!(
                    "{pattern:?} vs {text:?}: exact match {exact}, want {want:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn moby_multi_pattern_table() {
        let cases: &[(&[&str], &str, bool)] = &[
            (&["**", "!util/docker/web"], "util/docker/web/foo", false),
            (
                &["**", "!util/docker/web", "util/docker/web/foo"],
                "util/docker/web/foo",
                true,
            ),
            (
                &[
                    "**",
                    "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                ],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
            (
                &["**", "!dist/*.whl"],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
            (&["!fileutils.go", "*.go"], "fileutils.go", true),
            (&["docs", "!docs/README.md"], "docs/README.md", false),
            (&["docs/", "!docs/README.md"], "docs/README.md", false),
            (&["docs/*", "!docs/README.md"], "docs/README.md", false),
            (&["*.go", "!fileutils.go"], "fileutils.go", false),
            (&["*"], "fileutils.go", true),
            (&["*.go"], "fileutils.go", true),
            (&["*.go"], ".", false),
            (&[], "any/path/there", false),
            (&["docs"], "docs/sub/deep.md", true),
        ];
        for &(patterns, text, want) in cases {
            assert_eq!(
                matcher(patterns).matches(text),
                want,
                "{patterns:?} vs {text:?}"
            );
        }
    }

    /// patternmatcher's copy of Go's `filepath.Match` tests (`TestMatch`).
    #[test]
    fn go_filepath_match_table() {
        let ok: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", true),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            ("*x", "xxx", true),
        ];
        for &(pattern, text, want) in ok {
            assert_eq!(
                matcher(&[pattern]).matches(text),
                want,
                "{pattern:?} vs {text:?}"
            );
        }
        let bad = [
            "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[", "!",
        ];
        for pattern in bad {
            let err = IgnoreMatcher::new(&[pattern.to_string()]);
            assert!(err.is_err(), "{pattern:?} should be rejected");
        }
    }

    #[test]
    fn reading_the_file() {
        let text = "\u{feff}# comment\n\n  node_modules  \n/abs/path\n./rel/../x\n!  keep.md\n \
                    # not a comment\n!/root\ndir//sub/\n";
        assert_eq!(
            parse_dockerignore(text),
            vec![
                "node_modules",
                "abs/path",
                "x",
                "!keep.md",
                "# not a comment",
                "!root",
                "dir/sub"
            ]
        );
    }

    #[test]
    fn exceptions_reach_into_excluded_dirs() {
        let m = matcher(&["build", "!build/keep/**", "*.log", "!important.log"]);
        assert!(m.has_exceptions());
        assert!(m.matches("build"));
        assert!(m.matches("build/out/a.o"));
        assert!(!m.matches("build/keep/x"));
        assert!(m.matches("a.log"));
        assert!(!m.matches("important.log"));
        assert!(!m.matches("src/a.log"), "`*` does not cross `/`");
        assert!(!m.matches("./src/main.rs"));
        assert!(!matcher(&["a"]).has_exceptions());
    }

    #[test]
    fn root_is_never_excluded() {
        let m = matcher(&["**"]);
        for root in ["/", ".", "", "./"] {
            assert!(!m.matches(root), "{root:?}");
        }
        assert!(m.matches("/a"));
    }

    #[test]
    fn clean_like_go() {
        for (input, want) in [
            ("", "."),
            ("a/b/../c", "a/c"),
            ("/../a", "/a"),
            ("../../a", "../../a"),
            ("a//b/./", "a/b"),
            ("/", "/"),
            ("a/..", "."),
        ] {
            assert_eq!(clean(input), want, "{input:?}");
        }
    }

    #[test]
    fn a_path_as_long_as_linux_allows_does_not_overflow_the_stack() {
        // Matching recursed once per character: a 4,096-character path against a pattern as
        // long needed more than the 256 KiB given here.
        let pattern = format!("{}*", "a?".repeat(2048));
        let path = "ab".repeat(2048);
        let matched = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let m = matcher(&[pattern.as_str()]);
                (m.matches(&path), m.matches(&path[1..]))
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(matched, (true, false));
        // A pattern longer than any path is never matched character by character.
        let long = format!("a*{}", "a".repeat(100_000));
        let m = matcher(&[long.as_str(), "x/**/y*"]);
        assert!(!m.matches("aaa"));
        assert!(m.matches("x/q/r/y1"));
    }
}

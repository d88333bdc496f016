//! Shell-word expansion and splitting with the semantics of BuildKit's lexer
//! (`frontend/dockerfile/shell/lex.go`): quotes, the escape character, `$var`, `${var}` and the
//! `${var<op>word}` forms `:-` `-` `:+` `+` `:?` `?` `#` `##` `%` `%%` `/` `//`.

/// How deeply `${...}` may nest inside another's word (`${a:-${b:-...}}`). Expansion recurses
/// once per level; the limit keeps a hostile Dockerfile from overflowing the stack (a tokio
/// worker's is 2 MiB; a level costs a few KiB in debug builds), far above anything a real
/// Dockerfile writes.
pub(crate) const MAX_NESTING: usize = 100;

/// The most bytes one expanded word may hold. Each `ENV V=$V$V` doubles a value, so a few dozen
/// lines would otherwise ask for terabytes; a process cannot take an argument or variable over
/// 128 KiB anyway (Linux's `MAX_ARG_STRLEN`).
pub(crate) const MAX_WORD_BYTES: usize = 1 << 20;

/// The error for a word past [`MAX_WORD_BYTES`].
fn too_long() -> String {
    format!(
        "the expanded word is longer than {} MiB: expand fewer or shorter variables",
        MAX_WORD_BYTES >> 20
    )
}

/// A word that cannot be expanded (bad substitution, unterminated quote, `${v:?}` on an unset
/// variable, ...).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot expand `{}`: {}",
    crate::clip::clip(word, crate::clip::QUOTE_CHARS),
    crate::clip::clip_message(reason)
)]
pub struct ExpandError {
    /// The word as written.
    pub word: String,
    /// What went wrong.
    pub reason: String,
}

/// Expands variables in `word` and removes quotes and escapes, keeping the spaces between words:
/// the result is one string (what `ENV`, `WORKDIR`, `COPY` destinations and the like use).
///
/// `env` answers a variable's value, `None` when it is unset (unset and empty differ for
/// `${v-x}`, `${v?}` and friends). `escape` is the Dockerfile's escape character (`\` or `` ` ``).
pub fn expand_word(
    word: &str,
    env: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, ExpandError> {
    Lexer::new(escape)
        .process(word, env)
        .map(|(word, _)| word)
        .map_err(|reason| ExpandError {
            word: word.to_string(),
            reason,
        })
}

/// Expands variables in `word`, then splits it into fields at unquoted whitespace (whitespace
/// that comes from a variable's value splits too, as in a shell), removing quotes and escapes.
pub fn expand_words(
    word: &str,
    env: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<Vec<String>, ExpandError> {
    Lexer::new(escape)
        .process(word, env)
        .map(|(_, words)| words)
        .map_err(|reason| ExpandError {
            word: word.to_string(),
            reason,
        })
}

/// Expands a heredoc body (`RUN <<EOF` / `COPY <<EOF` whose delimiter was not quoted) as a shell
/// does: `$var` and `${...}` are expanded and the escape character escapes only `$`, itself and
/// a newline; quotes are ordinary characters and stay in the text.
pub fn expand_heredoc(
    body: &str,
    env: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, ExpandError> {
    let mut scan = Scan {
        chars: body.chars().collect(),
        pos: 0,
        depth: 0,
        env,
        lex: Lexer::new(escape),
    };
    let mut out = String::new();
    while let Some(ch) = scan.peek() {
        if ch == '$' {
            let value = scan.dollar().map_err(|reason| ExpandError {
                word: body.to_string(),
                reason,
            })?;
            if out.len() + value.len() > MAX_WORD_BYTES {
                return Err(ExpandError {
                    word: body.to_string(),
                    reason: too_long(),
                });
            }
            out.push_str(&value);
            continue;
        }
        scan.next();
        if ch == escape {
            match scan.peek() {
                // An escaped newline joins the lines.
                Some('\n') => {
                    scan.next();
                    continue;
                }
                Some(c) if c == '$' || c == escape => {
                    scan.next();
                    out.push(c);
                    continue;
                }
                _ => {}
            }
        }
        out.push(ch);
    }
    Ok(out)
}

/// The lexer's settings. The parser uses the raw modes to find heredoc markers without
/// disturbing quotes or escapes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lexer {
    pub(crate) escape: char,
    /// Keep quote characters in the output.
    pub(crate) raw_quotes: bool,
    /// Keep escape characters in the output.
    pub(crate) raw_escapes: bool,
    /// Leave references to unset variables as written instead of expanding them to nothing.
    pub(crate) skip_unset_env: bool,
}

impl Lexer {
    pub(crate) fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
        }
    }

    /// Returns the expanded word and its split fields, or the reason it failed.
    pub(crate) fn process(
        &self,
        word: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(String, Vec<String>), String> {
        let mut scan = Scan {
            chars: word.chars().collect(),
            pos: 0,
            depth: 0,
            env,
            lex: *self,
        };
        scan.process_stop_on_any(&[], false)
    }
}

/// Accumulates the fields of a word as it is scanned.
#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
        self.words
    }
}

struct Scan<'a> {
    chars: Vec<char>,
    pos: usize,
    /// How many `${` are open around the current position.
    depth: usize,
    env: &'a dyn Fn(&str) -> Option<String>,
    lex: Lexer,
}

impl Scan<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    /// The character consumed last (the stop character after `process_stop_on_any` succeeds).
    fn last(&self) -> Option<char> {
        self.pos
            .checked_sub(1)
            .and_then(|i| self.chars.get(i).copied())
    }

    /// Scans until one of `stops` (consumed) or the end. With no stops, the end is the normal
    /// finish; with stops, reaching the end is an error.
    fn process_stop_on_any(
        &mut self,
        stops: &[char],
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), String> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if stops.contains(&ch) {
                self.next();
                return Ok((result, words.finish()));
            }
            match ch {
                '\'' | '"' | '$' => {
                    let tmp = match ch {
                        '\'' => self.single_quote()?,
                        '"' => self.double_quote()?,
                        _ => self.dollar()?,
                    };
                    if result.len() + tmp.len() > MAX_WORD_BYTES {
                        return Err(too_long());
                    }
                    result.push_str(&tmp);
                    if ch == '$' {
                        words.add_string(&tmp);
                    } else {
                        words.add_raw_string(&tmp);
                    }
                }
                _ => {
                    self.next();
                    if ch == self.lex.escape {
                        if self.lex.raw_escapes || raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        // An escape at the very end is dropped.
                        let Some(escaped) = self.next() else { break };
                        words.add_raw_char(escaped);
                        result.push(escaped);
                    } else {
                        words.add_char(ch);
                        result.push(ch);
                    }
                }
            }
        }
        if let Some(stop) = stops.first() {
            return Err(format!(
                "unexpected end of statement while looking for matching `{stop}`"
            ));
        }
        Ok((result, words.finish()))
    }

    fn single_quote(&mut self) -> Result<String, String> {
        // Nothing can be escaped between single quotes, not even a single quote.
        let mut result = String::new();
        self.next();
        if self.lex.raw_quotes {
            result.push('\'');
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .to_string(),
                    )
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    fn double_quote(&mut self) -> Result<String, String> {
        let mut result = String::new();
        self.next();
        if self.lex.raw_quotes {
            result.push('"');
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .to_string(),
                    )
                }
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.dollar()?;
                    if result.len() + value.len() > MAX_WORD_BYTES {
                        return Err(too_long());
                    }
                    result.push_str(&value);
                }
                Some(_) => {
                    let mut ch = self.next().unwrap_or_default();
                    if ch == self.lex.escape {
                        match self.peek() {
                            None => continue,
                            // Only these can be escaped inside double quotes; any other escape
                            // character stays as written, as in sh.
                            Some(c) if c == '"' || c == '$' || c == self.lex.escape => {
                                if self.lex.raw_escapes {
                                    result.push(ch);
                                }
                                ch = c;
                                self.next();
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn lookup(&self, name: &str) -> Option<String> {
        (self.env)(name)
    }

    fn dollar(&mut self) -> Result<String, String> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.lookup(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.next();
        match self.peek() {
            None => return Err("syntax error: missing `}`".to_string()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".to_string()),
            Some(_) => {}
        }
        if self.depth >= MAX_NESTING {
            return Err(format!(
                "variable expansion nested deeper than {MAX_NESTING} levels: flatten the `${{...}}` \
                 defaults, or set the value with an `ARG`/`ENV` line first"
            ));
        }
        self.depth += 1;
        let r = self.braced();
        self.depth -= 1;
        r
    }

    /// `${...}` after the `${`.
    fn braced(&mut self) -> Result<String, String> {
        let name = self.process_name();
        let Some(ch) = self.next() else {
            return Err("syntax error: missing `}`".to_string());
        };
        match ch {
            '}' => Ok(match self.lookup(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let mut chs = ch.to_string();
                let mut op = ch;
                let null_is_unset = ch == ':';
                if null_is_unset {
                    match self.next() {
                        Some(c) => {
                            op = c;
                            chs.push(c);
                        }
                        None => return Err("syntax error: missing `}`".to_string()),
                    }
                }
                let raw = op == '#' || op == '%';
                if null_is_unset && raw {
                    return Err(format!("unsupported modifier `{chs}` in substitution"));
                }
                let word = match self.process_stop_on_any(&['}'], raw) {
                    Ok((word, _)) => word,
                    Err(e) if self.peek().is_none() => {
                        let _ = e;
                        return Err("syntax error: missing `}`".to_string());
                    }
                    Err(e) => return Err(e),
                };
                let value = self.lookup(&name);
                if self.lex.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}{chs}{word}}}"));
                }
                let unset = match &value {
                    None => true,
                    Some(v) => null_is_unset && v.is_empty(),
                };
                match op {
                    '-' => Ok(if unset {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    '+' => Ok(if unset { String::new() } else { word }),
                    '?' => match value {
                        None => Err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be unset"
                            } else {
                                &word
                            }
                        )),
                        Some(v) if null_is_unset && v.is_empty() => Err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be empty"
                            } else {
                                &word
                            }
                        )),
                        Some(v) => Ok(v),
                    },
                    '#' | '%' => {
                        let value = value.unwrap_or_default();
                        let (greedy, pattern) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest),
                            None => (false, word.as_str()),
                        };
                        let toks = glob_tokens(pattern);
                        if op == '#' {
                            trim_prefix(&toks, &value, greedy)
                        } else {
                            trim_suffix(&toks, &value, greedy)
                        }
                    }
                    _ => Err(format!("unsupported modifier `{chs}` in substitution")),
                }
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.next();
                }
                let pattern = match self.process_stop_on_any(&['/', '}'], true) {
                    Ok((p, _)) => p,
                    Err(_) if self.peek().is_none() => {
                        return Err("syntax error: missing `}`".to_string())
                    }
                    Err(e) => return Err(e),
                };
                // `${v/pattern}` (no replacement) deletes the match, as in bash.
                let replacement = if self.last() == Some('/') {
                    match self.process_stop_on_any(&['}'], false) {
                        Ok((r, _)) => r,
                        Err(_) if self.peek().is_none() => {
                            return Err("syntax error: missing `}`".to_string())
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    String::new()
                };
                let value = self.lookup(&name);
                let Some(value) = value else {
                    if self.lex.skip_unset_env {
                        let slash = if all { "//" } else { "/" };
                        return Ok(format!("${{{name}{slash}{pattern}/{replacement}}}"));
                    }
                    return Ok(String::new());
                };
                replace(&glob_tokens(&pattern), &value, &replacement, all)
            }
            other => Err(format!("unsupported modifier `{other}` in substitution")),
        }
    }

    /// Reads a variable name: letters, digits and `_`; or a run of digits (positional); or one
    /// special parameter character.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_numeric() {
                while let Some(d) = self.peek().filter(|c| c.is_numeric()) {
                    name.push(d);
                    self.next();
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.next();
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            name.push(ch);
            self.next();
        }
        name
    }
}

fn is_special_param(ch: char) -> bool {
    matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// One element of a shell pattern (`${v#pattern}` and friends).
#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Lit(char),
    /// `?`
    Any,
    /// `*`
    Star,
    /// `[...]`: ranges (single characters are ranges of one), negated with `!` or `^`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

fn glob_tokens(pattern: &str) -> Vec<Tok> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        match ch {
            '*' => toks.push(Tok::Star),
            '?' => toks.push(Tok::Any),
            '\\' => match chars.get(i) {
                Some(&c) => {
                    toks.push(Tok::Lit(c));
                    i += 1;
                }
                None => toks.push(Tok::Lit('\\')),
            },
            '[' => match parse_class(&chars, i) {
                Some((tok, next)) => {
                    toks.push(tok);
                    i = next;
                }
                // An unclosed `[` is an ordinary character, as in sh.
                None => toks.push(Tok::Lit('[')),
            },
            c => toks.push(Tok::Lit(c)),
        }
    }
    toks
}

/// Parses a bracket expression whose body starts at `start` (just after `[`); returns the token
/// and the index after the closing `]`.
fn parse_class(chars: &[char], start: usize) -> Option<(Tok, usize)> {
    let mut i = start;
    let negated = matches!(chars.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let mut c = *chars.get(i)?;
        if c == ']' && !first {
            return Some((Tok::Class { negated, ranges }, i + 1));
        }
        first = false;
        i += 1;
        if c == '\\' {
            c = *chars.get(i)?;
            i += 1;
        }
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&n| n != ']') {
            let mut hi = chars[i + 1];
            i += 2;
            if hi == '\\' {
                hi = *chars.get(i)?;
                i += 1;
            }
            ranges.push((c, hi));
        } else {
            ranges.push((c, c));
        }
    }
}

impl Tok {
    fn matches(&self, ch: char) -> bool {
        match self {
            Tok::Lit(c) => *c == ch,
            Tok::Any | Tok::Star => true,
            Tok::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= ch && ch <= hi) != *negated
            }
        }
    }
}

/// Most matching work (pattern tokens × value characters) a `${v#p}`, `${v%p}` or `${v/p/r}`
/// may cost; a pattern and value this large come only from a hostile Dockerfile.
const MAX_MATCH_WORK: usize = 50_000_000;

/// For every start position in `text` (`0..=len`), the end of the first match of `toks` found
/// when `*` lengths are tried longest-first (`greedy`) or shortest-first: the leftmost-first
/// semantics of the regular expression BuildKit builds. Computed a token at a time from the
/// last, so the work is tokens × characters and no input recurses.
fn match_ends(toks: &[Tok], text: &[char], greedy: bool) -> Vec<Option<usize>> {
    let n = text.len();
    // `next[p]`: the match of toks[t + 1..] from p.
    let mut next: Vec<Option<usize>> = (0..=n).map(Some).collect();
    for tok in toks.iter().rev() {
        let mut row = vec![None; n + 1];
        match tok {
            Tok::Star if greedy => {
                // The largest q >= p where the rest matches: the largest such q overall.
                let best = (0..=n).rev().find_map(|q| next[q].map(|end| (q, end)));
                if let Some((q, end)) = best {
                    row[..=q].fill(Some(end));
                }
            }
            Tok::Star => {
                let mut nearest = None;
                for p in (0..=n).rev() {
                    if next[p].is_some() {
                        nearest = next[p];
                    }
                    row[p] = nearest;
                }
            }
            tok => {
                for p in 0..n {
                    if tok.matches(text[p]) {
                        row[p] = next[p + 1];
                    }
                }
            }
        }
        next = row;
    }
    next
}

/// Whether matching `toks` against `text` stays within [`MAX_MATCH_WORK`].
fn check_match_work(toks: &[Tok], text_len: usize) -> Result<(), String> {
    if toks.len().saturating_mul(text_len + 1) > MAX_MATCH_WORK {
        return Err(format!(
            "a pattern of {} characters against a value of {text_len} characters is too large to \
             match: shorten the pattern or the value",
            toks.len()
        ));
    }
    Ok(())
}

fn trim_prefix(toks: &[Tok], value: &str, greedy: bool) -> Result<String, String> {
    let text: Vec<char> = value.chars().collect();
    check_match_work(toks, text.len())?;
    Ok(match match_ends(toks, &text, greedy)[0] {
        Some(end) => text[end..].iter().collect(),
        None => value.to_string(),
    })
}

/// The shortest or longest matching suffix is the matching prefix of the reversed value under
/// the reversed pattern.
fn trim_suffix(toks: &[Tok], value: &str, greedy: bool) -> Result<String, String> {
    let reversed_toks: Vec<Tok> = toks.iter().rev().cloned().collect();
    let reversed: String = value.chars().rev().collect();
    Ok(trim_prefix(&reversed_toks, &reversed, greedy)?
        .chars()
        .rev()
        .collect())
}

fn replace(toks: &[Tok], value: &str, replacement: &str, all: bool) -> Result<String, String> {
    let text: Vec<char> = value.chars().collect();
    check_match_work(toks, text.len())?;
    let ends = match_ends(toks, &text, true);
    let n = text.len();
    let mut out = String::new();
    let mut i = 0;
    let mut last_end: Option<usize> = None;
    let mut replaced = false;
    while i <= n {
        let found = if replaced && !all { None } else { ends[i] };
        match found {
            // An empty match right after a previous match does not count (as in Go's regexp).
            Some(end) if !(end == i && last_end == Some(i)) => {
                out.push_str(replacement);
                replaced = true;
                last_end = Some(end);
                if end > i {
                    i = end;
                    continue;
                }
            }
            _ => {}
        }
        if let Some(&c) = text.get(i) {
            out.push(c);
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PWD" => Some("/home".into()),
            "NULL" => Some(String::new()),
            "V" => Some("foo/bar/baz.tar.gz".into()),
            "SP" => Some("a b  c".into()),
            _ => None,
        }
    }

    fn w(s: &str) -> Result<String, ExpandError> {
        expand_word(s, &env, '\\')
    }

    #[test]
    fn prefix_and_suffix_removal() {
        assert_eq!(w("${V#*/}").unwrap(), "bar/baz.tar.gz");
        assert_eq!(w("${V##*/}").unwrap(), "baz.tar.gz");
        assert_eq!(w("${V%.*}").unwrap(), "foo/bar/baz.tar");
        assert_eq!(w("${V%%.*}").unwrap(), "foo/bar/baz");
        assert_eq!(w("${V#nomatch}").unwrap(), "foo/bar/baz.tar.gz");
        assert_eq!(w("${V%[gz][gz]}").unwrap(), "foo/bar/baz.tar.");
        assert_eq!(w("${V#f?o}").unwrap(), "/bar/baz.tar.gz");
        assert_eq!(w("${XXX#a}").unwrap(), "");
    }

    #[test]
    fn replacement() {
        assert_eq!(w("${V/a/A}").unwrap(), "foo/bAr/baz.tar.gz");
        assert_eq!(w("${V//a/A}").unwrap(), "foo/bAr/bAz.tAr.gz");
        assert_eq!(w("${V//\\//-}").unwrap(), "foo-bar-baz.tar.gz");
        assert_eq!(w("${V/b*z/X}").unwrap(), "foo/X");
        assert_eq!(w("${V/.tar}").unwrap(), "foo/bar/baz.gz");
        assert_eq!(w("${PWD//o/0}").unwrap(), "/h0me");
    }

    #[test]
    fn error_modifiers() {
        assert_eq!(w("${PWD:?x}").unwrap(), "/home");
        let err = w("${XXX:?is required}").unwrap_err();
        assert!(err.reason.contains("XXX: is required"), "{err}");
        assert!(w("${NULL:?}").is_err());
        assert_eq!(w("${NULL?}").unwrap(), "");
        assert!(w("${PWD:#x}").is_err());
    }

    #[test]
    fn default_and_alternative_without_colon() {
        assert_eq!(w("${NULL-d}").unwrap(), "");
        assert_eq!(w("${NULL:-d}").unwrap(), "d");
        assert_eq!(w("${XXX-d}").unwrap(), "d");
        assert_eq!(w("${NULL+a}").unwrap(), "a");
        assert_eq!(w("${NULL:+a}").unwrap(), "");
        assert_eq!(w("${XXX+a}").unwrap(), "");
    }

    #[test]
    fn splitting_follows_variable_values() {
        let words = expand_words("x${SP}y \"${SP}\"", &env, '\\').unwrap();
        assert_eq!(words, vec!["xa", "b", "cy", "a b  c"]);
    }

    #[test]
    fn backtick_escape() {
        assert_eq!(expand_word("a`$PWD", &env, '`').unwrap(), "a$PWD");
        assert_eq!(expand_word("a\\b", &env, '`').unwrap(), "a\\b");
    }

    #[test]
    fn raw_modes_keep_quotes_escapes_and_unset_vars() {
        let lex = Lexer {
            escape: '\\',
            raw_quotes: true,
            raw_escapes: true,
            skip_unset_env: true,
        };
        let (_, words) = lex
            .process("RUN <<\"EOF\" a\\ b $X ${Y}", &|_| None)
            .unwrap();
        assert_eq!(words, vec!["RUN", "<<\"EOF\"", "a\\ b", "$X", "${Y}"]);
    }

    #[test]
    fn heredoc_bodies_keep_quotes() {
        let out = expand_heredoc(
            "echo \"$PWD\" '${PWD}' \\$PWD \\\\ \\n a\\\nb\n",
            &env,
            '\\',
        )
        .unwrap();
        assert_eq!(out, "echo \"/home\" '/home' $PWD \\ \\n ab\n");
        assert!(expand_heredoc("${PWD", &env, '\\').is_err());
    }

    #[test]
    fn pathological_patterns_finish() {
        let long = "a".repeat(300);
        let e = move |_: &str| Some(long.clone());
        let out = expand_word("${V%%*a*a*a*a*a*a*a*b}", &e, '\\').unwrap();
        assert_eq!(out.len(), 300);
    }

    fn nested(depth: usize) -> String {
        let mut word = "x".to_string();
        for i in 0..depth {
            word = format!("${{a{i}:-{word}}}");
        }
        word
    }

    #[test]
    fn defaults_nested_5000_deep_are_an_error_not_a_stack_overflow() {
        let err = w(&nested(5000)).unwrap_err();
        assert!(
            err.reason.contains("nested deeper than 100 levels"),
            "{}",
            err.reason
        );
        let err = expand_heredoc(&nested(5000), &env, '\\').unwrap_err();
        assert!(err.reason.contains("nested deeper"), "{}", err.reason);
    }

    #[test]
    fn nesting_up_to_the_limit_fits_a_tokio_worker_stack() {
        // Tokio's worker threads have 2 MiB of stack; leave half of it to the callers.
        let word = nested(MAX_NESTING);
        let out = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || expand_word(&word, &env, '\\'))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(out.unwrap(), "x");
    }

    #[test]
    fn a_pattern_of_100000_characters_does_not_overflow_the_stack() {
        let long = "a".repeat(100_000);
        let value = long.clone();
        let e = move |_: &str| Some(value.clone());
        let out = expand_word(&format!("${{V#{long}}}"), &e, '\\').unwrap_err();
        assert!(out.reason.contains("too large to match"), "{}", out.reason);
        let short = move |_: &str| Some("abc".to_string());
        assert_eq!(
            expand_word(&format!("${{V#{}}}", "a".repeat(100_000)), &short, '\\').unwrap(),
            "abc"
        );
    }

    #[test]
    fn a_value_doubled_on_every_line_stops_at_the_word_limit() {
        let mut value = "ab".to_string();
        let mut lines = 0;
        loop {
            let v = value.clone();
            let e = move |_: &str| Some(v.clone());
            match expand_word("$V$V", &e, '\\') {
                Ok(doubled) => value = doubled,
                Err(err) => {
                    assert!(err.reason.contains("longer than 1 MiB"), "{}", err.reason);
                    break;
                }
            }
            lines += 1;
            assert!(lines < 30, "never stopped");
        }
        assert!(value.len() <= MAX_WORD_BYTES);
        let v = "x".repeat(MAX_WORD_BYTES / 2 + 1);
        let e = move |_: &str| Some(v.clone());
        assert!(expand_word("\"$V$V\"", &e, '\\').is_err());
        assert!(expand_heredoc("$V$V", &e, '\\').is_err());
    }
}

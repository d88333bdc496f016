//! Dockerfile text → [`Dockerfile`], reproducing BuildKit's parser (`parser.go`,
//! `line_parsers.go`, `split_command.go`): directives, continuations, flags, JSON vs shell form,
//! per-instruction argument rules and heredocs.

use crate::ast::{Directive, Dockerfile, Heredoc, Instruction};
use crate::shell::Lexer;

/// A Dockerfile that cannot be parsed. Displays as `Dockerfile:LINE: what is wrong`, with what
/// to do about it where there is something to say.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile:{line}: {}", crate::clip::clip_message(message))]
pub struct ParseError {
    /// 1-based line the problem is on (the instruction's first line).
    pub line: usize,
    pub message: String,
}

const DIRECTIVES: &[&str] = &["syntax", "escape", "check"];

/// Parses a Dockerfile the way BuildKit does.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.split_inclusive('\n');
    let mut d = Directives {
        escape: '\\',
        done: false,
        found: Vec::new(),
    };
    let mut instructions = Vec::new();
    let mut warnings = Vec::new();
    let mut current_line = 0usize;

    while let Some(raw) = lines.next() {
        let processed = process_line(&mut d, raw, true, current_line + 1)?;
        current_line += 1;
        let start_line = current_line;
        let (mut line, mut end_of_line) = trim_continuation(&processed, d.escape);
        if end_of_line && line.is_empty() {
            continue;
        }

        let mut empty_continuation = false;
        while !end_of_line {
            let Some(raw) = lines.next() else { break };
            let processed = process_line(&mut d, raw, false, current_line + 1)?;
            current_line += 1;
            if is_comment(raw) {
                continue;
            }
            if trim_newline(&processed).trim_start().is_empty() {
                empty_continuation = true;
                continue;
            }
            let (cont, eol) = trim_continuation(&processed, d.escape);
            line.push_str(&cont);
            end_of_line = eol;
        }
        if empty_continuation {
            warnings.push((
                start_line,
                format!("empty continuation line found in: {line}"),
            ));
        }

        let at = |message: String| ParseError {
            line: start_line,
            message,
        };
        let mut inst = node_from_line(&line, d.escape).map_err(at)?;

        if inst.can_contain_heredoc() {
            for mut heredoc in heredocs_from_line(&line).map_err(at)? {
                let mut terminated = false;
                for raw in lines.by_ref() {
                    current_line += 1;
                    let mut candidate = trim_newline(raw);
                    if heredoc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == heredoc.name {
                        terminated = true;
                        break;
                    }
                    if heredoc.chomp {
                        heredoc.content.push_str(raw.trim_start_matches('\t'));
                    } else {
                        heredoc.content.push_str(raw);
                    }
                }
                if !terminated {
                    return Err(ParseError {
                        line: start_line,
                        message: format!(
                            "unterminated heredoc `{}`: end it with a line holding only `{}`",
                            heredoc.name, heredoc.name
                        ),
                    });
                }
                inst.heredocs.push(heredoc);
            }
        }

        inst.start_line = start_line;
        inst.end_line = current_line;
        if let Some(next) = inst.next.as_mut() {
            next.start_line = start_line;
            next.end_line = current_line;
        }
        instructions.push(inst);
    }

    if instructions.is_empty() {
        return Err(ParseError {
            line: current_line.max(1),
            message: "file with no instructions: a Dockerfile needs at least a `FROM` line"
                .to_string(),
        });
    }

    Ok(Dockerfile {
        directives: d.found,
        escape: d.escape,
        instructions,
        warnings,
    })
}

struct Directives {
    escape: char,
    /// Directives are only read at the top of the file, before anything else.
    done: bool,
    found: Vec<Directive>,
}

impl Directives {
    fn possible_directive(&mut self, line: &str, lineno: usize) -> Result<(), ParseError> {
        if self.done {
            return Ok(());
        }
        let Some((name, value)) = match_directive(line) else {
            self.done = true;
            return Ok(());
        };
        let name = name.to_ascii_lowercase();
        if !DIRECTIVES.contains(&name.as_str()) {
            self.done = true;
            return Ok(());
        }
        if self.found.iter().any(|f| f.name == name) {
            return Err(ParseError {
                line: lineno,
                message: format!("only one `{name}` parser directive can be used: remove this one"),
            });
        }
        if name == "escape" {
            self.escape = match value {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(ParseError {
                        line: lineno,
                        message: format!("invalid escape token `{other}`: use `\\` or a backtick"),
                    })
                }
            };
        }
        self.found.push(Directive {
            name,
            value: value.to_string(),
            line: lineno,
        });
        Ok(())
    }
}

/// `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`
fn match_directive(line: &str) -> Option<(&str, &str)> {
    let is_ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c');
    let rest = line.strip_prefix('#')?.trim_start_matches(is_ws);
    let name_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, rest) = rest.split_at(name_len);
    let rest = rest.trim_start_matches(is_ws).strip_prefix('=')?;
    let value = rest.trim_matches(is_ws);
    if value.is_empty() || value.contains('\n') {
        return None;
    }
    Some((name, value))
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(raw: &str) -> bool {
    trim_newline(raw).trim_start().starts_with('#')
}

/// Drops the line ending, optionally the leading whitespace, and a comment that fills the line;
/// checks for a parser directive on the way.
fn process_line(
    d: &mut Directives,
    raw: &str,
    strip_left: bool,
    lineno: usize,
) -> Result<String, ParseError> {
    let mut token = trim_newline(raw);
    if strip_left {
        token = token.trim_start();
    }
    d.possible_directive(token, lineno)?;
    if token.starts_with('#') {
        return Ok(String::new());
    }
    Ok(token.to_string())
}

/// Removes a trailing escape character (plus trailing blanks) that continues the line. An escape
/// preceded by another escape is an escaped escape, not a continuation. Returns the line and
/// whether it ends the instruction.
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    if let Some(before) = trimmed.strip_suffix(escape) {
        if before.is_empty() || !before.ends_with(escape) {
            return (before.to_string(), false);
        }
    }
    (line.to_string(), true)
}

/// Splits `RUN --flag x rest` into the lower-cased instruction, its flags and the rest.
fn split_command(line: &str, escape: char) -> (String, Vec<String>, String) {
    let line = line.trim();
    let (cmd, rest) = match line.find(is_token_ws) {
        Some(i) => (&line[..i], Some(line[i..].trim_start_matches(is_token_ws))),
        None => (line, None),
    };
    let (args, flags) = match rest {
        Some(rest) => extract_builder_flags(rest, escape),
        None => (String::new(), Vec::new()),
    };
    (cmd.to_ascii_lowercase(), flags, args.trim().to_string())
}

/// `[\t\v\f\r ]`
fn is_token_ws(c: char) -> bool {
    matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ')
}

/// Takes the leading `--flag[=value]` words off `line` (quotes and `escape`s removed, as
/// BuildKit does); a bare `--` ends the flags. Returns the remaining text and the flags.
///
/// The escape is the Dockerfile's (`# escape=`), as in the Dockerfile frontend since 1.15
/// (BuildKit commit 877d8a7); BuildKit v0.11's built-in frontend took `\` whatever the
/// directive said, which ate the backslashes of a Windows path in a flag.
fn extract_builder_flags(line: &str, escape: char) -> (String, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut i = 0;
    loop {
        let at_end = i >= chars.len();
        let (offset, ch) = chars.get(i).copied().unwrap_or((line.len(), '\0'));
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                i += 1;
                continue;
            }
            let next_is_dash = chars.get(i + 1).is_some_and(|&(_, c)| c == '-');
            if ch != '-' || !next_is_dash {
                return (line[offset..].to_string(), words);
            }
            phase = Phase::Word;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if word == "--" {
                    return (line[offset..].to_string(), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                i += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                i += 1;
                continue;
            }
            let mut c = ch;
            if ch == escape {
                if i + 1 == chars.len() {
                    i += 1;
                    continue;
                }
                i += 1;
                c = chars[i].1;
            }
            word.push(c);
            i += 1;
            continue;
        }
        // Inside quotes.
        if ch == quote {
            phase = Phase::Word;
            i += 1;
            continue;
        }
        let mut c = ch;
        if ch == escape {
            if i + 1 == chars.len() {
                phase = Phase::Word;
                i += 1;
                continue;
            }
            i += 1;
            c = chars[i].1;
        }
        word.push(c);
        i += 1;
    }
    (String::new(), words)
}

/// Parses one logical line (continuations joined) into an instruction.
fn node_from_line(line: &str, escape: char) -> Result<Instruction, String> {
    let (cmd, flags, rest) = split_command(line, escape);
    let mut inst = Instruction {
        name: cmd.clone(),
        original: line.trim().to_string(),
        flags,
        args: Vec::new(),
        json: false,
        heredocs: Vec::new(),
        start_line: 0,
        end_line: 0,
        next: None,
    };
    match cmd.as_str() {
        "add" | "copy" | "volume" => {
            (inst.args, inst.json) = parse_maybe_json_to_list(&rest)?;
        }
        "cmd" | "entrypoint" | "run" | "shell" => {
            (inst.args, inst.json) = parse_maybe_json(&rest)?;
        }
        "arg" => inst.args = parse_words(&rest, escape),
        "env" => inst.args = parse_name_val(&rest, "ENV", escape)?,
        "label" => inst.args = parse_name_val(&rest, "LABEL", escape)?,
        "expose" | "from" => inst.args = split_whitespace(&rest),
        "healthcheck" => (inst.args, inst.json) = parse_health_config(&rest)?,
        "maintainer" | "stopsignal" | "user" | "workdir" if !rest.is_empty() => {
            inst.args = vec![rest];
        }
        // Which triggers ONBUILD allows is for compilation to say, as in BuildKit.
        "onbuild" if !rest.is_empty() => {
            inst.next = Some(Box::new(node_from_line(&rest, escape)?));
        }
        // No argument; or an unknown word, or none (a file holding only `\`): kept without
        // arguments, as BuildKit's parser does, and rejected by compilation.
        _ => {}
    }
    Ok(inst)
}

/// Error for a JSON array holding something other than strings: that is an error, not a reason
/// to fall back to shell form.
const NOT_STRING_ARRAY: &str =
    "when using JSON array syntax, arrays must be comprised of strings only: quote every element";

/// `Ok(None)`: not a JSON array (use the text as written); `Ok(Some)`: its strings.
fn parse_json(rest: &str) -> Result<Option<Vec<String>>, String> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(None);
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(rest) else {
        return Ok(None);
    };
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(NOT_STRING_ARRAY.to_string()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn parse_maybe_json(rest: &str) -> Result<(Vec<String>, bool), String> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    Ok(match parse_json(rest)? {
        Some(v) => (v, true),
        None => (vec![rest.to_string()], false),
    })
}

fn parse_maybe_json_to_list(rest: &str) -> Result<(Vec<String>, bool), String> {
    Ok(match parse_json(rest)? {
        Some(v) => (v, true),
        None => (split_whitespace(rest), false),
    })
}

fn split_whitespace(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    rest.split(is_token_ws)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// HEALTHCHECK: the first word is the kind (`CMD`, `NONE`), the rest is like `CMD`.
fn parse_health_config(rest: &str) -> Result<(Vec<String>, bool), String> {
    let sep = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if sep == 0 {
        return Ok((Vec::new(), false));
    }
    let (kind, cmd) = rest.split_at(sep);
    let (mut args, json) = parse_maybe_json(cmd.trim_start())?;
    args.insert(0, kind.to_string());
    Ok((args, json))
}

/// Splits into words at unquoted whitespace, keeping quotes and escapes in the words (they are
/// removed later, at expansion).
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    let mut i = 0;
    loop {
        let at_end = i >= chars.len();
        let ch = chars.get(i).copied().unwrap_or('\0');
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                i += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                i += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            let mut c = ch;
            if ch == escape {
                if i + 1 == chars.len() {
                    i += 1;
                    continue;
                }
                // An escaped character is kept with its escape, even a quote.
                word.push(ch);
                i += 1;
                c = chars[i];
            }
            word.push(c);
            i += 1;
            continue;
        }
        // Inside quotes; nothing can be escaped inside single quotes.
        if ch == quote {
            phase = Phase::Word;
        }
        let mut c = ch;
        if ch == escape && quote != '\'' {
            if i + 1 == chars.len() {
                phase = Phase::Word;
                i += 1;
                continue;
            }
            word.push(ch);
            i += 1;
            c = chars[i];
        }
        word.push(c);
        i += 1;
    }
    words
}

/// ENV and LABEL: `key value` (old form, separator `""`) or `k=v k2=v2` (separator `"="`),
/// flattened into key, value, separator triples.
fn parse_name_val(rest: &str, key: &str, escape: char) -> Result<Vec<String>, String> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    if !first.contains('=') {
        let mut parts = rest.splitn(2, is_token_ws);
        let name = parts.next().unwrap_or_default();
        let value = parts.next().map(|v| v.trim_start_matches(is_token_ws));
        return match value {
            Some(value) => Ok(vec![name.to_string(), value.to_string(), String::new()]),
            None => Err(format!(
                "{key} must have two arguments: write `{key} {name}=value`"
            )),
        };
    }
    let mut out = Vec::new();
    for (n, word) in words.iter().enumerate() {
        let Some((k, v)) = word.split_once('=') else {
            // `ENV A=1 B 2`: the likely intent is `B=2`.
            let hint = match words.get(n + 1) {
                Some(next) if !next.contains('=') => format!(" (did you mean `{word}={next}`?)"),
                _ => format!(" (did you mean `{word}=`?)"),
            };
            return Err(format!(
                "syntax error - can't find = in `{word}`{hint}: must be of the form `name=value`"
            ));
        };
        out.extend([k.to_string(), v.to_string(), "=".to_string()]);
    }
    Ok(out)
}

/// `^(\d*)<<(-?)([^<]*)$` on one word of the line, then the delimiter's quoting decides whether
/// the body is expanded.
fn heredoc_from_word(word: &str) -> Result<Option<Heredoc>, String> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let Some(rest) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let mut lex = Lexer::new('\\');
    lex.skip_unset_env = true;
    let (_, words) = lex
        .process(rest, &|_| None)
        .map_err(|e| format!("bad heredoc delimiter `{rest}`: {e}"))?;
    let [name] = words.as_slice() else {
        return Ok(None);
    };
    lex.raw_quotes = true;
    let (_, raw_words) = lex
        .process(rest, &|_| None)
        .map_err(|e| format!("bad heredoc delimiter `{rest}`: {e}"))?;
    let quotes = |s: &str| s.chars().filter(|&c| c == '\'' || c == '"').count();
    let expand = raw_words.len() == 1 && quotes(name) == quotes(&raw_words[0]);
    Ok(Some(Heredoc {
        name: name.clone(),
        content: String::new(),
        expand,
        chomp,
    }))
}

fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let lex = Lexer {
        escape: '\\',
        raw_quotes: true,
        raw_escapes: true,
        skip_unset_env: true,
    };
    // A line the lexer cannot split has no heredocs (BuildKit ignores this error too).
    let words = lex
        .process(line, &|_| None)
        .map(|r| r.1)
        .unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = heredoc_from_word(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

impl Instruction {
    /// RUN, COPY and ADD in shell form may carry heredocs, also as an ONBUILD trigger.
    fn can_contain_heredoc(&self) -> bool {
        let target = match (&self.name[..], &self.next) {
            ("onbuild", Some(next)) => next,
            _ => self,
        };
        matches!(target.name.as_str(), "run" | "copy" | "add") && !target.json
    }

    /// One line in the conformance `result` format, without a newline:
    /// `(name ["--flag"] "arg" ...)`.
    pub fn dump(&self) -> String {
        let mut s = String::from("(");
        s.push_str(&self.name);
        if !self.flags.is_empty() {
            s.push_str(" [");
            let flags: Vec<String> = self.flags.iter().map(|f| go_quote(f)).collect();
            s.push_str(&flags.join(" "));
            s.push(']');
        }
        if let Some(next) = &self.next {
            s.push(' ');
            s.push_str(&next.dump());
        }
        for arg in &self.args {
            s.push(' ');
            s.push_str(&go_quote(arg));
        }
        s.push(')');
        s
    }
}

impl Dockerfile {
    /// All instructions in the conformance `result` format, each followed by a newline.
    pub fn dump(&self) -> String {
        self.instructions.iter().map(|i| i.dump() + "\n").collect()
    }
}

/// Quotes like Go's `strconv.Quote`.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            ' ' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() || c.is_whitespace() || is_format_char(c) => {
                let n = c as u32;
                if n < 0x10000 {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The common invisible format characters Go does not count as printable.
fn is_format_char(c: char) -> bool {
    matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Instruction {
        let df = parse(text).unwrap();
        assert_eq!(df.instructions.len(), 1, "{df:?}");
        df.instructions.into_iter().next().unwrap()
    }

    #[test]
    fn heredoc_basic() {
        let df = parse("FROM busybox\nRUN <<EOF\necho hi\necho there\nEOF\nRUN true\n").unwrap();
        let run = &df.instructions[1];
        assert_eq!(run.args, vec!["<<EOF"]);
        assert_eq!(run.heredocs.len(), 1);
        assert_eq!(run.heredocs[0].name, "EOF");
        assert_eq!(run.heredocs[0].content, "echo hi\necho there\n");
        assert!(run.heredocs[0].expand);
        assert!(!run.heredocs[0].chomp);
        assert_eq!((run.start_line, run.end_line), (2, 5));
        assert_eq!(df.instructions[2].start_line, 6);
    }

    #[test]
    fn heredoc_several_on_one_line() {
        let df = parse("FROM x\nRUN <<A cat - && <<B cat\nfirst\nA\nsecond\nB\n").unwrap();
        let docs = &df.instructions[1].heredocs;
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (docs[0].name.as_str(), docs[0].content.as_str()),
            ("A", "first\n")
        );
        assert_eq!(
            (docs[1].name.as_str(), docs[1].content.as_str()),
            ("B", "second\n")
        );
    }

    #[test]
    fn heredoc_chomp_and_quoted() {
        let df = parse("FROM x\nRUN <<-'EOT'\n\techo $HOME\n\t\tnested\n\tEOT\n").unwrap();
        let doc = &df.instructions[1].heredocs[0];
        assert_eq!(doc.name, "EOT");
        assert!(doc.chomp);
        assert!(!doc.expand);
        assert_eq!(doc.content, "echo $HOME\nnested\n");

        let df = parse("FROM x\nRUN <<\"EOF\" bash\nx\nEOF\n").unwrap();
        assert!(!df.instructions[1].heredocs[0].expand);
        let df = parse("FROM x\nRUN <<E\"O\"F bash\nx\nEOF\n").unwrap();
        assert_eq!(df.instructions[1].heredocs[0].name, "EOF");
        assert!(!df.instructions[1].heredocs[0].expand);
    }

    #[test]
    fn heredoc_copy_and_fd_and_json() {
        let df = parse("FROM x\nCOPY <<EOF /etc/conf\nkey=1\nEOF\n").unwrap();
        let copy = &df.instructions[1];
        assert_eq!(copy.args, vec!["<<EOF", "/etc/conf"]);
        assert_eq!(copy.heredocs[0].content, "key=1\n");

        let df = parse("FROM x\nRUN 3<<EOF cat <&3\nhi\nEOF\n").unwrap();
        assert_eq!(df.instructions[1].heredocs[0].name, "EOF");

        // JSON form and other instructions take `<<` literally.
        let df = parse("FROM x\nRUN [\"echo\", \"<<EOF\"]\nCMD <<EOF\n").unwrap();
        assert_eq!(df.instructions.len(), 3);
        assert!(df.instructions[1].heredocs.is_empty());
    }

    #[test]
    fn heredoc_unterminated_is_an_error() {
        let err = parse("FROM x\nRUN <<EOF\necho\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(
            err.to_string().contains("unterminated heredoc `EOF`"),
            "{err}"
        );
    }

    #[test]
    fn heredoc_in_onbuild() {
        let df = parse("FROM x\nONBUILD RUN <<EOF\necho\nEOF\n").unwrap();
        assert_eq!(df.instructions[1].heredocs[0].content, "echo\n");
        assert_eq!(df.instructions[1].dump(), "(onbuild (run \"<<EOF\"))");
    }

    #[test]
    fn directives_are_recorded() {
        let df =
            parse("# syntax=docker/dockerfile:1\n# check=skip=all\n#escape=`\nFROM x\n").unwrap();
        let names: Vec<_> = df.directives.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["syntax", "check", "escape"]);
        assert_eq!(df.directives[1].value, "skip=all");
        assert_eq!(df.escape, '`');
        // After a comment or instruction, directive-looking comments are plain comments.
        let df = parse("FROM x\n# escape=`\n").unwrap();
        assert_eq!(df.escape, '\\');
        assert!(df.directives.is_empty());
    }

    #[test]
    fn bad_directives() {
        let err = parse("# escape=x\nFROM a\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(
            err.to_string().contains("invalid escape token `x`"),
            "{err}"
        );
        let err = parse("# syntax=a\n# syntax=b\nFROM a\n").unwrap_err();
        assert_eq!(err.line, 2);
    }

    // Issue 13 item 7: the parser parses and does not validate; compilation rejects these
    // (`instructions::check_words`).
    #[test]
    fn parser_accepts_unknown_instruction_words() {
        let df = parse("FROM x\n\nRUNN --f=1 echo hi\n").unwrap();
        assert_eq!(df.dump(), "(from \"x\")\n(runn [\"--f=1\"])\n");
        assert_eq!(df.instructions[1].start_line, 3);
    }

    #[test]
    fn parser_accepts_forbidden_onbuild_triggers() {
        let df = parse("FROM x\nONBUILD ONBUILD RUN a\nONBUILD FROM y\nONBUILD RUNN a\n").unwrap();
        assert_eq!(
            df.dump(),
            "(from \"x\")\n(onbuild (onbuild (run \"a\")))\n(onbuild (from \"y\"))\n\
             (onbuild (runn))\n"
        );
    }

    #[test]
    fn parser_accepts_a_file_holding_only_a_backslash() {
        let df = parse("\\").unwrap();
        assert_eq!(df.dump(), "()\n");
        assert_eq!(df.instructions[0].start_line, 1);
    }

    #[test]
    fn flags_and_lines() {
        let i = one("COPY --from=build --chown=\"a b\" src /dst\n");
        assert_eq!(i.flags, vec!["--from=build", "--chown=a b"]);
        assert_eq!(i.args, vec!["src", "/dst"]);
        assert_eq!(
            i.dump(),
            "(copy [\"--from=build\" \"--chown=a b\"] \"src\" \"/dst\")"
        );
        let df = parse("FROM a\nRUN a \\\n  # c\n\n  b\n").unwrap();
        assert_eq!(df.instructions[1].args, vec!["a   b"]);
        assert_eq!(
            (df.instructions[1].start_line, df.instructions[1].end_line),
            (2, 5)
        );
        assert_eq!(df.warnings.len(), 1);
        assert_eq!(df.warnings[0].0, 2);
    }

    #[test]
    fn escape_backtick_flag_values_lost_their_backslashes() {
        let df = parse(
            "# escape=`\nFROM a\nCOPY --chown=C:\\Users\\me --from=x`y --chmod=\"7`\"5\" s d\n\
             ONBUILD RUN --mount=source=a\\b true\n",
        )
        .unwrap();
        assert_eq!(
            df.instructions[1].flags,
            vec!["--chown=C:\\Users\\me", "--from=xy", "--chmod=7\"5"]
        );
        let trigger = df.instructions[2].next.as_ref().expect("trigger");
        assert_eq!(trigger.flags, vec!["--mount=source=a\\b"]);
        // With the default escape, a backslash escapes, as before.
        assert_eq!(
            one("COPY --chown=C:\\Users s d").flags,
            vec!["--chown=C:Users"]
        );
    }

    #[test]
    fn crlf_and_bom() {
        let df = parse("\u{feff}FROM a\r\nRUN x \\\r\n y\r\n").unwrap();
        assert_eq!(df.dump(), "(from \"a\")\n(run \"x  y\")\n");
    }

    #[test]
    fn json_form_is_flagged() {
        let i = one("ENTRYPOINT [\"a\", \"b c\"]");
        assert!(i.json);
        assert_eq!(i.args, vec!["a", "b c"]);
        let i = one("ENTRYPOINT a b");
        assert!(!i.json);
        let i = one("HEALTHCHECK --interval=1s CMD [\"a\"]");
        assert!(i.json);
        assert_eq!(i.args, vec!["CMD", "a"]);
    }

    #[test]
    fn go_quote_matches_go() {
        assert_eq!(go_quote("a\u{0}b\u{7f}"), "\"a\\x00b\\x7f\"");
        assert_eq!(go_quote("♥\u{a0}"), "\"♥\\u00a0\"");
        assert_eq!(go_quote("\u{85}"), "\"\\u0085\"");
    }

    /// A cheap fuzzer: random texts built from the characters and fragments the parser, the
    /// lexer and the ignore matcher treat specially must never make them panic.
    #[test]
    fn random_inputs_do_not_panic() {
        const PIECES: &[&str] = &[
            "FROM ",
            "RUN ",
            "COPY ",
            "ENV ",
            "ARG ",
            "LABEL ",
            "ONBUILD ",
            "HEALTHCHECK ",
            "CMD ",
            "# escape=`\n",
            "# syntax=x\n",
            "\\",
            "`",
            "\n",
            "\r\n",
            " ",
            "\t",
            "\"",
            "'",
            "$",
            "{",
            "}",
            ":",
            "-",
            "+",
            "?",
            "#",
            "%",
            "/",
            "*",
            "[",
            "]",
            "!",
            "^",
            "<<",
            "<<-",
            "EOF",
            "=",
            "--",
            "--from=",
            "[\"a\"]",
            "[1]",
            "a",
            "é",
            "\u{a0}",
            "\u{feff}",
            "0",
            "**",
            ".",
            "..",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let env = |name: &str| {
            name.starts_with(|c: char| c.is_ascii_uppercase())
                .then(|| name.to_string())
        };
        for _ in 0..20_000 {
            let len = (rand() % 24) as usize;
            let text: String = (0..len)
                .map(|_| PIECES[(rand() % PIECES.len() as u64) as usize])
                .collect();
            let _ = parse(&text);
            let _ = crate::shell::expand_words(&text, &env, '\\');
            let _ = crate::shell::expand_word(&text, &env, '`');
            let _ = crate::shell::expand_heredoc(&text, &env, '\\');
            let patterns = crate::dockerignore::parse_dockerignore(&text);
            if let Ok(m) = crate::dockerignore::IgnoreMatcher::new(&patterns) {
                let _ = m.matches(&text);
                let _ = m.matches("a/b/c.txt");
            }
        }
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let inputs = [
            "\\",
            "\\\n",
            "FROM a\nRUN \\",
            "FROM a\nONBUILD",
            "FROM a\nHEALTHCHECK \t ",
            "FROM a\nCOPY --",
            "FROM a\nCOPY --x=\"",
            "FROM a\nCOPY --x=\\",
            "FROM a\nENV \"",
            "FROM a\nENV a=\"b",
            "FROM a\nARG 'x\\",
            "FROM a\nRUN <<",
            "FROM a\nRUN <<'",
            "FROM a\nRUN <<-\n",
            "FROM a\nRUN 9999999999999999999999<<E\nE\n",
            "# escape=",
            "FROM a\nLABEL é=ü ñ",
            "FROM\u{a0}a",
            "FROM a\nCMD [1]",
            "FROM a\nCMD [\"\\ud800\"]",
            "FROM a\nRUN ${",
            "FROM a\nRUN <<\"$(x\"\nx\n",
        ];
        for input in inputs {
            let _ = parse(input);
        }
    }
}

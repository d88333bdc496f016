//! The parsed Dockerfile, close to BuildKit's parser output so its test corpus can be compared
//! line for line (see [`Instruction::dump`]).

/// A parser directive from the top of the file (`# syntax=`, `# escape=`, `# check=`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub value: String,
    pub line: usize,
}

/// A heredoc body attached to an instruction (`RUN <<EOF`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, without quotes.
    pub name: String,
    /// The body, including its final newline, not expanded (see `expand_heredoc`). For
    /// `<<-EOF` the leading tabs are already stripped from every line.
    pub content: String,
    /// False when the delimiter was quoted (`<<"EOF"`): no variable expansion in the body.
    pub expand: bool,
    /// True for `<<-EOF` (the parser has stripped the leading tabs from `content` already).
    pub chomp: bool,
}

/// One instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// Lower-cased instruction word (`run`, `copy`, ...).
    pub name: String,
    /// The instruction as written, continuations joined, for error messages.
    pub original: String,
    /// Flags exactly as written (`--from=build`).
    pub flags: Vec<String>,
    /// Arguments, following the conformance dump rules (see ../shared/conformance/README.md):
    /// shell form is one argument; JSON form the decoded elements; ENV/LABEL key,value,separator
    /// triples; HEALTHCHECK's first argument is its kind.
    pub args: Vec<String>,
    /// True when the arguments were written in JSON (exec) form.
    pub json: bool,
    /// Heredoc bodies in the order of their `<<` markers on the line. For `ONBUILD RUN <<EOF`
    /// they sit on the ONBUILD instruction, as in BuildKit.
    pub heredocs: Vec<Heredoc>,
    /// 1-based line of the instruction's first line.
    pub start_line: usize,
    pub end_line: usize,
    /// ONBUILD's nested instruction.
    pub next: Option<Box<Instruction>>,
}

/// A whole parsed Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dockerfile {
    pub directives: Vec<Directive>,
    /// The escape character in force (`\` unless `# escape=` says otherwise).
    pub escape: char,
    pub instructions: Vec<Instruction>,
    /// Warnings the parser noticed (e.g. empty continuation lines), with their line.
    pub warnings: Vec<(usize, String)>,
}

//! kiln-frontend: turns a Dockerfile into an LLB definition plus the image config the build
//! produces. No I/O beyond the Dockerfile text it is given; base image configs come through the
//! [`ImageResolver`] the caller provides.
//!
//! Modules: `ast` (the parsed form), `parser` (text → ast, BuildKit-conformant: it parses and
//! does not validate), `instructions` (ast → typed commands, checked), `shell` (word expansion),
//! `dockerignore` (moby's matcher), `compile` (typed commands → LLB + image config).

pub mod ast;
mod clip;
mod compile;
mod dockerignore;
mod fuzz;
mod instructions;
mod parser;
mod shell;
mod util;

pub use ast::{Directive, Dockerfile, Heredoc, Instruction};
pub use compile::{
    compile, BuildOptions, Compiled, ImageResolver, NamedContext, ResolvedImage, RunStep, Warning,
};
pub use dockerignore::{parse_dockerignore, IgnoreMatcher};
pub use fuzz::{fuzz_one, fuzz_shape, hostile_shape};
pub use parser::{parse, ParseError};
pub use shell::{expand_heredoc, expand_word, expand_words, ExpandError};

/// Errors from compiling a Dockerfile. Each names `Dockerfile:LINE` where it can.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// An error tied to one instruction: `file:line: message`, quoting the instruction (both cut
    /// to a readable length when they quote long input).
    #[error(
        "{file}:{line}: {}\n  {line} | {}",
        clip::clip_message(message),
        clip::clip(instruction, clip::QUOTE_CHARS)
    )]
    Instruction {
        file: String,
        line: usize,
        instruction: String,
        message: String,
    },
    #[error("{}", clip::clip_message(.0))]
    Other(String),
}

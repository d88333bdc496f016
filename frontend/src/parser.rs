//! Dockerfile text → AST, following BuildKit's parser (placeholder body, replaced shortly).

use crate::ast::{Dockerfile, Instruction};

/// A Dockerfile that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("Dockerfile:{line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Parses a Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let _ = text;
    Ok(Dockerfile {
        directives: Vec::new(),
        escape: '\\',
        instructions: Vec::new(),
        warnings: Vec::new(),
    })
}

impl Instruction {
    /// One line in the conformance `result` format, without a newline.
    pub fn dump(&self) -> String {
        self.name.clone()
    }
}

impl Dockerfile {
    /// All instructions in the conformance `result` format, each followed by a newline.
    pub fn dump(&self) -> String {
        self.instructions.iter().map(|i| i.dump() + "\n").collect()
    }
}

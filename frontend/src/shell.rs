//! Shell-word expansion as BuildKit's lexer does it (placeholder body, replaced shortly).

/// A word that cannot be expanded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExpandError(pub String);

/// Expands a word into one string.
pub fn expand_word(
    word: &str,
    env: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, ExpandError> {
    let _ = (env, escape);
    Ok(word.to_string())
}

/// Expands a word and splits it into fields.
pub fn expand_words(
    word: &str,
    env: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<Vec<String>, ExpandError> {
    let _ = (env, escape);
    Ok(word.split_whitespace().map(str::to_string).collect())
}

//! `.dockerignore` parsing and matching with moby's semantics (placeholder body, replaced shortly).

/// Reads the patterns of a `.dockerignore` file.
pub fn parse_dockerignore(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Decides which context paths a `.dockerignore` excludes.
pub struct IgnoreMatcher {
    patterns: Vec<String>,
}

impl IgnoreMatcher {
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        Ok(IgnoreMatcher {
            patterns: patterns.to_vec(),
        })
    }
    /// True when `rel_path` is excluded.
    pub fn matches(&self, rel_path: &str) -> bool {
        self.patterns.iter().any(|p| p == rel_path)
    }
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.starts_with('!'))
    }
}
